"""Commands and figures README.md and docs/ quote, checked against the code without data: a command that no longer
runs, or scores another model than it says, and a figure rounded otherwise than every output rounds it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from wbc.counts import fixed
from wbc.paths import DEFAULT_MODEL

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def joined(page: Path) -> list[tuple[int, str]]:
    """Each line of ``page`` with its shell continuation lines (``\\``) joined on, and its line number."""
    lines = page.read_text(encoding="utf-8").split("\n")
    out = []
    for i, line in enumerate(lines):
        full, k = line, i + 1
        while full.rstrip().endswith("\\") and k < len(lines):
            full, k = full.rstrip()[:-1] + " " + lines[k], k + 1
        out.append((i + 1, full))
    return out


def test_the_model_cards_pbc_test_commands_score_the_shipped_model() -> None:
    """The card's "one command" for its PBC test columns named no --model: `wbc evaluate RUN/manifest.csv` scores
    the run's own model.onnx when there is one, and the card's Reproduce steps write runs/default/model.onnx, so a
    developer who had run them got another model's figures."""
    card = (ROOT / "docs" / "model_card.md").read_text(encoding="utf-8")
    section = card[card.index("## Metrics on the PBC test split"):]
    section = section[:section.index("\n## ")].replace("\n", " ")  # older models' commands elsewhere are theirs
    commands = re.findall(r"`(wbc evaluate runs/default/manifest\.csv --split test[^`]*)`", section)
    assert len(commands) == 2
    shipped = DEFAULT_MODEL.relative_to(ROOT).as_posix()
    for command in commands:
        assert f"--model {shipped}" in command, command


def test_every_share_of_k_of_n_in_the_docs_is_rounded_as_the_outputs_round_it() -> None:
    """docs/model_card.md gave 52 of 64 as 81.2 % (Python's half-to-even) beside 81.3 % for the same run: every output
    of wbc rounds half up (:func:`wbc.counts.fixed`)."""
    found = []
    for page in PAGES:
        text = " ".join(page.read_text(encoding="utf-8").split())
        for m in re.finditer(r"(\d+(?:\.\d+)?) % ?[,(] ?(\d+) of (\d+)\b", text):
            said, k, n = m[1], int(m[2]), int(m[3])
            if k <= n:
                digits = len(said.split(".")[1]) if "." in said else 0
                found.append((page.name, m[0], said, fixed(100 * k / n, digits)))
    assert found
    assert [f for f in found if f[2] != f[3]] == []


def test_every_script_option_the_docs_quote_is_an_option_of_the_script() -> None:
    """docs/generalisation.md quoted `python scripts/fit_cytoplasm_colours.py --single-cell`, an option a revert removed
    (a789bae): the command failed at once with "unrecognized arguments"."""
    uses = [(page.name, no, m[1], m[2]) for page in PAGES for no, line in joined(page)
            for m in re.finditer(r"python3? ((?:benchmarks|scripts)/[\w/]+\.py)([^`|\n;&#]*)", line)]
    assert uses
    helps: dict[str, set[str]] = {}
    for script in sorted({u[2] for u in uses}):
        r = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        if r.returncode == 0:  # a script without argparse (build_notebooks.py takes a name) cannot be asked
            helps[script] = set(re.findall(r"--[a-z][a-z0-9-]*", r.stdout))
    assert helps
    wrong = [(page, no, script, opt) for page, no, script, rest in uses if script in helps
             for opt in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", rest) if opt not in helps[script]]
    assert wrong == []
