"""`wbc train-segmenter` and `wbc train-detector`: where they write, and what they refuse before reading any data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import needs_torch

pytestmark = needs_torch


def run_wbc(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "wbc", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


def invoke(*args: str, cwd: Path) -> BaseException | None:
    """The exception a command ends with, run in-process in ``cwd`` (the CLI prints a WbcError as one line)."""
    import os

    from typer.testing import CliRunner

    from wbc.cli import app

    here = Path.cwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(app, list(args)).exception
    finally:
        os.chdir(here)


@pytest.mark.parametrize("command", ["train-segmenter", "train-detector"])
def test_trainers_refuse_an_existing_output_without_overwrite(tmp_path: Path, command: str) -> None:
    """Both export their first checkpoint, however poor, over whatever --output holds; train-segmenter's default
    --output was the shipped U-Net, so a trial run from the repository root replaced it. The default is now a run
    folder (train-segmenter: runs/segmenter/wbc_segmenter.onnx, as train-detector's runs/detector/...), and an
    existing --output is refused before any data is read unless --overwrite is given."""
    from wbc.errors import WbcError

    default = {"train-segmenter": "runs/segmenter/wbc_segmenter.onnx",
               "train-detector": "runs/detector/wbc_detector.onnx"}[command]
    for out in (tmp_path / default, tmp_path / "src" / "wbc" / "models" / "default" / Path(default).name):
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(b"sentinel")
    exc = invoke(command, "--iters", "1", "--data-root", str(tmp_path / "empty"), cwd=tmp_path)
    assert isinstance(exc, WbcError) and str(exc).startswith(f"{default}: exists") and "--overwrite" in str(exc)
    exc = invoke(command, "--iters", "1", "--data-root", str(tmp_path / "empty"), "--overwrite", cwd=tmp_path)
    assert isinstance(exc, WbcError) and ("not readable" in str(exc) or "not found" in str(exc))  # on to the data
    assert (tmp_path / default).read_bytes() == b"sentinel"


@pytest.mark.slow
@pytest.mark.real_data
def test_a_trial_train_segmenter_run_leaves_the_shipped_model_alone(real_data: Path, tmp_path: Path) -> None:
    """`wbc train-segmenter --iters 1` from the repository root replaced src/wbc/models/default/wbc_segmenter.onnx
    with an untrained U-Net, which `--segmenter learned` and `auto` then loaded."""
    shipped = tmp_path / "src" / "wbc" / "models" / "default" / "wbc_segmenter.onnx"
    shipped.parent.mkdir(parents=True)
    shipped.write_bytes(b"sentinel")
    r = run_wbc("train-segmenter", "--iters", "1", "--batch", "1", "--size", "64", "--data-root", str(real_data),
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert shipped.read_bytes() == b"sentinel"
    assert (tmp_path / "runs" / "segmenter" / "wbc_segmenter.onnx").is_file()


def test_train_detector_checks_init_and_its_data_first(tmp_path: Path) -> None:
    """A missing --init, a junk file or a classifier's .pt were tracebacks, and only after the data was loaded
    (about 20 s); a data root without BCCD was a FileNotFoundError traceback."""
    (tmp_path / "x.pt").write_bytes(b"not a checkpoint")
    classifier = Path(__file__).parents[1] / "src" / "wbc" / "models" / "default" / "wbc_classifier.pt"
    out = str(tmp_path / "d.onnx")
    for init in (tmp_path / "x.pt", tmp_path / "missing.pt", classifier):
        r = run_wbc("train-detector", "--iters", "1", "--init", str(init), "--data-root", str(tmp_path / "empty"),
                    "-o", out)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert f"{init}: not a detector checkpoint" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    from wbc.errors import WbcError

    exc = invoke("train-detector", "--iters", "1", "--data-root", str(tmp_path / "empty"), "-o", out, cwd=tmp_path)
    assert isinstance(exc, WbcError) and "empty/bccd/ImageSets/Main/test.txt: BCCD split not readable" in str(exc)
