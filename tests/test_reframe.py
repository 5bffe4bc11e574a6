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

