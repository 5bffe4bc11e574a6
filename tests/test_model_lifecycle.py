"""The model lifecycle's checks: `wbc export`/`export-weights`/`ensemble` reading checkpoints, `update_metadata`
writing metadata, `wbc quantize` recording what it measured."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import needs_torch
from wbc.errors import WbcError
from wbc.labels import CLASSES
from wbc.model import ModelInfo, load_model, update_metadata


def run_wbc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "wbc", *args], capture_output=True, text=True, timeout=600)


def _run_folder(run: Path, classes: list[str] | None = None) -> Path:
    """A finished run folder holding a float32 small_cnn ``best.pt`` with ``classes`` in its metadata."""
    from wbc.train.finetune import save_weights
    from wbc.train.models import create_model

    run.mkdir(parents=True, exist_ok=True)
    classes = list(CLASSES) if classes is None else classes
    net = create_model("small_cnn", len(classes), pretrained=False)
    info = ModelInfo(classes=classes, input_size=32, mean=[0.5] * 3, std=[0.25] * 3, model_id=f"tiny-{run.name}")
    save_weights(net, "small_cnn", info, run / "best.pt", half=False)
    (run / "manifest.csv").write_text("path,label,split,fold,sha1\n")  # what `wbc ensemble` asks of a run folder
    return run


@pytest.mark.parametrize("review_threshold", [98.6, float("nan")])
def test_update_metadata_refuses_what_the_loader_would_refuse_and_keeps_the_model(tmp_path: Path,
                                                                                   review_threshold: float) -> None:
    """`update_metadata(m, review_threshold=98.6)` (a percentage) replaced ``m`` with a model the loader refuses."""
    from tiny_models import mean_colour_model

    model = mean_colour_model(tmp_path / "m.onnx", 32, np.zeros((8, 3)), "tiny")
    update_metadata(model, version="1.0.0")  # writes the .json copy too
    before, json_before = model.read_bytes(), model.with_suffix(".json").read_text()
    with pytest.raises(WbcError, match="field review_threshold: a number between 0 and 1") as exc:
        update_metadata(model, review_threshold=review_threshold)
    assert str(exc.value).startswith(str(model)) and "\n" not in str(exc.value)
    assert model.read_bytes() == before and model.with_suffix(".json").read_text() == json_before
    with pytest.raises(WbcError, match="field version: a string"):
        update_metadata(model, version=1.3)  # was a TypeError from re.match
    assert load_model(model, threads=1).info.model_id == "tiny"


@needs_torch
def test_export_weights_refuses_the_run_folder_s_own_best_pt(tmp_path: Path) -> None:
    """`wbc export-weights RUN RUN/best.pt --overwrite` replaced the run's float32 best.pt with half-precision
    weights: the run folder was compared as a folder, not as the best.pt it is read as."""
    run = _run_folder(tmp_path / "run")
    best = (run / "best.pt").read_bytes()
    for source in (run, run / "best.pt"):
        r = run_wbc("export-weights", str(source), str(run / "best.pt"), "--overwrite")
        assert r.returncode == 1 and "best.pt: is the checkpoint itself" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and (run / "best.pt").read_bytes() == best


@needs_torch
def test_a_checkpoint_with_refused_metadata_is_one_line_naming_the_file(tmp_path: Path) -> None:
    """A checkpoint whose metadata fails a field check was "error: field classes: ..." without the file: in `wbc
    ensemble` of several runs, no word of which."""
    good = _run_folder(tmp_path / "good", ["a", "b"])
    bad = _run_folder(tmp_path / "bad", [""])
    for args in (("export", str(bad / "best.pt"), "-o", str(tmp_path / "m.onnx")),
                 ("export-weights", str(bad), str(tmp_path / "w.pt")),
                 ("ensemble", str(good), str(bad), "-o", str(tmp_path / "ens"))):
        r = run_wbc(*args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1, r.stderr
        assert str(bad / "best.pt") in lines[0] and "field classes" in lines[0], lines


@needs_torch
def test_a_pt_file_holding_a_bare_tensor_is_one_line_without_a_pytorch_warning(tmp_path: Path) -> None:
    """A .pt of a bare tensor printed PyTorch's two-line indexing UserWarning before the one-line error."""
    import torch

    pt = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), pt)
    for args in (("export", str(pt), "-o", str(tmp_path / "m.onnx")),
                 ("export-weights", str(pt), str(tmp_path / "w.pt"))):
        r = run_wbc(*args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1, r.stderr
        assert f"{pt}: not a wbc checkpoint (a Tensor" in lines[0]


@needs_torch
def test_adapt_s_weight_reader_names_the_file_for_refused_metadata_and_a_bare_tensor(tmp_path: Path) -> None:
    """`wbc adapt --checkpoint` reads weights with `load_weights`, which had neither check `load_checkpoint` got:
    refused metadata did not name the file, and a bare tensor printed PyTorch's indexing warning first."""
    import warnings

    import torch

    from wbc.train.finetune import load_weights

    bad = _run_folder(tmp_path / "bad", [""]) / "best.pt"
    with pytest.raises(WbcError, match="field classes") as exc:
        load_weights(bad)
    assert str(exc.value).startswith(f"{bad}: unreadable wbc metadata")
    pt = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), pt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the indexing UserWarning would be raised here
        with pytest.raises(WbcError, match=r"not a wbc checkpoint \(a Tensor, not a checkpoint dict\)"):
            load_weights(pt)


def _manifest_of(tmp_path: Path, relabel: dict[str, str] | None = None) -> Path:
    """Synthetic cells of two classes, 4 train and 4 val each, written as a manifest with labels ``relabel``-ed."""
    from wbc.data import Sample, scan_folder, write_manifest
    from wbc.synthetic import make_dataset

    cells = make_dataset(tmp_path / "cells", n_per_class=8, size=32, classes=["erythroblast", "neutrophil"])
    rows = [Sample(s.path, (relabel or {}).get(s.label, s.label), "train" if i % 2 else "val")
            for i, s in enumerate(scan_folder(cells).samples)]
    write_manifest(tmp_path / "manifest.csv", rows, root=tmp_path)
    return tmp_path / "manifest.csv"


def test_quantize_records_the_int8_model_s_own_validation_metrics(tmp_path: Path) -> None:
    """`wbc quantize` re-measured the int8 network on val but kept the float model's ``metrics`` (what `GET /model`
    shows): nothing is carried over that the manifest can measure; the float's are kept in the quantisation record."""
    from tiny_models import mean_colour_model
    from wbc.quantize import quantize_model

    model = mean_colour_model(tmp_path / "float.onnx", 32, np.random.default_rng(0).normal(0, 3, (8, 3)), "tiny")
    float_metrics = {"accuracy": 0.99, "n": 160, "split": "val"}
    update_metadata(model, metrics=float_metrics)
    quantize_model(model, _manifest_of(tmp_path), tmp_path / "int8.onnx", data_root=tmp_path, threads=1)
    info = load_model(tmp_path / "int8.onnx", threads=1).info
    q = info.extra["quantization"]
    assert info.metrics["accuracy"] == q["val_accuracy_int8"] and info.metrics["n"] == q["val_cells"] == 8
    assert info.metrics["split"] == "val" and set(info.metrics["recall"]) == set(info.classes)
    assert q["float_metrics"] == float_metrics and "measured" in q["metrics"]


def test_quantize_reads_labels_as_ood_fit_reads_them(tmp_path: Path) -> None:
    """Rows labelled as a dataset spells them (``NRBC``) were left out of the int8 calibration and the review
    threshold's re-fit without a word, while `wbc ood fit` reads them as ``erythroblast``."""
    from tiny_models import mean_colour_model

    model = mean_colour_model(tmp_path / "float.onnx", 32, np.random.default_rng(0).normal(0, 3, (8, 3)), "tiny")
    manifest = _manifest_of(tmp_path, {"erythroblast": "NRBC"})
    with manifest.open("a") as f:
        f.write("cells/neutrophil/x.png,Smudge cell,val,-1,\n")
    r = run_wbc("quantize", str(model), "--manifest", str(manifest), "-o", str(tmp_path / "int8.onnx"),
                "--per-class", "4", "--data-root", str(tmp_path), "--threads", "1")
    assert r.returncode == 0, r.stderr
    q = load_model(tmp_path / "int8.onnx", threads=1).info.extra["quantization"]
    assert q["val_cells"] == 8 and q["calibration_cells"] == 8 and q["labels_left_out"] == ["Smudge cell"]
    assert "rows labelled Smudge cell are of no class of the model's" in r.stdout + r.stderr


def test_quantize_s_val_summary_is_training_s() -> None:
    """`wbc quantize` records the summary `wbc train` records (:func:`wbc.calibration.val_summary`, one place)."""
    from wbc.evaluate.metrics import summary_metrics
    from wbc.quantize import val_summary

    rng = np.random.default_rng(0)
    y, pred = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    assert val_summary(y, pred, list("abcde")) == summary_metrics(y, pred, list("abcde"))
