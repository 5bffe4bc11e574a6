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
from wbc.errors import ImageReadError
from wbc.io import MAX_PIXELS, decode_image, pages_warning, tiff_fields
from wbc.labels import NOT_IN_SMEAR_DETECTIONS, smear_classes
from wbc.preprocess import canvas_box, check_rgb8, field_stop_mask, fill_field_stop, not_a_photo
from wbc.protocols import ClassifierLike, SegmenterLike
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
    return smear_classes(tuple(getattr(classifier, "label_set", ()) or ()) or tuple(classifier.classes))


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


#: Least stain colour (:func:`field_chroma`) for a field to be analysed: every segmenter finds WBCs by their stain's
#: colours, and in a grey field (a monochrome camera, a grey JPEG) they find none or almost none, which would read as
#: a field without WBCs. Every BCCD field (364) measures 125 and more, every TXL-PBC field (861, all splits) 87 and
#: more, 1,000 PBC cell images 103 and more; grey fields 0, tinted grey JPEGs up to 9, 30 BCCD val fields desaturated
#: to 0.1 of their colour 12 and more (the classical segmenter still finds every WBC there), at 8 % of their light 120
#: and more (each field measured within its canvas, as :func:`analyze_image` does).
MIN_FIELD_CHROMA: float = 10.0


def field_chroma(rgb: np.ndarray) -> float:
    """How coloured a field's most coloured parts are: the 99.9th percentile of max - min over the channels, after
    the white balance the segmenters apply (a tinted grey image stays grey), per 255 of the background's brightness
    (a dark field keeps its colours). A stained smear's nuclei and red cells measure far above a grey image's 0.

    >>> field = np.full((64, 64, 3), 220, np.uint8); field[20:40, 20:40] = (200, 110, 130)
    >>> round(field_chroma(field)), field_chroma(np.full((64, 64, 3), 220, np.uint8))
    (104, 0.0)
    """
    from wbc.segment.classical import grey_gains

    h, w = rgb.shape[:2]
    step = max(1, round(np.sqrt(h * w / 65_536)))  # about 256 x 256 samples: 1-2 ms
    px = rgb[::step, ::step]
    r, g, b = (px[:, :, c].astype(np.float32) * k for c, k in enumerate(grey_gains(px)))
    chroma = np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)
    background = float(np.percentile((r + g + b) / 3.0, 90)) + 1.0
    return float(np.percentile(chroma, 99.9)) / background * 255.0


def check_colour(rgb: np.ndarray, name: str = "") -> None:
    """Refuse a grey field (:data:`MIN_FIELD_CHROMA`) with a message naming the file: it cannot be analysed, and its
    empty result would be read as a field without WBCs."""
    name = name or "the image"
    if (chroma := field_chroma(rgb)) < MIN_FIELD_CHROMA:
        raise ImageReadError(
            f"{name}: a grey image (its stain colours measure {chroma:.0f}, stained smears 87 and more, "
            f"{MIN_FIELD_CHROMA:.0f} needed): WBCs are found by their stain's colours; analyse the colour original"
        )


def red_cell_target_of(classifier: ClassifierLike) -> dict[str, list[float]] | None:
    """The colours :func:`calibrate_field` maps a field onto (:meth:`wbc.model.Classifier.red_cell_target`;
    None for a classifier without that method)."""
    target = getattr(classifier, "red_cell_target", None)
    return target() if callable(target) else None


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
    crop is cut as any other's: marking it ``touches_border`` cost a cell of BCCD's 192 train cells so shown)."""
    if not cells:
        return None
    stop = field_stop_mask(rgb)  # an eyepiece photo: the black around the field of view is neither cell nor colour
    cut = [c for c in cells if stop is not None and cut_by_field_stop(c, stop)]
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
    return calibration


#: The review reason of a smear cell that the edge of an eyepiece photo's field of view cuts.
FIELD_STOP_REASON = "cut by the edge of the field of view"


def cut_by_field_stop(cell: Cell, stop: np.ndarray) -> bool:
    """True when more than 1 % of ``cell``'s area lies within 2 px of the field stop ``stop`` (the outside of an
    eyepiece photo's field of view, :func:`wbc.preprocess.field_stop_mask`): part of the cell is not in the image."""
    x0, y0, x1, y1 = cell.box
    h, w = stop.shape
    a, b, c, d = max(0, x0 - 2), max(0, y0 - 2), min(w, x1 + 2), min(h, y1 + 2)
    near = cv2.dilate(stop[b:d, a:c].astype(np.uint8), np.ones((5, 5), np.uint8))[y0 - b : y1 - b, x0 - a : x1 - a]
    mask = cell.cell_mask[: near.shape[0], : near.shape[1]]
    return bool(np.count_nonzero(near.astype(bool) & mask) > 0.01 * max(1, int(mask.sum())))


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
    rgb: np.ndarray, classifier: ClassifierLike | None, segmenter: SegmenterLike | None = None, name: str = ""
) -> SmearResult:
    """Find, outline and classify every WBC in one RGB field (``classifier=None``: outlines only). A grey field is
    refused (:func:`check_colour`), since wbc 0.29.0: it was reported as a field without WBCs.

    A field pasted onto a canvas (a page, a screenshot's margin, a dataset's padding) is analysed within it
    (:func:`wbc.preprocess.canvas_box`): the canvas would otherwise be taken for the field's glass by its colour
    calibration. Boxes are in the image's coordinates either way. With a label set, the warnings say first how many
    cells are most likely a class it left out (:func:`wbc.classify.outside_note`, as `wbc classify` does), since
    wbc 0.31.0."""
    if segmenter is None:
        from wbc.segment import get_segmenter

        segmenter = get_segmenter("auto")
    check_field(rgb, name)
    field, (dx, dy) = within_canvas(rgb)
    if field is not rgb:  # the field itself must pass too: a 24 px field on a 400 px page was segmented
        check_field(field, f"{name or 'the image'} (the field within its canvas)")
    check_colour(field, name)
    cells = segmenter.segment(field)
    calibration = classify_cells(field, cells, classifier) if classifier is not None else None
    move_cells(cells, dx, dy)
    h, w = rgb.shape[:2]
    model_id = getattr(classifier, "model_id", "") if classifier is not None else ""
    res = SmearResult(image=name, width=w, height=h, cells=cells, model_id=model_id, calibration=calibration)
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
    case missing fields 2..N unwarned. ``source``: how decoding errors name the file (default ``name``)."""
    rgb = decode_image(data, source or name, max_pixels=max_pixels)
    res = analyze_image(rgb, classifier, segmenter, name=name)
    if (pages := tiff_fields(data)) > 1:
        res.warnings.append(pages_warning(pages))
    return rgb, res


# The output formats live in wbc.formats; these names stay importable from here.
from wbc.formats import cell_to_dict, mask_to_polygons, result_to_dict  # noqa: E402

__all__ = ["analyze_bytes", "analyze_image", "calibrate_field", "cell_to_dict", "check_colour", "check_field",
           "classify_cells", "field_chroma", "mask_to_polygons", "red_cell_target_of", "result_to_dict"]
