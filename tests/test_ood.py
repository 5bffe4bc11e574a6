"""Out-of-distribution flags: fitted on training cells, thresholds on validation cells, used in classify."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from wbc.cli import app
from wbc.ood import (
    add_reference,
    colour_features,
    fit_ood,
    flag_predictions,
    ood_scores,
    ood_warning,
)
from wbc.types import Prediction

sys.path.insert(0, str(Path(__file__).parent))
from test_adapt import make_embedding_model

CLASSES3 = ["neutrophil", "lymphocyte", "monocyte"]
TRAIN_COLOURS = {"neutrophil": (215, 170, 190), "lymphocyte": (150, 120, 200), "monocyte": (190, 160, 210)}


def cells_like(colours: dict[str, tuple[int, int, int]], n: int, seed: int, size: int = 12):
    rng = np.random.default_rng(seed)
    labels = [c for c in colours for _ in range(n)]
    noise = [rng.normal(0, 8, 3) + rng.normal(0, 10, (size, size, 3)) for _ in labels]
    cells = np.stack([np.clip(np.asarray(colours[c]) + z, 0, 255).astype(np.uint8)
                      for c, z in zip(labels, noise, strict=True)])
    return cells, labels


def fake_embed(cells: np.ndarray, dims: int = 40, seed: int = 0) -> np.ndarray:
    """A fixed random nonlinear feature of the mean colour, standing in for a network's embedding."""
    proj = np.random.default_rng(seed).normal(size=(3, dims))
    return np.maximum(cells.reshape(len(cells), -1, 3).mean(1) / 255.0 @ proj, 0) + 0.01


@pytest.fixture(scope="module")
def fitted():
    tc, tl = cells_like(TRAIN_COLOURS, 60, seed=0)
    vc, _ = cells_like(TRAIN_COLOURS, 60, seed=1)
    return fit_ood(tc, fake_embed(tc), tl, vc, fake_embed(vc), CLASSES3)


def test_in_distribution_cells_are_rarely_flagged_and_shifted_ones_always(fitted) -> None:
    ic, _ = cells_like(TRAIN_COLOURS, 100, seed=2)
    s = ood_scores(ic, fake_embed(ic), fitted)
    assert (s["colour"] > 1).mean() < 0.05 and (s["feature"] > 1).mean() < 0.05
    other_lab = {k: (v[0] - 60, v[1] + 30, v[2] - 50) for k, v in TRAIN_COLOURS.items()}
    oc, _ = cells_like(other_lab, 20, seed=3)
    s = ood_scores(oc, fake_embed(oc), fitted)
    assert (s["colour"] > 1).all()


def test_flagged_predictions_get_review_and_a_reason(fitted) -> None:
    ic, _ = cells_like({"neutrophil": TRAIN_COLOURS["neutrophil"]}, 1, seed=4)
    dark = np.full_like(ic, 30)
    preds = [Prediction("neutrophil", 0.99, False, {}) for _ in range(2)]
    cells = np.concatenate([ic, dark])
    flag_predictions(preds, cells, fake_embed(cells), fitted)
    assert not preds[0].ood and not preds[0].review
    assert preds[1].ood and preds[1].review and any("colours unlike" in r for r in preds[1].reasons)
    assert "1 of 2 cells" in (ood_warning(preds) or "")
    assert ood_warning(preds[:1]) is None


def test_a_reference_for_a_new_lab_accepts_that_lab(fitted) -> None:
    other_lab = {k: (v[0] - 60, v[1] + 30, v[2] - 50) for k, v in TRAIN_COLOURS.items()}
    ac, al = cells_like(other_lab, 10, seed=5)
    adapted = add_reference(fitted, ac, fake_embed(ac), al, CLASSES3, name="lab2")
    test, _ = cells_like(other_lab, 20, seed=6)
    assert (ood_scores(test, fake_embed(test), adapted)["colour"] < 1).mean() > 0.9
    assert len(fitted["references"]) == 1  # the original is not modified


def test_colour_features_are_lab_mean_and_spread() -> None:
    flat = np.full((2, 8, 8, 3), 255, np.uint8)
    f = colour_features(flat)
    assert f.shape == (2, 6) and np.allclose(f[:, 0], 100, atol=0.5) and np.allclose(f[:, 3:], 0)


def test_fit_from_manifest_stores_statistics_used_by_classify(tmp_path: Path) -> None:
    from wbc.classify import classify_paths
    from wbc.io import write_image
    from wbc.model import load_model

    eosin = {"cytoplasm_eosin": {"neutrophil": [0.1, 0.02]}}  # the training cells' cytoplasm, fitted apart
    model, _ = make_embedding_model(tmp_path / "m.onnx", extra={"colour_reference": eosin})
    rows = []
    for split, seed in (("train", 10), ("val", 11)):
        cells, labels = cells_like(TRAIN_COLOURS, 8, seed=seed, size=16)
        for i, (c, lab) in enumerate(zip(cells, labels, strict=True)):
            p = tmp_path / "imgs" / f"{split}_{i}.png"
            write_image(p, c)
            rows.append([str(p), lab, split, -1, ""])
    manifest = tmp_path / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        csv.writer(fh).writerows([["path", "label", "split", "fold", "sha1"], *rows])
    res = CliRunner().invoke(app, ["ood", "fit", "--model", str(model), "--manifest", str(manifest), "--threads", "1"])
    assert res.exit_code == 0, res.output
    clf = load_model(model)
    assert clf.info.ood["references"][0]["colour"]["threshold"] > 0
    assert {"reinhard", "histogram"} <= set(clf.info.colour_reference)
    assert clf.info.colour_reference["cytoplasm_eosin"] == eosin["cytoplasm_eosin"]  # kept (0.26.0 dropped it)
    fresh, _ = cells_like(TRAIN_COLOURS, 4, seed=12, size=16)
    paths = []
    for i, c in enumerate(fresh):
        paths.append(tmp_path / f"fresh_{i}.png")
        write_image(paths[-1], c)
    odd = tmp_path / "odd.png"
    green = np.full((16, 16, 3), (20, 200, 20), np.int16) + np.random.default_rng(0).integers(-6, 7, (16, 16, 3))
    write_image(odd, green.astype(np.uint8))  # a photo of something green (noisy: a flat frame is refused unread)
    res = classify_paths([*paths, odd], clf)
    assert sum(p.ood for p in res.predictions[:-1]) <= 1  # thresholds at the 99.5th percentile
    assert res.predictions[-1].ood and res.predictions[-1].review and res.predictions[-1].reasons


def test_a_lab_adapted_without_labels_is_told_its_accuracy_is_unmeasured(tmp_path: Path) -> None:
    """After `wbc adapt --no-labels` the lab's cells still look unlike the training data (the statistics are the
    training lab's), so they stay flagged; the warning then says the adapted model's accuracy is unmeasured and asks
    for labels, instead of asking for the adaptation already made."""
    from wbc.io import write_image
    from wbc.ood import ADAPT_ADVICE, LABEL_ADVICE

    model, _ = make_embedding_model(tmp_path / "m.onnx")
    rows = []
    for split, seed in (("train", 10), ("val", 11)):
        cells, labels = cells_like(TRAIN_COLOURS, 8, seed=seed, size=16)
        for i, (c, lab) in enumerate(zip(cells, labels, strict=True)):
            write_image(tmp_path / "imgs" / f"{split}_{i}.png", c)
            rows.append([str(tmp_path / "imgs" / f"{split}_{i}.png"), lab, split, -1, ""])
    manifest = tmp_path / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        csv.writer(fh).writerows([["path", "label", "split", "fold", "sha1"], *rows])
    runner = CliRunner()
    assert runner.invoke(app, ["ood", "fit", "--model", str(model), "--manifest", str(manifest),
                               "--threads", "1"]).exit_code == 0
    other_lab = {k: (v[0] - 90, v[1] + 60, v[2] - 80) for k, v in TRAIN_COLOURS.items()}
    lab_cells, _ = cells_like(other_lab, 6, seed=13, size=16)
    for i, c in enumerate(lab_cells):
        write_image(tmp_path / "lab" / f"cell_{i}.png", c)
    plain = runner.invoke(app, ["classify", str(tmp_path / "lab"), "--model", str(model), "-o",
                                str(tmp_path / "plain.csv")])
    assert plain.exit_code == 0, plain.output
    assert "until the model is adapted" in plain.output and ADAPT_ADVICE in " ".join(plain.output.split())
    adapted = tmp_path / "lab.onnx"
    res = runner.invoke(app, ["adapt", "--no-labels", "--model", str(model), "--data", str(tmp_path / "lab"),
                              "--output", str(adapted)])
    assert res.exit_code == 0, res.output
    after = runner.invoke(app, ["classify", str(tmp_path / "lab"), "--model", str(adapted), "-o",
                                str(tmp_path / "after.csv")])
    assert after.exit_code == 0, after.output
    text = " ".join(after.output.split())
    assert "adapted to this lab's images without labels" in text and LABEL_ADVICE in text
    assert "until the model is adapted" not in text and ADAPT_ADVICE not in text


def test_fit_cli_reports_bad_manifest(tmp_path: Path) -> None:
    model, _ = make_embedding_model(tmp_path / "m.onnx")
    r = subprocess.run([sys.executable, "-m", "wbc", "ood", "fit", "--model", str(model), "--manifest",
                        str(tmp_path / "missing.csv")], capture_output=True, text=True)
    assert r.returncode == 1 and "manifest not found" in r.stderr and "Traceback" not in r.stderr
