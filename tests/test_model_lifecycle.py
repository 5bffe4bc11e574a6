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
