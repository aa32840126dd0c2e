"""The README stays short and its pointers stay true.

- README.md is at most 250 lines; the reference material lives in docs/.
- Every path in the file column of the README's "Where things go" table exists.
- Every relative markdown link in README.md and docs/*.md points at an existing file, and the
  README links every docs/ page.
- The README still shows the two commands CI relies on (.ci/run runs the test command).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_README_LINES = 250
WHERE_HEADING = "Where things go"
FILE_COLUMN = "the one file"

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
# [text](target) and ![alt](target); the target ends at whitespace or ')', an optional title follows
LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
BACKTICKED = re.compile(r"`([^`\n]+)`")


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _section(lines: list[str], heading: str) -> list[str]:
    """The lines under the markdown heading whose text is `heading`, up to the next heading of
    the same or a higher level (fenced code blocks skipped when looking for headings)."""
    start = level = None
    in_fence = False
    for i, line in enumerate(lines):
        if line.lstrip().startswith(("```", "~~~")):
            in_fence = not in_fence
            continue
        m = None if in_fence else re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        if start is None:
            if m.group(2).strip().lower() == heading.lower():
                start, level = i + 1, len(m.group(1))
        elif len(m.group(1)) <= level:
            return lines[start:i]
    if start is None:
        raise AssertionError(f"README.md has no heading {heading!r}")
    return lines[start:]


def _cells(row: str) -> list[str]:
    """A markdown table row's cells; `\\|` is a literal bar inside a cell."""
    row = row.strip()
    row = row.removeprefix("|").removesuffix("|")
    return [c.replace("\\|", "|").strip() for c in re.split(r"(?<!\\)\|", row)]


def where_things_go() -> list[tuple[str, list[str]]]:
    """(the row's "to add" cell, the backticked paths of its file cell) for each table row."""
    section = _section(_lines(README), WHERE_HEADING)
    table: list[str] = []
    for line in section:  # the first table of the section, a run of lines starting with '|'
        if line.lstrip().startswith("|"):
            table.append(line)
        elif table:
            break
    assert len(table) >= 2, f"no table under '## {WHERE_HEADING}'"
    header, separator, *rows = table
    assert all(re.fullmatch(r":?-{3,}:?", c) for c in _cells(separator)), f"not a table separator: {separator!r}"
    columns = [c.lower() for c in _cells(header)]
    assert FILE_COLUMN in columns, f"no column {FILE_COLUMN!r} in {columns}"
    col = columns.index(FILE_COLUMN)
    out = []
    for row in rows:
        cells = _cells(row)
        assert len(cells) == len(columns), f"row has {len(cells)} cells, header {len(columns)}: {row!r}"
        out.append((cells[0], BACKTICKED.findall(cells[col])))
    return out


def _relative_links(path: Path) -> list[str]:
    text = INLINE_CODE.sub("", FENCE.sub("", path.read_text(encoding="utf-8")))
    targets = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith(("#", "//")):
            continue  # http(s), mailto, …, and anchors within the page
        targets.append(target)
    return targets


def _markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


# --- the checks -----------------------------------------------------------------------------


def test_readme_is_at_most_250_lines():
    n = len(_lines(README))
    assert n <= MAX_README_LINES, f"README.md has {n} lines; move reference material to docs/"


def test_where_things_go_table_parses():
    rows = where_things_go()
    assert len(rows) >= 8, f"expected at least 8 rows in '{WHERE_HEADING}', parsed {len(rows)}"
    no_path = [what for what, paths in rows if not paths]
    assert not no_path, f"rows without a `path` in the {FILE_COLUMN!r} column: {no_path}"
    for _, paths in rows:
        for p in paths:
            assert not p.startswith(("/", "@")) and " " not in p.strip(), f"not a repository path: {p!r}"


def test_where_things_go_paths_exist():
    missing = [f"{p} (to add {what})" for what, paths in where_things_go() for p in paths if not (ROOT / p).exists()]
    assert not missing, "paths in README's 'Where things go' that do not exist:\n  " + "\n  ".join(missing)


def test_docs_exist_and_readme_links_every_page():
    pages = sorted(DOCS.glob("*.md"))
    assert pages, "docs/ holds no pages"
    linked = {(README.parent / t.split("#", 1)[0]).resolve() for t in _relative_links(README)}
    unlinked = [p.name for p in pages if p.resolve() not in linked]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"


@pytest.mark.parametrize("page", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_files(page: Path):
    targets = _relative_links(page)
    if page == README:
        assert len(targets) >= 9, f"found only {len(targets)} relative links in README.md: {targets}"
    broken = []
    for target in targets:
        file = target.split("#", 1)[0].split("?", 1)[0]
        if file and not (page.parent / file).exists():
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)}: links to missing files: {broken}"


def test_docs_pages_link_back_to_readme():
    for page in sorted(DOCS.glob("*.md")):
        targets = {(page.parent / t.split("#", 1)[0]).resolve() for t in _relative_links(page)}
        assert README.resolve() in targets, f"{page.name} does not link back to README.md"


@pytest.mark.parametrize("command", ["pip install -e . && harness sweep", "pip install tox && tox"])
def test_readme_shows_the_two_commands(command: str):
    section = "\n".join(_section(_lines(README), "Two commands"))
    assert command in section
