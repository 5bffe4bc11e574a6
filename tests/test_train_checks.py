"""Training refuses what would make its numbers or its model wrong: one image in two splits or folds of a manifest, a
diverged (NaN) run, WBCAtt attributes without their tables; and it records every image it leaves out."""

from __future__ import annotations

import csv
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import needs_torch

pytestmark = needs_torch


def tiny(data: Path, **kw: object) -> object:
    """A seconds-long training config on ``data`` (small_cnn at 32 px, one epoch, one thread)."""
    from wbc.config import TrainConfig

    return TrainConfig(data=str(data), model="small_cnn", pretrained=False, input_size=32, epochs=1, batch_size=8,
                       threads=1, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from wbc.synthetic import make_dataset

    return make_dataset(tmp_path_factory.mktemp("cells") / "cells", n_per_class=6, size=40,
                        classes=["neutrophil", "lymphocyte", "eosinophil"])


def split_manifest(data: Path, path: Path, folds: int = 0) -> list:
    from wbc.data import scan_folder, stratified_split, write_manifest

    rows = stratified_split(scan_folder(data).samples, seed=0, folds=folds)
    write_manifest(path, rows, root=Path("/"))
    return rows


def test_a_manifest_listing_a_test_image_as_train_is_refused(small_data: Path, tmp_path: Path) -> None:
    """A merged manifest listed a test file again as a train row: the run trained on it and reported its test accuracy
    as held out."""
    from rich.console import Console

    from wbc.data import write_manifest
    from wbc.errors import WbcError
    from wbc.train.loop import prepare_samples

    rows = split_manifest(small_data, tmp_path / "ok.csv")
    test = next(s for s in rows if s.split == "test")
    write_manifest(tmp_path / "leak.csv", [*rows, replace(test, split="train")], root=Path("/"))
    for folds in (0, 3):
        with pytest.raises(WbcError, match=rf"leak\.csv: {test.path} \(test\) and {test.path} \(train\) are the same "
                                           r"image \(SHA-1 \w{12}\) in two splits"):
            prepare_samples(tiny(tmp_path / "leak.csv", folds=folds), tmp_path / "r", Path("/"), False,  # type: ignore[arg-type]
                            Console(quiet=True))
        assert not (tmp_path / "r" / "manifest.csv").exists()
    # a copy under another name in train and val: in-sample validation without folds, pooled (fine) with them
    val = next(s for s in rows if s.split == "val")
    shutil.copy(val.path, tmp_path / "copy.png")
    write_manifest(tmp_path / "copy.csv", [*rows, replace(val, path=tmp_path / "copy.png", split="train")],
                   root=Path("/"))
    with pytest.raises(WbcError, match=r"copy\.png \(train\) are the same image"):
        prepare_samples(tiny(tmp_path / "copy.csv"), tmp_path / "r", Path("/"), False, Console(quiet=True))  # type: ignore[arg-type]
    got = prepare_samples(tiny(tmp_path / "copy.csv", folds=2), tmp_path / "r2", Path("/"), False,  # type: ignore[arg-type]
                          Console(quiet=True))
    assert len(got) == len(rows) + 1


def test_a_manifest_image_in_two_folds_is_refolded(small_data: Path, tmp_path: Path) -> None:
    """A row listed again with another fold kept both folds: a member validated (and early-stopped) on an image it
    trained on, and the out-of-fold calibration was partly in-sample."""
    from rich.console import Console

    from wbc.data import write_manifest
    from wbc.train.loop import prepare_samples

    rows = split_manifest(small_data, tmp_path / "cv.csv", folds=3)
    first = next(s for s in rows if s.fold == 0)
    write_manifest(tmp_path / "twice.csv", [*rows, replace(first, fold=1)], root=Path("/"))
    got = prepare_samples(tiny(tmp_path / "twice.csv", folds=3), tmp_path / "r", Path("/"), False,  # type: ignore[arg-type]
                          Console(quiet=True))
    folds: dict[str, set[int]] = {}
    for s in got:
        folds.setdefault(s.sha1, set()).add(s.fold)
    assert all(len(f) == 1 for f in folds.values())
    assert {s.fold for s in got if s.split != "test"} == {0, 1, 2}


def test_a_diverged_run_is_stopped_and_nothing_is_exported(small_data: Path, tmp_path: Path) -> None:
    """lr = 1e8 made the loss NaN: the NaN network was saved as best.pt, exported (NaN in model.json, not JSON) and
    named every cell one class, and the run said "run finished"."""
    from rich.console import Console

    from wbc.errors import WbcError
    from wbc.train.loop import run_training

    with pytest.raises(WbcError, match=r"epoch 1: the (training|validation) loss is (nan|inf) \(the training "
                                       r"diverged\); lower lr \(now 100000000\.0\)"):
        run_training(tiny(small_data, lr=1e8), tmp_path / "r", console=Console(quiet=True))  # type: ignore[arg-type]
    for name in ("best.pt", "last.pt", "model.onnx", "model.json"):
        assert not (tmp_path / "r" / name).exists(), name


def test_a_network_with_nan_weights_is_not_exported(tmp_path: Path) -> None:
    """`wbc export` of such a best.pt wrote a model whose metadata held a bare NaN."""
    import torch

    from wbc.errors import WbcError
    from wbc.model import ModelInfo
    from wbc.train.export import export_model
    from wbc.train.models import create_model

    net = create_model("small_cnn", 3, pretrained=False).eval()
    with torch.no_grad():
        next(net.parameters()).fill_(float("nan"))
    info = ModelInfo(classes=["neutrophil", "lymphocyte", "eosinophil"], input_size=32, mean=[0.5] * 3,
                     std=[0.25] * 3)
    with pytest.raises(WbcError, match=r"model\.onnx: the network's outputs are not finite numbers"):
        export_model(net, info, tmp_path / "model.onnx", torch.zeros(2, 3, 32, 32))
    assert not (tmp_path / "model.onnx").exists()


def test_skipped_csv_lists_dangling_links_and_unreadable_images(small_data: Path, tmp_path: Path) -> None:
    """A link to a missing image was dropped without a word; corrupt and empty images were reported on the console
    only, and kept in manifest.csv as train/val/test rows."""
    from rich.console import Console

    from wbc.data import read_manifest, scan_folder
    from wbc.train.loop import run_training

    data = tmp_path / "d"
    shutil.copytree(small_data, data)
    (data / "neutrophil" / "moved.png").symlink_to(tmp_path / "missing.png")
    (data / "lymphocyte" / "empty.png").write_bytes(b"")
    (data / "eosinophil" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    assert (str(data / "neutrophil" / "moved.png"), f"link to a missing file ({tmp_path / 'missing.png'})") in \
        scan_folder(data).skipped
    run_training(tiny(data), tmp_path / "r", console=Console(quiet=True), score_test=False)  # type: ignore[arg-type]
    with (tmp_path / "r" / "skipped.csv").open(newline="") as fh:
        reasons = {Path(r["path"]).name: r["reason"] for r in csv.DictReader(fh)}
    assert reasons["moved.png"].startswith("link to a missing file")
    assert reasons["empty.png"].startswith("unreadable: ") and reasons["corrupt.png"].startswith("unreadable: ")
    listed = {s.path.name for s in read_manifest(tmp_path / "r" / "manifest.csv", root=Path("/"))}
    assert not listed & {"moved.png", "empty.png", "corrupt.png"}
    assert len(listed) == 18


def test_wbcatt_attributes_without_their_tables_are_refused_before_decoding(small_data: Path, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The refusal came after the whole dataset was decoded and left config.json and manifest.csv behind, so the
    same command without attributes was then refused as "holds a run"."""
    from rich.console import Console

    from wbc.errors import WbcError
    from wbc.train import loop

    def no_decoding(*args: object, **kw: object) -> None:
        raise AssertionError("decoded before the check")

    monkeypatch.setattr(loop, "decode_all", no_decoding)
    with pytest.raises(WbcError, match=r"wbcatt: no WBCAtt tables \(pbc_attr_v1_\*\.csv\) found"):
        loop.run_training(tiny(small_data, attributes="wbcatt"), tmp_path / "r", data_root=tmp_path,  # type: ignore[arg-type]
                          console=Console(quiet=True))
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


def test_missing_files_in_two_folds_of_a_manifest_without_sha1s_are_kept_for_decoding_to_skip(
        small_data: Path, tmp_path: Path) -> None:
    """A lab's manifest (path, label, split, fold; no sha1 column) with two missing files in two folds: both had no
    SHA-1, so they looked like one image in two folds, and the re-deal read them: a FileNotFoundError traceback. The
    folds are kept, and the missing rows stay for decoding to skip (listed in skipped.csv), as before wbc 0.35.0."""
    from rich.console import Console

    from wbc.config import TrainConfig
    from wbc.data import scan_folder
    from wbc.train.loop import deal_new_rows, manifest_samples, prepare_samples

    rows: list[tuple[str, str, str, int | str]] = []
    for cls in ("neutrophil", "lymphocyte", "eosinophil"):
        files = sorted(str(s.path) for s in scan_folder(small_data).samples if s.label == cls)
        rows += [(files[0], cls, "test", "")] + [(f, cls, "train", i % 3) for i, f in enumerate(files[1:])]
    gone = [str(tmp_path / "gone0.png"), str(tmp_path / "gone1.png")]
    rows += [(gone[0], "neutrophil", "train", 0), (gone[1], "lymphocyte", "train", 1)]
    m = tmp_path / "m.csv"
    with m.open("w", newline="") as f:
        csv.writer(f).writerows([("path", "label", "split", "fold"), *rows])
    want = {p: (split, fold) for p, _, split, fold in rows if split != "test"}
    cfg = TrainConfig(folds=3)
    got, skipped = deal_new_rows(manifest_samples(m, cfg, tmp_path), cfg, m)
    assert skipped == []
    assert {str(s.path): (s.split, s.fold) for s in got if s.split != "test"} == want  # folds kept
    assert [s.split for s in got if str(s.path) in gone] == ["train", "train"]
    # dealt afresh (a 3-fold manifest used for 2 folds): the missing files are dealt too, never read
    cfg = TrainConfig(folds=2)
    got, _ = deal_new_rows(manifest_samples(m, cfg, tmp_path), cfg, m)
    assert len(got) == len(rows) and {s.fold for s in got if s.split != "test"} == {0, 1}
    assert all(not s.sha1 for s in got if str(s.path) in gone)
    got = prepare_samples(tiny(m, folds=3), tmp_path / "r", tmp_path, False, Console(quiet=True))  # type: ignore[arg-type]
    assert sorted(str(s.path) for s in got if str(s.path) in gone) == gone
