"""The preprocessing shared by training and inference, so that the two can never drift apart.

A model's metadata names its input size, normalisation and framing; :func:`prepare_batch` applies the first two.
Training caches each cell as `wbc classify` frames it for the model (:func:`wbc.classify.read_cell`, built on
:func:`resize_square`; since wbc 0.36.0) and augments it; inference feeds it straight in.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import cv2
import numpy as np

from wbc.errors import ImageReadError
from wbc.io import read_image


def check_rgb8(rgb: object, name: str = "") -> None:
    """Refuse anything but an 8-bit RGB array (height x width x 3) with a message naming ``name`` (default "the
    image"): thresholds and networks work in 8-bit levels of three channels, so a float 0-1 image read as near-black,
    a 16-bit one as blown out, and neither was refused. The channels' order cannot be checked: a BGR array
    (``cv2.imread``) is taken as RGB, and needs ``cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)`` first.

    >>> check_rgb8(np.zeros((8, 8), np.uint8))
    Traceback (most recent call last):
    wbc.errors.ImageReadError: the image: expected an 8-bit RGB array (uint8, height x width x 3), got uint8 (8, 8); \
read image files with wbc.io.read_image, which converts grey, 16-bit and RGBA
    """
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        got = f"{rgb.dtype} {rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
        raise ImageReadError(f"{name or 'the image'}: expected an 8-bit RGB array (uint8, height x width x 3), got "
                             f"{got}; read image files with wbc.io.read_image, which converts grey, 16-bit and RGBA")


def checked_cells(cells: np.ndarray | Sequence[np.ndarray], size: int) -> np.ndarray:
    """``cells`` as one uint8 array (N, ``size``, ``size``, 3), or a one-line :class:`~wbc.errors.ImageReadError`:
    a classifier's input was only cast to float, so float 0-1 cells were answered as near-black, 16-bit ones as blown
    out (a confident wrong class), and a wrong shape failed deep in numpy or ONNX Runtime.

    >>> checked_cells([np.zeros((4, 4, 3), np.uint8)], 4).shape
    (1, 4, 4, 3)
    >>> checked_cells(np.zeros((1, 4, 4, 3), np.float32), 4)
    Traceback (most recent call last):
    wbc.errors.ImageReadError: cells: expected uint8 RGB cells (N x 4 x 4 x 3), got float32 (1, 4, 4, 3); \
wbc.classify.prepare_cell makes them from any 8-bit RGB image
    """
    want = f"cells: expected uint8 RGB cells (N x {size} x {size} x 3), got"
    how = "wbc.classify.prepare_cell makes them from any 8-bit RGB image"
    if isinstance(cells, np.ndarray):
        arr = cells
    else:
        items = [np.asarray(c) for c in cells]
        if len({(a.dtype, a.shape) for a in items}) > 1:
            raise ImageReadError(f"{want} cells of different types or shapes; {how}")
        arr = np.stack(items) if items else np.zeros((0, size, size, 3), np.uint8)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[1:] != (size, size, 3):
        raise ImageReadError(f"{want} {arr.dtype} {arr.shape}; {how}")
    return arr


def resize_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize an RGB crop to ``size`` x ``size`` (area interpolation when shrinking).

    >>> resize_square(np.zeros((363, 360, 3), np.uint8), 160).shape
    (160, 160, 3)
    """
    h, w = rgb.shape[:2]
    if (h, w) == (size, size):
        return rgb
    interp = cv2.INTER_AREA if min(h, w) > size else cv2.INTER_LINEAR
    return cv2.resize(rgb, (size, size), interpolation=interp)


def load_cell(path: str | os.PathLike[str], size: int) -> np.ndarray:
    """Read a single-cell image and bring it to the model's square input size (uint8 RGB), the whole frame resized:
    the view `--no-reframe` gives (training caches :func:`wbc.classify.read_cell`'s, since wbc 0.36.0)."""
    return resize_square(read_image(path, min_size=size), size)


def centre_crop(cells: np.ndarray, size: int) -> np.ndarray:
    """The central ``size`` x ``size`` pixels of each cell in (N, S, S, C) (a view; no copy when S == size).

    Models trained with ``centre_crop`` see a cell's whole frame resized to ``input_size`` and then only its
    centre, so the cell itself gets more pixels at the same network cost.

    >>> centre_crop(np.zeros((2, 224, 224, 3), np.uint8), 160).shape
    (2, 160, 160, 3)
    """
    s = cells.shape[1]
    if not size or size >= s:
        return cells
    o = (s - size) // 2
    return cells[:, o : o + size, o : o + size]


def dihedral_view(cells: np.ndarray, k: int) -> np.ndarray:
    """View ``k`` (0-7) of a batch of cells (N, S, S, 3): ``k % 4`` quarter turns, of the horizontally
    flipped cells when ``k >= 4``. View 0 is the identity; views 0-3 are the four rotations.

    >>> x = np.arange(4, dtype=np.uint8).reshape(1, 2, 2, 1)
    >>> [dihedral_view(x, k)[0, :, :, 0].tolist() for k in (0, 1, 4)]
    [[[0, 1], [2, 3]], [[1, 3], [0, 2]], [[1, 0], [3, 2]]]
    """
    base = cells[:, :, ::-1] if k >= 4 else cells
    return np.ascontiguousarray(np.rot90(base, k % 4, axes=(1, 2)))


def prepare_batch(
    cells: Sequence[np.ndarray] | np.ndarray, mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
    """uint8 RGB cells (N, S, S, 3) -> normalised float32 (N, 3, S, S) for the network.

    ``mean`` and ``std`` are in 0-1 units, as stored in the model metadata. Computed as
    ``x * (1 / (255 std)) - mean / std`` after transposing the uint8 array (a quarter of the bytes to
    move), which is 5x faster than normalising in HWC floats and agrees with ``(x / 255 - mean) / std``
    to 1e-6; training uses the same arithmetic (:func:`wbc.train.transforms.normalise`).
    """
    arr = np.asarray(cells if isinstance(cells, np.ndarray) else np.stack(cells))
    scale, offset = normalisation_constants(mean, std)
    x = np.ascontiguousarray(arr.transpose(0, 3, 1, 2)).astype(np.float32)
    x *= scale.reshape(1, 3, 1, 1)
    x += offset.reshape(1, 3, 1, 1)
    return x


def normalisation_constants(mean: Sequence[float], std: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel float32 ``scale`` and ``offset`` with ``normalised = uint8 value * scale + offset``."""
    m = np.asarray(mean, np.float64)
    s = np.asarray(std, np.float64)
    return (1.0 / (255.0 * s)).astype(np.float32), (-m / s).astype(np.float32)


#: Outside a microscope's field of view a camera records near-black: behind an eyepiece (a phone held to it) or a
#: field stop the image is a bright disc in black, and scans can carry black borders. A pixel counts as outside when
#: its brightest channel is below this share of the background's. Stained nuclei stay well above it (PBC's brightest
#: channel 0.43-0.65 of the background's; shown in grey, their darkest pixels 0.16-0.25 on 480 training crops), so a
#: grey image's nucleus cut by the frame's edge is never taken for it.
FIELD_STOP_LEVEL = 0.1
#: Inside an eyepiece photo's field of view the light falls toward the rim (vignetting) and over the field stop's soft
#: edge. Where it is at least this share of the field's brightest, the field is brightened back
#: (:func:`fill_field_stop`); where dimmer, it is outside. Chosen on BCCD's train and validation fields shown through
#: an eyepiece (``benchmarks/eyepiece_smears.py``, docs/generalisation.md): 0.25-0.35 alike.
FIELD_STOP_MIN_LIGHT = 0.3
#: The light across a field of view is measured in this many rings around its centre (:func:`field_light`).
LIGHT_RINGS = 64
#: Stray light (flare, a phone's lifted shadows) can raise the black around a field of view well above
#: :data:`FIELD_STOP_LEVEL`; PBC validation cells photographed so with a black of 30 (of 255) were named at chance.
#: When the border holds no such black but at least three of the image's corners are dark (their brightest channel
#: below this share of the background's) and flat (its 10th and 90th percentiles less than :data:`FLARE_FLATNESS` of
#: the background apart), their level is the black the outside is measured from (:func:`black_level`). A microscope
#: field's own corners hold glass and cells.
FLARE_MAX = 0.25
FLARE_FLATNESS = 0.05
_WORK_SIDE = 256


def _work_copy(a: np.ndarray, interpolation: int = cv2.INTER_AREA) -> np.ndarray:
    """``a`` at most :data:`_WORK_SIDE` px on its long side."""
    h, w = a.shape[:2]
    scale = min(1.0, _WORK_SIDE / max(h, w))
    if scale == 1.0:
        return a
    return cv2.resize(a, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=interpolation)


def _outside_core(peak: np.ndarray, level: float) -> np.ndarray:
    """The near-black pixels (brightest channel ``peak`` below ``level``) connected to the image border."""
    dark = (peak < level).astype(np.uint8)
    _n, labels = cv2.connectedComponents(dark, connectivity=8)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return np.isin(labels, edge[edge > 0])


def disc_centre(outside: np.ndarray) -> tuple[float, float]:
    """The centre (x, y) of a round field of view: a circle fitted (least squares, Kasa 1976) to the edge of
    ``outside`` away from the image's border, so a disc the frame cuts or a phone held off-centre is centred right;
    the centroid of the inside when the edge is not round (a scan's straight black border).

    >>> yy, xx = np.mgrid[:100, :160]
    >>> [round(v) for v in disc_centre(np.hypot(xx - 100, yy - 60) > 50)]  # cut by the frame on three sides
    [100, 60]
    """
    h, w = outside.shape
    inside = ~outside
    ring = outside & (cv2.dilate(inside.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0)
    ring[[0, -1], :] = False
    ring[:, [0, -1]] = False
    ys, xs = np.nonzero(ring)
    if len(xs) >= 20:
        a = np.column_stack([xs, ys, np.ones(len(xs))]).astype(np.float64)
        sol, *_ = np.linalg.lstsq(a, (xs.astype(np.float64) ** 2 + ys.astype(np.float64) ** 2), rcond=None)
        cx, cy = sol[0] / 2, sol[1] / 2
        r = float(np.sqrt(max(sol[2] + cx * cx + cy * cy, 0.0)))
        if 0 < r < 2 * max(h, w) and -w <= cx <= 2 * w and -h <= cy <= 2 * h:
            return float(cx), float(cy)
    ys, xs = np.nonzero(inside)
    return (float(xs.mean()), float(ys.mean())) if len(xs) else (w / 2, h / 2)


def field_light(peak: np.ndarray, outside: np.ndarray) -> np.ndarray:
    """The light across a round field of view (float32, ``peak``'s shape), relative to the field's brightest: for each
    of :data:`LIGHT_RINGS` rings around its centre (:func:`disc_centre`), the glass level (nine tenths up ``peak``,
    the brightest channel, inside the field), never brighter farther out. Cells never fill a ring, so the glass
    between them gives its light.

    >>> yy, xx = np.mgrid[:120, :120]
    >>> r = np.hypot(xx - 60, yy - 60)
    >>> peak = (230 * (1 - 0.4 * (r / 60) ** 2)).clip(0)  # 0.6 of the centre's light at the rim
    >>> light = field_light(peak, r > 60)
    >>> round(float(light[60, 60]), 2), round(float(light[60, 117]), 1)
    (1.0, 0.6)
    """
    h, w = peak.shape
    cx, cy = disc_centre(outside)
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot(xx - cx, yy - cy)
    inside = ~outside
    if not inside.any():
        return np.ones((h, w), np.float32)
    rmax = float(r[inside].max()) + 1e-6
    ring = np.minimum((r[inside] / rmax * LIGHT_RINGS).astype(int), LIGHT_RINGS - 1)
    values = peak[inside]
    order = np.argsort(ring, kind="stable")
    bounds = np.searchsorted(ring[order], np.arange(LIGHT_RINGS + 1))
    glass = np.zeros(LIGHT_RINGS)
    for k in range(LIGHT_RINGS):
        part = values[order[bounds[k] : bounds[k + 1]]]
        if part.size >= 8:
            glass[k] = tenth_brightest(part)
    glass = np.maximum.accumulate(glass[::-1])[::-1]  # never brighter outward; a ring a cell fills takes the next's
    if glass.max() <= 0:
        return np.ones((h, w), np.float32)
    centres = (np.arange(LIGHT_RINGS) + 0.5) / LIGHT_RINGS * rmax
    light = np.interp(r, centres, glass) / glass.max()
    light[r > rmax] = 0.0  # beyond the field's farthest pixel: dark
    return light.astype(np.float32)


def black_level(rgb: np.ndarray, background: float) -> float:
    """The brightest-channel level of the black around a field of view, raised by stray light: the median of the
    image's corners (3 % of its shorter side) when at least three are dark and flat (:data:`FLARE_MAX`,
    :data:`FLARE_FLATNESS` of ``background``, the field's brightest-channel background level); else 0.

    >>> photo = np.full((100, 100, 3), 230, np.uint8)
    >>> yy, xx = np.mgrid[:100, :100]
    >>> photo[np.hypot(xx - 50, yy - 50) > 45] = 30  # the black outside the disc lifted to 30
    >>> black_level(photo, 230.0), black_level(np.full((100, 100, 3), 230, np.uint8), 230.0)
    (30.0, 0.0)
    """
    h, w = rgb.shape[:2]
    s = max(2, round(0.03 * min(h, w)))
    corners = [rgb[:s, :s], rgb[:s, -s:], rgb[-s:, :s], rgb[-s:, -s:]]
    dark = []
    for c in corners:
        lo, hi = np.percentile(c.max(axis=2), (10, 90))
        if hi < FLARE_MAX * background and hi - lo < FLARE_FLATNESS * background:
            dark.append(c.max(axis=2).reshape(-1))
    return float(np.median(np.concatenate(dark))) if len(dark) >= 3 else 0.0


def field_stop_mask(rgb: np.ndarray) -> np.ndarray | None:
    """The pixels of ``rgb`` outside the microscope's field of view (bool, ``rgb``'s shape), or None when none are.

    Outside = near-black (below :data:`FIELD_STOP_LEVEL` of the way from black to the background; black is 0, or
    the dark corners' level when stray light lifts it, :func:`black_level`) and connected to the image border, and the
    soft edge around it where the light is below :data:`FIELD_STOP_MIN_LIGHT` of the field's brightest
    (:func:`field_light`). Measured on a copy at most 256 px, its edge redrawn at full size; an image whose border is
    not dark costs only a look at its border.

    >>> field = np.full((200, 300, 3), 235, np.uint8)
    >>> yy, xx = np.mgrid[:200, :300]
    >>> field[np.hypot(xx - 150, yy - 100) > 90] = 5  # a round field of view in black
    >>> mask = field_stop_mask(field)
    >>> bool(mask[0, 0]), bool(mask[100, 150]), field_stop_mask(np.full((50, 50, 3), 235, np.uint8)) is None
    (True, False, True)
    """
    h, w = rgb.shape[:2]
    background = tenth_brightest(rgb[:: max(1, h // 16), :: max(1, w // 16)].max(axis=2))  # on ~256 px
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]).max(axis=1)
    level = FIELD_STOP_LEVEL * background

    def few_below(v: float) -> bool:
        return np.count_nonzero(border < v) < 0.01 * border.size

    if few_below(level):  # no black at the border: stray light may have lifted it (a look at the corners)
        black = 0.0 if few_below(FLARE_MAX * background) else black_level(rgb, background)
        level = black + FIELD_STOP_LEVEL * (background - black)
        if black == 0 or few_below(level):
            return None
    if level <= 0:
        return None
    peak = _work_copy(rgb).max(axis=2).astype(np.float32)
    small = _outside_core(peak, level)  # on the work copy: a few dark pixels at the border are not a field stop
    if not small.any():
        return None
    light = field_light(peak, small)
    core = small
    if light.shape != (h, w):  # at full size the near-black regions it touches, so its edge is the field's own
        light = np.asarray(cv2.resize(light, (w, h), interpolation=cv2.INTER_LINEAR), np.float32)
        seeds = np.asarray(cv2.resize(small.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST), bool)
        _n, labels = cv2.connectedComponents((rgb.max(axis=2) < level).astype(np.uint8), connectivity=8)
        touched = np.unique(labels[seeds])
        core = seeds | np.isin(labels, touched[touched > 0])
    return core | (light < FIELD_STOP_MIN_LIGHT)


def fill_field_stop(rgb: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """``rgb`` with the pixels outside the field of view (``mask``, default :func:`field_stop_mask`) set to the
    background colour (the median colour of the brightest tenth of the rest), and the field inside brightened where
    its light falls toward the rim (:func:`field_light`, at least :data:`FIELD_STOP_MIN_LIGHT`), so an eyepiece photo
    reads as a cell in an evenly lit wide field and a cell the edge cuts keeps what is left of it. Stray light (the
    outside's median colour, when not black) is taken off first, the glass kept as bright as photographed. ``rgb``
    itself when there is no outside.

    >>> field = np.full((120, 120, 3), 235, np.uint8)
    >>> field[:, :10] = 0
    >>> fill_field_stop(field)[:, :10].min()
    np.uint8(235)
    """
    mask = field_stop_mask(rgb) if mask is None else mask
    if mask is None or mask.all() or not mask.any():
        return rgb
    h, w = rgb.shape[:2]
    black = np.median(rgb[mask].reshape(-1, rgb.shape[2]), axis=0).astype(np.float32)  # lifted by stray light, or 0
    small = _work_copy(mask.astype(np.uint8), cv2.INTER_NEAREST).astype(bool)
    lifted = float(black.max()) >= 2
    x = np.maximum(_work_copy(rgb).astype(np.float32) - black, 0) if lifted else _work_copy(rgb).astype(np.float32)
    light = field_light(x.max(axis=2), small)
    if float(light[~small].min(initial=1.0)) < 0.97 or lifted:  # the rim brightened back, the stray light taken off
        if light.shape != (h, w):
            light = np.asarray(cv2.resize(light, (w, h), interpolation=cv2.INTER_LINEAR), np.float32)
        flat = np.maximum(rgb.astype(np.float32) - black, 0) / np.maximum(light, FIELD_STOP_MIN_LIGHT)[..., None]
        glass = brightest_tenth_colour(flat[~mask][:: max(1, int(np.count_nonzero(~mask)) // 65536)])
        flat *= (glass + black) / np.maximum(glass, 1.0)  # the glass as bright as it was photographed
        out = np.clip(flat + 0.5, 0, 255).astype(np.uint8)
    else:
        out = rgb.copy()
    colour = brightest_tenth_colour(out[~mask]).round().astype(np.uint8)
    out[mask] = colour
    return out


#: A canvas's rows and columns are one colour to within this (per channel, 0-255): a cell image pasted onto a page or
#: padded to a square by a dataset. A microscope's own rows never are (none of PBC's, BCCD's or TXL-PBC's images).
PAD_TOLERANCE = 3
#: Uniform edge rows or columns count as padding from this share of the image's side.
PAD_MIN_SHARE = 0.02
#: ... and only when their colour differs from the image's own background by more than this (per channel): a field
#: padded with its own background is a cell small in a wide field, framed as such.
PAD_OWN_BACKGROUND = 12


def _leading(uniform: np.ndarray) -> int:
    """How many of the first entries of a bool vector are True."""
    stop = np.flatnonzero(~uniform)
    return int(uniform.size if stop.size == 0 else stop[0])


def padding_box(rgb: np.ndarray) -> tuple[int, int, int, int] | None:
    """The box (x0, y0, x1, y1) inside the uniform rows and columns at the edges of ``rgb`` (canvas padding: a cell
    pasted onto a white page, a crop padded to a square with grey or black), or None when no side has
    :data:`PAD_MIN_SHARE` of them or they are the colour of the image's own background (:data:`PAD_OWN_BACKGROUND`).
    An image whose four outermost lines are not uniform costs only a look at them.

    >>> page = np.full((100, 200, 3), 255, np.uint8)
    >>> page[20:80, 60:150] = np.random.default_rng(0).integers(0, 255, (60, 90, 3))
    >>> padding_box(page)
    (60, 20, 150, 80)
    """
    def uniform(lines: np.ndarray) -> np.ndarray:  # (n, length, 3) -> (n,)
        return (lines.max(axis=1).astype(np.int16) - lines.min(axis=1)).max(axis=1) <= PAD_TOLERANCE

    h, w = rgb.shape[:2]
    edges = np.stack([rgb[0], rgb[-1]]), np.stack([rgb[:, 0], rgb[:, -1]])
    if not (uniform(edges[0]).any() or uniform(edges[1]).any()):
        return None
    rows, cols = uniform(rgb), uniform(rgb.transpose(1, 0, 2))
    top, bottom, left, right = _leading(rows), _leading(rows[::-1]), _leading(cols), _leading(cols[::-1])
    if top + bottom >= h or left + right >= w:  # one colour throughout: nothing to cut to
        return None
    if max(top, bottom) < PAD_MIN_SHARE * h and max(left, right) < PAD_MIN_SHARE * w:
        return None
    inner = rgb[top : h - bottom, left : w - right]
    colour = np.median(np.concatenate([rgb[:top].reshape(-1, 3), rgb[h - bottom :].reshape(-1, 3),
                                       rgb[:, :left].reshape(-1, 3), rgb[:, w - right :].reshape(-1, 3)]), axis=0)
    if np.abs(colour - brightest_tenth_colour(inner[::4, ::4])).max() <= PAD_OWN_BACKGROUND:  # its own background
        return None
    return left, top, w - right, h - bottom


#: A JPEG's ringing leaves a band of near-canvas pixels along a canvas's edge (up to one 8 px block) that is not
#: uniform enough to be cut as canvas, and in a smear field it would enter the colour calibration as its glass. Up to
#: this many more lines are cut from each side with a canvas while a line's median pixel is within
#: :data:`CANVAS_NEAR` (per channel) of the canvas's colour. BCCD's validation and train fields pasted onto a white
#: page and saved as JPEG (quality 90), subtype accuracy: 0.718 / 0.719 without it, 0.824 / 0.766 with 8 lines cut
#: whatever they hold, **0.847 / 0.771** with up to 8 near-canvas lines; as they are 0.824 / 0.771
#: (``benchmarks/canvas_smears.py --jpeg 90``, docs/smear_analysis.md).
CANVAS_MARGIN = 8
CANVAS_NEAR = 10


def canvas_box(rgb: np.ndarray, margin: int | None = None) -> tuple[int, int, int, int] | None:
    """The box (x0, y0, x1, y1) of a smear field pasted onto a canvas (:func:`padding_box`), moved in past up to
    ``margin`` (default :data:`CANVAS_MARGIN`) more near-canvas lines on each side that had a canvas; None when there
    is none, or when the uniform lines are dark and the field inside them still has a field stop: the black columns
    beside an eyepiece photo's round field of view (:func:`field_stop_mask`).

    >>> page = np.full((300, 400, 3), 255, np.uint8)
    >>> page[50:250, 100:300] = np.random.default_rng(0).integers(0, 200, (200, 200, 3))
    >>> page[50:250, 100:103] = 250  # a JPEG's ringing along the left edge
    >>> canvas_box(page)
    (103, 50, 300, 250)
    """
    box = padding_box(rgb)
    if box is None:
        return None
    margin = CANVAS_MARGIN if margin is None else margin
    h, w = rgb.shape[:2]
    x0, y0, x1, y1 = box
    outside = np.ones((h, w), bool)
    outside[y0:y1, x0:x1] = False
    colour = np.median(rgb[outside], axis=0)
    inner = rgb[y0:y1, x0:x1]
    if colour.max() < FLARE_MAX * tenth_brightest(inner[::4, ::4].max(axis=2)) and field_stop_mask(inner) is not None:
        return None  # black lines of an eyepiece photo's field stop, not a canvas: the field stop is its own case

    def near(line: np.ndarray) -> bool:  # the line's median pixel within CANVAS_NEAR of the canvas's colour
        return float(np.median(np.abs(line.astype(np.float32) - colour).max(axis=-1))) <= CANVAS_NEAR

    left, top, right, bottom = x0 > 0, y0 > 0, x1 < w, y1 < h
    for _ in range(margin):
        if x1 - x0 <= 2 or y1 - y0 <= 2:
            break
        step = [left and near(rgb[y0:y1, x0]), top and near(rgb[y0, x0:x1]),
                right and near(rgb[y0:y1, x1 - 1]), bottom and near(rgb[y1 - 1, x0:x1])]
        if not any(step):
            break
        x0, y0, x1, y1 = x0 + step[0], y0 + step[1], x1 - step[2], y1 - step[3]
    return x0, y0, x1, y1


def tenth_brightest(values: np.ndarray) -> float:
    """The value nine tenths of the way up ``values`` (any shape): the background level of a channel map.

    >>> tenth_brightest(np.arange(11))
    9.0
    """
    flat = values.reshape(-1)
    k = int(0.9 * (flat.size - 1))
    return float(np.partition(flat, k)[k])


def brightest_tenth_colour(pixels: np.ndarray) -> np.ndarray:
    """The median colour (float, RGB) of the brightest tenth of ``pixels`` (any shape ending in 3): an image's
    background, its glass, whatever the lamp.

    >>> brightest_tenth_colour(np.array([[10, 10, 10]] * 9 + [[240, 230, 220]], np.uint8)).tolist()
    [240.0, 230.0, 220.0]
    """
    flat = pixels.reshape(-1, 3)
    bright = flat.astype(np.int32).sum(1)
    return np.median(flat[bright >= np.percentile(bright, 90)], axis=0)


def _compose(outer: tuple[int, int, int, int] | None, inner: tuple[int, int, int, int] | None
             ) -> tuple[int, int, int, int] | None:
    """``inner`` (a box in the region ``outer`` cuts) in the coordinates ``outer`` is in."""
    if outer is None or inner is None:
        return inner or outer
    return outer[0] + inner[0], outer[1] + inner[1], outer[0] + inner[2], outer[1] + inner[3]


def field_of_view(rgb: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int] | None]:
    """``rgb`` cut to what a microscope saw: inside any canvas padding (:func:`padding_box`), then to its field of
    view's bounding box with the outside filled (:func:`fill_field_stop`); and that box (x0, y0, x1, y1), or
    ``(rgb, None)`` when there is neither. A 16:9 phone photo of a round eyepiece field becomes the square around
    the disc, framed like a wide field; a cell pasted onto a white page, the cell's own image.

    >>> photo = np.full((90, 160, 3), 235, np.uint8)
    >>> yy, xx = np.mgrid[:90, :160]
    >>> photo[np.hypot(xx - 80, yy - 45) > 44] = 0
    >>> view, box = field_of_view(photo)
    >>> view.shape, box
    ((89, 89, 3), (36, 1, 125, 90))
    """
    pad = padding_box(rgb)
    if pad is not None:
        rgb = np.ascontiguousarray(rgb[pad[1] : pad[3], pad[0] : pad[2]])
    mask = field_stop_mask(rgb)
    if mask is None or mask.all():
        return rgb, pad
    ys, xs = np.nonzero(~mask)
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    return np.ascontiguousarray(fill_field_stop(rgb, mask)[y0:y1, x0:x1]), _compose(pad, (x0, y0, x1, y1))


def scaled_view(big: np.ndarray, box: tuple[int, int, int, int], shape: tuple[int, ...]) -> np.ndarray:
    """The region ``box`` of an image of ``shape`` cut from ``big``, the same image decoded larger, with the
    outside of its field of view filled as :func:`field_of_view` fills it."""
    k = big.shape[1] / shape[1]
    x0, y0, x1, y1 = (round(v * k) for v in box)
    return fill_field_stop(np.ascontiguousarray(big[y0:y1, x0:x1]))


#: :func:`not_a_photo` looks at every pixel of a grid this many to a side first ...
PHOTO_GRID = 16
#: ... and an image showing this many exact colours there or more is a photo (a microscope camera's noise and
#: shading give every image seen here 37 or more: all 10,986 PBC cells, BCCD's and TXL-PBC's 1,225 fields; BCCD's
#: 367 nucleus/cytoplasm masks show at most 9).
PHOTO_MIN_COLOURS = 32
#: An image with fewer is refused when, beyond its commonest colour (a background, a canvas, a mask's zero), its
#: seven next commonest exact colours cover this share of it: a mask, a label map or a drawing. Every BCCD mask
#: scores 0.81 or more; photos with few colours on the grid (a cell pasted small onto a blank page, a grey or
#: posterised photo: the 24 shifts of ``benchmarks/shift_suite.py``) score far less, the cell's own pixels being
#: many colours. docs/generalisation.md, "Masks and drawings in a lab's folder".
FLAT_SHARE = 0.75


#: An image refused for its few colours whose bright parts (the 99th percentile of each pixel's brightest channel)
#: stay below this, and which is not grey (a label map's classes 0, 1, 2 are), is an under-exposed photo: a BCCD field
#: at 2-5 % of its light reaches 4-11 and was refused as "a mask or a drawing"; at 8 % (17) it is analysed.
DARK_LEVEL = 40


def under_exposed(rgb: np.ndarray) -> str | None:
    """Why ``rgb`` is too dark to be checked as a photo (its few colours are the camera's few levels, not a drawing's),
    or None. Only for an image :func:`not_a_photo` would refuse: a dark field it takes is analysed as it is.

    >>> dark = (np.random.default_rng(0).normal(150, 40, (64, 64, 3)) * 0.05).clip(0, 255).astype(np.uint8)
    >>> under_exposed(dark)
    'too dark (under-exposed): its brightest parts reach 12 of 255; re-take it with more light or a longer exposure'
    """
    h, w = rgb.shape[:2]
    px = rgb[:: max(1, h // 128), :: max(1, w // 128)].reshape(-1, 3)
    bright = int(np.percentile(px.max(axis=1), 99))
    coloured = float((px.max(axis=1) != px.min(axis=1)).mean())
    if bright >= DARK_LEVEL or coloured < 0.05:
        return None
    return (f"too dark (under-exposed): its brightest parts reach {bright} of 255; re-take it with more light or a "
            "longer exposure")


def _packed(rgb: np.ndarray) -> np.ndarray:
    """Each pixel's colour as one integer (any shape ending in 3 -> flat int32)."""
    flat = rgb.reshape(-1, 3).astype(np.int32)
    return (flat[:, 0] << 16) | (flat[:, 1] << 8) | flat[:, 2]


def not_a_photo(rgb: np.ndarray) -> str | None:
    """Why ``rgb`` (uint8 RGB) cannot be a microscope photo of stained cells, or None when it can be.

    A lab's folders often hold a dataset's masks, label maps or drawings beside its photos; named as cells or
    searched for them, they would be counted in the differential. Cheap for a photo (a 16 x 16 grid of pixels,
    about 0.04 ms); only an image with few colours there is looked at more closely (:data:`FLAT_SHARE`). A photo
    too dark to show more than a few levels is named so (:func:`under_exposed`), not taken for a drawing.

    >>> not_a_photo(np.full((64, 64, 3), 255, np.uint8))
    'one flat colour: nothing in view'
    >>> mask = np.zeros((64, 64, 3), np.uint8)
    >>> mask[16:48, 16:48] = 255
    >>> not_a_photo(mask)
    'a mask or a drawing, not a photo of stained cells (beyond its background, 1 colour makes all of it)'
    >>> noisy = np.random.default_rng(0).normal(180, 12, (64, 64, 3)).clip(0, 255).astype(np.uint8)
    >>> not_a_photo(noisy) is None
    True
    """
    h, w = rgb.shape[:2]
    grid = rgb[:: max(1, h // PHOTO_GRID), :: max(1, w // PHOTO_GRID)]
    if len(np.unique(_packed(grid))) >= PHOTO_MIN_COLOURS:
        return None
    _, counts = np.unique(_packed(rgb[:: max(1, h // 128), :: max(1, w // 128)]), return_counts=True)
    rest = np.sort(counts)[::-1][1:]  # beyond the commonest colour
    if rest.sum() < 0.002 * counts.sum():
        return under_exposed(rgb) or "one flat colour: nothing in view"
    top = rest[:7]
    share = top.sum() / rest.sum()
    if share < FLAT_SHARE:
        return None
    if dark := under_exposed(rgb):
        return dark
    n = int((top > 0).sum())
    return (f"a mask or a drawing, not a photo of stained cells (beyond its background, {n} colour"
            f"{'s' if n > 1 else ''} make{'' if n > 1 else 's'} {'all' if share == 1 else f'{share:.0%}'} of it)")
