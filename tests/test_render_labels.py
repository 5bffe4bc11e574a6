"""Annotated images: every cell's label is drawn once, wholly inside the image, readable on its background.

Pixel tests on real OpenCV drawing (they hold on OpenCV 4 and 5: run with either installed).
"""

from __future__ import annotations

import re

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


def _record_labels(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple[int, ...], tuple[int, int, int, int]]]:
    """Each label :func:`render` draws, as (text, its cell's box, the label's box), in drawing order."""
    import wbc.render as R

    drawn: list[tuple[str, tuple[int, ...], tuple[int, int, int, int]]] = []
    draw = R.draw_label

    def recorded(img: np.ndarray, text: str, anchor: tuple[int, int, int, int], scale: float,
                 bg: tuple[int, int, int], spot: tuple | None = None) -> tuple[int, int, int, int]:
        box = draw(img, text, anchor, scale, bg, spot)
        drawn.append((text, tuple(anchor), box))
        return box

    monkeypatch.setattr(R, "draw_label", recorded)
    return drawn


def _covers(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def _grid(h: int, w: int, side: int, step: tuple[int, int], start: tuple[int, int], stagger: bool = False
          ) -> list[Cell]:
    labels = ["neutrophil", "lymphocyte", "monocyte", "eosinophil", "erythroblast"]
    cells: list[Cell] = []
    for j, y in enumerate(range(start[1], h - side, step[1])):
        for x in range(start[0] + (j % 2) * step[0] // 3 * stagger, w - side, step[0]):
            cells.append(cell_at((x, y, x + side, y + side), labels[len(cells) % 5], cid=len(cells) + 1))
    return cells


@pytest.mark.parametrize(("size", "cells"), [
    ((960, 1280), _grid(960, 1280, 80, (240, 160), (60, 60), stagger=True)),  # 40x on a 1 Mpx camera: 80 px WBCs
    ((720, 960), _grid(720, 960, 31, (96, 72), (30, 20))),  # low magnification: 31 px WBCs, 100 of them
])
def test_labels_on_a_field_of_small_cells_cover_no_other_cell_label_or_the_legend(
        size: tuple[int, int], cells: list[Cell], monkeypatch: pytest.MonkeyPatch) -> None:
    """Labels were sized from the image alone: on a 1280x960 field of 80 px WBCs each was 340 px wide, four cells,
    and 13 of 30 covered another WBC, one the legend; at low magnification 90 % of the image was under labels (wbc
    0.35.0, docs/smear_analysis.md said a label covered neither). Labels are sized from the cells, each placed where
    it covers no label, legend or other cell, shortened where no place is free; the same field gives the same
    image."""
    h, w = size
    drawn = _record_labels(monkeypatch)
    res = SmearResult("f", w, h, cells)
    img = np.full((h, w, 3), PALE, np.uint8)
    out = render(img, res, SMEAR_CLASSES)
    white = np.all(out == 255, axis=-1)
    legend = _white_panel(out) if white.any() else (0, 0, 0, 0)
    assert len(drawn) == len(cells)
    for k, (text, anchor, box) in enumerate(drawn):
        assert text.endswith(" ?"), text  # never without its review mark
        assert not _covers(box, legend), text
        assert not any(_covers(box, other) for _, _, other in drawn[:k]), text
        assert not any(_covers(box, c.box) for c in cells if c.box != anchor), text
    assert not any(_covers(legend, c.box) for c in cells)
    assert white.any() == (w == 1280)  # a legend where there is room for it; at low magnification there is none
    if w == 1280:  # room for every whole label
        assert all(re.fullmatch(r"\d+ [a-z]+ 0\.71 \?", t) for t, _, _ in drawn), [t for t, _, _ in drawn]
    assert np.array_equal(out, render(img, res, SMEAR_CLASSES))


def test_a_field_of_the_usual_size_keeps_its_labels_size() -> None:
    """BCCD's 640x480 fields, WBCs of 85 px and more: labels at the image's scale, as before wbc 0.36.0; 80 px WBCs on
    a 1280x960 field: at most their side / 160 (it was 1.07: four cells wide)."""
    from wbc.render import text_scale

    assert text_scale((480, 640), [(0, 0, 120, 100), (300, 300, 385, 380)]) == pytest.approx(480 / 900)
    assert text_scale((960, 1280), [(0, 0, 80, 80)] * 5) == pytest.approx(0.5)
    assert text_scale((1440, 1920), [(0, 0, 20, 20)]) == pytest.approx(0.3)  # never below MIN_TEXT_SCALE
    assert text_scale((960, 1280), []) == pytest.approx(960 / 900)


def test_the_legend_never_hides_a_wbc() -> None:
    """A WBC near each corner of a 640x480 field: the legend panel was drawn over one of them, 65 % of its box (wbc
    0.35.0: the cell counted, but nowhere on the image). It goes where it hides none; where there is no such place,
    it is left out (the counts are in the JSON)."""
    boxes = [(10, 30, 120, 140), (520, 30, 630, 140), (10, 360, 120, 470), (520, 360, 630, 470)]
    cells = [cell_at(b, lab, 0.9, review, i) for i, (b, lab, review) in
             enumerate(zip(boxes, ["neutrophil", "lymphocyte", "monocyte", "eosinophil"], [False, True, False, True],
                           strict=True), 1)]
    out = render(np.full((480, 640, 3), PALE, np.uint8), SmearResult("f", 640, 480, cells), SMEAR_CLASSES)
    white = np.all(out == 255, axis=-1)
    _x0, y0, _x1, y1 = _white_panel(out)
    assert y1 - y0 == 4 + (int(24 * 480 / 900) + 4) * (len(SMEAR_CLASSES) + 1) + 1  # the whole legend, review row too
    for c in cells:
        m = 3 if c.prediction is not None and c.prediction.review else 0  # its red review box too
        bx0, by0, bx1, by1 = c.box
        assert not white[max(0, by0 - m):by1 + m, max(0, bx0 - m):bx1 + m].any(), c.id
    full = [cell_at((x, y, x + 75, y + 75), cid=i) for i, (x, y) in
            enumerate(((x, y) for y in range(0, 240, 80) for x in range(0, 320, 80)), 1)]
    out = render(np.full((240, 320, 3), PALE, np.uint8), SmearResult("f", 320, 240, full), SMEAR_CLASSES)
    assert not np.all(out == 255, axis=-1).any()  # no room anywhere: no legend rather than one over a cell


@pytest.mark.parametrize(("h", "w"), [(1080, 1920), (1440, 1920), (2250, 3000)])
def test_the_legend_text_stays_inside_its_rows_and_panel(h: int, w: int) -> None:
    """On large fields the legend's rows were shorter than its text: at 1920x1440 "(11)" and "y" ran into the next
    row and 12 px below the white panel onto the smear, at 3000x2250 88 px (wbc 0.35.0)."""
    img = np.full((h, w, 3), PALE, np.uint8)
    side = h // 2  # a large WBC: the labels keep the image's scale
    out = render(img, SmearResult("f", w, h, [cell_at((w // 2, h // 3, w // 2 + side, h // 3 + side))]),
                 SMEAR_CLASSES)
    x0, y0, x1, y1 = _white_panel(out)
    below = out[y1:y1 + 100, x0:x1].astype(int)
    assert not (np.abs(below - 20).max(axis=-1) < 60).any()  # none of the legend's (20, 20, 20) text under it
    row = (y1 - y0 - 5) // (len(SMEAR_CLASSES) + 1)  # the panel: 4 px and a row per entry; text right of the swatch
    ink = np.abs(out[y0:y1, x0 + row:x1].astype(int) - 20).max(axis=-1) < 60
    rows = np.flatnonzero(ink.any(axis=1))
    assert len(np.flatnonzero(np.diff(rows) > 1)) == len(SMEAR_CLASSES)  # 8 rows of text (review too), apart


def test_a_detection_the_model_takes_for_a_platelet_says_so_on_the_image(monkeypatch: pytest.MonkeyPatch) -> None:
    """Example BloodImage_00041's corner detection, platelet 0.96 to the model, counted as a neutrophil: its label
    read "2 neutrophil 0.32 ?", as any unsure neutrophil (wbc 0.35.0). It says platelet first, shortened too."""
    drawn = _record_labels(monkeypatch)
    c = cell_at((560, 0, 640, 104), "neutrophil", 0.317, True, 2)
    assert c.prediction is not None
    c.prediction.outside = "platelet"
    render(np.full((480, 640, 3), PALE, np.uint8), SmearResult("f", 640, 480, [c]), SMEAR_CLASSES)
    render(np.full((60, 60, 3), PALE, np.uint8), SmearResult("f", 60, 60, [cell_at((0, 0, 50, 50))]), SMEAR_CLASSES)
    c.box = (0, 0, 50, 50)
    render(np.full((60, 70, 3), PALE, np.uint8), SmearResult("f", 70, 60, [c]), SMEAR_CLASSES)
    assert [t for t, _, _ in drawn] == ["2 platelet? as neutrophil 0.32 ?", "1 ?", "2 platelet? ?"]


def test_the_classes_of_another_model_get_colours_apart_and_unlike_the_review_red() -> None:
    """A model with its own classes: a hue from the sum of a name's characters gave plasma_cell and promyelocyte
    nearly the same yellow (RGB distance 22), myelocyte and large_granular_lymphocyte the same pink, and
    reactive_lymphocyte a red beside the review red (wbc 0.35.0)."""
    import itertools

    from wbc.render import OTHER_COLOURS, REVIEW, colour_of

    names = ["band", "segmented", "myelocyte", "metamyelocyte", "promyelocyte", "blast", "plasma_cell",
             "reactive_lymphocyte", "smudge", "variant_lymphocyte", "large_granular_lymphocyte", "neutrophil",
             "lymphocyte", "monocyte", "eosinophil", "basophil"]
    colours = {n: np.array(colour_of(n, names), float) for n in names}
    assert min(np.linalg.norm(colours[a] - colours[b]) for a, b in itertools.combinations(names, 2)) >= 60
    assert min(np.linalg.norm(c - np.array(REVIEW)) for c in colours.values()) >= 60
    assert colour_of("band", names) == colour_of("band", list(reversed(names)))  # whatever the classes' order
    assert colour_of("neutrophil", names) == CLASS_COLOURS["neutrophil"]
    assert colour_of("band") == colour_of("band") in OTHER_COLOURS  # without the classes: stable, from the palette


def test_png_colours_match_get_model_for_a_label_set() -> None:
    """A class other than wbc's eight took its colour by its place among the classes answered, GET /model's (the web
    page's) by its place among the model's: with a label set, a plasma cell green in the bars and purple in the PNG
    (wbc 0.36.0's first cut). Given the model's classes (``palette``), the PNG has /model's colour whatever the set."""
    from wbc.render import colour_of

    classes = ["blast", "eosinophil", "lymphocyte", "neutrophil", "plasma_cell"]
    m = np.ones((60, 60), bool)
    cell = Cell(1, (200, 200, 260, 260), m, m, prediction=Prediction("plasma_cell", 0.95, False, {}))
    for answered in (["plasma_cell", "neutrophil"], ["blast", "plasma_cell"], classes):
        png = render(np.full((480, 640, 3), 230, np.uint8), SmearResult("f", 640, 480, [cell]), answered, 0.5,
                     palette=classes)
        assert tuple(png[230, 200]) == colour_of("plasma_cell", classes), answered


def test_wbc_analyze_colours_another_model_s_classes_by_the_model_s_classes(tmp_path) -> None:
    """`wbc analyze --classes` drew a class other than wbc's eight in the colour of its place among the label set, so
    the same class changed colour from one run to the next, and was not GET /model's (wbc 0.36.0's first cut)."""
    import copy
    import json
    import sys
    from pathlib import Path

    from wbc.batch import Job, analyze_job
    from wbc.model import load_model
    from wbc.paths import DEFAULT_MODEL
    from wbc.render import colour_of
    from wbc.segment.classical import ClassicalSegmenter
    from wbc.synthetic import synthetic_smear

    if DEFAULT_MODEL.is_file():
        base = load_model(DEFAULT_MODEL, threads=1)
    else:
        sys.path.insert(0, str(Path(__file__).parent))
        from test_analyze import make_colour_classifier

        base = load_model(make_colour_classifier(tmp_path / "tiny.onnx", size=48), threads=1)
    base.info = copy.deepcopy(base.info)
    base.info.classes = [f"kind_{c}" for c in base.info.classes]
    cv2.imwrite(str(tmp_path / "f.png"), synthetic_smear(n_wbc=2, seed=5)[0][:, :, ::-1])
    for clf in (base, base.with_classes(",".join(sorted(base.classes)[-3:]))):
        out = analyze_job(Job(str(tmp_path / "f.png"), "f"), clf, ClassicalSegmenter(), draw=True)
        assert out.png is not None and out.json_text is not None
        png = cv2.imdecode(np.frombuffer(out.png, np.uint8), cv2.IMREAD_COLOR)
        cells = json.loads(out.json_text)["cells"]
        assert cells
        for cell in cells:
            x0, y0, _x1, y1 = cell["box"]
            b, g, r = (int(v) for v in png[(y0 + y1) // 2, x0])
            assert (r, g, b) == colour_of(cell["label"], base.classes), (clf.label_set, cell["label"])


def test_legend_fallback_is_cheap_on_a_40mp_field_and_still_hides_no_cell() -> None:
    """With a WBC near every corner, the legend's place was scored at every pixel: 15 s and about 1 GB on a 40 MP field
    (wbc 0.36.0's first cut), in every `wbc analyze` worker and `/analyze?annotated=true`. It is searched on a grid of
    at most a megapixel, boxes rounded outward, so the place found still hides no cell."""
    import time
    import tracemalloc

    from wbc.render import _overlap, legend_place

    h, w = 5200, 7700
    cells = [(0, 0, 300, 300), (w - 300, 0, w, 300), (0, h - 300, 300, h), (w - 300, h - 300, w, h)]
    tracemalloc.start()
    t = time.process_time()
    p = legend_place((h, w), (400, 300), cells, cells, anywhere=True)
    seconds, peak = time.process_time() - t, tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert p is not None and not any(_overlap((p[0], p[1], p[0] + 401, p[1] + 301), c) for c in cells)
    assert 4 <= p[0] <= w - 405 and 4 <= p[1] <= h - 305
    assert peak < 100 * 2**20 and seconds < 1.0, (peak, seconds)
    rng = np.random.default_rng(0)
    for _ in range(30):  # busy 6 MP fields (a grid of 3 px): wherever a place is found, it hides no cell
        boxes = [(int(x), int(y), int(x) + 250, int(y) + 250)
                 for x, y in zip(rng.integers(-20, 3000, 40), rng.integers(-20, 2000, 40), strict=True)]
        boxes += [(0, 0, 300, 300), (2700, 0, 3000, 300), (0, 1700, 300, 2000), (2700, 1700, 3000, 2000)]
        p = legend_place((2000, 3000), (301, 257), boxes, boxes[:5], anywhere=True)
        if p is not None:
            assert not any(_overlap((p[0], p[1], p[0] + 302, p[1] + 258), b) for b in boxes), p
            assert 4 <= p[0] <= 3000 - 306 and 4 <= p[1] <= 2000 - 262


def _ellipse_cell(box: tuple[int, int, int, int], centre: tuple[int, int], axes: tuple[int, int], label: str,
                  conf: float, cid: int) -> Cell:
    x0, y0, x1, y1 = box
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.ellipse(mask, (centre[0] - x0, centre[1] - y0), axes, 0, 0, 360, 1, -1)
    pred = Prediction(label=label, confidence=conf, review=True, probabilities={label: conf})
    return Cell(id=cid, box=box, nucleus_mask=mask > 0, cell_mask=mask > 0, prediction=pred)


def test_a_label_keeps_its_confidence_where_sliding_it_clears_a_neighbour_s_outline(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """BCCD's BloodImage_00313 (its cells' boxes and outlines): the whole label "2 ig 0.77 ?" above its cell covered
    14 px of its neighbour's outline, and the neighbour's box in every place, so it was drawn "2 ig ?", a flagged
    cell's confidence lost (wbc 0.36.0's first cut). Slid left, it covers no other cell's outline, only an empty
    corner of the neighbour's box; a place on its own cell (inside its bottom edge) is not taken for it."""
    drawn = _record_labels(monkeypatch)
    cells = [_ellipse_cell((173, 216, 422, 468), (302, 344), (104, 123), "neutrophil", 0.86, 1),
             _ellipse_cell((110, 351, 251, 480), (178, 426), (67, 54), "ig", 0.77, 2)]
    render(np.full((480, 640, 3), PALE, np.uint8), SmearResult("f", 640, 480, cells), SMEAR_CLASSES, 0.9)
    assert [t for t, _, _ in drawn] == ["1 neutrophil 0.86 ?", "2 ig 0.77 ?"]
    box = drawn[1][2]
    assert box[3] <= 351  # above its cell, not over it
    for c in cells:  # over neither cell's outline (its mask and the outline's stroke)
        canvas = np.zeros((480, 640), np.uint8)
        canvas[c.box[1]:c.box[3], c.box[0]:c.box[2]] = c.cell_mask
        canvas = cv2.dilate(canvas, np.ones((5, 5), np.uint8))
        assert not canvas[box[1]:box[3], box[0]:box[2]].any(), c.id
    drawn.clear()  # a neighbour whose outline is far from the label: it goes above its cell, whole and unslid
    cells[0] = _ellipse_cell((173, 216, 422, 468), (340, 340), (70, 100), "neutrophil", 0.86, 1)
    render(np.full((480, 640, 3), PALE, np.uint8), SmearResult("f", 640, 480, cells), SMEAR_CLASSES, 0.9)
    assert drawn[1][0] == "2 ig 0.77 ?" and drawn[1][2][0] == 110 and drawn[1][2][3] == 351
