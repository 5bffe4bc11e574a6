"""``wbc examples``: the smear fields shipped with wbc, copied into data/raw_images/ to try ``wbc analyze`` on."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wbc.cli._app import app
from wbc.cli._common import say, warn


@app.command()
def examples(
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to fill.")] = Path("data/raw_images"),
    n: Annotated[int | None, typer.Option("--n", min=1, help="How many smear fields (default: all six).")] = None,
) -> None:
    """Copy the example smear fields shipped with wbc (BCCD test split, MIT licence) into data/raw_images/."""
    from wbc.examples import copy_examples

    kept: dict[Path, str] = {}
    fields = copy_examples(output, n, kept)
    for path, why in kept.items():  # not counted below: before wbc 0.36.0 a file of another content was
        warn(f"{path}: kept, {why}", "note:")
    where = "" if output == Path("data/raw_images") else f"{output} "  # the default input of wbc analyze
    say(f"{len(fields)} example smear fields (BCCD, MIT licence) in {output}/; next: wbc analyze {where}--output out/")
