"""The documentation's links resolve: README.md and docs/*.md.

Needs no root and nothing but the standard library (and pytest). For every
relative Markdown link [text](path#anchor) the target file must exist, relative
to the linking file, and an anchor must be one that a heading of the target
produces under GitHub's rule: lowercase; characters other than letters, digits,
spaces, hyphens and underscores dropped; spaces become hyphens; a repeated
heading gets -1, -2, ... Also: README.md stays a newcomer's page (at most 250
lines) and links every page under docs/.
"""
from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
DOCS = REPO / "docs"
README_MAX_LINES = 250

# [text](target) or ![alt](target), target up to the first space or ")"; an
# optional "title" after it. Link text may hold code spans and brackets one deep.
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


from unprivileged import _privileged, _remove_stale_namespaces  # noqa: F401  (these tests need no root)


def doc_files() -> list[Path]:
    return [README] + sorted(DOCS.glob("*.md"))


def strip_code(text: str) -> list[str]:
    """The file's lines with fenced code blocks blanked and inline code spans
    removed, so neither a `# comment` in a block nor a `[x](y)` in code counts."""
    out, fence = [], None
    for line in text.split("\n"):
        m = FENCE.match(line)
        if fence:
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
                fence = None
            out.append("")
            continue
        if m:
            fence = m.group(1)
            out.append("")
            continue
        out.append(re.sub(r"(`+)(.+?)\1", "", line))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text (before de-duplication)."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = text.replace("`", "")
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.lower()
    text = "".join(c for c in text if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor the headings of a file produce, duplicates numbered."""
    seen: dict[str, int] = {}
    result = set()
    fence = None
    for line in path.read_text().split("\n"):
        m = FENCE.match(line)
        if fence:
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
                fence = None
            continue
        if m:
            fence = m.group(1)
            continue
        h = HEADING.match(line)
        if not h:
            continue
        base = slug(h.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        result.add(base if n == 0 else f"{base}-{n}")
    return result


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every relative link in a file."""
    text = "\n".join(strip_code(path.read_text()))  # link text may wrap onto the next line
    found = []
    for m in LINK.finditer(text):
        target = m.group(1)
        if not target or SCHEME.match(target) or target.startswith("//"):
            continue
        found.append((text.count("\n", 0, m.start(1)) + 1, target))
    return found


def test_slug_rule():
    assert slug("When the kernel refuses a program type") == "when-the-kernel-refuses-a-program-type"
    assert slug("flowmeterd check --selftest") == "flowmeterd-check---selftest"
    assert slug("What's `new`: v1.0 (beta)") == "whats-new-v10-beta"
    assert slug("snake_case and  two spaces") == "snake_case-and--two-spaces"


def test_duplicate_headings_are_numbered(tmp_path):
    f = tmp_path / "x.md"
    f.write_text("# A\n\n## Notes\n\n```\n# Notes\n```\n\n## Notes\n\n### Notes\n")
    assert anchors(f) == {"a", "notes", "notes-1", "notes-2"}


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(path: Path):
    problems = []
    for line, target in links(path):
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / unquote(file_part)).resolve() if file_part else path
        where = f"{path.relative_to(REPO)}:{line}: {target}"
        if not dest.exists():
            problems.append(f"{where}: no such file")
            continue
        if anchor:
            if dest.is_dir() or dest.suffix != ".md":
                problems.append(f"{where}: an anchor into a file that is not Markdown")
            elif unquote(anchor).lower() not in anchors(dest):
                problems.append(f"{where}: no heading gives #{anchor} (have: {', '.join(sorted(anchors(dest)))})")
    assert not problems, "\n".join(problems)


def test_readme_is_short():
    n = len(README.read_text().splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines; at most {README_MAX_LINES} (move detail into docs/)"


def test_every_docs_page_is_linked_from_the_readme():
    pages = sorted(DOCS.glob("*.md"))
    assert pages, "docs/ has no pages"
    linked = set()
    for _, target in links(README):
        file_part = unquote(target.partition("#")[0])
        if file_part:
            linked.add((README.parent / file_part).resolve())
    missing = [str(p.relative_to(REPO)) for p in pages if p.resolve() not in linked]
    assert not missing, f"not linked from README.md: {', '.join(missing)}"
