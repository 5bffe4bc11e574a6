"""Evaluation metrics on small hand-made cases; expected values are worked out by hand in the comments."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, recall_score

from wbc.counts import clopper_pearson
from wbc.evaluate.metrics import (
    _confusions,
    _metrics_from_cms,
    bootstrap_cis,
    classification_metrics,
    fold_summary,
    mcnemar,
    paired_accuracy_difference,
    reliability_bins,
    resample_indices,
    selective_metrics,
    specificity,
    summary_metrics,
)
from wbc.model import softmax

CLASSES = ["a", "b", "c"]
# six cells; true 0 0 0 1 1 2, predicted 0 0 1 1 2 2; confusion matrix rows (true) [2 1 0] [0 1 1] [0 0 1]
Y_TRUE = np.array([0, 0, 0, 1, 1, 2])
CONF = np.array([0.91, 0.81, 0.61, 0.71, 0.51, 0.97])  # each in its own 1/15-wide ECE bin
Y_PRED = np.array([0, 0, 1, 1, 2, 2])


def _probs() -> np.ndarray:
    p = np.empty((6, 3))
    for i, (k, c) in enumerate(zip(Y_PRED, CONF, strict=True)):
        p[i] = (1 - c) / 2
        p[i, k] = c
    return p


@pytest.fixture(scope="module")
def m() -> dict:
    return classification_metrics(Y_TRUE, _probs(), CLASSES, review_threshold=0.7, n_boot=200)


def test_overall_scores_match_hand_computation(m: dict) -> None:
    assert m["n"] == 6
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    # per-class F1: a 2*1*(2/3)/(5/3) = 0.8, b 0.5, c 2*(1/2)*1/(3/2) = 2/3
    assert m["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert m["weighted_f1"] == pytest.approx((3 * 0.8 + 2 * 0.5 + 1 * 2 / 3) / 6)
    # kappa: p_o = 4/6, p_e = (3*2 + 2*2 + 1*2) / 36 = 1/3 -> (2/3 - 1/3) / (2/3) = 0.5
    assert m["cohen_kappa"] == pytest.approx(0.5)
    assert m["confusion_matrix"]["matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m["confusion_matrix"]["classes"] == CLASSES


def test_per_class_matches_hand_computation(m: dict) -> None:
    pc = m["per_class"]
    assert [pc[c]["recall"] for c in CLASSES] == pytest.approx([2 / 3, 1 / 2, 1.0])
    assert [pc[c]["precision"] for c in CLASSES] == pytest.approx([1.0, 1 / 2, 1 / 2])
    # specificity TN/(TN+FP): a 3/3, b 3/4, c 4/5
    assert [pc[c]["specificity"] for c in CLASSES] == pytest.approx([1.0, 0.75, 0.8])
    assert [pc[c]["support"] for c in CLASSES] == [3, 2, 1]
    assert [pc[c]["f1"] for c in CLASSES] == pytest.approx([0.8, 0.5, 2 / 3])


def test_roc_auc_matches_pair_counting(m: dict) -> None:
    # class a: positives .91 .81 .195 vs negatives .145 .245 .015 -> 8 of 9 pairs ranked right
    # class b: positives .71 .245 vs negatives .045 .095 .61 .015 -> 7 of 8; class c: 5 of 5
    auc = m["roc_auc"]
    assert [auc["per_class"][c] for c in CLASSES] == pytest.approx([8 / 9, 7 / 8, 1.0])
    assert auc["macro"] == pytest.approx((8 / 9 + 7 / 8 + 1) / 3)


def test_ece_and_reliability_bins() -> None:
    # every cell in its own bin, so ECE = mean |correct - confidence|
    correct = (Y_PRED == Y_TRUE).astype(float)
    expected = np.mean(np.abs(correct - CONF))
    assert expected == pytest.approx(1.72 / 6)
    m = classification_metrics(Y_TRUE, _probs(), CLASSES, n_boot=100)
    assert m["ece"]["calibrated"] == pytest.approx(expected)
    rb = reliability_bins(_probs(), Y_TRUE)
    assert sum(rb["count"]) == 6
    assert rb["count"][13] == 1 and rb["accuracy"][13] == 1.0 and rb["confidence"][13] == pytest.approx(0.91)
    assert rb["count"][9] == 1 and rb["accuracy"][9] == 0.0  # the 0.61 cell was wrong
    assert rb["confidence"][0] is None  # empty bin


def test_ece_before_and_after_temperature() -> None:
    # logits whose softmax at T=2 is better calibrated than at T=1 for mostly-wrong confident calls
    logits = np.array([[4.0, 0, 0], [4.0, 0, 0], [4.0, 0, 0], [0, 4.0, 0]])
    y = np.array([0, 1, 2, 1])
    conf1 = np.exp(4) / (np.exp(4) + 2)  # every cell in one bin; 2 of 4 right
    conf2 = np.exp(2) / (np.exp(2) + 2)
    stated = softmax(logits, 2.0)  # the temperature alone: what the model states without a class prior
    m = classification_metrics(y, stated, CLASSES, logits=logits, temperature=2.0, n_boot=100)
    assert m["ece"]["raw"] == pytest.approx(abs(conf1 - 0.5), rel=1e-5)
    assert m["ece"]["calibrated"] == pytest.approx(abs(conf2 - 0.5), rel=1e-5)
    assert m["ece"]["temperature_only"] == pytest.approx(m["ece"]["calibrated"])
    assert m["ece"]["temperature"] == 2.0 and m["ece"]["bins"] == 15


def test_calibrated_ece_is_that_of_the_stated_probabilities() -> None:
    """The probabilities a model states can differ from softmax(logits / T) (a lab class prior, the cytoplasm
    evidence): ece.calibrated, nll_calibrated and the reliability bins all describe the stated ones (wbc 0.27.0 took
    ece.calibrated from the logits, so the report titled the chart's bars with another probability's error)."""
    logits = np.array([[4.0, 0, 0], [4.0, 0, 0], [4.0, 0, 0], [0, 4.0, 0]])
    y = np.array([0, 1, 2, 1])
    stated = np.full((4, 3), 0.3) + np.eye(3)[[0, 0, 0, 1]] * 0.1  # confidence 0.4, 2 of 4 right
    m = classification_metrics(y, stated, CLASSES, logits=logits, temperature=2.0, n_boot=100)
    assert m["ece"]["calibrated"] == pytest.approx(0.1)
    assert m["ece"]["nll_calibrated"] == pytest.approx(-np.mean(np.log(stated[np.arange(4), y])))
    conf2 = np.exp(2) / (np.exp(2) + 2)
    assert m["ece"]["temperature_only"] == pytest.approx(abs(conf2 - 0.5), rel=1e-5)
    rb = m["reliability"]
    n = sum(rb["count"])
    from_bins = sum(c / n * abs(a - f) for c, a, f in zip(rb["count"], rb["accuracy"], rb["confidence"], strict=True)
                    if c)
    assert m["ece"]["calibrated"] == pytest.approx(from_bins)


def test_selective_prediction(m: dict) -> None:
    # most confident first: .97 .91 .81 .71 right, .61 .51 wrong
    sel = m["selective"]
    acc = sel["accuracy_at_coverage"]
    assert acc["0.90"] == pytest.approx(4 / 5) and sel["cells_at_coverage"] == {"0.90": 5}  # round(5.4) = 5 cells
    # 95 % and 99 % of 6 cells keep all 6: the overall accuracy, not a selective one (wbc 0.30.0 reported them)
    assert set(acc) == {"0.90"}
    assert sel["review_threshold"] == 0.7
    assert sel["accepted_fraction"] == pytest.approx(4 / 6)
    assert sel["accepted_accuracy"] == 1.0
    assert sel["flagged"] == 2
    none = selective_metrics(_probs(), Y_TRUE, 0.99)
    assert none["accepted_accuracy"] is None and none["flagged"] == 6


def test_specificity_doctest_case() -> None:
    assert specificity(np.array([[3, 1], [2, 4]])).tolist() == pytest.approx([4 / 6, 3 / 4])


def test_class_without_cells_is_undefined_not_zero() -> None:
    y = np.array([0, 0, 1, 1])
    p = np.array([[0.8, 0.1, 0.1], [0.1, 0.1, 0.8], [0.1, 0.8, 0.1], [0.2, 0.7, 0.1]])
    m = classification_metrics(y, p, CLASSES, n_boot=100)
    assert m["per_class"]["c"]["recall"] is None
    assert m["per_class"]["c"]["precision"] == 0.0  # one call of c, wrong
    assert m["roc_auc"]["per_class"]["c"] is None
    assert m["ci"]["recall"]["c"] is None
    # macro over the classes with cells: F1 a = 2*1*.5/1.5 = 2/3, F1 b = 1
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1) / 2)
    assert m["balanced_accuracy"] == pytest.approx(0.75)


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="shape"):
        classification_metrics(Y_TRUE, _probs()[:, :2], CLASSES)
    with pytest.raises(ValueError, match="no labelled"):
        classification_metrics(np.array([], int), np.zeros((0, 3)), CLASSES)


def test_vectorised_bootstrap_metrics_agree_with_sklearn() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 300)
    pred = np.where(rng.random(300) < 0.7, y, rng.integers(0, 4, 300))
    idx = rng.integers(0, 300, (5, 300))
    got = _metrics_from_cms(_confusions(y, pred, 4, idx), [0, 1, 2, 3])
    for b in range(5):
        ys, ps = y[idx[b]], pred[idx[b]]
        assert got["accuracy"][b] == pytest.approx(accuracy_score(ys, ps))
        assert got["macro_f1"][b] == pytest.approx(f1_score(ys, ps, labels=[0, 1, 2, 3], average="macro"))
        assert got["recall"][b] == pytest.approx(recall_score(ys, ps, labels=[0, 1, 2, 3], average=None))


def test_bootstrap_intervals_behave() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 400)
    pred = np.where(rng.random(400) < 0.8, y, (y + 1) % 3)
    ci = bootstrap_cis(y, pred, CLASSES, n_boot=500, seed=0)
    acc = float(np.mean(y == pred))
    assert ci["accuracy"][0] < acc < ci["accuracy"][1]
    assert 0.03 < ci["accuracy"][1] - ci["accuracy"][0] < 0.12  # ~ 4 * sqrt(.8 * .2 / 400) = 0.08
    assert ci == bootstrap_cis(y, pred, CLASSES, n_boot=500, seed=0)  # deterministic for a seed
    small = bootstrap_cis(y[:50], pred[:50], CLASSES, n_boot=500, seed=0)
    assert small["accuracy"][1] - small["accuracy"][0] > ci["accuracy"][1] - ci["accuracy"][0]
    # every resample of a perfect model is perfect: no interval, rather than 100.0-100.0 % (before wbc 0.31.0)
    perfect = bootstrap_cis(y, y, CLASSES, n_boot=200)
    assert perfect["accuracy"] is None and perfect["recall"]["a"] is None and perfect["macro_f1"] is None


def test_proportions_get_exact_intervals_never_of_zero_width() -> None:
    """The percentile bootstrap printed 100.0-100.0 % for 40 of 40 cells and for a class of 5 of 5: a lab read it as
    certain. Accuracy, recall and precision are k of n; their exact intervals are 91.2-100 % and 47.8-100 %."""
    right5 = classification_metrics(np.zeros(5, np.int64), np.eye(2)[np.zeros(5, int)], ["a", "b"], n_boot=100)
    assert right5["ci"]["recall"]["a"][0] < 0.6 and right5["ci"]["recall"]["a"][0] == pytest.approx(0.4782, abs=1e-4)
    y = np.repeat(np.arange(8), 5)
    m = classification_metrics(y, np.eye(8)[y], list("abcdefgh"), n_boot=100)
    assert m["ci"]["accuracy"] == pytest.approx([0.9119, 1.0], abs=1e-4)
    assert all(m["ci"]["recall"][c] == pytest.approx([0.4782, 1.0], abs=1e-4) for c in "abcdefgh")
    assert m["ci"]["macro_f1"] is None and "bootstrap" in m["ci"]["method"]["macro_f1"]
    assert "Clopper-Pearson" in m["ci"]["method"]["accuracy"]
    # precision: k right of the class's calls; a class never called has no precision and no interval
    from wbc.evaluate.metrics import confidence_intervals

    ci = confidence_intervals(np.array([0, 0, 1, 1]), np.array([0, 0, 0, 1]), ["a", "b", "c"])
    assert ci["precision"]["a"] == pytest.approx(list(clopper_pearson(2, 3))) and ci["precision"]["c"] is None
    assert ci["recall"]["b"] == pytest.approx(list(clopper_pearson(1, 2))) and ci["recall"]["c"] is None


def test_recall_interval_covers_the_truth_in_small_classes() -> None:
    """Simulated coverage of the nominal 95 % recall interval, 10 cells at a true recall of 0.95: 35 % with the
    percentile bootstrap (zero-width in 64 % of draws), at least 95 % with the exact interval."""
    from wbc.evaluate.metrics import confidence_intervals

    rng = np.random.default_rng(123)
    hits = 0
    for r in range(200):
        right = rng.random(10) < 0.95
        lo, hi = confidence_intervals(np.zeros(10, np.int64), np.where(right, 0, 1), ["a", "b"], n_boot=100,
                                      seed=r)["recall"]["a"]
        hits += lo <= 0.95 <= hi
    assert hits / 200 >= 0.93


def test_bootstrap_macro_f1_leaves_out_a_class_the_resample_lacks() -> None:
    """The point estimate averages over the classes with cells; the bootstrap scored a class a resample happened to
    lack as F1 = 0, so a perfect model with one basophil got the interval [0.8, 1.0]."""
    y = np.array([0] * 40 + [1] * 30 + [2] * 15 + [3] * 14 + [4] * 1)
    one_wrong = np.r_[1, y[1:]]  # one cell of a called b: macro-F1 0.994; scoring a lacking e as 0 gave ~0.79
    assert bootstrap_cis(y, one_wrong, list("abcde"), n_boot=500, seed=0)["macro_f1"][0] > 0.95
    # each resample scored as scikit-learn scores the point estimate: macro over the classes the resample has
    rng = np.random.default_rng(4)
    pred = np.where(rng.random(len(y)) < 0.8, y, (y + 1) % 5)
    idx = np.array([rng.integers(0, len(y), len(y)) for _ in range(40)])
    assert any(4 not in y[i] for i in idx)
    got = _metrics_from_cms(_confusions(y, pred, 5, idx), [0, 1, 2, 3, 4])["macro_f1"]
    want = [f1_score(y[i], pred[i], labels=sorted(set(y[i])), average="macro", zero_division=0) for i in idx]
    assert got == pytest.approx(want)


def test_one_resampler_reproduces_the_loops_it_replaced() -> None:
    # bootstrap_cis drew these chunks inline before
    rng = np.random.default_rng(3)
    old = [rng.integers(0, 37, (min(250, 600 - s), 37)) for s in range(0, 600, 250)]
    new = list(resample_indices(37, 600, seed=3))
    assert len(new) == len(old) and all(np.array_equal(a, b) for a, b in zip(old, new, strict=True))


def test_training_summary_is_the_evaluation_summary() -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 200)  # class "d" (index 3) has no cells
    pred = np.where(rng.random(200) < 0.75, y, rng.integers(0, 4, 200))
    classes = [*CLASSES, "d"]
    s = summary_metrics(y, pred, classes)
    full = classification_metrics(y, np.eye(4)[pred] * 0.9 + 0.025, classes, n_boot=50)
    assert s["accuracy"] == full["accuracy"] and s["macro_f1"] == full["macro_f1"]  # macro over present classes
    assert s["macro_f1"] == pytest.approx(f1_score(y, pred, labels=[0, 1, 2], average="macro"))
    assert s["recall"] == {c: full["per_class"][c]["recall"] for c in classes} and s["recall"]["d"] is None
    # with every class present it is what training's own summary computed (macro over all classes)
    y4 = np.r_[y, 3, 3]
    p4 = np.r_[pred, 3, 0]
    s4 = summary_metrics(y4, p4, classes, n_boot=300, seed=1)
    assert s4["macro_f1"] == pytest.approx(f1_score(y4, p4, labels=[0, 1, 2, 3], average="macro"))
    assert list(s4["recall"].values()) == pytest.approx(list(recall_score(y4, p4, labels=[0, 1, 2, 3], average=None)))
    from wbc.evaluate.metrics import confidence_intervals

    ci = confidence_intervals(y4, p4, classes, n_boot=300, seed=1)
    got = (s4["accuracy_ci95"], s4["macro_f1_ci95"], s4["recall_ci95"])
    assert got == (ci["accuracy"], ci["macro_f1"], ci["recall"])
    assert s4["accuracy_ci95"][0] < s4["accuracy"] < s4["accuracy_ci95"][1]


def test_selective_counts_every_review_flag_when_given() -> None:
    """The threshold flags cells 2 and 4 (below 0.7); wbc classify also flagged cell 0 (say, colours unlike the
    training images): 3 flagged in all, and the calls signed off without a look are cells 1, 3 and 5."""
    sel = selective_metrics(_probs(), Y_TRUE, 0.7, review=np.array([1, 0, 1, 0, 1, 0], bool))
    assert (sel["flagged"], sel["flagged_any"], sel["flagged_other"]) == (2, 3, 1)
    assert sel["accepted_any_fraction"] == pytest.approx(0.5)
    assert sel["accepted_any_accuracy"] == sel["accepted_accuracy"] == 1.0 and sel["accepted_fraction"] == 4 / 6
    assert "flagged_any" not in selective_metrics(_probs(), Y_TRUE, 0.7)


def test_a_coverage_that_keeps_every_cell_is_left_out() -> None:
    """On 42 cells "the 99 % most confident" kept all 42 (round(41.58)), and the report said "if the least confident
    1% of cells went to a human" beside the overall accuracy; 95 % kept 40 of 42."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 42)
    p = softmax(rng.normal(0, 1, (42, 3)), 1.0)
    sel = selective_metrics(p, y, 0.5)
    assert set(sel["accuracy_at_coverage"]) == {"0.90", "0.95"} and sel["cells_at_coverage"] == {"0.90": 38, "0.95": 40}
    assert set(selective_metrics(np.tile(p, (3, 1)), np.tile(y, 3), 0.5)["accuracy_at_coverage"]) == {
        "0.90", "0.95", "0.99"}  # 126 cells: 99 % keeps 125


def test_mcnemar_is_exact() -> None:
    r = mcnemar(np.array([1, 1, 0, 1], bool), np.array([1, 0, 0, 0], bool))
    assert (r["only_a_correct"], r["only_b_correct"], r["both_correct"], r["both_wrong"]) == (2, 0, 1, 1)
    assert r["method"] == "exact" and r["p_value"] == pytest.approx(0.5)  # 2 * 0.5**2
    # 25 or more discordant cells are tested exactly too (chi-squared with correction before wbc 0.31.0)
    a = np.r_[np.ones(30, bool), np.zeros(10, bool), np.ones(50, bool)]
    b = np.r_[np.zeros(30, bool), np.ones(10, bool), np.ones(50, bool)]
    r = mcnemar(a, b)
    assert r["method"] == "exact" and r["statistic"] == 10
    assert r["p_value"] == pytest.approx(2 * sum(math.comb(40, k) for k in range(11)) / 2**40)
    assert mcnemar(a, a)["p_value"] == 1.0


def test_paired_accuracy_difference() -> None:
    a = np.array([1, 1, 1, 0] * 25, bool)
    b = np.array([1, 0, 0, 0] * 25, bool)
    d = paired_accuracy_difference(a, b)
    assert d["difference"] == pytest.approx(0.5)
    assert d["ci"][0] < 0.5 < d["ci"][1] and d["ci"][0] > 0.3


def test_paired_interval_agrees_with_mcnemar() -> None:
    """A right on 4 of 40 cells that B misses and never the reverse: McNemar p = 0.125, yet the paired bootstrap
    interval was +2.5 to +20.0 points, and the comparison page said both "95% interval +2.5 to +20.0" and "could
    well be chance". The interval now holds 0 exactly when p >= 0.05, for every split of up to 60 discordant cells."""
    a = np.ones(40, bool)
    b = np.r_[np.zeros(4, bool), np.ones(36, bool)]
    assert mcnemar(a, b)["p_value"] == pytest.approx(0.125)
    d = paired_accuracy_difference(a, b)
    assert d["difference"] == pytest.approx(0.1) and d["ci"][0] < 0 < d["ci"][1]
    for n_disc in range(61):
        for k in range(n_disc + 1):
            a = np.r_[np.ones(k, bool), np.zeros(n_disc - k, bool), np.ones(20, bool)]
            b = np.r_[np.zeros(k, bool), np.ones(n_disc - k, bool), np.ones(20, bool)]
            lo, hi = paired_accuracy_difference(a, b)["ci"]
            assert (mcnemar(a, b)["p_value"] < 0.05) == (not lo <= 0 <= hi), (n_disc, k)
    # two models that agree on every cell are not certainly equal: +-(upper bound of the discordant share)
    same = paired_accuracy_difference(np.ones(40, bool), np.ones(40, bool))["ci"]
    assert same[0] == pytest.approx(-clopper_pearson(0, 40)[1]) and same[1] == pytest.approx(clopper_pearson(0, 40)[1])


def test_paired_interval_covers_the_true_difference() -> None:
    """Exact coverage, by enumeration, where B is wrong on every cell on which the two disagree (5 % of 40 cells):
    mapping the interval of A's share of the disagreements through the observed share alone covered 60 %."""
    from scipy.stats import binom

    n, delta = 40, 0.05
    cover = 0.0
    for d in range(n + 1):
        a = np.r_[np.ones(d, bool), np.ones(n - d, bool)]
        b = np.r_[np.zeros(d, bool), np.ones(n - d, bool)]
        lo, hi = paired_accuracy_difference(a, b)["ci"]
        cover += binom.pmf(d, n, delta) * (lo <= delta <= hi)
    assert cover >= 0.95


def test_fold_summary_mean_and_sd() -> None:
    s = fold_summary(
        [
            {"accuracy": 0.8, "recall": {"a": 0.5}, "name": "x"},
            {"accuracy": 0.9, "recall": {"a": 0.7}, "name": "y"},
        ]
    )
    assert s["accuracy"]["mean"] == pytest.approx(0.85)
    assert s["accuracy"]["sd"] == pytest.approx(math.sqrt(2 * 0.05**2))  # sample sd, ddof 1
    assert s["recall.a"]["mean"] == pytest.approx(0.6) and s["recall.a"]["n"] == 2
    assert "name" not in s
    assert fold_summary([{"accuracy": 0.8}])["accuracy"]["sd"] is None


def test_no_bootstrap_resamples_means_no_macro_f1_interval() -> None:
    """n_boot=0 from the Python API (summary_metrics' way to skip the bootstrap) ended classification_metrics in a
    bare numpy "need at least one array to concatenate"; it now gives macro-F1 no interval and keeps the exact ones."""
    from wbc.evaluate.metrics import confidence_intervals

    m = classification_metrics(Y_TRUE, _probs(), CLASSES, n_boot=0)
    assert m["ci"]["macro_f1"] is None and m["ci"]["n_boot"] == 0
    assert m["ci"]["accuracy"] == pytest.approx(list(clopper_pearson(4, 6)))
    assert m["ci"]["recall"]["a"] == pytest.approx(list(clopper_pearson(2, 3)))
    assert confidence_intervals(Y_TRUE, Y_PRED, CLASSES, n_boot=0)["macro_f1"] is None
    boot = bootstrap_cis(Y_TRUE, Y_PRED, CLASSES, n_boot=0)
    assert boot["accuracy"] is None and boot["recall"] == {"a": None, "b": None, "c": None}
    from wbc.evaluate.report import NOT_BOOTSTRAPPED, key_numbers_rows  # the report says why there is none

    [row] = [r for r in key_numbers_rows(m) if r["measure"] == "Macro F1"]
    assert NOT_BOOTSTRAPPED in row.values()
