"""Smear analysis: image -> WBCs (box, nucleus and cell outlines) -> labels -> counts -> JSON/PNG/CSV.

A chain of small functions over :class:`wbc.types.Cell` / :class:`wbc.types.SmearResult`:
read -> segment -> scale-normalised crops -> ``wbc.classify.predict_cells`` -> counts -> render / JSON.
:func:`analyze_image` is the entry point for the Python and HTTP APIs; ``wbc analyze`` runs it over
folders through :func:`wbc.batch.analyze_paths` (resumable, atomic). Nothing here imports torch.
"""

from __future__ import annotations

import numpy as np

from wbc.classify import predict_cells, tta_views_of
from wbc.crops import cell_fraction_of, crop_cells
from wbc.errors import ImageReadError
from wbc.labels import NOT_IN_SMEAR_DETECTIONS
from wbc.protocols import ClassifierLike, SegmenterLike
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
    rgb: np.ndarray, cells: list[Cell], classifier: ClassifierLike, fraction: float | None = None
) -> None:
    """Set ``cell.prediction`` for each cell, from crops shaped like the classifier's training crops."""
    if not cells:
        return
    size = int(classifier.info.input_size)
    crops = crop_cells(rgb, cells, size, fraction if fraction is not None else cell_fraction_of(classifier))
    preds, _ = predict_cells(classifier, crops, exclude=NOT_IN_SMEAR_DETECTIONS,
                             views=tta_views_of(classifier, smear=True))
    for c, p in zip(cells, preds, strict=True):
        c.prediction = p


def analyze_image(
    rgb: np.ndarray, classifier: ClassifierLike | None, segmenter: SegmenterLike | None = None, name: str = ""
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


# The output formats live in wbc.formats; these names stay importable from here.
from wbc.formats import cell_to_dict, mask_to_polygons, result_to_dict  # noqa: E402

__all__ = ["analyze_image", "cell_to_dict", "check_field", "classify_cells",
           "mask_to_polygons", "result_to_dict"]
