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


def test_pseudo_labels_from_the_mean_of_the_teachers_rotations() -> None:
    """With ``views`` > 1 the teacher's probability is the mean over quarter turns of each cell: a teacher that
    reads one corner is confident on one turn only, so the mean keeps no pseudo-label where one view would."""
    import torch

    from wbc.train.loop import pseudo_labels

    class Corner(torch.nn.Module):  # class 0 when the top-left pixel is bright, else class 1, confidently
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            z = 20 * (x[:, 0, 0, 0] - 0.5)
            return torch.stack([z, -z, torch.zeros_like(z)], 1)

    x = torch.zeros(1, 3, 4, 4)
    x[0, :, 0, 0] = 1.0  # bright in the top-left corner only
    label, keep = pseudo_labels(Corner(), x, 0.9)
    assert label.tolist() == [0] and keep.tolist() == [1.0]
    label, keep = pseudo_labels(Corner(), x, 0.9, views=4)  # 1 of 4 turns says class 0, three say class 1
    assert label.tolist() == [1] and keep.tolist() == [0.0]  # mean ~0.75 for class 1: below the threshold


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


def _txl_tree(root: Path) -> None:
    """A one-field TXL-PBC tree under ``root``: a pale 120 px "bcd" field whose red channel grows with the
    column (no nucleus to re-frame around), one WBC box touching its left border and one red-cell box."""
    from wbc.io import write_image

    yy, xx = np.mgrid[0:120, 0:120]
    field = np.stack([180 + xx // 2, np.full_like(xx, 230), np.full_like(yy, 230)], axis=2).astype(np.uint8)
    base = root / "txl_pbc"
    write_image(base / "images" / "train" / "f1.png", field)
    (base / "labels" / "train").mkdir(parents=True)
    (base / "labels" / "train" / "f1.txt").write_text("0 0.15 0.5 0.3 0.3\n1 0.7 0.5 0.1 0.1\n")  # a WBC, a RBC
    (base / "sources.csv").write_text("split,stem,origin,bccd_image,width,height\ntrain,f1,bcd,,120,120\n")


def test_txl_crops_single_keep_the_field_smear_mirror_it(tmp_path: Path) -> None:
    from wbc.config import TrainConfig
    from wbc.errors import ConfigError
    from wbc.train.unlabelled import txl_wbc_crops

    _txl_tree(tmp_path)
    smear = txl_wbc_crops(tmp_path, ("bcd",), 48, 0.36, "smear")
    single = txl_wbc_crops(tmp_path, ("bcd",), 48, 0.36, "single")
    both = txl_wbc_crops(tmp_path, ("bcd",), 48, 0.36, "both")
    assert smear.shape == single.shape == (1, 48, 48, 3) and both.shape == (2, 48, 48, 3)  # the RBC box is skipped
    assert np.array_equal(both[0], smear[0]) and np.array_equal(both[1], single[0])
    single_row, smear_row = single[0, 24, :, 0].astype(int), smear[0, 24, :, 0].astype(int)  # red: the column
    assert (np.diff(single_row) >= 0).all()  # the window lies inside the field: the columns only increase
    assert single_row[0] == 180  # from the field's first column: the cell by the border sits off-centre
    assert (np.diff(smear_row) < 0).any()  # the smear crop runs past the border into a mirrored field
    with pytest.raises(WbcError, match="crop 'tight'"):
        txl_wbc_crops(tmp_path, ("bcd",), 48, 0.36, "tight")
    with pytest.raises(ConfigError, match="unlabelled_crop"):
        TrainConfig().updated({"unlabelled_crop": "tight"})


def test_a_folder_of_unlabelled_cells_is_read_as_wbc_classify_reads_it(tmp_path: Path) -> None:
    from wbc.io import write_image
    from wbc.reframe import DEFAULT_STATS, measure_framing
    from wbc.synthetic import synthetic_cell
    from wbc.train.unlabelled import load_unlabelled

    for i in range(8):  # the cell filling a tight crop, as another lab's single-cell images may come
        write_image(tmp_path / "lab" / f"{i}.png", synthetic_cell("neutrophil", 128, i)[32:96, 32:96])
    cells = load_unlabelled(str(tmp_path / "lab"), tmp_path, 48, 0.36)
    fractions = [measure_framing(c).fraction for c in cells]
    assert cells.shape == (8, 48, 48, 3)
    assert all(abs(f - DEFAULT_STATS.target) < 0.1 for f in fractions), fractions  # re-framed, not ~0.7


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


def test_the_run_s_own_validation_and_test_images_are_never_unlabelled_cells(tmp_path: Path) -> None:
    """TXL-PBC's PBC-origin fields are PBC's files byte for byte: ``unlabelled = "txl_pbc:pbc"`` fed 56 validation
    and 41 test cells of a PBC run into its training (wbc 0.26.0). Files whose SHA-1 is excluded are left out."""
    from wbc.data import file_sha1
    from wbc.synthetic import make_dataset
    from wbc.train.unlabelled import load_unlabelled

    folder = make_dataset(tmp_path / "lab", n_per_class=2, size=48)
    files = sorted(folder.glob("*/*.png"))
    assert len(load_unlabelled(str(folder), tmp_path, 32, 0.5)) == len(files)
    held = frozenset(file_sha1(p) for p in files[:5])
    assert len(load_unlabelled(str(folder), tmp_path, 32, 0.5, exclude=held)) == len(files) - 5


def test_each_rank_gets_unlabelled_batches_when_the_set_is_smaller_than_a_batch_per_rank() -> None:
    """With 20 unlabelled cells over 2 processes a rank holds 10, and a batch of 16 never filled: training hung
    (wbc 0.26.0). The batch is capped at the rank's own share."""
    import torch

    from wbc.config import TrainConfig
    from wbc.train.distributed import DistInfo
    from wbc.train.loop import _unlabelled_batches

    cfg = TrainConfig(batch_size=64, unlabelled_ratio=0.5)  # 16 a rank
    cache = np.random.default_rng(0).integers(0, 255, (20, 32, 32, 3), dtype=np.uint8)
    for rank in (0, 1):
        batches = _unlabelled_batches(cfg, cache, lambda x: x, torch.Generator().manual_seed(0),
                                      DistInfo(rank=rank, world_size=2))
        weak, strong = next(batches)
        assert len(weak) == len(strong) == 10
