"""Smear analysis: image -> WBCs (box, nucleus and cell outlines) -> labels -> counts -> JSON/PNG/CSV.

A chain of small functions over :class:`wbc.types.Cell` / :class:`wbc.types.SmearResult`:
read -> segment -> scale-normalised crops -> ``wbc.classify.predict_cells`` -> counts -> render / JSON.
:func:`analyze_image` is the entry point for the Python and HTTP APIs; :func:`analyze_paths` is
``wbc analyze``. Nothing here imports torch.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from wbc.classify import predict_cells
from wbc.counts import write_differential_csv
from wbc.crops import cell_fraction_of, crop_cells
from wbc.errors import ImageReadError, WbcError
from wbc.io import atomic_write_csv, atomic_write_json, iter_image_paths, read_image, write_image
from wbc.labels import NOT_IN_SMEAR_DETECTIONS
from wbc.types import Cell, SmearResult

#: Fields larger than this are refused with a message (a whole-slide scan needs tiling upstream).
MAX_ANALYZE_PIXELS: int = 40_000_000
#: Minimum image side; smaller images cannot hold a recognisable cell.
MIN_SIDE: int = 32


def check_field(rgb: np.ndarray, name: str = "") -> None:
    """Refuse images the analysis cannot handle, with a message naming the file."""
    h, w = rgb.shape[:2]
    if h * w > MAX_ANALYZE_PIXELS:
        raise ImageReadError(
            f"{name}: {w}x{h} is over the analysis limit of {MAX_ANALYZE_PIXELS:,} pixels; "
            "crop or tile the image into fields first"
        )
    if min(h, w) < MIN_SIDE:
        raise ImageReadError(f"{name}: {w}x{h} is too small to hold a cell (minimum side {MIN_SIDE} px)")


def classify_cells(
    rgb: np.ndarray, cells: list[Cell], classifier: Any, fraction: float | None = None
) -> None:
    """Set ``cell.prediction`` for each cell, from crops shaped like the classifier's training crops."""
    if not cells:
        return
    size = int(classifier.info.input_size)
    crops = crop_cells(rgb, cells, size, fraction if fraction is not None else cell_fraction_of(classifier))
    preds, _ = predict_cells(classifier, crops, exclude=NOT_IN_SMEAR_DETECTIONS)
    for c, p in zip(cells, preds, strict=True):
        c.prediction = p


def analyze_image(
    rgb: np.ndarray, classifier: Any | None, segmenter: Any = None, name: str = ""
) -> SmearResult:
    """Find, outline and classify every WBC in one RGB field (``classifier=None``: outlines only)."""
    if segmenter is None:
        from wbc.segment import get_segmenter

        segmenter = get_segmenter("auto")
    check_field(rgb, name)
    cells = segmenter.segment(rgb)
    if classifier is not None:
        classify_cells(rgb, cells, classifier)
    h, w = rgb.shape[:2]
    model_id = getattr(classifier, "model_id", "") if classifier is not None else ""
    res = SmearResult(image=name, width=w, height=h, cells=cells, model_id=model_id)
    if not cells:
        res.warnings.append("no white blood cell found")
    elif classifier is not None:
        from wbc.ood import ood_warning

        if msg := ood_warning([c.prediction for c in cells if c.prediction is not None]):
            res.warnings.append(msg)
    return res


def mask_to_polygons(
    mask: np.ndarray, offset: tuple[int, int] = (0, 0), tolerance: float = 0.7
) -> list[list[list[int]]]:
    """Outer outlines of a bool mask as integer [x, y] polygons in image coordinates (simplified)."""
    cs, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE, offset=offset)
    out = []
    for c in cs:
        if len(c) < 3:
            continue
        c = cv2.approxPolyDP(c, tolerance, True)
        out.append(c.reshape(-1, 2).astype(int).tolist())
    return out


def cell_to_dict(c: Cell) -> dict[str, Any]:
    x0, y0 = c.box[:2]
    p = c.prediction
    return {
        "id": c.id,
        "box": [int(v) for v in c.box],
        "nucleus": mask_to_polygons(c.nucleus_mask, (x0, y0)),
        "cell": mask_to_polygons(c.cell_mask, (x0, y0)),
        "area_px": c.area_px,
        "nucleus_area_px": int(c.nucleus_mask.sum()),
        "touches_border": bool(c.touches_border),
        "detection_score": round(float(c.score), 4),
        "label": p.label if p else None,
        "confidence": round(p.confidence, 4) if p else None,
        "review": bool(p.review) if p else None,
        "review_reasons": list(p.reasons) if p else [],
        "probabilities": {k: round(v, 4) for k, v in p.probabilities.items()} if p else {},
    }


def result_to_dict(res: SmearResult, classes: Sequence[str] = (), segmenter_id: str = "") -> dict[str, Any]:
    """The JSON document for one field (``DIR/<stem>.json``)."""
    return {
        "image": res.image,
        "width": res.width,
        "height": res.height,
        "model_id": res.model_id,
        "segmenter": segmenter_id,
        "counts": res.counts(classes),
        "n_cells": len(res.cells),
        "cells": [cell_to_dict(c) for c in res.cells],
        "warnings": list(res.warnings),
    }


def cells_csv_header(classes: Sequence[str]) -> list[str]:
    return [
        "image",
        "id",
        "x0",
        "y0",
        "x1",
        "y1",
        "area_px",
        "nucleus_area_px",
        "touches_border",
        "label",
        "confidence",
        "review",
        *[f"p_{c}" for c in classes],
    ]


def cells_csv_rows(res: SmearResult, classes: Sequence[str]) -> list[list[Any]]:
    rows = []
    for c in res.cells:
        p = c.prediction
        probs = [round(p.probabilities.get(k, 0.0), 4) if p else "" for k in classes]
        rows.append(
            [
                res.image,
                c.id,
                *c.box,
                c.area_px,
                int(c.nucleus_mask.sum()),
                int(c.touches_border),
                p.label if p else "",
                round(p.confidence, 4) if p else "",
                int(p.review) if p else "",
                *probs,
            ]
        )
    return rows


@dataclass
class AnalyzeSummary:
    """What ``wbc analyze`` did: results in input order, failures, and timings in seconds."""

    results: list[SmearResult] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    seconds_analysis: float = 0.0
    seconds_render: float = 0.0


def _unique_stems(paths: Sequence[Path]) -> list[str]:
    """Output names per input: the stem, made unique with the parent folder when two collide."""
    seen: dict[str, int] = {}
    out = []
    for p in paths:
        stem = p.stem
        if stem in seen:
            seen[stem] += 1
            stem = (
                f"{p.parent.name}_{stem}" if f"{p.parent.name}_{stem}" not in seen else f"{stem}_{seen[stem]}"
            )
        seen.setdefault(stem, 0)
        out.append(stem)
    return out


def analyze_paths(
    inputs: Iterable[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    classifier: Any | None,
    segmenter: Any,
    draw: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> AnalyzeSummary:
    """Analyse every image under ``inputs``; write per-image JSON/PNG and the pooled CSVs to ``output``.

    A file that cannot be read or analysed goes to ``errors.csv`` and the others are still processed.
    """
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    paths = list(iter_image_paths(inputs))
    if not paths:
        raise WbcError(f"no image files in {', '.join(map(str, inputs))}")
    classes = list(classifier.classes) if classifier is not None else []
    seg_id = getattr(segmenter, "model_id", getattr(segmenter, "name", ""))
    summary = AnalyzeSummary()
    for i, (path, stem) in enumerate(zip(paths, _unique_stems(paths), strict=True)):
        try:
            rgb = read_image(path)
            t0 = time.perf_counter()
            res = analyze_image(rgb, classifier, segmenter, name=str(path))
            atomic_write_json(out / f"{stem}.json", result_to_dict(res, classes, seg_id))
            t1 = time.perf_counter()
            if draw:
                from wbc.render import render

                write_image(out / f"{stem}.png", render(rgb, res, classes))
            summary.seconds_analysis += t1 - t0
            summary.seconds_render += time.perf_counter() - t1
            summary.results.append(res)
        except WbcError as exc:
            summary.errors.append((str(path), str(exc)))
        except (MemoryError, cv2.error, ValueError) as exc:  # a malformed image must not stop the batch
            summary.errors.append((str(path), f"{path}: analysis failed ({exc.__class__.__name__}: {exc})"))
        if progress:
            progress(i + 1, len(paths))
    rows = [r for res in summary.results for r in cells_csv_rows(res, classes)]
    atomic_write_csv(out / "cells.csv", cells_csv_header(classes), rows)
    if classes:
        write_differential_csv(out / "differential.csv", summary.results, classes)
    atomic_write_csv(out / "errors.csv", ["path", "error"], summary.errors)
    return summary


# --------------------------------------------------------------------------- command line
# Registered in wbc.cli as `wbc analyze` and `wbc evaluate-smears`.

from typing import Annotated  # noqa: E402

import typer  # noqa: E402


def analyze_command(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(help="Smear images or folders (default: data/raw_images/).", show_default=False),
    ] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for JSON, PNG and CSV.")] = Path(
        "results"
    ),
    model: Annotated[
        Path | None, typer.Option("--model", "-m", help="Classifier ONNX (default: shipped).")
    ] = None,
    segmenter: Annotated[str, typer.Option(help="auto | classical | learned")] = "auto",
    segmenter_model: Annotated[Path | None, typer.Option(help="Learned segmenter ONNX.")] = None,
    draw: Annotated[bool, typer.Option("--draw/--no-draw", help="Write annotated PNGs.")] = True,
    threads: Annotated[int, typer.Option(min=1, help="CPU threads for inference.")] = 2,
) -> None:
    """Find, outline, classify and count the WBCs of smear images; write JSON, PNG and CSVs."""
    from rich.console import Console

    from wbc.model import load_model
    from wbc.paths import DEFAULT_INPUT_DIR
    from wbc.segment import get_segmenter

    console = Console(stderr=True)
    inputs = list(paths) if paths else [DEFAULT_INPUT_DIR]
    if not paths and not DEFAULT_INPUT_DIR.is_dir():
        raise WbcError(
            f"no PATH given and {DEFAULT_INPUT_DIR}/ does not exist: put smear images there "
            "or name files or folders"
        )
    clf = load_model(model, threads=threads)
    seg = get_segmenter(segmenter, segmenter_model, threads=threads)
    summary = analyze_paths(
        inputs,
        output,
        clf,
        seg,
        draw=draw,
        progress=lambda i, n: console.print(f"\r{i}/{n}", end="", highlight=False),
    )
    console.print("")
    n_img = len(summary.results)
    n_cells = sum(len(r.cells) for r in summary.results)
    console.print(
        f"{n_img} image(s), {n_cells} WBC(s) [{seg.name} segmenter, {clf.model_id}] -> {output}/",
        highlight=False,
    )
    if n_img:
        console.print(
            f"  {1000 * summary.seconds_analysis / n_img:.0f} ms/image analysis"
            + (f", {1000 * summary.seconds_render / n_img:.0f} ms/image drawing" if draw else ""),
            highlight=False,
        )
    from wbc.counts import pooled_counts

    pooled = pooled_counts(summary.results, clf.classes)
    for c in clf.classes:
        if pooled.get(c):
            console.print(
                f"  {c:<13}{pooled[c]:>6}  {100 * pooled[c] / max(n_cells, 1):5.1f}%", highlight=False
            )
    for _, msg in summary.errors:
        console.print(f"[yellow]skipped[/] {msg}", highlight=False)
    if summary.errors:
        console.print(f"[yellow]{len(summary.errors)} file(s) failed, listed in {output}/errors.csv[/]")
        if not n_img:
            raise typer.Exit(1)


def evaluate_smears_command(
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder for metrics.json + summary.md.")
    ] = Path("results/evaluate_smears"),
    data: Annotated[
        Path | None, typer.Option("--data", help="Data root (default: $WBC_DATA_DIR or ../shared/data).")
    ] = None,
    split: Annotated[str, typer.Option(help="BCCD split: test, val, train.")] = "test",
    model: Annotated[
        Path | None, typer.Option("--model", "-m", help="Classifier ONNX (default: shipped).")
    ] = None,
    segmenter: Annotated[str, typer.Option(help="auto | classical | learned")] = "auto",
    segmenter_model: Annotated[Path | None, typer.Option(help="Learned segmenter ONNX.")] = None,
    no_classifier: Annotated[
        bool, typer.Option("--no-classifier", help="Detection/segmentation only.")
    ] = False,
    threads: Annotated[int, typer.Option(min=1)] = 2,
) -> None:
    """Score detection, segmentation and end-to-end subtypes on the BCCD split; write metrics.json."""
    from rich.console import Console

    from wbc.evaluate.smears import evaluate_smears
    from wbc.model import load_model
    from wbc.paths import data_root
    from wbc.segment import get_segmenter

    clf = None if no_classifier else load_model(model, threads=threads)
    seg = get_segmenter(segmenter, segmenter_model, threads=threads)
    m = evaluate_smears(data_root(data), output, seg, clf, split=split)
    d, s = m["detection"], m["segmentation"]
    console = Console(stderr=True)
    console.print(f"BCCD {split}: {m['n_images']} images, segmenter {m['segmenter']}", highlight=False)
    console.print(
        f"  WBC precision {d['precision']:.3f} recall {d['recall']:.3f} F1 {d['f1']:.3f} "
        f"AP50 {d['ap50']:.3f} mean IoU {d['mean_iou_matched']:.3f}",
        highlight=False,
    )
    if s["nucleus_dice"] is not None:
        console.print(
            f"  nucleus Dice {s['nucleus_dice']:.3f}  cell Dice {s['cell_dice']:.3f}", highlight=False
        )
    if m.get("subtype") and m["subtype"]["n"]:
        st = m["subtype"]
        console.print(
            f"  subtype accuracy {st['accuracy']:.3f} macro-F1 {st['macro_f1']:.3f} (n={st['n']})",
            highlight=False,
        )
    console.print(f"  -> {output}/metrics.json, {output}/summary.md", highlight=False)
