"""The ``wbc`` command line: the one place where commands are defined.

Each command lives in its own module here (``wbc.cli.<name>``) and is a thin call into the library: it
parses options, calls one library function, prints a summary. Library modules never import typer,
argparse or rich; they raise :class:`wbc.errors.WbcError` for user mistakes, which :func:`main` prints as
one line (exit 1), never as a traceback. Heavy imports (torch, matplotlib, FastAPI) happen inside the
commands that need them, so ``wbc --help`` and the analysis commands start fast.

To add a command: write ``wbc/cli/<name>.py`` with an ``@app.command()`` function and add ``<name>`` to
:data:`COMMAND_MODULES`.
"""

from __future__ import annotations

import importlib
import os
import sys

from rich.markup import escape

from wbc.cli._app import app, console
from wbc.errors import WbcError
from wbc.paths import python_m_wbc

__all__ = ["COMMAND_MODULES", "app", "main"]

#: Command modules, in the order ``wbc --help`` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "classify",
    "analyze",
    "evaluate",
    "evaluate_smears",
    "train",
    "ensemble",
    "export",
    "quantize",
    "adapt",
    "pick_cells",
    "ood",
    "serve",
    "cases",
    "examples",
    "models",
    "train_segmenter",
    "train_detector",
    "export_weights",
    "serve_bench",
)

for _name in COMMAND_MODULES:
    importlib.import_module(f"wbc.cli.{_name}")

#: glibc's default malloc makes PyTorch on CPU 2-4x slower through page faults (measured on our
#: 2-core machines); the setting must be in place before Python starts, hence the re-exec.
GLIBC_FIX = "glibc.malloc.mmap_threshold=4294967295:glibc.malloc.trim_threshold=4294967295"
TORCH_COMMANDS = {"train", "export", "ensemble", "adapt", "train-segmenter", "train-detector", "export-weights"}


def _reexec_with_allocator_fix() -> None:
    if sys.platform != "linux" or os.environ.get("GLIBC_TUNABLES") or os.environ.get("WBC_NO_REEXEC"):
        return
    if not TORCH_COMMANDS & set(sys.argv[1:2]):
        return
    env = dict(os.environ, GLIBC_TUNABLES=GLIBC_FIX)
    os.execve(sys.executable, [*python_m_wbc(), *sys.argv[1:]], env)  # never a wbc.py in the working directory


def main() -> None:
    """Entry point: run the app, turning user errors into one-line messages and exit code 1."""
    _reexec_with_allocator_fix()
    try:
        # "wbc", not the name click would read from sys.argv: the re-exec above and `python -m wbc` would make every
        # usage line and usage error say "python -m wbc", a command the user did not type.
        app(prog_name="wbc")
    except WbcError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        sys.exit(1)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)
