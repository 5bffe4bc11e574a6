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
from wbc.errors import WbcError
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


# --- `wbc ood fit`: labels, outputs and inputs it used to take wrongly (review cytood, wbc 0.30.0) -----------------


def write_manifest(tmp: Path, n: int = 8, rename: dict[str, str] | None = None, repeat_first: int = 0) -> Path:
    """A train/val manifest of ``n`` cells a class (:data:`TRAIN_COLOURS`); ``rename``: labels written otherwise;
    ``repeat_first``: the train split is its first image listed that many times."""
    from wbc.io import write_image

    rows = []
    for split, seed in (("train", 10), ("val", 11)):
        cells, labels = cells_like(TRAIN_COLOURS, n, seed=seed, size=16)
        for i, (c, lab) in enumerate(zip(cells, labels, strict=True)):
            p = tmp / "imgs" / f"{split}_{i}.png"
            write_image(p, c)
            rows.append([str(p), (rename or {}).get(lab, lab), split, -1, ""])
    if repeat_first:
        rows = [rows[0]] * repeat_first + [r for r in rows if r[2] == "val"]
    out = tmp / "manifest.csv"
    with out.open("w", newline="") as fh:
        csv.writer(fh).writerows([["path", "label", "split", "fold", "sha1"], *rows])
    return out


def wbc_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wbc", *args], capture_output=True, text=True)


def test_ood_fit_reads_label_spellings_as_evaluate_does(tmp_path: Path) -> None:
    """A manifest's "Neutrophils" is the model's neutrophil (as `wbc evaluate` reads it): the class keeps its centre,
    instead of being left out without a word and every neutrophil then flagged."""
    from wbc.model import load_model

    model, _ = make_embedding_model(tmp_path / "m.onnx")
    r = wbc_cli("ood", "fit", "--model", str(model), "--manifest",
                str(write_manifest(tmp_path, rename={"neutrophil": "Neutrophils"})), "--threads", "1")
    assert r.returncode == 0, r.stderr
    centres = load_model(model).info.ood["references"][0]["feature"]["centres"]
    assert {"neutrophil", "lymphocyte", "monocyte"} <= set(centres)
    out = " ".join((r.stdout + r.stderr).split())
    assert "no train rows of the model's class(es) basophil" in out  # the tiny model's classes this manifest lacks
    assert "neutrophil" not in out.split("no train rows of the model's class(es)")[1].split(":")[0]


def test_ood_fit_names_the_labels_when_none_is_the_models(tmp_path: Path) -> None:
    model, _ = make_embedding_model(tmp_path / "m.onnx")
    man = write_manifest(tmp_path, rename={"neutrophil": "type 1", "lymphocyte": "type 2", "monocyte": "type 3"})
    r = wbc_cli("ood", "fit", "--model", str(model), "--manifest", str(man), "--threads", "1")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    said = " ".join(r.stderr.split())
    assert "no train and val rows of the model's classes (labels seen: type 1, type 2, type 3)" in said


@pytest.mark.parametrize("percentile", ["150", "-5", "0", "nan"])
def test_ood_fit_refuses_a_percentile_out_of_range_in_one_line(tmp_path: Path, percentile: str) -> None:
    """Refused before any work, never a traceback after it; 0 was taken for the default 99.5 without a word."""
    model, _ = make_embedding_model(tmp_path / "m.onnx")
    before = model.read_bytes()
    r = wbc_cli("ood", "fit", "--model", str(model), "--manifest", str(write_manifest(tmp_path)), "--threads", "1",
                "--percentile", percentile)
    assert r.returncode != 0 and "Traceback" not in r.stderr and "percentile" in r.stderr.lower()
    assert model.read_bytes() == before


def test_fit_ood_refuses_a_percentile_below_half() -> None:
    tc, tl = cells_like(TRAIN_COLOURS, 10, seed=0)
    with pytest.raises(WbcError, match="between 50 and 100"):
        fit_ood(tc, fake_embed(tc), tl, tc, fake_embed(tc), CLASSES3, percentile=1e-9)


def test_ood_fit_refuses_an_output_named_like_the_metadata_copy(tmp_path: Path) -> None:
    """`--output fitted.json` wrote the model, then its metadata copy over it, and reported success."""
    model, _ = make_embedding_model(tmp_path / "m.onnx")
    r = wbc_cli("ood", "fit", "--model", str(model), "--manifest", str(write_manifest(tmp_path)), "--threads", "1",
                "--output", str(tmp_path / "fitted.json"))
    assert r.returncode == 1 and "Traceback" not in r.stderr and "give a .onnx name" in r.stderr
    assert not (tmp_path / "fitted.json").exists()


@pytest.mark.parametrize("command", [["ood", "fit", "--model", "{model}"], ["quantize", "{model}"]])
def test_a_model_writer_refuses_an_output_that_is_not_onnx(tmp_path: Path, command: list[str]) -> None:
    """`wbc ood fit -o run/best.pt` (a typo for best.onnx) replaced the run's PyTorch checkpoint with ONNX bytes, and
    `wbc quantize -o` took any name too; both now refuse a name not ending in .onnx before any work."""
    model, _ = make_embedding_model(tmp_path / "m.onnx")
    checkpoint = tmp_path / "best.pt"
    checkpoint.write_bytes(b"TRAINED-WEIGHTS")
    r = wbc_cli(*(a.format(model=model) for a in command), "--manifest", str(write_manifest(tmp_path)),
                "--threads", "1", "-o", str(checkpoint))
    assert r.returncode == 1 and "Traceback" not in r.stderr and "give a .onnx name" in r.stderr, r.stderr
    assert checkpoint.read_bytes() == b"TRAINED-WEIGHTS" and not (tmp_path / "best.json").exists()


def test_ood_fit_on_identical_train_images_fails_in_one_line(tmp_path: Path) -> None:
    model, _ = make_embedding_model(tmp_path / "m.onnx")
    r = wbc_cli("ood", "fit", "--model", str(model), "--manifest", str(write_manifest(tmp_path, repeat_first=5)),
                "--threads", "1")
    assert r.returncode == 1 and "Traceback" not in r.stderr and "do not vary" in r.stderr


def test_ood_fit_on_a_model_without_embedding_fails_in_one_line(tmp_path: Path) -> None:
    from tiny_models import CLASSES, mean_colour_model

    model = mean_colour_model(tmp_path / "m.onnx", 16, np.ones((len(CLASSES), 3)), "noemb")
    r = wbc_cli("ood", "fit", "--model", str(model), "--manifest", str(write_manifest(tmp_path)), "--threads", "1")
    assert r.returncode == 1 and "Traceback" not in r.stderr and "no 'embedding' output" in r.stderr


def test_ood_fit_on_few_validation_cells_says_what_the_threshold_is(tmp_path: Path) -> None:
    """3 validation cells cannot give a 99.5th percentile: the threshold is their largest score, and the fit says so."""
    model, _ = make_embedding_model(tmp_path / "m.onnx")
    r = wbc_cli("ood", "fit", "--model", str(model), "--manifest", str(write_manifest(tmp_path, n=1)), "--threads", "1")
    assert r.returncode == 0, r.stderr
    out = " ".join((r.stdout + r.stderr).split())
    assert "only 3 validation cells" in out and "needs 200 or more" in out and "1 in 4" in out


def test_a_fit_on_few_cells_keeps_a_residual_to_measure() -> None:
    """24 training embeddings used to span 23 PCA axes: no residual left, its scale at the 1e-9 floor, and a feature
    threshold in the thousands."""
    rng = np.random.default_rng(0)
    tc, tl = cells_like(TRAIN_COLOURS, 8, seed=0)
    vc, _ = cells_like(TRAIN_COLOURS, 8, seed=1)
    ood = fit_ood(tc, rng.normal(size=(24, 64)), tl, vc, rng.normal(size=(24, 64)), CLASSES3)
    ref = ood["references"][0]["feature"]
    assert ref["resid_scale"] > 1e-3 and ref["threshold"] < 10


def test_both_scores_together_flag_the_percentiles_share_of_validation_cells() -> None:
    """A cell is flagged when either score passes its threshold: each at the 99.5th percentile flagged up to 1 % of
    the validation cells. The thresholds now leave 0.5 % flagged by the two together."""
    rng = np.random.default_rng(0)
    tc, tl = cells_like(TRAIN_COLOURS, 100, seed=0)
    vc, _ = cells_like(TRAIN_COLOURS, 400, seed=1)  # 1,200 cells; embeddings independent of the colours
    ve = rng.normal(size=(len(vc), 16))
    ood = fit_ood(tc, rng.normal(size=(len(tc), 16)), tl, vc, ve, CLASSES3)
    s = ood_scores(vc, ve, ood)
    flagged = (s["colour"] > 1) | (s["feature"] > 1)
    assert 0.003 <= flagged.mean() <= 0.005
    assert ood["score_percentile"] > 99.5 and ood["percentile"] == 99.5


def test_ood_warning_never_rounds_a_part_up_to_all() -> None:
    preds = [Prediction("neutrophil", 0.9, True, {}, ood=i < 199) for i in range(200)]
    assert "199 of 200 cells (over 99%)" in (ood_warning(preds) or "")
    assert "2 of 2 cells (100%)" in (ood_warning(preds[:2]) or "")


@pytest.mark.slow
@pytest.mark.real_data
def test_a_refit_flags_about_half_a_percent_of_the_training_labs_validation_cells(real_data: Path,
                                                                                   tmp_path: Path) -> None:
    """`wbc ood fit` on the shipped model's run, then `wbc classify`'s defaults on the PBC validation split (1,200 of
    its 1,648 cells set the thresholds): at most 0.8 % flagged (wbc 0.29.0's fitting: two thresholds each at the 99.5th
    percentile, fitted on the crops as loaded while `wbc classify` scores re-framed ones: 19, 1.15 %)."""
    import shutil

    from wbc.classify import classify_paths
    from wbc.model import load_model
    from wbc.paths import DEFAULT_MODEL

    model = Path(shutil.copy(DEFAULT_MODEL, tmp_path / "m.onnx"))
    manifest = Path(__file__).parents[1] / "runs" / "default" / "manifest.csv"
    r = wbc_cli("ood", "fit", "--model", str(model), "--manifest", str(manifest), "--data-root", str(real_data),
                "--max-per-class", "150", "--threads", "2")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(manifest.open()))
    res = classify_paths([real_data / r["path"] for r in rows if r["split"] == "val"], load_model(model))
    assert sum(p.ood for p in res.predictions) / len(res.predictions) <= 0.008


def test_the_command_line_advice_asks_for_the_cell_counts_adapt_is_made_for() -> None:
    """The terminal advised "~50-100 labelled cells" while the README and `wbc adapt` say 25-100, or --no-labels first
    (wbc 0.29.0). The sentence for lab staff (pages, reports) names no command; the command line appends the advice."""
    from wbc.ood import ADAPT_ADVICE, LABEL_ADVICE, ood_sentence

    assert "25-100 labelled cells" in ADAPT_ADVICE and "wbc adapt --no-labels" in ADAPT_ADVICE
    assert "25-100" in LABEL_ADVICE and "50-100" not in ADAPT_ADVICE + LABEL_ADVICE
    for s in (ood_sentence(5, 10), ood_sentence(5, 10, unlabelled_adaptation=True), ood_sentence(1, 10)):
        assert "`" not in s and "wbc " not in s


def test_quantize_and_ood_fit_refuse_a_manifest_that_is_not_the_model_s_split(tmp_path: Path) -> None:
    """`wbc quantize` and `wbc ood fit` re-fitted a model's temperature, review threshold, validation metrics and OOD
    thresholds on any manifest's val rows, though the model records its own split: given another run's manifest, 24
    of the 30 "val" cells had trained it, and the int8 model kept the split hash, so `wbc evaluate` went on calling
    its test rows held out. Another split is refused in one line; the model's own is taken."""
    from wbc.data import load_dataset, split_hash
    from wbc.model import load_model, update_metadata

    manifest = write_manifest(tmp_path)
    model, _ = make_embedding_model(tmp_path / "m.onnx", extra={"config": {"model": "tiny"}, "split_hash": "0" * 16})
    runner = CliRunner()
    for args in (["quantize", str(model), "--manifest", str(manifest), "-o", str(tmp_path / "q.onnx")],
                 ["ood", "fit", "--model", str(model), "--manifest", str(manifest)]):
        res = runner.invoke(app, [*args, "--threads", "1"])
        assert res.exit_code == 1 and isinstance(res.exception, WbcError), (args, res.output)
        assert str(res.exception) == (f"{manifest}: not the split {model} was trained on (its val rows may have "
                                      "trained it); give the manifest.csv of the run that trained it")
    assert not (tmp_path / "q.onnx").exists() and not load_model(model).info.ood
    own = split_hash(load_dataset(manifest).samples)
    update_metadata(model, extra={"config": {"model": "tiny"}, "split_hash": own})
    res = runner.invoke(app, ["quantize", str(model), "--manifest", str(manifest), "-o", str(tmp_path / "q.onnx"),
                              "--per-class", "4", "--threads", "1"])
    assert res.exit_code == 0, (res.output, res.exception)
    assert load_model(tmp_path / "q.onnx").info.extra["split_hash"] == own
    other = tmp_path / "other.csv"  # another split of the same cells: the model's own manifest, beside it, is named
    other.write_text(manifest.read_text().replace(",val,", ",train,", 1))
    res = runner.invoke(app, ["ood", "fit", "--model", str(model), "--manifest", str(other), "--threads", "1"])
    assert res.exit_code == 1 and str(res.exception).endswith(f"trained it); give {manifest}"), res.exception


def test_a_foreign_manifest_is_refused_as_such_beside_a_manifest_csv_that_is_none(tmp_path: Path) -> None:
    """The refusal's hint read any ``manifest.csv`` beside the model to name it: a user's own file of that name (or a
    bad one) replaced "not the split" with an error about that file. The refusal stands; the hint is the generic one."""
    from wbc.model import load_model
    from wbc.ood_fit import check_own_split

    manifest = write_manifest(tmp_path)
    (tmp_path / "L").mkdir()
    model, _ = make_embedding_model(tmp_path / "L" / "model.onnx",
                                    extra={"config": {"model": "tiny"}, "split_hash": "0" * 16})
    for beside in ("x,y\n1,2\n", "path,label,split\nnone.png,neutrophil,val\n,neutrophil,val\n"):
        (tmp_path / "L" / "manifest.csv").write_text(beside, encoding="utf-8")
        with pytest.raises(WbcError, match=r"not the split .* give the manifest\.csv of the run that trained it$"):
            check_own_split(load_model(model).info, model, manifest)
    res = CliRunner().invoke(app, ["ood", "fit", "--model", str(model), "--manifest", str(manifest), "--threads", "1"])
    assert res.exit_code == 1 and f"{manifest}: not the split {model}" in str(res.exception), res.output


def test_ood_fit_refuses_a_model_adapted_to_a_lab(tmp_path: Path) -> None:
    """`wbc classify` told the user of a model adapted from a fresh run to fit its OOD statistics with `wbc ood fit
    --model MODEL --manifest RUN/manifest.csv`; fitted on the run's cells through the adapted network, every one of
    the 40 lab cells it was adapted on was then flagged as unlike the training images. The fit is refused, naming the
    model it was adapted from, and the note says to fit that one and adapt again."""
    from wbc.cli._common import note_unchecked_model
    from wbc.model import load_model, update_metadata

    model, _ = make_embedding_model(tmp_path / "m.onnx")
    update_metadata(model, extra={"adapt": {"method": "finetune", "base": {"model_id": "wbc-small_cnn-run-b"}}})
    res = CliRunner().invoke(app, ["ood", "fit", "--model", str(model), "--manifest", str(write_manifest(tmp_path)),
                                   "--threads", "1"])
    assert res.exit_code == 1 and "adapted to a lab's cells by wbc adapt" in str(res.exception)
    assert "fit OOD statistics on wbc-small_cnn-run-b" in str(res.exception) and "adapt it again" in str(res.exception)
    assert not load_model(model).info.ood
    from wbc.cli._app import console

    with console.capture() as captured:
        note_unchecked_model(load_model(model))
    said = " ".join(captured.get().split())
    assert "--model MODEL" not in said and "`wbc ood fit --model BASE --manifest RUN/manifest.csv`" in said
    assert "the model it was adapted from (wbc-small_cnn-run-b)" in said and "adapt again" in said
