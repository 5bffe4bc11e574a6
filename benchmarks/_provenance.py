"""How a benchmark's results were made, for its JSON's ``"provenance"`` key: one helper, so every script records
the same things (the command as run, wbc's version, the git commit and whether the tree had changes, the model,
Python's version and the date)."""

from __future__ import annotations

import platform
import shlex
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

#: The repository's root: the folder the docs' commands run from, which relative default paths name.
REPO = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str | None:
    """``git args`` run in the repository, its output; None without git or outside a git checkout."""
    try:
        out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def provenance(script: str, argv: list[str] | None = None, model_id: str | None = None) -> dict[str, Any]:
    """``{"command", "wbc_version", "git_commit", "git_dirty", "model_id", "python", "date"}`` for a run of
    ``script`` (the caller's ``__file__``) with ``argv`` (default: this process's arguments). ``git_commit`` and
    ``git_dirty`` (tracked files changed since that commit) are None where git or the checkout is missing;
    ``model_id`` is left out when not given."""
    import wbc

    args = sys.argv[1:] if argv is None else list(argv)
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    out: dict[str, Any] = {
        "command": shlex.join(["python", f"benchmarks/{Path(script).name}", *args]),
        "wbc_version": wbc.__version__,
        "git_commit": commit,
        "git_dirty": None if status is None else bool(status),
    }
    if model_id is not None:
        out["model_id"] = model_id
    out["python"] = platform.python_version()
    out["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    return out
