"""README.md and docs/ hold no placeholder left for text to come: docs/api.md's serve-bench section ended in a literal
``BENCH_RESULTS`` from wbc's first commit to 0.35.0, where the bench's numbers were to go."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

#: An all-caps name with an underscore, as a placeholder is written (``BENCH_RESULTS``); letters only, so that a
#: file's stem (``LY_165111``) is not one.
TOKEN = re.compile(r"\b[A-Z]{2,}_[A-Z_]{2,}\b")
#: The environment variables the docs name in plain prose (the rest are in backticks).
VARIABLES = {"MASTER_ADDR", "MASTER_PORT", "WBC_TEST_POSTGRES_URL"}


def bare_tokens(text: str) -> list[tuple[int, str]]:
    """All-caps ``A_B`` names outside code fences and backtick spans, with their line numbers.

    >>> bare_tokens("a `WBC_DATA_DIR` b NUMBERS_HERE\\n```\\nX_Y\\n```")
    [(1, 'NUMBERS_HERE')]
    """
    out: list[tuple[int, str]] = []
    fenced = False
    for no, line in enumerate(text.splitlines(), 1):
        if line.strip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            out += [(no, m) for m in TOKEN.findall(re.sub(r"`[^`]*`", "", line))]
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_page_holds_a_placeholder(page: Path) -> None:
    left = [(no, t) for no, t in bare_tokens(page.read_text(encoding="utf-8")) if t not in VARIABLES]
    assert left == [], f"{page.name}: placeholders (or a variable to put in backticks) at {left}"
