"""End to end: train -> export -> classify, on synthetic cells (anywhere) and a few real PBC cells."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from conftest import needs_torch
from wbc.classify import classify_paths
from wbc.io import iter_image_paths
from wbc.model import load_model

if TYPE_CHECKING:
    from wbc.config import TrainConfig

pytestmark = needs_torch


def run_wbc(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "wbc", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


@pytest.fixture(scope="module")
def synthetic_run(synthetic_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rich.console import Console

    from wbc.config import TrainConfig
    from wbc.train.loop import run_training

    run = tmp_path_factory.mktemp("run") / "synth"
    cfg = TrainConfig(data=str(synthetic_dataset), model="small_cnn", pretrained=False, input_size=48, epochs=8,
                      batch_size=16, lr=3e-3, patience=0, threads=2, augment=True, hed_sigma=0.0, hed_bias=0.0)
    run_training(cfg, run, console=Console(quiet=True))
    return run


def test_run_folder_holds_everything(synthetic_run: Path) -> None:
    for name in ["config.json", "manifest.csv", "metrics.csv", "last.pt", "best.pt", "curves.png", "model.onnx",
                 "model.json", "val_metrics.json", "test_metrics.json"]:
        assert (synthetic_run / name).is_file(), name
    rows = list(csv.DictReader((synthetic_run / "metrics.csv").open()))
    assert len(rows) == 8 and float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    meta = json.loads((synthetic_run / "model.json").read_text())
    assert meta["input_size"] == 48 and len(meta["classes"]) == 8 and meta["temperature"] > 0
    assert meta["extra"]["onnx_max_abs_diff"] < 1e-4
    # the split it was trained on (wbc 0.33.0): `wbc evaluate` knows its run's manifest by it, wherever it is copied
    from wbc.data import load_dataset, split_hash
    from wbc.evaluate import is_own_run

    assert meta["extra"]["split_hash"] == split_hash(load_dataset(synthetic_run / "manifest.csv").samples)
    copy = synthetic_run.parent / "elsewhere" / "split.csv"
    copy.parent.mkdir(exist_ok=True)
    copy.write_bytes((synthetic_run / "manifest.csv").read_bytes())
    assert is_own_run(copy, load_model(synthetic_run / "model.onnx"))


def test_synthetic_model_learns_and_onnx_matches_training_eval(synthetic_run: Path) -> None:
    test = json.loads((synthetic_run / "test_metrics.json").read_text())
    assert test["accuracy"] > 0.5  # 8 balanced classes: chance is 0.125
    clf = load_model(synthetic_run / "model.onnx")
    from wbc.data import read_manifest

    samples = read_manifest(synthetic_run / "manifest.csv", split="test", root=Path("/"))
    res = classify_paths([s.path for s in samples], clf, batch_size=7)
    acc = np.mean([p.label == s.label for p, s in zip(res.predictions, samples, strict=True)])
    assert acc == pytest.approx(test["accuracy"], abs=1e-9)


def test_export_command_and_resume(synthetic_run: Path, tmp_path: Path) -> None:
    r = run_wbc("export", str(synthetic_run), "--output", str(tmp_path / "m.onnx"))
    assert r.returncode == 0, r.stderr
    assert "max |onnx - torch|" in r.stderr and (tmp_path / "m.onnx").is_file()
    r = run_wbc("export", str(synthetic_run / "last.pt"), "--output", str(tmp_path / "last.onnx"))
    assert r.returncode == 1 and "last.pt: no model metadata yet" in r.stderr and "Traceback" not in r.stderr
    r = run_wbc("train", "--output", str(synthetic_run), "--data", "x")
    assert r.returncode == 1 and "--resume" in r.stderr and "Traceback" not in r.stderr


def test_export_checks_its_output_first_and_never_writes_over_the_checkpoint(synthetic_run: Path,
                                                                             tmp_path: Path) -> None:
    """`wbc export` and `wbc ensemble` checked --output only after the work (tracebacks: a folder, a path under a
    file), and `wbc export RUN/best.pt -o RUN/best.pt` replaced the trained weights with ONNX bytes."""
    r = run_wbc("export", str(synthetic_run), "--output", str(tmp_path))
    assert r.returncode == 1 and "is a folder" in r.stderr and "Traceback" not in r.stderr
    best = synthetic_run / "best.pt"
    weights = best.read_bytes()
    r = run_wbc("export", str(best), "--output", str(best))
    assert r.returncode == 1 and "best.pt: --output must be an .onnx file" in r.stderr and "Traceback" not in r.stderr
    assert best.read_bytes() == weights
    (tmp_path / "afile").write_text("x")
    r = run_wbc("export", str(synthetic_run), "--output", str(tmp_path / "afile" / "m.onnx"))
    assert r.returncode == 1 and "afile is a file" in r.stderr and "Traceback" not in r.stderr
    other = _copy_run(synthetic_run, tmp_path / "other", seed=1)
    r = run_wbc("ensemble", str(synthetic_run), str(other), "--output", str(tmp_path / "afile"))
    assert r.returncode == 1 and "afile: is a file" in r.stderr and "Traceback" not in r.stderr


def test_export_weights_writes_only_a_new_pt_file(synthetic_run: Path, tmp_path: Path) -> None:
    """`wbc export-weights RUN/best.pt RUN/model.onnx` replaced the run's ONNX model with a PyTorch pickle (and so
    would the shipped model's name tab-completed to .onnx), any existing file was replaced, and a folder as output
    was a traceback. The output must be a new .pt file (or --overwrite), checked before torch is loaded; a run folder
    is read as `wbc export` reads it."""
    onnx = tmp_path / "m.onnx"
    r = run_wbc("export-weights", str(synthetic_run / "best.pt"), str(onnx))
    assert r.returncode == 1 and "m.onnx: the weights are a .pt file" in r.stderr and "Traceback" not in r.stderr
    assert not onnx.exists()
    r = run_wbc("export-weights", str(synthetic_run / "best.pt"), str(tmp_path))
    assert r.returncode == 1 and "is a folder" in r.stderr and "Traceback" not in r.stderr, r.stderr
    taken = tmp_path / "taken.pt"
    taken.write_bytes(b"the lab's weights")
    r = run_wbc("export-weights", str(synthetic_run / "best.pt"), str(taken))
    assert r.returncode == 1 and "taken.pt: exists; pass --overwrite" in r.stderr and "Traceback" not in r.stderr
    assert taken.read_bytes() == b"the lab's weights"
    r = run_wbc("export-weights", str(synthetic_run / "best.pt"), str(synthetic_run / "best.pt"), "--overwrite")
    assert r.returncode == 1 and "best.pt: is the checkpoint itself" in r.stderr
    r = run_wbc("export-weights", str(synthetic_run), str(taken), "--overwrite")
    assert r.returncode == 0, r.stderr
    from wbc.train.finetune import load_weights

    _, info = load_weights(taken)
    assert info.classes == load_model(synthetic_run / "model.onnx").info.classes


def test_export_to_an_opset_pytorch_cannot_write_is_one_line(synthetic_run: Path, tmp_path: Path) -> None:
    """`wbc export --opset 24` (no upper bound on the option) was a RuntimeError traceback from the exporter."""
    r = run_wbc("export", str(synthetic_run), "-o", str(tmp_path / "m.onnx"), "--opset", "99")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "--opset 99: this PyTorch" in r.stderr and "exports opsets 17 to 2" in r.stderr
    assert not (tmp_path / "m.onnx").exists()


def test_export_of_one_checkpoint_is_the_same_bytes_each_time(synthetic_run: Path, tmp_path: Path) -> None:
    """The parity check's input was unseeded, so its difference (stored in the metadata) and the file's SHA-1 changed
    from export to export, and `wbc analyze` redid every field after the same checkpoint was exported again."""
    from wbc.train.export import export_checkpoint

    export_checkpoint(synthetic_run, tmp_path / "a.onnx")
    export_checkpoint(synthetic_run, tmp_path / "b.onnx")
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


class _Stop(Exception):
    pass


@pytest.mark.slow
@pytest.mark.parametrize("extra", [{"num_workers": 1}, {"unlabelled": "lab"}, {"attributes": "wbcatt"}],
                         ids=["workers", "unlabelled", "attributes"])
def test_a_resumed_run_ends_as_the_uninterrupted_one(synthetic_dataset: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch, extra: dict) -> None:
    """Stopped after its first epoch's last.pt and resumed, a run ends with the weights of the run never stopped,
    with worker processes and with unlabelled cells (both drew other random numbers after a resume), and with
    attribute heads (last.pt did not hold them: a resumed run started them afresh)."""
    import torch
    from rich.console import Console

    import wbc.train.loop as loop
    from wbc.config import TrainConfig
    from wbc.io import write_image
    from wbc.labels import CLASSES
    from wbc.synthetic import synthetic_cell

    if "unlabelled" in extra:
        for i, label in enumerate(CLASSES * 2):
            write_image(tmp_path / "lab" / f"{i}.png", synthetic_cell(label, 72, 1000 + i))
        extra = {"unlabelled": str(tmp_path / "lab"), "unlabelled_threshold": 0.01}
    if "attributes" in extra:  # WBCAtt-like attributes for the synthetic cells, following their class
        import wbc.train.attributes as attributes

        table = {p.name: np.array([CLASSES.index(p.parent.name) % len(v) for v in attributes.ATTRIBUTES.values()],
                                  np.int8) for p in synthetic_dataset.rglob("*.png")}
        monkeypatch.setattr(attributes, "read_wbcatt", lambda folder: table)
        extra = {"attributes": "wbcatt", "attribute_weight": 1.0}
    cfg = TrainConfig(data=str(synthetic_dataset), model="small_cnn", pretrained=False, input_size=32, epochs=2,
                      batch_size=32, lr=3e-3, patience=0, threads=1, max_per_class=8).updated(extra)
    quiet = Console(quiet=True)
    save = loop.save_atomic

    def run(name: str, stop_after: int, resume: bool = False) -> None:  # killed right after that epoch's last.pt
        def save_then_stop(obj: dict, path: Path) -> None:
            save(obj, path)
            if path.name == "last.pt" and obj["epoch"] == stop_after:
                raise _Stop

        monkeypatch.setattr(loop, "save_atomic", save_then_stop)
        with pytest.raises(_Stop):  # (the last epoch's stop skips the export, not needed here)
            loop.run_training(cfg, tmp_path / name, resume=resume, console=quiet, score_test=False)

    run("full", 1)
    run("resumed", 0)
    run("resumed", 1, resume=True)
    full, resumed = (torch.load(tmp_path / r / "last.pt", weights_only=False) for r in ("full", "resumed"))
    assert [r["train_loss"] for r in resumed["history"]] == [r["train_loss"] for r in full["history"]]
    for k, v in full["model"].items():
        assert torch.equal(v, resumed["model"][k]), k
    for k, v in full.get("heads", {}).items():
        assert torch.equal(v, resumed["heads"][k]), k


def test_train_never_writes_over_a_run_or_an_ensemble_without_overwrite(synthetic_run: Path, tmp_path: Path) -> None:
    """Only a last.pt made a folder "a run": a finished run without it (the committed runs/default) had its
    manifest.csv, what pins a split, replaced, and an ensemble's folder its model.onnx, with the old ensemble.pt left
    to be what `wbc export` loads. Any run or model file stops a new run; --overwrite replaces the run, leaving none
    of the earlier one's files."""
    import shutil

    from rich.console import Console

    from wbc.config import TrainConfig
    from wbc.errors import WbcError
    from wbc.train.loop import run_ensemble, run_training

    quiet = Console(quiet=True)
    cfg = TrainConfig(data=str(synthetic_run / "manifest.csv"), model="small_cnn", pretrained=False, input_size=32,
                      epochs=1, batch_size=16, threads=1, max_per_class=4)
    kept = tmp_path / "kept"
    kept.mkdir()
    for name in ("manifest.csv", "model.onnx"):
        shutil.copy(synthetic_run / name, kept / name)
    manifest = (kept / "manifest.csv").read_bytes()
    with pytest.raises(WbcError, match=r"kept: holds a run or a model already \(model.onnx, manifest.csv\); pass "
                                       r"--overwrite to replace it"):  # no config.json: no --resume to offer
        run_training(cfg, kept, console=quiet)
    assert (kept / "manifest.csv").read_bytes() == manifest and sorted(p.name for p in kept.iterdir()) == [
        "manifest.csv", "model.onnx"]
    ens = tmp_path / "ens"
    run_ensemble([synthetic_run, _copy_run(synthetic_run, tmp_path / "b", seed=1)], ens, console=quiet,
                 score_test=False)
    with pytest.raises(WbcError, match=r"ens: holds a run or a model already \(ensemble.pt, model.onnx"):
        run_training(cfg, ens, console=quiet)
    assert (ens / "ensemble.pt").is_file()
    run_training(cfg, ens, console=quiet, score_test=False, overwrite=True)
    assert not (ens / "ensemble.pt").exists() and (ens / "best.pt").is_file()
    assert load_model(ens / "model.onnx").info.architecture == "small_cnn"
    r = run_wbc("train", "-o", str(ens), "--data", str(synthetic_run / "manifest.csv"))
    assert r.returncode == 1 and "--overwrite to replace it" in r.stderr and "Traceback" not in r.stderr


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (not through links), by its path there: what a refused run must leave as it was."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _tiny_overwrite_config(synthetic_run: Path, **changes: object) -> TrainConfig:
    """A one-epoch run on a few of ``synthetic_run``'s cells, with ``changes``."""
    from wbc.config import TrainConfig

    return TrainConfig(data=str(synthetic_run / "manifest.csv"), model="small_cnn", pretrained=False, input_size=32,
                       epochs=1, batch_size=16, threads=1, max_per_class=4).updated(changes)


def test_a_refused_overwrite_leaves_the_earlier_run_as_it_was(synthetic_run: Path, tmp_path: Path) -> None:
    """--overwrite removed the earlier run before the checks that come later: `init_weights` of the folder's own best.pt
    (docs/training.md's way to train on from a run, keeping its name) was deleted before it was read, and a refusal
    after the data was found (other weights' architecture, a class with no readable image) still cost the whole run.
    It goes only once every check before training has passed; a refusal puts back what the new run wrote first."""
    import shutil

    from rich.console import Console

    from wbc.errors import WbcError
    from wbc.synthetic import make_dataset
    from wbc.train.loop import run_training

    quiet = Console(quiet=True)
    run = shutil.copytree(synthetic_run, tmp_path / "run")
    before = _files(run)
    own = _tiny_overwrite_config(synthetic_run, init_weights=str(run / "best.pt"))
    with pytest.raises(WbcError, match=r"run/best.pt: init_weights is in the folder --overwrite clears \(.*run\); "
                                       r"copy it elsewhere first"):
        run_training(own, run, console=quiet, overwrite=True)
    assert _files(run) == before
    other = _tiny_overwrite_config(synthetic_run, model="efficientnet_lite0", init_weights=str(synthetic_run /
                                                                                               "best.pt"))
    with pytest.raises(WbcError, match=r"best.pt: weights of small_cnn, this run trains efficientnet_lite0"):
        run_training(other, run, console=quiet, overwrite=True)
    assert _files(run) == before  # its manifest.csv, skipped.csv and config.json too, which the new run wrote first
    data = make_dataset(tmp_path / "cells", n_per_class=4, size=32, classes=["neutrophil", "lymphocyte"])
    (data / "basophil").mkdir()
    for i in range(4):
        (data / "basophil" / f"b{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes([i]) * 40)  # truncated
    unreadable = _tiny_overwrite_config(synthetic_run, data=str(data), max_per_class=0)
    with pytest.raises(WbcError, match=r"no readable training images of basophil"):  # found after decoding
        run_training(unreadable, run, console=quiet, overwrite=True)
    assert _files(run) == before
    run_training(_tiny_overwrite_config(synthetic_run), run, console=quiet, score_test=False, overwrite=True)
    assert json.loads((run / "config.json").read_text())["input_size"] == 32  # the new run's, kept by the clearing
    assert (run / "best.pt").read_bytes() != before["best.pt"] and not (run / "test_metrics.json").exists()


def test_overwrite_removes_only_the_run_s_own_fold_folders(synthetic_run: Path, tmp_path: Path) -> None:
    """--overwrite deleted every `fold_*` folder whole, a user's `fold_notes/` too, and a `fold_*` link was an OSError
    traceback once the earlier run's files were gone. Only what a fold writes goes, from `fold_K` folders (and
    they with it when left empty); a `fold_K` that is a link is refused first, in one line, with nothing removed."""
    import shutil

    from rich.console import Console

    from wbc.errors import WbcError
    from wbc.train.loop import run_training

    quiet = Console(quiet=True)
    run = shutil.copytree(synthetic_run, tmp_path / "run")
    for fold, names in (("fold_0", ("last.pt", "best.pt", "metrics.csv")), ("fold_12", ("best.pt", "curves.png"))):
        (run / fold).mkdir()
        for name in names:
            shutil.copy(synthetic_run / name, run / fold / name)
    (run / "fold_0" / "mine.txt").write_text("a note of mine")
    (run / "fold_notes").mkdir()
    (run / "fold_notes" / "review.txt").write_text("kept")
    (run / "fold_notes" / "last.pt").write_bytes(b"not the run's")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "last.pt").write_bytes(b"someone else's")
    (run / "fold_link").symlink_to(elsewhere, target_is_directory=True)
    run_training(_tiny_overwrite_config(synthetic_run), run, console=quiet, score_test=False, overwrite=True)
    assert sorted(p.name for p in (run / "fold_0").iterdir()) == ["mine.txt"] and not (run / "fold_12").exists()
    assert (run / "fold_notes" / "review.txt").read_text() == "kept" and (run / "fold_notes" / "last.pt").exists()
    assert (run / "fold_link").is_symlink() and (elsewhere / "last.pt").read_bytes() == b"someone else's"
    (run / "fold_3").symlink_to(elsewhere, target_is_directory=True)
    before = _files(run)
    with pytest.raises(WbcError, match=r"run/fold_3: a link, where a cross-validation run keeps a fold; --overwrite "
                                       r"removes no run files through a link"):
        run_training(_tiny_overwrite_config(synthetic_run), run, console=quiet, overwrite=True)
    assert _files(run) == before and (elsewhere / "last.pt").exists()


def test_the_documented_rebuild_of_runs_default_is_accepted(tmp_path: Path) -> None:
    """docs/training.md, docs/model_card.md, docs/generalisation.md, configs/default.toml and the notebook rebuild the
    1.0.0 model with `wbc train --config configs/default.toml --output runs/default`, which wbc 0.33.0 refuses: the
    committed runs/default holds a manifest.csv. Each says --overwrite, which the folder takes; without it the refusal
    says --overwrite, not --resume, which this folder (no last.pt) would refuse too."""
    import re
    import shlex
    import shutil

    from wbc.errors import WbcError
    from wbc.train.loop import check_run_folder

    repo = Path(__file__).parents[1]
    places = [*repo.glob("docs/*.md"), repo / "README.md", *repo.glob("configs/*.toml"), *repo.glob("scripts/*.py"),
              *repo.glob("notebooks/*.ipynb")]
    commands = [(p.name, " ".join(m.group(0).split())) for p in places
                for m in re.finditer(r"wbc train [^`'#\n]*(?:\n[^`'#\n]*)?--output runs/default(?![\w/])[^`'#\n]*",
                                     p.read_text())]
    assert len(commands) >= 7, commands  # training.md, model_card.md twice, generalisation.md, the toml, notebook x2
    default = shutil.copytree(repo / "runs" / "default", tmp_path / "runs" / "default")
    assert (default / "manifest.csv").is_file() and not (default / "last.pt").exists()
    for where, command in commands:
        args = shlex.split(command)
        assert "--overwrite" in args, f"{where}: {command}"
        check_run_folder(default, resume="--resume" in args, overwrite=True)
    with pytest.raises(WbcError, match=r"default: holds a run or a model already \(manifest.csv\); pass --overwrite "
                                       r"to replace it, or pick another --output") as refused:
        check_run_folder(default, resume=False, overwrite=False)
    assert "--resume" not in str(refused.value)
    r = run_wbc("train", "--config", str(repo / "configs" / "default.toml"), "--output", str(default), "--overwrite",
                "--data", str(tmp_path / "no_such_data"))  # past the folder's check, stopped at the data's
    assert r.returncode == 1 and "no_such_data" in r.stderr and "holds a run" not in r.stderr, r.stderr
    assert _files(default) == _files(repo / "runs" / "default")

def test_resume_with_nothing_to_resume_is_one_line(synthetic_run: Path, tmp_path: Path) -> None:
    """`--resume` on a folder without a run (a mistyped --output) started a full new run with the default settings,
    on a finished run whose last.pt was removed retrained it from epoch 1, and on a cross-validation fold folder
    trained the default recipe on all of --data, to fail after decoding with a state-dict traceback."""
    import shutil

    tiny = ("--data", str(synthetic_run / "manifest.csv"), "--model", "small_cnn", "--no-pretrained", "--epochs", "1",
            "--input-size", "32", "--max-per-class", "2")  # (before: a tiny run, not the default on all of PBC)
    r = run_wbc("train", "-o", str(tmp_path / "nope"), "--resume", *tiny)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "nope: no run to resume here (no config.json); drop --resume to start one" in r.stderr
    assert not (tmp_path / "nope").exists()
    cv = tmp_path / "cv"
    (cv / "fold_0").mkdir(parents=True)
    (cv / "config.json").write_text("{}")
    shutil.copy(synthetic_run / "last.pt", cv / "fold_0" / "last.pt")
    r = run_wbc("train", "-o", str(cv / "fold_0"), "--resume", *tiny)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"fold_0: one fold of the cross-validation run {cv}; resume that run" in r.stderr
    assert sorted(p.name for p in (cv / "fold_0").iterdir()) == ["last.pt"]
    finished = shutil.copytree(synthetic_run, tmp_path / "finished", ignore=shutil.ignore_patterns("last.pt"))
    best = (finished / "best.pt").read_bytes()
    r = run_wbc("train", "-o", str(finished), "--resume")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "finished: a trained run without its last.pt (best.pt, model.onnx, metrics.csv)" in r.stderr
    assert (finished / "best.pt").read_bytes() == best


def test_resume_refuses_a_changed_recipe_and_takes_the_machine_from_the_command_line(synthetic_dataset: Path,
                                                                                    tmp_path: Path) -> None:
    """`wbc train --resume --epochs 3` on a finished 1-epoch run printed "resuming", trained nothing, re-exported
    the same model and exited 0: every recipe flag and the config file were dropped without a word. A setting that
    differs from the run's is refused in one line; the run's own config file, and --threads (the machine's), are
    not a clash, and neither are the defaults of options the user did not set."""
    from rich.console import Console

    from wbc.config import load_config
    from wbc.train.loop import run_training

    toml = tmp_path / "tiny.toml"
    toml.write_text(f'[train]\ndata = "{synthetic_dataset}"\nmodel = "small_cnn"\npretrained = false\n'
                    "input_size = 32\nepochs = 1\nbatch_size = 16\nthreads = 1\nmax_per_class = 4\npatience = 0\n")
    run = tmp_path / "r"
    run_training(load_config(toml), run, console=Console(quiet=True), score_test=False)
    r = run_wbc("train", "-o", str(run), "--resume", "--epochs", "3", "--lr", "0.01")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "epochs 3 (the run's: 1), lr 0.01 (the run's: 0.001)" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert len((run / "metrics.csv").read_text().splitlines()) == 2  # the header and the one epoch
    r = run_wbc("train", "-c", str(toml), "--threads", "2", "-o", str(run), "--resume", "--no-test")
    # not a clash: the run goes on, here finished already, which it says (since wbc 0.36.0; before, "resuming")
    assert r.returncode == 0 and "finished already (1 of 1 epochs)" in r.stderr, r.stderr
    r = run_wbc("train", "-o", str(run), "--resume")  # trained with --no-test: how to score its test split, once
    assert r.returncode == 0, r.stderr
    assert f"its test split is not scored: score it once with wbc evaluate {run}." in " ".join(r.stderr.split())
    assert len((run / "metrics.csv").read_text().splitlines()) == 2


def test_a_run_records_its_data_root_and_a_finished_run_resumed_keeps_its_model(synthetic_dataset: Path,
                                                                                tmp_path: Path) -> None:
    """A run trained with --data-root wrote its manifest relative to it and recorded it nowhere: `wbc quantize`,
    `wbc evaluate` and `--resume` then looked under $WBC_DATA_DIR. The run records it (config.json's data_root) and
    they read the images under it, saying so. `--resume` of a finished run exported the same weights again under a new
    model_id; it now says the run is finished and keeps its model."""
    import io
    import shutil

    from rich.console import Console
    from typer.testing import CliRunner

    from wbc.cli import app
    from wbc.config import TrainConfig
    from wbc.train.loop import run_training

    root = tmp_path / "root"
    shutil.copytree(synthetic_dataset, root / "cells")
    run = tmp_path / "run"
    cfg = TrainConfig(data="cells", model="small_cnn", pretrained=False, input_size=32, epochs=1, batch_size=16,
                      threads=1)
    run_training(cfg, run, data_root=root, console=Console(quiet=True))
    assert json.loads((run / "config.json").read_text())["data_root"] == str(root.resolve())
    assert (run / "manifest.csv").read_text().splitlines()[1].startswith("cells/")  # relative to the root
    res = CliRunner().invoke(app, ["quantize", str(run / "model.onnx"), "--manifest", str(run / "manifest.csv"),
                                   "-o", str(tmp_path / "int8.onnx"), "--per-class", "4", "--threads", "1"])
    assert res.exit_code == 0, (res.output, res.exception)
    assert f"reading them under {root.resolve()}, the root its run was trained with" in " ".join(res.output.split())
    model, config = (run / "model.onnx").read_bytes(), (run / "config.json").read_bytes()
    out = io.StringIO()
    got = run_training(TrainConfig(threads=1), run, resume=True, console=Console(file=out, width=400),
                       given=frozenset())
    said = " ".join(out.getvalue().split())
    assert f"{run}: finished already (1 of 1 epochs); its model.onnx is kept as it is" in said, said
    assert "decoding" not in said and (run / "model.onnx").read_bytes() == model
    assert (run / "config.json").read_bytes() == config
    assert got == json.loads((run / "test_metrics.json").read_text())
    (run / "model.onnx").unlink()  # a run stopped before its export: it goes on, under its own root
    out = io.StringIO()
    run_training(TrainConfig(threads=1), run, resume=True, console=Console(file=out, width=400), given=frozenset())
    said = " ".join(out.getvalue().split())
    assert f"reading them under {root.resolve()}" in said and "unreadable" not in said.replace("(0 unreadable", "")
    assert (run / "model.onnx").is_file()


def test_a_run_trained_on_an_old_run_s_manifest_keeps_its_test_split(synthetic_run: Path, tmp_path: Path) -> None:
    """docs/training.md advised giving a new run the old manifest as its data to keep a test split unseen when the
    data grows, but `wbc train --data RUN/manifest.csv` was refused ("dataset folder not found")."""
    from rich.console import Console

    from wbc.config import TrainConfig
    from wbc.data import read_manifest
    from wbc.train.loop import run_training

    cfg = TrainConfig(data=str(synthetic_run / "manifest.csv"), model="small_cnn", pretrained=False, input_size=32,
                      epochs=1, batch_size=16, threads=1, split_seed=7)
    run_training(cfg, tmp_path / "b", console=Console(quiet=True), score_test=False)

    def rows(run: Path) -> list[tuple[str, str, str]]:
        return sorted((str(s.path), s.label, s.split) for s in read_manifest(run / "manifest.csv", root=Path("/")))

    assert rows(tmp_path / "b") == rows(synthetic_run)  # the whole split, not only the test rows, and not re-dealt
    info = json.loads((tmp_path / "b" / "model.json").read_text())
    assert info["model_id"].startswith("wbc-small_cnn-synth-manifest-")


def test_new_rows_of_a_manifest_are_dealt_into_train_and_val_only(synthetic_run: Path, tmp_path: Path) -> None:
    """Files added to an old manifest without a split join train or val, never its test split; a copy of a listed
    file joins that file's split; cross-validation folds are dealt over the train and val rows."""
    import shutil

    from rich.console import Console

    from wbc.config import TrainConfig
    from wbc.data import read_manifest, write_manifest
    from wbc.train.loop import prepare_samples

    old = read_manifest(synthetic_run / "manifest.csv", root=Path("/"))
    test = [s for s in old if s.split == "test"]
    added = tmp_path / "added"
    added.mkdir()
    new = []
    for i, s in enumerate([s for s in old if s.split == "train"][:12]):
        shutil.copy(s.path, added / f"{i}.png")  # new names; their bytes differ by the appended byte
        with (added / f"{i}.png").open("ab") as fh:
            fh.write(b"\0")
        new.append(replace(s, path=added / f"{i}.png", split="", sha1=""))
    shutil.copy(test[0].path, added / "copy_of_a_test_file.png")
    copy = replace(test[0], path=added / "copy_of_a_test_file.png", split="", sha1="")
    write_manifest(tmp_path / "grown.csv", [*old, *new, copy], root=Path("/"))
    for folds in (0, 3):
        cfg = TrainConfig(data=str(tmp_path / "grown.csv"), folds=folds)
        got = prepare_samples(cfg, tmp_path / f"run{folds}", Path("/"), False, Console(quiet=True))
        by_path = {s.path: s for s in got}
        assert [by_path[s.path].split for s in old] == [s.split for s in old]
        assert {by_path[s.path].split for s in new} == {"train", "val"}
        assert by_path[copy.path].split == "test"
        if folds:
            assert {s.fold for s in got if s.split != "test"} == {0, 1, 2}
            assert {s.fold for s in got if s.split == "test"} == {-1}


def test_a_lab_manifest_without_test_rows_is_said_and_a_spreadsheet_split_column_is_kept(synthetic_dataset: Path,
                                                                                         tmp_path: Path) -> None:
    """A `path,label` manifest (what `wbc pick-cells` writes), or a spreadsheet's `Path,Label,Split` whose `Split`
    column was not read, trained on every row and printed nothing of a test split: no `test:` line, no
    test_metrics.json, no word. The run now says so, a `Split` column is read, and a Train/Test split without val rows
    is refused before any image is decoded."""
    import io

    from rich.console import Console

    from wbc.config import TrainConfig
    from wbc.data import read_manifest
    from wbc.errors import WbcError
    from wbc.train.loop import prepare_samples, run_training

    files = sorted(synthetic_dataset.rglob("*.png"))
    plain = tmp_path / "labelled.csv"
    plain.write_text("path,label\n" + "".join(f"{f},{f.parent.name}\n" for f in files))
    out = io.StringIO()
    cfg = TrainConfig(data=str(plain), model="small_cnn", pretrained=False, input_size=32, epochs=1, batch_size=16,
                      threads=1)
    run_training(cfg, tmp_path / "run", console=Console(file=out, width=400))
    said = " ".join(out.getvalue().split())
    assert f"no test rows in {tmp_path / 'run' / 'manifest.csv'}: nothing held out was scored" in said
    assert "labelled.csv has none, and rows without a split go to train and val only" in said
    assert "test:" not in said and not (tmp_path / "run" / "test_metrics.json").exists()
    caps = tmp_path / "caps.csv"
    splits = ["Test" if i % 5 == 0 else "Val" if i % 5 == 1 else "train" for i in range(len(files))]
    caps.write_text("\ufeffPath,Label,Split\n" + "".join(f"{f},{f.parent.name},{sp}\n"
                                                         for f, sp in zip(files, splits, strict=True)))
    got = prepare_samples(TrainConfig(data=str(caps)), tmp_path / "caps_run", Path("/"), False, Console(quiet=True))
    assert [s.split for s in got] == [sp.lower() for sp in splits]
    assert [s.split for s in read_manifest(tmp_path / "caps_run" / "manifest.csv", root=Path("/"))].count("test") == \
        splits.count("Test")
    no_val = tmp_path / "no_val.csv"
    no_val.write_text("Path,Label,Split\n" + "".join(f"{f},{f.parent.name},{'Test' if i % 5 == 0 else 'Train'}\n"
                                                      for i, f in enumerate(files)))
    with pytest.raises(WbcError, match=r"no_val.csv: no val rows \(splits here: test, train\); give some rows split "
                                       "val, or an empty split"):
        prepare_samples(TrainConfig(data=str(no_val)), tmp_path / "nv", Path("/"), False, Console(quiet=True))


def test_a_manifest_label_that_is_no_class_is_refused(synthetic_dataset: Path, tmp_path: Path) -> None:
    """A manifest row labelled ``basophi`` (a typo) trained a model with a ninth class, ``basophi``, learnt from that
    row alone, without a word: it is refused in one line naming the manifest, the row and the nearest class."""
    rows = [(p, p.parent.name) for p in sorted(synthetic_dataset.rglob("*.png"))]
    rows[0] = (rows[0][0], rows[0][1][:-1])
    assert rows[0][1] == "basophi"
    m = tmp_path / "m.csv"
    m.write_text("path,label\n" + "".join(f"{p},{label}\n" for p, label in rows))
    r = run_wbc("train", "--data", str(m), "--model", "small_cnn", "--no-pretrained", "--epochs", "1",
                "--input-size", "32", "-o", str(tmp_path / "run"))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"m.csv: row {rows[0][0]}: label 'basophi' is not a class (did you mean 'basophil'?" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "run" / "model.onnx").exists()


def test_manifest_rows_that_classes_leaves_out_are_left_out_whatever_their_label(synthetic_dataset: Path,
                                                                                 tmp_path: Path) -> None:
    """wbc 0.33.0 refused any manifest label that is no class before `classes` picked the rows, so a lab's manifest
    with `blast` rows no longer trained on the classes asked for (as its class folders still did, and 0.32.0 did):
    docs/training.md says `classes` still picks a manifest's classes. A typo of a class asked for is still refused,
    and so is any unknown label when `classes` is not given."""
    from rich.console import Console

    from wbc.config import TrainConfig
    from wbc.errors import WbcError
    from wbc.train.loop import run_training

    rows = [(p, p.parent.name) for p in sorted(synthetic_dataset.rglob("*.png"))]
    blasts = [(p, "blast") for p, label in rows if label == "monocyte"][:3]
    m = tmp_path / "m.csv"
    m.write_text("path,label\n" + "".join(f"{p},{label}\n" for p, label in [*rows, *blasts]))
    cfg = TrainConfig(data=str(m), classes=("basophil", "eosinophil"), model="small_cnn", pretrained=False,
                      input_size=32, epochs=1, batch_size=8, threads=1)
    quiet = Console(quiet=True)
    run_training(cfg, tmp_path / "run", console=quiet, score_test=False)
    assert load_model(tmp_path / "run" / "model.onnx").info.classes == ["basophil", "eosinophil"]
    with pytest.raises(WbcError, match=r"m.csv: row .*: label 'blast' is not a class"):
        run_training(replace(cfg, classes=()), tmp_path / "all", console=quiet)
    typo = tmp_path / "typo.csv"
    typo.write_text(m.read_text().replace(",eosinophil\n", ",eosinophl\n", 1))
    with pytest.raises(WbcError, match=r"typo.csv: row .*: label 'eosinophl' is not a class \(did you mean "
                                       r"'eosinophil'\?"):
        run_training(cfg.updated({"data": str(typo)}), tmp_path / "typo", console=quiet)
    assert not (tmp_path / "all" / "manifest.csv").exists()


def test_a_manifest_s_folds_are_kept_only_when_they_are_the_k_asked_for(synthetic_run: Path, tmp_path: Path) -> None:
    """docs/training.md: "with --folds K the train and val rows keep their folds when they have K, else are dealt
    afresh"; a 2-fold run's manifest used for --folds 3 kept its two folds, and the third fold had no row to validate
    on (a scikit-learn traceback after the other folds had trained)."""
    from rich.console import Console

    from wbc.config import TrainConfig
    from wbc.data import read_manifest, write_manifest
    from wbc.train.loop import prepare_samples

    rows = read_manifest(synthetic_run / "manifest.csv", root=Path("/"))
    two = [replace(s, fold=i % 2 if s.split != "test" else -1) for i, s in enumerate(rows)]
    write_manifest(tmp_path / "two.csv", two, root=Path("/"))
    quiet = Console(quiet=True)
    got = prepare_samples(TrainConfig(data=str(tmp_path / "two.csv"), folds=3), tmp_path / "r3", Path("/"), False,
                          quiet)
    assert {s.fold for s in got if s.split != "test"} == {0, 1, 2}
    assert [s.split for s in got] == [s.split for s in two]
    got = prepare_samples(TrainConfig(data=str(tmp_path / "two.csv"), folds=2), tmp_path / "r2", Path("/"), False,
                          quiet)
    assert [s.fold for s in got] == [s.fold for s in two]  # the K folds asked for: kept


def test_more_folds_than_train_and_val_images_is_refused_before_training(tmp_path: Path) -> None:
    """--folds above the train and val images trained every fold that had some, then failed with a scikit-learn
    traceback on the first empty one; it is refused before anything is decoded or written."""
    import io

    from rich.console import Console

    from wbc.config import TrainConfig
    from wbc.errors import WbcError
    from wbc.synthetic import make_dataset
    from wbc.train.loop import run_training

    data = make_dataset(tmp_path / "cells", n_per_class=3, size=32, classes=["neutrophil", "lymphocyte"])
    cfg = TrainConfig(data=str(data), model="small_cnn", pretrained=False, input_size=32, epochs=1, folds=8,
                      split=(0.7, 0.3, 0.0))
    out = io.StringIO()
    with pytest.raises(WbcError, match=r"cells: --folds 8, but only 6 train and val images: fold\(s\) 6, 7 would have "
                                       r"none to validate on; give fewer folds"):
        run_training(cfg, tmp_path / "run", console=Console(file=out))
    assert "decoding" not in out.getvalue() and not (tmp_path / "run" / "fold_0").exists()
    assert not (tmp_path / "run" / "manifest.csv").exists()


def test_max_per_class_on_a_manifest_keeps_rows_of_every_split(synthetic_run: Path, tmp_path: Path) -> None:
    """A manifest dealt with split seed 0, capped with that seed, kept only its test rows: the cap repeated the draw
    that had dealt the split (`--data runs/default/manifest.csv --max-per-class 8`: "no readable train images")."""
    from rich.console import Console

    from wbc.config import TrainConfig
    from wbc.train.loop import prepare_samples

    cfg = TrainConfig(data=str(synthetic_run / "manifest.csv"), max_per_class=3)
    got = prepare_samples(cfg, tmp_path / "run", Path("/"), False, Console(quiet=True))
    classes = {s.label for s in got}
    assert {(s.label, s.split) for s in got} == {(c, p) for c in classes for p in ("train", "val", "test")}
    assert all(sum(s.label == c for s in got) == 3 for c in classes)


def test_classify_cli_writes_csv_and_survives_bad_files(synthetic_run: Path, synthetic_dataset: Path,
                                                         tmp_path: Path) -> None:
    folder = tmp_path / "cells"
    folder.mkdir()
    for p in list(iter_image_paths([synthetic_dataset / "lymphocyte"]))[:5]:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out = tmp_path / "preds.csv"
    r = run_wbc("classify", str(folder), "--model", str(synthetic_run / "model.onnx"), "--output", str(out))
    assert r.returncode == 0, r.stderr
    assert "no out-of-distribution statistics" in r.stderr  # a model straight from training: it flags nothing
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 5
    assert list(rows[0])[:4] == ["path", "label", "confidence", "review"] and "p_lymphocyte" in rows[0]
    assert all(abs(sum(float(v) for k, v in r.items() if k.startswith("p_")) - 1) < 1e-3 for r in rows)
    assert "broken.png" in r.stderr and "5 cells classified" in r.stderr


def test_train_no_test_holds_the_test_split_back(synthetic_dataset: Path, tmp_path: Path) -> None:
    """``wbc train --no-test``: nothing scored on the test split or printed of it, and the command the user runs
    later to score it once works on the run."""
    run = tmp_path / "held"
    r = run_wbc("train", "--data", str(synthetic_dataset), "--model", "small_cnn", "--no-pretrained",
                "--input-size", "48", "--epochs", "1", "--batch-size", "16", "--threads", "2", "--no-test",
                "--output", str(run))
    assert r.returncode == 0, r.stderr
    assert (run / "model.onnx").is_file() and (run / "val_metrics.json").is_file()
    assert not (run / "test_metrics.json").exists()
    assert "test: accuracy" not in r.stderr and "test split held back" in r.stderr
    r = run_wbc("evaluate", str(run / "manifest.csv"), "--split", "test", "--model", str(run / "model.onnx"),
                "--output", str(tmp_path / "ev"))
    assert r.returncode == 0, r.stderr
    n_test = sum(1 for row in csv.DictReader((run / "manifest.csv").open()) if row["split"] == "test")
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["n"] == n_test > 0
    assert "not held-out" not in r.stderr
    r = run_wbc("evaluate", str(run / "manifest.csv"), "--split", "train", "--model", str(run / "model.onnx"),
                "--output", str(tmp_path / "ev_train"))  # the cells it learnt from: said so, not taken for accuracy
    assert r.returncode == 0 and "trained the run's model: these numbers are not held-out accuracy" in r.stderr


@pytest.mark.parametrize(("args", "msg"), [
    (["classify", "/no/such/dir"], "no such file or folder"),
    (["classify", "pyproject.toml", "--model", "/no/model.onnx"], "model file not found"),
    (["train", "--config", "/no/cfg.toml"], "config file not found"),
    (["train", "--balance", "magic"], "balance must be"),
    (["export", "/no/run"], "checkpoint not found"),
    (["train", "--device", "tpu"], "device must be cpu, cuda or auto"),
    (["train", "--unlabelled-crop", "tight"], "unlabelled_crop must be one of smear, single, both"),
])
def test_cli_errors_are_one_line_not_tracebacks(args: list[str], msg: str) -> None:
    r = run_wbc(*args)
    assert r.returncode == 1
    assert msg in r.stderr and "Traceback" not in r.stderr


@pytest.mark.real_data
@pytest.mark.slow
def test_tiny_real_pbc_run(real_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "real"
    r = run_wbc("train", "--data", str(real_data / "pbc"), "--max-per-class", "24", "--epochs", "3",
                "--model", "small_cnn", "--no-pretrained", "--input-size", "64", "--output", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    test = json.loads((out / "test_metrics.json").read_text())
    assert test["n"] == 8 * 4 and 0 <= test["accuracy"] <= 1
    r = run_wbc("classify", str(real_data / "pbc" / "platelet"), "--model", str(out / "model.onnx"),
                "--output", str(tmp_path / "p.csv"))
    assert r.returncode == 0 and len(list(csv.DictReader((tmp_path / "p.csv").open()))) == 1600


@pytest.mark.slow
def test_ensemble_of_two_runs_on_one_split(synthetic_run: Path, synthetic_dataset: Path, tmp_path: Path) -> None:
    from rich.console import Console

    from wbc.config import TrainConfig
    from wbc.train.loop import run_ensemble, run_training

    second = tmp_path / "seed1"
    cfg = TrainConfig(data=str(synthetic_dataset), model="small_cnn", pretrained=False, input_size=48, epochs=3,
                      batch_size=16, lr=3e-3, patience=0, seed=1, ema=0.9)
    run_training(cfg, second, console=Console(quiet=True))
    assert (second / "manifest.csv").read_bytes() == (synthetic_run / "manifest.csv").read_bytes()
    result = run_ensemble([synthetic_run, second], tmp_path / "ens", console=Console(quiet=True))
    clf = load_model(tmp_path / "ens" / "model.onnx")
    assert clf.info.architecture.startswith("ensemble of 2") and clf.info.extra["onnx_max_abs_diff"] < 1e-4
    assert clf.info.extra["split_hash"] == load_model(synthetic_run / "model.onnx").info.extra["split_hash"]
    assert 0 <= result["accuracy"] <= 1 and result["n"] == 16
    # softmax of the ensemble's logits is the mean of the members' probabilities
    cells = np.random.default_rng(0).integers(0, 255, (3, 48, 48, 3), dtype=np.uint8)
    members = [load_model(r / "model.onnx") for r in (synthetic_run, second)]
    from wbc.model import softmax

    mean_p = np.mean([softmax(m.run(cells)["logits"]) for m in members], axis=0)
    np.testing.assert_allclose(softmax(clf.run(cells)["logits"]), mean_p, atol=1e-4)
    held = run_ensemble([synthetic_run, second], tmp_path / "held", console=Console(quiet=True), score_test=False)
    assert held == {} and (tmp_path / "held" / "model.onnx").is_file()
    assert (tmp_path / "ens" / "test_metrics.json").is_file() and not (tmp_path / "held" / "test_metrics.json").exists()
    # residual analysis across the two runs (benchmarks/error_overlap.py)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from error_overlap import main as error_overlap

    assert error_overlap([str(synthetic_run), str(second), "--split", "test", "--data", "/",
                          "--output", str(tmp_path / "overlap.json")]) == 0
    overlap = json.loads((tmp_path / "overlap.json").read_text())
    assert overlap["provenance"]["command"].startswith("python benchmarks/error_overlap.py ")  # how to re-run it
    assert overlap["provenance"]["wbc_version"] and "date" in overlap["provenance"]
    errors = [r["errors"] for r in overlap["per_run"]]
    assert overlap["cells"] == 16 and overlap["errors_in_all_runs"] <= min(errors) <= max(errors)
    assert max(errors) <= overlap["errors_in_any_run"] <= sum(errors)
    assert len(overlap["common_errors"]) == overlap["errors_in_all_runs"]
    for run, row in zip((synthetic_run, second), overlap["per_run"], strict=True):
        assert row["accuracy"] == pytest.approx(json.loads((run / "test_metrics.json").read_text())["accuracy"])
    # --views 8: each run scored by its mean probability over the 8 flips/rotations
    assert error_overlap([str(synthetic_run), str(second), "--split", "test", "--data", "/", "--views", "8",
                          "--output", str(tmp_path / "overlap8.json"), "--html", str(tmp_path / "shared.html")]) == 0
    overlap8 = json.loads((tmp_path / "overlap8.json").read_text())
    page = (tmp_path / "shared.html").read_text()  # the shared errors, one picture each, for an expert
    assert page.count("<figure>") == overlap8["errors_in_all_runs"] and "every run gets wrong" in page
    for c in overlap8["common_errors"]:
        assert f"title='{c['path']}'" in page
    from wbc.adapt import dihedral
    from wbc.classify import load_cells
    from wbc.data import read_manifest

    samples = read_manifest(synthetic_run / "manifest.csv", split="test", root=Path("/"))
    test_cells, _, _ = load_cells([s.path for s in samples], members[0].info.input_size)
    y = np.array([members[0].classes.index(s.label) for s in samples])
    for m, row in zip(members, overlap8["per_run"], strict=True):
        p8 = np.mean([m.predict_proba(v) for v in dihedral(test_cells)], axis=0)
        assert overlap8["views"] == 8 and row["accuracy"] == pytest.approx(float(np.mean(p8.argmax(1) == y)))
    bad = tmp_path / "other_split"
    run_training(cfg.updated({"split_seed": 5, "epochs": 1}), bad, console=Console(quiet=True))
    with pytest.raises(Exception, match="different splits"):
        run_ensemble([synthetic_run, bad], tmp_path / "ens2", console=Console(quiet=True))
    with pytest.raises(SystemExit, match="different splits"):
        error_overlap([str(synthetic_run), str(bad), "--data", "/", "--output", str(tmp_path / "no.json")])


def _copy_run(src: Path, dst: Path, seed: int, folds: int = 0) -> Path:
    """A copy of run ``src`` holding another network (its weights nudged, by ``seed``): a second run on the same split,
    without training one. ``folds``: as `wbc train --folds K` leaves a run: the manifest's non-test rows dealt into
    K folds (the same for every copy), its config saying so, and ensemble.pt holding one network per fold."""
    import shutil

    import torch

    shutil.copytree(src, dst)
    ck = torch.load(dst / "best.pt", map_location="cpu", weights_only=False)
    gen = torch.Generator().manual_seed(seed)

    def nudged() -> dict:
        return {k: t + 0.05 * torch.randn(t.shape, generator=gen) if t.is_floating_point() and t.dim() > 1 else t
                for k, t in ck["model"].items()}

    if not folds:
        torch.save({**ck, "model": nudged()}, dst / "best.pt")
        return dst
    with (dst / "manifest.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    for i, row in enumerate(rows):
        row["fold"] = str(i % folds) if row["split"] != "test" else "-1"
    with (dst / "manifest.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    config = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**config, "folds": folds}))
    torch.save({"members": [nudged() for _ in range(folds)], "arch": ck["arch"], "dropout": ck.get("dropout", 0.0),
                "info": ck["info"]}, dst / "ensemble.pt")
    return dst


def test_an_ensemble_of_cross_validation_runs_is_calibrated_out_of_fold(synthetic_run: Path, tmp_path: Path) -> None:
    """`wbc ensemble` of two --folds runs fitted its temperature and review threshold on the val rows, which trained
    every member, and called it "out-of-fold", "3-fold ... (3 members)" for 6 members. Each train or val row of fold k
    is now scored by every run's k-th member, the ones that never saw it, and the members are counted."""
    import torch
    from rich.console import Console

    from wbc.calibration import calibrate
    from wbc.data import read_manifest
    from wbc.errors import WbcError
    from wbc.model import ModelInfo, softmax
    from wbc.train.data import decode_all
    from wbc.train.export import load_checkpoint
    from wbc.train.loop import predict_logits, run_ensemble

    runs = [_copy_run(synthetic_run, tmp_path / name, seed, folds=2) for name, seed in (("cvA", 1), ("cvB", 2))]
    ck = torch.load(runs[1] / "ensemble.pt", weights_only=False)  # cvB trained with seed 1 (its metadata's config)
    b_info = ModelInfo.from_json(ck["info"])
    b_info.extra["config"]["seed"] = 1
    torch.save({**ck, "info": b_info.to_json()}, runs[1] / "ensemble.pt")
    run_ensemble(runs, tmp_path / "ens", console=Console(quiet=True), score_test=False)
    info = load_model(tmp_path / "ens" / "model.onnx").info
    assert "2 x 2-fold cross-validation ensembles (4 members) on the train and val splits" in info.training_data
    assert "split seed 0, seeds 0, 1" in info.training_data  # both runs, not the first one's alone
    assert info.architecture == "ensemble of 4 x small_cnn" and info.metrics["split"] == "out-of-fold"
    rows = [s for s in read_manifest(runs[0] / "manifest.csv", root=Path("/")) if s.split != "test"]
    cells, ok, _ = decode_all(rows, info.input_size)
    nets = [load_checkpoint(r)[0].members for r in runs]
    fold = np.array([rows[i].fold for i in ok])
    probs = np.zeros((len(ok), len(info.classes)))
    for k in (0, 1):
        probs[fold == k] = np.mean([softmax(predict_logits(n[k], cells[fold == k], info.mean, info.std))
                                    for n in nets], axis=0)
    y = np.array([info.classes.index(rows[i].label) for i in ok])
    cal = calibrate(np.log(np.clip(probs, 1e-12, None)), y, info.review_target_accuracy)
    assert info.temperature == pytest.approx(cal.temperature, rel=1e-4)
    assert info.review_threshold == pytest.approx(cal.review_threshold, abs=1e-4)
    assert json.loads((tmp_path / "ens" / "val_metrics.json").read_text())["n"] == len(ok)
    (runs[1] / "ensemble.pt").unlink()  # its best.pt: one network for the manifest's two folds
    with pytest.raises(WbcError, match=r"cvB: 1 networks for its manifest's 2 cross-validation folds"):
        run_ensemble(runs, tmp_path / "ens2", console=Console(quiet=True))


def test_ensemble_never_overwrites_a_run_counts_a_run_once_and_leaves_no_stale_test_score(synthetic_run: Path,
                                                                                          tmp_path: Path) -> None:
    """`wbc ensemble A B -o A` replaced run A's model (and its added ensemble.pt became what `wbc export A` loads); a
    run given twice, or a copy of one, was counted twice; a --no-test ensemble kept the previous one's test score."""
    import shutil

    from rich.console import Console

    from wbc.errors import WbcError
    from wbc.train.loop import run_ensemble

    quiet = Console(quiet=True)
    b = _copy_run(synthetic_run, tmp_path / "b", seed=1)
    before = {p.name: p.read_bytes() for p in b.iterdir()}
    with pytest.raises(WbcError, match="b: --output is one of the runs"):
        run_ensemble([synthetic_run, b], b, console=quiet)
    with pytest.raises(WbcError, match="b: given twice"):
        run_ensemble([b, synthetic_run, b], tmp_path / "ens", console=quiet)
    copy = shutil.copytree(b, tmp_path / "copy")
    with pytest.raises(WbcError, match=r"copy: holds the same network as .*b"):
        run_ensemble([b, copy], tmp_path / "ens", console=quiet)
    with pytest.raises(WbcError, match="copy: holds a training run"):
        run_ensemble([synthetic_run, b], copy, console=quiet)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(WbcError, match="afile: is a file"):
        run_ensemble([synthetic_run, b], tmp_path / "afile", console=quiet)
    assert {p.name: p.read_bytes() for p in b.iterdir()} == before and not (tmp_path / "ens").exists()
    run_ensemble([synthetic_run, b], tmp_path / "ens", console=quiet)
    assert (tmp_path / "ens" / "test_metrics.json").is_file()
    run_ensemble([synthetic_run, b], tmp_path / "ens", console=quiet, score_test=False)
    assert not (tmp_path / "ens" / "test_metrics.json").exists()


def test_ensemble_of_two_architectures_or_an_unreadable_config_is_one_line(synthetic_run: Path,
                                                                           tmp_path: Path) -> None:
    """Runs of two architectures failed inside torch after every val image was decoded; a first run without (or with
    a broken) config.json gave a FileNotFoundError or JSONDecodeError; a mismatch named neither run nor field."""
    import torch
    from rich.console import Console

    from wbc.errors import WbcError
    from wbc.model import ModelInfo
    from wbc.train.export import load_checkpoint
    from wbc.train.loop import run_ensemble
    from wbc.train.models import create_model

    quiet = Console(quiet=True)
    other = _copy_run(synthetic_run, tmp_path / "resnet", seed=1)
    ck = torch.load(other / "best.pt", map_location="cpu", weights_only=False)
    net = create_model("resnet50", len(ModelInfo.from_json(ck["info"]).classes), pretrained=False)
    torch.save({**ck, "model": net.state_dict(), "arch": "resnet50"}, other / "best.pt")
    with pytest.raises(WbcError, match=r"resnet: architecture resnet50, .*synth: small_cnn; an ensemble needs one"):
        run_ensemble([synthetic_run, other], tmp_path / "ens", console=quiet)
    odd = _copy_run(synthetic_run, tmp_path / "odd", seed=2)
    ck = torch.load(odd / "best.pt", map_location="cpu", weights_only=False)
    info = ModelInfo.from_json(ck["info"])
    info.mean = [0.4, 0.4, 0.4]
    bare = ModelInfo.from_json(ck["info"])
    bare.extra.pop("config")
    torch.save({**ck, "info": info.to_json()}, odd / "best.pt")
    with pytest.raises(WbcError, match=r"odd: mean \[0.4, 0.4, 0.4\], .*synth: \["):
        run_ensemble([synthetic_run, odd], tmp_path / "ens", console=quiet)
    # the config inside the checkpoint serves when config.json is gone; without either, one line
    from wbc.paths import data_root
    from wbc.train.loop import _run_config

    (odd / "config.json").unlink()
    assert {"data_root": str(data_root().resolve()), **json.loads(json.dumps(_run_config(
        odd, load_checkpoint(synthetic_run)[1]).to_dict()))} == json.loads((synthetic_run / "config.json").read_text())
    with pytest.raises(WbcError, match=r"odd/config.json: unreadable run config"):
        _run_config(odd, bare)
    (odd / "config.json").write_text('{"epochs": "x"')
    with pytest.raises(WbcError, match=r"odd/config.json: unreadable run config"):
        _run_config(odd, bare)
    torch.save({**ck, "info": bare.to_json()}, odd / "best.pt")
    with pytest.raises(WbcError, match=r"odd/config.json: unreadable run config"):
        run_ensemble([odd, synthetic_run], tmp_path / "ens", console=quiet)


def _two_untrained_runs(tmp_path: Path, splits: tuple[str, ...], relative: bool = False) -> tuple[Path, Path, Path]:
    """Two run folders holding different untrained small_cnn networks (no training: seconds) on one manifest of
    synthetic cells, whose rows get ``splits`` in turn; ``relative``: paths relative to the data root returned."""
    import torch

    from wbc.config import TrainConfig
    from wbc.labels import CLASSES
    from wbc.model import ModelInfo
    from wbc.synthetic import make_dataset
    from wbc.train.finetune import save_weights
    from wbc.train.models import create_model

    root = tmp_path / "data"
    cells = make_dataset(root / "cells", n_per_class=3, size=40)
    lines = ["path,label,split,fold,sha1"]
    for i, f in enumerate(sorted(cells.rglob("*.png"))):
        lines.append(f"{f.relative_to(root) if relative else f},{f.parent.name},{splits[i % len(splits)]},-1,")
    runs = []
    for k, name in enumerate(("a", "b")):
        run = tmp_path / name
        run.mkdir()
        torch.manual_seed(k)
        net = create_model("small_cnn", len(CLASSES), pretrained=False)
        info = ModelInfo(classes=list(CLASSES), input_size=32, mean=[0.5] * 3, std=[0.25] * 3, model_id=name)
        save_weights(net, "small_cnn", info, run / "best.pt", half=False)
        (run / "manifest.csv").write_text("\n".join(lines) + "\n")
        (run / "config.json").write_text(json.dumps(TrainConfig(data=str(cells), model="small_cnn", input_size=32,
                                                                seed=k, threads=1).to_dict()))
        runs.append(run)
    return runs[0], runs[1], root


def test_an_ensemble_of_runs_whose_split_has_no_test_rows_is_exported_unscored(tmp_path: Path) -> None:
    """`wbc train --data my.csv` takes a manifest of train and val rows only (and scores no test then); `wbc ensemble`
    of two such runs exported the model, then died in a scikit-learn traceback (before wbc 0.36.0)."""
    import io

    from rich.console import Console

    from wbc.train.loop import run_ensemble

    a, b, _ = _two_untrained_runs(tmp_path, ("train", "train", "val"))
    said = io.StringIO()
    assert run_ensemble([a, b], tmp_path / "ens", console=Console(file=said, width=300)) == {}
    assert (tmp_path / "ens" / "model.onnx").is_file() and not (tmp_path / "ens" / "test_metrics.json").exists()
    assert "manifest.csv: no test rows, so no test score" in said.getvalue()


def test_an_ensemble_refused_for_unreadable_rows_removes_the_parent_folders_it_made(tmp_path: Path) -> None:
    """`wbc ensemble -o new/deep/ens` under a data root holding none of the manifest's images was refused "before
    anything is written", but only `ens` was removed again: `new/deep/` stayed (wbc 0.36.0's first cut). Every folder
    made for the output goes; one that was there before, or holds something else, stays."""
    from rich.console import Console

    from wbc.errors import WbcError
    from wbc.train.loop import run_ensemble

    a, b, _root = _two_untrained_runs(tmp_path, ("train", "val", "test"), relative=True)
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "notes.txt").write_text("mine")
    for out in (tmp_path / "new" / "deep" / "ens", tmp_path / "kept" / "deep" / "ens"):
        with pytest.raises(WbcError, match="none of its 8 val images could be read"):
            run_ensemble([a, b], out, data_root=tmp_path / "elsewhere", console=Console(quiet=True))
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["notes.txt"]


def test_an_ensemble_names_its_unreadable_rows_and_refuses_a_data_root_holding_none(tmp_path: Path) -> None:
    """A run's manifest names its images relative to the data root; under another one none was read, and `wbc
    ensemble` calibrated on nothing and ended in a scikit-learn traceback, leaving an empty folder. Rows that could not
    be read were dropped without a word, the test score taken on the rest (before wbc 0.36.0)."""
    import csv
    import io

    from rich.console import Console

    from wbc.errors import WbcError
    from wbc.train.loop import run_ensemble

    a, b, root = _two_untrained_runs(tmp_path, ("train", "val", "test"), relative=True)
    quiet = Console(quiet=True)
    for score_test in (True, False):
        with pytest.raises(WbcError, match=r"a/manifest.csv: none of its 8 val images could be read under the "
                                           r"data root .*elsewhere; first: .*basophil_001.png: no such file; give "
                                           r"--data-root"):
            run_ensemble([a, b], tmp_path / "ens", data_root=tmp_path / "elsewhere", console=quiet,
                         score_test=score_test)
        assert not (tmp_path / "ens").exists()
    rows = list(csv.DictReader((a / "manifest.csv").open()))
    gone = [next(r["path"] for r in rows if r["split"] == split) for split in ("val", "test")]
    for path in gone:
        (root / path).unlink()
    said = io.StringIO()
    result = run_ensemble([a, b], tmp_path / "ens", data_root=root, console=Console(file=said, width=300))
    assert result["n"] == 7 and [p for p, _ in result["unreadable"]] == [str(root / gone[1])]
    val = json.loads((tmp_path / "ens" / "val_metrics.json").read_text())
    assert val["n"] == 7 and [p for p, _ in val["unreadable"]] == [str(root / gone[0])]
    skipped = list(csv.DictReader((tmp_path / "ens" / "skipped.csv").open()))
    assert [r["path"] for r in skipped] == [str(root / p) for p in gone]
    assert all(r["reason"].startswith("unreadable: ") for r in skipped)
    for path, split in zip(gone, ("val", "test"), strict=True):
        assert f"skipped unreadable {root / path}: no such file" in said.getvalue()
        assert f"skipped 1 of 8 {split} images, which could not be read: left out" in said.getvalue()
    for r in rows:  # every test row gone: nothing to score, refused before anything is written
        if r["split"] == "test":
            (root / r["path"]).unlink(missing_ok=True)
    with pytest.raises(WbcError, match=r"none of its 8 test images could be read .*, or --no-test$"):
        run_ensemble([a, b], tmp_path / "ens2", data_root=root, console=quiet)
    assert not (tmp_path / "ens2").exists()


@pytest.mark.parametrize("lone", [{"progressive_epochs": 1}, {"progressive_size": 32}])
def test_a_wbc_0_32_run_with_one_progressive_setting_still_resumes_and_ensembles(synthetic_run: Path, tmp_path: Path,
                                                                                lone: dict) -> None:
    """wbc 0.32.0 took progressive_epochs without progressive_size (or the reverse) and trained every epoch at full
    size; 0.33.0 refuses such a config, and so refused to resume ("unreadable run config") or ensemble the runs
    0.32.0 had made with one. A saved run's config is read as the run trained: both 0."""
    import torch
    from rich.console import Console

    from wbc.config import TrainConfig
    from wbc.model import ModelInfo
    from wbc.train.loop import resumed_config, run_ensemble

    runs = [_copy_run(synthetic_run, tmp_path / name, seed) for name, seed in (("a", 1), ("b", 2))]
    for run in runs:  # as wbc 0.32.0 wrote them: config.json and the checkpoint's metadata
        config = {**json.loads((run / "config.json").read_text()), **lone}
        (run / "config.json").write_text(json.dumps(config))
        ck = torch.load(run / "best.pt", weights_only=False)
        info = ModelInfo.from_json(ck["info"])
        info.extra["config"] = {**info.extra["config"], **lone}
        torch.save({**ck, "info": info.to_json()}, run / "best.pt")
    cfg = resumed_config(TrainConfig(), runs[0], given=frozenset())
    assert (cfg.progressive_size, cfg.progressive_epochs) == (0, 0) and cfg.epochs == 8
    run_ensemble(runs, tmp_path / "ens", console=Console(quiet=True), score_test=False)
    recorded = load_model(tmp_path / "ens" / "model.onnx").info.extra["config"]
    assert (recorded["progressive_size"], recorded["progressive_epochs"]) == (0, 0)


def test_quantize_keeps_predictions_and_refits_calibration(synthetic_run: Path, tmp_path: Path) -> None:
    import onnx

    out = tmp_path / "int8.onnx"
    r = run_wbc("quantize", str(synthetic_run / "model.onnx"), "--manifest", str(synthetic_run / "manifest.csv"),
                "--output", str(out), "--per-class", "4", "--threads", "1")
    assert r.returncode == 0, r.stderr
    graph = onnx.load(str(out)).graph
    assert any(n.op_type == "QuantizeLinear" for n in graph.node)
    assert any(t.data_type == onnx.TensorProto.INT8 for t in graph.initializer)
    # the input is never quantised (another lab's colours would clip to the calibration range): the first
    # convolution reads it as float, with float weights
    readers = [n for n in graph.node if graph.input[0].name in n.input]
    assert readers and all(n.op_type == "Conv" for n in readers)
    fp32, int8 = load_model(synthetic_run / "model.onnx"), load_model(out)
    rep = int8.info.extra["quantization"]
    assert rep["calibration_cells"] == 32 and rep["val_agreement"] >= 0.9
    assert int8.info.model_id == fp32.info.model_id + "-int8" and int8.info.temperature > 0
    from wbc.adapt import original_head  # the head stays float, so `wbc adapt` can refit it

    np.testing.assert_allclose(original_head(int8)[0], original_head(fp32)[0])
    from wbc.data import read_manifest

    samples = read_manifest(synthetic_run / "manifest.csv", split="test", root=Path("/"))
    a = classify_paths([s.path for s in samples], fp32).predictions
    b = classify_paths([s.path for s in samples], int8).predictions
    assert np.mean([p.label == q.label for p, q in zip(a, b, strict=True)]) >= 0.9
    again = run_wbc("quantize", str(out), "--manifest", str(synthetic_run / "manifest.csv"), "--output",
                    str(tmp_path / "twice.onnx"))
    assert again.returncode == 1 and "already quantised" in again.stderr and "Traceback" not in again.stderr


@pytest.mark.slow
def test_centre_crop_model_trains_exports_and_classifies_like_its_evaluation(synthetic_dataset: Path,
                                                                            tmp_path: Path) -> None:
    """``centre_crop``: cells resized whole to ``input_size``, the network sees only their centre, everywhere."""
    from rich.console import Console

    from wbc.config import TrainConfig
    from wbc.errors import ConfigError
    from wbc.train.loop import run_training

    with pytest.raises(ConfigError, match="centre_crop"):
        TrainConfig(input_size=48).updated({"centre_crop": 64})
    cfg = TrainConfig(data=str(synthetic_dataset), model="small_cnn", pretrained=False, input_size=64,
                      centre_crop=48, epochs=3, batch_size=16, lr=3e-3, patience=0, threads=2, augment=True,
                      hed_sigma=0.0, hed_bias=0.0)
    run = tmp_path / "crop"
    test = run_training(cfg, run, console=Console(quiet=True))
    clf = load_model(run / "model.onnx")
    assert (clf.info.input_size, clf.info.centre_crop, clf.info.network_size) == (64, 48, 48)
    assert clf.session.get_inputs()[0].shape[2:] == [48, 48]
    assert clf.info.extra["onnx_max_abs_diff"] < 1e-4
    from wbc.data import read_manifest

    samples = read_manifest(run / "manifest.csv", split="test", root=Path("/"))
    res = classify_paths([s.path for s in samples], clf, batch_size=5)
    acc = np.mean([p.label == s.label for p, s in zip(res.predictions, samples, strict=True)])
    assert acc == pytest.approx(test["accuracy"], abs=1e-9)  # inference crops exactly as evaluation did


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_train_on_a_missing_gpu_says_so_before_reading_data(tmp_path: Path) -> None:
    r = run_wbc("train", "--device", "cuda", "--data", str(tmp_path / "none"), "--output", str(tmp_path / "r"))
    assert r.returncode == 1 and "no CUDA GPU" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_progressive_resizing_with_worker_processes(synthetic_dataset: Path, tmp_path: Path) -> None:
    """Early epochs at a smaller input, augmentation in a worker process; the model ends at full size."""
    from rich.console import Console

    from wbc.config import TrainConfig
    from wbc.train.loop import progressive_input, run_training

    cfg = TrainConfig(data=str(synthetic_dataset), model="small_cnn", pretrained=False, input_size=48, epochs=6,
                      batch_size=16, lr=3e-3, patience=0, threads=2, num_workers=1, progressive_size=32,
                      progressive_epochs=3, hed_sigma=0.0, hed_bias=0.0)
    assert [progressive_input(cfg, e) for e in range(6)] == [32, 32, 32, 0, 0, 0]
    test = run_training(cfg, tmp_path / "prog", console=Console(quiet=True))
    assert test["accuracy"] > 0.4  # 8 balanced classes: chance is 0.125
    clf = load_model(tmp_path / "prog" / "model.onnx")
    assert clf.session.get_inputs()[0].shape[2:] == [48, 48]


_FORK_AFTER_SESSIONS = """
import gc, sys
from pathlib import Path
import numpy as np
from rich.console import Console
import wbc.train.data as data
from wbc.config import TrainConfig
from wbc.model import load_model
from wbc.train.loop import run_training

model, cells, out = sys.argv[1:4]
gc.disable()
for _ in range(8):  # ONNX Runtime sessions (with their thread pools) left as cyclic garbage, as a notebook leaves them
    clf = load_model(model, threads=2)
    clf.run(np.zeros((2, 48, 48, 3), np.uint8))
    box = [clf]
    box.append(box)
    del clf, box
first = data.CachedCells.__getitem__  # the garbage collector stays off here: the sessions are still there at the fork

def getitem(self, i):  # the worker process collects garbage before its first cell, as any allocation may make it
    if not getattr(data, "collected", False):
        data.collected = True
        gc.collect()
    return first(self, i)

data.CachedCells.__getitem__ = getitem
cfg = TrainConfig(data=cells, model="small_cnn", pretrained=False, input_size=48, epochs=1, batch_size=16, lr=3e-3,
                  patience=0, threads=2, num_workers=1, hed_sigma=0.0, hed_bias=0.0)
run_training(cfg, Path(out), console=Console(quiet=True))
print("trained")
"""


@pytest.mark.slow
def test_worker_processes_do_not_hang_on_sessions_left_in_the_parent(synthetic_run: Path, synthetic_dataset: Path,
                                                                     tmp_path: Path) -> None:
    """Training with worker processes after ONNX models were used in the same process (a notebook, a test run):
    a worker is a fork, and collecting an inherited session waited for ever on the parent's thread pool."""
    r = subprocess.run([sys.executable, "-c", _FORK_AFTER_SESSIONS, str(synthetic_run / "model.onnx"),
                        str(synthetic_dataset), str(tmp_path / "run")], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0 and "trained" in r.stdout, r.stderr[-2000:]


def test_a_split_with_no_readable_images_is_one_clear_error(tmp_path: Path) -> None:
    """A manifest whose training images are all gone stops with the reason, not a numpy traceback."""
    from rich.console import Console

    from wbc.config import TrainConfig
    from wbc.data import Sample, write_manifest
    from wbc.errors import WbcError
    from wbc.io import write_image
    from wbc.synthetic import synthetic_cell
    from wbc.train.loop import run_training

    run = tmp_path / "run"
    run.mkdir()
    val = tmp_path / "val.png"
    write_image(val, synthetic_cell("neutrophil", 48))  # a cell: a blank frame is refused as wbc classify refuses it
    samples = [Sample(tmp_path / f"gone{i}.png", "neutrophil", "train") for i in range(3)]
    write_manifest(run / "manifest.csv", [*samples, Sample(val, "neutrophil", "val")], root=tmp_path)
    cfg = TrainConfig(model="small_cnn", pretrained=False, input_size=48, epochs=1)
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))  # a run stopped while decoding: resumed
    with pytest.raises(WbcError, match=r"manifest\.csv: no readable train images \(3 of 4 could not be read\)"):
        run_training(cfg, run, data_root=tmp_path, resume=True, console=Console(quiet=True))


@pytest.mark.parametrize("layout", ["missing", "one class"])
def test_a_run_stopped_before_training_leaves_no_config_behind(tmp_path: Path, layout: str) -> None:
    """A missing dataset folder, or one holding a single class (a classifier that cannot be wrong, with perfect
    validation scores), stops the run in one line, without a config.json that makes the folder look like a run."""
    from rich.console import Console

    from wbc.config import TrainConfig
    from wbc.errors import WbcError
    from wbc.synthetic import make_dataset
    from wbc.train.loop import run_training

    data = tmp_path / "cells"
    if layout == "one class":
        make_dataset(data, n_per_class=3, size=32, classes=["basophil"])
    cfg = TrainConfig(data=str(data), model="small_cnn", pretrained=False, input_size=48, epochs=1)
    msg = "dataset folder not found" if layout == "missing" else "images of one class only .basophil."
    with pytest.raises(WbcError, match=msg):
        run_training(cfg, tmp_path / "run", console=Console(quiet=True))
    assert not (tmp_path / "run" / "config.json").exists()


def test_a_class_without_readable_training_images_is_refused_not_exported(tmp_path: Path) -> None:
    """A class folder whose images were all unreadable became an output of the exported model that the network never
    learnt (class weight 0, no cell), which wbc classify then answered with and every report counted."""
    from rich.console import Console

    from wbc.config import TrainConfig
    from wbc.errors import WbcError
    from wbc.synthetic import make_dataset
    from wbc.train.loop import run_training

    data = make_dataset(tmp_path / "cells", n_per_class=4, size=32, classes=["neutrophil", "lymphocyte"])
    (data / "basophil").mkdir()
    for i in range(4):
        (data / "basophil" / f"b{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes([i]) * 40)  # truncated
    cfg = TrainConfig(data=str(data), model="small_cnn", pretrained=False, input_size=32, epochs=1)
    with pytest.raises(WbcError, match=r"no readable training images of basophil \(4 of 12 images could not be read\)"):
        run_training(cfg, tmp_path / "run", console=Console(quiet=True))
    assert not (tmp_path / "run" / "model.onnx").exists() and not (tmp_path / "run" / "last.pt").exists()


def test_an_unreadable_training_image_leaves_the_cell_fraction_measured(tmp_path: Path) -> None:
    """The cell fraction (how `wbc analyze` frames smear cells for the model) was measured on every manifest row: one
    unreadable file among those picked dropped the measurement, and the model cut smear cells at the default 0.33.
    It is measured on the readable training images, and the metadata counts only the images decoded."""
    from rich.console import Console

    from wbc.config import TrainConfig
    from wbc.crops import measure_cell_fraction
    from wbc.data import read_manifest
    from wbc.io import read_image
    from wbc.synthetic import make_dataset
    from wbc.train.loop import run_training

    data = make_dataset(tmp_path / "cells", n_per_class=6, size=48, classes=["neutrophil", "lymphocyte"])
    bad = data / "neutrophil" / "zz_truncated.png"
    bad.write_bytes((data / "neutrophil").glob("*.png").__next__().read_bytes()[:60])
    cfg = TrainConfig(data=str(data), model="small_cnn", pretrained=False, input_size=32, epochs=1, batch_size=8,
                      threads=1, split=(0.5, 0.25, 0.25))
    run_training(cfg, tmp_path / "run", console=Console(quiet=True), score_test=False)
    rows = read_manifest(tmp_path / "run" / "manifest.csv", root=Path("/"))
    assert bad not in {s.path for s in rows}  # since wbc 0.35.0 left out of the manifest, listed in skipped.csv
    assert f"{bad},unreadable: " in (tmp_path / "run" / "skipped.csv").read_text()
    want = measure_cell_fraction(read_image(s.path) for s in rows if s.split == "train")
    info = load_model(tmp_path / "run" / "model.onnx").info
    assert info.preprocessing.cell_fraction == pytest.approx(want)
    assert f"of {len(rows)} images" in info.training_data


def test_a_model_without_pretrained_weights_is_recorded_as_trained_from_scratch(tmp_path: Path) -> None:
    """`pretrained = true` (the default) is ignored by small_cnn and resnet50, which have no pretrained weights, yet
    the run's config.json and the model's metadata said pretrained: true: a from-scratch run that said it was not."""
    import io

    from rich.console import Console

    from wbc.config import TrainConfig
    from wbc.synthetic import make_dataset
    from wbc.train.loop import resumed_config, run_training

    data = make_dataset(tmp_path / "cells", n_per_class=4, size=32, classes=["neutrophil", "lymphocyte"])
    cfg = TrainConfig(data=str(data), model="small_cnn", input_size=32, epochs=1, batch_size=8, threads=1)
    assert cfg.pretrained
    out = io.StringIO()
    run_training(cfg, tmp_path / "run", console=Console(file=out, width=200), score_test=False)
    assert "small_cnn has no pretrained weights: it starts from random weights" in out.getvalue()
    assert json.loads((tmp_path / "run" / "config.json").read_text())["pretrained"] is False
    assert load_model(tmp_path / "run" / "model.onnx").info.extra["config"]["pretrained"] is False
    assert resumed_config(cfg, tmp_path / "run", given={"pretrained", "model"}).pretrained is False  # no clash



def test_a_network_registered_as_the_docs_say_is_given_pretrained_as_asked(tmp_path: Path) -> None:
    """docs/training.md registers a network with `@register("name", "description")`; wbc 0.33.0's registry took that
    as "no pretrained weights", so a network with ImageNet weights was built with pretrained=False, trained from
    random weights and recorded so. Without ``weights=`` the constructor decides: it is given pretrained as asked."""
    import io

    from rich.console import Console
    from torch import nn

    from wbc.config import TrainConfig
    from wbc.synthetic import make_dataset
    from wbc.train import models
    from wbc.train.loop import run_training

    asked: list[bool] = []

    @models.register("test_weighted_cnn", "a stand-in for a network with pretrained weights")
    def _net(pretrained: bool = True) -> tuple[nn.Module, int]:
        asked.append(pretrained)
        return nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU()), 8

    try:
        data = make_dataset(tmp_path / "cells", n_per_class=4, size=32, classes=["neutrophil", "lymphocyte"])
        cfg = TrainConfig(data=str(data), model="test_weighted_cnn", input_size=32, epochs=1, batch_size=8, threads=1)
        out = io.StringIO()
        run_training(cfg, tmp_path / "run", console=Console(file=out, width=200), score_test=False)
    finally:
        del models._REGISTRY["test_weighted_cnn"]
    assert asked and asked[0] is True  # the training network (models built only to be loaded into come after)
    assert "no pretrained weights" not in out.getvalue()
    assert json.loads((tmp_path / "run" / "config.json").read_text())["pretrained"] is True
    assert not models.has_pretrained_weights("small_cnn") and models.has_pretrained_weights("efficientnet_lite0")

def test_a_class_asked_for_but_absent_from_the_data_is_named(tmp_path: Path) -> None:
    """classes naming a class the data does not hold trained a model without it, without a word, while the run's
    config.json listed it."""
    from rich.console import Console

    from wbc.config import TrainConfig
    from wbc.errors import WbcError
    from wbc.synthetic import make_dataset
    from wbc.train.loop import run_training

    data = make_dataset(tmp_path / "cells", n_per_class=3, size=32, classes=["neutrophil", "lymphocyte"])
    cfg = TrainConfig(data=str(data), classes=("neutrophil", "lymphocyte", "basophil"), model="small_cnn",
                      pretrained=False, input_size=32, epochs=1)
    with pytest.raises(WbcError, match=r"cells: no images of basophil, which classes asks for"):
        run_training(cfg, tmp_path / "run", console=Console(quiet=True))
    assert not (tmp_path / "run" / "config.json").exists()


@pytest.mark.parametrize(("change", "msg"), [
    ({"model": "efficientnet-lite0"}, r"model 'efficientnet-lite0': not a registered model \(efficientnet_lite0, "),
    ({"seed": -1}, r"seed and split_seed must be in 0..2\*\*32 - 1"),
    ({"split_seed": -1}, r"seed and split_seed must be in 0..2\*\*32 - 1"),
    ({"init_weights": "nope/best.pt"}, r"nope/best.pt: init_weights not found"),
    ({"init_weights": "RUN", "model": "efficientnet_lite0"}, r"best.pt: weights of small_cnn, this run trains "
                                                              r"efficientnet_lite0"),
    ({"init_weights": "RUN", "classes": ("neutrophil", "lymphocyte")}, r"best.pt: weights for classes \["),
    ({"unlabelled": "txl_pbc:xyz"}, r"unlabelled: txl_pbc:xyz: unknown TXL-PBC origin\(s\) \['xyz'\]"),
    ({"unlabelled": "/no/such/cells"}, r"unlabelled: /no/such/cells: no such folder"),
], ids=["model", "seed", "split_seed", "init_missing", "init_arch", "init_classes", "origin", "folder"])
def test_bad_settings_are_refused_before_any_image_is_decoded(synthetic_run: Path, synthetic_dataset: Path,
                                                              tmp_path: Path, change: dict, msg: str) -> None:
    """A model name's typo, a negative seed or init_weights of another architecture were tracebacks, and a missing
    init_weights or an unknown unlabelled origin one line, but only after the whole dataset was decoded (a minute on
    full PBC, on a rented GPU), leaving config.json, manifest.csv and skipped.csv behind."""
    import io

    from rich.console import Console

    from wbc.config import TrainConfig
    from wbc.errors import WbcError
    from wbc.train.loop import run_training

    if change.get("init_weights") == "RUN":
        change = {**change, "init_weights": str(synthetic_run / "best.pt")}
    out = io.StringIO()
    with pytest.raises(WbcError, match=msg):
        cfg = TrainConfig(data=str(synthetic_dataset), pretrained=False, input_size=32, epochs=1).updated(
            {"model": "small_cnn", **change})
        run_training(cfg, tmp_path / "run", console=Console(file=out))
    assert "decoding" not in out.getvalue() and not (tmp_path / "run" / "config.json").exists()


def test_train_output_that_is_a_file_or_under_one_is_one_line(synthetic_dataset: Path, tmp_path: Path) -> None:
    """`wbc train -o FILE` and `-o FILE/run` were FileExistsError and NotADirectoryError tracebacks."""
    (tmp_path / "afile").write_text("x")
    r = run_wbc("train", "--data", str(synthetic_dataset), "--model", "efficientnet-lite0", "-o", str(tmp_path / "r"))
    assert r.returncode == 1 and "model 'efficientnet-lite0': not a registered model" in r.stderr
    assert "Traceback" not in r.stderr and "decoding" not in r.stderr and not (tmp_path / "r").exists()
    for out, msg in ((tmp_path / "afile", "afile: is a file; --output is the run folder"),
                     (tmp_path / "afile" / "run", "because " + str(tmp_path / "afile") + " is a file")):
        r = run_wbc("train", "--data", str(synthetic_dataset), "-o", str(out))
        assert r.returncode == 1 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("per_class", [2, 4])
def test_quantize_writes_its_output_only_when_finished(tmp_path: Path, per_class: int) -> None:
    """The int8 model is built and re-fitted beside --output and moved there at the end: when the out-of-distribution
    re-fit fails (here: too few cells), --output holds no finished-looking model with the float model's thresholds."""
    from tiny_models import mean_colour_model
    from wbc.data import Sample, scan_folder, write_manifest
    from wbc.errors import WbcError
    from wbc.model import update_metadata
    from wbc.quantize import quantize_model
    from wbc.synthetic import make_dataset

    w = np.random.default_rng(0).normal(0, 3, (8, 3))
    model = mean_colour_model(tmp_path / "float.onnx", 32, w, "tiny", embedding_output=True)
    update_metadata(model, ood={"percentile": 99.0})  # so quantize re-fits the OOD statistics, its last step
    cells = make_dataset(tmp_path / "cells", n_per_class=per_class, size=32, classes=["basophil", "neutrophil"])
    rows = [Sample(s.path, s.label, "train" if i % 2 else "val") for i, s in enumerate(scan_folder(cells).samples)]
    write_manifest(tmp_path / "manifest.csv", rows, root=tmp_path)
    out = tmp_path / "q" / "int8.onnx"
    if per_class == 2:
        with pytest.raises(WbcError, match="too few readable images"):
            quantize_model(model, tmp_path / "manifest.csv", out, data_root=tmp_path, threads=1)
        assert list(out.parent.iterdir()) == []
    else:
        quantize_model(model, tmp_path / "manifest.csv", out, data_root=tmp_path, threads=1)
        assert sorted(p.name for p in out.parent.iterdir()) == ["int8.json", "int8.onnx"]
        info = load_model(out, threads=1).info
        assert info.model_id == "tiny-int8" and info.ood["percentile"] == 99.0 and "quantization" in info.extra


def test_quantize_keeps_a_cross_validation_run_s_out_of_fold_calibration(tmp_path: Path) -> None:
    """A cross-validation run's val rows trained its members: re-fitted on them, the review threshold fell from 0.99
    to 0.85 (in-sample); the float model's out-of-fold temperature and threshold are kept."""
    from tiny_models import mean_colour_model
    from wbc.data import Sample, scan_folder, write_manifest
    from wbc.model import update_metadata
    from wbc.quantize import quantize_model
    from wbc.synthetic import make_dataset

    w = np.random.default_rng(0).normal(0, 3, (8, 3))
    model = mean_colour_model(tmp_path / "float.onnx", 32, w, "tiny")
    update_metadata(model, temperature=1.7, review_threshold=0.93)
    cells = make_dataset(tmp_path / "cells", n_per_class=6, size=32, classes=["basophil", "neutrophil"])
    rows = [Sample(s.path, s.label, "train" if i % 2 else "val", fold=i % 3)
            for i, s in enumerate(scan_folder(cells).samples)]
    write_manifest(tmp_path / "manifest.csv", rows, root=tmp_path)
    report = quantize_model(model, tmp_path / "manifest.csv", tmp_path / "int8.onnx", data_root=tmp_path, threads=1)
    info = load_model(tmp_path / "int8.onnx", threads=1).info
    assert (info.temperature, info.review_threshold) == (1.7, 0.93) and "out-of-fold" in report["calibration"]
    # its val accuracies are in-sample (those rows trained the members): the terminal line said nothing of it
    from typer.testing import CliRunner

    from wbc.cli import app

    assert report["val_in_sample"] is True
    res = CliRunner().invoke(app, ["quantize", str(model), "--manifest", str(tmp_path / "manifest.csv"), "-o",
                                   str(tmp_path / "again.onnx"), "--data-root", str(tmp_path), "--threads", "1"])
    assert res.exit_code == 0, (res.output, res.exception)
    assert "(in-sample: those rows trained the members; agreement only)" in " ".join(res.output.split())


def _tiny_float_run(tmp_path: Path, extra: dict | None = None) -> tuple[Path, Path]:
    """A float mean-colour model (with an embedding output) and a manifest of synthetic cells, train and val rows."""
    from tiny_models import mean_colour_model
    from wbc.data import Sample, scan_folder, write_manifest
    from wbc.synthetic import make_dataset

    w = np.random.default_rng(0).normal(0, 3, (8, 3))
    model = mean_colour_model(tmp_path / "float.onnx", 32, w, "tiny", extra=extra, embedding_output=True)
    cells = make_dataset(tmp_path / "cells", n_per_class=4, size=32, classes=["basophil", "neutrophil"])
    rows = [Sample(s.path, s.label, "train" if i % 2 else "val") for i, s in enumerate(scan_folder(cells).samples)]
    write_manifest(tmp_path / "manifest.csv", rows, root=tmp_path)
    return model, tmp_path / "manifest.csv"


def test_quantize_keeps_a_lab_adapted_model_s_calibration_and_ood_reference(tmp_path: Path) -> None:
    """A model adapted to a lab (`wbc adapt`) has its calibration and an OOD reference from that lab's cells: re-fitted
    on the manifest (another lab's cells), a lab model whose every cell was reviewed (threshold 1.0) accepted cells at
    PBC's 0.965 and lost its lab's OOD reference. They are kept, and the quantisation record says so."""
    import copy

    from wbc.model import update_metadata
    from wbc.ood_fit import fit_from_manifest
    from wbc.quantize import quantize_model

    model, manifest = _tiny_float_run(tmp_path)
    fit_from_manifest(model, manifest, data_root=tmp_path, threads=1)
    ood = load_model(model, threads=1).info.ood
    lab = copy.deepcopy(ood["references"][0])
    lab["name"] = "adapt:my_lab"
    ood["references"].append(lab)
    head = {"weight": np.random.default_rng(1).normal(0, 3, (8, 3)).tolist(), "bias": [0.0] * 8}
    update_metadata(model, head=head, temperature=1.3, review_threshold=1.0, ood=ood,
                    extra={"adapt": {"method": "head", "data": "my_lab", "review_threshold": 1.0}, "tta_views": 4})
    report = quantize_model(model, manifest, tmp_path / "int8.onnx", data_root=tmp_path, threads=1)
    info = load_model(tmp_path / "int8.onnx", threads=1).info
    assert (info.temperature, info.review_threshold) == (1.3, 1.0) and info.head == head
    assert [r["name"] for r in info.ood["references"]] == ["training", "adapt:my_lab"] and info.ood == ood
    assert "adapted model's" in report["calibration"] and "kept" in info.extra["quantization"]["ood"]
    assert info.extra["tta_views"] == 4 and info.model_id == "tiny-int8"


def test_quantize_reads_a_float_graph_as_float_whatever_its_metadata_says(tmp_path: Path) -> None:
    """A model fine-tuned by `wbc adapt` before wbc 0.30.0 carried its int8 base's quantisation record in a float32
    graph, and `wbc quantize` refused it as "already quantised": the graph is what says so."""
    from wbc.quantize import quantize_model

    stale = {"quantization": {"method": "the int8 base's", "val_accuracy_int8": 0.99}}
    model, manifest = _tiny_float_run(tmp_path, extra=stale)
    quantize_model(model, manifest, tmp_path / "int8.onnx", data_root=tmp_path, threads=1)
    rec = load_model(tmp_path / "int8.onnx", threads=1).info.extra["quantization"]
    assert rec["method"] != "the int8 base's" and rec["calibration"] == "re-fitted on the val split"


def test_quantizing_an_ensemble_keeps_every_member_s_head_and_stem_float(tmp_path: Path) -> None:
    """An ensemble graph's "logits" node is the Log of the mean probability, so only it was kept float and every
    member's linear head was quantised, while the metadata said "linear head float"."""
    import onnx
    import torch

    from wbc.model import ModelInfo
    from wbc.quantize import quantize_onnx
    from wbc.train.export import export_model
    from wbc.train.models import Ensemble, create_model

    torch.manual_seed(0)
    nets = [create_model("small_cnn", 8, pretrained=False, dropout=0.0).eval() for _ in range(2)]
    info = ModelInfo(classes=[f"c{i}" for i in range(8)], input_size=32, mean=[0.5] * 3, std=[0.25] * 3,
                     model_id="ens")
    export_model(Ensemble(nets).eval(), info, tmp_path / "ens.onnx", torch.rand(2, 3, 32, 32))
    calibration = np.random.default_rng(0).normal(0, 1, (16, 3, 32, 32)).astype(np.float32)
    quantize_onnx(tmp_path / "ens.onnx", tmp_path / "int8.onnx", calibration, batch_size=8)
    graph = onnx.load(str(tmp_path / "int8.onnx")).graph
    made_by = {o: n.op_type for n in graph.node for o in n.output}
    heads = [n for n in graph.node if n.op_type == "Gemm"]
    stems = [n for n in graph.node if n.op_type == "Conv" and graph.input[0].name in n.input]
    assert len(heads) == 2 and len(stems) == 2 and any(n.op_type == "QuantizeLinear" for n in graph.node)
    assert all(made_by.get(i) != "DequantizeLinear" for n in heads + stems for i in n.input[1:])
    assert all(made_by.get(n.input[0]) != "DequantizeLinear" for n in heads)


@pytest.mark.parametrize("kind", ["truncated", "an image"])
def test_export_of_a_file_that_is_no_checkpoint_is_one_line(tmp_path: Path, kind: str) -> None:
    """`wbc export` on a truncated .pt or another file: the file named in one line, not a PyTorch traceback."""
    from wbc.errors import WbcError
    from wbc.paths import DEFAULT_MODEL
    from wbc.train.export import load_checkpoint

    bad = tmp_path / "bad.pt"
    if kind == "truncated":
        bad.write_bytes(DEFAULT_MODEL.with_suffix(".pt").read_bytes()[:300_000])
    else:
        bad.write_bytes(b"\xff\xd8\xff\xe0" + bytes(64))
    with pytest.raises(WbcError, match=r"bad\.pt: not a wbc checkpoint"):
        load_checkpoint(bad)


def test_export_of_a_cross_validation_fold_says_to_export_the_run(tmp_path: Path) -> None:
    """A fold's best.pt never gets metadata (only the run's ensemble.pt does), yet `wbc export RUN/fold_0` advised
    finishing it with `wbc train --resume`, which on the fold folder would start a new run with default settings."""
    import torch

    from wbc.errors import WbcError
    from wbc.train.export import load_checkpoint
    from wbc.train.models import create_model

    run = tmp_path / "cv"
    (run / "fold_0").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    torch.save({"model": create_model("small_cnn", 2, pretrained=False).state_dict(), "arch": "small_cnn",
                "dropout": 0.0}, run / "fold_0" / "best.pt")
    with pytest.raises(WbcError, match=rf"network of a cross-validation run, .*export the run folder {run} "):
        load_checkpoint(run / "fold_0")
