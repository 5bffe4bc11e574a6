"""``wbc train-segmenter``: train the compact U-Net WBC segmenter on BCCD and export it to ONNX."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from wbc.cli._app import app
from wbc.cli._common import DataRootOpt, require_train, say
from wbc.errors import WbcError


@app.command("train-segmenter")
def train_segmenter(
    output: Annotated[Path, typer.Option("--output", "-o", help="ONNX file to write.")] = Path(
        "runs/segmenter/wbc_segmenter.onnx"),
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --output (e.g. the shipped "
                                                                "src/wbc/models/default/wbc_segmenter.onnx).")] = False,
    data_root: DataRootOpt = None,
    iters: Annotated[int, typer.Option(min=1, help="Training iterations.")] = 600,
    eval_every: Annotated[int, typer.Option(min=1, help="Validate (and export a new best) every N iterations.")
                          ] = 150,
    batch: Annotated[int, typer.Option(min=1, help="Fields per batch.")] = 8,
    size: Annotated[int, typer.Option(min=32, help="Training tile size in pixels.")] = 128,
    lr: Annotated[float, typer.Option(help="Peak learning rate, > 0 (one-cycle).")] = 3e-3,
    threads: Annotated[int, typer.Option(min=1, help="CPU threads.")] = 1,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Train the U-Net segmenter on the BCCD train masks (val picks the iteration; test is never read)."""
    if not (math.isfinite(lr) and lr > 0):  # AdamW refused it after every field was loaded; 0 trained nothing
        raise WbcError(f"--lr {lr}: must be a number > 0")
    from wbc.paths import data_root as resolve_root

    run = require_train("wbc.train.segmenter").train_segmenter
    run(resolve_root(data_root), output, iters=iters, eval_every=eval_every, batch=batch, size=size, lr=lr,
        threads=threads, seed=seed, log=say, overwrite=overwrite)
