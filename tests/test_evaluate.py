"""``wbc evaluate`` end to end on synthetic cells with a tiny real ONNX model (GAP + linear head).

The model is built with ``onnx.helper`` (no torch): a 1x1 convolution + ReLU, 8x8 average pooling
(the feature map), global average pooling (the embedding) and a linear head fitted with scikit-learn
on the embeddings, plus the in-graph class activation map, exactly the output layout of exported wbc
models. It is good but not perfect on the synthetic classes, so there are mistakes to show.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from wbc.cli import app
from wbc.data import Sample, write_manifest
from wbc.labels import CLASSES
from wbc.model import METADATA_KEY, ModelInfo, load_model
from wbc.synthetic import make_dataset

onnx = pytest.importorskip("onnx", reason="building the test model needs the onnx package (train extra)")

SIZE = 32
CHROMIUM = "/usr/bin/chromium"


def _graph_model(path: Path, w1: np.ndarray, w_fc: np.ndarray, b_fc: np.ndarray, info: ModelInfo) -> Path:
    from onnx import TensorProto, helper, numpy_helper

    d = w1.shape[0]
    c = w_fc.shape[0]
    inits = [
        numpy_helper.from_array(w1.reshape(d, 3, 1, 1).astype(np.float32), "w1"),
        numpy_helper.from_array(np.zeros(d, np.float32), "b1"),
        numpy_helper.from_array(w_fc.astype(np.float32), "w_fc"),
        numpy_helper.from_array(b_fc.astype(np.float32), "b_fc"),
        numpy_helper.from_array(w_fc.reshape(c, d, 1, 1).astype(np.float32), "w_cam"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("AveragePool", ["r1"], ["fmap"], kernel_shape=[8, 8], strides=[8, 8]),
        helper.make_node("GlobalAveragePool", ["fmap"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["embedding"]),
        helper.make_node("Gemm", ["embedding", "w_fc", "b_fc"], ["logits"], transB=1),
        helper.make_node("Conv", ["fmap", "w_cam"], ["cam"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_wbc",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, SIZE, SIZE])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", c]),
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["n", d]),
            helper.make_tensor_value_info("cam", TensorProto.FLOAT, ["n", c, SIZE // 8, SIZE // 8]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {METADATA_KEY: info.to_json()})
    onnx.save(model, str(path))
    return path


def build_tiny_model(
    path: Path, train_dir: Path, model_id: str = "tiny-test", seed: int = 0, c_reg: float = 0.05
) -> Path:
    """A real ONNX classifier for the synthetic classes, its head fitted on ``train_dir``."""
    from sklearn.linear_model import LogisticRegression

    from wbc.preprocess import load_cell

    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 1, (12, 3))
    info = ModelInfo(
        classes=list(CLASSES),
        input_size=SIZE,
        mean=[0.5] * 3,
        std=[0.25] * 3,
        model_id=model_id,
        temperature=1.3,
        review_threshold=0.6,
    )
    _graph_model(path, w1, np.zeros((len(CLASSES), 12)), np.zeros(len(CLASSES)), info)
    files = sorted(train_dir.glob("*/*.png"))
    cells = np.stack([load_cell(f, SIZE) for f in files])
    y = np.array([CLASSES.index(f.parent.name) for f in files])
    emb = load_model(path).run(cells, ("embedding",))["embedding"]
    lr = LogisticRegression(C=c_reg, max_iter=2000).fit(emb, y)
    return _graph_model(path, w1, lr.coef_, lr.intercept_, info)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("evaluate")
    train = make_dataset(root / "train", n_per_class=10, size=48, seed=1)
    data = make_dataset(root / "data", n_per_class=12, size=48, seed=2)
    shutil.copytree(data / "neutrophil", data / "smudge")  # a label the model does not know
    (data / "monocyte" / "broken.png").write_bytes(b"not an image")
    (data / "monocyte" / "notes.txt").write_text("not an image file")
    run = root / "run"
    run.mkdir()
    model = build_tiny_model(run / "model.onnx", train)
    return {"root": root, "data": data, "model": model, "run": run, "train": train}


@pytest.fixture(scope="module")
def evaluated(env: dict[str, Path]) -> tuple[dict, Path]:
    from wbc.evaluate import evaluate

    out = env["root"] / "out"
    metrics = evaluate(env["data"], load_model(env["model"]), out, n_boot=200)
    return metrics, out


def test_writes_the_three_files(evaluated: tuple[dict, Path]) -> None:
    metrics, out = evaluated
    assert {p.name for p in out.iterdir()} >= {"metrics.json", "predictions.csv", "report.html"}
    on_disk = json.loads((out / "metrics.json").read_text())
    for key in (
        "accuracy",
        "balanced_accuracy",
        "macro_f1",
        "weighted_f1",
        "cohen_kappa",
        "per_class",
        "confusion_matrix",
        "roc_auc",
        "ece",
        "ci",
        "selective",
        "n",
        "model_id",
        "manifest_hash",
    ):
        assert key in on_disk, key
    assert on_disk["model_id"] == "tiny-test"
    assert on_disk["n"] == 8 * 12  # smudge and the broken file are not scored
    assert set(on_disk["per_class"]["monocyte"]) >= {"precision", "recall", "specificity", "f1", "support"}
    assert on_disk["ece"]["temperature"] == pytest.approx(1.3)
    assert on_disk["ece"]["raw"] is not None and on_disk["ece"]["calibrated"] is not None
    assert set(on_disk["selective"]["accuracy_at_coverage"]) == {"0.90", "0.95", "0.99"}
    assert 0.3 < metrics["accuracy"] < 1.0  # the tiny model learned something but is not perfect


def test_unknown_labels_and_unreadable_files_are_reported(evaluated: tuple[dict, Path]) -> None:
    metrics, out = evaluated
    assert metrics["unknown_labels"]["count"] == 12
    assert metrics["unknown_labels"]["labels"] == {"smudge": 12}
    assert sum(metrics["unknown_labels"]["called"]["smudge"].values()) == 12
    assert len(metrics["unreadable"]) == 1 and "broken.png" in metrics["unreadable"][0][1]
    html = (out / "report.html").read_text()
    assert "smudge" in html and "broken.png" in html


def test_predictions_csv_has_true_labels(evaluated: tuple[dict, Path]) -> None:
    metrics, out = evaluated
    with (out / "predictions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 9 * 12  # every readable image, unknown labels included
    assert {"path", "label", "confidence", "review", "true_label", "correct"} <= set(rows[0])
    scored = [r for r in rows if r["correct"]]
    assert len(scored) == metrics["n"]
    assert np.mean([r["correct"] == "true" for r in scored]) == pytest.approx(metrics["accuracy"])
    assert all(r["correct"] == "" for r in rows if r["true_label"] == "smudge")


def test_accuracy_equals_wbc_classify(
    env: dict[str, Path], evaluated: tuple[dict, Path], tmp_path: Path
) -> None:
    metrics, _ = evaluated
    csv_path = tmp_path / "classify.csv"
    res = CliRunner().invoke(
        app, ["classify", str(env["data"]), "--model", str(env["model"]), "--output", str(csv_path)]
    )
    assert csv_path.is_file(), res.output
    with csv_path.open() as fh:
        rows = list(csv.DictReader(fh))
    known = [r for r in rows if Path(r["path"]).parent.name in CLASSES]
    acc = np.mean([Path(r["path"]).parent.name == r["label"] for r in known])
    assert len(known) == metrics["n"]
    assert metrics["accuracy"] == pytest.approx(acc, abs=1e-12)


def test_report_is_self_contained(evaluated: tuple[dict, Path]) -> None:
    import re

    _, out = evaluated
    html = (out / "report.html").read_text()
    srcs = re.findall(r"<img[^>]*\ssrc='([^']*)'", html)
    assert len(srcs) >= 5 + 8 * 2  # figures + Grad-CAM pairs for 8 classes
    assert all(s.startswith("data:image/") for s in srcs)
    assert "http://" not in html and "https://" not in html and "<script" not in html
    assert "Grad-CAM" in html and "Most confident mistakes" in html


def test_map_renames_a_label(env: dict[str, Path], tmp_path: Path) -> None:
    from wbc.evaluate import evaluate

    m = evaluate(
        env["data"],
        load_model(env["model"]),
        tmp_path,
        mapping={"smudge": "neutrophil"},
        n_boot=100,
        cams_per_class=0,
        gallery_size=2,
    )
    assert m["unknown_labels"]["count"] == 0
    assert m["per_class"]["neutrophil"]["support"] == 24


def test_a_chosen_label_set_scores_only_the_cells_it_can_name(env: dict[str, Path], tmp_path: Path) -> None:
    """With --classes 5part an ig, erythroblast or platelet cell cannot be named right; wbc 0.26.0 scored it anyway
    (a run naming every five-part cell right showed 0.625). Such cells are listed as labels outside the chosen set,
    every score is over the five classes, and the calibration is measured on the probabilities the chart shows."""
    from wbc.evaluate import evaluate
    from wbc.labels import WBC5

    clf = load_model(env["model"])
    five = evaluate(env["data"], clf.with_classes("5part"), tmp_path / "five", n_boot=100, gallery_size=2)
    assert five["n"] == 5 * 12  # the five WBC folders
    assert set(five["per_class"]) == set(WBC5) and five["classes_chosen"] == list(clf.with_classes("5part").label_set)
    assert five["unknown_labels"]["labels"] == {"erythroblast": 12, "ig": 12, "platelet": 12, "smudge": 12}
    rows = list(csv.DictReader((tmp_path / "five" / "predictions.csv").open()))
    scored = [r for r in rows if r["correct"]]
    assert len(scored) == five["n"] and {r["true_label"] for r in scored} == set(WBC5)
    assert five["accuracy"] == pytest.approx(np.mean([r["correct"] == "true" for r in scored]))
    assert "outside the classes chosen" in (tmp_path / "five" / "report.html").read_text()


def test_manifest_split_and_cross_validation_folds(env: dict[str, Path], tmp_path: Path) -> None:
    from wbc.evaluate import evaluate

    data = env["data"]
    files = sorted(data.glob("*/*.png"))
    samples = [
        Sample(f, f.parent.name, "test" if i % 3 == 0 else "val", -1, "")
        for i, f in enumerate(files)
        if f.parent.name in CLASSES and f.name != "broken.png"
    ]
    run = tmp_path / "cvrun"
    run.mkdir()
    write_manifest(run / "manifest.csv", samples, root=tmp_path)
    shutil.copy(env["model"], run / "model.onnx")
    for k, acc in enumerate((0.8, 0.9, 0.85)):
        (run / f"fold_{k}").mkdir()
        (run / f"fold_{k}" / "val_metrics.json").write_text(
            json.dumps({"accuracy": acc, "macro_f1": acc - 0.1})
        )
    m = evaluate(
        run / "manifest.csv",
        load_model(run / "model.onnx"),
        tmp_path / "out",
        root=tmp_path,
        n_boot=100,
        refit_temperature=True,
        cams_per_class=1,
    )
    assert m["split"] == "test"
    assert m["n"] == sum(s.split == "test" for s in samples)
    cv = m["cross_validation"]
    assert cv["folds"] == 3
    assert cv["summary"]["accuracy"]["mean"] == pytest.approx(0.85)
    assert cv["summary"]["accuracy"]["sd"] == pytest.approx(0.05)
    assert m["ece"]["refit"]["temperature"] > 0 and "val split" in m["ece"]["refit"]["fitted_on"]
    assert "Cross-validation" in (tmp_path / "out" / "report.html").read_text()


def test_cli_evaluate_without_torch_and_errors(env: dict[str, Path], tmp_path: Path) -> None:
    # a fresh interpreter, so that torch imported by other tests cannot hide an import in the CLI path
    argv = ["evaluate", str(env["data"]), "--model", str(env["run"]), "--output", str(tmp_path / "o"),
            "--bootstrap", "100"]
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from wbc.cli import app\n"
        f"r = CliRunner().invoke(app, {argv!r})\n"
        "assert r.exit_code == 0, r.output\n"
        "print('torch imported' if 'torch' in sys.modules else 'no torch')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("no torch")
    assert (tmp_path / "o" / "report.html").is_file()
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "evaluate",
            str(tmp_path / "missing"),
            "--model",
            str(env["model"]),
            "--output",
            str(tmp_path / "x"),
        ],
    )
    assert res.exit_code != 0 and "no such folder" in str(res.exception)
    res = runner.invoke(app, ["evaluate", str(env["data"]), "--model", str(env["model"]), "--map", "bad"])
    assert res.exit_code != 0 and "OLD=NEW" in str(res.exception)


def test_an_output_that_is_a_file_is_one_line_before_any_work(
    env: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """-o naming an existing file ended wbc evaluate and --compare in a FileExistsError traceback."""
    import wbc.evaluate
    import wbc.model
    from wbc.errors import WbcError

    taken = tmp_path / "afile"
    taken.write_text("mine")

    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("work began before the output was checked")

    monkeypatch.setattr(wbc.model, "load_model", no_work)
    monkeypatch.setattr(wbc.evaluate, "load_eval_data", no_work)
    runner = CliRunner()
    for extra in ([], ["--compare", str(env["model"]), str(env["model"])]):
        res = runner.invoke(app, ["evaluate", str(env["data"]), "-o", str(taken), *extra])
        assert isinstance(res.exception, WbcError), (extra, res.exception)
        assert str(taken) in str(res.exception) and "\n" not in str(res.exception)
    assert taken.read_text() == "mine"


def test_the_review_summary_counts_every_flag_wbc_classify_gives(
    env: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The report's "Here that flagged 5 cells; on the other 37 it was right 97.3%" counted the confidence threshold
    alone, while wbc classify (predictions.csv's review column) also flags colours unlike the training images, a
    second cell in view, ...: 6 flagged there. Here the most confident cell is flagged as out of distribution."""
    import wbc.classify
    from wbc.evaluate import evaluate

    real = wbc.classify.classify_paths

    def one_more_flag(*args, **kwargs):  # type: ignore[no-untyped-def]
        res = real(*args, **kwargs)
        p = max(res.predictions, key=lambda p: p.confidence)
        p.review, p.ood = True, True
        p.reasons.append("colours unlike the training images (OOD score 9.9)")
        return res

    monkeypatch.setattr(wbc.classify, "classify_paths", one_more_flag)
    clf = load_model(env["model"])
    clf.info.review_threshold = 0.15  # the tiny model states 0.13-0.18: some cells pass the threshold
    m = evaluate(env["data"], clf, tmp_path / "o", n_boot=100, cams_per_class=0, gallery_size=1)
    rows = [r for r in csv.DictReader((tmp_path / "o" / "predictions.csv").open()) if r["correct"]]
    flagged = [r for r in rows if r["review"] == "true"]
    sel = m["selective"]
    assert sel["flagged_any"] == len(flagged) == sel["flagged"] + 1 and sel["flagged_other"] == 1
    signed = [r["correct"] == "true" for r in rows if r["review"] == "false"]
    assert sel["accepted_any_accuracy"] == pytest.approx(np.mean(signed))
    text = " ".join((tmp_path / "o" / "report.html").read_text().split())
    assert f"Here it flagged <b>{len(flagged)} cells" in text and f"on the other {len(signed)} cells" in text
    assert f"{sel['flagged']} below the threshold and 1 for another reason" in text


def test_compare_two_models(env: dict[str, Path], tmp_path: Path) -> None:
    weak = build_tiny_model(tmp_path / "weak.onnx", env["train"], model_id="tiny-weak", seed=5, c_reg=0.0005)
    res = CliRunner().invoke(
        app,
        [
            "evaluate",
            str(env["data"]),
            "--compare",
            str(env["model"]),
            str(weak),
            "--output",
            str(tmp_path / "cmp"),
            "--bootstrap",
            "200",
        ],
    )
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert r["n"] == 96
    mc = r["mcnemar"]
    assert mc["only_a_correct"] + mc["only_b_correct"] + mc["both_correct"] + mc["both_wrong"] == 96
    diff = r["model_a"]["accuracy"] - r["model_b"]["accuracy"]
    assert r["accuracy_difference"]["difference"] == pytest.approx(diff)
    assert r["accuracy_difference"]["ci"][0] <= diff <= r["accuracy_difference"]["ci"][1]
    assert (tmp_path / "cmp" / "comparison.html").is_file()


def test_compare_says_what_it_left_out(env: dict[str, Path], tmp_path: Path) -> None:
    """--compare on a folder with an unreadable file and a label the models do not know spoke of the cells it scored
    only: the terminal and the page said nothing of the rest, and comparison.json listed unreadable paths without a
    reason. wbc evaluate reports all of them."""
    res = CliRunner().invoke(app, ["evaluate", str(env["data"]), "--compare", str(env["model"]), str(env["model"]),
                                   "-o", str(tmp_path / "cmp"), "--bootstrap", "100"])
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert r["n"] == 96 and r["n_images"] == 9 * 12 + 1 and r["not_scored"] == {"smudge": 12}
    [(path, why)] = r["unreadable"]
    assert path.endswith("broken.png") and "broken.png" in why and why != path
    assert [Path(p).name for p, _ in r["skipped"]] == ["notes.txt"]
    out = " ".join(res.output.split())
    assert "broken.png" in out and "12 cells with labels that the two models do not both answer among" in out
    page = " ".join((tmp_path / "cmp" / "comparison.html").read_text().split())
    assert "Of the 109 images given, 1 could not be read (listed below) and 12 have labels" in page
    assert "(smudge 12)" in page and "broken.png" in page


@pytest.mark.browser
@pytest.mark.slow
def test_report_images_load_in_chromium(evaluated: tuple[dict, Path]) -> None:
    """Open report.html in real headless Chromium (offline) and check that every picture decodes."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} not found (Debian: apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")
    _, out = evaluated
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
            ],
        )
        try:
            page = browser.new_page()
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto((out / "report.html").resolve().as_uri(), wait_until="load")
            images = page.evaluate("""() => Array.from(document.images).map(
                i => ({src: i.src.slice(0, 30), ok: i.complete && i.naturalWidth > 0, w: i.naturalWidth}))""")
        finally:
            browser.close()
    assert len(images) >= 20
    bad = [i for i in images if not i["ok"]]
    assert not bad, bad
    assert all(not u.startswith("http") for u in requests), requests


def test_a_refitted_head_offers_no_stale_class_activation_maps(env: dict[str, Path], tmp_path: Path) -> None:
    """`wbc adapt --method head` keeps its head in the metadata; the graph's maps are the old head's (wbc 0.26.0 drew
    them as the evidence for the new head's answers)."""
    from wbc.model import write_model

    clf = load_model(env["model"])
    assert "cam" in clf.outputs
    info = clf.info
    w = np.zeros((len(CLASSES), 12), np.float32)
    info.head = {"weight": w.tolist(), "bias": np.arange(len(CLASSES), dtype=np.float32).tolist()}
    adapted = load_model(write_model(tmp_path / "head.onnx", env["model"].read_bytes(), info))
    assert "cam" not in adapted.outputs and "cam" not in adapted.run(np.zeros((1, SIZE, SIZE, 3), np.uint8), ("cam",))
    assert adapted.run(np.zeros((2, SIZE, SIZE, 3), np.uint8))["logits"].argmax(1).tolist() == [7, 7]


#: A run's training options, as `wbc train` writes them to config.json and into its model's metadata.
RUN_CONFIG = {"data": "cells", "model": "tiny", "seed": 0, "split_seed": 0, "threads": 2}


def _run_folder(run: Path, model: Path, samples: list[Sample], root: Path) -> Path:
    """A run folder as `wbc train` leaves it: manifest.csv, config.json and a model.onnx trained with those options
    (another ``threads``, as a resumed run may have); returns the model."""
    run.mkdir(parents=True, exist_ok=True)
    write_manifest(run / "manifest.csv", samples, root=root)
    (run / "config.json").write_text(json.dumps(RUN_CONFIG))
    return _with_info(model, run / "model.onnx", extra={"config": {**RUN_CONFIG, "threads": 8}})


def _with_info(src: Path, dst: Path, **changes: object) -> Path:
    """A copy of the model at ``src`` with fields of its ModelInfo changed."""
    from dataclasses import replace

    m = onnx.load(str(src))
    for p in m.metadata_props:
        if p.key == METADATA_KEY:
            p.value = replace(ModelInfo.from_json(p.value), **changes).to_json()
    onnx.save(m, str(dst))
    return dst


def test_calibration_error_is_that_of_the_reliability_chart(env: dict[str, Path], tmp_path: Path) -> None:
    """An adapted model states probabilities re-weighted by the lab's class prior: ece.calibrated, the summary
    sentence and the chart's panel all describe those (wbc 0.27.0 printed softmax(logits / T)'s error, 37.8 points,
    over bars whose error was 17.5)."""
    import re

    from wbc.evaluate import evaluate

    prior = {c: 0.3 if c == "neutrophil" else 0.1 for c in CLASSES}
    model = _with_info(env["model"], tmp_path / "prior.onnx", class_prior=prior)
    r = evaluate(env["data"], load_model(model), tmp_path / "o", n_boot=100, cams_per_class=0, gallery_size=2)
    rb = r["reliability"]
    n = sum(rb["count"])
    ece = sum(c / n * abs(a - f) for c, a, f in zip(rb["count"], rb["accuracy"], rb["confidence"], strict=True) if c)
    assert r["ece"]["calibrated"] == pytest.approx(ece)
    assert abs(r["ece"]["temperature_only"] - ece) > 0.01  # the prior moved the stated confidence
    html = (tmp_path / "o" / "report.html").read_text()
    said = re.search(r"differs from that confidence by <b>([0-9.]+) percentage points", html)
    assert said and float(said.group(1)) == pytest.approx(100 * ece, abs=0.05)


def test_compare_honours_the_label_set_tta_and_reframing(
    env: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--compare A B --classes 5part` compared the two models over all eight classes, and dropped --tta and
    --no-reframe, without a word (wbc 0.27.0); --model beside --compare did nothing."""
    import wbc.evaluate.compare as cmp
    from wbc.labels import WBC5

    seen: list[tuple[tuple[str, ...], int | None, bool]] = []
    real = cmp.classify_samples

    def spy(samples, clf, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append((tuple(clf.label_set), clf.tta, kwargs.get("reframe", True)))
        return real(samples, clf, *args, **kwargs)

    monkeypatch.setattr(cmp, "classify_samples", spy)
    weak = build_tiny_model(tmp_path / "weak.onnx", env["train"], model_id="w", seed=5, c_reg=0.0005)
    res = CliRunner().invoke(app, ["evaluate", str(env["data"]), "--compare", str(env["model"]), str(weak),
                                   "--classes", "5part", "--tta", "2", "--no-reframe", "-o", str(tmp_path / "c"),
                                   "--bootstrap", "100"])
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "c" / "comparison.json").read_text())
    assert r["n"] == 5 * 12 and set(r["model_a"]["recall"]) <= set(WBC5) and set(r["classes"]) == set(WBC5)
    assert [(set(ls), t, rf) for ls, t, rf in seen] == [(set(WBC5), 2, False)] * 2
    res = CliRunner().invoke(app, ["evaluate", str(env["data"]), "--compare", str(env["model"]), str(weak),
                                   "--model", str(weak), "-o", str(tmp_path / "d")])
    assert res.exit_code != 0 and "--model has no effect with --compare" in str(res.exception)
    assert not (tmp_path / "d").exists()


def test_gradcam_explains_the_view_that_was_answered(env: dict[str, Path], tmp_path: Path) -> None:
    """The overlays were computed on the file plainly resized, not on the cell wbc classify answered (re-framed): for
    cells small in a wide frame the network often answered that input otherwise than the caption says."""
    from wbc.classify import read_cell
    from wbc.evaluate import evaluate
    from wbc.io import read_image, write_image
    from wbc.reframe import framing_stats_of

    clf = load_model(env["model"])
    size, framing = clf.info.input_size, framing_stats_of(clf)
    wide = tmp_path / "wide"
    for f in sorted(env["data"].glob("*/*.png")):
        if f.parent.name not in CLASSES or f.name == "broken.png":
            continue
        img = read_image(f)
        canvas = np.full((144, 144, 3), img[0, 0], np.uint8)
        canvas[48:96, 48:96] = img
        q = wide / f.parent.name / f.name
        write_image(q, canvas)
        if np.array_equal(read_cell(q, size, framing), read_cell(q, size)):  # kept: the cells re-framing changes
            q.unlink()
    files = sorted(wide.glob("*/*.png"))
    per_class = {c.name: len(list(c.iterdir())) for c in wide.iterdir() if any(c.iterdir())}
    assert len(files) >= 5
    fed: list[np.ndarray] = []
    run = clf.run

    def spy(cells: np.ndarray, want: tuple[str, ...] = ("logits",)) -> dict[str, np.ndarray]:
        if "cam" in want:
            fed.extend(np.asarray(cells))
        return run(cells, want)

    clf.run = spy  # type: ignore[method-assign]
    evaluate(wide, clf, tmp_path / "o", n_boot=100, cams_per_class=2, gallery_size=1)
    framed = [read_cell(f, size, framing) for f in files]
    assert len(fed) == sum(min(2, n) for n in per_class.values())
    assert all(any(np.array_equal(cell, v) for v in framed) for cell in fed)


def test_class_activation_maps_averaged_over_views_are_turned_back() -> None:
    """With --tta the answer averages flips/rotations; each view's map is turned back onto the cell before the mean."""
    from wbc.evaluate import view_averaged_cams

    class Pointwise:  # a "network" whose one map is the image's red channel: every view's map, turned back, is it
        def run(self, cells: np.ndarray, want: tuple[str, ...] = ("cam",)) -> dict[str, np.ndarray]:
            return {"cam": cells[:, None, :, :, 0].astype(np.float32)}

    cells = np.random.default_rng(0).integers(0, 255, (2, 6, 6, 3), np.uint8)
    for views in (1, 2, 4, 8):
        got = view_averaged_cams(Pointwise(), cells, views)  # type: ignore[arg-type]
        assert np.allclose(got, cells[:, None, :, :, 0]), views


def test_only_a_run_s_own_model_is_said_never_to_have_seen_its_test_cells(env: dict[str, Path], tmp_path: Path) -> None:
    """The report said "had never seen them" for any manifest's test rows, here the very images the model was fitted
    on (another run's split; the shipped model on a lab's own manifest is the same case)."""
    from wbc.evaluate import evaluate

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    files = [f for f in sorted(env["train"].glob("*/*.png")) if f.parent.name in ("lymphocyte", "neutrophil")]
    write_manifest(foreign / "manifest.csv", [Sample(f, f.parent.name, "test", -1, "") for f in files], root=tmp_path)
    m = evaluate(foreign / "manifest.csv", load_model(env["model"]), tmp_path / "o", root=tmp_path, n_boot=100,
                 cams_per_class=0, gallery_size=1)
    html = (tmp_path / "o" / "report.html").read_text()
    assert "had never seen" not in html and "held out only for the model that run trained" in html
    assert m["split"] == "test" and m["own_run"] is False
    own = _run_folder(tmp_path / "own_run", env["model"], [Sample(f, f.parent.name, "test", -1, "") for f in files],
                      tmp_path)  # now the run's own model
    m = evaluate(own.parent / "manifest.csv", load_model(own), tmp_path / "own", root=tmp_path,
                 n_boot=100, cams_per_class=0, gallery_size=1)
    html = (tmp_path / "own" / "report.html").read_text()
    assert m["own_run"] is True and "had never seen" in html and "held out only" not in html


def test_a_run_s_own_training_and_calibration_rows_carry_a_caution(env: dict[str, Path], tmp_path: Path) -> None:
    """--split all scored the run's training rows with no word anywhere; --split val (where the temperature, review
    threshold and best epoch were fitted) too; --split train had a terminal note only. Now the terminal, metrics.json
    and the report say so, and only the run's own test rows count as held out."""
    files = [f for f in sorted(env["data"].glob("*/*.png")) if f.parent.name in CLASSES and f.name != "broken.png"]
    run = tmp_path / "run"
    splits = ("train", "val", "test")
    _run_folder(run, env["model"], [Sample(f, f.parent.name, splits[i % 3], -1, "") for i, f in enumerate(files)],
                tmp_path)
    runner = CliRunner()
    for split, held_out in (("all", False), ("val", False), ("test", True)):
        out = tmp_path / f"o_{split}"
        res = runner.invoke(app, ["evaluate", str(run / "manifest.csv"), "--split", split, "--data-root", str(tmp_path),
                                  "-o", str(out), "--bootstrap", "100"])
        assert res.exit_code == 0, res.output
        m = json.loads((out / "metrics.json").read_text())
        html = (out / "report.html").read_text()
        assert m["own_run"] is True and m["held_out"] is held_out, split
        if held_out:
            assert m["caution"] is None and "not held-out" not in res.output and "had never seen" in html
            continue
        assert "not held-out accuracy" in " ".join(res.output.split()), split
        assert "not held out from it" in m["caution"] and "too optimistic" in html and "had never seen" not in html
        assert ("train rows trained" in m["caution"]) is (split == "all") and "val rows chose" in m["caution"]


def test_a_file_listed_twice_in_a_manifest_is_scored_once(env: dict[str, Path], tmp_path: Path) -> None:
    """A manifest listing one file three times scored it three times (n and the class's support grew, every interval
    narrowed), and one listed under two labels was scored right once and wrong once, with no word anywhere."""
    from wbc.evaluate import evaluate, load_eval_data

    files = [f for f in sorted(env["data"].glob("*/*.png")) if f.parent.name in CLASSES and f.name != "broken.png"]
    rows = [Sample(f, f.parent.name, "test", -1, "") for f in files]
    twice, clash = rows[0], rows[-1]
    assert clash.label == "platelet"
    listed = [*rows, twice, twice, Sample(clash.path, "lymphocyte", "test", -1, "")]
    write_manifest(tmp_path / "m.csv", listed, root=tmp_path)
    ed = load_eval_data(tmp_path / "m.csv", "test", root=tmp_path)
    assert len(ed.samples) == len(rows) - 1 and Path(clash.path) not in {Path(x.path) for x in ed.samples}
    assert [why.split(":")[0] for _, why in ed.repeated] == [
        "listed 2 times with different labels (lymphocyte, platelet)", "listed again with the same label",
        "listed again with the same label"]
    m = evaluate(ed, load_model(env["model"]), tmp_path / "o", n_boot=100, cams_per_class=0, gallery_size=1)
    assert m["n"] == len(rows) - 1 and m["per_class"][twice.label]["support"] == 12
    assert len(m["repeated"]) == 3 and sum("different labels" in why for _, why in m["repeated"]) == 1
    text = " ".join((tmp_path / "o" / "report.html").read_text().split())
    assert "The manifest has 2 rows naming a file already listed, with the same label (scored once), and 1 file " \
        "listed with different labels (not scored)" in text
    res = CliRunner().invoke(app, ["evaluate", str(tmp_path / "m.csv"), "--data-root", str(tmp_path), "--model",
                                   str(env["model"]), "-o", str(tmp_path / "cli"), "--bootstrap", "100"])
    assert res.exit_code == 0 and "2 rows naming a file already listed" in " ".join(res.output.split()), res.output


def test_a_run_folder_without_its_model_means_its_manifest(env: dict[str, Path], tmp_path: Path) -> None:
    """`wbc evaluate runs/default`, as the docs show it, failed in every checkout with "no images in class folders":
    runs/default/model.onnx is not committed, and a run folder was its manifest only beside its model. A folder
    holding manifest.csv and no class folders is now its manifest, scored with the shipped model (and said so)."""
    from wbc.evaluate import resolve_data_path

    run = tmp_path / "run"
    (run / "fold_0").mkdir(parents=True)  # sub-folders without images do not make a class-per-folder set
    files = [f for f in sorted(env["data"].glob("*/*_000.png")) if f.parent.name in CLASSES]
    write_manifest(run / "manifest.csv", [Sample(f, f.parent.name, "test", -1, "") for f in files], root=tmp_path)
    assert resolve_data_path(run) == run / "manifest.csv"
    cells = tmp_path / "cells"  # a class-per-folder set stays one, a manifest.csv in it or not
    (cells / "neutrophil").mkdir(parents=True)
    shutil.copy(files[0], cells / "neutrophil" / "a.png")
    (cells / "manifest.csv").write_text("path,label\n")
    assert resolve_data_path(cells) == cells
    res = CliRunner().invoke(app, ["evaluate", str(run), "--data-root", str(tmp_path), "-o", str(tmp_path / "o"),
                                   "--bootstrap", "100"])
    assert res.exit_code == 0, (res.output, res.exception)
    assert "no model.onnx beside" in " ".join(res.output.split())
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["n"] == len(files)


def test_refitted_temperature_is_fitted_over_the_chosen_classes(
    env: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--refit-temperature with --classes 5part fitted T on all eight classes' logits and val cells (ig,
    erythroblast, platelet included), and re-framed them whatever --no-reframe said."""
    import wbc.evaluate as ev
    from wbc.evaluate import evaluate

    files = [f for f in sorted(env["data"].glob("*/*.png")) if f.parent.name in CLASSES and f.name != "broken.png"]
    run = tmp_path / "run"
    run.mkdir()
    samples = [Sample(f, f.parent.name, "test" if i % 2 else "val", -1, "") for i, f in enumerate(files)]
    write_manifest(run / "manifest.csv", samples, root=tmp_path)
    reframed: list[bool] = []
    real = ev.classify_samples

    def spy(samples, clf, *args, **kwargs):  # type: ignore[no-untyped-def]
        reframed.append(kwargs.get("reframe", args[3] if len(args) > 3 else True))
        return real(samples, clf, *args, **kwargs)

    monkeypatch.setattr(ev, "classify_samples", spy)
    m = evaluate(run / "manifest.csv", load_model(env["model"]).with_classes("5part"), tmp_path / "o", root=tmp_path,
                 n_boot=100, refit_temperature=True, cams_per_class=0, gallery_size=1, reframe=False)
    val5 = sum(s.split == "val" and s.label in ("basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil")
               for s in samples)
    assert f"({val5} cells)" in m["ece"]["refit"]["fitted_on"] and val5 == 30
    assert reframed == [False, False]


def test_compare_without_data_takes_the_manifest_of_a_s_run_for_a_model_file_too(
    env: dict[str, Path], tmp_path: Path
) -> None:
    """The docs say `--compare A B` without DATA uses A's manifest.csv; with A given as RUN/model.onnx (a file) the
    command said "give DATA" and only a run folder worked."""
    files = [f for f in sorted(env["data"].glob("*/*.png")) if f.parent.name in CLASSES and f.name != "broken.png"]
    run = tmp_path / "run"
    run.mkdir()
    write_manifest(run / "manifest.csv", [Sample(f, f.parent.name, "test" if i % 4 == 0 else "train", -1, "")
                                          for i, f in enumerate(files)], root=tmp_path)
    shutil.copy(env["model"], run / "model.onnx")
    res = CliRunner().invoke(app, ["evaluate", "--compare", str(run / "model.onnx"), str(run / "model.onnx"),
                                   "--data-root", str(tmp_path), "-o", str(tmp_path / "cmp")])
    assert res.exit_code == 0, (res.output, res.exception)
    assert json.loads((tmp_path / "cmp" / "comparison.json").read_text())["n"] == len(files[::4])
    res = CliRunner().invoke(app, ["evaluate", "--compare", str(env["model"]), str(env["model"]), "-o",
                                   str(tmp_path / "cmp2")])
    assert "give DATA" in str(res.exception) and "no manifest.csv beside A" in str(res.exception)


def test_a_model_beside_a_csv_is_not_taken_for_its_run_s_own(env: dict[str, Path], tmp_path: Path) -> None:
    """Any model file beside any CSV counted as that CSV's run: `wbc adapt --data lab/labelled.csv --output
    lab/adapted.onnx` (trained on every row, whatever its split), then `wbc evaluate lab/labelled.csv --model
    lab/adapted.onnx` said the model had never seen cells it was fine-tuned on. Only a run's own files now show it."""
    from wbc.evaluate import evaluate, is_own_run

    files = [f for f in sorted(env["train"].glob("*/*.png")) if f.parent.name in ("lymphocyte", "neutrophil")]
    rows = [Sample(f, f.parent.name, "test", -1, "") for f in files]
    lab = tmp_path / "lab"
    lab.mkdir()
    write_manifest(lab / "labelled.csv", rows, root=tmp_path)
    shutil.copy(env["model"], lab / "model.onnx")
    m = evaluate(lab / "labelled.csv", load_model(lab / "model.onnx"), tmp_path / "o", root=tmp_path, n_boot=100,
                 cams_per_class=0, gallery_size=1)
    html = " ".join((tmp_path / "o" / "report.html").read_text().split())
    assert m["own_run"] is False and m["held_out"] is False and m["caution"].startswith("Caution: nothing shows")
    assert "had never seen" not in html and "nothing shows that this split was made by the run" in html
    # a manifest.csv beside a model file is no run either, without the run's config.json or checkpoint
    write_manifest(lab / "manifest.csv", rows, root=tmp_path)
    assert not is_own_run(lab / "manifest.csv", load_model(lab / "model.onnx"))
    # the run wbc train leaves: its config.json holds the model's training options
    model = _run_folder(tmp_path / "run", env["model"], rows, tmp_path)
    manifest = model.parent / "manifest.csv"
    m = evaluate(manifest, load_model(model), tmp_path / "own", root=tmp_path, n_boot=100, cams_per_class=0,
                 gallery_size=1)
    assert m["own_run"] is True and m["held_out"] is True and m["caution"] is None
    assert "had never seen" in (tmp_path / "own" / "report.html").read_text()
    for changes in ({"extra": {"config": {**RUN_CONFIG, "seed": 1}}},  # another run's model copied in
                    {"extra": {"config": RUN_CONFIG, "adapt": {"kind": "labels"}}}):  # adapted since, in place
        _with_info(env["model"], model, **changes)
        assert not is_own_run(manifest, load_model(model)), changes
    # `wbc ensemble` writes no config.json: its checkpoint beside the model shows the run
    _with_info(env["model"], model, extra={"config": RUN_CONFIG})
    (model.parent / "config.json").unlink()
    assert not is_own_run(manifest, load_model(model))
    (model.parent / "ensemble.pt").write_bytes(b"checkpoint")
    assert is_own_run(manifest, load_model(model))


def test_val_rows_of_a_run_folder_without_its_model_are_noted_as_in_sample(
    env: dict[str, Path], tmp_path: Path
) -> None:
    """`wbc evaluate runs/default --split val` (no model.onnx in a checkout: the shipped model, whose temperature and
    review threshold those val rows fitted) printed no in-sample note, though the docs say it does, and the caution
    spoke of the manifest's "test rows"."""
    from wbc.evaluate.report import caution_text

    files = [f for f in sorted(env["data"].glob("*/*_00[0-2].png")) if f.parent.name in CLASSES]
    run = tmp_path / "run"
    run.mkdir()
    write_manifest(run / "manifest.csv", [Sample(f, f.parent.name, "val", -1, "") for f in files], root=tmp_path)
    (run / "config.json").write_text(json.dumps(RUN_CONFIG))
    res = CliRunner().invoke(app, ["evaluate", str(run), "--split", "val", "--data-root", str(tmp_path), "-o",
                                   str(tmp_path / "o"), "--bootstrap", "100"])
    assert res.exit_code == 0, (res.output, res.exception)
    out = " ".join(res.output.split())
    assert f"{len(files)} val rows chose the run's model's epoch" in out and "not held-out accuracy" in out
    assert "the shipped model's too if this is the PBC split" in out
    caution = json.loads((tmp_path / "o" / "metrics.json").read_text())["caution"]
    assert "test rows" not in caution and "its val rows chose and calibrated that run's model" in caution
    assert "calibrated the shipped model too" in caution
    text = caution_text({"data_kind": "manifest", "own_run": False, "split": "val", "row_splits": {"val": 6}})
    assert "test rows" not in text and "val rows" in text and "shipped" not in text
    assert "its test rows are held out only" in caution_text({"data_kind": "manifest", "own_run": False,
                                                              "split": "test", "row_splits": {"test": 6}})


def test_the_shipped_model_knows_its_run_s_split_wherever_the_manifest_is(tmp_path: Path) -> None:
    """The shipped model is scored without its run folder (`wbc evaluate runs/default/manifest.csv`, no model.onnx
    committed), so before wbc 0.33.0 the report cautioned that "this split was not made by the run that trained this
    model" beside its own held-out test rows. It records its split's hash: that manifest, anywhere, is its run's; one
    row moved to another split is not. Only the manifest is read, no image."""
    from wbc.data import read_manifest
    from wbc.evaluate import is_own_run

    repo = Path(__file__).resolve().parents[1]
    shipped = load_model()
    assert is_own_run(repo / "runs" / "default" / "manifest.csv", shipped)
    rows = read_manifest(repo / "runs" / "default" / "manifest.csv")
    elsewhere = tmp_path / "copy.csv"
    write_manifest(elsewhere, rows, root=Path(os.environ.get("WBC_DATA_DIR", tmp_path)))
    assert is_own_run(elsewhere, shipped)
    i = next(i for i, s in enumerate(rows) if s.split == "test")
    moved = [*rows[:i], Sample(rows[i].path, rows[i].label, "train", rows[i].fold, rows[i].sha1), *rows[i + 1:]]
    write_manifest(tmp_path / "moved.csv", moved, root=Path(os.environ.get("WBC_DATA_DIR", tmp_path)))
    assert not is_own_run(tmp_path / "moved.csv", shipped)


def test_data_without_a_label_to_score_is_refused_before_any_image_is_read(
    env: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder whose class folders are all unknown (misspelt) was classified in full, then refused with nothing
    written: the labels are known before any image is read, so the one-line refusal now comes first."""
    import wbc.evaluate
    import wbc.evaluate.compare
    from wbc.errors import WbcError

    data = tmp_path / "unk"
    shutil.copytree(env["data"] / "smudge", data / "smudge")
    clf = load_model(env["model"])

    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("images were classified before the labels were checked")

    with monkeypatch.context() as mp:
        mp.setattr(wbc.evaluate, "classify_samples", no_work)
        mp.setattr(wbc.evaluate.compare, "classify_samples", no_work)
        with pytest.raises(WbcError, match=r"none of the labels in the data \(smudge\) is a class of the model"):
            wbc.evaluate.evaluate(data, clf, tmp_path / "out", n_boot=0)
        with pytest.raises(WbcError, match="no cell has a label that both models answer among"):
            wbc.evaluate.compare.compare(wbc.evaluate.load_eval_data(data), clf, clf, tmp_path / "cmp")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    # labels to score, but every such file unreadable: said as that, not as labels the model does not know
    (data / "neutrophil").mkdir()
    (data / "neutrophil" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(WbcError) as err:
        wbc.evaluate.evaluate(data, clf, tmp_path / "out", n_boot=0)
    msg = str(err.value)
    assert "none of the images labelled with a class to score could be read" in msg and "broken.png" in msg
    assert "\n" not in msg


def test_compare_on_labelled_images_all_unreadable_says_so_as_evaluate_does(env: dict[str, Path],
                                                                             tmp_path: Path) -> None:
    """Class-labelled images all unreadable (truncated), one of an unknown class readable: `wbc evaluate --compare`
    said no cell had a label both models answer (before wbc 0.35.0), sending the user after the folder names; now
    it says what `wbc evaluate` says, naming the first broken file, in one line."""
    data = tmp_path / "unr"
    for folder, name in (("neutrophil", "n.png"), ("lymphocyte", "l.png")):
        (data / folder).mkdir(parents=True)
        png = (env["data"] / folder).glob("*.png").__next__().read_bytes()
        (data / folder / name).write_bytes(png[: len(png) // 3])
    shutil.copytree(env["data"] / "smudge", data / "smudge")
    want = "none of the images labelled with a class to score could be read (first problem: "
    for extra in ([], ["--compare", str(env["model"]), str(env["model"])]):
        res = CliRunner().invoke(app, ["evaluate", str(data), *extra, "--output", str(tmp_path / f"o{len(extra)}")])
        msg = str(res.exception)  # a WbcError: `wbc` prints it as one "error:" line
        assert type(res.exception).__name__ == "WbcError" and want in msg and "l.png" in msg, msg
        assert "\n" not in msg


def test_a_run_stopped_while_its_report_is_built_leaves_the_earlier_run_s_files(
    env: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """predictions.csv (comparison.json and .csv with --compare) was written before the slow report: a re-run stopped
    there (Ctrl-C, a matplotlib error) left its predictions beside the earlier run's metrics.json. Files are now
    written once everything is built."""
    import wbc.evaluate
    import wbc.evaluate.compare
    import wbc.evaluate.report

    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(env["data"] / "neutrophil", a / "neutrophil")
    shutil.copytree(env["data"] / "lymphocyte", b / "lymphocyte")
    clf = load_model(env["model"])
    out, cmp = tmp_path / "out", tmp_path / "cmp"
    wbc.evaluate.evaluate(a, clf, out, n_boot=0, cams_per_class=0)
    wbc.evaluate.compare.compare(wbc.evaluate.load_eval_data(a), clf, clf, cmp)
    before = {p: p.read_bytes() for d in (out, cmp) for p in d.iterdir()}
    assert {p.name for p in before} == {"metrics.json", "predictions.csv", "report.html", "comparison.json",
                                        "comparison.csv", "comparison.html"}

    def stopped(*args: object, **kwargs: object) -> None:
        raise RuntimeError("stopped while the report was built")

    monkeypatch.setattr(wbc.evaluate.report, "build_report", stopped)
    monkeypatch.setattr(wbc.evaluate.report, "render", stopped)
    with pytest.raises(RuntimeError, match="stopped"):
        wbc.evaluate.evaluate(b, clf, out, n_boot=0, cams_per_class=0)
    with pytest.raises(RuntimeError, match="stopped"):
        wbc.evaluate.compare.compare(wbc.evaluate.load_eval_data(b), clf, clf, cmp)
    assert {p: p.read_bytes() for d in (out, cmp) for p in d.iterdir()} == before


def test_a_split_other_than_test_or_all_on_a_folder_is_refused(
    env: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`wbc evaluate FOLDER --split val` scored every image of the folder with no word (metrics.json: split null): a
    folder has no splits, so the option is refused in one line before any work; the default test and all stay silent."""
    import wbc.model
    from wbc.errors import WbcError
    from wbc.evaluate import load_eval_data

    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("work began although --split cannot apply to a folder")

    monkeypatch.setattr(wbc.model, "load_model", no_work)
    for extra in ([], ["--compare", str(env["model"]), str(env["model"])]):
        res = CliRunner().invoke(app, ["evaluate", str(env["data"]), "--split", "val", "-o", str(tmp_path / "o"),
                                       *extra])
        assert isinstance(res.exception, WbcError), (extra, res.output, res.exception)
        msg = str(res.exception)
        assert str(env["data"]) in msg and "--split val" in msg and "no splits" in msg and "\n" not in msg
    assert not (tmp_path / "o" / "metrics.json").exists() and not (tmp_path / "o" / "comparison.json").exists()
    assert len(load_eval_data(env["data"], "test").samples) == len(load_eval_data(env["data"], "all").samples)


def test_compare_cautions_when_a_model_may_have_trained_on_the_cells(env: dict[str, Path], tmp_path: Path) -> None:
    """`wbc evaluate --compare` wrote no caution for either model, though `wbc evaluate` alone writes one: a folder's
    cells, or another run's split, may have trained one of them, and the page still called its lead "unlikely to be
    chance". Each model's caution is now in comparison.json, the terminal and the page, beside the verdict."""
    weak = build_tiny_model(tmp_path / "weak.onnx", env["train"], model_id="tiny-weak", seed=5, c_reg=1e-7)
    res = CliRunner().invoke(app, ["evaluate", str(env["data"]), "--compare", str(env["model"]), str(weak),
                                   "-o", str(tmp_path / "cmp")])
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert r["caution"]["a"].startswith("Caution") and r["caution"]["b"].startswith("Caution")
    assert r["mcnemar"]["p_value"] < 0.05  # a lead the page would call unlikely to be chance, and no more
    page = " ".join((tmp_path / "cmp" / "comparison.html").read_text().split())
    assert "too optimistic" in page and "may come from cells that trained or calibrated model A or model B" in page
    out = " ".join(res.output.split())
    assert "note: model A" in out and "note: model B" in out and "too optimistic" in out
    # a run's manifest: its own model is held out on its test rows, another run's model (another split) is not
    files = [f for f in sorted(env["data"].glob("*/*.png")) if f.parent.name in CLASSES and f.name != "broken.png"]
    rows = [Sample(f, f.parent.name, ("train", "val", "test")[i % 3], -1, "") for i, f in enumerate(files)]
    own = _run_folder(tmp_path / "run", env["model"], rows, tmp_path)
    other = _with_info(env["model"], tmp_path / "other.onnx",
                       extra={"config": {**RUN_CONFIG, "seed": 1}, "split_hash": "0" * 16})
    res = CliRunner().invoke(app, ["evaluate", "--compare", str(own), str(other), "--data-root", str(tmp_path),
                                   "-o", str(tmp_path / "cmp2")])
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "cmp2" / "comparison.json").read_text())
    assert r["caution"]["a"] is None
    assert "nothing shows that this split was made by the run that trained this model" in r["caution"]["b"]
    page = " ".join((tmp_path / "cmp2" / "comparison.html").read_text().split())
    assert "B:</b> Caution: nothing shows" in page and "A:</b>" not in page


def test_no_test_rows_in_a_run_s_manifest_is_not_answered_with_split_all_alone(env: dict[str, Path],
                                                                              tmp_path: Path) -> None:
    """A run trained without test rows: `wbc evaluate RUN` suggested `--split all` for "every row", all of which trained
    or calibrated the run's model. It now says so. A lab's manifest without splits is no run's split: every row is
    scored, as a folder's images are (since wbc 0.37.0; before, it was refused and offered --split all)."""
    from wbc.errors import WbcError
    from wbc.evaluate import load_eval_data

    files = [f for f in sorted(env["data"].glob("*/*.png")) if f.parent.name in CLASSES and f.name != "broken.png"]
    run = tmp_path / "run"
    _run_folder(run, env["model"], [Sample(f, f.parent.name, ("train", "val")[i % 2]) for i, f in enumerate(files)],
                tmp_path)
    with pytest.raises(WbcError, match=r"no rows in split 'test' \(splits here: train, val; none of them is held out "
                                       r"from the run's model, which they trained or calibrated"):
        load_eval_data(run / "manifest.csv", root=tmp_path)
    write_manifest(tmp_path / "lab.csv", [Sample(f, f.parent.name) for f in files], root=tmp_path)
    whole = load_eval_data(tmp_path / "lab.csv", root=tmp_path)
    assert (len(whole.samples), whole.split) == (len(files), None)
    with pytest.raises(WbcError, match=r"--split val names rows of a run's manifest, and this one has no splits"):
        load_eval_data(tmp_path / "lab.csv", "val", root=tmp_path)


def test_a_run_trained_under_another_data_root_is_read_under_it(env: dict[str, Path], tmp_path: Path) -> None:
    """A run trained with --data-root writes its manifest relative to that root and recorded it nowhere: `wbc evaluate
    RUN` looked under $WBC_DATA_DIR and said only that no image could be read, naming a path under the wrong root.
    The message now names --data-root, and a run that records its root (config.json, since wbc 0.36.0) is read under
    it, which the terminal says; it is still the run's own split."""
    root = tmp_path / "lab_root"
    shutil.copytree(env["data"], root / "cells", ignore=shutil.ignore_patterns("broken.png", "notes.txt", "smudge"))
    files = sorted((root / "cells").glob("*/*.png"))
    run = tmp_path / "run"
    _run_folder(run, env["model"], [Sample(f, f.parent.name, ("train", "test")[i % 2]) for i, f in enumerate(files)],
                root)
    res = CliRunner().invoke(app, ["evaluate", str(run), "-o", str(tmp_path / "o")])
    assert res.exit_code == 1 and "none of the" in str(res.exception), res.output
    assert "check --data-root" in str(res.exception)
    (run / "config.json").write_text(json.dumps({**RUN_CONFIG, "data_root": str(root)}))
    res = CliRunner().invoke(app, ["evaluate", str(run), "-o", str(tmp_path / "o")])
    assert res.exit_code == 0, (res.output, res.exception)
    said = " ".join(res.output.split())
    assert f"reading them under {root}, the root its run was trained with" in said
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert m["n"] == len(files[1::2]) and m["own_run"] is True and m["caution"] is None


def test_a_labs_own_fold_column_is_not_said_to_have_trained_cross_validation_members(
    env: dict[str, Path], tmp_path: Path
) -> None:
    """A lab's ``Path,Label,Split,Fold`` manifest (its own folds 1, 2; no run made it) had its ``Fold`` read as wbc's
    cross-validation folds, and `wbc evaluate lab.csv --split all` said its val rows trained a run's members."""
    files = [f for f in sorted(env["data"].glob("*/*_00[0-1].png")) if f.parent.name in CLASSES][:4]
    (tmp_path / "lab.csv").write_text("Path,Label,Split,Fold\n" + "".join(
        f"{f},{f.parent.name},Val,{i % 2 + 1}\n" for i, f in enumerate(files)), encoding="utf-8")
    res = CliRunner().invoke(app, ["evaluate", str(tmp_path / "lab.csv"), "--split", "all", "--model",
                                   str(env["model"]), "-o", str(tmp_path / "o"), "--bootstrap", "100"])
    assert res.exit_code == 0, (res.output, res.exception)
    assert f"{len(files)} cells scored" in res.output and "cross-validation members" not in res.output, res.output
