"""The command line names itself ``wbc`` in every usage line, whichever way it was started."""

from __future__ import annotations

import os
import subprocess
import sys

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
