"""Framing-invariant single-cell input: measure the central WBC cheaply and re-frame it like the training crops.

The classifier learned cells as PBC shows them: one WBC centred, about a third of the frame wide, red cells
around it. Other labs' single-cell images come framed differently (the cell filling a tight crop, or small in
a wide field), and framing alone moved the shipped model from 29 % to 53 % on such crops. So before a
single-cell image is resized to the network's input, :func:`reframe_cell` finds the nucleus nearest the
centre on a small (64 px) copy, and when its extent relative to the frame is outside what the training crops
show, crops (or pads, with the image's own background colour) a square around it whose side puts the nucleus
at the training crops' median fraction. Images framed like the training crops are left as they are, so
PBC-like input sees what it saw before; only a cell whose nucleus is small for its frame, which may as well be
any cell at half the scale, is scored a second time re-framed (:func:`frame_cell_views`, ``FramingStats.grey``).

The nucleus, not the whole cell, is measured: it is the darkest, most saturated part of every stained WBC
whatever the stain, while pale cytoplasm merges with red cells and background. Where a pale stain leaves the
nucleus no darker than the red cells, it is looked for again in red, where it is still blue and the red cells are
nearly as light as the glass (:data:`PALE_NUCLEUS`). Lobes are merged by a
morphological closing, so the extent (the larger side of the nucleus' bounding box) follows the cell's size
for lobed and round nuclei alike.

The same measurement counts the nuclei of other cells whole in the frame (:data:`OTHER_CELL`, ``Framing.others``,
:class:`CellViews`): an image of two cells is answered for one of them, and which one is unclear, so
:func:`wbc.classify.predict_cells` flags it for review (since wbc 0.31.0).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from wbc.preprocess import FIELD_STOP_LEVEL, brightest_tenth_colour, resize_square, tenth_brightest

#: Side of the copy the nucleus is measured on (cost: ~0.1 ms per image).
MEASURE_SIDE = 64


@dataclass(frozen=True)
class FramingStats:
    """Nucleus extent / frame side in the training crops: the target, and the band left untouched.

    Measured with :func:`measure_framing` on 240 PBC training crops (30 per class, seed 0): median 0.33
    over the WBC classes (lymphocyte 0.27, neutrophil 0.30, eosinophil and basophil 0.35, monocyte 0.38;
    erythroblast nuclei 0.13-0.19; 98th percentiles 0.33-0.67). The band keeps natural size differences
    between classes (a reframed cell loses them); outside it, the framing is clearly not PBC's (a cell filling
    a tight crop, or small in a wide field).

    ``grey``: a cell left as it is whose nucleus is below this fraction (between ``low`` and ``grey``) may be a
    PBC-framed cell with a small nucleus (an erythroblast, a lymphocyte) or any cell shown at half PBC's
    scale (a wider field, a lower magnification): the two cannot be told apart from the framing alone, so such a
    cell is also shown re-framed to ``target`` and the network's answers for both are averaged, the re-framed one
    weighted :data:`SECOND_VIEW_WEIGHT`
    (:func:`frame_cell_views`). Chosen on PBC validation cells (``benchmarks/reframe_accuracy.py``): 0.22 keeps
    the native cells' accuracy and lifts cells padded 2x from 0.52 to 0.93 (docs/generalisation.md); a
    second network pass for about one PBC cell in seven. ``grey <= low``: no second view.

    ``side`` > 0: one magnification for a whole lab instead of one per cell: every cell is cut as a ``side`` x
    ``side`` pixel square of its image around the nucleus (band and second view unused), so cells keep the sizes
    relative to each other that PBC's fixed-magnification crops show (a small lymphocyte, a large monocyte).
    :func:`lab_framing` sets it from a lab's images.
    """

    target: float = 0.34
    low: float = 0.12
    high: float = 0.5
    grey: float = 0.22
    side: float = 0.0


DEFAULT_STATS = FramingStats()

#: A single-cell image whose long side exceeds its short side by more than this factor is cut to its largest square,
#: centred as near the nucleus as the image allows, before it is resized to the network's square input, instead of
#: being squashed into it (up to 1.4; beyond, it is re-framed around the nucleus a look finds, and squashed whole
#: when none finds one). PBC validation cells shown in a 4:3 frame lost 1.1
#: points squashed (docs/generalisation.md, "Frames that are not square").
SQUARE_TOLERANCE = 1.05

#: The weight of the re-framed view when a cell in the grey zone is answered by both framings
#: (:func:`wbc.classify.average_second_framings`; the cell as it is gets the rest). Chosen on all PBC validation
#: cells (``benchmarks/reframe_accuracy.py``, docs/generalisation.md): 0.5 -> 0.6 keeps the native cells' accuracy
#: and lifts cells padded 2x from 0.941 to 0.951 (0.7: 0.955, one rescaled cell lost).
SECOND_VIEW_WEIGHT = 0.6

#: How far the nucleus may sit from the frame's centre (along either axis, per side of the frame) before the image is
#: re-framed around it, even at a fraction within the band. Every training crop shows its cell centred (PBC validation
#: crops: median 0.02, 99th percentile 0.14), and a WBC off the centre of a crowded field, at about PBC's scale, is
#: what the network knows as a platelet crop (red cells and little else). Chosen on validation (docs/generalisation.md,
#: "A cell off its frame's centre"): 0.25 -> 0.2 names 12 more of BCCD's 277 train/val fields shown whole at 320 x 240
#: right over eight classes ("platelet" 55 -> 37), and 5 fewer of TXL-PBC's 185 one-WBC BCD fields (416 px) "platelet"
#: (18 -> 13). 0.15 would gain 3 more whole fields but re-frames a PBC crop showing two WBCs around the other cell.
OFF_CENTRE = 0.2


def framing_stats_of(classifier: object) -> FramingStats:
    """The framing a model wants (``info.extra["reframe"]``: ``target``, ``low``, ``high``, optionally ``grey``
    (without it, no second view) and ``side`` (a lab's one magnification)), else the default.

    A model trained with re-framed copies of its cells (``reframe_p``) can take every cell re-framed
    (``low == high == target``, :data:`CANONICAL`); the default leaves PBC-framed cells as they are.
    """
    info = getattr(classifier, "info", None)
    spec = (getattr(info, "extra", None) or {}).get("reframe")
    if not isinstance(spec, dict):
        return DEFAULT_STATS
    try:
        return FramingStats(float(spec["target"]), float(spec["low"]), float(spec["high"]),
                            float(spec["grey"] if "grey" in spec else spec["low"]), float(spec.get("side", 0.0)))
    except (KeyError, TypeError, ValueError):
        return DEFAULT_STATS


#: Every cell with a measurable nucleus re-framed to the target fraction (no band): the framing used for the
#: re-framed copies of training cells (``reframe_p``), so the network knows the re-framed look.
CANONICAL = FramingStats(DEFAULT_STATS.target, DEFAULT_STATS.target, DEFAULT_STATS.target, DEFAULT_STATS.target)


@dataclass(frozen=True)
class Framing:
    """Where the central nucleus is, in the image's pixels, and how large relative to the frame."""

    cx: float
    cy: float
    extent: float  # the larger side of the nucleus' bounding box, pixels
    fraction: float  # extent / the image's shorter side
    found: bool = True
    brightness: float = 0.0  # nucleus / background in the smallest channel (< MAX_NUCLEUS_BRIGHTNESS), or in red
    # for a pale nucleus (PALE_NUCLEUS)
    others: int = 0  # nuclei of other cells whole in the frame (OTHER_CELL), besides this one

    @classmethod
    def not_found(cls, shape: tuple[int, ...], brightness: float = 0.0) -> Framing:
        """No nucleus stands out: the image centre, at the default target fraction."""
        h, w = shape[:2]
        return cls(w / 2, h / 2, float(min(h, w)) * DEFAULT_STATS.target, DEFAULT_STATS.target, False, brightness)


@dataclass(frozen=True)
class FullImage:
    """The file an image was decoded from at a reduced size (a large JPEG is decoded at 1/2-1/8 of its size, which
    is fast and enough when the network sees it whole): ``scale`` file pixels per decoded pixel, and ``decode``,
    the file decoded whole (called at most once). A region re-framing cuts smaller than the network's input is cut
    from the whole decoding instead, so a cell small in a large frame keeps the file's resolution; a lab's one
    magnification (:attr:`FramingStats.side`, measured in file pixels) is cut at its size in either."""

    scale: float
    decode: Callable[[], np.ndarray]


def _min_channel(small: np.ndarray) -> np.ndarray:
    """The smallest of the three channels per pixel: low for nuclei (dark *and* saturated) whatever the stain."""
    return cv2.min(cv2.min(small[..., 0], small[..., 1]), small[..., 2])


def _scales(shape: tuple[int, ...], small_shape: tuple[int, ...]) -> tuple[float, float]:
    """(x, y) scale of :func:`_small`'s copy of an image of ``shape``: the copy's width over the image's for both
    axes, except for a strip over 8:1, whose short side the copy's 8 px floor widened: each axis its own then.

    >>> _scales((100, 2000), (8, 64)), _scales((363, 360), (64, 63))
    ((0.032, 0.08), (0.175, 0.175))
    """
    h, w = shape[:2]
    sh, sw = small_shape[:2]
    nominal = MEASURE_SIDE / max(h, w)
    if nominal < 1 and min(round(w * nominal), round(h * nominal)) < 8:
        return sw / w, sh / h
    return sw / w, sw / w


def _small(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    scale = MEASURE_SIDE / max(h, w)
    if scale >= 1:
        return rgb
    return cv2.resize(rgb, (max(8, round(w * scale)), max(8, round(h * scale))), interpolation=cv2.INTER_AREA)


#: A nucleus is much darker than the background: the smallest channel of its pixels, relative to that of
#: the image's brightest tenth, is at most this (PBC nuclei 0.12-0.37, red cells 0.79-0.87 on 240 PBC
#: training crops). A measured object above it (red cells, a platelet crop without a WBC) is not a nucleus,
#: and the image is left as it is.
MAX_NUCLEUS_BRIGHTNESS = 0.62


#: Where no central object is dark enough to be a nucleus, the frame is looked at again in red: a pale stain or a
#: blurred camera lifts a nucleus above :data:`MAX_NUCLEUS_BRIGHTNESS` (BCCD's: median 0.54 of the glass in the
#: smallest channel, 5-95 % 0.45-0.69, as dark as its red cells there), but in red the red cells are nearly as light as
#: the glass (0.87-0.92) and the nucleus is not (0.45-0.81). What is found there counts when it is at most this bright
#: in red, bluer than red (blue minus red, relative to the glass, 0.25-0.46 in BCCD's nuclei, 0.10-0.32 in PBC's; red
#: cells and the pale objects of PBC's platelet crops -0.2 to 0.04) and nucleus-sized (of the frame's shorter side):
#: (brightness, blueness, extent), chosen on the components of BCCD's train/val fields and PBC training crops.
PALE_NUCLEUS = (0.8, 0.1, 0.12)


def _pale_nucleus(brightness: float, blue: np.ndarray, where: np.ndarray, extent: float) -> bool:
    """Whether a component found in red is a pale nucleus (:data:`PALE_NUCLEUS`)."""
    top, min_blue, min_extent = PALE_NUCLEUS
    return brightness <= top and extent >= min_extent and float(np.median(blue[where])) >= min_blue


#: The last look for a nucleus (:func:`measure_by_hue`): its smallest channel at most this of the glass's. Where a
#: nucleus touches red cells of nearly its own darkness (BCCD: 145 against 163 in the smallest channel, 157 against
#: 179 in red), neither look above separates it from them, but its hue does: a stained nucleus is bluer than the
#: glass (blue minus red, relative to the glass's, at least :data:`PALE_NUCLEUS`'s blueness), red cells are redder.
#: This darkness keeps the lighter cytoplasm out of the measured extent (BCCD train/val fields whose nucleus the
#: smallest channel finds: the same position within 0.01 of the frame, extent 0.33 against 0.30 (median); at 0.9,
#: 0.34; at 0.7 a neutrophil's lobes fall apart).
HUE_NUCLEUS_DARKNESS = 0.8


def measure_by_hue(rgb: np.ndarray) -> Framing:
    """The nucleus nearest the image centre (then the largest) by its hue: the last look, for a frame in which
    neither :func:`measure_framing` nor :func:`measure_closer` found one (:data:`HUE_NUCLEUS_DARKNESS`).

    A component counts when it is nucleus-sized (:data:`PALE_NUCLEUS`'s extent); near-black pixels never do (as in
    :func:`measure_framing`); ``found=False`` when none is.
    Every PBC training crop's nucleus is found by the first looks; this one is for stains and cameras in which
    a nucleus is as dark as the red cells it touches.

    >>> field = np.full((240, 240, 3), (225, 215, 220), np.uint8)
    >>> for c in [(60, 60), (150, 60), (60, 150), (150, 160), (100, 105), (190, 110), (200, 200), (40, 215)]:
    ...     _ = cv2.circle(field, c, 30, (185, 150, 160), -1)  # crowded red cells: darker than glass, redder
    >>> _ = cv2.circle(field, (105, 165), 26, (165, 145, 200), -1)  # a nucleus touching them: as dark, but bluer
    >>> measure_framing(field).found, measure_closer(field).found
    (False, False)
    >>> f = measure_by_hue(field)
    >>> f.found, abs(f.cx - 105) < 4, abs(f.cy - 165) < 4, 45 < f.extent < 58  # 52 px across
    (True, True, True, True)
    """
    h, w = rgb.shape[:2]
    small = _small(rgb)
    sh, sw = small.shape[:2]
    low = _min_channel(small)
    bg = tenth_brightest(low)
    bluer = small[..., 2].astype(np.float32) - small[..., 0]
    blue = (bluer - float(np.median(bluer[low >= bg]))) / max(bg, 1.0)
    # a nucleus is an area, not a pixel: both maps averaged over 3 x 3 first, so a noisy plain image has none
    blue, dark = cv2.blur(blue, (3, 3)), cv2.blur(low.astype(np.float32), (3, 3)) / max(bg, 1.0)
    mask = (blue >= PALE_NUCLEUS[1]) & (dark <= HUE_NUCLEUS_DARKNESS)
    black = _near_black(rgb, (sw, sh))
    if black is not None:
        mask &= ~black  # a scale bar or label: as grey as a nucleus is blue against a pink glass
    mask = mask.astype(np.uint8)
    n, lab, stats, cents = cv2.connectedComponentsWithStats(
        cv2.morphologyEx(mask, cv2.MORPH_CLOSE, _KERNEL), connectivity=8)
    best, best_score = -1, np.inf
    for i in range(1, n):
        if max(stats[i, 2], stats[i, 3]) / min(sw, sh) < PALE_NUCLEUS[2]:
            continue  # a platelet, a granule, noise: smaller than a nucleus
        where = lab == i
        if np.median(dark[where]) > HUE_NUCLEUS_DARKNESS or np.median(blue[where]) < PALE_NUCLEUS[1]:
            continue  # mostly what the closing filled in: scattered pixels, no object
        dist = float(np.hypot(cents[i][0] - sw / 2, cents[i][1] - sh / 2)) / max(sw, sh)
        score = dist - 0.5 * float(np.sqrt(stats[i, cv2.CC_STAT_AREA] / (sw * sh)))
        if score < best_score:
            best, best_score = i, score
    if best < 0:
        return Framing.not_found(rgb.shape)
    x, y, bw, bh = (int(v) for v in stats[best, :4])
    kx, ky = _scales(rgb.shape, small.shape)
    extent = max(bw / kx, bh / ky)
    bright = float(np.median(dark[lab == best]))
    return Framing((x + bw / 2) / kx, (y + bh / 2) / ky, extent, extent / min(h, w), True, bright)


def _near_black(rgb: np.ndarray, small_size: tuple[int, int]) -> np.ndarray | None:
    """Where ``rgb`` is near-black (its brightest channel below :data:`wbc.preprocess.FIELD_STOP_LEVEL` of the
    background's), with a pixel's rim, as a mask at ``small_size`` (w, h); None when nowhere. Found at ``rgb``'s own
    resolution: a thin scale bar or label blends into the background on the measuring copy."""
    peak = cv2.max(cv2.max(rgb[..., 0], rgb[..., 1]), rgb[..., 2])
    level = FIELD_STOP_LEVEL * tenth_brightest(peak[:: max(1, peak.shape[0] // 64), :: max(1, peak.shape[1] // 64)])
    black = (peak < level).astype(np.uint8)
    if not black.any():
        return None
    rim = np.asarray(cv2.dilate(black, _SQUARE3), np.float32)
    if rim.shape[::-1] != small_size:
        rim = np.asarray(cv2.resize(rim, small_size, interpolation=cv2.INTER_AREA), np.float32)
    return np.asarray(cv2.dilate((rim > 0).astype(np.uint8), _SQUARE3)) > 0


def measure_framing(rgb: np.ndarray) -> Framing:
    """The nucleus nearest the image centre, measured on a 64 px copy (Otsu on the smallest channel).

    Returns ``found=False`` (and the image centre) when nothing nucleus-like stands out from the rest. Near-black
    pixels (all three channels below :data:`wbc.preprocess.FIELD_STOP_LEVEL` of the background's brightest; a stained
    nucleus keeps one channel far above it) are a scale bar, a label or a border, never a nucleus, and are left out.

    >>> cell = np.full((200, 200, 3), 235, np.uint8)
    >>> _ = cv2.circle(cell, (100, 100), 30, (90, 40, 140), -1)
    >>> _ = cv2.rectangle(cell, (120, 175), (190, 185), (0, 0, 0), -1)  # a scale bar
    >>> f = measure_framing(cell)
    >>> round(f.cx), round(f.cy), 0.25 < f.fraction < 0.36
    (100, 100, True)
    """
    h, w = rgb.shape[:2]
    small = _small(rgb)
    sh, sw = small.shape[:2]
    black = _near_black(rgb, (sw, sh))
    m, bg = _against_glass(_min_channel(small), black)
    box, bright, others = _central_nucleus(m, bg)
    if box is None:  # a pale stain: the nucleus may stand out only in red, where red cells are as light as glass
        red, red_bg = _against_glass(small[..., 0], black)
        blue = (small[..., 2].astype(np.float32) - small[..., 0]) / max(bg, 1.0)
        box, pale, others = _central_nucleus(red, red_bg, blue)
        bright = pale if box is not None else bright
    if box is None:
        return Framing.not_found(rgb.shape, bright)
    x, y, bw, bh = box
    kx, ky = _scales(rgb.shape, small.shape)
    extent = max(bw / kx, bh / ky)
    return Framing((x + bw / 2) / kx, (y + bh / 2) / ky, extent, extent / min(h, w), True, bright, others)


def _against_glass(channel: np.ndarray, black: np.ndarray | None) -> tuple[np.ndarray, float]:
    """A copy of one channel with its near-black pixels (``black``: a scale bar, a label, a border) set to the glass's
    level, and that level (:func:`wbc.preprocess.tenth_brightest`)."""
    out = np.ascontiguousarray(channel).copy()
    bg = tenth_brightest(out)
    if black is not None:
        out[black] = round(bg)
    return out, bg


def _dark_mask(m: np.ndarray) -> np.ndarray:
    """Otsu's darker class of ``m``, or, when that class is clearly bimodal, its darker half (the first threshold
    often splits background from everything stained; the second separates nuclei from red cells)."""
    flat = m.reshape(-1)
    thr, _ = cv2.threshold(m, 0, 255, cv2.THRESH_BINARY_INV | cv2.THRESH_OTSU)
    dark = flat[flat <= thr]
    if dark.size > 16:
        thr2, _ = cv2.threshold(dark.reshape(1, -1), 0, 255, cv2.THRESH_BINARY_INV | cv2.THRESH_OTSU)
        lo, hi = dark[dark <= thr2], dark[dark > thr2]
        if lo.size > 0.05 * dark.size and hi.size and float(hi.mean()) - float(lo.mean()) > 25:
            thr = thr2
    return (m <= thr).astype(np.uint8)


def _central_nucleus(
    m: np.ndarray, bg: float, blue: np.ndarray | None = None
) -> tuple[tuple[int, int, int, int] | None, float, int]:
    """The box (x, y, w, h) of the component of ``m``'s dark class nearest the centre (then the largest), lobes
    merged by a closing, its brightness relative to ``bg``, and how many other cells' nuclei lie whole in the frame
    (:func:`_other_nuclei`); the box is None when that component is no nucleus
    (brighter than :data:`MAX_NUCLEUS_BRIGHTNESS`) or there is none. ``blue`` given: ``m`` is the red channel, and
    only pale nuclei (:func:`_pale_nucleus`) are candidates. A component under :data:`MIN_NUCLEUS_SHARE` of the
    largest one dark enough to be a nucleus is no candidate: a platelet is as dark as a nucleus, and one nearer the
    centre than an off-centre WBC was taken for its nucleus before wbc 0.29.0 (the image then zoomed onto it)."""
    sh, sw = m.shape[:2]
    closed = cv2.morphologyEx(_dark_mask(m), cv2.MORPH_CLOSE, _KERNEL)
    n, lab, stats, cents = cv2.connectedComponentsWithStats(closed, connectivity=8)
    min_area = max(3, int(0.002 * sw * sh))
    if blue is None:  # the largest nucleus-dark component sets what "nucleus-sized" means in this image
        for i in 1 + np.argsort(-stats[1:, cv2.CC_STAT_AREA], kind="stable"):  # largest first: usually the first
            area = int(stats[i, cv2.CC_STAT_AREA])
            if area < min_area:
                break
            if float(np.median(m[lab == i])) / max(bg, 1.0) <= MAX_NUCLEUS_BRIGHTNESS:
                min_area = max(min_area, int(MIN_NUCLEUS_SHARE * area))
                break
    best, best_score, bright = -1, np.inf, 1.0
    for i in range(1, n):
        area = stats[i, cv2.CC_STAT_AREA]
        if area < min_area:
            continue
        b = 1.0
        if blue is not None:  # in red, every candidate is checked; in the smallest channel, only the one chosen
            where = lab == i
            b = float(np.median(m[where])) / max(bg, 1.0)
            if not _pale_nucleus(b, blue, where, max(stats[i, 2], stats[i, 3]) / min(sw, sh)):
                continue  # red cells: redder than blue
        dist = float(np.hypot(cents[i][0] - sw / 2, cents[i][1] - sh / 2)) / max(sw, sh)
        score = dist - 0.5 * float(np.sqrt(area / (sw * sh)))  # central first, then large
        if score < best_score:
            best, best_score, bright = i, score, b
    if best >= 0 and blue is None:
        bright = float(np.median(m[lab == best])) / max(bg, 1.0)
    if best < 0 or (blue is None and bright > MAX_NUCLEUS_BRIGHTNESS):
        return None, bright, 0  # nothing, or the central object is red cells or a platelet: not a nucleus
    x, y, bw, bh = (int(v) for v in stats[best, :4])
    return (x, y, bw, bh), bright, _other_nuclei(m, bg, lab, stats, best, min_area, blue)


#: When another nucleus mass in the measured copy is the nucleus of another cell whole in the frame, not a lobe of the
#: chosen nucleus nor a piece of a neighbour at the frame's edge: (share, rim, apart). Its area is at least ``share``
#: of the chosen nucleus' (a platelet beside an erythroblast's small nucleus is 0.16-0.22 of it); it is clear of the
#: frame's edge by ``rim`` of its own extent, room for its cytoplasm (PBC crops often show part of a neighbour at the
#: border: a cell cut by the frame is not what the image was taken of); and it lies at least ``apart`` of the larger
#: nucleus' extent from the chosen one (the lobes of one eosinophil or neutrophil nucleus that the closing leaves
#: apart: 0.13-0.28 on PBC validation crops; two neutrophils or erythroblasts touching: 0.32-0.49), and from every
#: other nucleus counted (a neighbour's lobes: one cell, since wbc 0.32.0). Chosen on PBC
#: validation crops and synthetic pairs of them (``benchmarks/two_cells.py``, docs/generalisation.md). Since wbc 0.31.0.
OTHER_CELL = (0.25, 0.25, 0.35)


def _other_nuclei(m: np.ndarray, bg: float, lab: np.ndarray, stats: np.ndarray, best: int, min_area: int,
                  blue: np.ndarray | None) -> int:
    """How many components of ``lab`` besides ``best`` (the chosen nucleus) are the nuclei of other cells whole in the
    frame (:data:`OTHER_CELL`), dark enough to be nuclei as :func:`_central_nucleus` judges them; one within ``apart``
    of a nucleus already counted is a lobe of that cell (a neighbour's two lobe groups are one cell, not two). The
    cheap tests (area, the frame's edge) come first: most images have no candidate left, and pay nothing more."""
    share, rim, apart = OTHER_CELL
    sh, sw = m.shape[:2]
    floor = max(min_area, share * float(stats[best, cv2.CC_STAT_AREA]))
    chosen = max(int(stats[best, 2]), int(stats[best, 3]))
    counted: list[tuple[np.ndarray, int]] = []
    gap: np.ndarray | None = None  # each pixel's distance to the chosen nucleus, computed for the first candidate
    n = 0
    for i in range(1, len(stats)):
        x, y, w, h, area = (int(v) for v in stats[i, :5])
        extent = max(w, h)
        if i == best or area < floor or min(x, y, sw - x - w, sh - y - h) < rim * extent:
            continue
        if gap is None:
            gap = cv2.distanceTransform((lab != best).astype(np.uint8), cv2.DIST_L2, 3)
        where = lab == i
        if float(gap[where].min()) < apart * max(extent, chosen):
            continue  # a lobe of the chosen nucleus
        b = float(np.median(m[where])) / max(bg, 1.0)
        if b <= MAX_NUCLEUS_BRIGHTNESS if blue is None else _pale_nucleus(b, blue, where, extent / min(sw, sh)):
            if any(float(d[where].min()) < apart * max(extent, e) for d, e in counted):
                continue  # a lobe of another cell's nucleus already counted
            counted.append((cv2.distanceTransform((~where).astype(np.uint8), cv2.DIST_L2, 3), extent))
            n += 1  # else red cells, or a pale object: no nucleus
    return n


#: A dark component smaller than this share of the largest nucleus-dark component in the measured copy is no
#: nucleus candidate (a platelet beside a WBC's nucleus is a tenth of its area or less); a platelet crop without a
#: WBC keeps its platelet, the largest dark component there. Since wbc 0.29.0 (docs/generalisation.md).
MIN_NUCLEUS_SHARE = 0.15

_KERNEL = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
_SQUARE3 = np.ones((3, 3), np.uint8)

#: When no nucleus stands out in the whole frame, the central 1/k of it is looked at again (each at the same
#: :data:`MEASURE_SIDE` px) for each k here, in turn: a cell small in a wide field (an erythroblast's nucleus in a
#: 600 px field is about 3 px across at 64 px) or a platelet crop shown small is then found. Chosen on all 1,648 PBC
#: validation cells (``benchmarks/reframe_accuracy.py``, docs/generalisation.md): padded 2x 0.951 -> 0.967, as a
#: 600 px field 0.952 -> 0.972, native one cell lower (0.9885 -> 0.9879).
CLOSER_LOOKS = (2, 4)


def measure_closer(rgb: np.ndarray) -> Framing:
    """:func:`measure_framing` on the central half, then quarter, of ``rgb`` (:data:`CLOSER_LOOKS`): the first
    nucleus found, in ``rgb``'s coordinates and relative to its frame; ``found=False`` when none is.

    >>> field = np.full((600, 600, 3), 235, np.uint8)
    >>> _ = cv2.circle(field, (300, 300), 8, (90, 40, 140), -1)  # 17 px: 2 px at 64 px, too small to stand out
    >>> measure_framing(field).found
    False
    >>> g = measure_closer(field)
    >>> g.found, 0.02 < g.fraction < 0.05, abs(g.cx - 300) < 10
    (True, True, True)
    """
    h, w = rgb.shape[:2]
    for k in CLOSER_LOOKS:
        ch, cw = max(8, round(h / k)), max(8, round(w / k))
        y0, x0 = (h - ch) // 2, (w - cw) // 2
        g = measure_framing(rgb[y0 : y0 + ch, x0 : x0 + cw])
        if g.found:
            return Framing(g.cx + x0, g.cy + y0, g.extent, g.extent / min(h, w), True, g.brightness)
    return Framing.not_found(rgb.shape)


def find_nucleus(rgb: np.ndarray, first: Framing | None = None) -> Framing:
    """The nucleus every look finds, in turn: the first (:func:`measure_framing`; ``first`` when measured already),
    a closer look at the centre (:func:`measure_closer`), then its hue (:func:`measure_by_hue`). One cut per cell,
    as at a lab's one magnification, takes them all; `wbc classify`'s own framing takes them in the same order,
    with both framings for what only the closer look finds (:func:`frame_cell_views`).

    >>> field = np.full((600, 600, 3), 235, np.uint8)
    >>> _ = cv2.circle(field, (300, 300), 8, (90, 40, 140), -1)  # too small to stand out in the whole frame
    >>> measure_framing(field).found, find_nucleus(field).found
    (False, True)
    """
    f = first if first is not None else measure_framing(rgb)
    if not f.found:
        f = measure_closer(rgb)
    return f if f.found else measure_by_hue(rgb)


def background_colour(rgb: np.ndarray) -> tuple[int, int, int]:
    """The image's own background: the median colour of its brightest tenth (on a small copy)."""
    return tuple(int(v) for v in brightest_tenth_colour(_small(rgb)))  # type: ignore[return-value]


def needs_reframe(f: Framing, shape: tuple[int, ...], stats: FramingStats = DEFAULT_STATS) -> bool:
    """True when the image is not framed like a training crop: nucleus too large or small for the frame,
    off its centre (:data:`OFF_CENTRE`), or the image far from square."""
    if not f.found:
        return False
    h, w = shape[:2]
    return not (stats.low <= f.fraction <= stats.high) or off_centre(f, shape) > OFF_CENTRE \
        or max(h, w) > 1.4 * min(h, w)


def off_centre(f: Framing, shape: tuple[int, ...]) -> float:
    """How far the nucleus ``f`` sits from the centre of a frame of ``shape``, along the farther axis, per side of
    the frame (:data:`OFF_CENTRE` re-frames beyond it).

    >>> off_centre(Framing(cx=100.0, cy=160.0, extent=40.0, fraction=0.2), (200, 200, 3))
    0.3
    """
    h, w = shape[:2]
    return max(abs(f.cx - w / 2), abs(f.cy - h / 2)) / min(h, w)


#: How to get a square's padding colour, measured only when asked (:func:`lazy_background`): measuring the
#: background costs a third of a millisecond that a square inside the image (a zoomed-in second framing, most
#: re-framed cells) never needs.
Fill = Callable[[], tuple[int, int, int]]


def lazy_background(rgb: np.ndarray) -> Callable[[], tuple[int, int, int]]:
    """:func:`background_colour` of ``rgb``, measured on the first call only."""
    return functools.cache(lambda: background_colour(rgb))


def _square(rgb: np.ndarray, cx: float, cy: float, side: int, fill: Fill) -> np.ndarray:
    """The ``side`` x ``side`` square centred on (cx, cy); beyond the image, the colour ``fill()`` gives."""
    x0, y0 = round(cx - side / 2), round(cy - side / 2)
    h, w = rgb.shape[:2]
    top, left = max(0, -y0), max(0, -x0)
    bottom, right = max(0, y0 + side - h), max(0, x0 + side - w)
    src = rgb[max(0, y0) : min(h, y0 + side), max(0, x0) : min(w, x0 + side)]
    if top or left or bottom or right:
        src = cv2.copyMakeBorder(src, top, bottom, left, right, cv2.BORDER_CONSTANT, value=fill())
    return np.ascontiguousarray(src)


def _cut(rgb: np.ndarray, cx: float, cy: float, side: int, fill: Fill, size: int,
         full: FullImage | None) -> np.ndarray:
    """The ``side`` square of ``rgb`` around (cx, cy) at the network's ``size``; from ``full``'s whole decoding
    when the square is smaller than ``size`` in ``rgb`` (and the whole decoding is ``rgb`` larger, not turned)."""
    if full is not None and side < size:
        big = full.decode()
        k = big.shape[1] / rgb.shape[1]
        if k > 1 and abs(big.shape[0] / rgb.shape[0] - k) < 0.05 * k:
            return resize_square(_square(big, cx * k, cy * k, max(8, round(side * k)), fill), size)
    return resize_square(_square(rgb, cx, cy, side, fill), size)


def reframe_cell(
    rgb: np.ndarray, size: int, stats: FramingStats = DEFAULT_STATS, framing: Framing | None = None,
    full: FullImage | None = None,
) -> np.ndarray:
    """``rgb`` as a ``size`` x ``size`` uint8 cell framed like the training crops (unchanged framing when it
    already is; see the module docstring). ``full``: the file ``rgb`` was decoded from at a reduced size.

    The first measurement (on a 64 px copy of the whole image) is refined once on the square it proposes,
    so a small nucleus in a wide field is measured at a useful resolution. At the lab's one magnification
    (``stats.side``), a nucleus the first look misses is looked for closer, then by its hue (:func:`find_nucleus`),
    as :func:`frame_cell_views` looks for it; the square is cut at the image's centre only when none finds one.
    """
    if stats.side > 0:
        f = find_nucleus(rgb, framing)
        fill = lazy_background(rgb)
        f = _refined(rgb, f, stats.target, fill) if f.found else f
        side = stats.side / (full.scale if full is not None else 1.0)  # measured in the file's pixels
        return _cut(rgb, f.cx, f.cy, max(8, round(side)), fill, size, full)
    f = framing or measure_framing(rgb)
    if not needs_reframe(f, rgb.shape, stats):
        return resize_square(rgb, size)
    return _reframed(rgb, size, stats, f, full)


def _reframed(rgb: np.ndarray, size: int, stats: FramingStats, f: Framing, full: FullImage | None = None
              ) -> np.ndarray:
    """The square around the nucleus ``f`` (refined once) that puts it at ``stats.target`` of the frame."""
    fill = lazy_background(rgb)
    f = _refined(rgb, f, stats.target, fill)
    return _cut(rgb, f.cx, f.cy, max(8, round(f.extent / stats.target)), fill, size, full)


def _refined(rgb: np.ndarray, f: Framing, target: float, fill: Fill) -> Framing:
    """``f`` measured again on the square it proposes (the nucleus at ``target`` of it), so a small nucleus in a
    wide field is measured at a useful resolution; ``f`` itself when nothing is found there."""
    side = max(8, round(f.extent / target))
    g = measure_framing(_square(rgb, f.cx, f.cy, side, fill))
    if not g.found:
        return f
    return Framing(f.cx - side / 2 + g.cx, f.cy - side / 2 + g.cy, g.extent, g.extent / min(rgb.shape[:2]), True,
                   g.brightness)


def nucleus_extent(rgb: np.ndarray, target: float = DEFAULT_STATS.target) -> float | None:
    """The central nucleus' extent in ``rgb``'s own pixels (found by every look, :func:`find_nucleus`, and measured
    as :func:`reframe_cell` measures it), or None when the image shows no nucleus.

    >>> cell = np.full((300, 300, 3), 235, np.uint8)
    >>> _ = cv2.circle(cell, (150, 150), 30, (90, 40, 140), -1)  # 61 px across
    >>> 52 < nucleus_extent(cell) < 70
    True
    >>> field = np.full((600, 600, 3), 235, np.uint8)
    >>> _ = cv2.circle(field, (300, 300), 10, (90, 40, 140), -1)  # 21 px across: ~2 px at the measuring size
    >>> 16 < nucleus_extent(field) < 26
    True
    >>> nucleus_extent(np.full((300, 300, 3), 235, np.uint8)) is None
    True
    """
    f = find_nucleus(rgb)
    return _refined(rgb, f, target, lazy_background(rgb)).extent if f.found else None


def lab_framing(extents: list[float | None], target: float = DEFAULT_STATS.target) -> FramingStats | None:
    """One magnification for a lab whose images share one (a microscope, a camera): the square side that puts
    the lab's median nucleus (``extents``: :func:`nucleus_extent` of its images) at ``target`` of the frame, for
    every cell (``FramingStats.side``). None with fewer than 8 measured nuclei.

    >>> stats = lab_framing([40.0, 50.0, 60.0] * 3)
    >>> round(stats.side), stats.low == stats.high == stats.target
    (147, True)
    """
    found = [e for e in extents if e is not None and e > 0]
    if len(found) < 8:
        return None
    return FramingStats(target, target, target, target, side=float(np.median(found)) / target)


def frame_cell(rgb: np.ndarray, size: int, stats: FramingStats = DEFAULT_STATS) -> np.ndarray:
    """What `wbc classify` feeds the network with re-framing on: ``rgb`` resized to ``size`` as before, unless
    its framing is unlike the training crops', then :func:`reframe_cell`.

    The measurement runs on the resized cell (which the usual path computes anyway), so PBC-like images cost
    only the measurement; the full image is re-cropped only when needed.
    """
    return frame_cell_views(rgb, size, stats, second=False)[0]


#: How close to the target fraction and to the centre (per side of the frame) a nucleus must be for its image to count
#: as framed around it already (:func:`nucleus_view`): about the measurement's own spread on the 64 px copy (+-0.03).
FRAMED_TOLERANCE = 0.05


def nucleus_view(rgb: np.ndarray, size: int, target: float = DEFAULT_STATS.target) -> np.ndarray | None:
    """``rgb`` re-framed around the nucleus the first look finds in it (:func:`measure_framing`), the nucleus at
    ``target`` of a ``size`` px frame; None when no nucleus stands out, or when the image is framed around it already
    (within :data:`FRAMED_TOLERANCE`: the same question again). The second framing of a cell the network names
    platelet though a nucleus stands out in it (:func:`wbc.classify.platelet_second_framings`).

    >>> cell = np.full((160, 160, 3), 235, np.uint8)
    >>> _ = cv2.circle(cell, (120, 100), 15, (90, 40, 140), -1)  # a nucleus off the centre, 0.19 of the frame
    >>> f = measure_framing(nucleus_view(cell, 160))
    >>> abs(f.cx - 80) < 8 and abs(f.cy - 80) < 8 and 0.3 < f.fraction < 0.38  # centred, at the target: +-0.03
    True
    >>> nucleus_view(np.full((160, 160, 3), 235, np.uint8), 160) is None  # glass alone
    True
    >>> nucleus_view(nucleus_view(cell, 160), 160) is None  # framed around its nucleus already
    True
    """
    f = measure_framing(rgb)
    if not f.found or (abs(f.fraction - target) <= FRAMED_TOLERANCE and off_centre(f, rgb.shape) <= FRAMED_TOLERANCE):
        return None
    return _reframed(rgb, size, FramingStats(target, target, target, target), f)


def square_view(rgb: np.ndarray, f: Framing) -> tuple[np.ndarray, int, int]:
    """The largest square of ``rgb`` (nothing padded, nothing squashed), central, or moved just enough to hold the
    whole nucleus ``f`` (a single-cell image is centred on its cell, whose nucleus may sit off its centre), and
    its offset (x0, y0) in ``rgb``.

    >>> frame = np.zeros((480, 640, 3), np.uint8)
    >>> square_view(frame, Framing(cx=330.0, cy=240.0, extent=80.0, fraction=0.17))[1:]  # central
    (80, 0)
    >>> sq, x0, y0 = square_view(frame, Framing(cx=600.0, cy=240.0, extent=80.0, fraction=0.17))
    >>> sq.shape, x0, y0  # a nucleus near the right edge: moved to hold it, kept inside the frame
    ((480, 480, 3), 160, 0)
    """
    h, w = rgb.shape[:2]
    s = min(h, w)

    def start(c: float, length: int) -> int:
        lo = (length - s) / 2  # central
        if f.found:  # hold the nucleus' extent: c - e/2 >= lo and c + e/2 <= lo + s
            lo = min(max(lo, c + f.extent / 2 - s), c - f.extent / 2)
        return int(np.clip(round(lo), 0, length - s))

    x0, y0 = start(f.cx, w), start(f.cy, h)
    return np.ascontiguousarray(rgb[y0 : y0 + s, x0 : x0 + s]), x0, y0


def _look_again(rgb: np.ndarray, f: Framing, stats: FramingStats) -> tuple[Framing | None, Framing]:
    """When the first measurement ``f`` of ``rgb`` found nothing and the model takes a second view (``grey > low``):
    what :func:`measure_closer` finds (None when nothing) and, when that finds nothing either,
    :func:`measure_by_hue` in place of ``f``. Otherwise (None, ``f``). Taken whether or not the caller wants the
    second view: these looks decide the first view too (before wbc 0.29.0, ``second=False`` skipped them, so
    :func:`frame_cell` and ``read_cell`` gave another first view than `wbc classify`)."""
    if f.found or not stats.grey > stats.low:
        return None, f
    g = measure_closer(rgb)
    return (g, f) if g.found else (None, measure_by_hue(rgb))


class CellViews(tuple[np.ndarray, np.ndarray | None]):
    """What :func:`frame_cell_views` gives: the pair (the first view, the second or None) it always unpacked as, and
    ``others``: how many other cells' nuclei its first measurement found whole in the image (:data:`OTHER_CELL`; 0
    where none, or nothing was measured). The answer is for one cell, and which one is unclear where ``others`` > 0:
    :func:`wbc.classify.predict_cells` flags such a cell for review. ``pages``: how many images the file holds (a
    multi-page TIFF, :func:`wbc.io.tiff_fields`; set by :func:`wbc.classify.decode_cell_views`): only the first is
    these views, and :func:`wbc.classify.flag_several_images` flags the cell for review."""

    others: int
    pages: int

    def __new__(cls, first: np.ndarray, second: np.ndarray | None = None, others: int = 0,
                pages: int = 1) -> CellViews:
        views = super().__new__(cls, (first, second))
        views.others = others
        views.pages = pages
        return views

    def __getnewargs__(self) -> tuple[np.ndarray, np.ndarray | None, int, int]:
        """Pickled and copied whole (tuple's own gives the pair as one argument)."""
        return self[0], self[1], self.others, self.pages


def frame_cell_views(
    rgb: np.ndarray, size: int, stats: FramingStats = DEFAULT_STATS, second: bool = True,
    full: FullImage | None = None,
) -> CellViews:
    """:func:`frame_cell`, and a second view when the framing is ambiguous: for a cell left as it is whose
    nucleus fraction is between ``stats.low`` and ``stats.grey`` (``second``), the same cell re-framed to the
    target fraction (else None). `wbc classify` averages the network's logits over the two (weighted)
    (:class:`FramingStats` says why). So is an image in which no nucleus stands out until the centre of the frame
    is looked at closer (:func:`measure_closer`): what is found there may be a nucleus small in a wide field, or a
    platelet or debris in a frame without a WBC, so the image as it is keeps its say (for a frame much wider than
    high, its largest square around what was found, :func:`square_view`). Where the closer look finds nothing
    either, the nucleus is looked for by its hue (:func:`measure_by_hue`), and what that finds is framed as a nucleus
    found at first would be. ``full``: the file ``rgb`` was decoded from at a reduced size (:class:`FullImage`);
    every measurement and decision is made on ``rgb``, and a region smaller than ``size`` there is cut from the
    file's whole decoding. ``second`` False: the same first view (every look still taken), and None for the second.
    With them, :class:`CellViews`' ``others``: the nuclei of other cells the first look found whole in the image (its
    square and the image itself, for a frame a little wider than high), since wbc 0.31.0.

    >>> cell = np.full((300, 300, 3), 235, np.uint8)
    >>> _ = cv2.circle(cell, (150, 150), 24, (90, 40, 140), -1)  # a nucleus at 0.16 of the frame
    >>> first, zoomed = frame_cell_views(cell, 96)
    >>> first.shape, zoomed.shape, 0.3 < measure_framing(zoomed).fraction < 0.38  # measured on 64 px: +-0.03
    ((96, 96, 3), (96, 96, 3), True)
    >>> frame_cell_views(cell, 96, CANONICAL)[1] is None  # re-framed already: nothing ambiguous
    True
    >>> _ = cv2.circle(cell, (60, 150), 24, (90, 40, 140), -1)  # a second cell, whole in the frame
    >>> frame_cell_views(cell, 96).others
    1
    """
    h, w = rgb.shape[:2]
    if stats.side > 0:  # the lab's one magnification: every cell cut at it, nothing ambiguous
        first = measure_framing(rgb)
        return CellViews(reframe_cell(rgb, size, stats, first, full), None, first.others)
    if max(h, w) > 1.4 * min(h, w):  # a wide camera frame: re-framed around its nucleus
        first = measure_framing(rgb)
        g, f = _look_again(rgb, first, stats)
        if g is None:
            return CellViews(reframe_cell(rgb, size, stats, f, full), None, first.others)
        # seen only on a closer look: both framings, the square of the frame around it as the image as it is
        return CellViews(resize_square(square_view(rgb, g)[0], size),
                         _reframed(rgb, size, stats, g, full) if second else None)
    view, x0, y0, others = rgb, 0, 0, 0
    if max(h, w) > SQUARE_TOLERANCE * min(h, w):  # a 4:3 camera frame: a square of it, not squashed
        around = measure_framing(rgb)  # the whole frame: a cell beside the square is in the image too
        view, x0, y0 = square_view(rgb, around)
        h, w, others = *view.shape[:2], around.others
    cell = resize_square(view, size)
    first = measure_framing(cell)
    g, f = _look_again(cell, first, stats)
    others = max(others, first.others)
    f = g or f
    sx, sy = w / size, h / size
    extent = f.extent * (sx + sy) / 2
    whole = Framing(f.cx * sx + x0, f.cy * sy + y0, extent, extent / min(h, w), f.found, f.brightness)
    if g is not None:  # seen only on a closer look: both framings
        return CellViews(cell, _reframed(rgb, size, stats, whole, full) if second else None, others)
    if needs_reframe(f, cell.shape, stats):  # decided on the view the network would see: re-frame from the image
        return CellViews(_reframed(rgb, size, stats, whole, full), None, others)
    if second and f.found and stats.low <= f.fraction < stats.grey:
        return CellViews(cell, _reframed(rgb, size, stats, whole, full), others)  # every cell to the target
    return CellViews(cell, None, others)
