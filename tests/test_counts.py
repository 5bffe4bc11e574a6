"""Clopper-Pearson intervals and the differential CSV."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binom

from wbc.counts import clopper_pearson, differential_rows
from wbc.formats import write_differential_csv
from wbc.types import Cell, Prediction, SmearResult


@pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 10), (10, 10), (5, 100), (47, 200)])
def test_interval_is_exact_at_its_ends(k: int, n: int) -> None:
    lo, hi = clopper_pearson(k, n)
    assert 0 <= lo <= k / n <= hi <= 1
    # by construction: P(X >= k | lo) = 2.5 % and P(X <= k | hi) = 2.5 % (one-sided at the bounds)
    if k > 0:
        assert binom.sf(k - 1, n, lo) == pytest.approx(0.025, abs=1e-6)
    if k < n:
        assert binom.cdf(k, n, hi) == pytest.approx(0.025, abs=1e-6)


def test_interval_without_cells_is_uninformative() -> None:
    assert clopper_pearson(0, 0) == (0.0, 1.0)


def _result(name: str, labels: list[str]) -> SmearResult:
    cells = []
    for i, lab in enumerate(labels):
        m = np.ones((4, 4), bool)
        cells.append(Cell(i + 1, (0, 0, 4, 4), m, m, prediction=Prediction(lab, 0.9, False, {lab: 0.9})))
    return SmearResult(name, 10, 10, cells)


def test_differential_rows_per_image_and_pooled(tmp_path: Path) -> None:
    classes = ["lymphocyte", "neutrophil"]
    rows = differential_rows({"neutrophil": 3, "lymphocyte": 1}, classes, "a")
    assert [r[2] for r in rows] == [1, 3] and rows[1][4] == 75.0
    out = tmp_path / "d.csv"
    results = [_result("a", ["neutrophil"] * 3 + ["lymphocyte"]), _result("b", [])]
    write_differential_csv(out, [{"image": r.image, "counts": r.counts(classes)} for r in results], classes)
    got = list(csv.DictReader(out.open()))
    pooled = [r for r in got if r["image"] == "ALL"]
    assert {r["class"]: int(r["count"]) for r in pooled} == {"lymphocyte": 1, "neutrophil": 3}
    empty = [r for r in got if r["image"] == "b"]
    assert all(r["total"] == "0" and r["ci95_high"] == "100.0" for r in empty)


def test_nrbcs_and_platelets_are_counted_per_100_wbcs_outside_the_total() -> None:
    """Hematology counts NRBCs per 100 WBCs: inside the total, one NRBC changed every WBC's share, and a platelet
    relabelled in review was counted as a leukocyte."""
    from wbc.counts import differential_rows, per_100_interval

    classes = ["erythroblast", "lymphocyte", "neutrophil", "platelet"]
    without = {r[1]: r for r in differential_rows({"lymphocyte": 30, "neutrophil": 70}, classes, "x")}
    with_nrbc = {r[1]: r for r in differential_rows({"lymphocyte": 30, "neutrophil": 70, "erythroblast": 5,
                                                     "platelet": 2}, classes, "x")}
    for c in ("lymphocyte", "neutrophil"):
        assert with_nrbc[c][3:] == without[c][3:]  # total 100 and the same shares and intervals
    assert with_nrbc["erythroblast"][2:5] == [5, 100, 5.0] and with_nrbc["platelet"][2:5] == [2, 100, 2.0]
    lo, hi = with_nrbc["erythroblast"][5:]
    assert 0 < lo < 5.0 < hi
    # the interval holds its 95 % over draws: NRBCs at 5 per 100 WBCs, 100 WBCs a count
    rng = np.random.default_rng(0)
    k = rng.binomial(105, 5 / 105, size=2000)
    bounds = np.array([per_100_interval(int(v), 105 - int(v)) for v in k])
    rate = 0.05
    covered = np.mean((bounds[:, 0] <= rate) & (rate <= bounds[:, 1]))
    assert covered >= 0.95
