"""Bad input to a benchmark script is one ``error:`` line and exit status 1 (README.md, "benchmarks/"), never a
traceback, and never a run that exits 0 without the figure it exists for. Each case reaches its bad input within
seconds: a data root that is not there (``$WBC_DATA_DIR``), a file not there, a folder that does not fit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
SHIPPED = ROOT / "src" / "wbc" / "models" / "default" / "wbc_classifier.onnx"


def _run(script: str, args: list[str], tmp_path: Path, root: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``python benchmarks/<script> args --output <tmp>/out.json`` from the repository root, with the data root
    ``root`` (default: one that is not there)."""
    env = {**os.environ, "WBC_DATA_DIR": str(root or tmp_path / "no_root")}
    return subprocess.run([sys.executable, str(BENCHMARKS / script), *args, "--output", str(tmp_path / "out.json")],
                          capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)


def _one_error_line(r: subprocess.CompletedProcess[str], tmp_path: Path) -> str:
    """The run's last stderr line, checked to be the one ``error:`` line of a failed run that wrote nothing."""
    assert r.returncode == 1, (r.returncode, r.stderr[-800:])
    assert "Traceback" not in r.stderr, r.stderr[-1500:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), r.stderr[-500:]
    assert not (tmp_path / "out.json").exists()
    return last


#: script -> (its arguments, a part of the error line); "{tmp}" is the test's folder. Before wbc 0.34.0 the first five
#: ended in a traceback (TypeError, FileNotFoundError, numpy's ValueError, CalledProcessError, FileNotFoundError);
#: classify_speed and library_swaps exited 0 without their PBC figures.
MISSING = {
    "canvas_smears.py": (["--splits", "val"], "BCCD split not found"),
    "cross_dataset.py": (["--draws", "1", "--sizes", "10"], "single_wbc_labels.csv: No such file or directory"),
    "summary_parity.py": ([], "cells could not be read"),
    "ddp_train.py": (["--runs", "{tmp}/runs"], "wbc train --config"),
    "bccd_label_check.py": (["--predictions", "{tmp}/no.csv"], "no.csv: No such file or directory"),
    "weight_average.py": (["{tmp}/no.pt"], "no.pt: no such checkpoint"),
    "classify_speed.py": (["--seconds", "0.05", "--batch", "8", "--files", "10"], "no PBC images"),
    "library_swaps.py": (["--files", "5"], "no PBC images"),
    "non_smear.py": ([], "no BCCD fields"),
    "photo_check.py": ([], "no PBC images"),
}


@pytest.mark.parametrize("script", [pytest.param(s, marks=pytest.mark.slow) if s == "ddp_train.py" else s
                                    for s in sorted(MISSING)])  # ddp_train.py runs `wbc train` (torch): seconds
def test_a_missing_data_root_or_file_is_one_error_line(script: str, tmp_path: Path) -> None:
    args, says = MISSING[script]
    last = _one_error_line(_run(script, [a.replace("{tmp}", str(tmp_path)) for a in args], tmp_path), tmp_path)
    assert says in last


def test_a_misspelled_finetune_checkpoint_is_refused(tmp_path: Path) -> None:
    """cross_dataset.py dropped a ``--finetune-checkpoint`` that was not there: its results were --no-finetune's."""
    last = _one_error_line(_run("cross_dataset.py", ["--finetune-checkpoint", str(tmp_path / "no.pt")], tmp_path),
                           tmp_path)
    assert last == f"error: {tmp_path / 'no.pt'}: no such checkpoint (--finetune-checkpoint)"


def test_a_named_segmenter_that_cannot_load_is_refused(tmp_path: Path) -> None:
    """analyze_speed.py wrote ``{"detector": {"error": ...}}`` and exited 0 for the one segmenter it was asked to
    time; ``--segmenter-model`` without ``--segmenter`` was ignored."""
    last = _one_error_line(_run("analyze_speed.py", ["--segmenter", "detector", "--segmenter-model",
                                                     str(tmp_path / "no.onnx"), "--n", "1"], tmp_path), tmp_path)
    assert str(tmp_path / "no.onnx") in last
    r = _run("analyze_speed.py", ["--segmenter-model", str(tmp_path / "no.onnx")], tmp_path)
    assert r.returncode == 2 and "--segmenter-model needs --segmenter" in r.stderr


def test_a_threshold_sweep_on_test_is_refused(tmp_path: Path) -> None:
    """smear_detection.py --sweep chooses a threshold: its help said "validation only", but --split test ran it."""
    last = _one_error_line(_run("smear_detection.py", ["--split", "test", "--sweep"], tmp_path), tmp_path)
    assert "validation only" in last


@pytest.mark.parametrize("script,args", [
    ("edge_cut_cells.py", []),  # FileNotFoundError after the models loaded
    ("smear_calibration.py", ["--splits", "val"]),  # found after every BCCD split was scored (minutes)
])
def test_a_missing_manifest_is_named_before_the_work(script: str, args: list[str], tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "pbc").mkdir(parents=True)  # a data root: the manifest is the first thing missing
    r = _run(script, ["--manifest", str(tmp_path / "no.csv"), *args], tmp_path, root=root)
    assert _one_error_line(r, tmp_path) == f"error: {tmp_path / 'no.csv'}: manifest not found"
    assert r.stdout == ""


def _cell(path: Path) -> None:
    from wbc.io import write_image

    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(path, np.full((64, 64, 3), 200, np.uint8))


def test_a_lab_folder_with_an_unknown_class_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """label_choice.py's and semi_finetune.py's loader: a class folder the model lacks (``lymphocytes/``) was
    ``ValueError: 'lymphocytes' is not in list``, an empty folder numpy's "need at least one array"."""
    from wbc.errors import WbcError

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from _lab_folder import load_lab_folder

    (tmp_path / "empty").mkdir()
    with pytest.raises(WbcError, match=r"empty: no images"):
        load_lab_folder(tmp_path / "empty", None, 1)
    _cell(tmp_path / "lab" / "lymphocytes" / "a.png")
    _cell(tmp_path / "lab" / "neutrophil" / "b.png")
    with pytest.raises(WbcError) as e:
        load_lab_folder(tmp_path / "lab", None, 1)
    assert str(e.value).startswith(f"{tmp_path / 'lab'}: class folder(s) lymphocytes not among the model's classes")


def test_an_empty_folder_to_score_is_named(tmp_path: Path) -> None:
    """unsure_views.py divided by an empty folder's zero cells (ZeroDivisionError)."""
    (tmp_path / "empty").mkdir()
    last = _one_error_line(_run("unsure_views.py", ["--folders", str(tmp_path / "empty")], tmp_path), tmp_path)
    assert last == f"error: {tmp_path / 'empty'}: no <class>/<image> files"


def test_quantizing_an_int8_model_again_is_refused(tmp_path: Path) -> None:
    """quantize_variants.py wants the float model; the shipped int8 one failed deep in onnx (not single static
    assignment)."""
    _cell(tmp_path / "lab" / "neutrophil" / "b.png")
    last = _one_error_line(_run("quantize_variants.py", ["--model", str(SHIPPED), "--lab", str(tmp_path / "lab")],
                                tmp_path), tmp_path)
    assert last == f"error: {SHIPPED}: already int8; give the float model it came from (wbc export)"


@pytest.mark.parametrize("script", ["eyepiece_smears.py", "large_fields.py", "smear_calibration.py"])
def test_the_data_root_option_the_bccd_message_names_is_accepted(script: str, tmp_path: Path) -> None:
    """A missing BCCD split says "is --data-root the data root?": these scripts' option was --data alone, so following
    the hint was "unrecognized arguments"."""
    last = _one_error_line(_run(script, ["--data-root", str(tmp_path / "typo")], tmp_path), tmp_path)
    assert last.startswith(f"error: {tmp_path / 'typo'}")
