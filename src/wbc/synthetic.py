"""Small synthetic blood-cell images for tests and demos that must run without the real data.

The images are crude but carry real signal: each class has its own nucleus shape, size and colour, so a
model trained on a few dozen of them must learn something to pass, and a broken pipeline fails.

>>> img = synthetic_cell("lymphocyte", size=64, seed=0)
>>> img.shape, img.dtype.name
((64, 64, 3), 'uint8')
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from wbc.errors import WbcError
from wbc.io import write_image

# nucleus (radius fraction, lobes, BGR-free RGB colour), cytoplasm radius fraction and colour
_STYLE: dict[str, tuple[float, int, tuple[int, int, int], float, tuple[int, int, int]]] = {
    "basophil": (0.22, 1, (60, 20, 90), 0.30, (90, 50, 120)),
    "eosinophil": (0.16, 2, (110, 40, 140), 0.34, (235, 120, 90)),
    "erythroblast": (0.15, 1, (40, 20, 70), 0.22, (200, 150, 170)),
    "ig": (0.20, 1, (120, 70, 160), 0.36, (210, 170, 200)),
    "lymphocyte": (0.24, 1, (70, 40, 130), 0.28, (150, 170, 225)),
    "monocyte": (0.22, 1, (140, 100, 180), 0.40, (170, 160, 200)),
    "neutrophil": (0.10, 4, (90, 40, 140), 0.33, (225, 190, 210)),
    "platelet": (0.07, 1, (120, 80, 170), 0.08, (170, 130, 190)),
}


def synthetic_cell(label: str, size: int = 96, seed: int = 0) -> np.ndarray:
    """One synthetic single-cell image of class ``label`` (uint8 RGB, ``size`` x ``size``)."""
    rng = np.random.default_rng(seed)
    nuc_r, lobes, nuc_rgb, cyt_r, cyt_rgb = _STYLE[label]
    bg = np.array([235, 215, 205]) + rng.integers(-10, 10, 3)
    img = np.empty((size, size, 3), np.float32)
    img[:] = bg
    for _ in range(rng.integers(3, 8)):  # red cells around
        c = tuple(int(v) for v in rng.integers(0, size, 2))
        cv2.circle(img, c, int(size * 0.12), (225, 150, 150), -1)
    centre = np.array([size / 2, size / 2]) + rng.normal(0, size * 0.02, 2)
    jitter = 1 + rng.normal(0, 0.05)
    cv2.circle(img, tuple(int(v) for v in centre), int(size * cyt_r * jitter), tuple(float(v) for v in cyt_rgb), -1)
    for k in range(lobes):
        ang = 2 * np.pi * k / lobes + rng.uniform(0, np.pi)
        off = centre + (size * 0.1 * np.array([np.cos(ang), np.sin(ang)]) if lobes > 1 else 0)
        cv2.circle(img, tuple(int(v) for v in off), int(size * nuc_r * jitter), tuple(float(v) for v in nuc_rgb), -1)
    blurred: np.ndarray = cv2.GaussianBlur(img, (0, 0), size / 160)  # float32, as img
    blurred += rng.normal(0, 4, blurred.shape)
    return np.clip(blurred, 0, 255).astype(np.uint8)


def make_dataset(
    root: str | Path, n_per_class: int = 12, size: int = 96, classes: Sequence[str] | None = None,
    seed: int = 0, ext: str = ".png",
) -> Path:
    """Write a class-per-folder synthetic dataset under ``root``; returns ``root``."""
    root = Path(root)
    for ci, label in enumerate(classes or list(_STYLE)):
        for i in range(n_per_class):
            img = synthetic_cell(label, size, seed * 100_003 + ci * 1009 + i)
            write_image(root / label / f"{label}_{i:03d}{ext}", img)
    return root


def synthetic_smear(
    scale: float = 1.0,
    n_wbc: int = 2,
    seed: int = 0,
    size: tuple[int, int] = (480, 640),
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> tuple[np.ndarray, list[tuple[int, int, int, int]], np.ndarray, np.ndarray]:
    """A smear-like field: grey background, pink pale-centred red cells, violet-nucleus WBCs.

    Returns (rgb, wbc boxes, nucleus mask, cell mask). Red cells are ``70 * scale`` px across, WBCs 1.5x that,
    apart and inside the field: one that finds no room in 100 random places raises :class:`WbcError`, so a test
    never gets fewer WBCs than it asked for without a word.
    """
    rng = np.random.default_rng(seed)
    h, w = size
    img = np.full((h, w, 3), (200, 202, 200), np.float32)
    d = 70.0 * scale
    nuc = np.zeros((h, w), np.uint8)
    cell = np.zeros((h, w), np.uint8)
    centres: list[np.ndarray] = []
    wr = 0.75 * d
    for _ in range(n_wbc):
        for _ in range(100 if min(h, w) > 2 * wr + 10 else 0):
            c = rng.uniform([wr + 5, wr + 5], [w - wr - 5, h - wr - 5])
            if all(np.hypot(*(c - o)) > 2 * wr + 10 for o in centres):
                centres.append(c)
                break
        else:
            raise WbcError(f"synthetic_smear: no room for {n_wbc} WBCs {2 * wr:.0f} px across in a {w}x{h} field "
                           f"(placed {len(centres)}); give a larger size, a smaller scale or fewer WBCs")
    for _ in range(int(h * w / (d * d) * 0.9)):
        c = rng.uniform([0, 0], [w, h])
        if any(np.hypot(*(c - o)) < wr + d / 2 for o in centres):
            continue
        cv2.circle(img, (int(c[0]), int(c[1])), int(d / 2), (180, 145, 150), -1, cv2.LINE_AA)
        cv2.circle(img, (int(c[0]), int(c[1])), int(d / 5), (192, 170, 172), -1, cv2.LINE_AA)
    boxes = []
    for c in centres:
        x, y = int(c[0]), int(c[1])
        cv2.circle(cell, (x, y), int(wr), 1, -1)
        for k in range(3):  # three overlapping lobes
            a = 2 * np.pi * k / 3 + rng.uniform(0, 1)
            cv2.circle(
                nuc, (int(x + 0.25 * wr * np.cos(a)), int(y + 0.25 * wr * np.sin(a))), int(0.3 * wr), 1, -1
            )
        boxes.append((x - int(wr), y - int(wr), x + int(wr) + 1, y + int(wr) + 1))
    img[cell > 0] = (185, 165, 200)
    img[nuc > 0] = (135, 115, 205)
    img *= np.asarray(tint, np.float32)
    img += rng.normal(0, 3, img.shape)
    blurred = cv2.GaussianBlur(img, (0, 0), 1.2 * max(scale, 0.5))
    return np.clip(blurred, 0, 255).astype(np.uint8), boxes, nuc > 0, cell > 0


def png_bomb(width: int, height: int, rgb: bool = False) -> bytes:
    """A valid all-black PNG of ``width`` x ``height`` that is tiny on disk (1-bit grey, or 8-bit RGB with
    ``rgb``): a "decompression bomb" for testing that readers refuse huge images from their header.

    One block of rows is compressed once and repeated (a full flush makes deflate blocks independent), so
    30000x30000 RGB (2.6 MB here, 2.7 GB decoded) takes about a second and never holds the raw pixels.
    """
    import struct
    import zlib

    row = b"\0" + bytes(width * 3 if rgb else (width + 7) // 8)  # filter byte + one row of zero pixels
    rows_per_block = max(1, min(height, (64 << 20) // len(row)))

    def deflate(data: bytes, last: bool) -> bytes:
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        return c.compress(data) + c.flush(zlib.Z_FINISH if last else zlib.Z_FULL_FLUSH)

    n_full, rest = divmod(height, rows_per_block)
    block = row * rows_per_block
    body = deflate(block, False) * n_full + deflate(row * rest, True)
    adler = 1
    for _ in range(n_full):
        adler = zlib.adler32(block, adler)
    adler = zlib.adler32(row * rest, adler)
    idat = b"\x78\xda" + body + struct.pack(">I", adler & 0xFFFFFFFF)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8 if rgb else 1, 2 if rgb else 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
