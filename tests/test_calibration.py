"""The one calibration path: calibrate() reproduces the temperature + review-threshold fit it replaced."""

from __future__ import annotations

import numpy as np
import pytest

from wbc.calibration import (
    DEFAULT_REVIEW_TARGET_ACCURACY,
    Calibration,
    calibrate,
    fit_temperature,
    resolve_review_target,
    review_threshold,
)
from wbc.config import TrainConfig
from wbc.model import ModelInfo, softmax
from wbc.paths import DEFAULT_MODEL


def _overconfident(n: int = 400, c: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    return (np.eye(c)[y] * 6 + rng.normal(0, 2.5, (n, c))).astype(np.float32), y


@pytest.mark.parametrize("target", [0.9, 0.95, 0.995])
def test_calibrate_matches_the_fit_it_replaced(target: float) -> None:
    logits, y = _overconfident()
    # the code each of train/loop.py, quantize.py, adapt.py and train/finetune.py ran before
    t = fit_temperature(logits, y)
    p = softmax(logits, t)
    thr = review_threshold(p.max(1), p.argmax(1) == y, target)
    cal = calibrate(logits, y, target)
    assert isinstance(cal, Calibration)
    assert (cal.temperature, cal.review_threshold, cal.review_target_accuracy, cal.n) == (t, thr, target, len(y))
    assert set(cal.to_dict()) == {"temperature", "review_threshold", "review_target_accuracy", "n"}


def test_accepted_cells_reach_the_target() -> None:
    logits, y = _overconfident(seed=1)
    cal = calibrate(logits, y, 0.97)
    p = softmax(logits, cal.temperature)
    accepted = p.max(1) >= cal.review_threshold
    assert accepted.any() and (p.argmax(1) == y)[accepted].mean() >= 0.97


def test_one_default_for_the_review_target() -> None:
    logits, y = _overconfident(seed=2)
    assert calibrate(logits, y).review_target_accuracy == DEFAULT_REVIEW_TARGET_ACCURACY
    assert TrainConfig().review_target_accuracy == DEFAULT_REVIEW_TARGET_ACCURACY
    # an explicit target wins, then the model's stored one, then the default (for models that store 0)
    assert resolve_review_target(0.9, 0.99) == 0.9
    assert resolve_review_target(None, 0.99) == 0.99
    assert resolve_review_target(None, 0.0) == DEFAULT_REVIEW_TARGET_ACCURACY
    assert resolve_review_target(None) == DEFAULT_REVIEW_TARGET_ACCURACY


def test_shipped_model_keeps_its_review_target() -> None:
    info = ModelInfo.from_json(DEFAULT_MODEL.with_suffix(".json").read_text())
    assert resolve_review_target(None, info.review_target_accuracy) == info.review_target_accuracy == 0.995


def test_calibrate_on_no_cells_is_identity() -> None:
    cal = calibrate(np.zeros((0, 3), np.float32), np.zeros(0, int), 0.99)
    assert cal.temperature == 1.0 and cal.n == 0
