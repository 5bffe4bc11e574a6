"""Learned WBC segmentation: a compact U-Net (ONNX) predicting background / cytoplasm / nucleus.

The network sees the field at the same *working scale* as the classical method (red cells
:data:`~wbc.segment.classical.WORK_RBC_DIAMETER` px across, measured per image), after a white balance
that maps the field's background to white (:func:`normalise_field`). Both make it indifferent to the
microscope's magnification and the lamp's colour. Its probability maps then go through the same instance
code as the classical method (nucleus groups -> cells, watershed against red cells), so the two methods
give the same kind of output (their cells and outlines differ). Trained by ``wbc train-segmenter`` on the BCCD train
split masks.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from wbc.errors import ModelError
from wbc.paths import DEFAULT_SEGMENTER
from wbc.runtime import ort_session
from wbc.segment import check_model_kind
from wbc.segment.classical import (
    WORK_RBC_DIAMETER,
    cells_from_instances,
    foreground_mask,
    instances_from_maps,
    rbc_diameter,
    resample,
    work_factor,
)
from wbc.types import Cell

#: The network's input side must be a multiple of this (4 poolings).
STRIDE: int = 16
#: Largest working-scale side the U-Net sees at once; a larger field is run in overlapping windows of this side
#: (:meth:`LearnedSegmenter.probabilities`), as the detector's (:data:`wbc.segment.detector.MAX_WORK_SIDE`). Before wbc
#: 0.29.0 the whole working field went through it in one call: a 6,400 x 4,800 px one asked ONNX Runtime for 860 MB
#: buffers, and where it could not allocate them the run ended.
MAX_WINDOW_SIDE: int = 1024
#: What each window keeps beyond the part of it that is used (a multiple of :data:`STRIDE`): about the reach of the
#: network's deepest layer (4 poolings, two 3x3 convolutions a level: ~90 px each side).
WINDOW_MARGIN: int = 128


def background_of(rgb: np.ndarray) -> np.ndarray:
    """float32 (3,): the field's background colour, each channel's 90th percentile (+1), as :func:`normalise_field`
    divides by it."""
    return (np.percentile(rgb[::4, ::4].reshape(-1, 3).astype(np.float32), 90, axis=0) + 1.0).astype(np.float32)


def normalise_field(rgb: np.ndarray, ref: np.ndarray | None = None) -> np.ndarray:
    """float32 (3, H, W): white-balanced so the background (the field's bright mode) is 1.0 per channel.

    The 90th percentile of each channel is background in any smear thin enough to read; dividing by it
    removes lamp colour and exposure differences. Values are then centred around 0. ``ref``: the background colour
    to use (:func:`background_of`; a window of a larger field takes the whole field's).
    """
    x = rgb.astype(np.float32)
    ref = background_of(rgb) if ref is None else ref
    balanced = x / ref.astype(np.float32)
    return np.ascontiguousarray(((balanced - 0.75) / 0.25).transpose(2, 0, 1))


def pad_to_stride(x: np.ndarray, stride: int = STRIDE) -> tuple[np.ndarray, tuple[int, int]]:
    """Pad (C, H, W) at the bottom/right by edge replication to a multiple of ``stride``."""
    _, h, w = x.shape
    ph, pw = (-h) % stride, (-w) % stride
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, ph), (0, pw)), mode="edge")
    return x, (h, w)


class LearnedSegmenter:
    """U-Net probabilities + the shared instance post-processing."""

    name = "learned"

    def __init__(self, path: str | os.PathLike[str] | None = None, threads: int = 1,
                 pixel_size: float | None = None) -> None:
        self.pixel_size = pixel_size  # micrometres per pixel; overrides the measured red-cell size
        self.path = Path(path) if path else DEFAULT_SEGMENTER
        if not self.path.is_file():
            raise ModelError(f"{self.path}: segmentation model not found (use --segmenter classical)")
        self.session = ort_session(self.path, threads)
        check_model_kind(self.session, self.path, "learned")
        meta = self.session.get_modelmeta().custom_metadata_map
        self.model_id = meta.get("model_id", self.path.stem)
        self.input_name = self.session.get_inputs()[0].name

    def run(self, small: np.ndarray, ref: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(nucleus, cell) probability maps of one pass over ``small`` (``ref``: its background colour,
        :func:`normalise_field`)."""
        x, (h, w) = pad_to_stride(normalise_field(small, ref))
        logits = self.session.run(None, {self.input_name: x[None]})[0][0, :, :h, :w]
        z = logits - logits.max(axis=0, keepdims=True)
        e = np.exp(z)
        p = e / e.sum(axis=0, keepdims=True)
        return p[2].astype(np.float32), (p[1] + p[2]).astype(np.float32)

    def probabilities(self, small: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(nucleus, cell) probability maps for an RGB field already at the working scale: one pass up to
        :data:`MAX_WINDOW_SIDE`, else overlapping windows of that side, each used inside its :data:`WINDOW_MARGIN`,
        all white-balanced on the whole field's background."""
        h, w = small.shape[:2]
        if max(h, w) <= MAX_WINDOW_SIDE:
            return self.run(small)
        ref = background_of(small)
        nuc, cell = np.zeros((h, w), np.float32), np.zeros((h, w), np.float32)
        step = MAX_WINDOW_SIDE - 2 * WINDOW_MARGIN
        for y0 in range(0, h, step):
            for x0 in range(0, w, step):
                ty0, tx0 = max(0, y0 - WINDOW_MARGIN), max(0, x0 - WINDOW_MARGIN)
                y1, x1 = min(h, y0 + step), min(w, x0 + step)
                t_nuc, t_cell = self.run(small[ty0 : min(h, y1 + WINDOW_MARGIN), tx0 : min(w, x1 + WINDOW_MARGIN)], ref)
                nuc[y0:y1, x0:x1] = t_nuc[y0 - ty0 : y1 - ty0, x0 - tx0 : x1 - tx0]
                cell[y0:y1, x0:x1] = t_cell[y0 - ty0 : y1 - ty0, x0 - tx0 : x1 - tx0]
        return nuc, cell

    def segment(self, rgb: np.ndarray) -> list[Cell]:
        rbc = rbc_diameter(rgb, self.pixel_size)
        factor = work_factor(rgb, rbc)
        small = resample(rgb, factor)
        nuc_p, cell_p = self.probabilities(small)
        rbc_px = rbc * factor if rbc else WORK_RBC_DIAMETER
        nuc_p = cv2.GaussianBlur(nuc_p, (0, 0), 0.5)
        inst = instances_from_maps(nuc_p, cell_p, fg=foreground_mask(small), rbc_px=rbc_px)
        return cells_from_instances(inst, nuc_p, cell_p, rgb.shape[:2], rbc_px=rbc_px)
