"""Smear analysis: image -> WBCs (box, nucleus and cell outlines) -> labels -> counts -> JSON/PNG/CSV.

A chain of small functions over :class:`wbc.types.Cell` / :class:`wbc.types.SmearResult`:
read -> segment -> scale-normalised crops -> ``wbc.classify.predict_cells`` -> counts -> render / JSON.
:func:`analyze_image` is the entry point for the Python and HTTP APIs; ``wbc analyze`` runs it over
folders through :func:`wbc.batch.analyze_paths` (resumable, atomic). Nothing here imports torch.
"""

from __future__ import annotations

import cv2
import numpy as np

from wbc.classify import predict_cells, tta_views_of
from wbc.crops import cell_fraction_of, crop_cells
from wbc.cytoplasm import cytoplasm_evidence, field_colours
from wbc.errors import ImageReadError, WbcError
from wbc.io import MAX_PIXELS, decode_image, pages_warning, tiff_fields
from wbc.labels import NOT_IN_SMEAR_DETECTIONS, smear_classes
from wbc.preprocess import canvas_box, check_rgb8, field_stop_mask, fill_field_stop, not_a_photo
from wbc.protocols import ClassifierLike, SegmenterLike, checked_classifier
from wbc.smear_look import (
    NOT_A_SMEAR_REASON,
    NOT_A_SMEAR_WARNING,
    SmearLook,
    check_colour,
    field_chroma,
    not_a_smear,
    not_a_smear_warning,
    smear_look,
)
from wbc.types import Cell, SmearResult

#: Fields larger than this are refused with a message (a whole-slide scan needs tiling upstream).
MAX_ANALYZE_PIXELS: int = 40_000_000
#: Minimum image side; smaller images cannot hold a recognisable cell.
MIN_SIDE: int = 32


def smear_label_set(classifier: ClassifierLike) -> list[str]:
    """The classes a smear analysis answers among, the rows of its differential and its legend: the label set
    (``--classes``; every class of the model without one) less platelets (:func:`wbc.labels.smear_classes`). Before
    wbc 0.30.0 the outputs listed every class of the model: a five-part run drew ``ig (0)`` in each legend and wrote
    0 ig with an interval in ``differential.csv``, and every run a platelet rate it never measures."""
    return smear_classes(tuple(classifier.label_set) or tuple(classifier.classes))


def no_smear_class(named: str) -> WbcError:
    """The error for a label set (``named``: as given) without any class a smear cell is answered as."""
    return WbcError(f"classes {named!r}: none is a class a smear cell can be (a smear analysis never counts "
                    "platelets); name white-cell classes, e.g. 5part")


def checked_smear_label_set(classifier: ClassifierLike) -> list[str]:
    """:func:`smear_label_set`, or :func:`no_smear_class` when it is empty (``with_classes("platelet")``), as
    ``/analyze`` refuses it: before wbc 0.36.0 the Python API and `wbc analyze` called every WBC a platelet, and `wbc
    analyze` exited 0 without a differential or a report. A classifier lacking a :class:`ClassifierLike` member is
    refused first, in one line (:func:`checked_classifier`): ``wbc.batch.analyze_paths`` ended in an AttributeError."""
    answered = smear_label_set(checked_classifier(classifier))
    if not answered:
        raise no_smear_class(",".join(classifier.label_set or classifier.classes))
    return answered


def check_field(rgb: np.ndarray, name: str = "") -> None:
    """Refuse images the analysis cannot handle (not an 8-bit RGB array, too large, too small, no photo: a mask, a
    drawing, a blank frame, :func:`wbc.preprocess.not_a_photo`), with a message naming the file. The segmenters'
    thresholds are in 8-bit levels of three colour channels: a 16-bit array gave other cells and labels, a float one
    was "too dark"; :func:`wbc.io.read_image` converts files."""
    name = name or "the image"  # an array given without a name: not a message starting with ": "
    check_rgb8(rgb, name)
    h, w = rgb.shape[:2]
    if h * w > MAX_ANALYZE_PIXELS:
        raise ImageReadError(
            f"{name}: {w}x{h} is over the analysis limit of {MAX_ANALYZE_PIXELS:,} pixels; "
            "crop or tile the image into fields first"
        )
    if min(h, w) < MIN_SIDE:
        raise ImageReadError(f"{name}: {w}x{h} is too small to hold a cell (minimum side {MIN_SIDE} px)")
    if why := not_a_photo(rgb):
        raise ImageReadError(f"{name}: {why}")


def red_cell_target_of(classifier: ClassifierLike) -> dict[str, list[float]] | None:
    """The colours :func:`calibrate_field` maps a field onto (:meth:`wbc.model.Classifier.red_cell_target`; None: not
    calibrated)."""
    return classifier.red_cell_target()


def calibrate_field(
    rgb: np.ndarray, cells: list[Cell], classifier: ClassifierLike
) -> tuple[np.ndarray, dict[str, list[float]] | None]:
    """The field with its glass and red-cell colours mapped onto the training lab's, and the colours it had.

    The field itself is the colour standard (:func:`wbc.stain.calibrate_red_cells`): no labels and no other
    field are needed, so it works from the first field of a new lab. Unchanged (None) when the classifier
    has no red-cell target (:meth:`wbc.model.Classifier.red_cell_target`) or the field has too few red cells.
    """
    target = red_cell_target_of(classifier)
    if not target:
        return rgb, None
    return calibrate_to(rgb, cells, target)


def calibrate_to(
    rgb: np.ndarray, cells: list[Cell], target: dict[str, list[float]], step: int | None = None
) -> tuple[np.ndarray, dict[str, list[float]] | None]:
    """:func:`calibrate_field` onto the colours ``target`` (:func:`wbc.stain.red_cell_reference`), measuring the
    field's own colours outside ``cells`` (:func:`field_colours`, ``step``)."""
    from wbc.stain import calibrate_red_cells

    source = field_colours(rgb, cells, step)
    if source is None:
        return rgb, None
    return calibrate_red_cells(rgb, source, target), source


def classify_cells(
    rgb: np.ndarray, cells: list[Cell], classifier: ClassifierLike, fraction: float | None = None
) -> dict[str, list[float]] | None:
    """Set ``cell.prediction`` for each cell, from crops shaped like the classifier's training crops, cut from
    the field calibrated on its red cells (:func:`calibrate_field`); returns the colours it was calibrated from.
    The black outside an eyepiece photo's field of view is background first (:func:`wbc.preprocess.fill_field_stop`;
    the field is segmented as it is), and a cell its edge cuts is flagged for review (:data:`FIELD_STOP_REASON`; its
    crop is cut as any other's: marking it ``touches_border`` cost a cell of BCCD's 192 train cells so shown). So is a
    cell the image's own edge cuts by :data:`EDGE_CUT_SHARE` or more (:data:`EDGE_REASON`, since wbc 0.31.0), or that
    spans the image (:func:`spans_the_image`, since wbc 0.36.0): its
    crop, sized from the visible part and mirrored past the edge, shows a larger, symmetric cell that was named
    wrongly and confidently."""
    if not cells:
        return None
    stop = field_stop_mask(rgb)  # an eyepiece photo: the black around the field of view is neither cell nor colour
    cut = [c for c in cells if stop is not None and cut_by_field_stop(c, stop)]
    edge_cut = [c for c in cells if spans_the_image(c, rgb.shape) or share_beyond_image_edge(c, rgb.shape)
                >= EDGE_CUT_SHARE]
    if stop is not None:
        rgb = fill_field_stop(rgb, stop)
    calibrated, calibration = calibrate_field(rgb, cells, classifier)
    size = int(classifier.info.input_size)
    fraction = fraction if fraction is not None else cell_fraction_of(classifier)
    crops = crop_cells(calibrated, cells, size, fraction)
    # the out-of-distribution colour check reads the cells as they came: calibration is not validation
    raw = crop_cells(rgb, cells, size, fraction) if calibration is not None and classifier.info.ood else None
    preds, _ = predict_cells(classifier, crops, exclude=NOT_IN_SMEAR_DETECTIONS,
                             views=tta_views_of(classifier, smear=True), ood_cells=raw,
                             adjust=cytoplasm_evidence(rgb, cells, calibration, classifier))
    for c, p in zip(cells, preds, strict=True):
        c.prediction = p
        if any(c is k for k in cut):
            p.review = True
            p.reasons.append(FIELD_STOP_REASON)
        if any(c is k for k in edge_cut):
            p.review = True
            p.reasons.append(EDGE_REASON)
    return calibration


#: The review reason of a smear cell that the edge of an eyepiece photo's field of view cuts.
FIELD_STOP_REASON = "cut by the edge of the field of view"


def cut_by_field_stop(cell: Cell, stop: np.ndarray) -> bool:
    """True when more than 1 % of ``cell``'s area lies within 2 px of the field stop ``stop`` (the outside of an
    eyepiece photo's field of view, :func:`wbc.preprocess.field_stop_mask`): part of the cell is not in the image.
    A box reaching past the image's edge (:class:`wbc.types.Cell` allows it) is checked on its part inside the image:
    before wbc 0.31.0 one past the left or top edge was checked against the wrong columns or rows."""
    x0, y0, x1, y1 = cell.box
    h, w = stop.shape
    cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)  # the box within the image
    if cx1 <= cx0 or cy1 <= cy0:
        return False
    a, b, c, d = max(0, cx0 - 2), max(0, cy0 - 2), min(w, cx1 + 2), min(h, cy1 + 2)
    near = cv2.dilate(stop[b:d, a:c].astype(np.uint8), np.ones((5, 5), np.uint8))[cy0 - b : cy1 - b, cx0 - a : cx1 - a]
    mask = cell.cell_mask[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
    return bool(np.count_nonzero(near.astype(bool) & mask) > 0.01 * max(1, int(mask.sum())))


#: The review reason of a smear cell that the image's edge cuts (:func:`share_beyond_image_edge`).
EDGE_REASON = "cut by the image's edge"
#: A cell is flagged :data:`EDGE_REASON` when at least this share of it is estimated beyond the image's edge
#: (:func:`share_beyond_image_edge`). Chosen on PBC val cells (the training lab: no out-of-distribution flag) shown
#: as fields cut by an image edge at 5-60 % of their box: the answers left unflagged are wrong 2 of 635 times at
#: 0.05, as often as whole cells' (1 of 313), 1 of 337 at 0.02 and 8 of 1,049 at 0.1, above the review threshold's
#: 0.5 % (docs/smear_analysis.md, "The flag for a cell cut by the image's edge").
EDGE_CUT_SHARE: float = 0.05


def segment_share(chord: float, depth: float) -> float:
    """The share of a disc beyond a straight edge, from the chord the edge cuts (``chord``) and how far the disc
    reaches into the image from it (``depth``): radius r = (depth + chord**2 / (4 depth)) / 2 (the chord's half and
    the centre's distance to the edge make a right triangle), the circular segment beyond the edge per disc.

    >>> round(segment_share(100, 50), 3), round(segment_share(60, 90), 3), segment_share(0, 80)  # half, 5 %, none
    (0.5, 0.052, 0.0)
    """
    if chord <= 0 or depth <= 0:
        return 0.0
    r = (depth + chord * chord / (4.0 * depth)) / 2.0
    u = float(np.clip((depth - r) / r, -1.0, 1.0))  # the centre's distance inside the edge, in radii
    return float((np.arccos(u) - u * np.sqrt(1.0 - u * u)) / np.pi)


def share_beyond_image_edge(cell: Cell, shape: tuple[int, ...]) -> float:
    """Estimated share of ``cell``'s area beyond the edges of an image of ``shape`` (0 for a cell clear of them):
    for each edge its outline runs along, the cell is taken for a disc with the outline's chord on that edge and
    depth into the image (:func:`segment_share`), the shares summed. Only the outline can tell: the box a detector
    draws around a half cell is smaller than the cell's. The estimate understates large cuts (the detector's outline
    of a cut cell narrows towards the edge: a cell cut in half measures about 0.3; in a corner each edge's chord ends
    at the other edge: a quarter disc measures 0.29) and misses a cell whose outline stops short of the edge (11 of
    845 PBC val cells cut by 40 % or more of their box)."""
    h, w = shape[:2]
    x0, y0, x1, y1 = cell.box
    cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)  # the box within the image
    seen = cell.cell_mask[cy0 - y0 : max(cy0, cy1) - y0, cx0 - x0 : max(cx0, cx1) - x0]
    if not seen.any():
        return 0.0
    rows, cols = np.flatnonzero(seen.any(axis=1)), np.flatnonzero(seen.any(axis=0))
    edges = ((cx0 == 0, seen[:, 0], cols[-1] + 1), (cx1 == w, seen[:, -1], seen.shape[1] - cols[0]),
             (cy0 == 0, seen[0], rows[-1] + 1), (cy1 == h, seen[-1], seen.shape[0] - rows[0]))
    return min(1.0, sum(segment_share(int(line.sum()), int(depth)) for on, line, depth in edges if on))


def spans_the_image(cell: Cell, shape: tuple[int, ...]) -> bool:
    """Whether ``cell``'s outline reaches two opposite edges of an image of ``shape``: the cell is at least as wide
    (or tall) as the image, so the image cuts it, whatever :func:`share_beyond_image_edge` estimates (its disc takes
    each edge's depth to be the cell's, but here the cell runs on past the other edge too: a 159 px eosinophil in a
    100 px crop, about 40 % of it outside, measured 0.025 and was not flagged before wbc 0.36.0).

    >>> m = np.ones((100, 60), bool)
    >>> spans_the_image(Cell(1, (20, 0, 80, 100), m, m), (100, 100)), spans_the_image(Cell(1, (0, 0, 60, 100), m, m),
    ...                                                                               (120, 100))
    (True, False)
    """
    h, w = shape[:2]
    x0, y0, x1, y1 = cell.box
    cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)  # the box within the image
    if cx0 > 0 and cx1 < w and cy0 > 0 and cy1 < h:
        return False
    seen = cell.cell_mask[cy0 - y0 : max(cy0, cy1) - y0, cx0 - x0 : max(cx0, cx1) - x0]
    if not seen.any():
        return False
    across = cx0 == 0 and cx1 == w and bool(seen[:, 0].any() and seen[:, -1].any())
    down = cy0 == 0 and cy1 == h and bool(seen[0].any() and seen[-1].any())
    return across or down


def within_canvas(rgb: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """The field of ``rgb`` inside any canvas it was pasted onto (:func:`wbc.preprocess.canvas_box`), and its offset
    (x, y) in ``rgb``; ``rgb`` itself and (0, 0) when there is none."""
    box = canvas_box(rgb)
    if box is None:
        return rgb, (0, 0)
    return np.ascontiguousarray(rgb[box[1] : box[3], box[0] : box[2]]), (box[0], box[1])


def move_cells(cells: list[Cell], dx: int, dy: int) -> None:
    """Shift each cell's box by (dx, dy) in place (its masks are relative to the box)."""
    if dx or dy:
        for c in cells:
            c.box = (c.box[0] + dx, c.box[1] + dy, c.box[2] + dx, c.box[3] + dy)


def analyze_image(
    rgb: np.ndarray, classifier: ClassifierLike | None, segmenter: SegmenterLike | None = None, name: str = "",
    source: str = "",
) -> SmearResult:
    """Find, outline and classify every WBC in one RGB field (``classifier=None``: outlines only). A grey field is
    refused (:func:`check_colour`), since wbc 0.29.0: it was reported as a field without WBCs.

    A field pasted onto a canvas (a page, a screenshot's margin, a dataset's padding) is analysed within it
    (:func:`wbc.preprocess.canvas_box`): the canvas would otherwise be taken for the field's glass by its colour
    calibration. Boxes are in the image's coordinates either way. With a label set, the warnings say (after a
    not-a-smear warning) how many cells are most likely a class it left out (:func:`wbc.classify.outside_note`, as
    `wbc classify` does), since wbc 0.31.0.

    A field that does not look like a blood smear (:func:`not_a_smear`: a photograph, a page, blank glass) is
    analysed, but its result's first warning says so and why (:func:`not_a_smear_warning`), and each of its cells is
    flagged for review (:data:`NOT_A_SMEAR_REASON`), since wbc 0.31.0: before, a cat's photograph came back with a
    "neutrophil" and nothing else said.

    ``name``: the result's ``image``; ``source``: how refusals name the field (default ``name``), the path given where
    there is one (since wbc 0.36.0: ``wbc.analyze_images`` said ``field_001.png: a grey image`` where `wbc analyze`
    says which day's)."""
    if segmenter is None:
        from wbc.segment import get_segmenter

        segmenter = get_segmenter("auto")
    if classifier is not None:  # before wbc 0.36.0 a wrapper lacking its settings was answered otherwise, unsaid
        checked_smear_label_set(checked_classifier(classifier))
    said = source or name
    check_field(rgb, said)
    field, (dx, dy) = within_canvas(rgb)
    if field is not rgb:  # the field itself must pass too: a 24 px field on a 400 px page was segmented
        check_field(field, f"{said or 'the image'} (the field within its canvas)")
    check_colour(field, said)
    unlike = not_a_smear(field)
    cells = segmenter.segment(field)
    calibration = classify_cells(field, cells, classifier) if classifier is not None else None
    move_cells(cells, dx, dy)
    h, w = rgb.shape[:2]
    model_id = getattr(classifier, "model_id", "") if classifier is not None else ""
    res = SmearResult(image=name, width=w, height=h, cells=cells, model_id=model_id, calibration=calibration)
    if unlike:
        res.warnings.append(not_a_smear_warning(unlike, len(cells), classifier is not None))
        for c in cells:
            if c.prediction is not None:
                c.prediction.review = True
                c.prediction.reasons.append(NOT_A_SMEAR_REASON)
    if not cells:
        res.warnings.append("no white blood cell found")
    elif classifier is not None:
        from wbc.classify import outside_note
        from wbc.ood import adapted_without_labels, ood_warning

        preds = [c.prediction for c in cells if c.prediction is not None]
        # cells of a class the label set left out are counted in a chosen one: said first, as `wbc classify` says it
        # (before wbc 0.31.0 a field said it only in each such cell's reasons)
        res.warnings += [w for w in (outside_note(preds), ood_warning(preds, adapted_without_labels(classifier))) if w]
    return res


def analyze_bytes(
    data: bytes, name: str, classifier: ClassifierLike | None, segmenter: SegmenterLike | None = None,
    source: str = "", max_pixels: int = MAX_PIXELS,
) -> tuple[np.ndarray, SmearResult]:
    """Decode an image file's bytes and :func:`analyze_image` it as the field ``name``; the decoded RGB and the result.

    A TIFF of several fields gets the warning that only its first was analysed (:func:`wbc.io.pages_warning`), as
    in `wbc analyze`: whoever analyses a file's bytes (a case, the Python API) says so, so that no one signs off a
    case missing fields 2..N unwarned. ``source``: how errors name the file (default ``name``): decoding's, and since
    wbc 0.36.0 the field's refusals (grey, no photo, too small) too."""
    rgb = decode_image(data, source or name, max_pixels=max_pixels)
    res = analyze_image(rgb, classifier, segmenter, name=name, source=source)
    if (pages := tiff_fields(data)) > 1:
        res.warnings.append(pages_warning(pages))
    return rgb, res


# The output formats live in wbc.formats; these names stay importable from here.
from wbc.formats import cell_to_dict, mask_to_polygons, result_to_dict  # noqa: E402

__all__ = ["NOT_A_SMEAR_REASON", "NOT_A_SMEAR_WARNING", "SmearLook", "analyze_bytes", "analyze_image",
           "calibrate_field", "cell_to_dict", "check_colour", "check_field", "checked_smear_label_set",
           "classify_cells", "field_chroma", "mask_to_polygons", "no_smear_class", "not_a_smear", "not_a_smear_warning",
           "red_cell_target_of", "result_to_dict", "smear_look"]
