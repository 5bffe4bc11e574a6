"""The seams of the analysis chain as ``typing.Protocol``s: what a classifier and a segmenter must offer.

:class:`wbc.model.Classifier` and every registered segmenter (:mod:`wbc.segment`) satisfy them
structurally; functions that take "a classifier" or "a segmenter" are typed with these, so a wrapper, a
remote model or a test double fits without inheriting from anything. A classifier offers every member the chain reads
(:func:`checked_classifier`): before wbc 0.36.0 four of them were optional, and a wrapper without them was answered
without colour calibration, smear views, the unsure cells' rotations and its label set, without a word.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, cast, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from wbc.model import ModelInfo
    from wbc.types import Cell


@runtime_checkable
class ClassifierLike(Protocol):
    """A cell classifier: its metadata, raw network outputs for uint8 RGB cells at ``info.input_size``, and the
    settings that decide its answers (as :class:`wbc.model.Classifier` has them: a wrapper delegates them)."""

    info: ModelInfo

    @property
    def classes(self) -> list[str]: ...

    @property
    def model_id(self) -> str: ...

    @property
    def label_set(self) -> tuple[str, ...]:
        """The classes answered among (``--classes``); empty: every class."""
        ...

    @property
    def colour_calibration(self) -> bool:
        """Whether smear fields' colours are calibrated on their red cells (``--no-colour-calibration``: False)."""
        ...

    def run(self, cells: np.ndarray | list[np.ndarray], want: tuple[str, ...] = ("logits",)
            ) -> dict[str, np.ndarray]: ...

    def tta_views(self, smear: bool = False) -> int:
        """Flips/rotations averaged per cell (``smear``: for cells found in smear fields)."""
        ...

    def unsure_views(self) -> tuple[float, int]:
        """``(gate, views)``: a one-view answer below ``gate`` is answered again by ``views`` rotations."""
        ...

    def red_cell_target(self) -> dict[str, Any] | None:
        """The colours a smear field is calibrated to, or None: not calibrated."""
        ...


#: The members of :class:`ClassifierLike`, named in :func:`checked_classifier`'s message.
CLASSIFIER_MEMBERS: tuple[str, ...] = ("info", "classes", "model_id", "label_set", "colour_calibration", "run",
                                       "tta_views", "unsure_views", "red_cell_target")


def checked_classifier(classifier: object) -> ClassifierLike:
    """``classifier``, or a one-line :class:`wbc.errors.WbcError` naming the :class:`ClassifierLike` members it lacks:
    an answer given without them would differ from the wrapped classifier's, unsaid.

    >>> checked_classifier(object())
    Traceback (most recent call last):
    ...
    wbc.errors.WbcError: classifier object: lacks info, classes, model_id, label_set, colour_calibration, run, \
tta_views, unsure_views, red_cell_target (wbc.protocols.ClassifierLike); delegate them to the wrapped \
wbc.model.Classifier
    """
    missing = [m for m in CLASSIFIER_MEMBERS if not hasattr(classifier, m)]
    if missing:
        from wbc.errors import WbcError

        raise WbcError(f"classifier {type(classifier).__name__}: lacks {', '.join(missing)} "
                       "(wbc.protocols.ClassifierLike); delegate them to the wrapped wbc.model.Classifier")
    return cast(ClassifierLike, classifier)


@runtime_checkable
class SegmenterLike(Protocol):
    """A WBC segmenter: ``segment(rgb) -> list[Cell]`` (boxes + box-sized masks), with a name and model id."""

    name: str
    model_id: str

    def segment(self, rgb: np.ndarray) -> list[Cell]: ...


__all__ = ["CLASSIFIER_MEMBERS", "ClassifierLike", "SegmenterLike", "checked_classifier"]
