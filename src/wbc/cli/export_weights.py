"""``wbc export-weights``: a run's checkpoint -> the half-precision weights that ship beside a model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wbc.cli._app import app
from wbc.cli._common import say
from wbc.errors import WbcError


def check_weights_output(checkpoint: Path, output: Path, overwrite: bool) -> None:
    """Refuse, before torch is loaded, an ``output`` that is no ``.pt`` name, exists (without ``overwrite``), is the
    checkpoint itself or cannot be written: before wbc 0.33.0 ``RUN/model.onnx`` (or the shipped model's name
    tab-completed to ``.onnx``) was replaced by a PyTorch pickle, and a folder was a traceback."""
    from wbc.io import check_output_file
    from wbc.paths import checkpoint_file

    if output.suffix.lower() != ".pt" and not output.is_dir():
        raise WbcError(f"{output}: the weights are a .pt file (MODEL.pt beside MODEL.onnx); give a .pt name (another "
                       "could replace a model)")
    check_output_file(output)  # a folder, a path under a file, a place that cannot be written: one line
    read = checkpoint_file(checkpoint)  # a run folder is read as its best.pt: before wbc 0.35.0 `RUN RUN/best.pt
    # --overwrite` replaced the run's float32 best.pt with half-precision weights
    if output.exists() and read.exists() and output.resolve() == read.resolve():
        raise WbcError(f"{output}: is the checkpoint itself; give another name")
    if output.exists() and not overwrite:
        raise WbcError(f"{output}: exists; pass --overwrite to replace it, or give a new name")


@app.command("export-weights")
def export_weights(
    checkpoint: Annotated[Path, typer.Argument(help="A run folder or its best.pt (or ensemble.pt).")],
    output: Annotated[Path, typer.Argument(help="A .pt file, e.g. src/wbc/models/default/wbc_classifier.pt.")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing OUTPUT (e.g. the shipped "
                                                                "model's weights).")] = False,
) -> None:
    """Write a checkpoint's network weights in half precision, as `wbc adapt` reads them (MODEL.pt beside
    MODEL.onnx)."""
    check_weights_output(checkpoint, output, overwrite)
    try:
        from wbc.train.finetune import export_half_weights
    except ImportError as exc:
        raise WbcError(f"export-weights needs the train extra: pip install -e '.[train]' ({exc})") from None
    export_half_weights(checkpoint, output)
    say(f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB)")
