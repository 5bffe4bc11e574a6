"""Options shared by several commands, so that one name always means one thing.

``--data-root`` is the folder that holds the datasets (``pbc/``, ``bccd/``, ...; default ``$WBC_DATA_DIR`` or
``../shared/data``); a *dataset* (a class-per-folder tree or a manifest CSV) is a positional argument or
``--dataset`` (``--data`` is kept as its short alias). ``--model`` is always a classifier ONNX file,
``--segmenter`` a registered segmenter name.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import typer
from rich.markup import escape

from wbc.cli._app import console

DataRootOpt = Annotated[
    Path | None, typer.Option("--data-root", help="Data root (default: $WBC_DATA_DIR or ../shared/data).")
]
ModelOpt = Annotated[
    Path | None, typer.Option("--model", "-m", help="Classifier ONNX (default: the model shipped with wbc).")
]
SegmenterOpt = Annotated[str, typer.Option(
    "--segmenter", help="auto | detector | classical | learned (auto: the learned detector when shipped).")]
SegmenterModelOpt = Annotated[Path | None, typer.Option(
    "--segmenter-model", help="The segmenter's ONNX file: a WBC detector (auto, detector) or a U-Net (learned); its "
                              "kind is checked when it is loaded.")]
PixelSizeOpt = Annotated[float | None, typer.Option(
    "--pixel-size", min=0.01, max=10.0,
    help="Micrometres per pixel of the fields (from the objective and camera); overrides the scale "
    "measured from the red cells.")]
ThreadsOpt = Annotated[int, typer.Option("--threads", min=1, help="CPU threads for inference.")]
ClassesOpt = Annotated[str | None, typer.Option(
    "--classes", help="Answer only among these classes: '5part' (neutrophil, lymphocyte, monocyte, eosinophil, "
    "basophil) or a comma-separated list; probabilities are renormalised over them (default: every class).")]
TtaOpt = Annotated[int | None, typer.Option(
    "--tta", min=1, max=8, help="Average each cell's answer over this many flips/rotations (1-8; 4: the four "
    "rotations). Default: the model's own (1 for the shipped model, whose single-cell answers below 0.7 confidence "
    "are answered again by the four rotations; 4 for models `wbc adapt` writes), and at least 4 for cells found in "
    "smear fields. Costs that many network passes per cell; any value, 1 included, turns the re-run off.")]
ColourCalibrationOpt = Annotated[bool, typer.Option(
    "--colour-calibration/--no-colour-calibration", help="Map each smear field's glass and red-cell colours onto "
    "the training lab's before its cells are classified (the field is its own colour standard; a model adapted "
    "to a lab by `wbc adapt` takes that lab's colours as they come).")]
CellColourOpt = Annotated[bool, typer.Option(
    "--colour-calibration/--no-colour-calibration", help="Weigh a cell answered lymphocyte or erythroblast, whose "
    "colours are unlike the training images', by its cytoplasm's colour against the red cells around it (the image "
    "is its own colour standard), as `wbc analyze` weighs a smear cell.")]
ReframeOpt = Annotated[bool, typer.Option(
    "--reframe/--no-reframe", help="Re-frame cells framed unlike the training crops (filling a tight crop, "
    "small in a wide field) before classifying them.")]
EngineOpt = Annotated[str, typer.Option("--engine", help="local (this process) | ray (a Ray actor pool; needs "
                                      "the distributed extra).")]
RayAddressOpt = Annotated[str | None, typer.Option(
    "--ray-address", help="Ray cluster to join (auto: the one `ray start` runs here; default: a local Ray runtime).")]
ActorsOpt = Annotated[int, typer.Option("--actors", min=1, help="Ray actors (each with --threads threads).")]


def check_engine(engine: str, ray_address: str | None) -> None:
    """``--engine`` is local or ray; ``--ray-address`` only means something with ray."""
    from wbc.errors import WbcError

    if engine not in ("local", "ray"):
        raise WbcError(f"--engine {engine}: choose local or ray")
    if ray_address and engine != "ray":
        raise WbcError("--ray-address needs --engine ray")


def require_train(module: str) -> ModuleType:
    """Import a ``wbc.train`` module only when a command needs it (torch is the optional train extra); without
    the extra, a one-line message naming it instead of a traceback."""
    from wbc.errors import WbcError

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise WbcError(f"training needs the train extra: pip install -e '.[train]' ({exc})") from None


def say(message: str) -> None:
    """Print a plain line to the console; user paths in it are escaped, so ``[/x]`` never reads as markup."""
    console.print(escape(message), highlight=False)


def warn(message: str, prefix: str = "warning:") -> None:
    """Print a yellow ``prefix`` and a plain (escaped) message."""
    console.print(f"[yellow]{prefix}[/] {escape(message)}", highlight=False)


def say_differential(counts: Mapping[str, int], classes: Sequence[str]) -> None:
    """Print a class's line for each class counted: its share of the WBCs, or for NRBCs and platelets its rate per
    100 WBCs (:func:`wbc.counts.differential_rows`, as differential.csv and report.html give them, so a console never
    shows a second differential)."""
    from wbc.counts import NO_WBC_RATE, differential_rows, fixed
    from wbc.labels import PER_100_WBC

    for _, c, k, _, percent, _, _ in differential_rows(dict(counts), classes, "", digits=4):  # as the pages round
        if k:
            unit = " per 100 WBCs" if c in PER_100_WBC else "%"
            value = NO_WBC_RATE if percent is None else f"{fixed(percent):>5}{unit}"
            say(f"  {c:<13}{k:>6}  {value}")


#: At most this many skipped files are named one by one; the others are counted by reason (a dataset's folder of
#: masks beside its photos would otherwise print a line each).
SKIPPED_SHOWN = 10


def skip_reason(message: str) -> str:
    """The kind of problem in a ``"<file>: <problem> (<details>)"`` message, for counting: sizes and details dropped.

    >>> skip_reason("a/b.png: a mask or a drawing, not a photo of stained cells (beyond its background, ...)")
    'a mask or a drawing, not a photo of stained cells'
    >>> skip_reason("c.jpg: 12x9 is too small to be a single-cell image (minimum side 16 px)")
    'too small to be a single-cell image'
    >>> skip_reason("d.tif: analysis failed (ValueError: no)")
    'analysis failed'
    """
    import re

    problem = message.split(": ", 1)[-1]
    return re.sub(r"^\d+x\d+ is ", "", problem.split(" (")[0])


def warn_skipped(messages: Iterable[str], listed_in: str | None = None, shown: int = SKIPPED_SHOWN) -> None:
    """Say which files a run left out and why: the first ``shown`` by name, the others counted by kind of problem
    (``listed_in``: where all of them are named; with none, pass ``shown`` to name every one here)."""
    from collections import Counter

    messages = list(messages)
    for msg in messages[:shown]:
        warn(msg, "skipped")
    if rest := messages[shown:]:
        kinds = "; ".join(f"{kind} ({n})" for kind, n in Counter(map(skip_reason, rest)).most_common())
        where = f", every one named in {listed_in}" if listed_in else ""
        warn(f"{len(rest)} more file(s){where}: {kinds}", "skipped")


def note_foreign_images(paths: Iterable[str | os.PathLike[str]], listed: bool = True) -> list[tuple[str, str]]:
    """Say which of the folders' files are images in formats wbc cannot read (a phone's HEIC, raw, DICOM, ...), left
    out of the run (:func:`wbc.io.foreign_images_note`); nothing when there are none. Then, as skipped files are
    listed (:func:`warn_skipped`), the subfolders it may not list and the image links whose file is missing
    (:func:`wbc.io.left_out_under`; since wbc 0.32.0: before, a day's folder on a share was dropped in silence).

    Returns those as ``(path, message)`` (:func:`wbc.batch.left_out_errors`), for a run's errors file; ``listed``
    False: not said here, as the caller names them with the files it could not read (`wbc classify`, in
    ``<stem>.errors.csv``; since wbc 0.35.0, before which past ten were named nowhere)."""
    from wbc.batch import left_out_errors
    from wbc.io import foreign_images_note

    paths = list(paths)
    if note := foreign_images_note(paths):
        warn(note, "note:")
    left_out = left_out_errors(paths)
    if listed:
        warn_skipped(msg for _, msg in left_out)
    return left_out


def note_unchecked_model(classifier: Any) -> None:
    """Say when a model carries no out-of-distribution statistics: a model straight from `wbc train` flags no cell
    unlike its training images and calibrates no field's colours, and nothing said so. A model adapted to a lab (`wbc
    adapt`) is told to fit them on the model it was adapted from and adapt again: fitted on the adapted model, a run
    manifest's cells became its reference and every cell of the lab it was adapted on was flagged (before wbc
    0.36.0 the note gave the plain `wbc ood fit` command for it too)."""
    info = getattr(classifier, "info", None)
    if info is not None and not info.ood:
        adapt = info.extra.get("adapt") if isinstance(info.extra, dict) else None
        if isinstance(adapt, dict):
            base = (adapt.get("base") or {}).get("model_id")
            how = (f"fit them on the model it was adapted from{f' ({base})' if base else ''} with `wbc ood fit --model "
                   "BASE --manifest RUN/manifest.csv` and adapt again (the adaptation adds this lab's cells as a "
                   "reference); fitted on this model, a run's cells would be its reference and the lab's own flagged")
        else:
            how = "fit them with `wbc ood fit --model MODEL --manifest RUN/manifest.csv`"
        warn(f"{getattr(classifier, 'path', 'the model')}: no out-of-distribution statistics or training colours: "
             f"cells unlike its training images are not flagged and smear fields not colour-calibrated; {how}",
             "note:")


@contextmanager
def progress(description: str, total: int | None) -> Iterator[Callable[..., None]]:
    """A progress bar on a terminal, nothing otherwise (a log file gets no ``1/62/6...`` counters).

    Yields ``update(completed, total=None)``.
    """
    if not console.is_terminal:
        yield lambda *_a, **_k: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n, total=None: bar.update(task, completed=n, total=total)
