"""Training data: decode every image once into a uint8 cache, then augment batches from memory.

Decoding a JPEG costs more than augmenting it, and 11k cells at 160 px fit in ~850 MB, so each
epoch reads from RAM. The cache holds exactly what `wbc classify` feeds the exported model for each file
(:func:`wbc.classify.read_cell` with :data:`TRAINED_FRAMING`, since wbc 0.36.0).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch.utils.data import Dataset

from wbc.classify import read_cell
from wbc.data import Sample
from wbc.errors import ImageReadError
from wbc.io import read_image
from wbc.reframe import CANONICAL, DEFAULT_STATS, FramingStats, frame_cell

log = logging.getLogger(__name__)


#: The framing every model `wbc train` exports carries (``extra["reframe"]``, :func:`wbc.train.loop.finalise_info`),
#: and so the framing its training, validation and test cells are cached with (:func:`decode_all`): a cell is trained
#: on as `wbc classify` will show it to the model. Before wbc 0.36.0 the cache was the whole frame resized
#: (:func:`wbc.preprocess.load_cell`) while `wbc classify` re-framed a cell outside PBC's nucleus band and cut a 4:3
#: frame square, so a lab's tight crops or 4:3 frames were trained on in one framing and classified in another.
TRAINED_FRAMING = DEFAULT_STATS


#: The central share of a training crop kept when it is cut tight (``decode_all(tight=...)``): the cell fills it,
#: as in another lab's tight single-cell crop (PBC's cells span about half their frame).
TIGHT_FRACTION = (0.45, 0.65)


def tight_crop(rgb: np.ndarray, frac: float) -> np.ndarray:
    """The central ``frac`` x ``frac`` share of the frame (training crops are centred on their cell).

    >>> tight_crop(np.zeros((100, 80, 3), np.uint8), 0.5).shape
    (50, 40, 3)
    """
    h, w = rgb.shape[:2]
    ch, cw = max(8, round(h * frac)), max(8, round(w * frac))
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    return np.ascontiguousarray(rgb[y0 : y0 + ch, x0 : x0 + cw])


def decode_all(
    samples: Sequence[Sample], size: int, workers: int = 2, progress: object | None = None, reframe: bool = False,
    tight: float = 0.0, seed: int = 0, framing: FramingStats = TRAINED_FRAMING,
) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
    """(cache (N, S, S, 3) uint8, indices of the samples that loaded, [(path, reason)] of those that did not).

    Each cell as `wbc classify` prepares it for a model carrying ``framing`` (:func:`wbc.classify.read_cell`: the
    first view; a 1.05-1.4 aspect frame cut square, a cell framed unlike the band re-framed, an eyepiece's black
    cut off), and an image `wbc classify` refuses (too small, not a photo) is refused here with its reason.
    ``reframe``: every cell re-framed to the canonical nucleus fraction (:data:`wbc.reframe.CANONICAL`), the
    framing `wbc classify` gives cells framed unlike the training crops. ``tight``: that share of the cells (drawn
    with ``seed``) is first cut to a :data:`TIGHT_FRACTION` of its frame and then framed as `wbc classify` frames
    a single-cell image (:func:`wbc.reframe.frame_cell`: the cell re-framed, padded with its background colour).
    """
    rng = np.random.default_rng(seed)
    cut = [float(rng.uniform(*TIGHT_FRACTION)) if rng.random() < tight else 0.0 for _ in samples]

    def load(i: int) -> np.ndarray | str:
        s = samples[i]
        try:
            if cut[i]:
                return frame_cell(tight_crop(read_image(s.path, min_size=size), cut[i]), size)
            if reframe:
                return frame_cell(read_image(s.path, min_size=size), size, CANONICAL)
            return read_cell(s.path, size, framing)
        except ImageReadError as exc:
            return str(exc)

    arrays: list[np.ndarray] = []
    ok: list[int] = []
    bad: list[tuple[str, str]] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for i, res in enumerate(pool.map(load, range(len(samples)), chunksize=32)):
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
    """(uint8 (3, S, S) tensor, label index) pairs from the cache, augmented on the fly; with ``attributes``
    ((N, K) int targets, -1: none; :mod:`wbc.train.attributes`), (tensor, label, attribute targets) triples."""

    def __init__(self, cache: np.ndarray, labels: Sequence[int] | np.ndarray,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 alt: np.ndarray | None = None, alt_p: float = 0.0, attributes: np.ndarray | None = None) -> None:
        self.images = torch.from_numpy(cache).permute(0, 3, 1, 2)  # a view, no copy
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.transform = transform
        # another framing of the same cells (re-framed), drawn with probability alt_p
        self.alt = torch.from_numpy(alt).permute(0, 3, 1, 2) if alt is not None and alt_p > 0 else None
        self.alt_p = alt_p
        self.attributes = torch.as_tensor(attributes, dtype=torch.long) if attributes is not None else None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        frames = self.alt if self.alt is not None and float(torch.rand(())) < self.alt_p else self.images
        x = frames[i].contiguous()
        if self.transform is not None:
            x = self.transform(x)
        return (x, self.labels[i]) if self.attributes is None else (x, self.labels[i], self.attributes[i])


def class_weights(labels: Sequence[int] | np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse-frequency ("balanced") weights normalised to mean 1 (absent classes get 0)."""
    from sklearn.utils.class_weight import compute_class_weight

    y = np.asarray(labels)
    present = np.unique(y)
    w = np.zeros(num_classes)
    w[present] = compute_class_weight("balanced", classes=present, y=y)
    w = w / w[present].mean()
    return torch.tensor(w, dtype=torch.float32)
