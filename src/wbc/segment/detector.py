"""Learned WBC detector and instance outliner (ONNX): boxes from a heatmap, outlines from mask channels.

One small network (EfficientNet-Lite0 stages 1-4 with a U-Net-style decoder; trained by
``wbc train-detector``) gives, for a field resampled so that a WBC is about
:data:`NOMINAL_WBC` pixels across:

* ``heatmap`` (1, h/4, w/4): probability that a WBC centre lies in each 4x4 block (CenterNet-style),
* ``size`` (2, h/4, w/4): log(box width / :data:`NOMINAL_WBC`), log(box height / :data:`NOMINAL_WBC`),
* ``masks`` (2, h, w): nucleus and whole-cell probabilities.

It was trained with WBC sizes from 0.3x to 3x the nominal one, so a rough scale is enough; the field's
scale comes from ``--pixel-size`` when the lab knows its optics, else from the red-cell size
(:func:`wbc.segment.scale.estimate_field_scale`, tempered by :func:`first_guess`), and a second pass
at the scale the WBCs found imply corrects it (:func:`refine_factor`). That is what makes it indifferent to
the magnification.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from wbc.errors import ModelError
from wbc.paths import DEFAULT_DETECTOR
from wbc.runtime import ort_session
from wbc.segment import check_model_kind
from wbc.segment.classical import grey_gains
from wbc.segment.scale import FIELD_WBC_FRACTION, FieldScale, estimate_field_scale
from wbc.types import Cell

#: WBC box side (px) at the working scale the detector runs at.
NOMINAL_WBC: float = 80.0
#: Heatmap stride (input pixels per heatmap cell).
HM_STRIDE: int = 4
#: Network input sides are padded to a multiple of this.
PAD_STRIDE: int = 16
#: Largest working-scale side the network sees at once; a larger field at the working scale is run in overlapping
#: windows of this side (:meth:`DetectorSegmenter.run_tiled`). Until wbc 0.27.0 such a field was shrunk to it
#: instead, which made a 3840 x 2880 field's WBCs smaller than any the detector was trained on (91 of 152 found).
MAX_WORK_SIDE: int = 1024
#: What each window keeps beyond the part of it that is used, at the working scale: 1.6 WBCs of context, so that a
#: cell cut by a window's edge is found whole in its neighbour's core.
TILE_MARGIN: int = 128
#: Largest working-scale field, in pixels (a guard on time and memory: about 64 windows, each used over 768 px).
MAX_WORK_PIXELS: int = 64 * 768 * 768
#: Largest enlargement of a field (WBCs under NOMINAL_WBC / 3 px across are beyond any smear camera).
MAX_UPSCALE: float = 3.0
#: With ``--pixel-size``, a field whose WBCs would stay under this fraction of :data:`NOMINAL_WBC` if enlarged only to
#: :data:`MAX_WORK_SIDE` is enlarged further, within :data:`MAX_UPSCALE` and :data:`MAX_WORK_PIXELS`, and run in
#: windows. Before wbc 0.29.0 a field over 1,024 px was never enlarged: a 20x objective's 21 px WBCs stayed at 0.26x
#: nominal (BCCD val fields at 0.1x tiled 30 x 30 into 1,920 x 1,440 px, ``--pixel-size 1.0``: 388 of 900 WBCs found,
#: now 880). Fields whose WBCs reach half nominal keep the one-pass rule (the large-field benchmarks' 70 px WBCs).
ENLARGE_BELOW: float = 0.5
#: Heatmap peak threshold for a detection (set before training; with the shipped model on TXL-PBC val + BCCD val it
#: gives WBC precision 1.000 / 0.989 at recall 0.987 / 1.000, 0.981 on TXL-PBC before wbc 0.34.0 counted a WBC boxed
#: twice as two; the model's metadata ``score_threshold`` overrides it).
SCORE_THRESHOLD: float = 0.3
#: A cell outline covering less than this fraction of its box is replaced by the box's inscribed ellipse.
MIN_MASK_FILL: float = 0.2
#: A detection pass is repeated at a corrected scale when the median WBC found is off nominal by more.
REFINE_RATIO: float = 1.4
#: Detections scoring under this share of the field's best one do not vote on its scale (:func:`refine_factor`): before
#: wbc 0.34.0 a platelet at 0.38 beside a WBC at 0.92 halved the median WBC, and the field, enlarged 1.43x, reported
#: two platelets as WBCs (BloodImage_00222 flipped left-right).
REFINE_MIN_SHARE: float = 0.5
#: A first pass whose best detection scores under this (nothing, or only platelets, found) also looks at a coarse scale,
#: as if a WBC spanned a third of the field (:meth:`DetectorSegmenter.detect`): a red-cell size measured far too small
#: (off by over 2x on 19 of 263 BCCD and TXL-PBC val fields, 11 of TXL-PBC's 89 PBC-origin ones) puts the WBC beyond
#: the network's 3x range, where only its platelets are found. Before wbc 0.34.0 the look ran only when nothing was
#: found (BloodImage_00383 enlarged 2x: its eosinophil lost, two platelets reported).
WEAK_FIRST_PASS: float = 0.5
#: Nucleus outlines: weight of the network's nucleus probability against the colour evidence inside the cell
#: (:func:`nucleus_mask`). On BCCD val (87 fields) nucleus Dice with the shipped detector (``...-ft-it2900-s0``):
#: network alone 0.935, colour alone 0.931, the equal blend 0.946 (cell Dice 0.953 in all three; ``python
#: benchmarks/smear_detection.py --split val``, ``bccd.segmentation``). The blend was chosen on the it500 detector
#: before it (0.905, 0.933, 0.948).
NUCLEUS_NET_WEIGHT: float = 0.5
#: Colour evidence is used only when blueness inside the cell spreads by at least this much (grey or
#: unusually stained fields have no violet nucleus to split on; the network's map stands alone there).
MIN_BLUENESS_SPREAD: float = 4.0


def normalise(rgb: np.ndarray, ref: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """float32 (3, H, W) white-balanced input (background -> 1.0, centred), and the background colour.

    The 90th percentile per channel is background in any readable smear; dividing by it removes lamp
    colour and exposure, as in :func:`wbc.segment.learned.normalise_field`. ``ref``: the background colour to use
    (a window of a larger field takes the whole field's: its own may be a corner's black).
    """
    if ref is None:
        ref = np.percentile(rgb[::4, ::4].reshape(-1, 3), 90, axis=0).astype(np.float32) + 1.0
    x = rgb.astype(np.float32) / ref
    return np.ascontiguousarray(((x - 0.75) / 0.25).transpose(2, 0, 1)), ref


def pad_input(x: np.ndarray, stride: int = PAD_STRIDE) -> np.ndarray:
    """Pad (C, H, W) at the bottom/right with background (1.0 after :func:`normalise`) to a multiple."""
    _, h, w = x.shape
    ph, pw = (-h) % stride, (-w) % stride
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, ph), (0, pw)), mode="constant", constant_values=1.0)
    return x


@dataclass
class Detection:
    """One WBC at the working scale: box [x0, y0, x1, y1) (float) and heatmap score."""

    box: tuple[float, float, float, float]
    score: float


def decode(heatmap: np.ndarray, size: np.ndarray, threshold: float = SCORE_THRESHOLD,
           max_det: int = 100_000) -> list[Detection]:
    """Peaks of ``heatmap`` (h, w) above ``threshold`` -> boxes in input pixels, with sub-cell centres.

    Heatmap cell (j, i) covers input pixels [4i, 4i+4) x [4j, 4j+4); the centre is refined by a
    parabola through the log-heatmap of the peak and its neighbours. ``size`` is (2, h, w).
    """
    hm = heatmap.astype(np.float32)
    peaks = (hm == ndi.maximum_filter(hm, size=3, mode="constant")) & (hm >= threshold)
    ys, xs = np.nonzero(peaks)
    if ys.size == 0:
        return []
    order = np.argsort(-hm[ys, xs], kind="stable")[:max_det]
    lg = np.log(np.clip(hm, 1e-6, 1.0))
    h, w = hm.shape
    out = []
    for k in order:
        y, x = int(ys[k]), int(xs[k])
        dx = dy = 0.0
        if 0 < x < w - 1:
            a, b, c = lg[y, x - 1], lg[y, x], lg[y, x + 1]
            den = a - 2 * b + c
            dx = float(np.clip(0.5 * (a - c) / den, -0.5, 0.5)) if den < 0 else 0.0
        if 0 < y < h - 1:
            a, b, c = lg[y - 1, x], lg[y, x], lg[y + 1, x]
            den = a - 2 * b + c
            dy = float(np.clip(0.5 * (a - c) / den, -0.5, 0.5)) if den < 0 else 0.0
        cx, cy = HM_STRIDE * (x + 0.5 + dx), HM_STRIDE * (y + 0.5 + dy)
        bw, bh = NOMINAL_WBC * float(np.exp(size[0, y, x])), NOMINAL_WBC * float(np.exp(size[1, y, x]))
        out.append(Detection((cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2), float(hm[y, x])))
    return suppress(out)


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def suppress(dets: list[Detection], iou: float = 0.5) -> list[Detection]:
    """Greedy non-maximum suppression (peaks of one cell split across the heatmap's 3x3 window)."""
    keep: list[Detection] = []
    for d in sorted(dets, key=lambda d: -d.score):
        if all(_iou(d.box, k.box) < iou for k in keep):
            keep.append(d)
    return keep


def refine_factor(dets: list[Detection], factor: float) -> float | None:
    """A better resampling factor when the WBCs found are far from :data:`NOMINAL_WBC`, else None; only detections
    scoring at least :data:`REFINE_MIN_SHARE` of the best one vote (a weak platelet is not a WBC's size)."""
    if not dets:
        return None
    top = max(d.score for d in dets)
    sides = [max(d.box[2] - d.box[0], d.box[3] - d.box[1]) for d in dets[:10] if d.score >= REFINE_MIN_SHARE * top]
    ratio = NOMINAL_WBC / float(np.median(sides))
    if 1 / REFINE_RATIO <= ratio <= REFINE_RATIO:
        return None
    return factor * ratio


def _window(box: tuple[float, float, float, float], grow: float, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """Integer [x0, y0, x1, y1) of ``box`` grown by ``grow`` on each side (fraction of its size), clipped."""
    x0, y0, x1, y1 = box
    gx, gy = grow * (x1 - x0), grow * (y1 - y0)
    h, w = shape
    return (max(0, int(np.floor(x0 - gx))), max(0, int(np.floor(y0 - gy))),
            min(w, int(np.ceil(x1 + gx))), min(h, int(np.ceil(y1 + gy))))


def _ellipse_distance(d: Detection, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Squared distance from the detection's centre in units of its half-size grown by 15 %."""
    x0, y0, x1, y1 = d.box
    rx, ry = max(2.0, 0.575 * (x1 - x0)), max(2.0, 0.575 * (y1 - y0))
    return ((xx - (x0 + x1) / 2) / rx) ** 2 + ((yy - (y0 + y1) / 2) / ry) ** 2


def instance_masks(dets: list[Detection], nuc_p: np.ndarray, cell_p: np.ndarray
                   ) -> list[tuple[tuple[int, int], np.ndarray, np.ndarray]]:
    """Per detection, ((x0, y0), nucleus, cell): bool masks over a window around it (working scale).

    Cell pixels (probability > 0.5) inside a detection's box grown by 15 % go to the detection whose
    centre is nearest relative to its size (so two touching WBCs are split between their centres); of
    each, the connected part that holds the centre region is kept and holes are filled.
    """
    shape = cell_p.shape
    wins = [_window(d.box, 0.075, shape) for d in dets]
    out = []
    for i, d in enumerate(dets):
        x0, y0, x1, y1 = wins[i]
        if x1 <= x0 or y1 <= y0:
            out.append(((x0, y0), np.zeros((0, 0), bool), np.zeros((0, 0), bool)))
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        dist = _ellipse_distance(d, xx, yy)
        own = dist < 1.0
        for j, e in enumerate(dets):
            if j == i:
                continue
            ex0, ey0, ex1, ey1 = wins[j]
            if ex0 >= x1 or ex1 <= x0 or ey0 >= y1 or ey1 <= y0:
                continue
            other = _ellipse_distance(e, xx, yy)
            own &= (dist < other) if j < i else (dist <= other)  # ties go to the first detection
        m = (cell_p[y0:y1, x0:x1] > 0.5) & own
        lab, n = ndi.label(m)
        if n > 1:
            bx0, by0, bx1, by1 = d.box
            r = 0.25 * min(bx1 - bx0, by1 - by0)
            core = ((xx - (bx0 + bx1) / 2) ** 2 + (yy - (by0 + by1) / 2) ** 2) <= r * r
            hit = np.unique(lab[core & m])
            # the part(s) at the centre, else the largest
            m = np.isin(lab, hit[hit > 0]) if hit.size else lab == (1 + int(np.argmax(np.bincount(lab[m])[1:])))
        m = ndi.binary_fill_holes(m)
        nuc = ndi.binary_fill_holes((nuc_p[y0:y1, x0:x1] > 0.5) & m) & m
        out.append(((x0, y0), nuc, m))
    return out


def nucleus_mask(p_net: np.ndarray, blue: np.ndarray, cell: np.ndarray,
                 weight: float = NUCLEUS_NET_WEIGHT) -> np.ndarray:
    """Nucleus pixels of one cell (box-sized bool): the network's probability blended with colour evidence.

    The network, trained on one lab's masks at a working scale, draws nuclei a little wide when upsampled; the
    nucleus is also, in any Romanowsky stain, the bluest part of its own cell. The colour evidence is a
    logistic of the blueness (``B - R`` after white balance) around the midpoint of the two Otsu classes of
    the cell's own pixels, so it follows each cell's stain and needs no fixed threshold.

    >>> cell = np.ones((8, 8), bool)
    >>> blue = np.zeros((8, 8), np.float32); blue[2:6, 2:6] = 60.0
    >>> int(nucleus_mask(np.full((8, 8), 0.6, np.float32), blue, cell).sum())
    16
    """
    vals = blue[cell]
    if vals.size < 16 or float(vals.std()) < MIN_BLUENESS_SPREAD:
        return ndi.binary_fill_holes(p_net > 0.5) & cell
    thr = float(threshold_otsu(vals, nbins=128))
    lo, hi = vals[vals <= thr], vals[vals > thr]
    centre = 0.5 * (float(lo.mean()) + float(hi.mean())) if lo.size and hi.size else thr  # Otsu's two classes
    z = np.clip((blue - centre) / (0.15 * float(vals.std())), -30.0, 30.0)
    p = weight * p_net + (1.0 - weight) / (1.0 + np.exp(-z))
    return ndi.binary_fill_holes(p > 0.5) & cell


def _resize_to(rgb: np.ndarray, factor: float) -> np.ndarray:
    h, w = rgb.shape[:2]
    size = (max(16, round(w * factor)), max(16, round(h * factor)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR)


def working_factor(shape: tuple[int, int], wbc_px: float, exact: bool = False) -> float:
    """Resampling factor bringing a WBC of ``wbc_px`` to :data:`NOMINAL_WBC` px, capped by the working field's
    pixels (:data:`MAX_WORK_PIXELS`) and :data:`MAX_UPSCALE`; ``exact``: the size comes from the optics
    (``--pixel-size``), see :func:`_largest_factor`.

    >>> round(working_factor((2880, 3840), 80.0), 3), round(working_factor((480, 640), 160.0), 3)
    (1.0, 0.5)
    >>> working_factor((480, 640), 40.0)  # a measured size: an enlargement stops at MAX_WORK_SIDE, one pass
    1.6
    >>> working_factor((1440, 1920), 21.0), working_factor((1440, 1920), 21.0, exact=True)  # the optics: windows
    (1.0, 3.0)
    """
    f = NOMINAL_WBC / max(wbc_px, 1.0)
    return float(min(f, MAX_UPSCALE, _largest_factor(shape, f, exact)))


def _largest_factor(shape: tuple[int, ...], wanted: float, exact: bool = False) -> float:
    """The largest resampling a field of ``shape`` may take: the working field's pixels end at
    :data:`MAX_WORK_PIXELS`; an enlargement also ends at :data:`MAX_WORK_SIDE` (as before windows: a small field is
    one pass, and a red-cell size measured too small does not blow platelets up), unless the optics are given
    (``exact``) and the WBCs would stay under :data:`ENLARGE_BELOW` of nominal: then the field is enlarged as far as
    its pixels allow and run in windows."""
    h, w = shape[:2]
    cap = float(np.sqrt(MAX_WORK_PIXELS / (h * w)))
    one_pass = min(cap, max(1.0, MAX_WORK_SIDE / max(h, w)))
    if wanted <= 1 or (exact and one_pass / wanted < ENLARGE_BELOW):
        return cap
    return one_pass


def first_guess(scale: FieldScale, shape: tuple[int, int]) -> float:
    """The WBC size (px) the first detection pass assumes.

    With ``pixel_size`` it is exact. A red-cell measurement is averaged (geometrically) with the size a WBC
    has in a typical field (:data:`~wbc.segment.scale.FIELD_WBC_FRACTION` of the shorter side): the detector
    copes with WBCs 0.3-3x nominal and the second pass corrects the rest, so the average keeps a red-cell
    estimate that is far off (pale or overlapping red cells: off by over 2x on 7 % of BCCD and TXL-PBC val fields,
    12 % of the PBC-origin ones) from blowing platelets up to WBC size, and a wide low-magnification field from
    shrinking its WBCs away; where it is still too far off, :data:`WEAK_FIRST_PASS` looks again.
    """
    if scale.source == "pixel_size":
        return scale.wbc_px
    field = FIELD_WBC_FRACTION * float(min(shape))
    if scale.source != "red_cells":
        return field
    return float(np.sqrt(scale.wbc_px * field))


class DetectorSegmenter:
    """The learned detector + outliner behind the :class:`~wbc.segment.Segmenter` interface."""

    name = "detector"

    def __init__(self, path: str | os.PathLike[str] | None = None, threads: int = 1,
                 pixel_size: float | None = None, threshold: float | None = None) -> None:
        self.path = Path(path) if path else DEFAULT_DETECTOR
        if not self.path.is_file():
            raise ModelError(f"{self.path}: detector model not found (use --segmenter classical)")
        # no spinning: between runs the cores go to the scale estimate, decoding and the classifier
        self.session = ort_session(self.path, threads, spin=False)
        check_model_kind(self.session, self.path, "detector")
        meta = self.session.get_modelmeta().custom_metadata_map
        self.model_id = meta.get("model_id", self.path.stem)
        self.threshold = float(threshold if threshold is not None else meta.get("score_threshold", SCORE_THRESHOLD))
        self.pixel_size = pixel_size
        self.input_name = self.session.get_inputs()[0].name
        self.last_scale: FieldScale | None = None

    def run(self, small: np.ndarray, ref: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(heatmap (h/4, w/4), size (2, h/4, w/4), masks (2, h, w)) for a field at the working scale (``ref``: its
        background colour, :func:`normalise`)."""
        x, _ = normalise(small, ref)
        h, w = x.shape[1:]
        hm, size, masks = self.session.run(None, {self.input_name: pad_input(x)[None]})
        hh, ww = -(-h // HM_STRIDE), -(-w // HM_STRIDE)
        return hm[0, 0, :hh, :ww], size[0, :, :hh, :ww], masks[0, :, :h, :w]

    def run_tiled(self, small: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`run` for a field of any size at the working scale: one pass up to :data:`MAX_WORK_SIDE`, else
        overlapping windows of that side, each used inside its :data:`TILE_MARGIN` (the outputs stitched, so that
        the peaks are found and merged over the whole field as for one pass)."""
        h, w = small.shape[:2]
        if max(h, w) <= MAX_WORK_SIDE:
            return self.run(small)
        _, ref = normalise(small[:: max(1, h // 512), :: max(1, w // 512)])  # the whole field's background
        step = MAX_WORK_SIDE - 2 * TILE_MARGIN  # a multiple of PAD_STRIDE: windows and cores align to the heatmap
        hh, ww = -(-h // HM_STRIDE), -(-w // HM_STRIDE)
        hm = np.zeros((hh, ww), np.float32)
        size = np.zeros((2, hh, ww), np.float32)
        masks = np.zeros((2, h, w), np.float32)
        for y0 in range(0, h, step):
            for x0 in range(0, w, step):
                ty0, tx0 = max(0, y0 - TILE_MARGIN), max(0, x0 - TILE_MARGIN)
                y1, x1 = min(h, y0 + step), min(w, x0 + step)
                window = small[ty0 : min(h, y1 + TILE_MARGIN), tx0 : min(w, x1 + TILE_MARGIN)]
                t_hm, t_size, t_masks = self.run(window, ref)
                masks[:, y0:y1, x0:x1] = t_masks[:, y0 - ty0 : y1 - ty0, x0 - tx0 : x1 - tx0]
                hy0, hx0, hy1, hx1 = y0 // HM_STRIDE, x0 // HM_STRIDE, -(-y1 // HM_STRIDE), -(-x1 // HM_STRIDE)
                oy, ox = ty0 // HM_STRIDE, tx0 // HM_STRIDE
                hm[hy0:hy1, hx0:hx1] = t_hm[hy0 - oy : hy1 - oy, hx0 - ox : hx1 - ox]
                size[:, hy0:hy1, hx0:hx1] = t_size[:, hy0 - oy : hy1 - oy, hx0 - ox : hx1 - ox]
        return hm, size, masks

    def detect(self, rgb: np.ndarray) -> tuple[float, list[Detection], np.ndarray]:
        """(working factor, detections at the working scale, masks) after at most one scale refinement, and, where the
        first pass was weak (:data:`WEAK_FIRST_PASS`), one coarse look kept if its best detection scores higher."""
        scale = estimate_field_scale(rgb, self.pixel_size)
        self.last_scale = scale
        factor = working_factor(rgb.shape[:2], first_guess(scale, rgb.shape[:2]), exact=scale.source == "pixel_size")
        hm, size, masks = self.run_tiled(_resize_to(rgb, factor))
        dets = decode(hm, size, self.threshold)
        if scale.source == "pixel_size":
            return factor, dets, masks
        weak = max((d.score for d in dets), default=0.0) < WEAK_FIRST_PASS
        better = refine_factor(dets, factor)
        if better is not None:
            f2 = float(min(better, MAX_UPSCALE, _largest_factor(rgb.shape, better)))
            hm2, size2, masks2 = self.run_tiled(_resize_to(rgb, f2))
            dets2 = decode(hm2, size2, self.threshold)
            if dets2:  # else the first pass's answer stands
                factor, dets, masks = f2, dets2, masks2
        if weak:
            # nothing, or only weak detections (platelets), found: perhaps a high-magnification field whose red
            # cells were measured far too small, where one WBC spans a large part of the view; look once more as
            # if it spanned a third of it, and keep that look where its best detection scores higher
            coarse = working_factor(rgb.shape[:2], min(rgb.shape[:2]) / 3.0)
            if coarse < factor / REFINE_RATIO:
                hm3, size3, masks3 = self.run_tiled(_resize_to(rgb, coarse))
                dets3 = decode(hm3, size3, self.threshold)
                if dets3 and max(d.score for d in dets3) > max((d.score for d in dets), default=0.0):
                    factor, dets, masks = coarse, dets3, masks3
        return factor, dets, masks

    def segment(self, rgb: np.ndarray) -> list[Cell]:
        H, W = rgb.shape[:2]
        _, dets, masks = self.detect(rgb)
        h, w = masks.shape[1:]
        sx, sy = W / w, H / h
        inst = instance_masks(dets, masks[0], masks[1])
        gain = grey_gains(rgb)  # blueness as after white_balance, without the balanced copy
        cells: list[Cell] = []
        for d, (off, _nm, cm) in zip(dets, inst, strict=True):
            x0, y0, x1, y1 = d.box
            X0, Y0 = max(0, int(np.floor(x0 * sx))), max(0, int(np.floor(y0 * sy)))
            X1, Y1 = min(W, int(np.ceil(x1 * sx))), min(H, int(np.ceil(y1 * sy)))
            if X1 - X0 < 2 or Y1 - Y0 < 2:
                continue
            cm_full, pn_full = _upsample_masks(off, cm, masks, (sx, sy), (X0, Y0, X1, Y1))
            crop = rgb[Y0:Y1, X0:X1].astype(np.float32)
            nm_full = nucleus_mask(pn_full, crop[:, :, 2] * gain[2] - crop[:, :, 0] * gain[0], cm_full)
            if cm_full.sum() < MIN_MASK_FILL * cm_full.size:  # no usable outline: the ellipse in the box
                cm_full = np.zeros_like(cm_full, np.uint8)
                bw, bh = X1 - X0, Y1 - Y0
                cv2.ellipse(cm_full, (bw // 2, bh // 2), (max(1, bw // 2), max(1, bh // 2)), 0, 0, 360, 1, -1)
                cm_full = cm_full.astype(bool)
                nm_full &= cm_full
            box = (X0, Y0, X1, Y1)
            touches = X0 <= 0 or Y0 <= 0 or X1 >= W or Y1 >= H
            cells.append(Cell(id=len(cells) + 1, box=box, nucleus_mask=nm_full, cell_mask=cm_full,
                              touches_border=touches, score=d.score))
        return cells


def _upsample_masks(off: tuple[int, int], cm: np.ndarray, masks: np.ndarray, s: tuple[float, float],
                    box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Box-sized full-resolution (cell mask, nucleus probability): the probability maps resampled, kept to
    the instance's support (``cm`` at working offset ``off``, dilated by one working pixel), so that
    outlines are smooth at any magnification."""
    X0, Y0, X1, Y1 = box
    size = (X1 - X0, Y1 - Y0)
    if cm.size == 0:
        return np.zeros(size[::-1], bool), np.zeros(size[::-1], np.float32)
    sx, sy = s
    ox, oy = off
    h, w = cm.shape
    support = cv2.dilate(cm.astype(np.uint8), np.ones((3, 3), np.uint8))
    pc = masks[1, oy : oy + h, ox : ox + w] * support
    pn = masks[0, oy : oy + h, ox : ox + w] * support
    # full-resolution pixel centres of the box, in the window's working coordinates
    M = np.array([[1 / sx, 0, (X0 + 0.5) / sx - 0.5 - ox], [0, 1 / sy, (Y0 + 0.5) / sy - 0.5 - oy]], np.float32)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    big_c = cv2.warpAffine(pc.astype(np.float32), M, size, flags=flags, borderMode=cv2.BORDER_REPLICATE) > 0.5
    big_n = cv2.warpAffine(pn.astype(np.float32), M, size, flags=flags, borderMode=cv2.BORDER_REPLICATE)
    return ndi.binary_fill_holes(big_c), big_n
