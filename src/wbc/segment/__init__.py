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


#: ``auto`` takes the first of these whose model file exists. Chosen on TXL-PBC val (185 WBCs, three labs)
#: + BCCD val, WBC recall / precision at IoU 0.5: detector 0.984 / 0.995 (BCCD 1.000 / 0.989), U-Net 0.962 /
#: 0.978, classical 0.924 / 0.945; the U-Net outlines nuclei better (BCCD val Dice 0.945 vs 0.905), so
#: ``--segmenter learned`` stays the choice for nucleus morphometry at BCCD's magnification.
#: benchmarks/smear_detection.py, docs/smear_analysis.md.
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


def resolve_method(method: str, path: str | os.PathLike[str] | None = None) -> str:
    """The registered name ``method`` stands for (``auto``: the first of :data:`AUTO_ORDER` available)."""
    from wbc.errors import ConfigError

    if method != "auto" and method not in _REGISTRY:
        raise ConfigError(f"unknown segmenter {method!r}; choose one of {', '.join(METHODS)}")
    if method != "auto":
        return method
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
    "AUTO_ORDER", "DEFAULT_METHOD", "METHODS", "Segmenter", "create_segmenter", "get_segmenter",
    "list_segmenters", "register", "resolve_method",
]
