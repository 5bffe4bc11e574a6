"""Training from other labs' unlabelled cells (FixMatch: ``TrainConfig.unlabelled``, ``wbc.train.unlabelled``)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import needs_torch

from wbc.errors import WbcError

pytestmark = needs_torch


def test_weak_view_is_a_flip_or_rotation_and_strong_view_the_augmentation() -> None:
    import torch

    from wbc.train.unlabelled import TwoViews

    cache = np.random.default_rng(0).integers(0, 255, (6, 16, 16, 3), dtype=np.uint8)
    ds = TwoViews(cache, strong=lambda x: 255 - x)
    torch.manual_seed(0)
    seen = set()
    for i in range(len(ds)):
        weak, strong = ds[i]
        x = torch.from_numpy(cache[i]).permute(2, 0, 1)
        views = [torch.rot90(x, k, (1, 2)) for k in range(4)]
        views += [torch.flip(v, (2,)) for v in views]
        match = [k for k, v in enumerate(views) if torch.equal(weak, v)]
        assert match, "the weak view is one of the 8 flips/rotations of the cell"
        seen.add(match[0])
        assert torch.equal(strong, 255 - x)  # the strong view is the training augmentation of the original
    assert len(seen) > 1  # the views are drawn, not fixed


def test_pseudo_labels_only_where_the_teacher_is_confident() -> None:
    import torch

    from wbc.train.loop import pseudo_labels

    teacher = torch.nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        teacher.weight.copy_(torch.tensor([[10.0, 0.0], [0.0, 10.0], [0.0, 0.0]]))
    teacher.train()
    label, keep = pseudo_labels(teacher, torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.05, 0.0]]), 0.9)
    assert label[:2].tolist() == [0, 1]
    assert keep.tolist() == [1.0, 1.0, 0.0]  # the third cell: ~0.35 / 0.33 / 0.33, no pseudo-label
    assert teacher.training  # the teacher's mode is restored


def test_unlabelled_sources_are_checked(tmp_path: Path) -> None:
    from wbc.config import TrainConfig
    from wbc.errors import ConfigError
    from wbc.io import write_image
    from wbc.synthetic import synthetic_cell
    from wbc.train.unlabelled import load_unlabelled

    with pytest.raises(WbcError, match="unknown TXL-PBC origin"):
        load_unlabelled("txl_pbc:elsewhere", tmp_path, 32, 0.36)
    with pytest.raises(WbcError, match="no such folder"):
        load_unlabelled("missing_folder", tmp_path, 32, 0.36)
    for i in range(3):
        write_image(tmp_path / "few" / f"{i}.png", synthetic_cell("neutrophil", 64, i))
    with pytest.raises(WbcError, match="at least 8"):
        load_unlabelled(str(tmp_path / "few"), tmp_path, 32, 0.36)
    with pytest.raises(ConfigError, match="unlabelled_threshold"):
        TrainConfig().updated({"unlabelled_threshold": 1.5})


@pytest.mark.real_data
def test_txl_crops_of_another_lab_skip_bccd_test_fields(real_data: Path) -> None:
    import csv

    from wbc.train.unlabelled import txl_wbc_crops

    bcd = txl_wbc_crops(real_data, ("bcd",), 48, 0.36)
    assert bcd.shape[1:] == (48, 48, 3) and bcd.dtype == np.uint8 and 150 < len(bcd) < 238  # train+val only
    test_fields = set((real_data / "bccd" / "ImageSets" / "Main" / "test.txt").read_text().split())
    rows = list(csv.DictReader((real_data / "txl_pbc" / "sources.csv").open()))
    in_test = [r for r in rows if r["origin"] == "bccd" and r["split"] != "test" and r["bccd_image"] in test_fields]
    bccd = txl_wbc_crops(real_data, ("bccd",), 48, 0.36)
    assert len(bccd) > 0 and in_test  # BCCD test fields exist among TXL's train/val fields ...
    boxes = 0
    for r in rows:
        if r["origin"] == "bccd" and r["split"] != "test" and r["bccd_image"] not in test_fields:
            lab = real_data / "txl_pbc" / "labels" / r["split"] / f"{r['stem']}.txt"
            boxes += sum(1 for line in lab.read_text().splitlines() if line.split()[:1] == ["0"])
    assert len(bccd) == boxes  # ... and none of their cells is used


@pytest.mark.slow
def test_training_learns_from_unlabelled_cells(synthetic_dataset: Path, tmp_path: Path) -> None:
    from rich.console import Console

    from wbc.config import TrainConfig
    from wbc.io import write_image
    from wbc.labels import CLASSES
    from wbc.synthetic import synthetic_cell
    from wbc.train.loop import run_training

    for i, label in enumerate(CLASSES * 3):  # the "other lab": the same kinds of cells, other draws
        write_image(tmp_path / "lab" / f"{i}.png", synthetic_cell(label, 72, 1000 + i))
    cfg = TrainConfig(data=str(synthetic_dataset), model="small_cnn", pretrained=False, input_size=48, epochs=3,
                      batch_size=16, lr=3e-3, patience=0, threads=2, unlabelled=str(tmp_path / "lab"),
                      unlabelled_threshold=0.5)
    console = Console(record=True, width=240)
    result = run_training(cfg, tmp_path / "run", console=console)
    text = console.export_text()
    assert "24 unlabelled cells from" in text
    used = [int(v) for v in re.findall(r"pseudo-labelled (\d+)%", text)]
    assert len(used) == 3 and used[-1] > 0  # a teacher that has learnt something labels some of them
    assert result["accuracy"] > 0.3  # 8 classes: chance 0.125; the labelled cells still train it
