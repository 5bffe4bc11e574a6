"""Evaluation metrics as pure functions over arrays: ``(y_true, y_prob, classes) -> dict``.

Every metric scikit-learn provides comes from scikit-learn; what it lacks (specificity, ECE, confidence
intervals, selective prediction, McNemar's test) is written here in a few lines of numpy, each with a
test against a hand-computed case. The dicts hold plain floats, ints, lists and ``None`` (for a value
that is undefined, e.g. the recall of a class with no cells), so they go straight to JSON.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from wbc.calibration import coverage_accuracy, expected_calibration_error, under_review, val_summary
from wbc.counts import clopper_pearson
from wbc.model import softmax

#: Coverages reported for selective prediction (accept the most confident 90/95/99% of cells).
COVERAGES: tuple[float, ...] = (0.90, 0.95, 0.99)
ECE_BINS = 15


def _num(x: float | np.floating[Any]) -> float | None:
    """A JSON-safe float: NaN (undefined) becomes None."""
    x = float(x)
    return None if math.isnan(x) else x


def present_labels(y_true: np.ndarray, n_classes: int) -> list[int]:
    """Class indices that have at least one true cell: macro averages run over these.

    A class the model knows but the data lacks has no recall, so averaging a 0 for it would punish
    the model for the data set's make-up.
    """
    return [k for k in range(n_classes) if np.any(y_true == k)]


def specificity(cm: np.ndarray) -> np.ndarray:
    """Per-class specificity TN / (TN + FP) from a confusion matrix (rows true, columns predicted).

    >>> specificity(np.array([[3, 1], [2, 4]]))  # class 0: TN=4, FP=2; class 1: TN=3, FP=1
    array([0.66666667, 0.75      ])
    """
    cm = np.asarray(cm, np.float64)
    total = cm.sum()
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    tn = total - tp - fp - fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tn + fp > 0, tn / np.maximum(tn + fp, 1e-300), np.nan)


def per_class_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str]) -> dict[str, dict]:
    """precision, recall (= sensitivity), specificity, F1 and support for each class."""
    labels = list(range(len(classes)))
    prec, rec, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=np.nan
    )
    spec = specificity(confusion_matrix(y_true, y_pred, labels=labels))
    out = {}
    for k, c in enumerate(classes):
        out[c] = {
            "precision": _num(prec[k]),
            "recall": _num(rec[k]) if support[k] else None,
            "specificity": _num(spec[k]),
            "f1": _num(f1[k]),
            "support": int(support[k]),
            "predicted": int(np.sum(y_pred == k)),
        }
    return out


def roc_auc(y_true: np.ndarray, y_prob: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """One-vs-rest ROC AUC per class and their macro mean (classes without both positives and
    negatives in the data have no AUC and are left out of the mean)."""
    per: dict[str, float | None] = {}
    for k, c in enumerate(classes):
        pos = y_true == k
        per[c] = float(roc_auc_score(pos, y_prob[:, k])) if 0 < pos.sum() < len(pos) else None
    vals = [v for v in per.values() if v is not None]
    return {"per_class": per, "macro": float(np.mean(vals)) if vals else None}


def roc_curves(y_true: np.ndarray, y_prob: np.ndarray, classes: Sequence[str]) -> dict[str, tuple]:
    """(false positive rate, true positive rate) per class, for plotting."""
    out = {}
    for k, c in enumerate(classes):
        pos = y_true == k
        if 0 < pos.sum() < len(pos):
            fpr, tpr, _ = roc_curve(pos, y_prob[:, k])
            out[c] = (fpr, tpr)
    return out


def reliability_bins(y_prob: np.ndarray, y_true: np.ndarray, bins: int = ECE_BINS) -> dict[str, list]:
    """Per equal-width confidence bin: mean confidence, accuracy and count (reliability diagram)."""
    conf = y_prob.max(axis=1)
    correct = y_prob.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)  # bins are (lo, hi]
    count = np.bincount(idx, minlength=bins)
    with np.errstate(invalid="ignore"):
        mean_conf = np.bincount(idx, conf, bins) / count
        acc = np.bincount(idx, correct.astype(float), bins) / count
    return {
        "edges": edges.tolist(),
        "confidence": [_num(v) for v in mean_conf],
        "accuracy": [_num(v) for v in acc],
        "count": count.tolist(),
    }


def calibration_metrics(
    logits: np.ndarray, y_true: np.ndarray, temperature: float, bins: int = ECE_BINS
) -> dict[str, Any]:
    """ECE with raw logits (T = 1) and with the model's stored temperature, plus negative log-likelihood."""
    raw = _renorm(softmax(logits, 1.0))
    cal = _renorm(softmax(logits, temperature))
    labels = list(range(logits.shape[1]))
    return {
        "bins": bins,
        "temperature": float(temperature),
        "raw": expected_calibration_error(raw, y_true, bins),
        "calibrated": expected_calibration_error(cal, y_true, bins),
        "nll_raw": float(log_loss(y_true, raw, labels=labels)),
        "nll_calibrated": float(log_loss(y_true, cal, labels=labels)),
    }


def _renorm(p: np.ndarray) -> np.ndarray:
    """float64 rows summing to 1 (softmax returns float32, which scikit-learn's checks dislike)."""
    p = p.astype(np.float64)
    return p / p.sum(axis=1, keepdims=True)


def selective_metrics(
    y_prob: np.ndarray,
    y_true: np.ndarray,
    review_threshold: float,
    coverages: Sequence[float] = COVERAGES,
    review: np.ndarray | None = None,
) -> dict[str, Any]:
    """Accuracy when only the most confident cells are accepted, and what the stored threshold does.

    ``accuracy_at_coverage`` (coverage: accuracy) and ``cells_at_coverage`` (coverage: cells kept) hold the
    coverages that leave at least one cell out.

    ``accepted_*`` describe the cells whose confidence is at or above ``review_threshold`` (the ones the threshold
    alone does not flag; none at a threshold of 1.0). ``review``: the flag ``wbc classify`` gave each cell
    (``predictions.csv``'s ``review`` column: the threshold, and colours unlike the training images, another cell in
    view, evidence that changed the answer, an answer outside the chosen classes); with it, ``flagged_any``,
    ``flagged_other`` (flagged though at or above the threshold), ``accepted_any_fraction`` and
    ``accepted_any_accuracy`` describe the calls a lab would sign off without looking (before wbc 0.31.0 the report
    counted the threshold's flags alone).
    """
    conf = y_prob.max(axis=1)
    correct = (y_prob.argmax(axis=1) == y_true).astype(float)
    accepted = ~under_review(conf, review_threshold)
    n = len(conf)
    # the cells each coverage keeps, as coverage_accuracy counts them; a coverage that keeps every cell (99 % of
    # fewer than 50) is no selective accuracy but the overall one, and is left out (before wbc 0.31.0 the report
    # showed it as "if the least confident 1% went to a human" though none did)
    kept = {f"{c:.2f}": max(1, round(c * n)) for c in coverages}
    out: dict[str, Any] = {
        "accuracy_at_coverage": {f"{c:.2f}": coverage_accuracy(conf, correct, c) for c in coverages
                                 if kept[f"{c:.2f}"] < n},
        "cells_at_coverage": {key: k for key, k in kept.items() if k < n},
        "review_threshold": float(review_threshold),
        "accepted_fraction": float(accepted.mean()) if len(conf) else None,
        "accepted_accuracy": float(correct[accepted].mean()) if accepted.any() else None,
        "flagged": int((~accepted).sum()),
    }
    if review is not None:
        review = np.asarray(review, bool)
        if review.shape != conf.shape:
            raise ValueError(f"review has shape {review.shape}, expected ({len(conf)},)")
        signed = ~review
        out.update(
            flagged_any=int(review.sum()),
            flagged_other=int((review & accepted).sum()),
            accepted_any_fraction=float(signed.mean()) if len(conf) else None,
            accepted_any_accuracy=float(correct[signed].mean()) if signed.any() else None,
        )
    return out


def coverage_curve(y_prob: np.ndarray, y_true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy of the k most confident cells for every k, against coverage k/N (for plotting)."""
    conf = y_prob.max(axis=1)
    correct = y_prob.argmax(axis=1) == y_true
    order = np.argsort(-conf, kind="stable")
    k = np.arange(1, len(conf) + 1)
    return k / max(len(conf), 1), np.cumsum(correct[order]) / k


def _metrics_from_cms(cms: np.ndarray, labels: Sequence[int]) -> dict[str, np.ndarray]:
    """accuracy, macro-F1 (over ``labels``) and per-class recall from a stack of confusion matrices.

    Vectorised so that 1,000 bootstrap resamples cost milliseconds; the point estimates in the report
    come from scikit-learn and a test checks this function against it.
    """
    cms = cms.astype(np.float64)
    tp = np.diagonal(cms, axis1=1, axis2=2)
    n = cms.sum(axis=(1, 2))
    true_n = cms.sum(axis=2)
    pred_n = cms.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = tp / true_n
        f1 = np.where(true_n + pred_n > 0, 2 * tp / (true_n + pred_n), 0.0)
        precision = tp / pred_n
    return {
        "accuracy": tp.sum(axis=1) / n,
        # macro over the classes with cells in each resample, as the point estimate is over those in the data
        "macro_f1": _macro_over_present(f1[:, list(labels)], true_n[:, list(labels)] > 0),
        "recall": recall,
        "precision": precision,
    }


def _macro_over_present(values: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Row means of ``values`` (B, K) over the entries ``present`` marks: a class a resample has no cell of has no F1
    to average, as a class the data lacks has none in the point estimate (scoring it 0 pulled the interval down).

    >>> _macro_over_present(np.array([[1.0, 0.0], [0.5, 1.0]]), np.array([[True, False], [True, True]])).tolist()
    [1.0, 0.75]
    """
    return np.where(present, values, 0.0).sum(axis=1) / np.maximum(present.sum(axis=1), 1)


def _confusions(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, index: np.ndarray) -> np.ndarray:
    """Confusion matrices of resamples ``index`` (B, N) via one bincount."""
    codes = y_true * n_classes + y_pred
    b = index.shape[0]
    flat = codes[index] + (np.arange(b) * n_classes * n_classes)[:, None]
    return np.bincount(flat.ravel(), minlength=b * n_classes * n_classes).reshape(b, n_classes, n_classes)


def resample_indices(n: int, n_boot: int, seed: int = 0, chunk: int = 250) -> Iterator[np.ndarray]:
    """The one bootstrap of wbc: ``n_boot`` resamples of ``n`` items (with replacement), as index arrays
    (B, n) in chunks of at most ``chunk`` rows, which bounds the memory of the index array.

    By hand rather than ``scipy.stats.bootstrap``: every metric :func:`bootstrap_cis` resamples (accuracy, macro-F1,
    recall and precision of each class; wbc reports the macro-F1 one) comes from the same resamples in one bincount
    per chunk, and a class a resample lacks is left out of that class's interval instead of turning it into NaN.

    >>> [b.shape for b in resample_indices(10, 600)]
    [(250, 10), (250, 10), (100, 10)]
    """
    rng = np.random.default_rng(seed)
    for start in range(0, n_boot, chunk):
        yield rng.integers(0, n, (min(chunk, n_boot - start), n))


def bootstrap_cis(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    classes: Sequence[str],
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Percentile bootstrap intervals (resampling cells) for accuracy, macro-F1, per-class recall and
    per-class precision; wbc reports only the macro-F1 one (:func:`confidence_intervals`).

    A resample that happens to contain no cell of a class gives no recall for it; that class's
    interval uses the resamples that do, and that resample's macro-F1 averages over the classes it has cells of
    (the point estimate's convention, :func:`present_labels`). Where every resample gives the same value (a
    proportion of 0 or 100 %, a macro-F1 without a single mistake) the interval is None, not a zero-width one:
    resampling cannot show that value's uncertainty, and "100.0–100.0 %" reads as certainty (before wbc 0.31.0).
    ``n_boot`` 0 (or less) draws no resample and gives every interval as None, as :func:`summary_metrics` takes it, to
    skip the bootstrap (before wbc 0.35.0 a bare numpy ValueError).
    """
    if n_boot <= 0:
        return {"level": level, "n_boot": 0, "seed": seed, "accuracy": None, "macro_f1": None,
                "recall": dict.fromkeys(classes), "precision": dict.fromkeys(classes)}
    n_classes = len(classes)
    labels = present_labels(y_true, n_classes)
    alpha = (1 - level) / 2
    stats: dict[str, list[np.ndarray]] = {"accuracy": [], "macro_f1": [], "recall": [], "precision": []}
    for idx in resample_indices(len(y_true), n_boot, seed):
        m = _metrics_from_cms(_confusions(y_true, y_pred, n_classes, idx), labels)
        for key in stats:
            stats[key].append(m[key])
    cat = {k: np.concatenate(v) for k, v in stats.items()}

    def interval(values: np.ndarray) -> list[float] | None:
        values = values[~np.isnan(values)]
        if len(values) == 0 or values.min() == values.max():
            return None
        lo, hi = np.quantile(values, [alpha, 1 - alpha])
        return [float(lo), float(hi)]

    return {
        "level": level,
        "n_boot": n_boot,
        "seed": seed,
        "accuracy": interval(cat["accuracy"]),
        "macro_f1": interval(cat["macro_f1"]),
        "recall": {c: interval(cat["recall"][:, k]) if k in labels else None for k, c in enumerate(classes)},
        "precision": {c: interval(cat["precision"][:, k]) for k, c in enumerate(classes)},
    }


def proportion_ci(k: int, n: int, level: float = 0.95) -> list[float] | None:
    """The exact (Clopper-Pearson) interval of ``k`` of ``n`` as ``[low, high]``; None without any trial.

    The interval of the differentials (:func:`wbc.counts.clopper_pearson`). It covers the true share in at least
    ``level`` of samples however small ``n`` and however close the share is to 0 or 1, where the percentile
    bootstrap collapsed to a point (5 of 5 cells: 100.0–100.0 %) and covered a recall of 0.95 in 35 % of samples of
    10 cells.

    >>> [round(v, 3) for v in proportion_ci(5, 5)], proportion_ci(0, 0)
    ([0.478, 1.0], None)
    """
    if n <= 0:
        return None
    lo, hi = clopper_pearson(int(k), int(n), level)
    return [lo, hi]


#: How each interval in ``ci`` is computed (``metrics.json`` says so beside the intervals).
CI_METHODS: dict[str, str] = {
    "accuracy": "exact binomial (Clopper-Pearson) of the cells right",
    "recall": "exact binomial (Clopper-Pearson) of the class's cells found",
    "precision": "exact binomial (Clopper-Pearson) of the class's calls right",
    "macro_f1": "percentile bootstrap over cells; none where every resample gives the same value or none is drawn "
    "(n_boot 0)",
}


def confidence_intervals(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    classes: Sequence[str],
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """The intervals of ``metrics.json``'s ``ci``: exact binomial ones for the proportions (accuracy: cells right of
    all; recall: found of the class's cells; precision: right of the class's calls) and the percentile bootstrap for
    macro-F1, which is no proportion.

    Before wbc 0.31.0 all four were bootstrapped, which gave a proportion at 0 or 100 % a zero-width interval and
    covered small classes' recall in 35-60 % of samples. Macro-F1 keeps the bootstrap (near 95 % coverage in
    simulation wherever it has any width) and has no interval where every resample gives the same value, or with
    ``n_boot`` 0 (no bootstrap: the exact intervals alone, :func:`bootstrap_cis`).
    """
    y_true = np.asarray(y_true, np.int64)
    y_pred = np.asarray(y_pred, np.int64)
    k = len(classes)
    cm = np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)
    tp, support, predicted = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
    boot = bootstrap_cis(y_true, y_pred, classes, n_boot=n_boot, seed=seed, level=level)
    return {
        "level": level,
        "method": dict(CI_METHODS),
        "n_boot": n_boot,
        "seed": seed,
        "accuracy": proportion_ci(int(tp.sum()), len(y_true), level),
        "macro_f1": boot["macro_f1"],
        "recall": {c: proportion_ci(int(tp[j]), int(support[j]), level) for j, c in enumerate(classes)},
        "precision": {c: proportion_ci(int(tp[j]), int(predicted[j]), level) for j, c in enumerate(classes)},
    }


def summary_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str], n_boot: int = 0, seed: int = 0
) -> dict[str, Any]:
    """The short summary training writes (``val_metrics.json``, ``test_metrics.json``, the model's
    ``metrics``): n, accuracy, macro-F1 and per-class recall, averaged as :func:`classification_metrics`
    does (macro over the classes present; a class without cells has recall ``None``). ``n_boot`` > 0 adds
    95% intervals from :func:`confidence_intervals` as ``accuracy_ci95``, ``macro_f1_ci95`` and ``recall_ci95``.

    >>> s = summary_metrics(np.array([0, 0, 1]), np.array([0, 1, 1]), ["a", "b", "c"])
    >>> s["accuracy"], s["recall"]
    (0.6666666666666666, {'a': 0.5, 'b': 1.0, 'c': None})
    """
    y_true = np.asarray(y_true, np.int64)
    y_pred = np.asarray(y_pred, np.int64)
    out = val_summary(y_true, y_pred, list(classes))
    if n_boot > 0:
        ci = confidence_intervals(y_true, y_pred, classes, n_boot=n_boot, seed=seed)
        out.update(accuracy_ci95=ci["accuracy"], macro_f1_ci95=ci["macro_f1"], recall_ci95=ci["recall"])
    return out


def top_confusions(cm: np.ndarray, classes: Sequence[str], k: int = 5) -> list[dict[str, Any]]:
    """The ``k`` largest off-diagonal cells: which true class is most often called what."""
    cm = np.asarray(cm)
    rows = cm.sum(axis=1)
    pairs = [
        (int(cm[i, j]), i, j)
        for i in range(len(classes))
        for j in range(len(classes))
        if i != j and cm[i, j] > 0
    ]
    pairs.sort(key=lambda t: (-t[0], t[1], t[2]))
    return [
        {"true": classes[i], "predicted": classes[j], "count": n, "fraction_of_true": n / rows[i]}
        for n, i, j in pairs[:k]
    ]


def classification_metrics(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    classes: Sequence[str],
    *,
    logits: np.ndarray | None = None,
    temperature: float = 1.0,
    review_threshold: float = 0.0,
    n_boot: int = 1000,
    seed: int = 0,
    review: np.ndarray | None = None,
) -> dict[str, Any]:
    """Everything ``metrics.json`` reports about a labelled set, from true class indices and the
    model's probabilities as it states them (``y_prob``); ``review``: ``wbc classify``'s review flag of each cell
    (:func:`selective_metrics`).

    Every calibration measure of ``y_prob`` (``ece.calibrated``, ``reliability``) describes those probabilities.
    ``logits`` (raw, before temperature scaling) add the ECE with T = 1 (``raw``) and with ``temperature`` alone
    (``temperature_only``, which differs from ``calibrated`` where a lab class prior or other evidence moved the
    stated probabilities). ``n_boot`` 0 skips the bootstrap: macro-F1 has no interval, the exact ones stay.
    """
    y_true = np.asarray(y_true, np.int64)
    y_prob = np.asarray(y_prob, np.float64)
    if y_prob.ndim != 2 or y_prob.shape != (len(y_true), len(classes)):
        raise ValueError(f"y_prob has shape {y_prob.shape}, expected ({len(y_true)}, {len(classes)})")
    if len(y_true) == 0:
        raise ValueError("no labelled cells to evaluate")
    with warnings.catch_warnings():  # classes absent from the data are handled explicitly below
        warnings.simplefilter("ignore", UserWarning)
        return _classification_metrics(
            y_true, y_prob, classes, logits, temperature, review_threshold, n_boot, seed, review
        )


def _classification_metrics(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    classes: Sequence[str],
    logits: np.ndarray | None,
    temperature: float,
    review_threshold: float,
    n_boot: int,
    seed: int,
    review: np.ndarray | None = None,
) -> dict[str, Any]:
    y_pred = y_prob.argmax(axis=1)
    labels = present_labels(y_true, len(classes))
    cm = confusion_matrix(y_true, y_pred, labels=list(range(len(classes))))
    if logits is not None:
        # "calibrated" is the confidence as stated (y_prob: the temperature, and the lab's class prior and the
        # cytoplasm evidence where they apply), the one the reliability chart draws; the logits give "raw" (T = 1)
        # and "temperature_only" (softmax(logits / T), which a refitted temperature is compared with)
        by_t = calibration_metrics(np.asarray(logits), y_true, temperature)
        calib = {
            **by_t,
            "calibrated": expected_calibration_error(y_prob, y_true, ECE_BINS),
            "nll_calibrated": float(log_loss(y_true, _renorm(y_prob), labels=list(range(len(classes))))),
            "temperature_only": by_t["calibrated"],
        }
    else:
        calib = {
            "bins": ECE_BINS,
            "temperature": None,
            "raw": None,
            "calibrated": expected_calibration_error(y_prob, y_true, ECE_BINS),
        }
    return {
        "n": len(y_true),
        "classes": list(classes),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)),
        "cohen_kappa": _num(cohen_kappa_score(y_true, y_pred, labels=list(range(len(classes))))),
        "per_class": per_class_metrics(y_true, y_pred, classes),
        "confusion_matrix": {
            "classes": list(classes),
            "rows": "true",
            "columns": "predicted",
            "matrix": cm.tolist(),
        },
        "top_confusions": top_confusions(cm, classes),
        "roc_auc": roc_auc(y_true, y_prob, classes),
        "ece": calib,
        "reliability": reliability_bins(y_prob, y_true),
        "ci": confidence_intervals(y_true, y_pred, classes, n_boot=n_boot, seed=seed),
        "selective": selective_metrics(y_prob, y_true, review_threshold, review=review),
    }


# --- comparing two models on the same cells -------------------------------------------------------


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> dict[str, Any]:
    """McNemar's test on paired right/wrong outcomes of two models on the same cells.

    Exact: the two-sided binomial test of the discordant pairs (the cells exactly one model gets right) against an
    even split, whatever their number, so that :func:`paired_accuracy_difference`'s interval, built from the same
    exact binomial, holds 0 exactly when this p-value is at least 1 - its level. Before wbc 0.31.0, 25 or more
    discordant pairs took the chi-squared statistic with continuity correction, whose p-value could fall on the
    other side of 0.05 from the interval. ``statistic`` is the smaller of the two discordant counts.

    >>> r = mcnemar(np.array([1, 1, 0, 1], bool), np.array([1, 0, 0, 0], bool))
    >>> r["only_a_correct"], r["only_b_correct"], r["method"]
    (2, 0, 'exact')
    """
    from scipy.stats import binomtest

    a = np.asarray(correct_a, bool)
    b = np.asarray(correct_b, bool)
    n01 = int(np.sum(a & ~b))  # only A right
    n10 = int(np.sum(~a & b))  # only B right
    d = n01 + n10
    p = float(binomtest(n01, d, 0.5).pvalue) if d else 1.0
    return {
        "only_a_correct": n01,
        "only_b_correct": n10,
        "both_correct": int(np.sum(a & b)),
        "both_wrong": int(np.sum(~a & ~b)),
        "statistic": float(min(n01, n10)),
        "p_value": p,
        "method": "exact",
    }


def paired_accuracy_difference(
    correct_a: np.ndarray, correct_b: np.ndarray, level: float = 0.95
) -> dict[str, Any]:
    """Accuracy of A minus accuracy of B on the same cells, with an interval that agrees with :func:`mcnemar`.

    The difference is ``(n01 - n10) / n = (2 pi - 1) delta``: ``delta`` the share of cells on which exactly one
    model is right (``d / n``), ``pi`` the share of those that A gets right (``n01 / d``). Each gets its exact
    (Clopper-Pearson) interval and the difference's interval is the range of ``(2 pi - 1) delta`` over both, so it
    holds 0 exactly when ``pi``'s interval holds 1/2, i.e. when the exact McNemar p-value is at least 1 - ``level``.
    Exact enumeration gives it 95.4-100 % coverage for n 40 to 1,648 (mapping ``pi``'s interval through the observed
    ``d / n`` alone covered as little as 15 %, and the paired bootstrap of before wbc 0.31.0 excluded 0 at McNemar
    p = 0.125). Two models that agree on every cell get ``±`` the upper bound of ``delta``, not a zero-width 0.

    >>> r = paired_accuracy_difference(np.r_[np.ones(4), np.ones(36)], np.r_[np.zeros(4), np.ones(36)])
    >>> r["difference"], r["ci"][0] < 0 < r["ci"][1]
    (0.1, True)
    """
    a = np.asarray(correct_a, bool)
    b = np.asarray(correct_b, bool)
    n = len(a)
    if n == 0 or len(b) != n:
        raise ValueError(f"need the same cells for both models, got {n} and {len(b)}")
    n01 = int(np.sum(a & ~b))
    d = n01 + int(np.sum(~a & b))
    pi_lo, pi_hi = clopper_pearson(n01, d, level)  # (0, 1) when d is 0
    d_lo, d_hi = clopper_pearson(d, n, level)
    lo = min((2 * pi_lo - 1) * d_lo, (2 * pi_lo - 1) * d_hi)
    hi = max((2 * pi_hi - 1) * d_lo, (2 * pi_hi - 1) * d_hi)
    return {
        "difference": (2 * n01 - d) / n,
        "ci": [float(lo), float(hi)],
        "level": level,
        "method": "exact binomial intervals of the discordant cells' share and of A's share of them (McNemar's)",
    }


# --- cross-validation -----------------------------------------------------------------------------


def fold_summary(folds: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean and sample standard deviation across folds of every numeric metric.

    Nested dicts of numbers (e.g. ``recall`` per class) are flattened to ``recall.<class>``.

    >>> fold_summary([{"accuracy": 0.8}, {"accuracy": 0.9}])["accuracy"]["mean"]
    0.85
    """
    folds = [_flatten(f) for f in folds]
    keys: list[str] = []
    for f in folds:
        keys += [k for k, v in f.items() if k not in keys and _is_number(v)]
    out = {}
    for k in keys:
        vals = np.array([float(f[k]) for f in folds if _is_number(f.get(k))])
        out[k] = {
            "mean": round(float(vals.mean()), 12),
            "sd": float(vals.std(ddof=1)) if len(vals) > 1 else None,
            "n": len(vals),
            "values": vals.tolist(),
        }
    return out


def _flatten(d: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update({f"{k}.{kk}": vv for kk, vv in v.items() if _is_number(vv)})
        else:
            out[k] = v
    return out


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))
