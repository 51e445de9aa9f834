"""tether.html: escaping, macros, inline figures, the written page, templates shipped with the package."""

from __future__ import annotations

import base64
import fnmatch
import subprocess
import sys
import tomllib
from importlib.resources import files
from pathlib import Path

import pytest
from jinja2 import UndefinedError

import tether.html
from tether.html import environment, figure_data_uri, fmt_num, new_figure, render, render_report

EVIL = "<script>alert(1)</script>"
PNG_MAGIC = b"\x89PNG"
REPO_ROOT = Path(__file__).resolve().parent.parent


def macros():
    return environment().get_template("macros.html").module


def test_fmt_num():
    assert fmt_num(None) == "-" and fmt_num(3) == "3" and fmt_num(0.123456) == "0.123" and fmt_num(2e-5) == "2e-05"
    assert fmt_num("text") == "text"


def test_table_escapes_every_cell_and_formats_numbers():
    html = str(macros().table(["<h>"], [[EVIL, 0.123456, None]], text_columns=(0,)))
    assert "<script" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;h&gt;" in html and "<td>0.123</td>" in html and "<td>-</td>" in html
    assert '<td class="text">&lt;script' in html


@pytest.mark.parametrize("name", ["verdict", "paragraph", "note"])
def test_text_macros_escape(name):
    html = str(getattr(macros(), name)(EVIL))
    assert "<script" not in html and "&lt;script&gt;" in html


def test_text_macros_take_a_call_block_and_escape_its_values():
    template = environment().from_string(
        '{% from "macros.html" import note %}{% call note() %}Showing {{ n }} of <b>all</b>{% endcall %}')
    assert template.render(n=EVIL) == '<p class="note">Showing &lt;script&gt;alert(1)&lt;/script&gt; of <b>all</b></p>'


def test_figure_is_an_inline_png():
    fig = new_figure()
    fig.add_subplot(1, 1, 1).plot([0, 1], [1, 0])
    uri = figure_data_uri(fig)
    assert uri.startswith("data:image/png;base64,")
    assert base64.b64decode(uri.split(",", 1)[1]).startswith(PNG_MAGIC)
    tag = str(macros().figure(uri, 'a "quoted" <alt>'))
    assert tag.startswith("<img ") and f'src="{uri}"' in tag
    assert "&#34;quoted&#34; &lt;alt&gt;" in tag


def test_render_report_writes_a_utf8_page(tmp_path):
    out = render_report("base.html", tmp_path / "sub" / "page.html", title=EVIL + " Röttger")
    page = out.read_bytes().decode("utf-8")
    assert out == tmp_path / "sub" / "page.html"
    assert page.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in page and "<style>" in page
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; Röttger" in page


def test_a_missing_variable_raises():
    with pytest.raises(UndefinedError):
        render("base.html")


def test_templates_come_from_the_installed_package():
    shipped = sorted(p.name for p in files("tether.html").joinpath("templates").iterdir() if p.name.endswith(".html"))
    assert {"base.html", "macros.html"} <= set(shipped)
    assert sorted(environment().list_templates()) == shipped


def test_package_data_ships_every_template():
    patterns = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["tether"]
    root = Path(tether.html.__file__).parents[1]
    for path in Path(tether.html.__file__).parent.joinpath("templates").iterdir():
        relative = path.relative_to(root).as_posix()
        assert any(fnmatch.fnmatch(relative, p) for p in patterns), f"{relative} is not package data"


def test_imports_neither_torch_nor_other_tether_packages():
    code = (
        "import sys, tether.html\n"
        "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('tether'))\n"
        "assert loaded == ['tether', 'tether.html'], loaded\n"
    )
    env = {"PYTHONPATH": str(Path(tether.html.__file__).parents[2])}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
