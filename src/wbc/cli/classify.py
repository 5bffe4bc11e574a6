"""``wbc classify``: single-cell images -> a predictions CSV and a count summary."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated

import typer

from wbc.cli._app import app
from wbc.cli._common import (
    SKIPPED_SHOWN,
    ActorsOpt,
    CellColourOpt,
    ClassesOpt,
    EngineOpt,
    ModelOpt,
    RayAddressOpt,
    ReframeOpt,
    ThreadsOpt,
    TtaOpt,
    note_foreign_images,
    progress,
    say,
    warn,
    warn_skipped,
)
from wbc.errors import WbcError


@app.command()
def classify(
    paths: Annotated[list[Path], typer.Argument(help="Single-cell images or folders of them.")],
    model: ModelOpt = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="CSV to write.")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 128,
    threads: ThreadsOpt = 2,
    engine: EngineOpt = "local",
    ray_address: RayAddressOpt = None,
    actors: ActorsOpt = 2,
    classes: ClassesOpt = None,
    reframe: ReframeOpt = True,
    tta: TtaOpt = None,
    colour_calibration: CellColourOpt = True,
    report: Annotated[Path | None, typer.Option(
        "--report", help="Also write an HTML page of the answers to check at a glance: the differential with 95% "
                         "intervals and each class's cells as the model saw them, flagged ones first.")] = None,
    report_cells: Annotated[int, typer.Option(
        min=0, help="Cells shown per class on the --report page (flagged first, then the least confident; "
                    "0: every cell).")] = 48,  # wbc.evaluate.classified.REPORT_CELLS (not imported at start-up)
) -> None:
    """Classify single-cell images; write path,label,confidence,review,p_<class> rows as CSV."""
    from wbc.batch import with_failed_copies
    from wbc.classify import classify_paths
    from wbc.cli._common import check_engine, note_unchecked_model, say_differential
    from wbc.formats import write_copies_csv, write_errors_csv, write_predictions_csv
    from wbc.io import check_output_file, is_image_file, iter_image_paths, no_images_message, output_target
    from wbc.model import load_model
    from wbc.ood import adapted_without_labels, advice_for, needs_adaptation, ood_warning

    files, reached_twice = each_file_once(iter_image_paths(paths))
    files, copies = without_copies(files)
    if not files:
        raise WbcError(no_images_message(paths))
    check_engine(engine, ray_address)
    out = check_output_file(output or Path("predictions.csv"))  # before any work: a bad path fails at once
    page = check_output_file(report) if report else None
    # every unreadable file is named in a CSV beside the predictions; none beside a stream (/dev/stdout): all on stderr
    errors_file = None if output_target(out)[1] else check_output_file(errors_csv_path(out))
    copies_file = None if errors_file is None else check_output_file(copies_csv_path(out))  # the copies left out
    refuse_overwriting_outputs((("--output", out), ("the list of unreadable files", errors_file),
                                ("the list of copies", copies_file), ("--report", page)))
    inputs = {f.resolve() for f in files}
    for given in (out, page):  # `-o cells/*.jpg` in a shell makes the first image the output, the rest inputs
        if given is not None and (given.resolve() in inputs or is_image_file(given)):
            raise WbcError(f"{given}: is an image{' of the input' if given.resolve() in inputs else ''}; give a "
                           f"{'.csv' if given is out else '.html'} file for the output")
    # once the command will run: a bad option fails in one line; what the listing left out is named with the errors
    left_out = note_foreign_images(paths, listed=False)
    if reached_twice:
        warn(f"{reached_twice} path(s) led to a file already in the run (overlapping inputs, links to the same file) "
             "and were left out: each file is classified and counted once", "note:")
    clf = (load_model(model, threads=threads).with_classes(classes).with_tta(tta)
           .with_colour_calibration(colour_calibration))
    note_unchecked_model(clf)
    with progress("classifying", len(files)) as update:
        if engine == "ray":
            from wbc.batch import ModelSpec
            from wbc.distributed import classify_paths_ray

            spec = ModelSpec(str(model) if model else None, threads=threads, classes=classes, tta=tta,
                             colour_calibration=colour_calibration)
            res = classify_paths_ray(files, spec, batch_size=batch_size, actors=actors, address=ray_address,
                                     progress=update, reframe=reframe)
        else:
            res = classify_paths(files, clf, batch_size=batch_size, workers=threads, progress=update,
                                 reframe=reframe)
    res.errors[:0] = left_out  # links to missing files, folders it may not list: in <stem>.errors.csv too
    write_predictions_csv(out, res.predictions, clf.classes)
    errors, named = with_failed_copies(res.errors, [(str(c), str(o)) for c, o in copies])  # as `wbc analyze`
    if errors_file is not None and errors:
        write_errors_csv(errors_file, errors)
    elif errors_file is not None and errors_file.is_file():  # an earlier run's: it would name files this run read
        errors_file.unlink()
    warn_skipped((msg for _, msg in errors), str(errors_file) if errors_file else None,
                 shown=len(errors) if errors_file is None else SKIPPED_SHOWN)
    if copies_file is not None and named:
        write_copies_csv(copies_file, named)
    elif copies_file is not None and copies_file.is_file():  # an earlier run's: it would name files this run read
        copies_file.unlink()
    warn_skipped((f"{copy}: the same image as another input, classified and counted once ({original} has the same "
                  "bytes)" for copy, original in named), str(copies_file) if copies_file else None,
                 shown=len(named) if copies_file is None else SKIPPED_SHOWN)
    n = len(res.predictions)
    counts = res.counts()
    n_review = sum(p.review for p in res.predictions)
    say(f"{n} cells classified with {clf.model_id} -> {out}")
    say_differential(counts, clf.classes)  # as report.html: shares of the WBCs, NRBCs and platelets per 100 WBCs
    say(f"  flagged for review: {n_review}")
    if outside := res.outside_note():
        warn(outside)
    if crowded := res.other_cells_note():
        warn(crowded)
    if stacks := res.several_images_note():
        warn(stacks)
    warning = ood_warning(res.predictions, adapted_without_labels(clf))
    if warning:
        warn(f"{warning}; {advice_for(clf)}" if needs_adaptation(res.predictions) else warning)
    if page is not None:
        from wbc.evaluate.classified import write_classified_report

        write_classified_report(page, res.predictions, clf, per_class=report_cells, reframe=reframe,
                                sources=[str(p) for p in paths], warning=warning, errors=errors)
        say(f"report -> {page}")
    if errors:
        listed = f", listed in {errors_file}" if errors_file else ""
        warn(f"{len(errors)} file(s) could not be read{listed}", "note:")
        if not n:
            raise typer.Exit(1)


def errors_csv_path(output: Path) -> Path:
    """Where `wbc classify` names the files it could not read: ``<output stem>.errors.csv`` beside the predictions
    (``path,error``, as `wbc analyze`'s ``errors.csv``); since wbc 0.33.0, before which only the first ten were named.

    >>> errors_csv_path(Path("run/predictions.csv")).as_posix()
    'run/predictions.errors.csv'
    """
    return output.with_name(f"{output.name.removesuffix(output.suffix)}.errors.csv")


def copies_csv_path(output: Path) -> Path:
    """Where `wbc classify` names the byte copies it left out, each with the file kept: ``<output stem>.copies.csv``
    (``path,same_bytes_as``, as `wbc analyze`'s ``copies.csv``); since wbc 0.35.0, before which past ten were named
    nowhere.

    >>> copies_csv_path(Path("run/predictions.csv")).as_posix()
    'run/predictions.copies.csv'
    """
    return output.with_name(f"{output.name.removesuffix(output.suffix)}.copies.csv")


def each_file_once(files: Iterable[Path]) -> tuple[list[Path], int]:
    """``files`` with each file once however it was reached (its real path: overlapping inputs such as ``day1
    day1/a``, a link to a file already listed), in first-seen order, and how many were left out: before wbc 0.33.0
    such a cell was classified and counted once per way, inflating its class in the differential. `wbc analyze`
    keeps each field once the same way (:func:`wbc.batch.plan_run`)."""
    seen: set[Path] = set()
    unique = []
    n = 0
    for f in files:
        n += 1
        if (real := f.resolve()) not in seen:
            seen.add(real)
            unique.append(f)
    return unique, n - len(unique)


def refuse_overwriting_outputs(outputs: Iterable[tuple[str, Path | None]]) -> None:
    """Refuse two of the run's outputs (flag or what it is, path) that land on one file: the page, written last,
    replaced the predictions CSV or the list of unreadable files with HTML (before wbc 0.35.0), as `wbc adapt` and
    `wbc pick-cells` already refuse. Streams (``/dev/stdout``) are written in place, never replaced: not compared."""
    from wbc.io import output_target

    named: dict[Path, str] = {}
    for flag, path in outputs:
        if path is None:
            continue
        real, stream = output_target(path)
        if stream:
            continue
        if (real := real.resolve()) in named:
            raise WbcError(f"{path}: {flag} would overwrite {named[real]}: choose another name")
        named[real] = flag


def without_copies(files: list[Path]) -> tuple[list[Path], list[tuple[Path, Path]]]:
    """``files`` without those whose bytes another one has (a file downloaded twice, ``cell.jpg`` and ``cell
    (1).jpg``; a cell exported into two folders), and those copies as (copy, the file kept), as `wbc analyze` keeps
    each field once (:func:`wbc.batch.without_copies`; the one kept: :func:`wbc.batch.kept_of_copies`, ``cell.jpg``):
    before wbc 0.35.0 `wbc classify` counted such a cell once per copy. Only files of a size another file has are
    hashed: a cell's bytes are read once more at most."""
    from wbc.batch import copies_of_files

    left_out = copies_of_files(files)
    return ([f for i, f in enumerate(files) if i not in left_out],
            [(files[i], files[k]) for i, k in sorted(left_out.items())])
