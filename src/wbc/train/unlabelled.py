"""Other labs' unlabelled cells for training: where they come from, and the two views FixMatch needs.

PBC is one lab. Other labs' cells without labels still teach something: a network trained to give a weakly
augmented cell and a strongly augmented copy of it the same answer, where a teacher is confident (FixMatch,
Sohn et al. 2020), learns features that hold on those labs' optics, cameras and stains, not only on the
colour randomisation it is shown. ``TrainConfig.unlabelled`` names the cells:

- ``"txl_pbc:bcd"`` (origins separated by commas): every WBC box of the TXL-PBC *train and val* fields of
  those origins (``bcd``: the Kaggle blood-cell-detection lab, ``bccd``, ``pbc``), cut as
  ``TrainConfig.unlabelled_crop`` says: as `wbc analyze` cuts smear cells, as a lab's own single-cell images
  come, or both (:func:`txl_wbc_crops`). BCCD-origin fields of BCCD's own test split are never used, so BCCD's
  test cells stay unseen.
- a folder of single-cell images (any lab's), read as `wbc classify` reads them (re-framed when framed
  unlike the training crops).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from wbc.data import file_sha1
from wbc.errors import ImageReadError, WbcError
from wbc.types import Cell

#: TXL-PBC fields of these origins exist (``txl_pbc/sources.csv``).
TXL_ORIGINS = ("bcd", "bccd", "pbc")


def box_cell(box: tuple[float, float, float, float]) -> Cell:
    """A :class:`wbc.types.Cell` filling an annotated box (an ellipse inscribed in it)."""
    x0, y0, x1, y1 = (round(v) for v in box)
    h, w = max(1, y1 - y0), max(1, x1 - x0)
    yy, xx = np.mgrid[0:h, 0:w]
    mask = ((yy + 0.5 - h / 2) / (h / 2)) ** 2 + ((xx + 0.5 - w / 2) / (w / 2)) ** 2 <= 1
    return Cell(id=1, box=(x0, y0, x1, y1), nucleus_mask=mask, cell_mask=mask)


def txl_wbc_crops(root: Path, origins: tuple[str, ...], size: int, fraction: float, crop: str = "smear",
                  exclude: frozenset[str] = frozenset()) -> np.ndarray:
    """(N, size, size, 3) uint8 crops of every WBC box in TXL-PBC's train/val fields of ``origins``, but those of
    a field whose SHA-1 is in ``exclude`` (the run's own validation and test images: TXL-PBC's PBC-origin fields
    are PBC's files, byte for byte).

    ``crop`` (:data:`wbc.config.UNLABELLED_CROPS`): "smear" cuts each box as `wbc analyze` cuts a smear cell
    (:func:`wbc.crops.crop_cell`: the cell at the model's ``fraction``, the field mirrored beyond its border,
    which for BCD's 416 px fields is nearly every cell); "single" as a lab's own single-cell image comes and
    `wbc classify` reads it (:func:`wbc.crops.box_window`, then :func:`wbc.reframe.frame_cell`: no mirrored
    copies, the cell off-centre by a border); "both" gives each box both ways (the smear crop first).
    """
    from wbc import crops
    from wbc.config import UNLABELLED_CROPS
    from wbc.io import read_image
    from wbc.reframe import DEFAULT_STATS, frame_cell

    base = root / "txl_pbc"
    if crop not in UNLABELLED_CROPS:
        raise WbcError(f"unlabelled: crop {crop!r}: expected one of {', '.join(UNLABELLED_CROPS)}")
    bad = set(origins) - set(TXL_ORIGINS)
    if bad:
        raise WbcError(f"unlabelled: unknown TXL-PBC origin(s) {sorted(bad)}; known: {', '.join(TXL_ORIGINS)}")
    if not (base / "sources.csv").is_file():
        raise WbcError(f"{base / 'sources.csv'}: TXL-PBC not found (is the data root right?)")
    bccd_test_file = root / "bccd" / "ImageSets" / "Main" / "test.txt"
    bccd_test = set(bccd_test_file.read_text().split()) if bccd_test_file.is_file() else set()
    out = []
    with (base / "sources.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            if row["origin"] not in origins or row["split"] not in ("train", "val"):
                continue
            if row["origin"] == "bccd" and row.get("bccd_image", "") in bccd_test:
                continue  # keep BCCD's test cells unseen
            labels = base / "labels" / row["split"] / f"{row['stem']}.txt"
            images = sorted((base / "images" / row["split"]).glob(f"{row['stem']}.*"))
            if not labels.is_file() or not images:
                continue
            if exclude and file_sha1(images[0]) in exclude:
                continue  # a validation or test image of the run itself
            try:
                rgb = read_image(images[0])
            except ImageReadError:
                continue  # one unreadable field costs its cells, not the run
            h, w = rgb.shape[:2]
            for line in labels.read_text().splitlines():
                parts = line.split()
                if len(parts) != 5 or parts[0] != "0":  # class 0: WBC
                    continue
                cx, cy, bw, bh = (float(v) for v in parts[1:])
                box = ((cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h)
                if crop in ("smear", "both"):
                    out.append(crops.crop_cell(rgb, box_cell(box), size, fraction))
                if crop in ("single", "both"):
                    out.append(frame_cell(crops.box_window(rgb, box), size, DEFAULT_STATS))
    return np.stack(out) if out else np.zeros((0, size, size, 3), np.uint8)


def unlabelled_source(spec: str, root: Path) -> tuple[str, ...] | Path:
    """What ``TrainConfig.unlabelled`` names: TXL-PBC origins (``txl_pbc:bcd,pbc``) or a folder of cell images,
    checked before any image is read (`wbc train` read its whole dataset before an unknown origin was refused)."""
    if spec.startswith("txl_pbc:"):
        origins = tuple(o.strip() for o in spec.split(":", 1)[1].split(",") if o.strip())
        bad = set(origins) - set(TXL_ORIGINS)
        if bad or not origins:
            what = f"unknown TXL-PBC origin(s) {sorted(bad)}" if bad else "no TXL-PBC origin named"
            raise WbcError(f"unlabelled: {spec}: {what}; known: {', '.join(TXL_ORIGINS)}")
        if not (root / "txl_pbc" / "sources.csv").is_file():
            raise WbcError(f"{root / 'txl_pbc' / 'sources.csv'}: TXL-PBC not found (is the data root right?)")
        return origins
    folder = Path(spec) if Path(spec).is_absolute() or Path(spec).exists() else root / spec
    if not folder.exists():
        raise WbcError(f"unlabelled: {spec}: no such folder (nor under the data root {root})")
    return folder


def load_unlabelled(spec: str, root: Path, size: int, fraction: float, threads: int = 2, crop: str = "smear",
                    exclude: frozenset[str] = frozenset()) -> np.ndarray:
    """The cells ``TrainConfig.unlabelled`` names, as a uint8 cache (N, size, size, 3); ``crop``: how TXL-PBC's
    boxes are cut (:func:`txl_wbc_crops`; a folder's images are read as `wbc classify` reads them). ``exclude``:
    SHA-1s of files never to learn from (the run's validation and test images)."""
    source = unlabelled_source(spec, root)
    if isinstance(source, tuple):
        cells = txl_wbc_crops(root, source, size, fraction, crop, exclude)
    else:
        from wbc.classify import load_cells
        from wbc.io import iter_image_paths

        folder = source
        from wbc.reframe import DEFAULT_STATS

        files = [p for p in iter_image_paths([folder]) if not exclude or file_sha1(p) not in exclude]
        cells, _, _ = load_cells(files, size, threads, reframe=DEFAULT_STATS)
    if len(cells) < 8:
        raise WbcError(f"unlabelled: {spec}: need at least 8 cells, found {len(cells)}")
    return cells


class TwoViews(Dataset):
    """(weak view, strong view) of each unlabelled cell: a random flip/rotation (cells have no up), and the
    full training augmentation. No labels: the teacher's answer on the weak view becomes the target."""

    def __init__(self, cache: np.ndarray, strong: Callable[[torch.Tensor], torch.Tensor],
                 weak: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.images = torch.from_numpy(cache).permute(0, 3, 1, 2)
        self.strong = strong
        self.weak = weak

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[i].contiguous()
        k = int(torch.randint(0, 8, ()))
        w = torch.rot90(x, k % 4, (1, 2))
        w = torch.flip(w, (2,)) if k >= 4 else w
        if self.weak is not None:
            w = self.weak(w)
        return w.contiguous(), self.strong(x)
