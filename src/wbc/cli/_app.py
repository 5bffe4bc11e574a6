"""The typer application and the console every command writes to (imported by each command module)."""

from __future__ import annotations

import typer
from rich.console import Console

app = typer.Typer(
    name="wbc",
    help="White-blood-cell differentials from blood-smear images: detect, outline, classify, count, report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
#: stderr, so that stdout stays clean for data; ``soft_wrap`` keeps long paths on one line.
console = Console(stderr=True, soft_wrap=True)
