"""Markdown to safe HTML for model text, prompts and guidelines.

Model text is untrusted, so rendering has two layers: markdown-it-py with raw HTML turned off
(an HTML tag in the text is shown as text, never passed through; `javascript:`, `vbscript:`,
`file:` and `data:` links are refused by its link check), then the nh3 sanitizer (the Ammonia
library) keeps only the formatting tags listed here, no attribute but `href`/`title` on links
and `start` on lists, and only http, https and mailto URLs. No script, event handler or style
can come out of either layer; the page's Content-Security-Policy is a third.
"""

from __future__ import annotations

from functools import lru_cache

import nh3
from markdown_it import MarkdownIt
from markupsafe import Markup

TAGS = {
    "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "strong", "em", "del", "s", "code", "pre", "blockquote",
    "ul", "ol", "li", "a", "table", "thead", "tbody", "tr", "th", "td",
}  # fmt: skip
ATTRIBUTES = {"a": {"href", "title"}, "ol": {"start"}}
URL_SCHEMES = {"http", "https", "mailto"}


@lru_cache(maxsize=1)
def _parser() -> MarkdownIt:
    # CommonMark plus tables and strikethrough; images off (an external image would load on view)
    return MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable(["table", "strikethrough"]).disable("image")


def render_markdown(text: str | None) -> Markup:
    """Renders Markdown to sanitized HTML, safe to insert into a page as is.

    Args:
        text: untrusted Markdown (a completion, a prompt, guidelines); None renders as nothing.

    Returns:
        HTML with only formatting tags, links limited to http(s)/mailto with rel="noopener noreferrer".
    """
    if not text:
        return Markup("")
    html = _parser().render(text)
    return Markup(nh3.clean(html, tags=TAGS, attributes=ATTRIBUTES, url_schemes=URL_SCHEMES, link_rel="noopener noreferrer nofollow"))
