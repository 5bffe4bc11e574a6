"""``wbc train-detector``: train the learned WBC detector + outliner (BCCD + TXL-PBC) and export it to ONNX."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from wbc.cli._app import app
from wbc.cli._common import DataRootOpt, require_train, say
from wbc.errors import WbcError


@app.command("train-detector")
def train_detector(
    output: Annotated[Path, typer.Option("--output", "-o", help="ONNX file to write (a .pt is kept beside it).")
                      ] = Path("runs/detector/wbc_detector.onnx"),
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace an existing --output (and its .pt and .log.json).")] = False,
    data_root: DataRootOpt = None,
    holdout: Annotated[str | None, typer.Option(
        help="Leave this TXL-PBC origin out (bccd, bcd, pbc): the leave-one-source-out runs.")] = None,
    minutes: Annotated[float | None, typer.Option(min=0.1, help=(
        "Wall-time budget. With --iters it only ends the run early; alone (default 60) the learning rate follows "
        "it, so runs are not repeatable."))] = None,
    iters: Annotated[int | None, typer.Option(min=1, help=(
        "Iterations; the learning rate follows them, so a run is repeatable with --seed (default: as many as "
        "--minutes allows, at most 5000)."))] = None,
    batch: Annotated[int, typer.Option(min=1, help="Crops per batch.")] = 8,
    crop: Annotated[int, typer.Option(min=64, help="Training crop side in pixels (a multiple of 16).")] = 192,
    lr: Annotated[float, typer.Option(help="Peak learning rate, > 0 (cosine over --iters, else over --minutes).")
                  ] = 2e-3,
    eval_every: Annotated[int, typer.Option(min=1, help="Validate (and export a new best) every N iterations.")
                          ] = 150,
    val_per_origin: Annotated[int, typer.Option(min=1, help="Validation fields per source.")] = 40,
    init: Annotated[Path | None, typer.Option(help="Start from these weights (a .pt this command wrote).")] = None,
    threads: Annotated[int, typer.Option(min=1, help="CPU threads.")] = 1,
    seed: Annotated[int, typer.Option(help="Random seed (a repeatable run needs --iters too).")] = 0,
) -> None:
    """Train the detector on BCCD train + TXL-PBC train, without copies (resized too) of BCCD val and test fields;
    validation (TXL-PBC val + BCCD val, without copies of training or BCCD test fields) picks the checkpoint. No test
    field is trained or validated on: BCCD test's images are read only to find their copies."""
    if not (math.isfinite(lr) and lr > 0):  # AdamW refused it after every field was loaded; 0 trained nothing
        raise WbcError(f"--lr {lr}: must be a number > 0")
    from wbc.paths import data_root as resolve_root

    run = require_train("wbc.train.detector").train_detector
    if crop % 16:
        raise WbcError(f"--crop {crop}: must be a multiple of 16")
    run(resolve_root(data_root), output, holdout=holdout, minutes=minutes, iters=iters, batch=batch, crop=crop,
        lr=lr, eval_every=eval_every, val_per_origin=val_per_origin, threads=threads, seed=seed, init=init,
        log=say, overwrite=overwrite)
