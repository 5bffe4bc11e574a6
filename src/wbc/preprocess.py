"""The preprocessing shared by training and inference, so that the two can never drift apart.

A model's metadata names its input size and normalisation; :func:`prepare_batch` applies exactly those.
Training caches the output of :func:`load_cell` and augments it; inference feeds it straight in.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import cv2
import numpy as np

from wbc.io import read_image


def resize_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize an RGB crop to ``size`` x ``size`` (area interpolation when shrinking).

    >>> resize_square(np.zeros((363, 360, 3), np.uint8), 160).shape
    (160, 160, 3)
    """
    h, w = rgb.shape[:2]
    if (h, w) == (size, size):
        return rgb
    interp = cv2.INTER_AREA if min(h, w) > size else cv2.INTER_LINEAR
    return cv2.resize(rgb, (size, size), interpolation=interp)


def load_cell(path: str | os.PathLike[str], size: int) -> np.ndarray:
    """Read a single-cell image and bring it to the model's square input size (uint8 RGB)."""
    return resize_square(read_image(path, min_size=size), size)


def centre_crop(cells: np.ndarray, size: int) -> np.ndarray:
    """The central ``size`` x ``size`` pixels of each cell in (N, S, S, C) (a view; no copy when S == size).

    Models trained with ``centre_crop`` see a cell's whole frame resized to ``input_size`` and then only its
    centre, so the cell itself gets more pixels at the same network cost.

    >>> centre_crop(np.zeros((2, 224, 224, 3), np.uint8), 160).shape
    (2, 160, 160, 3)
    """
    s = cells.shape[1]
    if not size or size >= s:
        return cells
    o = (s - size) // 2
    return cells[:, o : o + size, o : o + size]


def dihedral_view(cells: np.ndarray, k: int) -> np.ndarray:
    """View ``k`` (0-7) of a batch of cells (N, S, S, 3): ``k % 4`` quarter turns, of the horizontally
    flipped cells when ``k >= 4``. View 0 is the identity; views 0-3 are the four rotations.

    >>> x = np.arange(4, dtype=np.uint8).reshape(1, 2, 2, 1)
    >>> [dihedral_view(x, k)[0, :, :, 0].tolist() for k in (0, 1, 4)]
    [[[0, 1], [2, 3]], [[1, 3], [0, 2]], [[1, 0], [3, 2]]]
    """
    base = cells[:, :, ::-1] if k >= 4 else cells
    return np.ascontiguousarray(np.rot90(base, k % 4, axes=(1, 2)))


def prepare_batch(
    cells: Sequence[np.ndarray] | np.ndarray, mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
    """uint8 RGB cells (N, S, S, 3) -> normalised float32 (N, 3, S, S) for the network.

    ``mean`` and ``std`` are in 0-1 units, as stored in the model metadata. Computed as
    ``x * (1 / (255 std)) - mean / std`` after transposing the uint8 array (a quarter of the bytes to
    move), which is 5x faster than normalising in HWC floats and agrees with ``(x / 255 - mean) / std``
    to 1e-6; training uses the same arithmetic (:func:`wbc.train.transforms.normalise`).
    """
    arr = np.asarray(cells if isinstance(cells, np.ndarray) else np.stack(cells))
    scale, offset = normalisation_constants(mean, std)
    x = np.ascontiguousarray(arr.transpose(0, 3, 1, 2)).astype(np.float32)
    x *= scale.reshape(1, 3, 1, 1)
    x += offset.reshape(1, 3, 1, 1)
    return x


def normalisation_constants(mean: Sequence[float], std: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel float32 ``scale`` and ``offset`` with ``normalised = uint8 value * scale + offset``."""
    m = np.asarray(mean, np.float64)
    s = np.asarray(std, np.float64)
    return (1.0 / (255.0 * s)).astype(np.float32), (-m / s).astype(np.float32)
