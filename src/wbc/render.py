"""Draw a smear result: nucleus and cell contours, box, label and confidence, one colour per class, legend."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from wbc.types import SmearResult

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


def colour_of(label: str) -> tuple[int, int, int]:
    if label in CLASS_COLOURS:
        return CLASS_COLOURS[label]
    h = sum(map(ord, label)) * 37 % 180  # stable colour for classes of other models
    bgr = cv2.cvtColor(np.array([[[h, 200, 230]]], dtype=np.uint8), cv2.COLOR_HSV2RGB)[0, 0]
    return int(bgr[0]), int(bgr[1]), int(bgr[2])


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
    takes the first that covers no other label and not the legend."""
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


def legend_corner(size: tuple[int, int], panel: tuple[int, int], boxes: Sequence[Sequence[int]]
                  ) -> tuple[int, int]:
    """Top-left point of the legend panel: the image corner where it hides the least of the cells' boxes
    (top-left on ties)."""
    h, w = size
    pw, ph = panel
    corners = [(4, 4), (max(4, w - pw - 4), 4), (4, max(4, h - ph - 4)), (max(4, w - pw - 4), max(4, h - ph - 4))]
    return min(corners, key=lambda c: sum(_overlap((c[0], c[1], c[0] + pw, c[1] + ph), b) for b in boxes))


def render(rgb: np.ndarray, result: SmearResult, classes: Sequence[str] = (), threshold: float = 0.0) -> np.ndarray:
    """A copy of ``rgb`` with every cell drawn; review cells get a red double box and a "?" after their label, which
    the legend explains. ``classes``: the classes the analysis answered among (the legend lists those it did not find
    with 0; :func:`wbc.analyze.smear_classes`); ``threshold``: the review threshold, so that a cell's confidence is
    never shown as the threshold it fell below (:func:`wbc.formats.confidence_text`).

    Outlines first, then the legend (in the corner where it hides the fewest cells and labels), then the labels, each
    where it covers neither the legend nor a label drawn before it (:func:`label_spots`), so no outline, legend or
    other label ever covers a label's text where there is room for both.
    """
    from wbc.formats import confidence_text

    out = rgb.copy()
    h, w = out.shape[:2]
    scale = max(0.45, min(h, w) / 900)
    lw = max(1, round(min(h, w) / 400))
    seen: list[str] = []
    labels: list[tuple[str, tuple[int, int, int, int], tuple[int, int, int]]] = []
    n_review = 0
    for c in result.cells:
        label = c.prediction.label if c.prediction else "?"
        col = colour_of(label) if c.prediction else UNLABELLED
        if c.prediction and label not in seen:
            seen.append(label)
        x0, y0, x1, y1 = c.box
        for mask, thick in ((c.cell_mask, lw + 1), (c.nucleus_mask, lw)):
            cs, _ = cv2.findContours(
                mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE, offset=(x0, y0)
            )
            cv2.drawContours(out, cs, -1, col, thick, cv2.LINE_AA)
        cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), col, lw)
        if c.prediction and c.prediction.review:
            n_review += 1
            cv2.rectangle(out, (x0 - 2 * lw, y0 - 2 * lw), (x1 - 1 + 2 * lw, y1 - 1 + 2 * lw), REVIEW, lw)
        conf = f" {confidence_text(c.prediction.confidence, threshold)}" if c.prediction else ""
        flag = " ?" if c.prediction and c.prediction.review else ""
        # a field too narrow for the whole label: without the confidence, then the id alone, never without the "?"
        texts = [f"{c.id} {label}{conf}{flag}", f"{c.id} {label}{flag}", f"{c.id}{flag}"]
        labels.append((fitting_label(texts, (h, w), scale), (x0, y0, x1, y1), col))
    spots = [label_spots(text, anchor, (h, w), scale)[0] for text, anchor, _ in labels]
    legend: tuple[int, int, int, int] | None = None
    # legend: the classes present in this image first, then the rest answered among; then what "?" means. In a small
    # field, where it would cover a cell and not fit a quarter of the image, only the classes present; else none (the
    # counts are in the JSON): a 120 px crop's legend covered its one cell (wbc 0.32.0)
    row = int(24 * scale) + 4
    counts = result.counts(classes)
    lscale = scale * 0.8
    lth = max(1, round(lscale * 1.6))
    boxes = [c.box for c in result.cells]
    for names in ([*seen, *(c for c in classes if c not in seen)], seen):
        if not names:
            continue
        entries = [f"{n} ({counts.get(n, 0)})" for n in names] + ([f"? review ({n_review})"] if n_review else [])
        text_w = max(cv2.getTextSize(e, FONT, lscale, lth)[0][0] for e in entries)
        panel = (row + text_w + 12, 4 + row * len(entries))
        px, py = legend_corner((h, w), panel, boxes + [s[0][0] for s in spots])
        small = 2 * panel[0] <= w and 2 * panel[1] <= h
        if small or not any(_overlap((px, py, px + panel[0] + 1, py + panel[1] + 1), b) for b in boxes):
            break
    else:
        names = []
    if names:
        legend = (px, py, px + panel[0] + 1, py + panel[1] + 1)
        # an opaque white panel: dark text on it reads at >= 15:1 whatever the smear shows beneath
        cv2.rectangle(out, (px, py), (px + panel[0], py + panel[1]), WHITE, -1)
        y = py + 2
        for i, entry in enumerate(entries):
            a, b = (px + 6, y + 4), (px + row - 4, y + row - 4)
            if i < len(names):
                cv2.rectangle(out, a, b, colour_of(names[i]), -1)
                cv2.rectangle(out, a, b, (40, 40, 40), 1)
            else:  # the review mark: a red double box, as drawn around a flagged cell
                cv2.rectangle(out, a, b, REVIEW, 1)
                cv2.rectangle(out, (a[0] + 3, a[1] + 3), (b[0] - 3, b[1] - 3), REVIEW, 1)
            cv2.putText(out, entry, (px + row + 2, y + row - 6), FONT, lscale, (20, 20, 20), lth, cv2.LINE_AA)
            y += row
    placed: list[tuple[int, int, int, int]] = [legend] if legend else []
    for (text, anchor, col), options in zip(labels, spots, strict=True):
        spot = min(options, key=lambda o: (sum(_overlap(o[0], b) for b in placed), options.index(o)))
        placed.append(draw_label(out, text, anchor, scale, col, spot))
    return out
