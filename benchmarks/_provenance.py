"""How a benchmark's results were made, for its JSON's ``"provenance"`` key: one helper, so every script records
the same things (the command as run, wbc's version, the git commit of the wbc code that ran and whether its tree had
changes, the model, Python's version and the date)."""

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


def _git(where: Path, *args: str) -> str | None:
    """``git args`` run in ``where``, its output; None without git or outside a git checkout."""
    try:
        out = subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True, timeout=10,
                             check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def checkout_of(package: Path) -> Path | None:
    """The git checkout that tracks the package folder ``package`` (its ``__init__.py``); None when it is not one's
    tracked file: an installed wheel, or a copy of a release's ``src`` (a venv inside a checkout is not that
    checkout's code)."""
    if not _git(package, "ls-files", "--", "__init__.py"):
        return None
    top = _git(package, "rev-parse", "--show-toplevel")
    return Path(top).resolve() if top else None


def provenance(script: str, argv: list[str] | None = None, model_id: str | None = None) -> dict[str, Any]:
    """``{"command", "wbc_version", "wbc_path", "git_commit", "git_dirty", "benchmarks_checkout", "model_id",
    "python", "date"}`` for a run of ``script`` (the caller's ``__file__``) with ``argv`` (default: this process's
    arguments).

    ``git_commit`` and ``git_dirty`` (tracked files changed since that commit) are those of the checkout that holds
    the wbc package that ran (``wbc_path``, from ``wbc.__file__``): with ``PYTHONPATH`` set to another release's
    ``src`` the measured code is not the benchmarks' (before wbc 0.34.0 the benchmarks' commit was recorded for
    it); both are None where that wbc is not a git checkout's (a copy of a ``src``, an installed wheel).
    ``benchmarks_checkout`` is True when that checkout is the benchmarks' own; when not, ``benchmarks_commit`` names
    the benchmarks' commit. ``model_id`` is left out when not given."""
    import wbc

    args = sys.argv[1:] if argv is None else list(argv)
    package = Path(wbc.__file__).resolve().parent
    checkout = checkout_of(package)
    commit = _git(checkout, "rev-parse", "HEAD") if checkout else None
    status = _git(checkout, "status", "--porcelain", "--untracked-files=no") if checkout and commit else None
    out: dict[str, Any] = {
        "command": shlex.join(["python", f"benchmarks/{Path(script).name}", *args]),
        "wbc_version": wbc.__version__,
        "wbc_path": str(package.parent),
        "git_commit": commit,
        "git_dirty": None if status is None else bool(status),
        "benchmarks_checkout": checkout == REPO,
    }
    if checkout != REPO:
        out["benchmarks_commit"] = _git(REPO, "rev-parse", "HEAD")
    if model_id is not None:
        out["model_id"] = model_id
    out["python"] = platform.python_version()
    out["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    return out
