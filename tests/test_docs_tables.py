"""The Markdown tables in README.md and docs/: a hard line break inside a row renders as two rows."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def broken_rows(text: str) -> list[tuple[int, str]]:
    """Lines inside a table (outside code fences) that do not both start and end with ``|``."""
    out: list[tuple[int, str]] = []
    fenced = in_table = False
    for no, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if s.startswith("```"):
            fenced, in_table = not fenced, False
            continue
        if fenced or not s:
            in_table = False
            continue
        if s.startswith("|"):
            in_table = True
        if in_table and not (s.startswith("|") and s.endswith("|")):
            out.append((no, s[:80]))
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_table_row_is_split_over_lines(page: Path) -> None:
    """docs/review.md's ``cases`` row broke after "a case stored" (wbc 0.30.0 in progress): rendered, the rest made a
    second row whose "table" column read "before keeps it, ...", a table that does not exist."""
    assert broken_rows(page.read_text(encoding="utf-8")) == []
