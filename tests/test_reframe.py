"""Re-framing of single-cell images (:mod:`wbc.reframe`) and what `wbc classify` answers on: the findings of the
0.29.0 review of re-framing (docs/generalisation.md, "Single cells framed like another lab's")."""

from __future__ import annotations

import cv2
import numpy as np

from wbc.classify import prepare_cell
from wbc.reframe import DEFAULT_STATS, measure_framing


def _glass(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(0, 3, (h, w, 3)) + np.array([235, 225, 228]), 0, 255).astype(np.uint8)


def test_a_platelet_nearer_the_centre_is_not_taken_for_an_off_centre_wbcs_nucleus() -> None:
    """A WBC a quarter of the frame off the centre and a platelet at the centre: the WBC's nucleus is measured and
    framed (before wbc 0.29.0 the platelet was, and the image zoomed onto it, the WBC out of the view)."""
    cell = _glass(200, 200)
    cv2.circle(cell, (150, 150), 28, (90, 40, 140), -1)  # the WBC's nucleus, 0.28 of the frame
    cv2.circle(cell, (100, 100), 8, (110, 60, 150), -1)  # a platelet, 0.08 of the frame, at the centre
    f = measure_framing(cell)
    assert f.found and abs(f.cx - 150) < 12 and abs(f.cy - 150) < 12 and f.fraction > 0.2
    view = prepare_cell(cell, 160, DEFAULT_STATS)  # re-framed around the WBC, not zoomed onto the platelet
    assert 0.25 < measure_framing(view).fraction < 0.45


def test_a_platelet_crop_without_a_wbc_keeps_its_platelet() -> None:
    """The platelet is the largest dark component where there is no WBC: still measured as the (small) nucleus."""
    cell = _glass(200, 200, seed=1)
    cv2.circle(cell, (100, 100), 8, (110, 60, 150), -1)
    f = measure_framing(cell)
    assert f.found and abs(f.cx - 100) < 6 and abs(f.cy - 100) < 6 and f.fraction < 0.12


def _crowded_off_centre() -> np.ndarray:
    """A crowded field of red cells in which only the hue look finds the (pale, off-centre) nucleus."""
    field = np.full((240, 240, 3), (225, 215, 220), np.uint8)
    for c in [(60, 60), (150, 60), (60, 150), (150, 160), (100, 105), (190, 110), (200, 200), (40, 215)]:
        cv2.circle(field, c, 30, (185, 150, 160), -1)
    cv2.circle(field, (175, 180), 26, (165, 145, 200), -1)
    return np.clip(field + np.random.default_rng(0).normal(0, 3, field.shape), 0, 255).astype(np.uint8)


def test_one_framing_is_wbc_classifys_first_framing() -> None:
    """``prepare_cell`` / ``read_cell`` / ``frame_cell`` (``second=False``) give the first view `wbc classify`
    answers on: the closer and hue looks decide that view too (before wbc 0.29.0 they were skipped there)."""
    from wbc.classify import prepare_cell_views
    from wbc.reframe import frame_cell, measure_by_hue, measure_closer

    field = _crowded_off_centre()
    assert not measure_framing(field).found and not measure_closer(field).found and measure_by_hue(field).found
    first, _ = prepare_cell_views(field, 160, DEFAULT_STATS, second=True)
    assert np.array_equal(prepare_cell(field, 160, DEFAULT_STATS), first)
    assert np.array_equal(frame_cell(field, 160, DEFAULT_STATS), first)


def test_a_wide_frame_found_only_on_a_closer_look_gives_classifys_square_with_one_framing() -> None:
    """A 16:9 frame whose small nucleus only the closer look finds: one framing is `wbc classify`'s first view (the
    frame's square around it), not the whole frame squashed into the square."""
    from wbc.classify import prepare_cell_views
    from wbc.reframe import measure_closer

    frame = _glass(360, 640, seed=2)
    cv2.circle(frame, (320, 180), 5, (110, 60, 150), -1)  # a platelet-sized nucleus at the centre, 1/70 of the width
    assert not measure_framing(frame).found and measure_closer(frame).found
    first, second = prepare_cell_views(frame, 160, DEFAULT_STATS, second=True)
    assert second is not None
    assert np.array_equal(prepare_cell(frame, 160, DEFAULT_STATS), first)


def test_a_tiny_picture_on_a_canvas_is_refused_as_too_small() -> None:
    """:data:`wbc.classify.MIN_CELL_SIDE` holds for what is left once the canvas is cut off, as for the picture
    alone (before wbc 0.29.0 a 12 px thumbnail on a white page was answered, confidently and unflagged)."""
    import pytest

    from wbc.classify import decode_cell_views
    from wbc.errors import ImageReadError

    page = np.full((64, 64, 3), 255, np.uint8)
    page[26:38, 26:38] = np.random.default_rng(0).integers(60, 220, (12, 12, 3))
    png = cv2.imencode(".png", page)[1].tobytes()
    with pytest.raises(ImageReadError, match=r"^thumb_on_page\.png: .* 12x12, too small"):
        decode_cell_views(png, "thumb_on_page.png", 160, DEFAULT_STATS)
    assert decode_cell_views(png, "thumb_on_page.png", 160, False)[0].shape == (160, 160, 3)  # no re-framing: no cut


def test_a_cell_on_a_canvas_is_still_answered() -> None:
    """A picture of a cell's size on a page passes the check (only what is under 16 px is refused)."""
    from wbc.classify import decode_cell_views

    page = np.full((300, 300, 3), 255, np.uint8)
    cell = _glass(120, 120, seed=3)
    cv2.circle(cell, (60, 60), 20, (90, 40, 140), -1)
    page[90:210, 90:210] = cell
    first, _ = decode_cell_views(cv2.imencode(".png", page)[1].tobytes(), "cell_on_page.png", 160, DEFAULT_STATS)
    assert first.shape == (160, 160, 3)
