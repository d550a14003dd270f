"""The documentation holds together: README stays a short guide, relative links resolve, nothing narrates history."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

README_MAX_BYTES = 15_000
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
CODE = re.compile(r"`[^`\n]*`")
INLINE = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s*\[[^\]\n]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.M)


def markdown_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def relative_links(text: str) -> list[str]:
    """Link and image targets outside code, without URLs with a scheme and without pure anchors."""
    prose = CODE.sub("", FENCE.sub("", text))
    targets = INLINE.findall(prose) + REFERENCE.findall(prose)
    return [t for t in targets if not re.match(r"^([a-z][a-z0-9+.-]*:|#)", t, re.I)]


def anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", FENCE.sub("", text), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        seen[slug] = seen.get(slug, -1) + 1
        if seen[slug]:
            seen[f"{slug}-{seen[slug]}"] = 0
    return set(seen)


def dead_links(md: Path) -> list[str]:
    dead = []
    for target in relative_links(md.read_text()):
        path, _, anchor = target.partition("#")
        file = (md.parent / path) if path else md
        if not file.exists():
            dead.append(f"{md.relative_to(REPO)}: {target} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text()):
            dead.append(f"{md.relative_to(REPO)}: {target} (no such heading)")
    return dead


def test_relative_links_resolve() -> None:
    dead = [d for md in markdown_files() for d in dead_links(md)]
    assert not dead, "dead links:\n" + "\n".join(dead)


def test_anchors_follow_github() -> None:
    text = "# Top\n## The defaults of `ours`, and the evidence\n## Top\n```\n# not a heading\n```\n"
    assert anchors(text) == {"top", "the-defaults-of-ours-and-the-evidence", "top-1"}


def test_link_finder_sees_links_and_skips_code() -> None:
    text = "[a](docs/a.md) ![b](b.png#x) [c](https://x.org) [d](#top)\n[e]: e.md\n`[f](f.md)`\n```\n[g](g.md)\n```\n"
    assert relative_links(text) == ["docs/a.md", "b.png#x", "e.md"]


def test_readme_is_a_short_guide() -> None:
    size = (REPO / "README.md").stat().st_size
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes; reference material belongs under docs/"


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="needs a git checkout")
def test_nothing_narrates_the_build_history() -> None:
    found = subprocess.run(["git", "grep", "--untracked", "-nE", "stop [0-9]+"], cwd=REPO,
                           capture_output=True, text=True).stdout
    assert not found, "history belongs to git log:\n" + found
