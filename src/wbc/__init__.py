"""wbc: white-blood-cell differentials from blood-smear images.

The Python API mirrors the command line::

    import wbc
    clf = wbc.load_model()                 # the shipped default classifier (ONNX Runtime)
    res = wbc.classify(["cell1.jpg"], clf)  # ClassifyResult with Prediction objects

Importing wbc never imports torch; training lives in :mod:`wbc.train`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["__version__", "classify", "load_model"]

if TYPE_CHECKING:
    from wbc.classify import ClassifyResult
    from wbc.model import Classifier


def load_model(path: str | None = None, threads: int = 2) -> Classifier:
    """The classifier at ``path``, or the default model shipped with wbc."""
    from wbc.model import load_model as _load

    return _load(path, threads=threads)


def classify(paths: list[Any], model: Classifier | None = None, **kwargs: Any) -> ClassifyResult:
    """Classify single-cell image files; see :func:`wbc.classify.classify_paths`."""
    from wbc.classify import classify_paths

    return classify_paths(paths, model or load_model(), **kwargs)
