"""``wbc evaluate-smears``: detection, segmentation and end-to-end subtype metrics on labelled smear fields."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wbc.cli._app import app
from wbc.cli._common import (
    ClassesOpt,
    ColourCalibrationOpt,
    DataRootOpt,
    ModelOpt,
    PixelSizeOpt,
    SegmenterModelOpt,
    SegmenterOpt,
    ThreadsOpt,
    TtaOpt,
    say,
    warn,
    warn_skipped,
)


@app.command("evaluate-smears")
def evaluate_smears(
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder for metrics.json + summary.md.")
    ] = Path("results/evaluate_smears"),
    data_root: DataRootOpt = None,
    dataset: Annotated[Path | None, typer.Option(
        "--dataset", help="Any YOLO- or VOC-labelled folder of smear fields (default: BCCD under the data root)."
    )] = None,
    split: Annotated[str, typer.Option(
        help="Split: test, val, train (BCCD's ImageSets, images/<split>/ or data.yaml's list file).")] = "test",
    model: ModelOpt = None,
    segmenter: SegmenterOpt = "auto",
    segmenter_model: SegmenterModelOpt = None,
    pixel_size: PixelSizeOpt = None,
    no_classifier: Annotated[
        bool, typer.Option("--no-classifier", help="Detection/segmentation only.")
    ] = False,
    threads: ThreadsOpt = 2,
    tta: TtaOpt = None,
    classes: ClassesOpt = None,
    colour_calibration: ColourCalibrationOpt = True,
    keep_training_copies: Annotated[bool | None, typer.Option(
        "--keep-training-copies/--leave-out-training-copies",
        help="Score fields that copy BCCD train or TXL-PBC train (what the shipped detector and U-Net trained on); "
             "default: kept for --segmenter classical (trained on no field), left out for the others.")] = None,
) -> None:
    """Score detection (recall, precision, AP@0.5), Dice where masks exist and end-to-end subtypes where fields
    have a subtype label (BCCD's, or one WBC box named by its subtype, such as Neutrophil) on BCCD or any
    YOLO/VOC-labelled folder (--dataset); write metrics.json and summary.md."""
    from wbc.evaluate.smears import difficult_note, merged_note, no_subtype_note, not_scored_note, rate, trained_note
    from wbc.evaluate.smears import evaluate_smears as run
    from wbc.io import check_output_file
    from wbc.model import load_model
    from wbc.paths import data_root as resolve_root
    from wbc.segment import get_segmenter

    check_output_file(output / "metrics.json")  # before any model is loaded or field segmented, in one line
    clf = None if no_classifier else (load_model(model, threads=threads).with_tta(tta)
                                         .with_classes(classes).with_colour_calibration(colour_calibration))
    seg = get_segmenter(segmenter, segmenter_model, threads=threads, pixel_size=pixel_size)
    m = run(resolve_root(data_root), output, seg, clf, split=split, dataset=dataset,
            keep_training_copies=keep_training_copies)
    d, s = m["detection"], m["segmentation"]
    say(f"{m['dataset']} {m['split'] or 'every field (no splits)'}: {m['n_images']} images, segmenter "
        f"{m['segmenter']}")
    say(
        f"  WBC precision {rate(d['precision'])} recall {rate(d['recall'])} F1 {rate(d['f1'])} "
        f"AP50 {'n/a' if d['ap50'] is None else format(d['ap50'], '.3f')} mean IoU {rate(d['mean_iou_matched'])}"
    )
    for o, v in m.get("per_origin", {}).items():
        say(f"  {o}: recall {rate(v['recall'])} precision {rate(v['precision'])} ({v['n_images']} images)")
    if s["nucleus_dice"] is not None:
        say(f"  nucleus Dice {s['nucleus_dice']:.3f}  cell Dice {s['cell_dice']:.3f}")
    if m.get("subtype") and m["subtype"]["n"]:
        st = m["subtype"]
        say(f"  subtype accuracy {st['accuracy']:.3f} macro-F1 {st['macro_f1']:.3f} (n={st['n']})")
    if m.get("subtype") and (note := not_scored_note(m["subtype"])):
        warn(note, "note:")
    if note := no_subtype_note(m):
        warn(note, "note:")
    if unknown := m["unknown_box_names"]:
        warn("boxes named neither a WBC nor a red cell or platelet were not scored as WBCs: "
             + ", ".join(f"{k} ({v})" for k, v in unknown.items()), "note:")
    for note in (merged_note(m), difficult_note(m), trained_note(m)):
        if note:
            warn(note, "note:")
    warn_skipped((msg for _, msg in m["errors"]), f"{output}/metrics.json")
    say(f"  -> {output}/metrics.json, {output}/summary.md")
