"""Scale-normalised single-cell crops from a smear, shaped like the classifier's training crops.

The PBC training crops show one cell centred in a ~360 px field; what the classifier learned is the
cell's size *relative to the crop*, not a pixel count. So a smear crop's side is the measured cell
diameter divided by that ratio (the "cell fraction"), whatever the microscope's magnification.
The ratio is stored in the model metadata (``info.preprocessing.cell_fraction``) when `wbc train` exports a
model; :data:`DEFAULT_CELL_FRACTION` is the fallback, measured on PBC with :func:`measure_cell_fraction`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import cv2
import numpy as np

from wbc.preprocess import resize_square
from wbc.protocols import ClassifierLike, SegmenterLike
from wbc.types import Cell

#: Cell equivalent diameter / crop side in PBC crops. Measured: ``measure_cell_fraction`` with the classical
#: segmenter on 10 random crops per class (seed 0) gives per-class medians basophil 0.36, eosinophil 0.30,
#: erythroblast 0.25, ig 0.37, lymphocyte 0.28, monocyte 0.40, neutrophil 0.25 (median 0.30; it misses
#: pale PBC cytoplasm, an under-estimate); whole cells outlined by eye on 6 crops give ~0.35. 0.33 is
#: between the two. A model's ``info.preprocessing.cell_fraction`` takes precedence.
DEFAULT_CELL_FRACTION: float = 0.33
#: Crops never shrink below this many cell diameters, even if the metadata says otherwise.
_FRACTION_RANGE: tuple[float, float] = (0.15, 0.95)


#: The mask's diameter is kept within this range of the box's (geometric mean of its sides): a detector's
#: box is trustworthy where an outline learned on one lab's masks may miss pale cytoplasm elsewhere.
_MASK_TO_BOX_DIAMETER: tuple[float, float] = (0.75, 1.05)


def cell_diameter(cell: Cell) -> float:
    """Equivalent-circle diameter of the cell mask in pixels (robust to odd outlines), kept near the box's
    size so that the crop follows the measured cell at any magnification even when the outline is poor."""
    d = float(np.sqrt(4.0 * max(cell.area_px, 1) / np.pi))
    x0, y0, x1, y1 = cell.box
    box_d = float(np.sqrt(max(1, x1 - x0) * max(1, y1 - y0)))
    if cell.touches_border:  # a cut box says little about the whole cell
        return d
    return float(np.clip(d, _MASK_TO_BOX_DIAMETER[0] * box_d, _MASK_TO_BOX_DIAMETER[1] * box_d))


def cell_centre(cell: Cell) -> tuple[float, float]:
    """(x, y) centroid of the cell mask in full-image pixels."""
    ys, xs = np.nonzero(cell.cell_mask)
    x0, y0 = cell.box[:2]
    if xs.size == 0:
        return (cell.box[0] + cell.box[2]) / 2, (cell.box[1] + cell.box[3]) / 2
    return x0 + float(xs.mean()), y0 + float(ys.mean())


def cell_fraction_of(classifier: ClassifierLike) -> float:
    """The classifier's cell fraction from its metadata, else :data:`DEFAULT_CELL_FRACTION`."""
    stored = getattr(getattr(getattr(classifier, "info", None), "preprocessing", None), "cell_fraction", None)
    try:
        f = float(stored if stored is not None else DEFAULT_CELL_FRACTION)
    except (TypeError, ValueError):
        f = DEFAULT_CELL_FRACTION
    if not np.isfinite(f):
        f = DEFAULT_CELL_FRACTION
    return float(np.clip(f, *_FRACTION_RANGE))


def crop_cell(rgb: np.ndarray, cell: Cell, size: int, fraction: float = DEFAULT_CELL_FRACTION) -> np.ndarray:
    """A ``size`` x ``size`` uint8 crop centred on the cell whose diameter fills ``fraction`` of it.

    Beyond the image border the field is mirrored (as more smear), never filled with black.
    """
    cx, cy = cell_centre(cell)
    side = max(8, round(cell_diameter(cell) / fraction))
    x0, y0 = round(cx - side / 2), round(cy - side / 2)
    h, w = rgb.shape[:2]
    pad = max(0, -x0, -y0, x0 + side - w, y0 + side - h)
    if pad:
        # reflect needs pad < image size; replicate the rest
        src = cv2.copyMakeBorder(
            rgb, pad, pad, pad, pad, cv2.BORDER_REFLECT_101 if pad < min(h, w) else cv2.BORDER_REPLICATE
        )
        x0, y0 = x0 + pad, y0 + pad
    else:
        src = rgb
    return resize_square(np.ascontiguousarray(src[y0 : y0 + side, x0 : x0 + side]), size)


def box_window(rgb: np.ndarray, box: Sequence[float], margin: float = 1.1) -> np.ndarray:
    """The square around an annotated box as a lab's own single-cell image shows a cell: side ``margin`` x the
    box's longer side, centred on the box but kept inside the field (nothing mirrored or filled), so a cell by
    the border sits off-centre; the field's resolution is kept (`wbc classify` re-frames such images itself).

    >>> field = np.zeros((100, 120, 3), np.uint8)
    >>> box_window(field, (10, 20, 50, 60)).shape  # a 40 px box: a 44 px window
    (44, 44, 3)
    >>> box_window(field, (0, 0, 30, 30)).shape, box_window(field, (0, 0, 300, 300)).shape  # kept inside
    ((33, 33, 3), (100, 100, 3))
    """
    h, w = rgb.shape[:2]
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(1, min(int(max(x1 - x0, y1 - y0) * margin), h, w))
    left = int(min(max(0.0, (x0 + x1 - side) / 2), w - side))
    top = int(min(max(0.0, (y0 + y1 - side) / 2), h - side))
    return np.ascontiguousarray(rgb[top : top + side, left : left + side])


def crop_cells(
    rgb: np.ndarray, cells: Sequence[Cell], size: int, fraction: float = DEFAULT_CELL_FRACTION
) -> np.ndarray:
    """(N, size, size, 3) uint8 crops for the classifier."""
    if not cells:
        return np.zeros((0, size, size, 3), np.uint8)
    return np.stack([crop_cell(rgb, c, size, fraction) for c in cells])


def measure_cell_fraction(crops: Iterable[np.ndarray], segmenter: SegmenterLike | None = None) -> float:
    """Median ratio of cell diameter to crop side over single-cell training crops (uint8 RGB).

    Each crop is segmented with ``segmenter`` (default: the one ``wbc analyze`` uses, so that crops from
    smears and the training crops are measured the same way); the cell nearest the crop centre is the
    subject. Crops where no cell is found are skipped; raises ValueError when none gives a measurement.
    """
    if segmenter is None:
        from wbc.segment import get_segmenter

        segmenter = get_segmenter("auto")
    seg = segmenter
    ratios = []
    for rgb in crops:
        h, w = rgb.shape[:2]
        cells = seg.segment(rgb)
        if not cells:
            continue
        best = min(cells, key=lambda c: np.hypot(cell_centre(c)[0] - w / 2, cell_centre(c)[1] - h / 2))
        ratios.append(cell_diameter(best) / float(max(h, w)))
    if not ratios:
        raise ValueError("no cell found in any crop; cannot measure the cell fraction")
    return float(np.median(ratios))
