"""Grad-CAM overlays: where in the cell the model found evidence for the class it chose.

For a network ending in global average pooling and one linear layer (every wbc model), Grad-CAM of
class c equals its class activation map ``sum_d w[c, d] * fmap[d]``, which the exported model computes
in-graph (output ``cam``). What is left is the display: ReLU, normalise to 0-1, upsample, colour, blend.
"""

from __future__ import annotations

import cv2
import numpy as np


def cam_heatmap(cam: np.ndarray, size: tuple[int, int], input_size: int | None = None) -> np.ndarray:
    """One class's activation map (h, w) -> float32 heat in [0, 1] at ``size`` = (height, width).

    Negative evidence is dropped (ReLU) and the map is scaled by its own maximum, so every overlay uses
    the full colour range; a map with no positive evidence is all zeros.

    Where the map is placed matters: in a CNN whose strided convolutions pad symmetrically (every wbc
    model), feature cell ``i`` is centred on input pixel ``i * stride``, not ``(i + 0.5) * stride`` as a
    plain resize assumes. With a 5 x 5 map that is a shift of half a cell (10% of the image) towards
    the top-left (checked with PBC cells rolled towards the corners of the frame: the heat follows the
    cell, and this alignment puts its centre nearer the cell than a plain resize does). Give the
    network's ``input_size`` to use it.

    >>> heat = cam_heatmap(np.array([[-1.0, 0.0], [1.0, 3.0]]), (2, 2))
    >>> [[round(float(v), 2) for v in row] for row in heat]
    [[0.0, 0.0], [0.33, 1.0]]
    """
    heat = np.maximum(np.asarray(cam, np.float32), 0.0)
    peak = float(heat.max()) if heat.size else 0.0
    heat = heat / peak if peak > 0 else np.zeros_like(heat)
    h, w = heat.shape
    if input_size:
        # source cell (i, j) -> display pixel centre ((j * stride + 0.5) * sx - 0.5, ...)
        sx, sy = size[1] / input_size, size[0] / input_size
        m = np.array([[input_size / w * sx, 0, 0.5 * sx - 0.5], [0, input_size / h * sy, 0.5 * sy - 0.5]])
        heat = cv2.warpAffine(
            heat, m, (size[1], size[0]), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE
        )
    elif heat.shape != tuple(size):
        heat = cv2.resize(heat, (size[1], size[0]), interpolation=cv2.INTER_CUBIC)
    return np.clip(heat, 0.0, 1.0)


def overlay_heatmap(rgb: np.ndarray, heat: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """Blend a [0, 1] heat map (jet colours, weighted by the heat itself) over a uint8 RGB image.

    The blend weight grows with the heat, so cold areas keep their original pixels and the cell stays
    recognisable under the map.
    """
    colour = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1]
    w = (alpha * heat)[:, :, None]
    out = rgb.astype(np.float32) * (1 - w) + colour.astype(np.float32) * w
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def gradcam_overlays(
    cells: np.ndarray, cams: np.ndarray, class_index: np.ndarray, alpha: float = 0.6
) -> list[np.ndarray]:
    """Overlays for a batch: ``cells`` (N, S, S, 3) uint8 as the network sees them (after any centre crop),
    ``cams`` (N, C, h, w), one class per cell."""
    out = []
    for cell, cam, k in zip(cells, cams, class_index, strict=True):
        heat = cam_heatmap(cam[int(k)], cell.shape[:2], input_size=cell.shape[0])
        out.append(overlay_heatmap(cell, heat, alpha))
    return out
