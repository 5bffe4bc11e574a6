"""Differential counts with exact (Clopper-Pearson) 95 % confidence intervals, per image and pooled.

A 100-cell differential has wide intervals (a true 5 % monocyte count reads anywhere from 1.6 % to
11.3 %); printing them keeps users from over-reading small counts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from wbc.labels import PER_100_WBC
from wbc.types import SmearResult


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval for k successes in n trials (0, 1 when n is 0).

    >>> [round(v, 4) for v in clopper_pearson(5, 100)]
    [0.0164, 0.1128]
    """
    if n <= 0:
        return 0.0, 1.0
    # The beta quantiles directly, not scipy.stats.binomtest(k, n).proportion_ci(method="exact"): the same
    # interval (to 5e-13 over every k <= n <= 200) at 0.1 ms instead of 4 ms a call, since binomtest also
    # computes a p-value; a differential calls this per class per image (benchmarks/library_swaps.py).
    a = 1.0 - confidence
    from scipy.stats import beta  # imported here: scipy.stats costs ~0.5 s at CLI start-up

    lo = 0.0 if k <= 0 else float(beta.ppf(a / 2, k, n - k + 1))
    hi = 1.0 if k >= n else float(beta.ppf(1 - a / 2, k + 1, n - k))
    return lo, hi


#: ``differential.csv``'s columns: :func:`differential_rows`' and, last (since wbc 0.33.0, so a reader indexing columns
#: by position still finds the others), ``unit``: "percent" of the WBCs, or "per 100 WBC" for a class counted outside
#: them (:func:`wbc.formats.differential_unit`, the HTTP API's ``"unit"``). Without it an NRBC row read as percent.
DIFFERENTIAL_HEADER: tuple[str, ...] = (
    "image",
    "class",
    "count",
    "total",
    "percent",
    "ci95_low",
    "ci95_high",
    "unit",
)


def fixed(value: float, digits: int = 1) -> str:
    """``value`` with ``digits`` decimals, rounded half up (away from zero) from its shortest decimal form (``repr``):
    the one rounding rule of every output that shows a number, the web pages' too (``fixed`` in ``common.js``, the same
    steps). Before wbc 0.30.0 Python's ``f"{v:.1f}"`` rounded half to even and the pages' ``toFixed`` half up, so the
    same 5 of 16 cells read 31.2 % in the report and the PDF and 31.3 % on the screen that was signed off.

    >>> fixed(31.25), fixed(6.25), fixed(0.15), fixed(12.5, 0), fixed(2.675, 2), fixed(-0.25), fixed(0.04)
    ('31.3', '6.3', '0.2', '13', '2.68', '-0.3', '0.0')
    """
    v = float(value)
    if not math.isfinite(v):
        return str(v)
    q = Decimal(repr(abs(v))).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP)
    return ("-" if v < 0 and q else "") + f"{q:f}"


def half_up(value: float, digits: int) -> float:
    """``value`` rounded to ``digits`` decimals by :func:`fixed`'s rule, as a number: for the CSVs' and JSON's numbers,
    which Python's ``round`` rounded half to even on the binary value (1 of 160 cells read 0.62 % in differential.csv,
    0.63 % in every page, before wbc 0.33.0).

    >>> half_up(0.625, 2), round(0.625, 2), half_up(3.125, 2), half_up(1 / 3, 4)
    (0.63, 0.62, 3.13, 0.3333)
    """
    return float(fixed(value, digits))


#: What a page or a console shows for a rate per 100 WBCs when no WBC was counted (``None`` in the numbers).
NO_WBC_RATE = "n/a (no WBC counted)"


def wbc_total(counts: Mapping[str, int], classes: Sequence[str]) -> int:
    """The WBCs among ``counts``: a differential's total, without the classes counted per 100 WBCs.

    >>> wbc_total({"lymphocyte": 4, "erythroblast": 1}, ["erythroblast", "lymphocyte"])
    4
    """
    return sum(int(counts.get(c, 0)) for c in classes if c not in PER_100_WBC)


def per_100_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact interval for a count of ``k`` cells per ``n`` WBCs counted beside them (NRBCs per 100 WBCs), as a
    ratio k/n: the Clopper-Pearson interval of the share k/(k+n), turned into the ratio p/(1-p). With no WBC
    counted the ratio is unbounded: (0, inf), never (0, 1), which would read as at most 100 per 100 WBCs.

    >>> [round(100 * v, 2) for v in per_100_interval(5, 100)], per_100_interval(3, 0)
    ([1.59, 12.06], (0.0, inf))
    """
    if n <= 0:
        return 0.0, math.inf
    lo, hi = clopper_pearson(k, k + n, confidence)
    return lo / (1 - lo), hi / (1 - hi)


def differential_rows(counts: dict[str, int], classes: Sequence[str], image: str, digits: int = 2
                      ) -> list[list[Any]]:
    """One row per class: count, total, percent and the 95 % interval in percent, rounded half up to ``digits``
    decimals (:func:`half_up`; 2 in the CSVs; the HTTP API and the case store keep 4, so that a page showing one
    decimal rounds the exact value, not an already rounded one: 52.651 is 52.65 at two decimals, shown as 52.6).

    The total is the WBCs' (:func:`wbc_total`). Erythroblasts (NRBCs) and platelets (:data:`wbc.labels.PER_100_WBC`)
    are counted outside it, their percent read per 100 WBCs (:func:`per_100_interval`), as hematology reports them.
    With no WBC counted such a rate has no value: its percent and both bounds are ``None`` (empty CSV cells, JSON
    ``null``; shown as :data:`NO_WBC_RATE`), never 0.0 with an interval of 0-100 (before wbc 0.29.0). A WBC class
    with no WBC counted keeps 0.0 and the uninformative 0-100 % of :func:`clopper_pearson` here (the JSON);
    ``differential.csv`` leaves them empty, as report.html shows "-" (:func:`wbc.formats.write_differential_csv`).

    >>> counts = {"a": 1, "b": 7}
    >>> differential_rows(counts, ["a", "b"], "x")[0], differential_rows(counts, ["a", "b"], "x", 4)[0]
    (['x', 'a', 1, 8, 12.5, 0.32, 52.65], ['x', 'a', 1, 8, 12.5, 0.316, 52.651])
    >>> differential_rows({"lymphocyte": 1, "neutrophil": 3, "erythroblast": 2}, ["erythroblast", "lymphocyte",
    ...                   "neutrophil"], "x")[:2]
    [['x', 'erythroblast', 2, 4, 50.0, 4.52, 348.88], ['x', 'lymphocyte', 1, 4, 25.0, 0.63, 80.59]]
    >>> differential_rows({"erythroblast": 2}, ["erythroblast", "lymphocyte"], "x")
    [['x', 'erythroblast', 2, 0, None, None, None], ['x', 'lymphocyte', 0, 0, 0.0, 0.0, 100.0]]
    """
    n = wbc_total(counts, classes)
    rows: list[list[Any]] = []
    for c in classes:
        k = counts.get(c, 0)
        if c in PER_100_WBC and n <= 0:
            rows.append([image, c, k, n, None, None, None])
            continue
        lo, hi = per_100_interval(k, n) if c in PER_100_WBC else clopper_pearson(k, n)
        rows.append([image, c, k, n, half_up(100.0 * k / n, digits) if n else 0.0, half_up(100 * lo, digits),
                     half_up(100 * hi, digits)])
    return rows


def pooled_counts(results: Iterable[SmearResult], classes: Sequence[str]) -> dict[str, int]:
    out = {c: 0 for c in classes}
    for r in results:
        for c, k in r.counts(classes).items():
            out[c] = out.get(c, 0) + k
    return out
