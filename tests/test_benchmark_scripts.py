"""The benchmark scripts as the docs run them: ``python benchmarks/<script>.py ...`` from the repository root."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_every_benchmark_script_ends_through_the_one_runner() -> None:
    """Each script's ``__main__`` block hands ``main`` to ``_run.run``, so bad input is one line in all of them."""
    scripts = sorted(p for p in BENCHMARKS.glob("[a-z]*.py"))
    assert len(scripts) > 20
    ends = {p.name: p.read_text().split('if __name__ == "__main__":')[-1] for p in scripts}
    missing = [name for name, end in ends.items() if "from _run import run" not in end]
    assert missing == []


@pytest.mark.parametrize("script", ["shift_suite.py"])
def test_a_missing_data_root_is_one_line_not_a_traceback(script: str, tmp_path: Path) -> None:
    """A data root that is not there (a typo in ``--data``) is named in one ``error:`` line with exit status 1."""
    r = subprocess.run([sys.executable, str(BENCHMARKS / script), "--data", str(tmp_path / "no_such_root"),
                        "--output", str(tmp_path / "out.json")], capture_output=True, text=True, timeout=300,
                       cwd=BENCHMARKS.parent)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "no_such_root" in lines[0]
    assert not (tmp_path / "out.json").exists()


def test_a_missing_cell_file_is_named_once(tmp_path: Path) -> None:
    """benchmarks/two_cells.py put the path before a message that starts with it: "error: X.jpg: X.jpg: no such
    file"."""
    import os

    r = subprocess.run([sys.executable, str(BENCHMARKS / "two_cells.py"), "--pairs", "2", "--output",
                        str(tmp_path / "out.json")], capture_output=True, text=True, timeout=300,
                       cwd=BENCHMARKS.parent, env={**os.environ, "WBC_DATA_DIR": str(tmp_path / "no_root")})
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path / 'no_root'}"), r.stderr
    assert lines[0].count(str(tmp_path / "no_root")) == 1 and lines[0].endswith(": no such file"), r.stderr
