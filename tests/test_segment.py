"""Segmentation on synthetic smears (runs anywhere) and on real BCCD fields (skipped without the data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wbc.evaluate.smears import dice_iou, match_detections, paste_masks
from wbc.segment import get_segmenter
from wbc.segment.classical import ClassicalSegmenter, estimate_rbc_diameter
from wbc.synthetic import synthetic_smear


@pytest.mark.parametrize("scale", [0.6, 1.0, 1.6])
def test_rbc_diameter_follows_the_image_scale(scale: float) -> None:
    rgb, *_ = synthetic_smear(
        scale=scale, n_wbc=1, seed=1, size=(int(480 * max(1, scale)), int(640 * max(1, scale)))
    )
    d = estimate_rbc_diameter(rgb)
    assert d is not None
    assert 0.7 * 70 * scale < d < 1.4 * 70 * scale


def test_blank_field_has_no_scale_and_no_cells() -> None:
    rgb = np.full((300, 400, 3), 210, np.uint8)
    assert estimate_rbc_diameter(rgb) is None
    assert ClassicalSegmenter().segment(rgb) == []


def test_field_without_wbc_is_empty() -> None:
    rgb, *_ = synthetic_smear(n_wbc=0, seed=3)
    assert ClassicalSegmenter().segment(rgb) == []


@pytest.mark.parametrize(("scale", "tint"), [(1.0, (1, 1, 1)), (0.6, (1, 1, 1)), (1.5, (0.9, 1.0, 1.05))])
def test_classical_finds_and_outlines_wbcs_at_any_scale(
    scale: float, tint: tuple[float, float, float]
) -> None:
    h, w = int(480 * max(1, scale)), int(640 * max(1, scale))
    rgb, boxes, nuc, cell = synthetic_smear(scale=scale, n_wbc=2, seed=2, size=(h, w), tint=tint)
    cells = ClassicalSegmenter().segment(rgb)
    tp, _, n = match_detections([c.box for c in cells], [1.0] * len(cells), boxes)
    assert sum(tp) == n == 2 and len(cells) == 2
    pn, pc = paste_masks(cells, rgb.shape[:2])
    assert dice_iou(pn, nuc)[0] > 0.8
    assert dice_iou(pc, cell)[0] > 0.85
    for c in cells:
        assert c.cell_mask.shape == (c.box[3] - c.box[1], c.box[2] - c.box[0])
        assert not (c.nucleus_mask & ~c.cell_mask).any()  # the cell includes its nucleus


def test_unknown_segmenter_is_a_clear_error() -> None:
    from wbc.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown segmenter"):
        get_segmenter("magic")


@pytest.mark.real_data
def test_learned_and_classical_on_real_bccd_train_fields(real_data: Path) -> None:
    """Both methods on a few BCCD *train* fields: every boxed WBC found, masks overlap the truth."""
    from wbc.evaluate.smears import evaluate_segmentation, load_bccd
    from wbc.paths import DEFAULT_SEGMENTER

    items = [it for it in load_bccd(real_data, "train") if len(it.wbc_boxes) == 1][:6]
    methods = ["classical"] + (["learned"] if DEFAULT_SEGMENTER.is_file() else [])
    for m in methods:
        res = evaluate_segmentation(items, get_segmenter(m).segment)
        assert res["detection"]["recall"] >= 5 / 6, m
        assert res["segmentation"]["cell_dice"] > 0.7, m
