"""One HTML kit for every report: Jinja templates with a shared layout and macros, and inline figures.

Reports are templates under `templates/` that extend `base.html` (the layout and its CSS) and import the
macros of `macros.html` (`table`, `figure`, `verdict`, `paragraph`, `note`). Autoescaping is always on:
model text is untrusted, so every value a template prints is escaped; nothing here marks model text safe.
Figures are matplotlib figures drawn with the Agg backend (no pyplot state) and inlined as base64 PNG, so a
written page is one self-contained file.

This package imports no other tether package and not torch: every part of tether may use it.
"""

from __future__ import annotations

import base64
import functools
import io
import numbers
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jinja2 import Environment, PackageLoader, StrictUndefined

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["environment", "fmt_num", "new_figure", "figure_data_uri", "render", "render_report"]


def fmt_num(value: Any, digits: int = 3) -> Any:
    """A number for people: integers as they are, other numbers to `digits` significant digits.

    Returns:
        The formatted string for a number ('-' for None); any other value unchanged (so that a template
        still escapes it).
    """
    if value is None:
        return "-"
    if isinstance(value, numbers.Integral):
        return str(value)
    if isinstance(value, numbers.Real):
        return f"{value:.{digits}g}"
    return value


@functools.cache
def environment() -> Environment:
    """The Jinja environment of the report templates (built once).

    Autoescaping is on for every template; an undefined variable raises instead of printing nothing. Filters:
    `num` (`fmt_num`) and `fmt` (`format(value, spec)`, e.g. `{{ x|fmt(".1%") }}`).

    Returns:
        The shared `jinja2.Environment`, loading from the `templates` folder of this package.
    """
    env = Environment(
        loader=PackageLoader("tether.html", "templates"), autoescape=True, undefined=StrictUndefined,
        trim_blocks=True, lstrip_blocks=True,
    )
    env.filters["num"] = fmt_num
    env.filters["fmt"] = format
    return env


def new_figure(width: float = 6.0, height: float = 3.5) -> "Figure":
    """A matplotlib figure drawn with the Agg backend, independent of pyplot's global state.

    Returns:
        A `matplotlib.figure.Figure` (constrained layout); pass it to `figure_data_uri`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_data_uri(fig: "Figure", dpi: int = 100) -> str:
    """A figure as a PNG inlined in a `data:` URI, for the `figure` macro (`<img src=...>`).

    Args:
        fig: the figure (from `new_figure`).
        dpi: resolution of the PNG.

    Returns:
        `"data:image/png;base64,..."`.
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def render(template_name: str, **context: Any) -> str:
    """Render one template of this package.

    Args:
        template_name: a file under `templates/`, e.g. `"policy_eval.html"`.
        **context: the template's variables.

    Returns:
        The rendered text, every value escaped.

    Raises:
        jinja2.TemplateNotFound: no such template.
        jinja2.UndefinedError: the template uses a variable that `context` lacks.
    """
    return environment().get_template(template_name).render(**context)


def render_report(template_name: str, path: str | Path, **context: Any) -> Path:
    """Render a report template to a self-contained HTML file (UTF-8), creating its folder.

    Args:
        template_name: a template that extends `base.html`, e.g. `"redteam.html"`.
        path: the file to write.
        **context: the template's variables (`title` among them for `base.html`).

    Returns:
        The path written.

    Raises:
        jinja2.TemplateNotFound, jinja2.UndefinedError: as `render`.
        OSError: the file cannot be written.
    """
    page = render(template_name, **context)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out
