"""Training data: decode every image once into a uint8 cache, then augment batches from memory.

Decoding a JPEG costs more than augmenting it, and 11k cells at 160 px fit in ~850 MB, so each
epoch reads from RAM. The cache holds exactly what inference sees (:func:`wbc.preprocess.load_cell`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch.utils.data import Dataset

from wbc.data import Sample
from wbc.errors import ImageReadError
from wbc.preprocess import load_cell

log = logging.getLogger(__name__)


def decode_all(
    samples: Sequence[Sample], size: int, workers: int = 2, progress: object | None = None
) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
    """(cache (N, S, S, 3) uint8, indices of the samples that loaded, [(path, reason)] of those that did not)."""

    def load(s: Sample) -> np.ndarray | str:
        try:
            return load_cell(s.path, size)
        except ImageReadError as exc:
            return str(exc)

    arrays: list[np.ndarray] = []
    ok: list[int] = []
    bad: list[tuple[str, str]] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for i, res in enumerate(pool.map(load, samples, chunksize=32)):
            if isinstance(res, str):
                bad.append((str(samples[i].path), res))
            else:
                arrays.append(res)
                ok.append(i)
            if callable(progress) and i % 256 == 0:
                progress(i + 1)
    cache = np.stack(arrays) if arrays else np.zeros((0, size, size, 3), np.uint8)
    return cache, ok, bad


class CachedCells(Dataset):
    """(uint8 (3, S, S) tensor, label index) pairs from the cache, augmented on the fly."""

    def __init__(self, cache: np.ndarray, labels: Sequence[int], transform: object | None = None) -> None:
        self.images = torch.from_numpy(cache).permute(0, 3, 1, 2)  # a view, no copy
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[i].contiguous()
        if self.transform is not None:
            x = self.transform(x)
        return x, self.labels[i]


def class_weights(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights normalised to mean 1 (absent classes get 0)."""
    counts = np.bincount(np.asarray(labels), minlength=num_classes).astype(np.float64)
    w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / num_classes, 0.0)
    w = w / w[counts > 0].mean()
    return torch.tensor(w, dtype=torch.float32)
