"""The command line names itself ``wbc`` in every usage line, whichever way it was started."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("args", [["adapt", "--help"], ["train", "--bogus"], ["classify", "--help"]])
def test_usage_says_wbc_also_for_the_commands_that_restart_themselves(args: list[str]) -> None:
    """The torch commands re-run themselves as ``python -m wbc`` to set glibc's allocator (wbc.cli.GLIBC_FIX), and
    click took its program name from that: before wbc 0.32.0 ``wbc train --help`` printed "Usage: python -m wbc
    train", the other commands "Usage: wbc ...". Started as a user starts it, without GLIBC_TUNABLES set."""
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "WBC_NO_REEXEC")}
    r = subprocess.run([sys.executable, "-m", "wbc", *args], capture_output=True, text=True, timeout=120,
                       env={**env, "COLUMNS": "200"})
    out = r.stdout + r.stderr
    assert f"Usage: wbc {args[0]} " in out, out
    assert "python -m wbc" not in out, out


def test_torch_command_reexec_never_runs_a_wbc_py_in_the_working_directory(tmp_path: Path) -> None:
    """The allocator re-exec ran ``python -m wbc``, which puts the working directory first on ``sys.path``: before
    wbc 0.34.0 a ``wbc.py`` in the folder where ``wbc export-weights`` (adapt, train, ...) was typed ran instead of
    wbc, and the command exited 0 having done nothing. Now it re-runs with ``-P`` (:func:`wbc.paths.python_m_wbc`)."""
    marker = tmp_path / "ran"
    (tmp_path / "wbc.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "WBC_NO_REEXEC")}
    # -P: the parent itself must not pick up tmp_path/wbc.py (the console script does not); the re-exec is under test
    code = "import sys; from wbc.cli import main; sys.argv = ['wbc', 'export-weights', 'a.pt', 'b.pt']; main()"
    r = subprocess.run([sys.executable, "-P", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
    assert not marker.exists(), "wbc export-weights ran the working directory's wbc.py"
    assert r.returncode == 1 and "checkpoint not found" in r.stdout + r.stderr, r.stdout + r.stderr


def test_python_m_wbc_keeps_the_working_directory_off_the_path(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The child processes wbc starts (the re-exec above, serve-bench's ``wbc serve``) drop the working directory
    from ``sys.path`` (``-P``), unless this wbc was itself imported from it (``python -m wbc`` typed in ``src/``)."""
    from wbc.paths import PACKAGE_DIR, python_m_wbc

    monkeypatch.chdir(tmp_path)
    assert python_m_wbc() == [sys.executable, "-P", "-m", "wbc"]
    monkeypatch.chdir(PACKAGE_DIR.parent)
    assert python_m_wbc() == [sys.executable, "-m", "wbc"]
