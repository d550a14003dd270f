"""report.md as HTML: markdown-it-py (CommonMark + tables) with raw HTML off, so the report's text is escaped;
its headings one level down, under the page's own h1.

Images are rewritten to the URLs the dashboard serves them from; an image it does not serve (another folder,
another host) becomes its alt text, so a page never makes the browser fetch anything from elsewhere.
A file is rendered once per version (`render_file`), and only up to a size: rendering takes seconds and hundreds
of MB per MB of Markdown.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from markdown_it import MarkdownIt
from markdown_it.token import Token

from robustkd.shared import files

_md = MarkdownIt("commonmark", {"html": False}).enable("table")
KEPT = 16  # rendered files kept in memory
_rendered: OrderedDict[tuple, str] = OrderedDict()
_lock = threading.Lock()


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


def render_file(path: Path, max_bytes: int, image_url: Callable[[str], str | None], scope: str = "") -> str:
    """`render` of the Markdown file at `path`, at most `max_bytes` (files.FileTooLarge beyond; OSError for a file
    that is not regular). Cached by path, size and modification time, those of its folder (whose files decide
    which images show) and `scope` (what else `image_url` depends on); one render at a time, so a burst of
    requests for a new report renders it once."""
    st, folder = path.stat(), path.parent.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, folder.st_mtime_ns, scope)
    with _lock:
        if key in _rendered:
            _rendered.move_to_end(key)
            return _rendered[key]
        html = render(files.read_regular(path, max_bytes).decode(errors="replace"), image_url)
        _rendered[key] = html
        while len(_rendered) > KEPT:
            _rendered.popitem(last=False)
        return html
