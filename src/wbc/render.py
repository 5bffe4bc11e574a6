"""Draw a smear result: nucleus and cell contours, box, label and confidence, one colour per class, legend."""

from __future__ import annotations

import itertools
import math
import zlib
from collections.abc import Sequence

import cv2
import numpy as np

from wbc.types import Cell, Prediction, SmearResult

#: Fixed colours (RGB) per canonical class, colour-blind-friendly (Okabe-Ito + extras).
CLASS_COLOURS: dict[str, tuple[int, int, int]] = {
    "basophil": (0, 114, 178),
    "eosinophil": (230, 159, 0),
    "erythroblast": (204, 121, 167),
    "ig": (86, 180, 233),
    "lymphocyte": (0, 158, 115),
    "monocyte": (213, 94, 0),
    "neutrophil": (240, 228, 66),
    "platelet": (120, 120, 120),
}
UNLABELLED: tuple[int, int, int] = (255, 255, 255)
REVIEW: tuple[int, int, int] = (220, 0, 0)
#: Colours (RGB) for the classes of other models, in turn: each at least 60 apart (RGB distance) and 20 apart
#: (CIELAB) from every other, from :data:`CLASS_COLOURS`, the review red and white.
OTHER_COLOURS: tuple[tuple[int, int, int], ...] = (
    (148, 103, 189), (141, 182, 0), (23, 190, 207), (179, 68, 108), (194, 178, 128), (0, 0, 128), (247, 182, 210),
    (136, 45, 23), (152, 223, 138), (174, 199, 232), (43, 61, 38), (249, 147, 121), (85, 107, 47), (0, 0, 0),
    (255, 0, 255), (0, 255, 255),
)


def colour_of(label: str, classes: Sequence[str] = ()) -> tuple[int, int, int]:
    """The colour of class ``label``: its own in :data:`CLASS_COLOURS`; a class of another model takes the next of
    :data:`OTHER_COLOURS` by its place among the other classes of ``classes`` (the model's, or those answered among)
    in alphabetical order, so no two of them look alike (before wbc 0.36.0 a hue from the sum of the name's
    characters gave plasma_cell and promyelocyte nearly the same yellow, anagrams the same). Without ``classes``, one
    of them by the name's CRC-32: stable, but two classes may share it.

    >>> colour_of("neutrophil"), colour_of("band", ["neutrophil", "blast", "band"]), colour_of("blast", ["band"])
    ((240, 228, 66), (148, 103, 189), (141, 182, 0))
    """
    if label in CLASS_COLOURS:
        return CLASS_COLOURS[label]
    if not classes:
        return OTHER_COLOURS[zlib.crc32(label.encode()) % len(OTHER_COLOURS)]
    i = sorted({c for c in (*classes, label) if c not in CLASS_COLOURS}).index(label)
    if i < len(OTHER_COLOURS):
        return OTHER_COLOURS[i]
    h = round(i * 137.508 / 2) % 180  # past the palette: hues a golden angle apart (OpenCV's hue is 0-179)
    rgb = cv2.cvtColor(np.array([[[h, 200, 220]]], dtype=np.uint8), cv2.COLOR_HSV2RGB)[0, 0]
    return int(rgb[0]), int(rgb[1]), int(rgb[2])


BLACK: tuple[int, int, int] = (0, 0, 0)
WHITE: tuple[int, int, int] = (255, 255, 255)
FONT: int = cv2.FONT_HERSHEY_SIMPLEX


def relative_luminance(rgb: Sequence[int]) -> float:
    """WCAG 2 relative luminance of an sRGB colour (0 black .. 1 white)."""
    lin = [(v / 255) / 12.92 if v / 255 <= 0.04045 else ((v / 255 + 0.055) / 1.055) ** 2.4 for v in rgb]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def contrast_ratio(a: Sequence[int], b: Sequence[int]) -> float:
    """WCAG 2 contrast ratio of two colours (1 .. 21); text needs 4.5, large text and graphics 3."""
    la, lb = sorted((relative_luminance(a), relative_luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def text_colour_on(background: Sequence[int]) -> tuple[int, int, int]:
    """Black or white, whichever contrasts more with ``background`` (always >= 4.5:1)."""
    return BLACK if contrast_ratio(BLACK, background) >= contrast_ratio(WHITE, background) else WHITE


#: The smallest text scale :func:`render` draws a label at (1 px strokes, letters 6-7 px high) before shortening it.
MIN_TEXT_SCALE: float = 0.3


def _label_size(text: str, scale: float) -> tuple[int, int, int, int, int]:
    """A label's box width and height at ``scale``, its text's height above the baseline, its padding and stroke."""
    th = max(1, round(scale * 1.6))
    (tw, tht), base = cv2.getTextSize(text, FONT, scale, th)
    pad = max(2, round(3 * scale))
    return tw + 2 * pad, tht + base + 2 * pad, tht, pad, th


def fitted_scale(text: str, image_size: tuple[int, int], scale: float) -> float:
    """``scale``, or the largest scale below it (in steps of 5 %) at which ``text``'s label box fits an image of
    ``image_size`` (h, w): a label wider than a narrow field ran past its right edge, the review mark "?" lost (a
    120 px crop, wbc 0.32.0). :func:`label_spots` and :func:`draw_label` both use it, so box and text agree.

    >>> fitted_scale("1 neutrophil 0.998 ?", (480, 640), 0.53), round(fitted_scale("1 neutrophil 0.998 ?", (120, 120),
    ...                                                                             0.45), 3)
    (0.53, 0.348)
    """
    h, w = image_size
    s = scale
    while s > 0.05:
        bw, bh, *_ = _label_size(text, s)
        if bw <= w and bh <= h:
            return s
        s *= 0.95
    return s


def fitting_label(texts: Sequence[str], image_size: tuple[int, int], scale: float) -> str:
    """The first of ``texts`` (fullest first) that fits an image of ``image_size`` at :data:`MIN_TEXT_SCALE` or more
    (:func:`fitted_scale`), else the last: a field too narrow for a cell's whole label gets it shortened, not
    illegibly small.

    >>> fitting_label(["1 neutrophil 0.998 ?", "1 neutrophil ?", "1 ?"], (64, 64), 0.45)
    '1 ?'
    """
    for text in texts:
        if fitted_scale(text, image_size, scale) >= min(scale, MIN_TEXT_SCALE):
            return text
    return texts[-1]


def label_spots(
    text: str, anchor: tuple[int, int, int, int], image_size: tuple[int, int], scale: float
) -> tuple[list[tuple[tuple[int, int, int, int], tuple[int, int]]], int]:
    """Where a cell's label may go, best first, each as its box (x0, y0, x1, y1) and text origin, and the stroke
    thickness: above the cell's box (just inside its top edge when there is no room), then inside its top edge, below
    it, inside its bottom edge; each left-aligned with the box, then right-aligned. Always wholly inside the image
    (never clipped at an edge: at a smaller scale where the image is too narrow, :func:`fitted_scale`); :func:`render`
    takes the first that covers no other label, not the legend and no other cell's outline, else one of them slid
    sideways (:func:`_slid`)."""
    h, w = image_size
    bw, bh, tht, pad, th = _label_size(text, fitted_scale(text, image_size, scale))
    x0, y0, x1, y1 = anchor
    tops = [y0 - bh if y0 - bh >= 0 else y0, y0, y1, y1 - bh]
    spots: list[tuple[tuple[int, int, int, int], tuple[int, int]]] = []
    for left in (x0, x1 - bw):
        for top in tops:
            t = int(min(max(0, top), max(0, h - bh)))
            lft = int(min(max(0, left), max(0, w - bw)))
            spot = ((lft, t, lft + bw, t + bh), (lft + pad, t + pad + tht))
            if spot not in spots:
                spots.append(spot)
    return spots, th


def label_box(
    text: str, anchor: tuple[int, int, int, int], image_size: tuple[int, int], scale: float
) -> tuple[tuple[int, int, int, int], tuple[int, int], int]:
    """Where a cell's label goes when nothing is in the way (:func:`label_spots`' first): its box (x0, y0, x1, y1),
    the text origin, and the stroke thickness. Above the cell's box when there is room, else just inside its top
    edge; always wholly inside the image (never clipped at the top or right edge)."""
    spots, th = label_spots(text, anchor, image_size, scale)
    return spots[0][0], spots[0][1], th


def draw_label(img: np.ndarray, text: str, anchor: tuple[int, int, int, int], scale: float,
               background: tuple[int, int, int],
               spot: tuple[tuple[int, int, int, int], tuple[int, int]] | None = None) -> tuple[int, int, int, int]:
    """Draw ``text`` once, in black or white, on a filled box of the class colour, at ``spot`` (one of
    :func:`label_spots`; default :func:`label_box`); returns the box.

    One ``putText`` per label: outline-then-fill drawing came out doubled ("ghosted") when OpenCV's text
    metrics depend on the stroke width, as in OpenCV 5.
    """
    box, org, th = label_box(text, anchor, img.shape[:2], scale)
    if spot is not None:
        box, org = spot
    cv2.rectangle(img, box[:2], (box[2] - 1, box[3] - 1), background, -1)
    cv2.putText(img, text, org, FONT, fitted_scale(text, img.shape[:2], scale), text_colour_on(background), th,
                cv2.LINE_AA)
    return box


def _overlap(a: tuple[int, int, int, int], b: Sequence[int]) -> int:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(0, w) * max(0, h)


def _overlaps(a: Sequence[Sequence[int]], b: Sequence[Sequence[int]] | np.ndarray) -> np.ndarray:
    """For each box (x0, y0, x1, y1) of ``a``, the pixels it shares with the boxes of ``b``, summed (at once: a
    field of 400 cells weighed every label's places against every other cell)."""
    if not len(a) or not len(b):
        return np.zeros(len(a), np.int64)
    p, q = np.asarray(a, np.int64)[:, None], np.asarray(b, np.int64)[None]
    w = np.minimum(p[..., 2], q[..., 2]) - np.maximum(p[..., 0], q[..., 0])
    h = np.minimum(p[..., 3], q[..., 3]) - np.maximum(p[..., 1], q[..., 1])
    return (np.clip(w, 0, None) * np.clip(h, 0, None)).sum(axis=1)


#: The most grid points :func:`legend_place` scores a place for the legend at: a field larger is searched on a grid of
#: ``k`` px (``k * k * LEGEND_GRID_POINTS`` >= its pixels). Every pixel scored took 15 s and 1 GB on a 40 MP field (wbc
#: 0.36.0's first cut); on this grid, milliseconds and a few MB. BCCD's 640x480 fields are searched pixel by pixel.
LEGEND_GRID_POINTS: int = 1_000_000


def _covered(shape: tuple[int, int], boxes: Sequence[Sequence[int]], k: int = 1, origin: int = 0) -> np.ndarray:
    """The summed-area table (``cv2.integral``, one row and column more than ``shape``) of how many of ``boxes`` cover
    each cell of a grid of ``k`` px from (``origin``, ``origin``) (at most 255): a box counts in every cell it
    touches."""
    count = np.zeros(shape, np.uint8)
    for x0, y0, x1, y1 in boxes:
        sub = count[max(0, (y0 - origin) // k):max(0, -(-(y1 - origin) // k)),
                    max(0, (x0 - origin) // k):max(0, -(-(x1 - origin) // k))]
        sub[sub < 255] += 1
    return cv2.integral(count)


def legend_place(size: tuple[int, int], panel: tuple[int, int], cells: Sequence[Sequence[int]],
                 labels: Sequence[Sequence[int]] = (), anywhere: bool = False) -> tuple[int, int] | None:
    """Top-left point of a legend ``panel`` (width, height) that hides none of the ``cells`` (their boxes, review
    boxes included): of the image's four corners, the one covering least of the ``labels``' spots (top-left, then
    top-right, bottom-left, bottom-right on ties); with ``anywhere``, else the free place covering least of them and
    nearest a corner, on a grid of at most :data:`LEGEND_GRID_POINTS` points (panel and boxes rounded outward to it,
    so the place found hides no cell). None where there is no such place: a legend hid a WBC of a field with one in
    every corner (before wbc 0.36.0: the cell was counted, but the image did not show it)."""
    h, w = size
    pw, ph = panel[0] + 1, panel[1] + 1  # the panel's filled rectangle, edges included
    corners = [(4, 4), (max(4, w - pw - 3), 4), (4, max(4, h - ph - 3)), (max(4, w - pw - 3), max(4, h - ph - 3))]
    free = [c for c in corners if not any(_overlap((c[0], c[1], c[0] + pw, c[1] + ph), b) for b in cells)]
    if free:
        return min(free, key=lambda c: (sum(_overlap((c[0], c[1], c[0] + pw, c[1] + ph), b) for b in labels),
                                        corners.index(c)))
    if not anywhere or pw + 8 > w or ph + 8 > h:
        return None
    k = max(1, math.ceil(math.sqrt(h * w / LEGEND_GRID_POINTS)))  # the grid's step: 1 px up to a megapixel
    gw, gh = -(-pw // k), -(-ph // k)  # the panel in grid cells, rounded outward
    # every place 4 px or more inside the image, on the grid from (4, 4): grid point i is 4 + i * k px
    xs, ys = np.arange((w - pw - 8) // k + 1), np.arange((h - ph - 8) // k + 1)
    shape = (int(ys[-1]) + gh, int(xs[-1]) + gw)

    def hidden(table: np.ndarray) -> np.ndarray:
        return (table[ys[:, None] + gh, xs + gw] - table[ys[:, None], xs + gw] - table[ys[:, None] + gh, xs]
                + table[ys[:, None], xs])

    cover = hidden(_covered(shape, cells, k, 4))
    if (cover > 0).all():
        return None
    fx, fy = 4 + xs * k, 4 + ys * k  # in pixels
    near = np.minimum(fx - 4, w - pw - 4 - fx) + np.minimum(fy - 4, h - ph - 4 - fy)[:, None]  # to the nearest corner
    key = np.where(cover > 0, np.inf, hidden(_covered(shape, labels, k, 4)) * float(h * w + 1) + near)
    y, x = np.unravel_index(int(np.argmin(key)), key.shape)  # the first (top, then left) of the best, on ties
    return int(fx[x]), int(fy[y])


#: A label's text scale is at most a cell's side (the median of the field's boxes' longer sides) over this: labels
#: sized from the image alone were four 80 px WBCs wide on a 1280x960 field and covered neighbouring cells. At
#: 640x480 (BCCD) WBCs of 85 px and more keep the image's scale.
CELL_SIDE_PER_SCALE: float = 160.0


def text_scale(size: tuple[int, int], boxes: Sequence[Sequence[int]]) -> float:
    """The text scale :func:`render` draws labels at: the image's (``max(0.45, short side / 900)``), at most the
    cells' median side over :data:`CELL_SIDE_PER_SCALE`, never below :data:`MIN_TEXT_SCALE`.

    >>> text_scale((480, 640), [(0, 0, 120, 110)]), text_scale((960, 1280), [(0, 0, 80, 80)] * 3)
    (0.5333333333333333, 0.5)
    """
    scale = max(0.45, min(size) / 900)
    if boxes:
        side = float(np.median([max(b[2] - b[0], b[3] - b[1]) for b in boxes]))
        scale = min(scale, max(MIN_TEXT_SCALE, side / CELL_SIDE_PER_SCALE))
    return scale


def label_texts(cell_id: int, prediction: Prediction | None, threshold: float = 0.0) -> list[str]:
    """A cell's label, fullest first, then shorter ones for where the whole one does not fit (a narrow field, a
    crowded one): without the confidence, then without the class, never without the review mark "?". A detection
    the model takes for a class not counted (a smear's platelet, a class ``--classes`` left out:
    :attr:`~wbc.types.Prediction.outside`) says so first: before wbc 0.36.0 it read "2 neutrophil 0.32 ?", as any
    unsure neutrophil, though the model gave platelet 0.96.

    >>> label_texts(2, Prediction("neutrophil", 0.317, True, {}, outside="platelet"))
    ['2 platelet? as neutrophil 0.32 ?', '2 platelet? as neutrophil ?', '2 platelet? ?', '2 ?']
    >>> label_texts(1, Prediction("monocyte", 0.97, False, {}))
    ['1 monocyte 0.97', '1 monocyte', '1']
    """
    from wbc.formats import confidence_text

    if prediction is None:
        return [f"{cell_id} ?", f"{cell_id}"]  # no class to give: "?" is its label
    flag = " ?" if prediction.review else ""
    conf = f" {confidence_text(prediction.confidence, threshold)}"
    name = f"{prediction.outside}? as {prediction.label}" if prediction.outside else prediction.label
    texts = [f"{cell_id} {name}{conf}{flag}", f"{cell_id} {name}{flag}"]
    if prediction.outside:
        texts.append(f"{cell_id} {prediction.outside}?{flag}")
    return [*texts, f"{cell_id}{flag}"]


def _slid(spots: Sequence[tuple[tuple[int, int, int, int], tuple[int, int]]], w: int
          ) -> list[tuple[tuple[tuple[int, int, int, int], tuple[int, int]], int, int]]:
    """``spots`` (:func:`label_spots`), then each slid left and right by an eighth of the label's width up to half of
    it, inside an image ``w`` wide: each with the spot it was slid from and how far. The whole label "2 ig 0.77 ?" of
    BCCD's BloodImage_00313 covered its neighbour's outline by 14 px in every place beside its cell, and was shortened
    to "2 ig ?" (wbc 0.36.0's first cut); slid 26 px left it covers none."""
    out = [(s, j, 0) for j, s in enumerate(spots)]
    seen = {s[0] for s in spots}
    for j, ((x0, y0, x1, y1), (ox, oy)) in enumerate(spots):
        for step in (1, 2, 3, 4):
            for dx in (-step * (x1 - x0) // 8, step * (x1 - x0) // 8):
                dx = min(max(dx, -x0), w - x1)
                if dx and (x0 + dx, y0, x1 + dx, y1) not in seen:
                    seen.add((x0 + dx, y0, x1 + dx, y1))
                    out.append((((x0 + dx, y0, x1 + dx, y1), (ox + dx, oy)), j, abs(dx)))
    return out


class _Outlines:
    """The cells as :func:`render` draws them, their masks widened by the outline's stroke (``lw + 1`` px): what a
    label must not hide of another cell. Its box is not: in wbc 0.36.0's first cut a label kept off other cells' whole
    boxes, and was shortened where every place covered one, though perhaps only an empty corner of it."""

    def __init__(self, cells: Sequence[Cell], lw: int) -> None:
        self.cells = cells
        self.reach = lw // 2 + 2  # past the mask: half the outline's stroke, and its anti-aliased edge
        self.masks: dict[int, np.ndarray] = {}
        r = self.reach
        self.boxes = np.array([(c.box[0] - r, c.box[1] - r, c.box[0] + c.cell_mask.shape[1] + r,
                                c.box[1] + c.cell_mask.shape[0] + r) for c in cells], np.int64).reshape(-1, 4)

    def mask(self, j: int) -> np.ndarray:
        """Cell ``j``'s widened mask, over its box widened by :attr:`reach` (once per cell, when a label nears it)."""
        if j not in self.masks:
            c, r = self.cells[j], self.reach
            m = c.cell_mask.astype(bool)
            if c.nucleus_mask.shape == m.shape:
                m = m | c.nucleus_mask.astype(bool)
            padded = cv2.copyMakeBorder(m.astype(np.uint8), r, r, r, r, cv2.BORDER_CONSTANT, value=0)
            disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
            self.masks[j] = cv2.dilate(padded, disc) > 0
        return self.masks[j]

    def covered(self, places: Sequence[Sequence[int]], i: int, near: np.ndarray) -> np.ndarray:
        """For each place (x0, y0, x1, y1), the pixels of the outlines of the cells ``near`` (indices) other than
        ``i`` it covers, and of cell ``i``'s."""
        out = np.zeros((len(places), 2), np.int64)
        if not len(near):
            return out
        p, q = np.asarray(places, np.int64)[:, None], self.boxes[near][None]
        x0, y0 = np.maximum(p[..., 0], q[..., 0]), np.maximum(p[..., 1], q[..., 1])
        x1, y1 = np.minimum(p[..., 2], q[..., 2]), np.minimum(p[..., 3], q[..., 3])
        for a, n in zip(*np.nonzero((x1 > x0) & (y1 > y0)), strict=True):
            j = int(near[n])
            bx, by = self.boxes[j, 0], self.boxes[j, 1]
            covers = self.mask(j)[y0[a, n] - by:y1[a, n] - by, x0[a, n] - bx:x1[a, n] - bx]
            out[a, int(j == i)] += np.count_nonzero(covers)
        return out


def _best_place(options: Sequence[tuple[tuple[tuple[int, int, int, int], tuple[int, int]], int, int]],
                placed: np.ndarray, others: np.ndarray, outlines: _Outlines, i: int, near: np.ndarray, first: int
                ) -> tuple[tuple[int, int, int, int, int], tuple[tuple[int, int, int, int], tuple[int, int]]]:
    """Of cell ``i``'s label ``options`` (a spot, the spot it was slid from, how far: :func:`_slid`), the best and
    its cost: by what it covers of labels and the legend (``placed``), then of the outlines of other cells (of those
    ``near``), of its own cell more than the first place (``first`` pixels), then unslid before slid; an unslid one by
    what it covers of the ``others``' boxes (empty corners: a place clear of them where there is one); on ties the
    first spot, the least slid. Outlines are weighed only for the places that cover the fewest labels."""
    places = [o[0][0] for o in options]
    hides = _overlaps(places, placed)
    few = np.flatnonzero(hides == hides.min()).tolist()
    on = outlines.covered([places[j] for j in few], i, near)
    boxes = _overlaps([places[j] for j in few], others).tolist()
    costs = [(int(hides[j]), int(on[n, 0]), max(0, int(on[n, 1]) - first), int(options[j][2] > 0),
              0 if options[j][2] else boxes[n]) for n, j in enumerate(few)]
    n = min(range(len(few)), key=lambda n: (costs[n], options[few[n]][1], options[few[n]][2], boxes[n]))
    return costs[n], options[few[n]][0]


def _within(boxes: np.ndarray, region: Sequence[int]) -> np.ndarray:
    """The indices of ``boxes`` (n x 4) that share pixels with ``region`` (x0, y0, x1, y1)."""
    return np.flatnonzero((boxes[:, 0] < region[2]) & (boxes[:, 2] > region[0]) & (boxes[:, 1] < region[3])
                          & (boxes[:, 3] > region[1]))


def render(rgb: np.ndarray, result: SmearResult, classes: Sequence[str] = (), threshold: float = 0.0,
           palette: Sequence[str] = ()) -> np.ndarray:
    """A copy of ``rgb`` with every cell drawn; review cells get a red double box and a "?" after their label, which
    the legend explains. ``classes``: the classes the analysis answered among (the legend lists those it did not find
    with 0; :func:`wbc.analyze.smear_classes`); ``threshold``: the review threshold, so that a cell's confidence is
    never shown as the threshold it fell below (:func:`wbc.formats.confidence_text`); ``palette``: every class of the
    model, which a class other than wbc's eight takes its colour among (:func:`colour_of`), so that it has the same
    colour whatever the label set, the same as in ``GET /model``'s ``colours`` (the web page's); empty: among
    ``classes`` and the cells' labels.

    Outlines first, then the legend (in a corner, else another place, where it hides no cell and the fewest labels;
    :func:`legend_place`), then the labels, sized from the cells (:func:`text_scale`), each where it covers neither
    the legend, a label drawn before it, another cell's outline nor more of its own cell (:func:`label_spots`, else
    slid sideways, :func:`_slid`), clear of other cells' boxes too where it can be, shortened where no place is free
    for the whole label (:func:`label_texts`), so no outline, legend or other label ever covers a label's text, and
    no label or legend a cell, where there is room.
    """
    out = rgb.copy()
    h, w = out.shape[:2]
    boxes = [tuple(c.box) for c in result.cells]
    scale = text_scale((h, w), boxes)
    lw = max(1, round(min(h, w) / 400))
    named = list(palette) or [*classes, *(c.prediction.label for c in result.cells if c.prediction)]
    seen: list[str] = []
    labels: list[tuple[list[str], tuple[int, int, int, int], tuple[int, int, int]]] = []
    shown: list[tuple[int, int, int, int]] = []  # each cell's box, with its red review box where it has one
    n_review = 0
    for c in result.cells:
        label = c.prediction.label if c.prediction else "?"
        col = colour_of(label, named) if c.prediction else UNLABELLED
        if c.prediction and label not in seen:
            seen.append(label)
        x0, y0, x1, y1 = c.box
        for mask, thick in ((c.cell_mask, lw + 1), (c.nucleus_mask, lw)):
            cs, _ = cv2.findContours(
                mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE, offset=(x0, y0)
            )
            cv2.drawContours(out, cs, -1, col, thick, cv2.LINE_AA)
        cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), col, lw)
        m = 0
        if c.prediction and c.prediction.review:
            n_review += 1
            cv2.rectangle(out, (x0 - 2 * lw, y0 - 2 * lw), (x1 - 1 + 2 * lw, y1 - 1 + 2 * lw), REVIEW, lw)
            m = 3 * lw
        shown.append((x0 - m, y0 - m, x1 + m, y1 + m))
        texts = label_texts(c.id, c.prediction, threshold)
        # a field too narrow for the whole label: the first that fits (:func:`fitting_label`) and those after it
        labels.append((texts[texts.index(fitting_label(texts, (h, w), scale)):], (x0, y0, x1, y1), col))
    spots = [label_spots(texts[0], anchor, (h, w), scale)[0] for texts, anchor, _ in labels]
    legend: tuple[int, int, int, int] | None = None
    # legend: the classes present in this image first, then the rest answered among; then what "?" means. Where it
    # hides no cell: in a corner, else as only the classes present there, else elsewhere; else none (the counts are in
    # the JSON): a 120 px crop's legend covered its one cell (wbc 0.32.0), one in a busy field a WBC (wbc 0.35.0)
    counts = result.counts(classes)
    lscale = max(MIN_TEXT_SCALE, scale * 0.8)
    lth = max(1, round(lscale * 1.6))
    (_, ltht), lbase = cv2.getTextSize("Ay(0)", FONT, lscale, lth)
    # the text's baseline above the row's foot: 6 px held the descent ("y", "(") of small text only, and at 1920x1440
    # it ran into the next row and below the panel (before wbc 0.36.0)
    drop = max(6, lbase + lth)
    row = max(14, int(24 * scale) + 4)  # 14: a swatch of 6 px where labels are drawn small (wbc 0.35.0's least)
    row = row if drop == 6 else max(row, ltht + drop + 4)
    spot_boxes = [s[0][0] for s in spots]
    legends = [[*seen, *(c for c in classes if c not in seen)], seen]
    names: list[str] = []
    place: tuple[int, int] | None = None
    for anywhere, names in itertools.product((False, True), legends):
        if not names:
            continue
        entries = [f"{n} ({counts.get(n, 0)})" for n in names] + ([f"? review ({n_review})"] if n_review else [])
        text_w = max(cv2.getTextSize(e, FONT, lscale, lth)[0][0] for e in entries)
        panel = (row + text_w + 12, 4 + row * len(entries))
        if (place := legend_place((h, w), panel, shown, spot_boxes, anywhere)) is not None:
            break
    if place is not None:
        px, py = place
        legend = (px, py, px + panel[0] + 1, py + panel[1] + 1)
        # an opaque white panel: dark text on it reads at >= 15:1 whatever the smear shows beneath
        cv2.rectangle(out, (px, py), (px + panel[0], py + panel[1]), WHITE, -1)
        y = py + 2
        for i, entry in enumerate(entries):
            a, b = (px + 6, y + 4), (px + row - 4, y + row - 4)
            if i < len(names):
                cv2.rectangle(out, a, b, colour_of(names[i], named), -1)
                cv2.rectangle(out, a, b, (40, 40, 40), 1)
            else:  # the review mark: a red double box, as drawn around a flagged cell
                cv2.rectangle(out, a, b, REVIEW, 1)
                cv2.rectangle(out, (a[0] + 3, a[1] + 3), (b[0] - 3, b[1] - 3), REVIEW, 1)
            cv2.putText(out, entry, (px + row + 2, y + row - drop), FONT, lscale, (20, 20, 20), lth, cv2.LINE_AA)
            y += row
    placed: list[tuple[int, int, int, int]] = [legend] if legend else []
    cells = np.asarray(shown, np.int64).reshape(-1, 4)
    outlines = _Outlines(result.cells, lw)
    for i, (texts, anchor, col) in enumerate(labels):
        # what any place of its label may cover (each lies within two labels' heights and widths of the cell's box):
        # weighing every place against every cell of a field of 600 took seconds
        bw, bh, *_ = _label_size(texts[0], scale)
        region = (anchor[0] - 2 * bw, anchor[1] - 2 * bh, anchor[2] + 2 * bw, anchor[3] + 2 * bh)
        near = _within(outlines.boxes, region)
        others = cells[[j for j in _within(cells, region).tolist() if j != i]].reshape(-1, 4)
        around = np.asarray(placed, np.int64).reshape(-1, 4)
        around = around[_within(around, region)]
        best: tuple[tuple[int, ...], str, tuple[tuple[int, int, int, int], tuple[int, int]]] | None = None
        for text in texts:  # the fullest text with a place free of labels and cells, else the one covering least
            options = label_spots(text, anchor, (h, w), scale)[0]
            first = int(outlines.covered([options[0][0]], i, near)[0, 1])  # of its own cell, its first place (above)
            unslid = [(o, j, 0) for j, o in enumerate(options)]
            cost, spot = _best_place(unslid, around, others, outlines, i, near, first)
            if cost[:3] != (0, 0, 0):  # none free: slid ones too (after all unslid ones, whatever they cover)
                cost, spot = _best_place(_slid(options, w), around, others, outlines, i, near, first)
            if best is None or cost < best[0]:
                best = (cost, text, spot)
            if cost[:3] == (0, 0, 0):
                break
        assert best is not None
        placed.append(draw_label(out, best[1], anchor, scale, col, best[2]))
    return out
