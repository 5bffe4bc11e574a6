"""Annotated images: every cell's label is drawn once, wholly inside the image, readable on its background.

Pixel tests on real OpenCV drawing (they hold on OpenCV 4 and 5: run with either installed).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from wbc.render import (
    CLASS_COLOURS,
    FONT,
    contrast_ratio,
    draw_label,
    label_box,
    render,
    text_colour_on,
)
from wbc.types import Cell, Prediction, SmearResult

PALE = (235, 228, 238)  # a pale smear background, where yellow text used to vanish


def cell_at(box: tuple[int, int, int, int], label: str = "neutrophil", conf: float = 0.71,
            review: bool = True, cid: int = 1) -> Cell:
    x0, y0, x1, y1 = box
    mask = np.zeros((y1 - y0, x1 - x0), bool)
    mask[2:-2, 2:-2] = True
    nucleus = np.zeros_like(mask)
    nucleus[8:-8, 8:-8] = True
    pred = Prediction(label=label, confidence=conf, review=review, probabilities={label: conf})
    return Cell(id=cid, box=box, nucleus_mask=nucleus, cell_mask=mask, prediction=pred)


def single_draw_reference(text: str, box: tuple[int, int, int, int], org: tuple[int, int], th: int,
                          scale: float, bg: tuple[int, int, int]) -> np.ndarray:
    """The label as one putText on a plain box: what a correctly drawn label looks like, pixel for pixel."""
    x0, y0, x1, y1 = box
    ref = np.zeros((y1, x1, 3), np.uint8)
    ref[y0:y1, x0:x1] = bg
    cv2.putText(ref, text, org, FONT, scale, text_colour_on(bg), th, cv2.LINE_AA)
    return ref[y0:y1, x0:x1]


@pytest.mark.parametrize("label", sorted(CLASS_COLOURS))
def test_every_class_label_has_at_least_3_to_1_contrast(label: str) -> None:
    bg = CLASS_COLOURS[label]
    assert contrast_ratio(text_colour_on(bg), bg) >= 3.0  # WCAG large text / graphics (4.5 for all here)


def test_contrast_ratio_matches_wcag() -> None:
    assert contrast_ratio((0, 0, 0), (255, 255, 255)) == pytest.approx(21.0)
    assert contrast_ratio((119, 119, 119), (255, 255, 255)) == pytest.approx(4.48, abs=0.01)


def test_label_at_the_top_edge_is_drawn_once_and_inside_the_image() -> None:
    img = np.full((240, 320, 3), PALE, np.uint8)
    res = SmearResult("f", 320, 240, [cell_at((20, 0, 110, 80))])
    out = render(img, res)
    scale = max(0.45, 240 / 900)
    text = "1 neutrophil 0.71 ?"
    box, org, th = label_box(text, (20, 0, 110, 80), img.shape[:2], scale)
    x0, y0, x1, y1 = box
    assert 0 <= x0 < x1 <= 320 and 0 <= y0 < y1 <= 240  # not clipped at the top edge
    (tw, _), _ = cv2.getTextSize(text, FONT, scale, th)
    assert x1 - x0 > tw  # the box holds the whole text
    got = out[y0:y1, x0:x1]
    ref = single_draw_reference(text, box, org, th, scale, CLASS_COLOURS["neutrophil"])
    # pixel for pixel one putText on a plain box: no second, offset copy ("neutrophi(l"), no outline
    assert np.array_equal(got, ref)
    # the frame of the box is pure background: no glyph runs past it
    bg = np.array(CLASS_COLOURS["neutrophil"], np.uint8)
    frame = np.concatenate([got[0], got[-1], got[:, 0], got[:, -1]])
    assert (frame == bg).all()
    # the text is there and dark on yellow
    dark = (got.astype(int).sum(2) < 200).mean()
    assert 0.05 < dark < 0.6


def test_label_at_the_right_and_bottom_edges_stays_inside() -> None:
    box, _org, _th = label_box("12 immature granulocyte 0.99 ?", (300, 230, 320, 240), (240, 320), 0.45)
    assert box[0] >= 0 and box[2] <= 320 and box[1] >= 0 and box[3] <= 240


def test_label_pixels_are_only_text_and_background_colours() -> None:
    """Every pixel of a drawn label is the box colour, the text colour, or an antialiased blend of the two."""
    img = np.full((100, 300, 3), PALE, np.uint8)
    for name, colour in CLASS_COLOURS.items():
        canvas = img.copy()
        box = draw_label(canvas, f"3 {name} 0.42 ?", (10, 60, 80, 90), 0.5, colour)
        px = canvas[box[1]:box[3], box[0]:box[2]].reshape(-1, 3).astype(float)
        a, b = np.array(colour, float), np.array(text_colour_on(colour), float)
        t = np.clip(((px - a) @ (b - a)) / ((b - a) @ (b - a)), 0, 1)
        dist = np.linalg.norm(px - (a + t[:, None] * (b - a)), axis=1)
        assert dist.max() < 3.0, name


def test_render_draws_every_cell_and_keeps_the_input() -> None:
    img = np.full((300, 400, 3), PALE, np.uint8)
    cells = [cell_at((30, 60, 120, 150), "lymphocyte", 0.95, False, 1),
             cell_at((200, 100, 300, 200), "eosinophil", 0.5, True, 2)]
    out = render(img, SmearResult("f", 400, 300, cells), ["lymphocyte", "eosinophil"])
    assert (img == np.array(PALE, np.uint8)).all()  # a copy is drawn on
    for c in cells:
        x0, y0, x1, y1 = c.box
        assert (out[y0:y1, x0:x1] != img[y0:y1, x0:x1]).any()


def _white_panel(img: np.ndarray) -> tuple[int, int, int, int]:
    """The legend's opaque white panel: the bounding box (x0, y0, x1, y1) of the pure white pixels."""
    ys, xs = np.nonzero(np.all(img == 255, axis=-1))
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _pixels_of(img: np.ndarray, region: tuple[int, int, int, int], colour: tuple[int, int, int]) -> int:
    x0, y0, x1, y1 = region
    return int(np.all(img[y0:y1, x0:x1] == np.array(colour, np.uint8), axis=-1).sum())


SMEAR_CLASSES = [c for c in CLASS_COLOURS if c != "platelet"]


def test_a_label_is_never_drawn_over_the_legend() -> None:
    """BCCD's BloodImage_00374: a cell's box starts just under the top-left legend, and its label, drawn above the
    box, covered the legend's last row (wbc 0.29.0 chose the corner against the cells' boxes only)."""
    img = np.full((480, 640, 3), 200, np.uint8)
    res = SmearResult("f", 640, 480, [cell_at((186, 281, 388, 477), "neutrophil", 0.9, False, 1),
                                      cell_at((1, 138, 225, 360), "lymphocyte", 0.9, False, 2)])
    out = render(img, res, list(CLASS_COLOURS))  # eight rows: the panel's foot is just above the lymphocyte's box
    legend = _white_panel(out)
    row = int(24 * max(0.45, 480 / 900)) + 4
    assert legend[3] - legend[1] == 4 + row * 8 + 1  # the whole panel shows: no label over its last row
    swatch = (row - 10) ** 2  # the legend's own swatch of the class, at most
    for label in ("lymphocyte", "neutrophil"):
        assert _pixels_of(out, legend, CLASS_COLOURS[label]) <= swatch, label


def test_neighbouring_cells_labels_do_not_cover_each_other() -> None:
    """Two WBCs side by side (a crowded field): the right one's label was drawn over the left one's confidence and
    review mark ("1 erythrobl" left of "2 neutrophil 0.92 ?")."""
    img = np.full((480, 640, 3), 200, np.uint8)
    res = SmearResult("f", 640, 480, [cell_at((200, 200, 300, 300), "erythroblast", 0.9, True, 1),
                                      cell_at((300, 205, 400, 305), "neutrophil", 0.9, True, 2)])
    out = render(img, res, SMEAR_CLASSES)
    first = label_box("1 erythroblast 0.90 ?", (200, 200, 300, 300), (480, 640), max(0.45, 480 / 900))[0]
    assert _pixels_of(out, first, CLASS_COLOURS["erythroblast"]) > 0  # drawn where it goes when nothing is in the way
    assert _pixels_of(out, first, CLASS_COLOURS["neutrophil"]) == 0  # and nothing of the neighbour's label on it


@pytest.mark.parametrize(("conf", "threshold", "shown"), [(0.9854, 0.9863332509994507, "0.985"), (0.998, 0.0, "0.998")])
def test_a_flagged_cell_s_label_never_reads_as_the_threshold_it_fell_below(conf: float, threshold: float,
                                                                            shown: str) -> None:
    """0.9854 under a threshold of 0.9863 was labelled "0.99 ?", under a web page saying "review below 99 %", and a
    cell flagged only as unlike the training data "1.00 ?": as many digits as it takes, as the reports give them."""
    img = np.full((240, 320, 3), PALE, np.uint8)
    out = render(img, SmearResult("f", 320, 240, [cell_at((100, 100, 200, 200), "eosinophil", conf, True)]),
                 ["eosinophil"], threshold)
    text = f"1 eosinophil {shown} ?"
    scale = max(0.45, 240 / 900)
    box, org, th = label_box(text, (100, 100, 200, 200), (240, 320), scale)
    ref = single_draw_reference(text, box, org, th, scale, CLASS_COLOURS["eosinophil"])
    assert np.array_equal(out[box[1]:box[3], box[0]:box[2]], ref)


def test_the_legend_says_what_the_review_mark_means() -> None:
    """An annotated PNG passed on by itself said nothing of the red double box and the "?": the legend has a row for
    them (with the number of flagged cells) when a cell is flagged, and none when none is."""
    img = np.full((300, 400, 3), PALE, np.uint8)
    row = int(24 * max(0.45, 300 / 900)) + 4
    for review, rows in ((True, 3), (False, 2)):
        out = render(img, SmearResult("f", 400, 300, [cell_at((200, 100, 300, 200), "eosinophil", 0.5, review)]),
                     ["eosinophil", "lymphocyte"])
        x0, y0, _x1, y1 = _white_panel(out)
        assert y1 - y0 == 4 + row * rows + 1
        if review:  # its swatch: a red double box
            assert _pixels_of(out, (x0, y1 - row, x0 + row, y1), (220, 0, 0)) > 0


def test_a_label_in_a_narrow_field_stays_whole_with_its_review_mark_and_no_legend_covers_the_cell() -> None:
    """A WBC cut from a field, 120 px wide: its label "1 neutrophil 0.71 ?" is wider than the image at the smallest
    scale and ran past the right edge, the "?" lost, and the legend panel covered the cell (wbc 0.32.0). The label is
    drawn smaller, whole and inside; a legend that would cover the cell and fills more than a quarter is left out."""
    from wbc.render import label_spots

    spots, _ = label_spots("1 neutrophil 0.998 ?", (0, 9, 116, 120), (120, 120), 0.45)
    assert all(0 <= box[0] < box[2] <= 120 and 0 <= box[1] < box[3] <= 120 for box, _ in spots), spots
    img = np.full((120, 120, 3), PALE, np.uint8)
    out = render(img, SmearResult("f", 120, 120, [cell_at((0, 9, 116, 120))]), SMEAR_CLASSES)
    assert not np.all(out == 255, axis=-1).any()  # no white legend panel over the cell
    from wbc.render import fitted_scale

    text = "1 neutrophil 0.71 ?"
    scale = fitted_scale(text, (120, 120), 0.45)
    assert 0.3 <= scale < 0.45
    (box, org), th = label_spots(text, (0, 9, 116, 120), (120, 120), 0.45)[0][0], max(1, round(scale * 1.6))
    ref = single_draw_reference(text, box, org, th, scale, CLASS_COLOURS["neutrophil"])
    assert np.array_equal(out[box[1]:box[3], box[0]:box[2]], ref)  # the whole text, "?" too, one putText
    wide = render(np.full((480, 640, 3), PALE, np.uint8), SmearResult("f", 640, 480, [cell_at((200, 100, 300, 200))]),
                  SMEAR_CLASSES)
    _x0, y0, _x1, y1 = _white_panel(wide)  # a field of the usual size keeps its whole legend
    assert y1 - y0 == 4 + (int(24 * max(0.45, 480 / 900)) + 4) * (len(SMEAR_CLASSES) + 1) + 1
