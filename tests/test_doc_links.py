"""Every relative link in README.md and docs/ resolves: the file exists and, for a
``#anchor`` into a Markdown page, a heading of that page has that anchor (GitHub's
rule: lower case, punctuation dropped, spaces to hyphens, ``-1``, ``-2`` for repeats)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
_FENCE = re.compile(r"^```.*?^```", re.S | re.M)
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown text (fenced code skipped)."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    for m in re.finditer(r"^#{1,6} +(.+?) *#*$", _FENCE.sub("", markdown), re.M):
        slug = re.sub(r"[^\w\- ]", "", m.group(1).replace("`", "").strip().lower())
        slug = slug.replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def broken_links(page: Path, text: str) -> list[str]:
    """The relative links of ``text`` (the content of ``page``) that do not resolve."""
    bad = []
    for target in _LINK.findall(_FENCE.sub("", text)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            bad.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md":
            own = text if file == page else file.read_text()
            if anchor not in anchors(own):
                bad.append(f"{target}: no heading with that anchor in {file.name}")
    return bad


def test_the_checker_finds_what_is_broken_and_passes_what_is_not(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n\n## The plan: cyclical `training`\n")
    page = tmp_path / "page.md"
    text = (
        "# Top\n\n## Results, honestly\n\n## Results, honestly\n\n"
        "```bash\n# not a heading\n[x](fenced.md)\n```\n"
        "[a](other.md) [b](other.md#the-plan-cyclical-training) [c](#results-honestly-1)\n"
        "[d](https://example.org/x#y) [e](missing.md) [f](other.md#nope) [g](#not-a-heading)\n"
    )
    page.write_text(text)
    assert anchors(text) == {"top", "results-honestly", "results-honestly-1"}
    assert broken_links(page, text) == [
        "missing.md: no such file",
        "other.md#nope: no heading with that anchor in other.md",
        "#not-a-heading: no heading with that anchor in page.md",
    ]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    assert not broken_links(page, page.read_text())


def test_the_pages_do_link() -> None:  # the check above is not vacuous
    assert sum(len(_LINK.findall(p.read_text())) for p in PAGES) > 50
