"""The seams of the analysis chain as ``typing.Protocol``s: what a classifier and a segmenter must offer.

:class:`wbc.model.Classifier` and every registered segmenter (:mod:`wbc.segment`) satisfy them
structurally; functions that take "a classifier" or "a segmenter" are typed with these, so a wrapper, a
remote model or a test double fits without inheriting from anything.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from wbc.model import ModelInfo
    from wbc.types import Cell


@runtime_checkable
class ClassifierLike(Protocol):
    """A cell classifier: its metadata and raw network outputs for uint8 RGB cells at ``info.input_size``."""

    info: ModelInfo

    @property
    def classes(self) -> list[str]: ...

    @property
    def model_id(self) -> str: ...

    def run(self, cells: np.ndarray | list[np.ndarray], want: tuple[str, ...] = ("logits",)
            ) -> dict[str, np.ndarray]: ...


@runtime_checkable
class SegmenterLike(Protocol):
    """A WBC segmenter: ``segment(rgb) -> list[Cell]`` (boxes + box-sized masks), with a name and model id."""

    name: str
    model_id: str

    def segment(self, rgb: np.ndarray) -> list[Cell]: ...


__all__ = ["ClassifierLike", "SegmenterLike"]
