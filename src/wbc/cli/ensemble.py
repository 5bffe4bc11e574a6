"""``wbc ensemble``: one ONNX model averaging the probabilities of several runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wbc.cli._app import app, console
from wbc.cli._common import DataRootOpt
from wbc.errors import WbcError


@app.command()
def ensemble(
    runs: Annotated[list[Path], typer.Argument(help="Finished run folders that share one split.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the ensemble.")] = Path(
        "runs/ensemble"),
    data_root: DataRootOpt = None,
    test: Annotated[bool, typer.Option(
        "--test/--no-test", help="Score the test split; --no-test holds it back for a candidate chosen on "
                                 "validation.")] = True,
) -> None:
    """Average the probabilities of several trained runs; calibrate, export one ONNX, score the test split."""
    if len(runs) < 2:
        raise WbcError("an ensemble needs at least two run folders")
    try:
        from wbc.train.loop import run_ensemble
    except ImportError as exc:
        raise WbcError(f"ensembles need the train extra: pip install -e '.[train]' ({exc})") from None
    run_ensemble(runs, output, data_root=data_root, console=console, score_test=test)
