"""report.md as HTML: markdown-it-py (CommonMark + tables) with raw HTML off, so the report's text is escaped;
its headings one level down, under the page's own h1.

Images are rewritten to the URLs the dashboard serves them from; an image it does not serve (another folder,
another host) becomes its alt text, so a page never makes the browser fetch anything from elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable

from markdown_it import MarkdownIt
from markdown_it.token import Token

_md = MarkdownIt("commonmark", {"html": False}).enable("table")


def render(text: str, image_url: Callable[[str], str | None]) -> str:
    """HTML of Markdown `text`; `image_url(src)` is the served URL of an image, or None to drop it."""
    tokens = _md.parse(text)
    for block in tokens:
        if block.type in ("heading_open", "heading_close"):  # under the page's own h1
            block.tag = f"h{min(6, int(block.tag[1]) + 1)}"
        for i, tok in enumerate(block.children or []):
            if tok.type != "image":
                continue
            url = image_url(str(tok.attrGet("src") or ""))
            if url is None:
                block.children[i] = Token("text", "", 0, content=f"[image: {tok.content}]")
            else:
                tok.attrSet("src", url)
                tok.attrSet("loading", "lazy")
    return _md.renderer.render(tokens, _md.options, {})
