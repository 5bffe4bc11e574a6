"""WBC detection and segmentation behind one interface: ``image -> list[Cell]``.

Two methods: ``classical`` (stain thresholds, morphology, watershed; no model file) and ``learned``
(a compact U-Net in ONNX trained on BCCD masks). Both measure the field's red-cell size and work at a
fixed red-cell scale, so neither depends on the microscope's pixel size. :data:`DEFAULT_METHOD` is
``classical``: on the BCCD val split both reach detection F1 0.994 at IoU 0.5 with the shared
instance code; the U-Net outlines better (nucleus/cell Dice 0.945/0.948 vs 0.943/0.922) but is ~4x
slower; see docs/smear_analysis.md.
"""

from __future__ import annotations

import os
from typing import Protocol

import numpy as np

from wbc.paths import DEFAULT_SEGMENTER
from wbc.types import Cell

METHODS: tuple[str, ...] = ("auto", "classical", "learned")
#: Used by ``auto``; "learned" falls back to classical when its model file is absent.
DEFAULT_METHOD: str = "classical"


class Segmenter(Protocol):
    """Anything with a name, a model id and ``segment(rgb) -> list[Cell]`` (boxes + box-sized masks)."""

    name: str
    model_id: str

    def segment(self, rgb: np.ndarray) -> list[Cell]: ...


def get_segmenter(
    method: str = "auto", path: str | os.PathLike[str] | None = None, threads: int = 1
) -> Segmenter:
    """The segmenter called ``method``; ``auto`` is :data:`DEFAULT_METHOD` when its model exists.

    ``path`` overrides the learned model file.
    """
    from wbc.errors import ConfigError

    if method not in METHODS:
        raise ConfigError(f"unknown segmenter {method!r}; choose one of {', '.join(METHODS)}")
    if method == "auto":
        has_model = path is not None or DEFAULT_SEGMENTER.is_file()
        method = DEFAULT_METHOD if (DEFAULT_METHOD == "classical" or has_model) else "classical"
    if method == "learned":
        from wbc.segment.learned import LearnedSegmenter

        return LearnedSegmenter(path, threads=threads)
    from wbc.segment.classical import ClassicalSegmenter

    return ClassicalSegmenter()


__all__ = ["DEFAULT_METHOD", "METHODS", "Segmenter", "get_segmenter"]
