"""``wbc analyze``: whole smear fields -> per-image JSON + annotated PNG, cells.csv, differential.csv."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from wbc.cli._app import app
from wbc.cli._common import (
    ActorsOpt,
    ClassesOpt,
    ColourCalibrationOpt,
    EngineOpt,
    ModelOpt,
    PixelSizeOpt,
    RayAddressOpt,
    SegmenterModelOpt,
    SegmenterOpt,
    ThreadsOpt,
    TtaOpt,
    note_foreign_images,
    say,
    warn,
    warn_skipped,
)
from wbc.errors import WbcError


@app.command()
def analyze(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(help="Smear images or folders (default: data/raw_images/).", show_default=False),
    ] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for JSON, PNG and CSV.")] = Path(
        "results"
    ),
    model: ModelOpt = None,
    segmenter: SegmenterOpt = "auto",
    segmenter_model: SegmenterModelOpt = None,
    pixel_size: PixelSizeOpt = None,
    draw: Annotated[bool, typer.Option("--draw/--no-draw", help="Write annotated PNGs.")] = True,
    threads: ThreadsOpt = 2,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Redo fields whose results exist in --output (default: skip them, resuming a run).")
    ] = False,
    engine: EngineOpt = "local",
    ray_address: RayAddressOpt = None,
    actors: ActorsOpt = 2,
    classes: ClassesOpt = None,
    tta: TtaOpt = None,
    colour_calibration: ColourCalibrationOpt = True,
    report: Annotated[bool, typer.Option(
        "--report/--no-report", help="Write report.html in --output: the differential with 95% intervals, each "
                                     "class's cells cut from their fields (flagged first, linked to the annotated "
                                     "field) and the fields' warnings, to check at a glance.")] = True,
    report_cells: Annotated[int, typer.Option(
        min=0, help="Cells shown per class in report.html (flagged first, then the least confident; 0: every "
                    "cell).")] = 48,  # wbc.evaluate.classified.REPORT_CELLS (not imported at start-up)
) -> None:
    """Find, outline, classify and count the WBCs of smear images; write JSON, PNG and CSVs.

    Resumable: fields whose results are already in --output are skipped, so a stopped run started again
    finishes the rest.
    """
    from wbc.batch import ModelSpec, redone_note
    from wbc.classify import outside_sentence
    from wbc.cli._common import check_engine, note_unchecked_model, progress, say_differential
    from wbc.counts import wbc_total
    from wbc.formats import pooled_counts
    from wbc.ood import adapted_without_labels, advice_for, ood_sentence, too_many_ood
    from wbc.paths import DEFAULT_INPUT_DIR

    inputs = list(paths) if paths else [DEFAULT_INPUT_DIR]
    if not paths and not DEFAULT_INPUT_DIR.is_dir():
        raise WbcError(
            f"no PATH given and {DEFAULT_INPUT_DIR}/ does not exist: put smear images there "
            "or name files or folders"
        )
    check_engine(engine, ray_address)
    spec = ModelSpec(str(model) if model else None, segmenter, str(segmenter_model) if segmenter_model else None,
                     threads, pixel_size=pixel_size, classes=classes, tta=tta, colour_calibration=colour_calibration)
    loaded: list[Any] = []  # the classifier, for the advice on out-of-distribution cells

    def on_classifier(classifier: Any) -> None:
        note_unchecked_model(classifier)
        loaded.append(classifier)

    with progress("analysing", None) as update:
        if engine == "ray":
            from wbc.distributed import analyze_paths_ray

            summary = analyze_paths_ray(inputs, output, spec, draw=draw, overwrite=overwrite, actors=actors,
                                        address=ray_address, progress=lambda i, n: update(i, total=n),
                                        on_classifier=on_classifier)
        else:
            from wbc.batch import analyze_paths

            clf, seg = spec.load()
            summary = analyze_paths(inputs, output, clf, seg, draw=draw, overwrite=overwrite,
                                    progress=lambda i, n: update(i, total=n))
            on_classifier(clf)  # once the run is under way: a bad --output still fails in one line
    n_img = len(summary.docs)
    n_cells = sum(d["n_cells"] for d in summary.docs)
    pooled = pooled_counts(summary.docs, summary.classes)
    n_wbc = wbc_total(pooled, summary.classes)  # NRBCs and platelets are cells, not WBCs: the differential's total
    done_before = f", {summary.skipped} done by an earlier run" if summary.skipped else ""
    say(f"{n_img} image(s){done_before}, {n_cells} cell(s) ({n_wbc} WBC(s)) [{summary.segmenter_id} segmenter, "
        f"{summary.model_id}] -> {output}/")
    if summary.analyzed:
        say(
            f"  {1000 * summary.seconds_analysis / summary.analyzed:.0f} ms/image analysis"
            + (f", {1000 * summary.seconds_render / summary.analyzed:.0f} ms/image drawing" if draw else "")
        )
    say_differential(pooled, summary.classes)  # shares of the WBCs; NRBCs per 100 WBCs, outside their total
    if redone := redone_note(summary.redone):
        warn(redone, "note:")
    warn_other_wbc(summary.docs, output)
    warn_not_smears(summary.docs, output)
    if summary.n_classified:  # as `wbc classify` says them, over the run's every field (each field's JSON has its own)
        say(f"  flagged for review: {summary.n_review}")
        # as `wbc classify` says it; without --classes, the detections taken for a platelet
        if outside := outside_sentence(summary.outside, summary.n_classified, summary.outside_smear):
            warn(outside)
    k, n = summary.n_ood, summary.n_classified
    # the sentence report.html gives too (with no command: it speaks to lab staff, as `wbc classify --report`'s page)
    ood = ood_sentence(k, n, bool(loaded) and adapted_without_labels(loaded[0]))
    if ood:
        warn(f"{ood}; {advice_for(loaded[0])}" if loaded and too_many_ood(k, n) else ood)
    if report and summary.classes:
        from wbc.batch import writing
        from wbc.evaluate.classified import write_analysis_report

        with writing(output / "report.html"):  # a full disk: one line, as for every other output
            # the classes answered (--classes: its rows only; no platelets: wbc.analyze.smear_label_set)
            page = write_analysis_report(output, summary.docs, summary.classes, stems=summary.stems,
                                         model_id=summary.model_id, segmenter_id=summary.segmenter_id,
                                         per_class=report_cells, errors=summary.errors,
                                         threshold=float(loaded[0].info.review_threshold) if loaded else 0.0,
                                         warning=ood)
        say(f"  report: {page}")
    warn_replaced(summary.replaced, {p for p, _ in summary.errors}, output)
    warn_skipped((msg for _, msg in summary.errors), f"{output}/errors.csv")
    warn_skipped((f"{copy}: the same image as another input, analysed and counted once ({original} has the same "
                  "bytes)" for copy, original in summary.copies), f"{output}/copies.csv")  # each named there
    note_earlier_outputs(summary.earlier_outputs)
    note_foreign_images(inputs, listed=False)  # what the listing left out is in summary.errors (wbc.batch)
    if summary.errors:
        warn(f"{len(summary.errors)} file(s) failed, listed in {output}/errors.csv", "note:")
        if not n_img:
            raise typer.Exit(1)


def note_earlier_outputs(earlier: dict[str, int]) -> None:
    """Say, on one line, how many images the run left out as an earlier run's outputs (:func:`wbc.batch.plan_run`),
    naming their folders: before wbc 0.32.0 a second run over a data folder counted the first run's annotated PNGs
    (``results/``) as smear fields, without a word."""
    if earlier:
        shown = [f"{folder}/" for folder in list(earlier)[:5]]
        more = f" and {len(earlier) - 5} more" if len(earlier) > 5 else ""
        warn(f"left out {sum(earlier.values())} image(s) in output folders of wbc ({', '.join(shown)}{more}): "
             "annotated results, not smear fields", "note:")


def warn_replaced(replaced: list[tuple[str, str, str]], failed: set[str], output: Path) -> None:
    """Name each field of ``output`` whose results, of another image of the same name (another slide's
    ``BloodImage_00007.jpg``: the JSON names its input), this run replaced or removed: the first
    :data:`~wbc.cli._common.SKIPPED_SHOWN`, then how many more. Before wbc 0.32.0 this happened without a word."""
    from wbc.cli._common import SKIPPED_SHOWN

    for stem, earlier, path in replaced[:SKIPPED_SHOWN]:
        now = f"removed, as {path} failed" if path in failed else f"replaced by those of {path}"
        warn(f"{output}/{stem}.json held the results of another image, {earlier}: {now}; give each slide its own "
             "--output")
    if rest := replaced[SKIPPED_SHOWN:]:
        warn(f"{len(rest)} more field(s) in {output}/ held the results of other images of the same names, now "
             "replaced or removed")


def warn_not_smears(docs: list[dict[str, Any]], output: Path) -> None:
    """Name each field that does not look like a blood smear (:func:`wbc.smear_look.not_a_smear`) on a line of its own,
    with why and what became of its cells: the first :data:`~wbc.cli._common.SKIPPED_SHOWN`, then how many more
    (their JSON in ``output`` and report.html say it too). Before wbc 0.31.0 a photograph among the fields gave its
    "WBCs" to the differential without a word."""
    from wbc.cli._common import SKIPPED_SHOWN
    from wbc.smear_look import NOT_A_SMEAR_WARNING

    said = [f"{d['image']}: {w}" for d in docs for w in d.get("warnings") or () if w.startswith(NOT_A_SMEAR_WARNING)]
    for line in said[:SKIPPED_SHOWN]:
        warn(line)
    if rest := said[SKIPPED_SHOWN:]:
        if len(rest) == 1:
            warn(f"1 more field {NOT_A_SMEAR_WARNING}; its JSON in {output}/ says why, and its cells are flagged for "
                 "review")
        else:
            warn(f"{len(rest)} more fields do not look like a blood-smear field; each one's JSON in {output}/ says "
                 "why, and their cells are flagged for review")


def warn_other_wbc(docs: list[dict[str, Any]], output: Path) -> None:
    """Say how many fields another wbc analysed (their JSON's ``wbc_version``; none before wbc 0.31.0). A run resumed
    after an upgrade keeps them, as it keeps every complete field (redoing hours of work unasked is no upgrade's
    business), but their answers are that wbc's: before 0.31.0 no field was checked for being a blood smear at
    all. Before wbc 0.31.0 the terminal only said "N done by an earlier run"."""
    from collections import Counter

    from wbc import __version__

    by = Counter(d.get("wbc_version") for d in docs if d.get("wbc_version") != __version__)
    if by:
        which = ", ".join(f"{n} by wbc {v}" if v else f"{n} by a wbc before 0.31.0"
                          for v, n in sorted(by.items(), key=lambda vn: (vn[0] is not None, str(vn[0]))))
        warn(f"{by.total()} field(s) in {output}/ were analysed by another wbc ({which}), kept with that wbc's answers "
             f"and warnings; run again with --overwrite to redo every field with wbc {__version__}")
