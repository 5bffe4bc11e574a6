"""``wbc export``: a trained checkpoint -> ONNX with metadata, checked against PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wbc.cli._app import app
from wbc.cli._common import say
from wbc.errors import WbcError


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Argument(help="A run folder or a .pt checkpoint.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="ONNX file to write.")] = Path("model.onnx"),
    opset: Annotated[int, typer.Option(min=17, help="ONNX opset: 17 up to the highest this PyTorch writes.")] = 17,
) -> None:
    """Export a trained checkpoint to ONNX (+ metadata) and check it against PyTorch."""
    from wbc.io import check_output_file

    # before torch is loaded: a bad path fails at once, in one line, and never over the checkpoint itself
    if output.suffix.lower() != ".onnx" and not output.is_dir():
        raise WbcError(f"{output}: --output must be an .onnx file (a checkpoint there would be replaced)")
    check_output_file(output)
    try:
        from wbc.train.export import export_checkpoint
    except ImportError as exc:
        raise WbcError(f"export needs the train extra: pip install -e '.[train]' ({exc})") from None
    diff = export_checkpoint(checkpoint, output, opset=opset)
    say(f"wrote {output}; max |onnx - torch| = {diff:.2e}")
