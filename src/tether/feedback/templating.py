"""Page templates: the Jinja2 environment over the package templates and rendering to HTML responses.

The app builds the environment once (`make_templates`) and keeps it in `app.state.templates`;
page handlers and error pages render through `render`.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import Request
from fastapi.responses import Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from tether import __version__
from tether.feedback.safe_markdown import render_markdown

TEMPLATES = Path(__file__).parent / "templates"


def make_templates() -> Environment:
    """Jinja2 environment over the package templates; autoescaping on for every template.

    The `markdown` filter renders untrusted Markdown to sanitized HTML (`safe_markdown.render_markdown`).
    """
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(default=True, default_for_string=True))
    env.globals["version"] = __version__
    env.filters["markdown"] = render_markdown
    return env


def render(request: Request, template: str, status_code: int = 200, **context: object) -> Response:
    """Renders a page template to an HTML response (with the app's environment)."""
    env: Environment = request.app.state.templates
    html = env.get_template(template).render(request=request, **context)
    return Response(html, status_code=status_code, media_type="text/html; charset=utf-8")
