"""wbc: white-blood-cell differentials from blood-smear images.

The Python API mirrors the command line::

    import wbc
    clf = wbc.load_model()                          # the shipped default classifier (ONNX Runtime)
    res = wbc.classify_images(["cell1.jpg"], clf)   # ClassifyResult with Prediction objects
    smear = wbc.analyze_images(["field.jpg"])[0]     # SmearResult: cells with boxes, outlines, labels

The public functions have names that no submodule has (``wbc.classify`` is the module
:mod:`wbc.classify`), so importing any submodule can never shadow them. Importing wbc never imports
torch; training lives in :mod:`wbc.train`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

__version__ = "0.29.0"

#: ONNX Runtime's opt-outs of its usage telemetry: since 1.29 its Linux and macOS builds send usage events to Microsoft
#: and keep a device id under ``~/.cache/Microsoft`` unless told not to (``ORT_DISABLE_TELEMETRY`` in 1.29-1.32,
#: ``ORT_TELEMETRY_DISABLED`` later). A tool that reads patients' smears sends nothing anywhere, so both are set when
#: wbc is imported, before any session starts; a value the user set is left as it is.
ORT_TELEMETRY_OPT_OUTS = ("ORT_DISABLE_TELEMETRY", "ORT_TELEMETRY_DISABLED")
for _name in ORT_TELEMETRY_OPT_OUTS:
    os.environ.setdefault(_name, "1")
del _name
#: OpenCV's own limit on an image's pixels, read from its header before decoding; it reads the variable once, when
#: cv2 is first imported. ``wbc.io.MAX_PIXELS``, as a second layer under wbc's checks: a format whose size wbc cannot
#: read from its header is still never decoded past it (OpenCV's default is 2**30, 12 GB as float32 RGB). Set after
#: ``import cv2`` (a notebook, a service or a script importing cv2 first) it changes nothing: wbc.io then refuses the
#: formats whose size neither wbc nor Pillow reads (:func:`wbc.io.opencv_limit_in_force`).
_OPENCV_LIMIT_IN_FORCE: bool = "cv2" not in sys.modules or "OPENCV_IO_MAX_IMAGE_PIXELS" in os.environ
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", "200000000")
__all__ = ["__version__", "analyze_images", "classify_images", "load_model", "load_segmenter"]

if TYPE_CHECKING:
    from wbc.classify import ClassifyResult
    from wbc.model import Classifier
    from wbc.protocols import SegmenterLike
    from wbc.types import SmearResult


def load_model(path: str | os.PathLike[str] | None = None, threads: int = 2) -> Classifier:
    """The classifier at ``path``, or the default model shipped with wbc."""
    from wbc.model import load_model as _load

    return _load(path, threads=threads)


def load_segmenter(method: str = "auto", path: str | os.PathLike[str] | None = None,
                   threads: int = 2, pixel_size: float | None = None) -> SegmenterLike:
    """A smear segmenter by name (``auto``, ``classical``, ``learned``, ...); see :mod:`wbc.segment`. ``pixel_size``:
    micrometres per pixel when the lab knows its optics (``--pixel-size``), else the scale is measured per field."""
    from wbc.segment import get_segmenter

    return get_segmenter(method, path, threads=threads, pixel_size=pixel_size)


def _path_list(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[str | os.PathLike[str]]:
    """``paths`` as a list: one path (a ``str`` is a sequence too, of its characters) becomes a list of one."""
    return [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)


def classify_images(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], model: Classifier | None = None,
                    **kwargs: Any) -> ClassifyResult:
    """Classify single-cell image files (one path or a sequence of them); keyword arguments as
    :func:`wbc.classify.classify_paths`."""
    from wbc.classify import classify_paths

    return classify_paths(_path_list(paths), model or load_model(), **kwargs)


def analyze_images(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], model: Classifier | None = None,
                   segmenter: SegmenterLike | None = None) -> list[SmearResult]:
    """Find, outline, classify and count the WBCs of each smear image (one path or a sequence of them; no files
    written).

    An unreadable image raises :class:`wbc.errors.ImageReadError` naming the file; ``wbc analyze`` is the
    batch tool that collects per-file errors instead. A TIFF of several fields is analysed on its first, and its
    result's ``warnings`` say so.
    """
    from pathlib import Path

    from wbc.analyze import analyze_bytes
    from wbc.io import read_bytes

    clf = model or load_model()
    seg = segmenter if segmenter is not None else load_segmenter()
    return [analyze_bytes(read_bytes(p), Path(p).name, clf, seg, source=str(Path(p)))[1] for p in _path_list(paths)]
