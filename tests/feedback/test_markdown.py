"""Markdown rendering of untrusted text: formatting survives, nothing executable gets through."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("nh3")

from tether.feedback.safe_markdown import render_markdown  # noqa: E402

HOSTILE = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "<a href=\"javascript:alert(1)\">x</a>",
    "[click](javascript:alert(1))",
    "[click](JaVaScRiPt:alert(1))",
    "[click](java\tscript:alert(1))",
    "[click](vbscript:msgbox(1))",
    "[click](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "![x](javascript:alert(1))",
    "<iframe src=https://evil.example></iframe>",
    "<svg onload=alert(1)>",
    "<div style=\"background:url(javascript:alert(1))\">x</div>",
    "[x](https://ok.example \"t\" onmouseover=alert(1))",
    "<details open ontoggle=alert(1)>",
    "```html\n<script>alert(1)</script>\n```",
    "<form action=https://evil.example><button>go</button></form>",
    "&lt;script&gt;alert(1)&lt;/script&gt;",
    "<<script>script>alert(1)<</script>/script>",
]


def _tags(html: str) -> set[str]:
    return {t.lower() for t in re.findall(r"<\s*([a-zA-Z0-9]+)", html)}


def _markup(html: str) -> str:
    """The tags alone, the text between them dropped (escaped text may say "javascript:" harmlessly)."""
    return re.sub(r">[^<]*<", "><", html.lower())


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_markdown_renders_inert(text):
    html = str(render_markdown(text))
    assert _tags(html) <= {"p", "a", "pre", "code", "br"}, html
    markup = _markup(html)
    for bad in ("style=", "javascript:", "vbscript:", "data:", "src="):
        assert bad not in markup, (text, html)
    assert not re.search(r"\son\w+\s*=", markup), html


def test_raw_html_is_shown_as_text_not_passed_through():
    html = str(render_markdown("Hi <b>there</b> <script>x</script>"))
    assert "&lt;b&gt;there&lt;/b&gt;" in html and "&lt;script&gt;" in html and "<b>" not in html


def test_links_keep_only_safe_urls_and_get_rel():
    html = str(render_markdown("[ok](https://example.com/a?b=1) [mail](mailto:a@b.c) [bad](javascript:alert(1))"))
    assert '<a href="https://example.com/a?b=1" rel="noopener noreferrer nofollow">ok</a>' in html
    assert 'href="mailto:a@b.c"' in html
    assert "javascript" not in _markup(html)  # the refused link is left as text


def test_formatting_survives():
    text = "# Title\n\n**bold** *em* ~~gone~~ `code`\n\n- one\n- two\n\n3. three\n\n> quote\n\n```\nx = 1\n```\n\n| a | b |\n|---|---|\n| 1 | 2 |\n"
    html = str(render_markdown(text))
    for tag in ("<h1>", "<strong>", "<em>", "<s>", "<code>", "<ul>", '<ol start="3">', "<blockquote>", "<pre>", "<table>", "<td>"):
        assert tag in html, tag


def test_images_are_not_loaded():
    html = str(render_markdown("![tracker](https://evil.example/pixel.png)"))
    assert "<img" not in html and "tracker" in html


def test_empty_and_none_render_nothing():
    assert str(render_markdown("")) == "" and str(render_markdown(None)) == ""
