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
    bgr = cv2.cvtColor(np.uint8([[[h, 200, 230]]]), cv2.COLOR_HSV2RGB)[0, 0]
    return int(bgr[0]), int(bgr[1]), int(bgr[2])


def _text(img: np.ndarray, s: str, org: tuple[int, int], scale: float, colour: tuple[int, int, int]) -> None:
    th = max(1, round(scale * 2))
    cv2.putText(img, s, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), th + 2, cv2.LINE_AA)
    cv2.putText(img, s, org, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, th, cv2.LINE_AA)


def render(rgb: np.ndarray, result: SmearResult, classes: Sequence[str] = ()) -> np.ndarray:
    """A copy of ``rgb`` with every cell drawn; review cells get a red dashed-looking double box."""
    out = rgb.copy()
    h, w = out.shape[:2]
    scale = max(0.4, min(h, w) / 900)
    lw = max(1, round(min(h, w) / 400))
    seen: list[str] = []
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
            cv2.rectangle(out, (x0 - 2 * lw, y0 - 2 * lw), (x1 - 1 + 2 * lw, y1 - 1 + 2 * lw), REVIEW, lw)
        conf = f" {c.prediction.confidence:.2f}" if c.prediction else ""
        flag = " ?" if c.prediction and c.prediction.review else ""
        ty = y0 - 6 if y0 > 20 * scale else y1 + int(22 * scale)
        _text(out, f"{c.id} {label}{conf}{flag}", (x0, min(h - 4, ty)), scale, col)
    # legend: the model's classes present in this image first, then the rest
    names = seen + [c for c in classes if c not in seen] if classes else seen
    row = int(24 * scale) + 4
    box_w = int(max([len(n) for n in names] + [8]) * 11 * scale) + 30
    if names:
        y = 6
        overlay = out.copy()
        cv2.rectangle(overlay, (4, 4), (4 + box_w, 8 + row * len(names)), (255, 255, 255), -1)
        out = cv2.addWeighted(overlay, 0.6, out, 0.4, 0)
        for n in names:
            col = colour_of(n)
            cv2.rectangle(out, (10, y + 4), (10 + row - 10, y + row - 4), col, -1)
            k = result.counts(classes).get(n, 0)
            _text(out, f"{n} ({k})", (10 + row, y + row - 6), scale * 0.8, col)
            y += row
    return out
