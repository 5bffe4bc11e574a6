"""``wbc quantize``: int8 model for faster CPU inference, re-measured on validation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wbc.cli._app import app
from wbc.cli._common import DataRootOpt, ThreadsOpt, say


@app.command()
def quantize(
    model: Annotated[Path, typer.Argument(help="Exported float ONNX model.")],
    manifest: Annotated[Path, typer.Option("--manifest", help="The model's run manifest (train/val split; a model "
                                           "that records its split takes that one only).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="int8 ONNX file to write.")],
    per_class: Annotated[int, typer.Option("--per-class", min=1, help="Calibration cells per class.")] = 32,
    data_root: DataRootOpt = None,
    threads: ThreadsOpt = 2,
) -> None:
    """Quantise a model to int8 for ONNX Runtime; re-fit calibration, review threshold and OOD on val (a model
    adapted to a lab keeps its own: the manifest does not hold the lab's cells)."""
    from wbc.data import manifest_data_root
    from wbc.io import check_output_file
    from wbc.model import check_model_output
    from wbc.quantize import quantize_model

    check_output_file(check_model_output(output))  # before the quantisation: a bad path fails at once, in one line
    root, moved = manifest_data_root(manifest, data_root)  # a run trained with --data-root: its images under that root
    if moved:
        say(moved)
    rep = quantize_model(model, manifest, output, per_class=per_class, data_root=root, threads=threads)
    # a cross-validation run's val rows trained its members: those accuracies are in-sample, the agreement is not
    in_sample = " (in-sample: those rows trained the members; agreement only)" if rep["val_in_sample"] else ""
    say(f"wrote {output}: val accuracy float {rep['val_accuracy_float']:.4f} -> int8 {rep['val_accuracy_int8']:.4f}, "
        f"agreement {rep['val_agreement']:.4f} on {rep['val_cells']} cells{in_sample} ({rep['seconds']:.0f} s)")
    if rep.get("labels_left_out"):
        say(f"{manifest}: rows labelled {', '.join(rep['labels_left_out'][:8])} are of no class of the model's; "
            "left out")
