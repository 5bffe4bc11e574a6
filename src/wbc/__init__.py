"""wbc: white-blood-cell differentials from blood-smear images.

The Python API mirrors the command line::

    import wbc
    clf = wbc.load_model()                          # the shipped default classifier (ONNX Runtime)
    res = wbc.classify_images(["cell1.jpg"], clf)   # ClassifyResult with Prediction objects
    res = wbc.classify_arrays([rgb, jpeg_bytes], clf)  # the same for single-cell images in memory
    smear = wbc.analyze_images(["field.jpg"])[0]     # SmearResult: cells with boxes, outlines, labels
    smear.counts(wbc.analyze.smear_label_set(clf))  # its counts (no platelet row: smears never answer platelets)

The public functions have names that no submodule has (``wbc.classify`` is the module
:mod:`wbc.classify`), so importing any submodule can never shadow them. Importing wbc never imports
torch; training lives in :mod:`wbc.train`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

__version__ = "0.37.0"  # the one place: pyproject.toml reads it ([tool.setuptools.dynamic])

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
__all__ = ["__version__", "analyze_images", "classify_arrays", "classify_images", "load_model", "load_segmenter"]

if TYPE_CHECKING:
    from wbc.classify import ClassifyResult, DecodedImage
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


def _classifier(model: Classifier | None) -> Classifier:
    """``model``, or the shipped default for None. A path (what :func:`load_model` takes) or an object lacking what a
    classifier offers (:func:`wbc.protocols.checked_classifier`) is a one-line :class:`wbc.errors.WbcError`: before
    wbc 0.36.0 a path failed deep inside with an ``AttributeError`` traceback."""
    from wbc.errors import WbcError
    from wbc.protocols import checked_classifier

    if model is None:
        return load_model()
    if isinstance(model, (str, os.PathLike)):
        raise WbcError(f"model {os.fspath(model)!r}: a path, not a loaded classifier; pass "
                       f"wbc.load_model({os.fspath(model)!r}), loaded once for every call")
    checked_classifier(model)
    return model


#: Where a decoded image or a file's bytes go instead of paths: single cells (``classify_images``), smear fields.
_CELL_ARRAYS = "for a single-cell image's array or bytes use wbc.classify_arrays"
_FIELD_ARRAYS = "for a decoded image use wbc.analyze.analyze_image, for a file's bytes wbc.analyze.analyze_bytes"


def _path_list(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]], instead: str = _FIELD_ARRAYS
               ) -> list[str]:
    """``paths`` as a list of ``str``: one path (a ``str`` is a sequence too, of its characters) becomes a list of one,
    and a path-like (an ``os.scandir`` entry) its path, which results and errors name (before wbc 0.36.0
    ``analyze_images`` named them ``"<DirEntry 'x.jpg'>"``, the folder lost).
    Anything else (a decoded image, a file's bytes, a PIL image, None) is a one-line :class:`wbc.errors.WbcError`
    pointing to the functions that take it (``instead``): before wbc 0.30.0 it failed inside pathlib with a
    TypeError, and before wbc 0.33.0 single cells were sent to the smear analysis, which finds 0 or 2 cells in some
    and never answers platelet."""
    from wbc.errors import WbcError

    def refused(value: object) -> WbcError:
        return WbcError(f"expected image file paths (str or pathlib.Path), got {type(value).__name__}; {instead}")

    if isinstance(paths, (str, os.PathLike)):
        return [os.fspath(paths)]
    if isinstance(paths, (bytes, bytearray, memoryview)) or not isinstance(paths, Iterable):
        raise refused(paths)
    out = list(paths)
    for p in out:
        if not isinstance(p, (str, os.PathLike)):
            raise refused(p)
    return [os.fspath(p) for p in out]


def classify_images(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]], model: Classifier | None = None,
                    **kwargs: Any) -> ClassifyResult:
    """Classify single-cell image files (one path or a sequence of them); keyword arguments as
    :func:`wbc.classify.classify_paths`. A file that cannot be read is listed in the result's ``errors``.

    Each path is answered, a file whose bytes another has (a cell saved twice, ``cell (1).jpg``) too; since wbc
    0.37.0 the result's ``copies`` lists them as (copy, the file kept), the one kept chosen as ``POST /classify`` and
    `wbc classify` choose it, and ``counts(each_image_once=True)`` counts as they do (``counts()`` counts each
    path)."""
    from wbc.batch import copies_of_files
    from wbc.classify import classify_paths

    files = _path_list(paths, _CELL_ARRAYS)
    res = classify_paths(files, _classifier(model), **kwargs)
    _note_copies(res, files, copies_of_files(files))
    return res


def _note_copies(res: ClassifyResult, names: list[str], copy_of: dict[int, int]) -> None:
    """``res.copies`` and ``res.copy_of`` from ``copy_of`` (copy's place -> the kept one's), a copy of an input that
    failed left out: it fails alike, and is no copy counted once."""
    failed = set(range(len(names))) - set(res.indices)
    res.copy_of = {c: k for c, k in sorted(copy_of.items()) if k not in failed}
    res.copies = [(names[c], names[k]) for c, k in res.copy_of.items()]


def classify_arrays(images: DecodedImage | Iterable[DecodedImage], model: Classifier | None = None, *,
                    names: Iterable[str] | None = None, **kwargs: Any) -> ClassifyResult:
    """Classify single-cell images in memory (uint8 RGB arrays, image files' bytes, or a mix; one or a sequence) as
    ``classify_images`` classifies their files: the same answers, review flags, reasons and out-of-distribution
    flags (since wbc 0.33.0). ``names``: how the results name each image (default ``images[i]``). A bad array (float,
    16-bit, another shape) is a one-line :class:`wbc.errors.WbcError` naming it; an image that cannot be a cell is
    listed in the result's ``errors``. Keyword arguments and details as :func:`wbc.classify.classify_arrays`.
    Image files' bytes given twice are both answered; the result's ``copies`` names them and ``counts(each_image_once=
    True)`` counts each once, as ``POST /classify`` counts an upload's copies (since wbc 0.37.0)."""
    import hashlib

    from wbc.batch import copies_among
    from wbc.classify import _decoded_images
    from wbc.classify import classify_arrays as _classify

    items = _decoded_images(images)
    listed = None if names is None else [names] if isinstance(names, str) else list(names)
    res = _classify(items, _classifier(model), names=listed, **kwargs)
    shown = [str(n) for n in listed] if listed is not None else [f"images[{i}]" for i in range(len(items))]
    keys = [hashlib.sha1(item).hexdigest() if isinstance(item, (bytes, bytearray, memoryview)) else ""
            for item in items]
    _note_copies(res, shown, copies_among(keys, shown))
    return res


def analyze_images(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]], model: Classifier | None = None,
                   segmenter: SegmenterLike | None = None, errors: list[tuple[str, str]] | None = None,
                   ) -> list[SmearResult]:
    """Find, outline, classify and count the WBCs of each smear image (one path or a sequence of them; no files
    written).

    An image that cannot be analysed (unreadable, grey, no photo) raises :class:`wbc.errors.ImageReadError` naming
    its path (since wbc 0.36.0 a grey field or no photo too, before by its name alone), and the other fields' results
    are lost. Given a list as ``errors`` (since wbc 0.30.0), each such file is appended to it as ``(path, message)``,
    as ``classify_images`` lists its ``errors``, and the others are answered: one bad field in a day's batch no
    longer loses the rest. So is, since wbc 0.32.0, a field whose analysis failed with another exception ("analysis
    failed (...)", as `wbc analyze` says it). The default stays raising, so that code written before cannot take a
    short list for a complete one. A TIFF of several fields is analysed on its first, and its result's ``warnings``
    say so. Each result's ``path`` is the file it answers (since wbc 0.33.0; ``image`` is its name alone, as ``POST
    /analyze`` gives it, where `wbc analyze`'s ``<stem>.json`` gives the path as listed): a day's ``field_001.jpg``
    is never taken for another day's, and a result is tied to its file though an earlier one failed. A label set
    without a class a smear cell can be (``with_classes("platelet")``) is a one-line :class:`wbc.errors.WbcError`
    before any field, as ``/analyze`` refuses it (since wbc 0.36.0; before, every WBC was answered "platelet").
    """
    from pathlib import Path

    from wbc.analyze import analyze_bytes, checked_smear_label_set
    from wbc.batch import one_line
    from wbc.errors import ImageReadError
    from wbc.io import read_bytes

    files = _path_list(paths)
    clf = _classifier(model)
    checked_smear_label_set(clf)  # before any field: each would be refused alike
    seg = segmenter if segmenter is not None else load_segmenter()
    out = []
    for p in files:
        try:
            # every refusal names the path, as read_bytes and `wbc analyze` do (before wbc 0.36.0 a grey field its name)
            res = analyze_bytes(read_bytes(p), Path(p).name, clf, seg, source=str(Path(p)))[1]
            res.path = str(p)
            out.append(res)
        except ImageReadError as exc:
            if errors is None:
                raise
            errors.append((str(p), str(exc)))
        except Exception as exc:  # a decoder's own failure, as `wbc analyze` words it (wbc.batch.analyze_job)
            if errors is None:
                raise
            errors.append((str(p), f"{p}: analysis failed ({exc.__class__.__name__}: {one_line(exc)})"))
    return out
