"""``wbc ood fit``: fit out-of-distribution statistics on a run and store them in its model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wbc.cli._app import app
from wbc.cli._common import DataRootOpt, ThreadsOpt, say

ood_app = typer.Typer(help="Out-of-distribution flags: fit the statistics a model uses to flag unfamiliar cells.",
                      no_args_is_help=True)
app.add_typer(ood_app, name="ood")


@ood_app.command("fit")
def fit(
    model: Annotated[Path, typer.Option("--model", "-m", help="ONNX model to fit the statistics for.")],
    manifest: Annotated[Path, typer.Option("--manifest", help="The model's run manifest (train/val split).")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write here instead of updating --model.")
                      ] = None,
    data_root: DataRootOpt = None,
    max_per_class: Annotated[int, typer.Option(help="Cap images per class and split (0: all).")] = 300,
    percentile: Annotated[float | None, typer.Option(help="Validation percentile that becomes the threshold "
                                                     "(default 99.5).")] = None,
    threads: ThreadsOpt = 2,
) -> None:
    """Fit OOD statistics on the run's train split, thresholds on its val split; store them in the model."""
    from wbc.io import check_output_file
    from wbc.ood import DEFAULT_PERCENTILE
    from wbc.ood_fit import fit_from_manifest

    check_output_file(output or model)  # before the fitting: a bad path fails at once, in one line
    ood = fit_from_manifest(model, manifest, output, max_per_class, percentile or DEFAULT_PERCENTILE,
                            data_root, threads)
    ref = ood["references"][0]
    say(f"OOD statistics from {ood['n_train']} train / {ood['n_val']} val cells; thresholds "
        f"colour {ref['colour']['threshold']:.2f}, feature {ref['feature']['threshold']:.2f} -> {output or model}")
