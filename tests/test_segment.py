"""Segmentation on synthetic smears (runs anywhere) and on real BCCD fields (skipped without the data)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from wbc.evaluate.smears import dice_iou, match_detections, paste_masks
from wbc.segment import get_segmenter
from wbc.segment.classical import ClassicalSegmenter, estimate_rbc_diameter


def synthetic_smear(
    scale: float = 1.0,
    n_wbc: int = 2,
    seed: int = 0,
    size: tuple[int, int] = (480, 640),
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0),
):
    """A smear-like field: grey background, pink pale-centred red cells, violet-nucleus WBCs.

    Returns (rgb, wbc boxes, nucleus mask, cell mask). Red cells are ``70 * scale`` px across.
    """
    rng = np.random.default_rng(seed)
    h, w = size
    img = np.full((h, w, 3), (200, 202, 200), np.float32)
    d = 70.0 * scale
    nuc = np.zeros((h, w), np.uint8)
    cell = np.zeros((h, w), np.uint8)
    centres = []
    wr = 0.75 * d
    for _ in range(n_wbc):
        for _ in range(100):
            c = rng.uniform([wr + 5, wr + 5], [w - wr - 5, h - wr - 5])
            if all(np.hypot(*(c - o)) > 2 * wr + 10 for o in centres):
                centres.append(c)
                break
    for _ in range(int(h * w / (d * d) * 0.9)):
        c = rng.uniform([0, 0], [w, h])
        if any(np.hypot(*(c - o)) < wr + d / 2 for o in centres):
            continue
        cv2.circle(img, (int(c[0]), int(c[1])), int(d / 2), (180, 145, 150), -1, cv2.LINE_AA)
        cv2.circle(img, (int(c[0]), int(c[1])), int(d / 5), (192, 170, 172), -1, cv2.LINE_AA)
    boxes = []
    for c in centres:
        x, y = int(c[0]), int(c[1])
        cv2.circle(cell, (x, y), int(wr), 1, -1)
        for k in range(3):  # three overlapping lobes
            a = 2 * np.pi * k / 3 + rng.uniform(0, 1)
            cv2.circle(
                nuc, (int(x + 0.25 * wr * np.cos(a)), int(y + 0.25 * wr * np.sin(a))), int(0.3 * wr), 1, -1
            )
        boxes.append((x - int(wr), y - int(wr), x + int(wr) + 1, y + int(wr) + 1))
    img[cell > 0] = (185, 165, 200)
    img[nuc > 0] = (135, 115, 205)
    img *= np.asarray(tint, np.float32)
    img += rng.normal(0, 3, img.shape)
    img = cv2.GaussianBlur(img, (0, 0), 1.2 * max(scale, 0.5))
    return np.clip(img, 0, 255).astype(np.uint8), boxes, nuc > 0, cell > 0


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
