"""``wbc export-weights``: a run's checkpoint -> the half-precision weights that ship beside a model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wbc.cli._app import app
from wbc.cli._common import say
from wbc.errors import WbcError


@app.command("export-weights")
def export_weights(
    checkpoint: Annotated[Path, typer.Argument(help="A run's best.pt.")],
    output: Annotated[Path, typer.Argument(help="E.g. src/wbc/models/default/wbc_classifier.pt.")],
) -> None:
    """Write a checkpoint's network weights in half precision, as `wbc adapt` reads them (MODEL.pt beside
    MODEL.onnx)."""
    try:
        from wbc.train.finetune import export_half_weights
    except ImportError as exc:
        raise WbcError(f"export-weights needs the train extra: pip install -e '.[train]' ({exc})") from None
    export_half_weights(checkpoint, output)
    say(f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB)")
