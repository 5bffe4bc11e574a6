"""The preprocessing shared by training and inference, so that the two can never drift apart.

A model's metadata names its input size and normalisation; :func:`prepare_batch` applies exactly those.
Training caches the output of :func:`load_cell` and augments it; inference feeds it straight in.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import cv2
import numpy as np

from wbc.io import read_image


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
    """Read a single-cell image and bring it to the model's square input size (uint8 RGB)."""
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
#: How far (a share of the image's shorter side) the outside region grows into pixels darker than the background:
#: a real field stop's edge is a soft ramp, not a step.
FIELD_STOP_RAMP = 0.06
_WORK_SIDE = 256


def field_stop_mask(rgb: np.ndarray) -> np.ndarray | None:
    """The pixels of ``rgb`` outside the microscope's field of view (bool, ``rgb``'s shape), or None when none are.

    Outside = near-black (:data:`FIELD_STOP_LEVEL`) and connected to the image border, widened over the soft
    edge (:data:`FIELD_STOP_RAMP`) into pixels darker than the background. Found on a copy at most 256 px; an
    image whose border is not dark costs only a look at its border.

    >>> field = np.full((200, 300, 3), 235, np.uint8)
    >>> yy, xx = np.mgrid[:200, :300]
    >>> field[np.hypot(xx - 150, yy - 100) > 90] = 5  # a round field of view in black
    >>> mask = field_stop_mask(field)
    >>> bool(mask[0, 0]), bool(mask[100, 150]), field_stop_mask(np.full((50, 50, 3), 235, np.uint8)) is None
    (True, False, True)
    """
    h, w = rgb.shape[:2]
    level = FIELD_STOP_LEVEL * tenth_brightest(rgb[:: max(1, h // 16), :: max(1, w // 16)].max(axis=2))  # ~256 px
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]).max(axis=1)
    if level <= 0 or np.count_nonzero(border < level) < 0.01 * border.size:
        return None
    scale = min(1.0, _WORK_SIDE / max(h, w))
    small = rgb if scale == 1.0 else cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))),
                                                interpolation=cv2.INTER_AREA)
    small = small.max(axis=2)
    dark = (small < level).astype(np.uint8)
    _n, labels = cv2.connectedComponents(dark, connectivity=8)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    outside = np.isin(labels, edge[edge > 0])
    if not outside.any():
        return None
    darker = small < level / FIELD_STOP_LEVEL * 0.85  # darker than the background: the ramp, if next to outside
    allowed = (darker | outside).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    out = outside.astype(np.uint8)
    for _ in range(max(1, round(FIELD_STOP_RAMP * min(small.shape)))):  # geodesic: through darker pixels only
        out = np.asarray(cv2.dilate(out, kernel) & allowed, np.uint8)
    if scale != 1.0:  # back at full size, its edge redrawn there: darker-than-background pixels next to it join
        big = np.asarray(cv2.resize(out, (w, h), interpolation=cv2.INTER_NEAREST), np.uint8)
        k = 2 * int(np.ceil(1 / scale)) + 1
        near = np.asarray(cv2.dilate(big, np.ones((k, k), np.uint8)), bool)
        return big.astype(bool) | (near & (rgb.max(axis=2) < level / FIELD_STOP_LEVEL * 0.85))
    return out.astype(bool)


def fill_field_stop(rgb: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """``rgb`` with the pixels outside the field of view (``mask``, default :func:`field_stop_mask`) set to the
    background colour (the median colour of the brightest tenth of the rest), so an eyepiece photo reads as a cell in
    a wide field; ``rgb`` itself when there are none.

    >>> field = np.full((120, 120, 3), 235, np.uint8)
    >>> field[:, :10] = 0
    >>> fill_field_stop(field)[:, :10].min()
    np.uint8(235)
    """
    mask = field_stop_mask(rgb) if mask is None else mask
    if mask is None or mask.all() or not mask.any():
        return rgb
    colour = brightest_tenth_colour(rgb[~mask]).round().astype(np.uint8)
    out = rgb.copy()
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
