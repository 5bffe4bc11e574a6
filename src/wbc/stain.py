"""Stain normalisation: bring a cell image's colours to a reference lab's, before classification.

Blood-smear stains (May-Grünwald-Giemsa, Wright, Leishman) differ between labs, and so do cameras and
white balance; a network trained on one lab's colours can fail on another's. Three classical fixes, each
as a *fit* (statistics of reference images, JSON-serialisable so they can live in a model's metadata)
and an *apply* (a pure function of one uint8 RGB image):

- :func:`reinhard`: match the mean and standard deviation of each CIELAB channel (Reinhard et al. 2001).
- :func:`macenko`: estimate the two stain optical-density vectors and the stain amounts, then re-mix with
  the reference stains (Macenko et al. 2009).
- :func:`match_histograms`: map each RGB channel's quantiles onto the reference quantiles.

:func:`fit_stain_target` and :func:`normalise` dispatch on a ``{"method": ...}`` dict, the form stored
in ``ModelInfo.preprocessing.stain`` and applied by :class:`wbc.model.Classifier` before the network.
A target may also carry ``source`` statistics (one lab's pooled colours, as written by ``wbc adapt``):
then every image gets the same fixed colour transform instead of per-image statistics, which keeps a
cell's colour independent of how much background its crop holds.

A smear field also carries its own colour standard: hundreds of red cells on empty glass.
:func:`red_cell_colours` measures a field's glass and red-cell colours, and :func:`calibrate_red_cells` maps
them onto the training lab's (:func:`red_cell_reference`), per image and without labels
(``wbc analyze``, :func:`wbc.analyze.classify_cells`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import cv2
import numpy as np

METHODS = ("reinhard", "macenko", "histogram")
N_QUANTILES = 65
_EPS = 1e-6
#: Least source spread (CIELAB units) Reinhard's mapping divides by: below it a channel is only shifted.
REINHARD_MIN_STD = 1.0


def _as_rgb(rgb: np.ndarray) -> np.ndarray:
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {arr.shape}")
    return arr


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB -> float32 CIELAB (L 0-100, a/b about -128..127), D65."""
    return cv2.cvtColor(_as_rgb(rgb).astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    rgb = cv2.cvtColor(lab.astype(np.float32), cv2.COLOR_LAB2RGB)
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


# --- Reinhard ------------------------------------------------------------------------------------


def lab_stats(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation in CIELAB (the Reinhard statistics of one image)."""
    mean, std = cv2.meanStdDev(rgb_to_lab(rgb))  # in C: this runs once per classified cell
    return mean.ravel(), std.ravel()


def pooled_lab_stats(images: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of CIELAB over all pixels of all images (one lab's colours)."""
    n, s1, s2 = 0, np.zeros(3), np.zeros(3)
    for im in images:
        lab = rgb_to_lab(im).reshape(-1, 3).astype(np.float64)
        n += len(lab)
        s1 += lab.sum(0)
        s2 += (lab**2).sum(0)
    if n == 0:
        raise ValueError("no images to compute colour statistics from")
    mean = s1 / n
    return mean, np.sqrt(np.maximum(s2 / n - mean**2, 0.0))


def reinhard(
    rgb: np.ndarray,
    target_mean: Sequence[float],
    target_std: Sequence[float],
    source_mean: Sequence[float] | None = None,
    source_std: Sequence[float] | None = None,
) -> np.ndarray:
    """Shift and scale each LAB channel from the source statistics (default: the image's own) to the target's.

    >>> img = np.full((4, 4, 3), 200, np.uint8)
    >>> reinhard(img, *lab_stats(img)).tolist() == img.tolist()
    True
    """
    lab = rgb_to_lab(rgb)
    if source_mean is None or source_std is None:
        flat = lab.reshape(-1, 3).astype(np.float64)
        source_mean, source_std = flat.mean(0), flat.std(0)
    sm, ss = np.asarray(source_mean, np.float64), np.asarray(source_std, np.float64)
    tm, ts = np.asarray(target_mean, np.float64), np.asarray(target_std, np.float64)
    # a spread under one LAB unit is rounding noise (a grey image's a and b), not colour to stretch: stretching it
    # 850-2,700x painted grey cells at random (PBC test cells made grey, --stain reinhard: 0.963 -> 0.825)
    scale = (ts / np.maximum(ss, REINHARD_MIN_STD)).astype(np.float32)
    out = (lab - sm.astype(np.float32)) * scale + tm.astype(np.float32)
    out[..., 0] = np.clip(out[..., 0], 0.0, 100.0)
    return lab_to_rgb(out)


# --- Macenko -------------------------------------------------------------------------------------


def background_level(rgb: np.ndarray) -> np.ndarray:
    """Per-channel brightness of the empty glass (99th percentile): the light that reaches the camera.

    Estimating it per image (instead of assuming 255) absorbs white-balance and exposure differences.
    """
    x = _as_rgb(rgb).reshape(-1, 3).astype(np.float64)
    return np.maximum(np.percentile(x, 99, axis=0), 16.0)


def optical_density(rgb: np.ndarray, background: float | Sequence[float] | np.ndarray = 255.0) -> np.ndarray:
    """Beer-Lambert optical density per channel, (H*W, 3) float64, relative to ``background``."""
    x = _as_rgb(rgb).reshape(-1, 3).astype(np.float64)
    bg = np.asarray(background, np.float64)
    return np.maximum(-np.log((x + 1.0) / (bg + 1.0)), 0.0)


def macenko_stains(
    rgb: np.ndarray, od_threshold: float = 0.15, alpha: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two unit stain OD vectors (2, 3), their 99th-percentile amounts (2,) and the background (3,).

    The first row is the stain that absorbs most red light (haematoxylin-like: the nuclear, azure /
    methylene-blue stain), the second the eosin-like stain. Raises ValueError when fewer than 50 pixels
    are stained (an empty image has no stain to estimate).
    """
    bg = background_level(rgb)
    od = optical_density(rgb, bg)
    od_fg = od[np.linalg.norm(od, axis=1) > od_threshold]  # stained pixels (any stain, any channel)
    if len(od_fg) < 50:
        raise ValueError("too few stained pixels to estimate stain vectors")
    cov = np.cov(od_fg, rowvar=False)
    _, vecs = np.linalg.eigh(cov)
    plane = vecs[:, 1:3]  # the two largest eigenvectors
    proj = od_fg @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, alpha), np.percentile(phi, 100 - alpha)
    v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
    v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
    v1 *= np.sign(v1.sum()) or 1.0
    v2 *= np.sign(v2.sum()) or 1.0
    stains = np.stack([v1, v2]) if v1[0] > v2[0] else np.stack([v2, v1])
    stains /= np.linalg.norm(stains, axis=1, keepdims=True)
    conc = np.linalg.lstsq(stains.T, od.T, rcond=None)[0]
    max_c = np.percentile(conc, 99, axis=1)
    return stains, np.maximum(max_c, _EPS), bg


def _swapped(source: np.ndarray, target: np.ndarray) -> bool:
    """Whether ``source``'s two stain vectors match ``target``'s better in the other order.

    :func:`macenko_stains` orders stains by red absorption, which does not tell May-Grunwald-Giemsa's two dyes
    apart reliably: fits of one lab's cells came out in either order, and mapping the nuclear stain's amounts onto
    the eosin vector cost 10-27 points on PBC cells mapped onto PBC's own reference.

    >>> a, b = np.array([0.65, 0.70, 0.29]), np.array([0.07, 0.99, 0.11])
    >>> _swapped(np.stack([b, a]), np.stack([a, b])), _swapped(np.stack([a, b]), np.stack([a, b]))
    (True, False)
    """
    return bool(source[0] @ target[1] + source[1] @ target[0] > source[0] @ target[0] + source[1] @ target[1])


def macenko(
    rgb: np.ndarray,
    target_stains: Sequence[Sequence[float]],
    target_max: Sequence[float],
    target_background: Sequence[float] | None = None,
    source: dict[str, Any] | None = None,
) -> np.ndarray:
    """Re-mix an image with the target stains, amounts and background; unstained images come back as is.

    ``source``: fixed ``{"stains", "max", "background"}`` of the image's lab (default: estimated per image).
    """
    arr = _as_rgb(rgb)
    if source:
        s_src, m_src = np.asarray(source["stains"], np.float64), np.asarray(source["max"], np.float64)
        bg_src = np.asarray(source.get("background", [255.0] * 3), np.float64)
    else:
        try:
            s_src, m_src, bg_src = macenko_stains(arr)
        except ValueError:
            return arr.copy()
    t_stains = np.asarray(target_stains, np.float64)
    if _swapped(s_src, t_stains):  # the source's stains named in the target's order
        s_src, m_src = s_src[::-1], m_src[::-1]
    od = optical_density(arr, bg_src)
    conc = np.linalg.lstsq(s_src.T, od.T, rcond=None)[0]
    ratio = np.asarray(target_max, np.float64) / np.maximum(m_src, _EPS)
    conc *= ratio[:, None]
    bg_t = np.asarray(target_background if target_background is not None else [255.0] * 3, np.float64)
    out = (bg_t + 1.0) * np.exp(-(t_stains.T @ conc)).T - 1.0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8).reshape(arr.shape)


# --- histogram matching --------------------------------------------------------------------------


def channel_quantiles(images: Iterable[np.ndarray], n: int = N_QUANTILES) -> np.ndarray:
    """(3, n) evenly spaced quantiles of each RGB channel over all pixels of ``images``."""
    hist = np.zeros((3, 256), np.float64)
    for im in images:
        arr = _as_rgb(im)
        for c in range(3):
            hist[c] += np.bincount(arr[..., c].ravel(), minlength=256)[:256]
    if hist.sum() == 0:
        raise ValueError("no images to compute colour quantiles from")
    cdf = np.cumsum(hist, axis=1) / hist.sum(axis=1, keepdims=True)
    qs = np.linspace(0, 1, n)
    return np.stack([np.interp(qs, cdf[c], np.arange(256)) for c in range(3)])


def match_histograms(
    rgb: np.ndarray, target_quantiles: np.ndarray | Sequence[Sequence[float]],
    source_quantiles: np.ndarray | Sequence[Sequence[float]] | None = None,
) -> np.ndarray:
    """Map each channel so that its quantiles become the target's (piecewise-linear lookup table)."""
    arr = _as_rgb(rgb)
    tq = np.asarray(target_quantiles, np.float64)
    sq = channel_quantiles([arr], tq.shape[1]) if source_quantiles is None else np.asarray(source_quantiles)
    out = np.empty_like(arr)
    levels = np.arange(256, dtype=np.float64)
    for c in range(3):
        src, idx = np.unique(sq[c], return_index=True)  # np.interp needs increasing x
        lut = np.interp(levels, src, tq[c][idx]) if len(src) > 1 else np.full(256, tq[c].mean())
        out[..., c] = np.clip(np.rint(lut), 0, 255).astype(np.uint8)[arr[..., c]]
    return out


# --- red-cell calibration ------------------------------------------------------------------------

#: Fewest stained, non-WBC pixels a field needs before its red cells are trusted as a colour standard.
RED_CELL_MIN_PIXELS = 2000
#: Summed RGB optical density above which a pixel counts as stained (not empty glass).
_STAINED_OD = 0.3
#: Stained pixels darker than this percentile (nuclei, platelets, debris) are left out of the red-cell colour.
_RED_CELL_PERCENTILE = 90
#: Least ratio of the red cells' largest to smallest channel optical density for a field to count as stained in
#: colour. Real fields measured 1.30-2.0 (PBC, BCCD, BCD); a grey image is 1.0, and mapping its neutral red cells
#: onto coloured ones would tint every nucleus like a red cell (PBC fields made grey: 0.803 -> 0.770).
RED_CELL_MIN_CHROMA = 1.15
#: Least red-cell optical density in any channel for a field to be calibrated. Real fields measured 0.072 and above
#: (119 BCCD and TXL-PBC fields); an over-exposed field whose glass and red cells both clip at 255 in one channel
#: reads near 0 there, and scaling that channel up to the training lab's (up to 186x) painted every cell
#: (BCCD fields brightened 1.5x: 0.70 uncalibrated, 0.50 so calibrated).
RED_CELL_MIN_OD = 0.03


def red_cell_colours(rgb: np.ndarray, mask: np.ndarray | None = None) -> dict[str, list[float]] | None:
    """A field's glass brightness and red-cell optical density per channel, or None with too few stained pixels.

    The glass is the 99th-percentile brightness (:func:`background_level`); the red-cell colour is the median
    optical density of the stained pixels (summed OD over 0.3) below the 90th percentile of darkness, among the
    pixels ``mask`` allows (the field outside its WBCs): in a smear field almost all of them are red cells.
    None too for a grey image (:data:`RED_CELL_MIN_CHROMA`) and for one clipped in a channel (:data:`RED_CELL_MIN_OD`).

    >>> field = np.full((100, 100, 3), (240, 235, 230), np.uint8)
    >>> field[20:80, 20:80] = (200, 120, 130)
    >>> c = red_cell_colours(field)
    >>> [round(v) for v in c["background"]], [round(v, 2) for v in c["od"]]
    ([240, 235, 230], [0.18, 0.67, 0.57])
    >>> red_cell_colours(field[:10, :10]) is None, red_cell_colours(field.mean(2, keepdims=True).repeat(3, 2)) is None
    (True, True)
    """
    x = _as_rgb(rgb).reshape(-1, 3)
    if mask is not None:
        x = x[np.asarray(mask, bool).reshape(-1)]
    if len(x) == 0:
        return None
    bg = background_level(x.reshape(-1, 1, 3))
    od = optical_density(x.reshape(-1, 1, 3), bg)
    total = od.sum(axis=1)
    stained = total > _STAINED_OD
    if stained.sum() < RED_CELL_MIN_PIXELS:
        return None
    keep = stained & (total <= np.percentile(total[stained], _RED_CELL_PERCENTILE))
    if keep.sum() < RED_CELL_MIN_PIXELS // 2:
        return None
    red = np.median(od[keep], axis=0)
    if red.max() < RED_CELL_MIN_CHROMA * max(red.min(), 1e-3):  # grey: no stain colour to calibrate from
        return None
    if red.min() < RED_CELL_MIN_OD:  # a channel clipped at the top: its stain cannot be measured
        return None
    return {"background": bg.tolist(), "od": red.tolist()}


def border_mask(shape: tuple[int, ...], fraction: float = 0.12) -> np.ndarray:
    """The outer ``fraction`` of each side of an image: around a centred cell, the red cells and glass."""
    h, w = shape[:2]
    k = max(1, round(fraction * min(h, w)))
    m = np.zeros((h, w), bool)
    m[:k] = m[-k:] = True
    m[:, :k] = m[:, -k:] = True
    return m


def red_cell_reference(cells: Iterable[np.ndarray]) -> dict[str, list[float]]:
    """The training lab's glass and red-cell colours: the median over single-cell crops of
    :func:`red_cell_colours` of each crop's border (where the red cells around the centred WBC are)."""
    found = [c for im in cells if (c := red_cell_colours(im, border_mask(im.shape))) is not None]
    if not found:
        raise ValueError("no image with enough red cells around the WBC to fit a red-cell reference")
    return {k: np.median([c[k] for c in found], axis=0).tolist() for k in ("background", "od")}


#: Fewest cytoplasm pixels (cell mask less nucleus mask) :func:`cytoplasm_eosin` measures.
CYTOPLASM_MIN_PIXELS = 30


def cytoplasm_eosin(
    rgb: np.ndarray, cell_mask: np.ndarray, nucleus_mask: np.ndarray, colours: Mapping[str, Sequence[float]]
) -> float | None:
    """How much like the field's red cells a WBC's cytoplasm absorbs: its optical density in green minus that in
    red (the median over the cytoplasm's pixels), divided by the same for the red cells (``colours``:
    :func:`red_cell_colours` of the field, whose glass the densities are taken against). Haemoglobin and eosin
    absorb green: an eosinophil's cytoplasm comes out highest, an erythroblast's above a lymphocyte's, whose
    basophilic cytoplasm absorbs red (near 0 or below). The field is its own colour standard, so the measure holds
    across stains and white balances. None when the cytoplasm has fewer than :data:`CYTOPLASM_MIN_PIXELS` pixels
    or the red cells absorb green no more than red.

    ``rgb`` and the masks are the cell's box (the masks bool, the box's size).

    >>> colours = {"background": [240.0, 235.0, 230.0], "od": [0.2, 0.7, 0.55]}
    >>> box = np.full((20, 20, 3), (240, 235, 230), np.uint8)
    >>> cell = np.zeros((20, 20), bool); cell[2:18, 2:18] = True
    >>> nucleus = np.zeros((20, 20), bool); nucleus[6:14, 6:14] = True
    >>> box[cell & ~nucleus] = (150, 170, 215)  # blue cytoplasm: absorbs red
    >>> cytoplasm_eosin(box, cell, nucleus, colours) < 0
    True
    >>> box[cell & ~nucleus] = (228, 150, 165)  # pink cytoplasm: absorbs green, as the red cells do
    >>> round(cytoplasm_eosin(box, cell, nucleus, colours), 2)
    0.79
    """
    cyto = cell_mask & ~nucleus_mask
    red = float(colours["od"][1]) - float(colours["od"][0])
    if int(cyto.sum()) < CYTOPLASM_MIN_PIXELS or red <= 0.05:
        return None
    od = np.median(optical_density(rgb[cyto].reshape(-1, 1, 3), colours["background"]).reshape(-1, 3), axis=0)
    return float((od[1] - od[0]) / red)


def eosin_odds(value: float, first: Sequence[float], second: Sequence[float]) -> float:
    """How much likelier a cytoplasm measure ``value`` (:func:`cytoplasm_eosin`) is under the ``first`` class than
    under the ``second`` (each ``[mean, sd]`` of that class's training cells, normal densities): the factor by
    which it moves the odds between the two.

    >>> round(eosin_odds(-0.1, [0.01, 0.14], [0.31, 0.21]), 1)  # a blue cytoplasm: a lymphocyte's, not haemoglobin
    7.4
    """
    # the normal log-densities written out: scipy.stats would cost `wbc classify` 0.6 s of imports for one cell
    log_ratio = _normal_logpdf(value, *first) - _normal_logpdf(value, *second)
    return float(np.exp(np.clip(log_ratio, -30, 30)))


def _normal_logpdf(value: float, mean: float, sd: float) -> float:
    """The log-density of a normal distribution at ``value`` (``scipy.stats.norm.logpdf``'s, to 1e-12).

    >>> round(_normal_logpdf(0.0, 0.0, 1.0), 6)
    -0.918939
    """
    z = (float(value) - float(mean)) / float(sd)
    return -0.5 * z * z - math.log(float(sd)) - 0.5 * math.log(2 * math.pi)


def calibrate_red_cells(
    rgb: np.ndarray, source: Mapping[str, Sequence[float]], target: Mapping[str, Sequence[float]]
) -> np.ndarray:
    """Map an image's glass and red-cell colours (``source``) onto ``target``'s, per channel.

    White balance first (each channel divided by its glass level), then each channel's optical density scaled
    so the red cells' matches the target's: Beer-Lambert's law makes that one factor per channel for the whole
    stain layer, so a field stained or lit more red, blue or darkly than the training lab's is brought back
    while each cell keeps its colour relative to the red cells around it.

    >>> ref = {"background": [250.0, 240.0, 235.0], "od": [0.2, 0.3, 0.2]}
    >>> same = np.full((4, 4, 3), (250, 240, 235), np.uint8)
    >>> bool((calibrate_red_cells(same, ref, ref) == same).all())
    True
    """
    bg, tbg = np.asarray(source["background"], np.float64), np.asarray(target["background"], np.float64)
    gain = np.asarray(target["od"], np.float64) / np.maximum(np.asarray(source["od"], np.float64), 1e-3)
    levels = np.repeat(np.arange(256, dtype=np.float64)[:, None, None], 3, axis=2)  # one 256-entry table a channel
    od = optical_density(levels, bg) * gain
    lut = np.clip(np.rint((tbg + 1.0) * np.exp(-od) - 1.0), 0, 255).astype(np.uint8)
    x = _as_rgb(rgb)
    if x.dtype != np.uint8:
        x = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    return cv2.LUT(np.ascontiguousarray(x), np.ascontiguousarray(lut.reshape(1, 256, 3)))


# --- fit / apply by name -------------------------------------------------------------------------


def common_glass(images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Each image white-balanced onto the images' median glass (:func:`background_level`).

    A mosaic's 99th percentile is its brightest images' glass: against it every other image's glass has optical
    density, and Macenko's second "stain" came out as glass tint (PBC: blue glass 229 for most cells' 204).

    >>> dim, bright = np.full((4, 4, 3), 200, np.uint8), np.full((4, 4, 3), 240, np.uint8)
    >>> [int(im.max()) for im in common_glass([dim, bright, dim])]
    [200, 200, 200]
    """
    levels = [background_level(im) for im in images]
    glass = np.median(levels, axis=0)
    return [np.clip(np.rint(_as_rgb(im) * (glass / lv)), 0, 255).astype(np.uint8) for im, lv in zip(images, levels,
                                                                                                 strict=True)]


def fit_stain_stats(images: Sequence[np.ndarray], method: str) -> dict[str, Any]:
    """Pooled colour statistics of a set of images for ``method``, as plain lists (JSON-ready)."""
    if method not in METHODS:
        raise ValueError(f"unknown stain normalisation {method!r}; choose from {', '.join(METHODS)}")
    if not len(images):
        raise ValueError("no images to fit stain statistics on")
    if method == "reinhard":
        mean, std = pooled_lab_stats(images)
        return {"mean": mean.tolist(), "std": std.tolist()}
    if method == "macenko":
        # stain vectors of a mosaic of the images: one robust estimate for the whole set
        side = min(min(im.shape[:2]) for im in images)
        tiles = [cv2.resize(_as_rgb(im), (side, side), interpolation=cv2.INTER_AREA) for im in images]
        stains, max_c, bg = macenko_stains(np.concatenate(common_glass(tiles), axis=0))
        return {"stains": stains.tolist(), "max": max_c.tolist(), "background": bg.tolist()}
    return {"quantiles": channel_quantiles(images).tolist()}


def fit_stain_target(images: Sequence[np.ndarray], method: str) -> dict[str, Any]:
    """A normalisation target ``{"method", "target"}`` from reference (training-lab) images."""
    return {"method": method, "target": fit_stain_stats(images, method)}


def normalise(rgb: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """Apply a stain target dict (from :func:`fit_stain_target`, optionally with ``source``) to one image."""
    method = spec.get("method", "")
    tgt, src = spec.get("target", {}), spec.get("source") or {}
    if method == "reinhard":
        return reinhard(rgb, tgt["mean"], tgt["std"], src.get("mean"), src.get("std"))
    if method == "macenko":
        return macenko(rgb, tgt["stains"], tgt["max"], tgt.get("background"), src or None)
    if method == "histogram":
        return match_histograms(rgb, tgt["quantiles"], src.get("quantiles"))
    raise ValueError(f"unknown stain normalisation {method!r}; choose from {', '.join(METHODS)}")


def normalise_batch(cells: np.ndarray | Sequence[np.ndarray], spec: dict[str, Any] | None) -> np.ndarray:
    """:func:`normalise` on each cell of a batch; ``spec`` None or empty returns the batch unchanged."""
    arr = np.asarray(cells if isinstance(cells, np.ndarray) else np.stack(cells))
    if not spec:
        return arr
    return np.stack([normalise(c, spec) for c in arr]) if len(arr) else arr
