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


def _bccd_root(root: Path, masks: tuple[str, ...]) -> Path:
    """A BCCD layout of one train and one val field (a 64 px field, one WBC box), with masks for ``masks``."""
    import cv2
    import numpy as np

    bccd = root / "bccd"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main", "masks"):
        (bccd / sub).mkdir(parents=True, exist_ok=True)
    for i, split in enumerate(("train", "val")):
        name = f"BloodImage_0000{i}"
        (bccd / "ImageSets" / "Main" / f"{split}.txt").write_text(name + "\n")
        (bccd / "Annotations" / f"{name}.xml").write_text(
            "<annotation><object><name>WBC</name><bndbox><xmin>20</xmin><ymin>20</ymin><xmax>44</xmax>"
            "<ymax>44</ymax></bndbox></object></annotation>")
        field = np.full((64, 64, 3), 220, np.uint8)
        cv2.circle(field, (32, 32), 10, (120, 40, 140), -1)
        cv2.imwrite(str(bccd / "JPEGImages" / f"{name}.jpg"), field)
        if split in masks:
            mask = np.zeros((64, 64), np.uint8)
            cv2.circle(mask, (32, 32), 12, 128, -1)
            cv2.circle(mask, (32, 32), 6, 255, -1)
            cv2.imwrite(str(bccd / "masks" / f"BloodImage_Mask_0000{i}.png"), mask)
    return root


@pytest.mark.parametrize(("masks", "split"), [((), "train"), (("train",), "val")], ids=["none", "train only"])
def test_train_segmenter_without_masks_is_one_line_before_training(tmp_path: Path, masks: tuple[str, ...],
                                                                   split: str) -> None:
    """BCCD as its own repository ships it has no masks/ (they come from Banik et al.): a `high <= 0` traceback; with
    masks for the train fields only, every iteration trained, validation scored nan, and the run ended with a
    FileNotFoundError, nothing written."""
    from wbc.errors import WbcError
    from wbc.train.segmenter import train_segmenter

    root = _bccd_root(tmp_path / "root", masks)
    out = tmp_path / "seg.onnx"
    with pytest.raises(WbcError, match=rf"bccd/masks: none of the 1 BCCD {split} fields has a mask"):
        train_segmenter(root, out, iters=2, eval_every=1, batch=1, size=32, log=lambda _: None)
    assert not out.exists()


@pytest.mark.parametrize("command", ["train-detector", "train-segmenter"])
def test_a_trainer_s_output_must_be_an_onnx_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 command: str) -> None:
    """`wbc train-detector --output runs/d/model.pt` wrote the ONNX model, then its state dict (kept beside it as
    NAME.pt) over it, and logged "exported runs/d/model.pt". Any name but .onnx is refused before a field is read."""
    import wbc.train.detector as detector
    import wbc.train.segmenter as segmenter
    from wbc.errors import WbcError

    def no_data(*args: object, **kwargs: object) -> None:
        raise AssertionError("the data was read")

    monkeypatch.setattr(detector, "build_training_set", no_data)
    monkeypatch.setattr(segmenter, "check_masks", no_data)
    out = tmp_path / "d.pt"
    run = detector.train_detector if command == "train-detector" else segmenter.train_segmenter
    with pytest.raises(WbcError, match=r"d\.pt: a model file is ONNX; give a \.onnx name"):
        run(tmp_path, out, iters=1, log=lambda _: None)
    assert not out.exists()
    exc = invoke(command, "--iters", "1", "-o", str(tmp_path), cwd=tmp_path)
    assert isinstance(exc, WbcError) and "is a folder" in str(exc)


@pytest.mark.parametrize("lr", ["-0.001", "nan", "0", "inf"])
@pytest.mark.parametrize("command", ["train-segmenter", "train-detector"])
def test_a_learning_rate_that_is_no_number_above_0_is_refused_before_the_data(tmp_path: Path, command: str,
                                                                           lr: str) -> None:
    """--lr had no bound: a negative or NaN rate was torch's "Invalid learning rate" traceback after every field was
    loaded, and --lr 0 wrote an untrained model (over the shipped one, with --overwrite). Now one line, first."""
    from wbc.errors import WbcError

    exc = invoke(command, "--lr", lr, "--iters", "1", "--data-root", str(tmp_path / "nowhere"),
                 "-o", str(tmp_path / "m.onnx"), cwd=tmp_path)
    assert isinstance(exc, WbcError) and str(exc) == f"--lr {float(lr)}: must be a number > 0"
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("beside", ["m.pt", "m.log.json"])
def test_train_detector_keeps_an_existing_pt_and_log_without_overwrite(tmp_path: Path, beside: str) -> None:
    """Only the .onnx was checked: an existing NAME.pt (the weights a fine-tuning starts from, with --init) and
    NAME.log.json were replaced at the first checkpoint without --overwrite, although its help said it guarded the
    .pt. Now refused in one line before anything is read."""
    from wbc.errors import WbcError

    (tmp_path / beside).write_text("precious")
    args = ("train-detector", "--iters", "1", "--data-root", str(tmp_path / "nowhere"), "-o", str(tmp_path / "m.onnx"))
    exc = invoke(*args, cwd=tmp_path)
    assert isinstance(exc, WbcError) and str(exc).startswith(f"{tmp_path / beside}: exists")
    assert "--overwrite" in str(exc) and (tmp_path / beside).read_text() == "precious"
    exc = invoke(*args, "--overwrite", cwd=tmp_path)
    assert isinstance(exc, WbcError) and "not readable" in str(exc)  # on to the data
