"""``wbc train``: train a classifier from a config (defaults <- TOML <- flags)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wbc.cli._app import app, console
from wbc.cli._common import DataRootOpt, require_train


@app.command()
def train(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="TOML config file.")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Run folder.")] = Path("runs/latest"),
    dataset: Annotated[str | None, typer.Option("--dataset", "--data", help=(
        "Class-per-folder dataset, or a manifest CSV (a run's manifest.csv: its split is kept, new rows go to train "
        "and val)."))] = None,
    data_root: DataRootOpt = None,
    model: Annotated[str | None, typer.Option("--model", help="Registered model name (see `wbc models`).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    input_size: Annotated[int | None, typer.Option(help="Square input size in pixels.")] = None,
    pretrained: Annotated[bool | None, typer.Option("--pretrained/--no-pretrained", help="ImageNet start.")] = None,
    augment: Annotated[bool | None, typer.Option("--augment/--no-augment")] = None,
    balance: Annotated[str | None, typer.Option(help="loss | sampler | none")] = None,
    patience: Annotated[int | None, typer.Option(help="Early-stopping patience in epochs (0: off).")] = None,
    folds: Annotated[int | None, typer.Option(help="K-fold cross-validation + ensemble (K >= 2).")] = None,
    max_per_class: Annotated[int | None, typer.Option(help="Cap images per class (0: all).")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads.")] = None,
    num_workers: Annotated[int | None, typer.Option(help="Augmentation worker processes (0: none).")] = None,
    device: Annotated[str | None, typer.Option(help="cpu | cuda | auto (a GPU when there is one).")] = None,
    unlabelled: Annotated[str | None, typer.Option(
        help="Other labs' unlabelled cells to learn from by consistency (FixMatch): txl_pbc:ORIGIN[,ORIGIN] "
             "or a folder of cell images; '' turns the config's off.")] = None,
    unlabelled_crop: Annotated[str | None, typer.Option(
        help="How TXL-PBC's WBC boxes are cut for --unlabelled: smear (as wbc analyze, mirrored past the field) | "
             "single (as a lab's single-cell image, re-framed as wbc classify does) | both.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help=(
        "Continue the run in --output with its own settings (a flag or config key that differs is refused; "
        "--device, --threads and --num-workers are this machine's)."))] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help=(
        "Replace the run or model --output holds (without it, or --resume, such a folder is refused)."))] = False,
    nproc: Annotated[int, typer.Option(
        "--nproc", min=1, help="Data-parallel processes on this machine (DDP: gloo on CPUs, NCCL on GPUs).")] = 1,
    test: Annotated[bool, typer.Option(
        "--test/--no-test", help="Score the test split when the run ends; --no-test holds it back for a candidate "
                                 "chosen on validation (score it once later with wbc evaluate --split test).")] = True,
) -> None:
    """Train a classifier: split, augment, fit, early-stop, calibrate, export ONNX, report on test."""
    from wbc.config import given_options, load_config

    overrides = dict(data=dataset, model=model, epochs=epochs, batch_size=batch_size, lr=lr,
                     input_size=input_size, pretrained=pretrained, augment=augment, balance=balance,
                     patience=patience, folds=folds, max_per_class=max_per_class, seed=seed, threads=threads,
                     num_workers=num_workers, device=device, unlabelled=unlabelled, unlabelled_crop=unlabelled_crop)
    cfg = load_config(config, overrides)
    run = require_train("wbc.train.loop").run_training
    ranks = require_train("wbc.train.distributed")
    try:
        run(cfg, output, data_root=data_root, resume=resume, console=console, nproc=nproc, score_test=test,
            given=given_options(config, overrides), overwrite=overwrite)
    except ranks.StoppedWithMain:  # a torchrun rank other than 0 stopped by rank 0's error: rank 0 prints the one line
        ranks.wait_for_main()
        raise typer.Exit(1) from None
    finally:  # under torchrun: a process group left to the interpreter's exit can abort it (SIGABRT)
        ranks.cleanup()
