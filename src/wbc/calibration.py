"""Confidence calibration (temperature scaling) and the review threshold, fitted on validation data.

Pure numpy/scipy so that both training (at export) and evaluation (to report ECE before and after)
use the same code.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy.optimize import minimize_scalar

from wbc.model import softmax


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    p = softmax(logits, temperature)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(labels)), labels], 1e-12, None))))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T > 0 that minimises the negative log-likelihood of ``softmax(logits / T)``.

    >>> rng = np.random.default_rng(0); y = rng.integers(0, 3, 500)
    >>> z = np.eye(3)[y] * 8 + rng.normal(0, 3, (500, 3))  # over-confident logits
    >>> fit_temperature(z, y) > 1
    True
    """
    if len(labels) == 0:
        return 1.0
    res = minimize_scalar(lambda log_t: nll(logits, labels, float(np.exp(log_t))),
                          bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(res.x))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE with equal-width confidence bins (Guo et al. 2017)."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in itertools.pairwise(edges):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def review_threshold(confidence: np.ndarray, correct: np.ndarray, target_accuracy: float) -> float:
    """The lowest confidence threshold at which the accepted cells reach ``target_accuracy``.

    Cells below the threshold are flagged for review. Returns 0.0 when every cell can be accepted
    and 1.0 when no threshold reaches the target.

    >>> review_threshold(np.array([0.99, 0.9, 0.6, 0.5]), np.array([1, 1, 0, 1]), 1.0)
    0.9
    """
    order = np.argsort(-confidence, kind="stable")
    conf = confidence[order]
    cum_acc = np.cumsum(correct[order]) / np.arange(1, len(conf) + 1)
    ok = np.nonzero(cum_acc >= target_accuracy)[0]
    if len(ok) == 0:
        return 1.0
    k = ok[-1]  # accept the k+1 most confident cells
    if k == len(conf) - 1:
        return 0.0
    return float(conf[k])


def coverage_accuracy(confidence: np.ndarray, correct: np.ndarray, coverage: float) -> float:
    """Accuracy on the ``coverage`` fraction of cells with the highest confidence."""
    n = max(1, round(coverage * len(confidence)))
    order = np.argsort(-confidence, kind="stable")[:n]
    return float(np.mean(correct[order]))
