"""``wbc ood fit``: fit out-of-distribution statistics on a run and store them in its model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wbc.cli._app import app
from wbc.cli._common import DataRootOpt, ThreadsOpt, say, warn

ood_app = typer.Typer(help="Out-of-distribution flags: fit the statistics a model uses to flag unfamiliar cells.",
                      no_args_is_help=True)
app.add_typer(ood_app, name="ood")


@ood_app.command("fit")
def fit(
    model: Annotated[Path, typer.Option("--model", "-m", help="ONNX model to fit the statistics for.")],
    manifest: Annotated[Path, typer.Option("--manifest", help="The model's run manifest (train/val split; a model "
                                           "that records its split takes that one only).")],
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Write the model with its statistics here (an .onnx file, its metadata beside it as "
                               ".json) instead of updating --model.")] = None,
    data_root: DataRootOpt = None,
    max_per_class: Annotated[int, typer.Option(help="Cap images per class and split (0: all).")] = 300,
    percentile: Annotated[float | None, typer.Option(
        min=50.0, max=100.0, help="Share of validation cells, in percent, left unflagged by both scores together "
                                  "(default 99.5: 0.5 % flagged).")] = None,
    threads: ThreadsOpt = 2,
) -> None:
    """Fit OOD statistics on the run's train split, thresholds on its val split; store them in the model."""
    from wbc.data import manifest_data_root
    from wbc.io import check_output_file
    from wbc.model import check_model_output
    from wbc.ood import DEFAULT_PERCENTILE, check_percentile
    from wbc.ood_fit import fit_from_manifest

    # before the fitting: a bad path or value fails at once, in one line
    chosen = check_percentile(DEFAULT_PERCENTILE if percentile is None else percentile)
    check_output_file(check_model_output(output or model))
    root, moved = manifest_data_root(manifest, data_root)  # a run trained with --data-root: its images under that root
    if moved:
        say(moved)
    ood = fit_from_manifest(model, manifest, output, max_per_class, chosen, root, threads,
                            note=lambda msg: warn(msg, "note:"))
    ref = ood["references"][0]
    say(f"OOD statistics from {ood['n_train']} train / {ood['n_val']} val cells; thresholds "
        f"colour {ref['colour']['threshold']:.2f}, feature {ref['feature']['threshold']:.2f} -> {output or model}")
