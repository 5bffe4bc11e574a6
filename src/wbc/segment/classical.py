"""Classical, stain-based WBC detection and segmentation (no training, no model file).

Every constant below is relative: sizes are multiples of the field's median red-cell diameter
(measured per image by :func:`estimate_rbc_diameter`), thresholds come from Otsu or from the image's
own colour statistics. That is what lets one method work on fields from other microscopes, cameras and
stains. The steps:

0. *white balance*: the background (bright mode) is made grey, so stain tests do not depend on the lamp.
1. *scale*: the red-cell diameter is the mode of the opening size spectrum (granulometry) of the
   solid red-cell mask (:func:`estimate_rbc_diameter`). The image is resampled so that a red cell is
   :data:`WORK_RBC_DIAMETER` pixels wide, and everything else runs at that scale.
2. *nucleus*: the "blueness" B - R (haematoxylin / azure stains nuclei blue-violet, eosin stains red cells
   red) thresholded by Otsu within the stained pixels, cleaned by opening and hole filling.
3. *instances*: nucleus fragments closer than 0.25 red-cell diameters, or than 0.25x the field's largest
   nucleus (whichever is wider), are one cell (lobed nuclei); groups smaller than 0.15 of a red cell, or
   than 0.3x the largest group near them (:data:`FIELD_TEST_REACH_NUCLEI`), are platelets, platelet clumps or
   fragments and dropped. The nucleus-relative tests keep working where the red-cell scale is mis-estimated.
4. *cytoplasm*: grown from the nucleus by a marker watershed on the stained foreground, competing with
   red-cell markers (distance-transform peaks), limited to a plausible WBC radius and smoothed.

The same instance and resampling code (:func:`instances_from_maps`, :func:`cells_from_instances`) turns
the learned segmenter's probability maps into cells, so both methods give the same kind of output (not the same
cells).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.segmentation import watershed

from wbc.types import Cell

#: Red-cell diameter (pixels) at the working scale; ~32 px keeps a 640x480 BCCD field near 240x180.
WORK_RBC_DIAMETER: float = 32.0
#: Long side (px) of the thumbnail the red-cell size is measured on: ~40 px red cells on BCCD, and the
#: spectrum resolves red cells down to ~1/60 of the field's side.
SCALE_THUMBNAIL: int = 160
#: Red-cell mask threshold between the background's saturation (0) and the Otsu split (1); lower keeps
#: pale rims closed but merges touching cells. BCCD train+val, fields off the median estimate by
#: > 1.4x: 0.3 / 0.5 / 0.7: 18 / 14 / 7.6 %.
RBC_MASK_LEVEL: float = 0.7
#: A nucleus group smaller than this fraction of a red cell's area is a platelet or debris.
MIN_NUCLEUS_AREA_RBC: float = 0.15
#: A nucleus group smaller than this fraction of the largest nucleus group near it (:data:`FIELD_TEST_REACH_NUCLEI`;
#: in a field of BCCD's size, the field's largest) is a platelet, a platelet clump or a fragment, not a WBC.
#: Scale-free: it needs no red-cell size, so it still works where that estimate is off. Chosen on BCCD train/val:
#: such candidates are <= 0.26x (false positives) and true WBCs >= 0.38x the field's largest (a small lymphocyte
#: beside a large neutrophil).
MIN_NUCLEUS_AREA_FIELD: float = 0.3
#: Nucleus fragments within this many red-cell diameters of each other belong to one cell.
LOBE_GAP_RBC: float = 0.25
#: ... or within this fraction of the field's largest nucleus (equivalent diameter), if that is wider.
#: Chosen on BCCD train/val (0.15 / 0.2 / 0.25: val F1 0.960 / 0.977 / 0.994, train 0.974 / 0.974 / 0.972).
LOBE_GAP_NUCLEUS: float = 0.25
#: Largest WBC radius, in red-cell diameters (a large monocyte is ~2.5x a red cell across).
MAX_CELL_RADIUS_RBC: float = 1.35


def blueness(rgb: np.ndarray) -> np.ndarray:
    """B - R as float32: high in nuclei (and WBC cytoplasm), negative in red cells, ~0 in background."""
    return rgb[:, :, 2].astype(np.float32) - rgb[:, :, 0].astype(np.float32)


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV-style saturation (max - min) in 0-255; background is grey, every stained thing is coloured."""
    return (rgb.max(axis=2).astype(np.int16) - rgb.min(axis=2).astype(np.int16)).astype(np.float32)


def _otsu(values: np.ndarray, default: float) -> float:
    values = values[np.isfinite(values)]
    if values.size < 16 or float(values.max() - values.min()) < 1e-3:
        return default
    return float(threshold_otsu(values, nbins=128))


def foreground_mask(rgb: np.ndarray) -> np.ndarray:
    """Stained pixels (cells) versus the bright, grey background: Otsu on saturation."""
    sat = cv2.GaussianBlur(saturation(rgb), (0, 0), 1.0)
    return sat > _foreground_threshold(sat, blueness(rgb))


def _nucleus_threshold(blue: np.ndarray) -> float:
    """Blueness threshold for nuclei: Otsu on the upper half of the field's blueness values.

    Red cells and background fill the lower half; the upper half holds background, pale cytoplasm and
    the violet nuclei, which Otsu separates. A field without any nucleus would still get a split, so the
    threshold is kept at least 3 robust standard deviations above the field's median.
    """
    v = blue[::2, ::2].ravel()
    med = float(np.median(v))
    sigma = 1.4826 * float(np.median(np.abs(v - med))) + 1.0
    thr = _otsu(v[v > med], default=med + 4 * sigma)
    return max(thr, med + 3.0 * sigma)


def _foreground_threshold(sat: np.ndarray, blue: np.ndarray) -> float:
    """Saturation threshold between grey background and stained cells (Otsu, violet nuclei excluded,
    since very dark nuclei would otherwise pull the split between nuclei and everything else)."""
    keep = blue[::2, ::2] <= _nucleus_threshold(blue)
    vals = sat[::2, ::2][keep]
    return _otsu(vals, default=float(sat.mean()))


def grey_gains(rgb: np.ndarray) -> np.ndarray:
    """Per-channel gains (float32, 3) that make the background, each channel's 90th percentile, grey at its
    own brightness."""
    ref = np.percentile(rgb[::4, ::4].reshape(-1, 3), 90, axis=0).astype(np.float32) + 1.0
    return np.asarray(float(ref.mean()) / ref, np.float32)


def white_balance(rgb: np.ndarray) -> np.ndarray:
    """``rgb`` with the background (each channel's 90th percentile: the bright mode of a thin smear)
    made grey at its own brightness.

    Saturation and blueness assume a grey background; a lamp or camera tint makes the background
    more saturated than pale red cells and bluer than the cut between red cells and cytoplasm.
    """
    gain = grey_gains(rgb)
    if np.all(np.abs(gain - 1.0) < 0.01):
        return rgb
    lut = np.clip(np.arange(256, dtype=np.float32)[:, None] * gain[None, :], 0, 255).astype(np.uint8)
    return np.stack([lut[rgb[:, :, c], c] for c in range(3)], axis=2)


def redness(rgb: np.ndarray) -> np.ndarray:
    """max(R - B, 0) as float32: the eosin-stained red cells light up, background and nuclei do not."""
    return np.clip(rgb[:, :, 0].astype(np.float32) - rgb[:, :, 2].astype(np.float32), 0, None)


def red_cell_mask(rgb: np.ndarray) -> np.ndarray:
    """Red cells as solid discs: stained pixels, WBCs left out, pale centres filled.

    The saturation threshold sits :data:`RBC_MASK_LEVEL` of the way from the background's median to the
    Otsu split, lower than :func:`foreground_mask`, so the thin rims of pale-centred red cells stay
    closed and hole filling turns them into discs. Components holding nucleus pixels are WBCs (with
    their cytoplasm and any red cells touching them) and are dropped, as are the eosinophil granules
    inside them.
    """
    blue = blueness(rgb)
    sat = cv2.GaussianBlur(saturation(rgb), (0, 0), 1.0)
    thr = _foreground_threshold(sat, blue)
    bg = sat <= thr
    bg_level = float(np.median(sat[bg])) if bg.any() else 0.0
    fg = (sat > bg_level + RBC_MASK_LEVEL * (thr - bg_level)).astype(np.uint8)
    opened = cv2.morphologyEx(fg, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    n, lab = cv2.connectedComponents(opened, connectivity=8)
    keep = np.ones(n, bool)
    keep[0] = False
    keep[lab[blue > _nucleus_threshold(blue)]] = False
    return ndi.binary_fill_holes(keep[lab])


def opening_areas(mask: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Area of ``mask`` opened by a disc of each radius (the granulometry), via distance transforms.

    The opening by a disc of radius r is the union of the discs of radius r that fit: pixels within r
    of a pixel whose distance to the outside is >= r. One distance transform per radius (3-4-5 chamfer
    approximation of Euclidean, so the areas can wobble by a few pixels), independent of r in cost.
    """
    m = mask.astype(np.uint8)
    inside = cv2.distanceTransform(m, cv2.DIST_L2, 5)
    areas = np.zeros(len(radii))
    for i, r in enumerate(radii):
        centres = inside >= r
        if not centres.any():
            break
        reach = cv2.distanceTransform((~centres).astype(np.uint8), cv2.DIST_L2, 5)
        areas[i] = float(np.count_nonzero((reach <= r) & (m > 0)))
    return areas


def spectrum_mode(areas: np.ndarray, radii: np.ndarray) -> float:
    """Radius at the peak of the pattern spectrum (area lost per log-radius step between the openings
    at consecutive ``radii``, which must be geometric), lightly smoothed and refined by a parabola."""
    spec = np.convolve(-np.diff(areas), [0.25, 0.5, 0.25], mode="same")
    centres = np.log(radii[:-1]) + 0.5 * np.log(radii[1] / radii[0])
    k = int(np.argmax(spec))
    x = float(centres[k])
    if 0 < k < len(spec) - 1:
        a, b, c = spec[k - 1], spec[k], spec[k + 1]
        den = a - 2 * b + c
        if den < 0:
            x += 0.5 * (a - c) / den * float(centres[1] - centres[0])
    return float(np.exp(x))


#: A field whose red cells measure under this many thumbnail pixels across, or are not found on it at all, is measured
#: again on its central part, a half of each side at a time, while that part's short side stays at least
#: :data:`ZOOM_MIN_SIDE`: on a field of many megapixels at an ordinary magnification (a scanner's region) the whole
#: field's thumbnail makes a red cell a pixel, and the spectrum's mode is noise (a 6,400 x 4,800 px mosaic of BCCD
#: fields measured 156 px for 40 px red cells); at a low magnification (a 20x objective's 14 px red cells on a
#: 1,920 x 1,440 px field) they vanish from it (before wbc 0.29.0 that first look's None was the answer).
ZOOM_BELOW: float = 5.0
ZOOM_MIN_SIDE: int = 320


def estimate_rbc_diameter(rgb: np.ndarray) -> float | None:
    """Typical red-cell diameter in pixels (:func:`thumbnail_rbc_diameter`), measured again on the field's central
    part while the red cells are too small on its thumbnail, or not found on it (:data:`ZOOM_BELOW`)."""
    d = thumbnail_rbc_diameter(rgb)
    while (d is None or d * SCALE_THUMBNAIL / max(rgb.shape[:2]) < ZOOM_BELOW) \
            and min(rgb.shape[:2]) // 2 >= ZOOM_MIN_SIDE:
        h, w = rgb.shape[:2]
        rgb = rgb[h // 4 : h - h // 4, w // 4 : w - w // 4]
        d = thumbnail_rbc_diameter(rgb)
    return d


def thumbnail_rbc_diameter(rgb: np.ndarray) -> float | None:
    """Typical red-cell diameter in pixels: the mode of the opening size spectrum of the red-cell mask.

    Opening the solid red-cell mask (:func:`red_cell_mask`) by a growing disc removes each red cell
    once the disc is wider than it, so most area is lost at the red-cell radius: overlapping red cells
    (the inscribed disc of two overlapping discs is one disc), clumps and small debris move that peak
    little, unlike blob counting or the LoG of the red stain, which pale-centred red cells (ring
    width) and eosinophil granules pulled down to 0.12-0.2x on ~20 % of BCCD train/val fields.
    On BCCD train+val (277 fields with >= 3 whole RBC boxes; truth: median longer box side) the
    estimate is 0.88x the box (5-95 %: 0.75-1.21x); it is off its median ratio by > 1.4x on 7.6 % of
    fields (the LoG: 28 %). Computed on a white-balanced 160 px thumbnail (~5 ms).
    Returns None for fields with too little red-cell stain to measure.
    """
    h, w = rgb.shape[:2]
    f = SCALE_THUMBNAIL / max(h, w)
    small = cv2.resize(rgb, (max(8, int(w * f)), max(8, int(h * f))), interpolation=cv2.INTER_AREA)
    small = white_balance(small)
    if float(np.percentile(redness(small), 95)) < 4.0:  # no red cells at all (a grey or blank field)
        return None
    mask = red_cell_mask(small)
    if np.count_nonzero(mask) < 16:
        return None
    # radii from ~1 thumbnail pixel to a red cell a third of the field across
    radii = np.geomspace(1.25, SCALE_THUMBNAIL / 6.0, 25)
    return 2.0 * spectrum_mode(opening_areas(mask, radii), radii) / f


def rbc_diameter(rgb: np.ndarray, pixel_size: float | None = None) -> float | None:
    """Red-cell diameter in pixels: from ``pixel_size`` (micrometres per pixel) when the lab knows its
    optics, else measured (:func:`estimate_rbc_diameter`)."""
    if pixel_size:
        from wbc.segment.scale import RBC_UM

        return RBC_UM / pixel_size
    return estimate_rbc_diameter(rgb)


#: Largest working field, in pixels, as the detector's (:data:`wbc.segment.detector.MAX_WORK_PIXELS`, about 37.7 Mpx):
#: a field whose red cells would need more is resampled to this many, its red cells under :data:`WORK_RBC_DIAMETER`
#: (every size test is in red cells at the working scale, so they follow). Before wbc 0.29.0 there was no limit: a
#: 4,000 x 3,000 px field given ``--pixel-size 0.75`` (a 20x objective) was enlarged 3.2x to 123 Mpx and ran out of
#: memory after a minute (6 GB), and the U-Net one could not allocate its first layer.
MAX_WORK_PIXELS: int = 64 * 768 * 768


def work_factor(rgb: np.ndarray, rbc_diameter: float | None) -> float:
    """Resampling factor that brings red cells to :data:`WORK_RBC_DIAMETER` pixels (clamped to 0.05-4), with the
    working field at most :data:`MAX_WORK_PIXELS`."""
    factor = 1.0 if rbc_diameter is None else float(np.clip(WORK_RBC_DIAMETER / rbc_diameter, 0.05, 4.0))
    h, w = rgb.shape[:2]
    return float(min(factor, np.sqrt(MAX_WORK_PIXELS / max(1, h * w))))


def resample(rgb: np.ndarray, factor: float) -> np.ndarray:
    if abs(factor - 1.0) < 1e-3:
        return rgb
    h, w = rgb.shape[:2]
    size = (max(8, round(w * factor)), max(8, round(h * factor)))
    interp = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
    return cv2.resize(rgb, size, interpolation=interp)


def _disk(radius: float) -> np.ndarray:
    r = max(1, round(radius))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def stain_maps(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(nucleus probability-like map, cell probability-like map) in 0-1 at the working scale.

    The nucleus map is the blueness relative to the image's Otsu threshold between stained pixels;
    the cell map is the stained foreground minus clearly red (eosin-dominated) pixels. Both are soft
    (a logistic around the threshold) so that resampling gives smooth outlines.
    """
    rgb_f = cv2.GaussianBlur(rgb, (0, 0), 0.7)
    blue = blueness(rgb_f)
    sat = saturation(rgb_f)
    nuc_thr = _nucleus_threshold(blue)
    fg_thr = _foreground_threshold(sat, blue)
    fg = sat > fg_thr
    stained = blue[fg]
    bg = blue[~fg]
    bg_med = float(np.median(bg)) if bg.size else 0.0
    nuc = 1.0 / (1.0 + np.exp(-(blue - nuc_thr) / 4.0))
    # Cell: stained and not red (red cells have blueness clearly below the background's).
    rbc = stained[stained < bg_med]
    red_level = float(np.median(rbc)) if rbc.size else bg_med - 30.0
    cyto_thr = 0.5 * (bg_med + red_level)
    cell = (1.0 / (1.0 + np.exp(-(sat - fg_thr) / 3.0))) * (1.0 / (1.0 + np.exp(-(blue - cyto_thr) / 4.0)))
    cell = np.maximum(cell, nuc)
    return nuc.astype(np.float32), cell.astype(np.float32)


@dataclass
class Instances:
    """Per-cell label maps at the working scale (0: background, k: cell k)."""

    nucleus: np.ndarray  # int32
    cell: np.ndarray  # int32, includes the nucleus


def group_lobes(nuc: np.ndarray, rbc_px: float) -> tuple[int, np.ndarray]:
    """(count incl. background, labels) of nucleus pixels grouped into cells by closing small gaps.

    The gap is :data:`LOBE_GAP_RBC` red-cell diameters, or :data:`LOBE_GAP_NUCLEUS` times the field's
    largest nucleus group's equivalent diameter when that is wider: lobes of one nucleus are close
    relative to the nucleus itself, which keeps a lobed nucleus whole even when the red-cell scale is
    under-estimated (eosinophil granules or pale-centred red cells can fool it).
    """
    u8 = nuc.astype(np.uint8)
    gap = rbc_px * LOBE_GAP_RBC
    for _ in range(2):
        n, groups = cv2.connectedComponents(cv2.dilate(u8, _disk(gap / 2)), connectivity=8)
        if n < 3:
            break
        largest = float(np.bincount(groups[nuc], minlength=n)[1:].max())
        nuc_gap = LOBE_GAP_NUCLEUS * np.sqrt(4.0 * largest / np.pi)
        if nuc_gap <= gap * 1.05:
            break
        gap = nuc_gap
    return n, groups


#: The field-relative nucleus test (:data:`MIN_NUCLEUS_AREA_FIELD`) compares a group with the larger groups within this
#: many of *their* equivalent diameters (about a BCCD field's diagonal from a large nucleus), not with the whole
#: field's largest: in a field of many fields' size the largest of dozens of nuclei set the bar and dropped small
#: lymphocytes far from it (classical on an 8 x 8 mosaic of BCCD val fields: 53 of the 65 cells found in the fields
#: one by one; 62 with the local test). Tied to the nucleus, not the red cell, so a wrong red-cell scale does not move
#: it. No box changes on the 364 BCCD and 177 TXL-PBC val fields.
FIELD_TEST_REACH_NUCLEI: float = 12.0


def keep_nucleus_groups(areas: np.ndarray, rbc_area: float, centres: np.ndarray | None = None) -> np.ndarray:
    """Which nucleus groups are WBC candidates (``areas[0]`` is the background and is never kept).

    Two size tests: against the red cell (:data:`MIN_NUCLEUS_AREA_RBC`, so a field without WBCs yields
    none) and against the largest group near it (:data:`MIN_NUCLEUS_AREA_FIELD`; ``centres``, (y, x) per group: those
    within :data:`FIELD_TEST_REACH_NUCLEI` of their own diameters; None: the field's largest). The second rejects
    platelets and nucleus fragments even when the red-cell scale is mis-estimated, which is where most
    false positives come from.
    """
    areas = np.asarray(areas, np.float64)
    keep = areas >= MIN_NUCLEUS_AREA_RBC * rbc_area
    keep[0] = False
    if not keep.any():
        return keep
    if centres is None:
        return keep & (areas >= MIN_NUCLEUS_AREA_FIELD * float(areas[keep].max()))
    from scipy.spatial import cKDTree

    idx = np.flatnonzero(keep)
    a, pts = areas[idx], np.asarray(centres, np.float64)[idx]
    local = a.copy()  # the largest candidate whose reach holds each one (itself at least)
    for j, near in enumerate(cKDTree(pts).query_ball_point(pts, r=FIELD_TEST_REACH_NUCLEI * np.sqrt(4.0 * a / np.pi))):
        local[near] = np.maximum(local[near], a[j])
    keep[idx] = a >= MIN_NUCLEUS_AREA_FIELD * local
    return keep


def instances_from_maps(
    nuc_p: np.ndarray, cell_p: np.ndarray, fg: np.ndarray | None = None, rbc_px: float = WORK_RBC_DIAMETER
) -> Instances:
    """Group nucleus pixels into cells and grow each cell's region; shared by the classical and U-Net segmenters.

    ``nuc_p``/``cell_p``: probability maps; ``fg``: optional stained foreground used to place red-cell
    markers that compete with WBCs for pixels (so touching red cells are not swallowed).
    """
    nuc = nuc_p > 0.5
    nuc = cv2.morphologyEx(nuc.astype(np.uint8), cv2.MORPH_OPEN, _disk(rbc_px * 0.04)).astype(bool)
    n, groups = group_lobes(nuc, rbc_px)
    groups = np.where(nuc, groups, 0).astype(np.int32)
    rbc_area = np.pi / 4 * rbc_px**2
    if n > 1:
        cen = np.zeros((n, 2))
        cen[1:] = np.asarray(ndi.center_of_mass(groups > 0, groups, range(1, n)), float).reshape(-1, 2)
        keep = keep_nucleus_groups(np.bincount(groups.ravel(), minlength=n), rbc_area, cen)
        remap = np.zeros(n, np.int32)
        remap[keep] = np.arange(1, int(keep.sum()) + 1)
        groups = remap[groups]
    k = int(groups.max())
    if k == 0:
        z = np.zeros(nuc.shape, np.int32)
        return Instances(z, z.copy())
    # Fill holes inside each nucleus group (pale chromatin) by filling the grouped mask.
    nuc_filled = ndi.binary_fill_holes(groups > 0)
    # Cell region: marker watershed on the cell map, WBC markers = nuclei, competing red-cell markers.
    cell = cell_p > 0.5
    cell |= nuc_filled
    max_r = MAX_CELL_RADIUS_RBC * rbc_px
    dist_to_nuc = cv2.distanceTransform((groups == 0).astype(np.uint8), cv2.DIST_L2, 5)
    cell &= dist_to_nuc <= max_r * 0.8
    markers = groups.copy()
    if fg is not None:
        fg_f = ndi.binary_fill_holes(fg)
        dt = cv2.distanceTransform(fg_f.astype(np.uint8), cv2.DIST_L2, 5)
        peaks = (dt == ndi.maximum_filter(dt, size=max(3, int(rbc_px * 0.6)))) & (dt > rbc_px * 0.3)
        peaks &= dist_to_nuc > rbc_px * 0.9  # red cells only, well away from any nucleus
        pl, _npk = ndi.label(peaks)
        markers = np.where(pl > 0, pl + k, markers)
        region = fg_f | cell
    else:
        region = cell
    cost = -cv2.distanceTransform((cell | nuc_filled).astype(np.uint8), cv2.DIST_L2, 5)
    ws = watershed(cost, markers, mask=region)
    ws = np.where(ws <= k, ws, 0)
    ws = np.where(cell, ws, 0)
    out = np.zeros_like(ws)
    se = _disk(rbc_px * 0.12)
    margin = se.shape[0]  # beyond the opening's reach: each cell is worked on inside its own box
    H, W = ws.shape
    ws_boxes, nuc_boxes = ndi.find_objects(ws, max_label=k), ndi.find_objects(groups, max_label=k)
    for i in range(1, k + 1):
        a, b = ws_boxes[i - 1], nuc_boxes[i - 1]
        if a is None:
            continue
        y0, x0 = min(a[0].start, b[0].start if b else H), min(a[1].start, b[1].start if b else W)
        y1, x1 = max(a[0].stop, b[0].stop if b else 0), max(a[1].stop, b[1].stop if b else 0)
        win = (slice(max(0, y0 - margin), min(H, y1 + margin)), slice(max(0, x0 - margin), min(W, x1 + margin)))
        own = groups[win] == i
        m = (ws[win] == i).astype(np.uint8)
        m = cv2.morphologyEx(m, cv2.MORPH_OPEN, se)
        m = ndi.binary_fill_holes(m | own)
        # keep the component(s) touching the nucleus only
        lab, nl = ndi.label(m)
        if nl > 1:
            hit = np.unique(lab[own])
            m = np.isin(lab, hit[hit > 0])
        o = out[win]
        o[m & (o == 0)] = i
    nucleus = np.where(nuc_filled & (out > 0), out, 0).astype(np.int32)
    return Instances(nucleus, out.astype(np.int32))


def cells_from_instances(
    inst: Instances,
    nuc_p: np.ndarray,
    cell_p: np.ndarray,
    full_shape: tuple[int, int],
    rbc_px: float = WORK_RBC_DIAMETER,
    min_area_px: float = 0.0,
) -> list[Cell]:
    """Resample each instance to full resolution (smooth, via the probability maps) as a :class:`Cell`.

    Masks are box-sized; boxes are [x0, y0, x1, y1) in full-image pixels.
    """
    H, W = full_shape
    h, w = inst.cell.shape
    sy, sx = H / h, W / w
    cells: list[Cell] = []
    rbc_area = np.pi / 4 * rbc_px**2
    objs = ndi.find_objects(inst.cell)
    for i, sl in enumerate(objs, start=1):
        if sl is None:
            continue
        pad = 2
        y0, y1 = max(0, sl[0].start - pad), min(h, sl[0].stop + pad)
        x0, x1 = max(0, sl[1].start - pad), min(w, sl[1].stop + pad)
        own = inst.cell[y0:y1, x0:x1] == i
        own_n = inst.nucleus[y0:y1, x0:x1] == i
        # soft masks: the instance's support, softened by the probability maps at the boundary
        soft_c = own.astype(np.float32)
        soft_c = cv2.GaussianBlur(soft_c, (0, 0), 0.6)
        soft_n = np.where(
            cv2.dilate(own_n.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0, nuc_p[y0:y1, x0:x1], 0.0
        ).astype(np.float32)
        soft_n = np.minimum(soft_n, soft_c)
        X0, Y0 = int(np.floor(x0 * sx)), int(np.floor(y0 * sy))
        X1, Y1 = min(W, int(np.ceil(x1 * sx))), min(H, int(np.ceil(y1 * sy)))
        size = (X1 - X0, Y1 - Y0)
        if size[0] < 2 or size[1] < 2:
            continue
        big_c = cv2.resize(soft_c, size, interpolation=cv2.INTER_LINEAR) > 0.5
        big_n = cv2.resize(soft_n, size, interpolation=cv2.INTER_LINEAR) > 0.5
        ys, xs = np.nonzero(big_c)
        if ys.size == 0 or ys.size < min_area_px:
            continue
        bx0, bx1, by0, by1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        cm = big_c[by0:by1, bx0:bx1]
        # the soft map brings pale chromatin back as holes; nuclei are solid (BCCD train/val nucleus
        # Dice +0.004 with the holes filled)
        nm = ndi.binary_fill_holes(big_n[by0:by1, bx0:bx1]) & cm
        box = (X0 + int(bx0), Y0 + int(by0), X0 + int(bx1), Y0 + int(by1))
        # detection score: how sure the nucleus is (mean probability) times how WBC-sized it is
        n_px = int(own_n.sum())
        certainty = float(nuc_p[y0:y1, x0:x1][own_n].mean()) if n_px else 0.0
        score = certainty * min(1.0, n_px / (0.5 * rbc_area))
        touches = box[0] <= 0 or box[1] <= 0 or box[2] >= W or box[3] >= H
        cells.append(
            Cell(
                id=len(cells) + 1, box=box, nucleus_mask=nm, cell_mask=cm, touches_border=touches, score=score
            )
        )
    return cells


class ClassicalSegmenter:
    """Stain thresholds + morphology + watershed; adapts to scale (red-cell size) and stain (Otsu)."""

    name = "classical"
    model_id = "classical-v1"

    def __init__(self, pixel_size: float | None = None) -> None:
        #: micrometres per pixel; when set, the red-cell size comes from it instead of the image
        self.pixel_size = pixel_size

    def segment(self, rgb: np.ndarray) -> list[Cell]:
        rgb = white_balance(rgb)
        rbc = rbc_diameter(rgb, self.pixel_size)
        factor = work_factor(rgb, rbc)
        small = resample(rgb, factor)
        nuc_p, cell_p = stain_maps(small)
        rbc_px = rbc * factor if rbc else WORK_RBC_DIAMETER
        inst = instances_from_maps(nuc_p, cell_p, fg=foreground_mask(small), rbc_px=rbc_px)
        return cells_from_instances(inst, nuc_p, cell_p, rgb.shape[:2], rbc_px=rbc_px)
