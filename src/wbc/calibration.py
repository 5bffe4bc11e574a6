"""Confidence calibration (temperature scaling) and the review threshold, fitted on validation data.

Pure numpy/scipy so that both training (at export) and evaluation (to report ECE before and after)
use the same code; :func:`under_review` is the one rule of which cells a threshold flags (`wbc classify`,
`wbc evaluate`), so scipy is imported only where a fit needs it.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np

from wbc.model import softmax

#: The accuracy the cells a model does not flag for review must reach on validation data. 0.995 is the
#: training default (``TrainConfig.review_target_accuracy``) and what the shipped model stores, so a model
#: that stores no target (an old export) is treated like the shipped one rather than by a looser rule
#: (``wbc adapt`` used to fall back to 0.95 there: ten times the error rate allowed among accepted cells).
DEFAULT_REVIEW_TARGET_ACCURACY = 0.995


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    p = softmax(logits, temperature)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(labels)), labels], 1e-12, None))))


#: The range :func:`fit_temperature` searches. Held-out cells all right have no lowest NLL inside it: the fit runs to
#: the lower bound (:func:`calibrate`'s ``base_temperature``).
TEMPERATURE_BOUNDS = (0.05, 20.0)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T > 0 that minimises the negative log-likelihood of ``softmax(logits / T)``.

    >>> rng = np.random.default_rng(0); y = rng.integers(0, 3, 500)
    >>> z = np.eye(3)[y] * 8 + rng.normal(0, 3, (500, 3))  # over-confident logits
    >>> fit_temperature(z, y) > 1
    True
    """
    if len(labels) == 0:
        return 1.0
    from scipy.optimize import minimize_scalar  # here: `wbc classify` reads this module for its review rule only

    res = minimize_scalar(lambda log_t: nll(logits, labels, float(np.exp(log_t))),
                          bounds=(np.log(TEMPERATURE_BOUNDS[0]), np.log(TEMPERATURE_BOUNDS[1])),
                          method="bounded")
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

    Cells tied at a threshold are accepted together, so a cut is only taken after the last of them.

    >>> review_threshold(np.array([0.99, 0.9, 0.6, 0.5]), np.array([1, 1, 0, 1]), 1.0)
    0.9
    >>> review_threshold(np.array([0.95, 0.9, 0.9, 0.9]), np.array([1, 1, 0, 0]), 0.99)  # not 0.9: 2 of 4 right
    0.95
    """
    order = np.argsort(-confidence, kind="stable")
    conf = confidence[order]
    cum_acc = np.cumsum(correct[order]) / np.arange(1, len(conf) + 1)
    ok = np.nonzero((cum_acc >= target_accuracy) & _block_ends(conf))[0]
    if len(ok) == 0:
        return 1.0
    k = ok[-1]  # accept the k+1 most confident cells
    if k == len(conf) - 1:
        return 0.0
    return float(conf[k])


#: How sure :func:`shown_review_threshold` must be that the accepted cells reach the target: the one-sided
#: lower confidence bound it reads is at this level.
EVIDENCE_LEVEL = 0.95


def accuracy_lower_bound(right: int, n: int, level: float = EVIDENCE_LEVEL) -> float:
    """The one-sided Clopper-Pearson lower bound of an accuracy measured as ``right`` of ``n`` (0 when n is 0).

    >>> round(accuracy_lower_bound(25, 25), 3)  # 25 of 25 right shows no more than 88.7 %
    0.887
    >>> round(accuracy_lower_bound(598, 598), 4)  # it takes about 600 without an error to show 99.5 %
    0.995
    """
    from scipy.stats import beta

    if n <= 0 or right <= 0:
        return 0.0
    return float(beta.ppf(1 - level, right, n - right + 1))


def cells_to_show(target_accuracy: float, level: float = EVIDENCE_LEVEL) -> int:
    """How many held-out cells, all right, it takes to show ``target_accuracy`` (:func:`accuracy_lower_bound`).

    >>> cells_to_show(0.995), cells_to_show(0.95)
    (598, 59)
    """
    return int(np.ceil(np.log(1 - level) / np.log(target_accuracy)))


def shown_review_threshold(confidence: np.ndarray, correct: np.ndarray, target_accuracy: float,
                           level: float = EVIDENCE_LEVEL) -> float:
    """The lowest confidence threshold at which the accepted cells *show* ``target_accuracy``: the lower bound
    of their accuracy (:func:`accuracy_lower_bound`) reaches it. 1.0 (every cell flagged) when no threshold does.

    :func:`review_threshold` asks only that the accepted cells' measured accuracy reach the target, which a few
    cells do by chance: 20 held-out cells all right give a threshold of 0, though they cannot tell 99.5 % from
    90 %. `wbc adapt` fits on a lab's few labelled cells, so it uses this rule.

    >>> conf = np.linspace(1.0, 0.5, 1000); correct = np.arange(1000) < 900  # the 900 most confident right
    >>> round(shown_review_threshold(conf, correct, 0.99), 2)  # about the 900th: a few errors past it still show 99 %
    0.55
    >>> shown_review_threshold(conf[:20], correct[:20], 0.995)  # 20 right cannot show 99.5 %
    1.0
    """
    conf, lower = _accepted_lower_bounds(confidence, correct, level)
    ok = np.nonzero((lower >= target_accuracy) & _block_ends(conf))[0]
    if len(ok) == 0:
        return 1.0
    k = ok[-1]  # accept the k+1 most confident cells
    return 0.0 if k == len(conf) - 1 else float(conf[k])


def _block_ends(conf: np.ndarray) -> np.ndarray:
    """For confidences sorted high to low: where a cut may fall, after the last of the cells tied at a value (a
    threshold accepts every cell at or above it)."""
    return np.append(conf[:-1] > conf[1:], True) if len(conf) else np.zeros(0, bool)


def _accepted_lower_bounds(confidence: np.ndarray, correct: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Confidences sorted high to low, and for each k the lower bound of the k+1 most confident cells' accuracy
    (:func:`accuracy_lower_bound`; nan while none of them is right)."""
    from scipy.stats import beta

    order = np.argsort(-np.asarray(confidence), kind="stable")
    right = np.cumsum(np.asarray(correct)[order])
    n = np.arange(1, len(right) + 1)
    with np.errstate(invalid="ignore"):
        return np.asarray(confidence)[order], beta.ppf(1 - level, right, n - right + 1)


def shown_accuracy(confidence: np.ndarray, correct: np.ndarray, level: float = EVIDENCE_LEVEL) -> float:
    """The highest review target ``confidence`` and ``correct`` can show at any threshold (the best lower bound of
    :func:`accuracy_lower_bound` over the accepted sets): what a lab's labelled cells can vouch for.

    >>> round(shown_accuracy(np.ones(25), np.ones(25, bool)), 3)
    0.887
    """
    _, lower = _accepted_lower_bounds(confidence, correct, level)
    return float(np.nanmax(lower)) if np.any(lower > 0) else 0.0


def under_review(confidence: np.ndarray | float, threshold: float) -> np.ndarray:
    """Which cells a review threshold flags: those below it, and every cell at 1.0 (no confidence was shown to be
    enough, :func:`shown_review_threshold`; a cell can be named with a confidence of exactly 1).

    >>> under_review(np.array([0.5, 0.99, 1.0]), 0.9).tolist(), under_review(1.0, 1.0).tolist()
    ([True, False, False], True)
    """
    return np.asarray(confidence) < threshold if threshold < 1.0 else np.ones(np.shape(confidence), bool)


def coverage_accuracy(confidence: np.ndarray, correct: np.ndarray, coverage: float) -> float:
    """Accuracy on the ``coverage`` fraction of cells with the highest confidence."""
    n = max(1, round(coverage * len(confidence)))
    order = np.argsort(-confidence, kind="stable")[:n]
    return float(np.mean(correct[order]))


def resolve_review_target(explicit: float | None, stored: float | None = None) -> float:
    """The review target to use: ``explicit`` if given, else the model's ``stored`` one, else the default.

    >>> resolve_review_target(None, 0.0), resolve_review_target(None, 0.99), resolve_review_target(0.9, 0.99)
    (0.995, 0.99, 0.9)
    """
    if explicit is not None:
        return float(explicit)
    return float(stored) if stored else DEFAULT_REVIEW_TARGET_ACCURACY


class KeptTemperature(NamedTuple):
    """The temperature :func:`calibrate` keeps instead of the fit when every held-out cell is right, and the words
    for it (``wbc.adapt.kept_temperature``): whose it is, and why it is not the given model's own, if it is not."""

    value: float
    whose: str = "the base model's"
    why: str = ""


@dataclass(frozen=True)
class Calibration:
    """What :func:`calibrate` fitted: the temperature and the confidence below which a cell goes to review."""

    temperature: float
    review_threshold: float
    review_target_accuracy: float
    n: int  # cells it was fitted on
    #: with ``evidence``: the highest target the cells show (:func:`shown_accuracy`); None without
    shown_accuracy: float | None = None
    #: the temperature the cells' NLL fit gave, when ``temperature`` is not it (``base_temperature`` kept)
    fitted_temperature: float | None = None
    #: why ``temperature`` is not the fit (one line), None when it is
    temperature_note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def calibrate(logits: np.ndarray, labels: np.ndarray, review_target_accuracy: float | None = None,
              evidence: bool = False, base_temperature: float | KeptTemperature | None = None) -> Calibration:
    """The one calibration path (training, ensembles, ``wbc quantize``, ``wbc adapt``): fit the temperature
    on held-out ``logits`` (N, C; log-probabilities work too) with true class indices ``labels``, then the
    lowest review threshold at which the accepted cells reach ``review_target_accuracy`` (default
    :data:`DEFAULT_REVIEW_TARGET_ACCURACY`) under those calibrated probabilities.

    ``evidence``: the lowest threshold at which they *show* it (:func:`shown_review_threshold`; 1.0, every cell
    flagged, when none does), as `wbc adapt` fits on a lab's 25-100 labelled cells. A model's 1,648 validation
    cells show the point estimate's threshold well enough (the shipped model's accepted test cells: 99.7 %).

    ``base_temperature`` (`wbc adapt`: the model adapted from): used instead of the fit when every cell is right.
    Their NLL then falls all the way to the temperature's lower bound, so the fit says nothing but made every
    cell of the adapted model read ~1.000, wrong calls included (before wbc 0.37.0); ``fitted_temperature`` and
    ``temperature_note`` say so. With an error among them the fit stands (docs/generalisation.md: measured). A
    :class:`KeptTemperature` says whose the kept one is, where it is not the given model's own.

    >>> rng = np.random.default_rng(0); y = rng.integers(0, 3, 300)
    >>> c = calibrate(np.eye(3)[y] * 4 + rng.normal(0, 1, (300, 3)), y)
    >>> c.n, c.review_target_accuracy, 0 < c.review_threshold < 1, c.temperature > 0
    (300, 0.995, True, True)
    """
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    target = resolve_review_target(review_target_accuracy)
    temperature = fit_temperature(logits, labels)
    fitted, note = None, None
    if base_temperature is not None and len(labels) and np.array_equal(np.argmax(logits, 1), labels):
        kept = base_temperature if isinstance(base_temperature, KeptTemperature) else KeptTemperature(
            float(base_temperature))
        fitted, temperature = temperature, float(kept.value)
        note = unfitted_temperature_note(fitted, kept, len(labels))
    probs = softmax(logits, temperature)
    conf, right = probs.max(1), probs.argmax(1) == labels
    if not evidence:
        return Calibration(float(temperature), review_threshold(conf, right, target), target, len(labels),
                           fitted_temperature=fitted, temperature_note=note)
    return Calibration(float(temperature), shown_review_threshold(conf, right, target), target, len(labels),
                       shown_accuracy(conf, right), fitted, note)


def unfitted_temperature_note(fitted: float, kept: float | KeptTemperature, n: int) -> str:
    """Why the temperature fitted on ``n`` held-out cells, all right, was not used: ``kept`` (the base model's, or
    whose a :class:`KeptTemperature` says) instead. Where the one kept is no higher than the fit, nothing claims it
    avoided the bound (before, the note said so of a 0.05 kept in place of a fit of 0.08).

    >>> unfitted_temperature_note(0.05, 0.54, 30)[:66]
    "temperature kept at the base model's 0.54: the 30 held-out cells a"
    >>> unfitted_temperature_note(0.08, 0.06, 30)[-67:]
    'only runs toward its 0.05 bound; the one kept is no less confident)'
    """
    k = kept if isinstance(kept, KeptTemperature) else KeptTemperature(float(kept))
    bound = f"the fit, {fitted:.2f}, only runs toward its {TEMPERATURE_BOUNDS[0]:g} bound"
    fit = f"{bound}, every cell near 1.000" if fitted < k.value else f"{bound}; the one kept is no less confident"
    return (f"temperature kept at {k.whose} {k.value:.2f}: the {n} held-out cells are all right, which fits no "
            f"temperature ({fit})" + (f"; {k.why}" if k.why else ""))


def estimate_class_prior(
    probs: np.ndarray, max_iter: int = 1000, tol: float = 1e-7, pseudo_count: float = 1.0,
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, int]:
    """(class frequencies, iterations) of unlabelled cells, estimated by expectation-maximisation from
    probabilities calibrated under a uniform training prior (Saerens, Latinne & Decaestecker 2002).

    Each step re-weights every cell's probabilities to the current frequencies (Bayes' rule) and takes their
    mean as the next frequencies; the fixed point is the maximum-likelihood class mix. It needs no labels and
    leaves a balanced lab's mix (nearly) uniform. Calibration matters: EM trusts the probabilities, which is
    why the temperature fitted at export is applied first (Alexandari et al. 2020). ``pseudo_count`` cells of
    every class are added to each step's count (a Dirichlet prior: the maximum a posteriori mix), so a class
    absent from a small folder is made rarer, never impossible: a basophil must still be callable later.
    ``weights`` (N,): how far each cell counts (default 1 each), e.g. the share of its probability inside a label set
    the frequencies are over, so an image the model puts outside the set (a platelet, for five WBC types) does not
    count as a whole cell of it.

    >>> rng = np.random.default_rng(0); y = rng.choice(3, 3000, p=[0.7, 0.2, 0.1])
    >>> x = rng.normal(2.0 * y, 1.0)  # one feature, class means 0, 2, 4, unit variance
    >>> lik = np.exp(-0.5 * (x[:, None] - [0.0, 2.0, 4.0]) ** 2)
    >>> prior, _ = estimate_class_prior(lik / lik.sum(1, keepdims=True))  # calibrated for equal frequencies
    >>> np.round(prior, 1).tolist()
    [0.7, 0.2, 0.1]
    >>> few, _ = estimate_class_prior(np.array([[0.9, 0.05, 0.05]] * 10))  # 10 cells, none of class 2
    >>> bool(few[2] > 0.05)  # rare after 10 cells, not ruled out
    True
    >>> mixed = np.array([[0.9, 0.05, 0.05]] * 10 + [[0.05, 0.05, 0.9]] * 10)
    >>> w = np.r_[np.ones(10), np.full(10, 1e-3)]  # the last ten barely count (images outside the set)
    >>> [round(float(estimate_class_prior(mixed, weights=v)[0][2]), 2) for v in (None, w)]
    [0.48, 0.08]
    """
    p = np.asarray(probs, np.float64)
    k = p.shape[1]
    w = np.ones(len(p)) if weights is None else np.asarray(weights, np.float64)
    prior = np.full(k, 1.0 / k)
    for it in range(1, max_iter + 1):
        q = p * prior[None, :]
        q /= np.maximum(q.sum(1, keepdims=True), 1e-300)
        new = ((q * w[:, None]).sum(0) + pseudo_count) / (w.sum() + k * pseudo_count)
        done = float(np.abs(new - prior).max()) < tol
        prior = new
        if done:
            return prior, it
    return prior, max_iter


def val_summary(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """The validation summary a model's ``metrics`` hold (n, accuracy, macro-F1 over the classes present, per-class
    recall, None for a class without cells): one place for `wbc train` (:func:`wbc.evaluate.metrics.summary_metrics`,
    which adds intervals) and `wbc quantize`, which sit in sibling layers above this module.

    >>> val_summary(np.array([0, 0, 1]), np.array([0, 1, 1]), ["a", "b", "c"])["recall"]
    {'a': 0.5, 'b': 1.0, 'c': None}
    """
    from sklearn.metrics import f1_score

    present = [k for k in range(len(classes)) if np.any(y_true == k)]
    return {
        "n": len(y_true),
        "accuracy": float(np.mean(y_true == y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        "recall": {c: float(np.mean(y_pred[y_true == k] == k)) if k in present else None
                   for k, c in enumerate(classes)},
    }
