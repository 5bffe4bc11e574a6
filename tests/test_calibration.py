"""The one calibration path: calibrate() reproduces the temperature + review-threshold fit it replaced."""

from __future__ import annotations

import numpy as np
import pytest

from wbc.calibration import (
    DEFAULT_REVIEW_TARGET_ACCURACY,
    Calibration,
    accuracy_lower_bound,
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
    assert cal.to_dict() == {"temperature": t, "review_threshold": thr, "review_target_accuracy": target, "n": len(y),
                             "shown_accuracy": None, "fitted_temperature": None, "temperature_note": None}


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


def test_few_cells_all_right_cannot_vouch_for_the_target() -> None:
    """25 held-out cells, every one right: the point rule accepts every cell (threshold 0), though 25 cells
    cannot tell 99.5 % from 90 %; with ``evidence`` (wbc adapt) every cell is flagged, even one the model gives a
    confidence of exactly 1, and the calibration says what the cells do show."""
    from wbc.classify import predictions_from_probs

    logits, y = _overconfident(n=25, seed=3)
    logits[np.arange(25), y] += 20  # every cell right and sure
    assert calibrate(logits, y, 0.995).review_threshold == 0.0
    cal = calibrate(logits, y, 0.995, evidence=True)
    assert cal.review_threshold == 1.0 and round(cal.shown_accuracy, 3) == 0.887
    assert calibrate(logits, y, 0.85, evidence=True).review_threshold == 0.0  # a target they do show

    from types import SimpleNamespace

    classes = ["a", "b", "c", "d"]
    sure = SimpleNamespace(classes=classes, info=ModelInfo(classes, 8, [0.0] * 3, [1.0] * 3,
                                                            review_threshold=cal.review_threshold))
    flagged = predictions_from_probs(np.array([[1.0, 0.0, 0.0, 0.0]]), sure)
    assert flagged[0].review and "do not show its review target" in flagged[0].reasons[0]


def test_the_threshold_cells_show_keeps_the_accepted_cells_above_the_target() -> None:
    logits, y = _overconfident(n=4000, seed=4)
    point, shown = calibrate(logits, y, 0.99), calibrate(logits, y, 0.99, evidence=True)
    assert shown.temperature == point.temperature and 0 < point.review_threshold < shown.review_threshold < 1
    p = softmax(logits, shown.temperature)
    kept = p.max(1) >= shown.review_threshold
    assert accuracy_lower_bound(int((p.argmax(1) == y)[kept].sum()), int(kept.sum())) >= 0.99


def test_held_out_cells_all_right_keep_the_base_model_s_temperature() -> None:
    """30 held-out cells all right: the NLL falls as the temperature falls, so the fit ran to its 0.05 bound and an
    adapted model showed 0.999-1.000 on wrong calls (wbc 0.37.0). Given the base model's temperature it is kept and
    what was done is said; with an error among the cells the fit is identified and stands."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 60)
    z = np.eye(5)[y] * 3 + rng.normal(0, 1, (60, 5))
    right = z.argmax(1) == y
    z, y = z[right][:30], y[right][:30]
    assert fit_temperature(z, y) < 0.06  # not identified: the bound
    c = calibrate(z, y, evidence=True, base_temperature=0.54)
    assert c.temperature == 0.54 and c.fitted_temperature is not None and c.fitted_temperature < 0.06
    assert c.temperature_note and c.temperature_note.startswith(
        "temperature kept at the base model's 0.54: the 30 held-out cells are all right, which fits no temperature")
    assert c.review_threshold == calibrate(z, y, evidence=True).review_threshold == 1.0  # 30 cells show no 99.5 %
    for logits, labels in (_overconfident(), (z, np.where(np.arange(30) == 0, (y + 1) % 5, y))):  # one wrong
        one = calibrate(logits, labels, evidence=True, base_temperature=0.54)
        assert one.temperature == fit_temperature(logits, labels) and one.fitted_temperature is None
        assert one.temperature_note is None
