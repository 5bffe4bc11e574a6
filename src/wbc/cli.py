"""The ``wbc`` command line: each command is a thin call into the modules that do the work.

User errors (:class:`wbc.errors.WbcError`) print one clear line and exit 1; they never show a traceback.
Heavy imports (torch, matplotlib) happen inside the commands that need them, so ``wbc --help`` and the
analysis commands start fast.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from wbc.errors import WbcError

app = typer.Typer(
    name="wbc",
    help="White-blood-cell differentials from blood-smear images: detect, outline, classify, count, report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True, soft_wrap=True)

DataOpt = Annotated[
    Path | None, typer.Option("--data", help="Data root (default: $WBC_DATA_DIR or ../shared/data).")
]
ModelOpt = Annotated[
    Path | None, typer.Option("--model", "-m", help="ONNX model (default: the model shipped with wbc).")
]
ThreadsOpt = Annotated[int, typer.Option("--threads", help="CPU threads for inference.", min=1)]


def fail(message: str) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(1)


@app.command()
def classify(
    paths: Annotated[list[Path], typer.Argument(help="Single-cell images or folders of them.")],
    model: ModelOpt = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="CSV to write.")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 128,
    threads: ThreadsOpt = 2,
) -> None:
    """Classify single-cell images; write path,label,confidence,review,p_<class> rows as CSV."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from wbc.classify import classify_paths, write_predictions_csv
    from wbc.io import iter_image_paths
    from wbc.model import load_model

    files = list(iter_image_paths(paths))
    if not files:
        raise WbcError(f"no image files in {', '.join(map(str, paths))}")
    clf = load_model(model, threads=threads)
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task("classifying", total=len(files))
        res = classify_paths(files, clf, batch_size=batch_size, workers=threads,
                             progress=lambda n: bar.update(task, completed=n))
    out = output or Path("predictions.csv")
    write_predictions_csv(out, res.predictions, clf.classes)
    for _path, msg in res.errors:
        console.print(f"[yellow]skipped[/] {msg}", highlight=False)
    n = len(res.predictions)
    counts = res.counts()
    n_review = sum(p.review for p in res.predictions)
    console.print(f"{n} cells classified with {clf.model_id} -> {out}", highlight=False)
    for c in clf.classes:
        if counts.get(c):
            console.print(f"  {c:<13}{counts[c]:>7}  {100 * counts[c] / n:5.1f}%", highlight=False)
    console.print(f"  flagged for review: {n_review}", highlight=False)
    from wbc.ood import ood_warning

    if warning := ood_warning(res.predictions):
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    if res.errors:
        console.print(f"[yellow]{len(res.errors)} file(s) could not be read[/]")
        if not n:
            raise typer.Exit(1)


@app.command()
def train(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="TOML config file.")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Run folder.")] = Path("runs/latest"),
    data: Annotated[str | None, typer.Option("--data", help="Class-per-folder dataset.")] = None,
    data_root: Annotated[Path | None, typer.Option("--data-root", help="Data root for relative paths.")] = None,
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
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --output.")] = False,
) -> None:
    """Train a classifier: split, augment, fit, early-stop, calibrate, export ONNX, report on test."""
    from wbc.config import load_config

    overrides = dict(data=data, model=model, epochs=epochs, batch_size=batch_size, lr=lr,
                     input_size=input_size, pretrained=pretrained, augment=augment, balance=balance,
                     patience=patience, folds=folds, max_per_class=max_per_class, seed=seed, threads=threads,
                     num_workers=num_workers, device=device)
    cfg = load_config(config, overrides)
    try:
        from wbc.train.loop import run_training
    except ImportError as exc:
        raise WbcError(f"training needs the train extra: pip install -e '.[train]' ({exc})") from None
    run_training(cfg, output, data_root=data_root, resume=resume, console=console)


@app.command()
def ensemble(
    runs: Annotated[list[Path], typer.Argument(help="Finished run folders that share one split.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the ensemble.")] = Path(
        "runs/ensemble"),
    data_root: Annotated[Path | None, typer.Option("--data-root", help="Data root for the manifest.")] = None,
) -> None:
    """Average the probabilities of several trained runs; calibrate, export one ONNX, score the test split."""
    if len(runs) < 2:
        raise WbcError("an ensemble needs at least two run folders")
    try:
        from wbc.train.loop import run_ensemble
    except ImportError as exc:
        raise WbcError(f"ensembles need the train extra: pip install -e '.[train]' ({exc})") from None
    run_ensemble(runs, output, data_root=data_root, console=console)


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Argument(help="A run folder or a .pt checkpoint.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="ONNX file to write.")] = Path("model.onnx"),
    opset: Annotated[int, typer.Option(min=17)] = 17,
) -> None:
    """Export a trained checkpoint to ONNX (+ metadata) and check it against PyTorch."""
    try:
        from wbc.train.export import export_checkpoint
    except ImportError as exc:
        raise WbcError(f"export needs the train extra: pip install -e '.[train]' ({exc})") from None
    diff = export_checkpoint(checkpoint, output, opset=opset)
    console.print(f"wrote {output}; max |onnx - torch| = {diff:.2e}", highlight=False)


@app.command()
def quantize(
    model: Annotated[Path, typer.Argument(help="Exported float ONNX model.")],
    manifest: Annotated[Path, typer.Option("--manifest", help="The model's run manifest (train/val split).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="int8 ONNX file to write.")],
    per_class: Annotated[int, typer.Option("--per-class", min=1, help="Calibration cells per class.")] = 32,
    data: DataOpt = None,
    threads: ThreadsOpt = 2,
) -> None:
    """Quantise a model to int8 for ONNX Runtime; re-fit calibration, review threshold and OOD on val."""
    from wbc.quantize import quantize_model

    rep = quantize_model(model, manifest, output, per_class=per_class, data_root=data, threads=threads)
    console.print(
        f"wrote {output}: val accuracy float {rep['val_accuracy_float']:.4f} -> int8 {rep['val_accuracy_int8']:.4f}, "
        f"agreement {rep['val_agreement']:.4f} on {rep['val_cells']} cells ({rep['seconds']:.0f} s)",
        highlight=False)


@app.command()
def examples(
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to fill.")] = Path("data/raw_images"),
    n: Annotated[int, typer.Option("--n", min=1, help="How many smear fields.")] = 6,
    data: DataOpt = None,
) -> None:
    """Copy a few BCCD test-split smear fields from the data root into data/raw_images/ to try wbc on."""
    import shutil

    from wbc.paths import data_root

    bccd = data_root(data) / "bccd"
    split = bccd / "ImageSets" / "Main" / "test.txt"
    if not split.is_file():
        raise WbcError(f"{split}: not found; set --data or WBC_DATA_DIR to the data root holding bccd/")
    names = [s.strip() for s in split.read_text().split() if s.strip()][:n]
    output.mkdir(parents=True, exist_ok=True)
    for name in names:
        src = bccd / "JPEGImages" / f"{name}.jpg"
        if src.is_file() and not (output / src.name).exists():
            shutil.copyfile(src, output / src.name)
    console.print(f"{len(names)} smear fields from {bccd} (MIT licence) in {output}/", highlight=False)


@app.command("models")
def list_models_cmd() -> None:
    """List the registered network architectures."""
    from wbc.train.models import list_models

    for name, desc in list_models().items():
        typer.echo(f"{name:<20}{desc}")


from wbc.evaluate.command import evaluate_command  # noqa: E402  (light: heavy imports run inside)

app.command("evaluate")(evaluate_command)

from wbc.analyze import analyze_command, evaluate_smears_command  # noqa: E402

app.command("analyze")(analyze_command)
app.command("evaluate-smears")(evaluate_smears_command)

from wbc.adapt import adapt_command  # noqa: E402

app.command("adapt")(adapt_command)

from wbc.serve.command import serve_command  # noqa: E402  (light: FastAPI is imported when serving)

app.command("serve")(serve_command)


#: glibc's default malloc makes PyTorch on CPU 2-4x slower through page faults (measured on our
#: 2-core machines); the setting must be in place before Python starts, hence the re-exec.
GLIBC_FIX = "glibc.malloc.mmap_threshold=4294967295:glibc.malloc.trim_threshold=4294967295"
TORCH_COMMANDS = {"train", "export", "ensemble", "adapt"}


def _reexec_with_allocator_fix() -> None:
    if sys.platform != "linux" or os.environ.get("GLIBC_TUNABLES") or os.environ.get("WBC_NO_REEXEC"):
        return
    if not TORCH_COMMANDS & set(sys.argv[1:2]):
        return
    env = dict(os.environ, GLIBC_TUNABLES=GLIBC_FIX)
    os.execve(sys.executable, [sys.executable, "-m", "wbc", *sys.argv[1:]], env)


def main() -> None:
    """Entry point: run the app, turning user errors into one-line messages and exit code 1."""
    _reexec_with_allocator_fix()
    try:
        app()
    except WbcError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(1)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
