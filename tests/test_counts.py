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
    assert all(r["total"] == "0" and r["percent"] == r["ci95_high"] == "" for r in empty)  # as report.html: "-"


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


def test_nrbcs_without_wbcs_have_no_rate(tmp_path: Path) -> None:
    """With no WBC counted, NRBCs per 100 WBCs is k/0: the rows said 0.0 per 100 WBCs with a 95 % interval of 0-100
    (wbc 0.28.0; differential.csv of the shipped example field BloodImage_00021.jpg), report.html said "-"."""
    from wbc.evaluate.classified import differential
    from wbc.formats import differential_dicts

    classes = ["erythroblast", "lymphocyte", "platelet"]
    row = differential_rows({"erythroblast": 2}, classes, "x")[0]
    assert row[2:] == [2, 0, None, None, None]  # not 0.0 / 0.0 / 100.0
    assert differential_rows({"erythroblast": 2, "lymphocyte": 1}, classes, "x")[0][4] == 200.0  # as before
    out = tmp_path / "d.csv"
    write_differential_csv(out, [{"image": "f.jpg", "counts": {"erythroblast": 2}}], classes)
    got = {(r["image"], r["class"]): r for r in csv.DictReader(out.open())}
    assert [got["ALL", "erythroblast"][k] for k in ("count", "total", "percent", "ci95_low", "ci95_high")] == [
        "2", "0", "", "", ""]
    assert got["ALL", "platelet"]["percent"] == ""
    doc = {d["class"]: d for d in differential_dicts({"erythroblast": 3}, classes)}  # POST /differential's JSON
    assert (doc["erythroblast"]["percent"], doc["erythroblast"]["ci95_high"], doc["erythroblast"]["unit"]) == (
        None, None, "per 100 WBC")
    page = {r["label"]: r for r in differential({"erythroblast": 1}, {}, classes)}  # report.html
    assert page["erythroblast"]["percent"] == "n/a (no WBC counted)" and page["platelet"]["percent"] == "-"


def test_the_classify_console_gives_the_differential_of_its_report(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """`wbc classify` printed shares of every cell (3 erythroblasts of 12 cells: 25.0 %) while its own --report,
    /classify and the web page gave shares of the WBCs, NRBCs and platelets per 100 WBCs (wbc 0.28.0)."""
    from typer.testing import CliRunner

    import wbc.classify
    from wbc.classify import ClassifyResult
    from wbc.cli import app

    labels = ["erythroblast", "platelet", "lymphocyte", "neutrophil"] * 3
    for i in range(len(labels)):
        (tmp_path / f"c{i}.png").write_bytes(f"x{i}".encode())  # distinct bytes: copies are counted once (wbc 0.35.0)

    def fake(paths, clf, **_):  # the shipped model's classes, these cells' calls
        return ClassifyResult([Prediction(lab, 0.99, False, {lab: 0.99}, path=str(p))
                               for lab, p in zip(labels, paths, strict=True)], np.zeros((len(paths), 8)))

    monkeypatch.setattr(wbc.classify, "classify_paths", fake)
    res = CliRunner().invoke(app, ["classify", str(tmp_path), "-o", str(tmp_path / "p.csv")])
    assert res.exit_code == 0, res.output
    lines = {ln.split()[0]: ln for ln in res.output.splitlines() if ln.startswith("  ")}
    counts = {lab: labels.count(lab) for lab in set(labels)}
    classes = sorted(counts)
    rows = {r[1]: r for r in differential_rows(counts, classes, "")}
    assert f"{rows['lymphocyte'][4]:.1f}%" in lines["lymphocyte"] and "50.0%" in lines["lymphocyte"]
    assert "50.0 per 100 WBCs" in lines["erythroblast"] and "50.0 per 100 WBCs" in lines["platelet"]


def test_a_field_without_wbcs_gives_no_wbc_share_in_the_csv_as_in_the_report(tmp_path: Path) -> None:
    """BloodImage_00021.jpg (one NRBC, no WBC): differential.csv read `ALL,neutrophil,0,0,0.0,0.0,100.0` where
    report.html showed "-" (wbc 0.29.0): a clinician saw "0.0 % neutrophils" for a sample with no WBC counted."""
    from wbc.evaluate.classified import differential

    classes = ["erythroblast", "lymphocyte", "neutrophil"]
    out = tmp_path / "d.csv"
    write_differential_csv(out, [{"image": "f.jpg", "counts": {"erythroblast": 1}},
                                 {"image": "g.jpg", "counts": {"neutrophil": 1}}], classes)
    got = {(r["image"], r["class"]): r for r in csv.DictReader(out.open())}
    keys = ("count", "total", "percent", "ci95_low", "ci95_high")
    assert [got["f.jpg", "neutrophil"][k] for k in keys] == ["0", "0", "", "", ""]
    assert differential({"erythroblast": 1}, {}, classes)[2]["percent"] == "-"  # report.html
    assert [got["ALL", "neutrophil"][k] for k in keys][:3] == ["1", "1", "100.0"]  # a WBC counted: its share


def test_differential_csv_says_which_rows_are_per_100_wbcs(tmp_path: Path) -> None:
    """A field of one WBC: its erythroblast row's upper bound is 3900 (exact: NRBCs per 100 WBCs), under a header
    that said "percent" (wbc 0.32.0). Each row now names its unit, in a last column so the others keep their place."""
    out = tmp_path / "d.csv"
    write_differential_csv(out, [{"image": "f.jpg", "counts": {"erythroblast": 0, "neutrophil": 1}}],
                           ["erythroblast", "neutrophil"])
    header, *rows = list(csv.reader(out.open()))
    assert header == ["image", "class", "count", "total", "percent", "ci95_low", "ci95_high", "unit"]
    assert [r[1:] for r in rows if r[0] == "f.jpg"] == [
        ["erythroblast", "0", "1", "0.0", "0.0", "3900.0", "per 100 WBC"],
        ["neutrophil", "1", "1", "100.0", "2.5", "100.0", "percent"]]
    assert not out.read_bytes().startswith(b"\xef\xbb\xbf")  # no byte-order mark


def test_the_csvs_round_half_up_as_every_output(tmp_path: Path) -> None:
    """1 of 160 cells, a common manual count, is 0.625 %: differential.csv read 0.62 (``round``, half to even on the
    binary value) where report.html, the web page and the case report read 0.63 (wbc.counts.fixed, the rule the docs
    give every output); `wbc classify`'s CSV wrote a confidence of 0.98625 as 0.9862 (``:.4f``), wbc 0.32.0."""
    from wbc.formats import prediction_row

    out = tmp_path / "d.csv"
    write_differential_csv(out, [{"image": "f.jpg", "counts": {"neutrophil": 1, "lymphocyte": 159}}],
                           ["lymphocyte", "neutrophil"])
    got = {(r["image"], r["class"]): r["percent"] for r in csv.DictReader(out.open())}
    assert got["ALL", "neutrophil"] == "0.63" and got["ALL", "lymphocyte"] == "99.38"  # 99.375
    assert differential_rows({"neutrophil": 5, "lymphocyte": 155}, ["lymphocyte", "neutrophil"], "x")[1][4] == 3.13
    row = prediction_row(Prediction("monocyte", 0.98625, True, {"monocyte": 0.98625, "lymphocyte": 0.01375}),
                         ["lymphocyte", "monocyte"])
    assert row[2:5] == ["0.9863", "true", "0.0138"]
