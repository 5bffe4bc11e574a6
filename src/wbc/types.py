"""Plain result types shared by the CLI, the Python API, the HTTP API and the reports.

None holds arrays bigger than a cell's masks. JSON: :meth:`Prediction.to_dict`; a :class:`SmearResult` with its
cells, :func:`wbc.formats.result_to_dict` (it needs the class list and segmenter id, and ``types`` sits below
``formats``); ``dataclasses.asdict`` of a result holds numpy masks, which ``json`` cannot write.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class Prediction:
    """The classifier's answer for one single-cell image (or one crop from a smear)."""

    label: str
    confidence: float
    review: bool
    probabilities: dict[str, float]
    path: str = ""
    ood: bool = False  # unlike the training data (colour or feature statistics)
    reasons: list[str] = field(default_factory=list)  # why review is set, in words
    # the class the model favours over all its classes when a label set (``--classes``) or a smear's differential
    # (its platelets) left it out; "" otherwise
    outside: str = ""
    # how many other nucleated cells lie whole in the image beside the one answered for (flagged for review; see
    # wbc.classify.predict_cells); 0 otherwise
    other_cells: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Cell:
    """One WBC found in a smear: where it is, its outlines, and what it is."""

    id: int
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, x1/y1 exclusive
    nucleus_mask: np.ndarray  # bool, full-image size is not required: same size as the box crop
    cell_mask: np.ndarray  # bool, box-sized, includes the nucleus
    touches_border: bool = False
    prediction: Prediction | None = None
    score: float = 1.0  # detection confidence from the segmenter (ranks detections for AP)

    @property
    def area_px(self) -> int:
        return int(self.cell_mask.sum())


@dataclass
class SmearResult:
    """All WBCs of one smear image and their counts per class."""

    image: str
    width: int
    height: int
    cells: list[Cell]
    model_id: str = ""
    warnings: list[str] = field(default_factory=list)
    #: the field's glass and red-cell colours its cells were calibrated from (:mod:`wbc.stain`); None: not calibrated
    calibration: dict[str, list[float]] | None = None
    #: the file the field was read from, as given (``wbc.analyze_images``; "" for an array); ``image`` is its name
    #: alone, as ``POST /analyze`` gives it (`wbc analyze`'s JSON gives the path as listed), so same-named fields of
    #: different folders are told apart by this
    path: str = ""

    def counts(self, classes: Sequence[str] = ()) -> dict[str, int]:
        out = {c: 0 for c in classes}
        for c in self.cells:
            if c.prediction is not None:
                out[c.prediction.label] = out.get(c.prediction.label, 0) + 1
        return out
