"""WBC detection and segmentation behind one interface: ``image -> list[Cell]``, and a registry of them.

Three methods, registered by name (:func:`register`, :func:`create_segmenter`, as the network registry in
``wbc.train.models``):

* ``detector``: a learned detector + outliner (EfficientNet-Lite0 encoder, heatmap + size + mask heads,
  ONNX) trained on BCCD and TXL-PBC fields from three labs at 40x-100x; the field's scale comes from
  ``pixel_size`` or the red-cell size and is refined from the WBCs it finds, so magnification does not
  matter;
* ``classical``: stain thresholds, morphology, watershed; no model file;
* ``learned``: a compact U-Net (ONNX) trained on BCCD masks, with the classical instance code.

``auto`` is :data:`AUTO_ORDER`'s first method whose model file exists, picked on validation (TXL-PBC val
and BCCD val, docs/smear_analysis.md). Every method takes ``pixel_size`` (micrometres per pixel), which
overrides the measured scale.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wbc.paths import DEFAULT_DETECTOR, DEFAULT_SEGMENTER
from wbc.protocols import SegmenterLike

#: Anything with a name, a model id and ``segment(rgb) -> list[Cell]`` (boxes + box-sized masks): the
#: protocol every function taking a segmenter is typed with.
Segmenter = SegmenterLike


#: (path, threads, pixel_size) -> Segmenter
SegmenterFactory = Callable[[Path | None, int, float | None], Segmenter]
_REGISTRY: dict[str, tuple[SegmenterFactory, str, Path | None]] = {}


def register(name: str, description: str, model_file: Path | None = None
             ) -> Callable[[SegmenterFactory], SegmenterFactory]:
    """Register a segmenter factory under ``name``; ``model_file`` is its default model (None: needs none)."""

    def deco(fn: SegmenterFactory) -> SegmenterFactory:
        _REGISTRY[name] = (fn, description, model_file)
        return fn

    return deco


@register("detector", "learned detector + outliner (Lite0, ONNX), any magnification; the default", DEFAULT_DETECTOR)
def _detector(path: Path | None, threads: int, pixel_size: float | None) -> Segmenter:
    from wbc.segment.detector import DetectorSegmenter

    return DetectorSegmenter(path, threads=threads, pixel_size=pixel_size)


@register("classical", "stain thresholds + morphology + watershed; no model file")
def _classical(path: Path | None, threads: int, pixel_size: float | None) -> Segmenter:
    from wbc.segment.classical import ClassicalSegmenter

    return ClassicalSegmenter(pixel_size=pixel_size)


@register("learned", "U-Net (ONNX) on BCCD masks + the classical instance code", DEFAULT_SEGMENTER)
def _learned(path: Path | None, threads: int, pixel_size: float | None) -> Segmenter:
    from wbc.segment.learned import LearnedSegmenter

    return LearnedSegmenter(path, threads=threads, pixel_size=pixel_size)


#: ``auto`` takes the first of these whose model file exists. Chosen on TXL-PBC val (159 WBCs, three labs; the 26
#: fields that copy BCCD train images left out) + BCCD val, WBC recall / precision at IoU 0.5 of the shipped models:
#: detector 0.981 / 1.000 (BCCD val 1.000 / 0.989), U-Net 0.956 / 0.974, classical 0.912 / 0.935; BCCD val nucleus /
#: cell Dice: detector 0.946 / 0.953, U-Net 0.945 / 0.948, classical 0.943 / 0.922, so the detector outlines as well
#: as the U-Net. benchmarks/smear_detection.py, docs/smear_analysis.md ("Measured").
AUTO_ORDER: tuple[str, ...] = ("detector", "classical")
METHODS: tuple[str, ...] = ("auto", *_REGISTRY)


def _model_present(method: str) -> bool:
    model_file = _REGISTRY[method][2]
    return model_file is None or model_file.is_file()


#: What ``auto`` resolves to with the shipped files.
DEFAULT_METHOD: str = next((m for m in AUTO_ORDER if _model_present(m)), "classical")


def list_segmenters() -> dict[str, str]:
    """Registered segmenter names and a line about each."""
    return {k: v[1] for k, v in _REGISTRY.items()}


#: A WBC detector's outputs, in order (``wbc train-detector``'s export).
DETECTOR_OUTPUTS: tuple[str, ...] = ("heatmap", "size", "masks")
#: What each kind of model file is called in messages, and how it is used.
MODEL_KINDS: dict[str, str] = {"detector": "a WBC detector (--segmenter detector)",
                               "learned": "a U-Net segmenter (--segmenter learned)",
                               "classifier": "a cell classifier (--model)"}


def model_kind(session: Any) -> str:
    """What an ONNX Runtime session's model is, by its outputs: ``detector`` (:data:`DETECTOR_OUTPUTS`), ``learned``
    (a U-Net: one output of 3 channels, background / cytoplasm / nucleus, per pixel), ``classifier`` (logits per
    cell), or "" (none of these). A segmenter run on another kind's model raised IndexError or ONNX Runtime's errors
    on every field."""
    outs = session.get_outputs()
    names = tuple(o.name for o in outs)
    if names[: len(DETECTOR_OUTPUTS)] == DETECTOR_OUTPUTS:
        return "detector"
    if len(outs) == 1 and len(outs[0].shape) == 4 and outs[0].shape[1] == 3:
        return "learned"
    if outs and outs[0].name == "logits" and len(outs[0].shape) == 2:
        return "classifier"
    return ""


def _what(session: Any) -> str:
    """A model's kind in words, for a message (:data:`MODEL_KINDS`; else its outputs)."""
    outputs = ", ".join(o.name for o in session.get_outputs())
    return MODEL_KINDS.get(model_kind(session)) or f"no model wbc knows (outputs: {outputs})"


def check_model_kind(session: Any, path: str | os.PathLike[str], kind: str) -> None:
    """Refuse a model file of another kind than ``kind`` (:func:`model_kind`) with a message naming the file."""
    from wbc.errors import ModelError

    if model_kind(session) != kind:
        wanted = MODEL_KINDS[kind].split(" (")[0]
        raise ModelError(f"{path}: --segmenter {kind} needs {wanted}; this file is {_what(session)}")


def kind_of_file(path: str | os.PathLike[str]) -> str:
    """:func:`model_kind` of the ONNX file at ``path`` (a :class:`~wbc.errors.ModelError` naming it when it is not one
    of the segmenters' models): what ``auto`` runs a given ``--segmenter-model`` as."""
    from wbc.errors import ModelError
    from wbc.runtime import ort_session

    session = ort_session(path, 1)
    kind = model_kind(session)
    if kind not in ("detector", "learned"):
        raise ModelError(f"{path}: not a segmenter model (a WBC detector or a U-Net segmenter); this file is "
                         f"{_what(session)}")
    return kind


def resolve_method(method: str, path: str | os.PathLike[str] | None = None) -> str:
    """The registered name ``method`` stands for (``auto``: the first of :data:`AUTO_ORDER` available; with a model
    ``path``, the kind that file is, :func:`kind_of_file`: before wbc 0.29.0 any file was run as the detector)."""
    from wbc.errors import ConfigError

    if method != "auto" and method not in _REGISTRY:
        raise ConfigError(f"unknown segmenter {method!r}; choose one of {', '.join(METHODS)}")
    if method != "auto":
        return method
    if path is not None and Path(path).is_file():
        return kind_of_file(path)
    for m in AUTO_ORDER:
        default = _REGISTRY[m][2]
        if default is None or default.is_file() or (path is not None and m == AUTO_ORDER[0]):
            return m
    return "classical"


def get_segmenter(
    method: str = "auto", path: str | os.PathLike[str] | None = None, threads: int = 1,
    pixel_size: float | None = None,
) -> Segmenter:
    """The segmenter called ``method`` (``auto``: see :data:`AUTO_ORDER`); ``path`` overrides its model file;
    ``pixel_size`` (micrometres per pixel) overrides the field scale measured from the red cells."""
    from wbc.segment.scale import check_pixel_size

    name = resolve_method(method, path)
    return _REGISTRY[name][0](Path(path) if path else None, threads, check_pixel_size(pixel_size))


create_segmenter = get_segmenter

__all__ = [
    "AUTO_ORDER", "DEFAULT_METHOD", "DETECTOR_OUTPUTS", "METHODS", "MODEL_KINDS", "Segmenter", "check_model_kind",
    "create_segmenter", "get_segmenter", "kind_of_file", "list_segmenters", "model_kind", "register", "resolve_method",
]
