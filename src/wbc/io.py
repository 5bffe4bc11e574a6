"""Reading images of every common format into 8-bit RGB, finding image files, and atomic writes.

All readers return ``numpy.ndarray`` of shape (H, W, 3), dtype uint8, RGB order, turned as the file's EXIF
orientation says (:func:`exif_orientation`) and in sRGB when the file embeds another RGB colour profile
(:func:`to_srgb`), as viewers show it, from a path or from bytes alike. Problems raise
:class:`wbc.errors.ImageReadError` with the file name and what is wrong, never a bare OpenCV error.

What the decoders print about a broken file names no file, and that message says what is wrong, naming it, so since
wbc 0.32.0 (before, their lines came first) OpenCV's log is silent while :func:`decode_image` runs and put back after
(:func:`_quiet_opencv`; left alone when ``OPENCV_LOG_LEVEL`` is set), and importing this module adds filters that hide
Pillow's warnings about damaged or very large files, and only those (:data:`_PILLOW_FILE_WARNINGS`).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import os
import re
import stat
import sys
import tempfile
import threading
import warnings
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from wbc.errors import ImageReadError, ImageTooLargeError

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif",  # GIF: its first frame, read by Pillow
     ".jp2", ".j2k", ".avif",  # JPEG 2000 (a scanner's or PACS export) and AVIF: OpenCV reads both, Pillow too
     # JPEGs by other names (since wbc 0.32.0): Chrome and Edge on Windows save photos as .jfif, and a folder's were
     # left out without a word; decoders read them by their content
     ".jfif", ".jpe", ".jif"}
)
#: Image formats wbc has no decoder for that a lab may still keep beside its JPEGs: a phone's HEIC/HEIF, JPEG XL, raw
#: camera files, whole-slide scans and DICOM. A folder's files in them are left out, as any other non-image file is,
#: but counted (:func:`foreign_images_note`), so that the commands say so instead of skipping a lab's photos in
#: silence.
FOREIGN_IMAGE_EXTENSIONS: frozenset[str] = frozenset({
    ".heic", ".heif", ".jxl", ".dng", ".cr2", ".cr3", ".nef", ".arw", ".raw", ".czi", ".svs",
    ".ndpi", ".scn", ".mrxs", ".vsi", ".lif", ".nd2", ".dcm", ".dicom",
})
#: Images with more pixels than this are refused (a 20k x 20k scan); callers may tile instead.
MAX_PIXELS: int = 200_000_000
#: Files larger than this are refused before they are read (:func:`read_bytes`, every command's and the Python API's
#: reader): above any image within :data:`MAX_PIXELS` stored uncompressed at 16-bit RGBA (8 bytes a pixel, 1.6 GB).
#: Before wbc 0.36.0 any file was read whole before its header was checked: a 1 GiB non-image took 1 GiB of memory
#: per decoding thread. The HTTP API bounds its uploads by its own, lower ``--max-upload-mb``.
MAX_FILE_BYTES: int = 2 << 30
#: Images whose embedded ICC colour profile is larger than this are refused (:func:`decode_image`). A camera's or
#: scanner's RGB profile is a few KB, a LUT profile under about 1 MB; a PNG of 16 KB can inflate to 16 MB of one.
MAX_ICC_BYTES: int = 4 << 20

cv2.setNumThreads(1)  # one decoder thread per call; parallelism comes from callers' thread pools

#: Pillow's warnings about a damaged or very large file, which name no file: wbc's one-line message about the file
#: says what is wrong, naming it, and its own pixel limit (:data:`MAX_PIXELS`) stands in for Pillow's bomb warning.
#: (message at its start, category, Pillow's module) each. Their filters are added once, when this module is
#: imported, and never changed after: a ``warnings.catch_warnings()`` block in each reader saved and restored the
#: process-wide filter list, so readers in several threads (``classify_images(workers=4)``, the server) left one
#: another's filter behind, an "ignore every warning" one among them, and the host program lost its own warnings.
_PILLOW_FILE_WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    (r"(possibly )?corrupt exif", UserWarning, r"PIL\."),  # a damaged EXIF or TIFF directory, MakerNote too
    (r"truncated file read", UserWarning, r"PIL\."),
    (r"metadata warning, tag \d+ had too many entries", UserWarning, r"PIL\."),
    (r"tag (offset too large|data larger than file)", UserWarning, r"PIL\."),
    (r"image size \(\d+ pixels\) exceeds limit", RuntimeWarning, r"PIL\.Image"),  # DecompressionBombWarning
)
for _message, _category, _module in _PILLOW_FILE_WARNINGS:
    warnings.filterwarnings("ignore", message=_message, category=_category, module=_module)
del _message, _category, _module


_OPENCV_LOG_LOCK = threading.Lock()
#: How many of wbc's decodes run now (:func:`_quiet_opencv`), and the OpenCV log level the first of them found.
_opencv_log: dict[str, int] = {"decoding": 0, "level": cv2.utils.logging.LOG_LEVEL_WARNING}


@contextlib.contextmanager
def _quiet_opencv() -> Iterator[None]:
    """OpenCV's log silent while wbc decodes (:func:`decode_image`): a broken file's decoder errors (OpenCV's,
    libtiff's through it) print lines naming no file before wbc's one-line message about it, which names it.

    OpenCV's level is process-wide, so it is lowered while at least one of wbc's decodes runs, in any thread (a count
    under a lock), and put back when the last one ends, unless the program changed it meanwhile; a program's own
    OpenCV messages at that moment are not shown. Silencing it when this module was imported silenced the host
    program's OpenCV for good. With ``OPENCV_LOG_LEVEL`` set the level is left alone: the user's own setting wins.
    """
    if "OPENCV_LOG_LEVEL" in os.environ:
        yield
        return
    silent = cv2.utils.logging.LOG_LEVEL_SILENT
    with _OPENCV_LOG_LOCK:
        if _opencv_log["decoding"] == 0:
            _opencv_log["level"] = cv2.utils.logging.getLogLevel()
            cv2.utils.logging.setLogLevel(silent)
        _opencv_log["decoding"] += 1
    try:
        yield
    finally:
        with _OPENCV_LOG_LOCK:
            _opencv_log["decoding"] -= 1
            if _opencv_log["decoding"] == 0 and cv2.utils.logging.getLogLevel() == silent:
                cv2.utils.logging.setLogLevel(_opencv_log["level"])


#: The bit depths cameras write. A 16-bit file from a scientific camera often holds its 10-, 12- or 14-bit samples
#: as they are (0-4095 for 12 bits), so dividing by 257 would show a bright-field image almost black.
CAMERA_BITS: tuple[int, ...] = (8, 10, 12, 14, 16)


def sample_bits(peak: float) -> int:
    """The smallest camera bit depth (:data:`CAMERA_BITS`) whose range holds a sample value of ``peak``.

    A bright-field image's brightest pixels are its background, near the top of the camera's range, so the
    largest sample tells the depth a 16-bit (or float) file was really written at; rounding up to a camera's
    depth keeps one camera's images on one scale, whatever their exposure.

    >>> sample_bits(255), sample_bits(4095), sample_bits(1800), sample_bits(60000)
    (8, 12, 12, 16)
    """
    need = max(1, int(np.ceil(peak))).bit_length()
    return next((b for b in CAMERA_BITS if b >= need), CAMERA_BITS[-1])


#: A float image whose colour samples' 99.9th percentile is at most this is on the 0-1 scale (values above 1 read
#: white, as viewers show them). A flat-field corrected image (image / flat) has its glass at about 1.0, and noise puts
#: well over 0.1 % of its samples above it (99.9th percentile 1.02-1.06): read by :func:`sample_bits` as 8-bit levels,
#: before wbc 0.36.0 it came out black and was refused as too dark. On any wider scale such an image is black anyway.
FLOAT_UNIT_MAX = 2.0


def _depth_to_8bit(arr: np.ndarray) -> np.ndarray:
    """16-bit or float (H, W, C) samples as float32 on the 0-255 scale: colour from the camera depth it holds
    (:func:`sample_bits`; float up to :data:`FLOAT_UNIT_MAX` read as 0-1 times 255, NaN and inf as 0), alpha from
    its own full scale (65535, or 1 for float)."""
    is_float = arr.dtype.kind == "f"
    values = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    n = 3 if values.shape[2] >= 3 else 1
    colour, alpha = values[:, :, :n], values[:, :, n:]
    # float files from processing pipelines carry stray samples (an overshoot to 1.02, an inf set to 0 above):
    # their scale is read from the 99.9th percentile, not from one sample
    peak = (float(np.percentile(colour, 99.9)) if is_float else float(colour.max())) if colour.size else 0.0
    colour = colour * (255.0 if is_float and peak <= FLOAT_UNIT_MAX else 255.0 / (2 ** sample_bits(peak) - 1))
    if alpha.size:
        alpha = alpha * (255.0 / 65535.0 if arr.dtype == np.uint16 else 255.0 if float(alpha.max()) <= 1.0 else 1.0)
    return np.concatenate([colour, alpha], axis=2) if alpha.size else colour


def _to_rgb8(arr: np.ndarray, name: str) -> np.ndarray:
    """Convert any decoded array (grey, 16-bit, float, BGRA) to uint8 RGB.

    16-bit and float samples are scaled from the camera depth they hold (:func:`sample_bits`): a 12-bit camera's
    16-bit TIFF reads as bright as the same image saved at 8 bits.
    """
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        raise ImageReadError(f"{name}: unsupported image shape {arr.shape}")
    if arr.dtype in (np.uint16, np.float32, np.float64):
        arr = _depth_to_8bit(arr).round()
    elif arr.dtype != np.uint8:
        raise ImageReadError(f"{name}: unsupported pixel type {arr.dtype}")
    arr = np.clip(arr, 0, 255).astype(np.uint8) if arr.dtype != np.uint8 else arr
    channels = arr.shape[2]
    if channels in (1, 2):  # grey (+ alpha)
        grey = arr[:, :, 0]
        if channels == 2:
            alpha = arr[:, :, 1].astype(np.float32) / 255.0
            grey = (grey * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    if channels == 4:  # BGRA: composite on white, as slides are viewed
        alpha = arr[:, :, 3:4].astype(np.float32) / 255.0
        bgr = arr[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        arr = bgr.round().astype(np.uint8)
    return _bgr_to_rgb(arr)


def _bgr_to_rgb(bgr: np.ndarray) -> np.ndarray:
    """uint8 BGR -> RGB. OpenCV's swap is 6x faster than copying a reversed numpy view (0.02 vs 0.15 ms
    for a 180 px cell), which matters when decoding is a quarter of `wbc classify`'s CPU time."""
    return cv2.cvtColor(np.ascontiguousarray(bgr), cv2.COLOR_BGR2RGB)


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from a JPEG's SOF marker, without decoding; None when not found.

    By hand rather than Pillow's lazy ``Image.open(...).size`` (the fallback in :func:`image_size`): the same
    sizes on 440 PBC and BCCD files, 4 us instead of 93 us, in front of every decode (1.8 ms a PBC cell), so
    Pillow would add 5 % to decoding in `wbc classify` (benchmarks/library_swaps.py).
    """
    for marker, i in _jpeg_markers(data):
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and i + 9 <= len(data):
            return int.from_bytes(data[i + 5 : i + 7], "big"), int.from_bytes(data[i + 7 : i + 9], "big")
    return None


def _jpeg_markers(data: bytes) -> Iterator[tuple[int, int]]:
    """(marker, offset) of a JPEG's header segments in order, up to its first start of scan (0xDA) included; each
    segment skipped by its length, so a thumbnail inside the EXIF segment is never walked into. Fill bytes (0xFF)
    before a marker, which the standard allows (T.81 B.1.1.2) and some encoders write, are skipped as decoders do.

    >>> ok, jpg = cv2.imencode(".jpg", np.full((8, 8, 3), 200, np.uint8))
    >>> jpg = jpg.tobytes()
    >>> padded = jpg[:2] + bytes([0xFF, 0xFF]) + jpg[2:]
    >>> [m for m, _ in _jpeg_markers(padded)] == [m for m, _ in _jpeg_markers(jpg)]
    True
    """
    i = 2
    n = len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return
        marker = data[i + 1]
        if marker == 0xFF:  # a fill byte: the marker follows
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        yield marker, i
        if marker == 0xDA:
            return
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")


def jpeg_complete(data: bytes) -> bool:
    """Whether a JPEG's image reaches its end-of-image marker (0xFFD9) after its first start of scan. What follows it
    does not matter: a phone's motion-photo video, a camera's padding or trailer. Inside the compressed data every
    0xFF byte is followed by 0x00 or a restart marker, so 0xFFD9 there is the end itself; an EXIF thumbnail's own end,
    before the scan, does not count.

    >>> ok, jpg = cv2.imencode(".jpg", np.full((64, 64, 3), 200, np.uint8))
    >>> jpg = jpg.tobytes()
    >>> jpeg_complete(jpg), jpeg_complete(jpg + bytes(500)), jpeg_complete(jpg[: len(jpg) // 2])
    (True, True, False)
    """
    if b"\xff\xd9" in data[-64:]:  # nearly every file: the end is the last thing in it
        return True
    scan = next((i for marker, i in _jpeg_markers(data) if marker == 0xDA), None)
    return scan is not None and data.find(b"\xff\xd9", scan) >= 0


def png_complete(data: bytes) -> bool:
    """Whether a PNG's bytes hold its end chunk (IEND), as :func:`jpeg_complete` asks of a JPEG: a file cut short
    lacks it. What follows it (a camera's trailer) does not matter.

    >>> ok, png = cv2.imencode(".png", np.full((64, 64, 3), 200, np.uint8))
    >>> png = png.tobytes()
    >>> png_complete(png), png_complete(png + bytes(500)), png_complete(png[: len(png) // 2])
    (True, True, False)
    """
    return b"IEND" in data[-64:] or data.rfind(b"IEND", 8) >= 0


#: The first four bytes of a TIFF file, classic and BigTIFF (since wbc 0.32.0: tifffile writes BigTIFF for large images
#: or on request, OME-TIFF writers too; OpenCV and Pillow read both).
_TIFF_MAGICS: tuple[bytes, ...] = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _tiff_orientation(tiff: bytes) -> int:
    """The Orientation tag (0x0112) of the first image directory of TIFF-structured bytes (an EXIF block); 1 when
    absent or malformed."""
    order: Literal["little", "big"] = "little" if tiff[:2] == b"II" else "big"
    if tiff[:2] not in (b"II", b"MM") or len(tiff) < 8:
        return 1
    at = int.from_bytes(tiff[4:8], order)
    n = int.from_bytes(tiff[at : at + 2], order) if at + 2 <= len(tiff) else 0
    for e in range(at + 2, min(at + 2 + 12 * n, len(tiff) - 11), 12):
        if int.from_bytes(tiff[e : e + 2], order) == 0x0112:
            value = int.from_bytes(tiff[e + 8 : e + 10], order)  # a SHORT, at the start of the entry's value
            return value if 1 <= value <= 8 else 1
    return 1


def _tiff_value(tiff: bytes, tag: int) -> int | None:
    """The first value of ``tag`` (a SHORT, LONG or LONG8, inline or at its offset) in the first image directory of
    TIFF or BigTIFF bytes; None when absent, of another type, or malformed. Read by hand, a few microseconds: it is
    asked of every TIFF before decoding (:func:`_planar_deep_tiff`), where Pillow's lazy open takes 0.1-0.3 ms.
    BigTIFF (8-byte offsets and counts, 20-byte entries), as tifffile writes for large images or on request and
    OME-TIFF writers do, is read too since wbc 0.32.0: its planar files were decoded as grey copies before.

    >>> import tifffile
    >>> for big in (False, True):
    ...     buf = io.BytesIO(); tifffile.imwrite(buf, np.zeros((3, 4, 5), np.uint16), photometric="rgb", bigtiff=big)
    ...     print(_tiff_value(buf.getvalue(), 284), _tiff_value(buf.getvalue(), 258), _tiff_value(buf.getvalue(), 274))
    2 16 None
    2 16 None
    """
    order: Literal["little", "big"] = "little" if tiff[:2] == b"II" else "big"
    if tiff[:2] not in (b"II", b"MM") or len(tiff) < 8:
        return None
    big = int.from_bytes(tiff[2:4], order) == 43
    # classic: 4-byte offsets, a 2-byte entry count, 12-byte entries with a 4-byte value field at 8;
    # BigTIFF: 8-byte offsets (the first at 8), an 8-byte count, 20-byte entries with an 8-byte value field at 12
    word, count_size, entry, value_at = (8, 8, 20, 12) if big else (4, 2, 12, 8)
    at = int.from_bytes(tiff[8:16] if big else tiff[4:8], order)
    n = int.from_bytes(tiff[at : at + count_size], order) if at + count_size <= len(tiff) else 0
    first = at + count_size
    for e in range(first, min(first + entry * n, len(tiff) - entry + 1), entry):
        if int.from_bytes(tiff[e : e + 2], order) == tag:
            size = {3: 2, 4: 4, 16: 8}.get(int.from_bytes(tiff[e + 2 : e + 4], order))
            if size is None:
                return None
            count = int.from_bytes(tiff[e + 4 : e + value_at], order)
            inline = size * count <= word
            where = e + value_at if inline else int.from_bytes(tiff[e + value_at : e + value_at + word], order)
            return int.from_bytes(tiff[where : where + size], order) if where + size <= len(tiff) else None
    return None


def _planar_deep_tiff(data: bytes) -> bool:
    """Whether ``data`` is a TIFF whose colour samples are stored as separate planes (PlanarConfiguration 2) at more
    than 8 bits: OpenCV 4.14 and Pillow read such a file as if its samples were interleaved, three grey copies of the
    image side by side over noise, which `wbc classify` answered with a confident class and `wbc analyze` called no
    smear (before wbc 0.32.0; a BigTIFF's still was, :func:`_tiff_value`). tifffile writes one for any (3, H, W) array,
    as several microscope packages do. 8-bit planar TIFFs OpenCV reads right."""
    return data[:4] in _TIFF_MAGICS and _tiff_value(data, 284) == 2 and (_tiff_value(data, 258) or 8) > 8


def _decode_planar_tiff(data: bytes, name: str) -> np.ndarray:
    """The first image of a TIFF with separate colour planes (:func:`_planar_deep_tiff`) through tifffile (a
    dependency of scikit-image, and so of wbc), as BGR(A) like OpenCV; a file it cannot decode (a compression it needs
    ``imagecodecs`` for, such as LZW) is refused in one line naming the remedy."""
    try:
        import tifffile

        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            page = tif.pages[0]
            arr = np.asarray(page.asarray(maxworkers=1))
            planes = int(getattr(page, "planarconfig", 1)) == 2
    except Exception as exc:  # ImportError, or whatever tifffile raises on a damaged or unsupported file
        raise ImageReadError(f"{name}: TIFF with separate colour planes at more than 8 bits could not be decoded "
                             f"({pillow_reason(exc)}); save it with contiguous (chunky) samples") from None
    if planes and arr.ndim == 3:
        arr = np.moveaxis(arr, 0, -1)  # (samples, H, W) -> (H, W, samples)
    if arr.ndim == 3 and arr.shape[2] >= 3:  # RGB(A) -> BGR(A), as OpenCV gives
        arr = np.concatenate([arr[:, :, 2::-1], arr[:, :, 3:]], axis=2)
    return np.ascontiguousarray(arr)


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation (1-8) an image file's bytes carry, 1 when none: how a phone or camera says its stored
    pixels are to be turned (6: 90 degrees clockwise) to show the picture as it was taken, as every viewer and browser
    does. A JPEG's is read from its header by hand (a few microseconds, before every decode in `wbc classify`); other
    formats' (PNG, TIFF, WebP) through Pillow, which opens files lazily.

    >>> from PIL import Image
    >>> buf = io.BytesIO(); exif = Image.Exif(); exif[0x0112] = 6
    >>> Image.new("RGB", (8, 4)).save(buf, "JPEG", exif=exif)
    >>> exif_orientation(buf.getvalue()), exif_orientation(buf.getvalue()[:2] + b"not a jpeg")
    (6, 1)
    """
    if data[:2] == b"\xff\xd8":
        for marker, i in _jpeg_markers(data):
            if marker == 0xE1 and data[i + 4 : i + 10] == b"Exif\x00\x00":  # APP1: EXIF (another APP1 may be XMP)
                return _tiff_orientation(data[i + 10 : i + 2 + int.from_bytes(data[i + 2 : i + 4], "big")])
        return 1
    if not (data[:8] == b"\x89PNG\r\n\x1a\n" or data[:4] in _TIFF_MAGICS
            or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")):
        return 1  # formats without EXIF (BMP, GIF) or that Pillow does not open: as stored
    from PIL import Image

    try:  # a damaged header's "Corrupt EXIF data" is not shown (_PILLOW_FILE_WARNINGS)
        with Image.open(io.BytesIO(data)) as im:
            value = int(im.getexif().get(0x0112, 1))
    except Exception:  # an unreadable header: the decoder names the problem
        return 1
    return value if 1 <= value <= 8 else 1


#: EXIF orientation -> (transpose, flip the rows, flip the columns) that shows the stored pixels as viewers do.
_ORIENTATIONS: dict[int, tuple[bool, bool, bool]] = {
    2: (False, False, True), 3: (False, True, True), 4: (False, True, False), 5: (True, False, False),
    6: (True, False, True), 7: (True, True, True), 8: (True, True, False),
}


def orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """``arr`` (H, W[, C]) turned and mirrored as EXIF ``orientation`` (:func:`exif_orientation`) says to show it
    (the same pixels as Pillow's ``ImageOps.exif_transpose``).

    >>> a = np.arange(6).reshape(2, 3)
    >>> orient(a, 6).tolist(), orient(a, 1) is a  # 6: 90 degrees clockwise
    ([[3, 0], [4, 1], [5, 2]], True)
    """
    if orientation not in _ORIENTATIONS:
        return arr
    transpose, rows, cols = _ORIENTATIONS[orientation]
    arr = arr.swapaxes(0, 1) if transpose else arr
    return np.ascontiguousarray(arr[:: -1 if rows else 1, :: -1 if cols else 1])


def _png_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from a PNG's IHDR chunk; None when ``data`` is not a PNG."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR" or len(data) < 24:
        return None
    return int.from_bytes(data[20:24], "big"), int.from_bytes(data[16:20], "big")


#: A Radiance resolution string as OpenCV reads it (``sscanf("-Y %d +X %d")``: any spacing, a ``+`` on the numbers).
_RADIANCE_SIZE = re.compile(rb"-Y\s*\+?([0-9]+)\s*\+X\s*\+?([0-9]+)")


def _radiance_size(data: bytes, name: str) -> tuple[int, int] | None:
    """(height, width) of a Radiance RGBE (``.hdr``) file; None when ``data`` is not one.

    Pillow cannot read the format and OpenCV can, to float32 RGB, and its run-length coding holds ~16 pixels a
    byte: a 3 MB upload becomes gigabytes. OpenCV reads the header line by line in 127-byte pieces, so where it sees
    the header end is not for us to guess: every resolution string in the file counts and the largest is the size
    (a real file has one). Without any, OpenCV cannot decode the file either.
    """
    if not data.startswith((b"#?RADIANCE", b"#?RGBE")):  # OpenCV's signatures of the format
        return None
    found = [(m[1].lstrip(b"0") or b"0", m[2].lstrip(b"0") or b"0") for m in _RADIANCE_SIZE.finditer(data)]
    if any(len(h) > 9 or len(w) > 9 for h, w in found):  # int() refuses 4,300 digits (ValueError: a 500 in 0.34.0)
        raise ImageTooLargeError(f"{name}: Radiance image far too large to decode (a side of a billion pixels or "
                                 "more in its resolution line)")
    sizes = [(int(h), int(w)) for h, w in found]
    if not sizes:
        raise ImageReadError(f"{name}: Radiance image without a resolution line (-Y height +X width)")
    return max(sizes, key=lambda hw: hw[0] * hw[1])


def image_size(data: bytes, name: str = "<bytes>") -> tuple[int, int] | None:
    """(height, width) read from the file's header, without decoding the pixels; None when unknown.

    PNG, JPEG and Radiance headers are parsed here; other formats through Pillow, which opens files lazily (the
    header only). A size so large that Pillow calls it a decompression bomb raises :class:`ImageReadError`.
    Formats neither reads (PFM, PAM, OpenEXR, JPEG XL) are left to OpenCV's own limit,
    ``OPENCV_IO_MAX_IMAGE_PIXELS``, which ``import wbc`` sets to :data:`MAX_PIXELS` (unless cv2 was imported
    first: :func:`opencv_limit_in_force`).
    """
    size = _png_size(data) or (_jpeg_size(data) if data[:2] == b"\xff\xd8" else None) or _radiance_size(data, name)
    if size is not None:
        return size
    from PIL import Image

    try:  # a bomb is refused below; a damaged header's warnings are not shown (_PILLOW_FILE_WARNINGS)
        with Image.open(io.BytesIO(data)) as im:
            return int(im.size[1]), int(im.size[0])
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{name}: image is far too large to decode "
                                 f"({exc.args[0].split(' exceeds')[0]})") from None
    except Exception:  # not a format Pillow knows: OpenCV may still read it
        return None


def opencv_limit_in_force() -> bool:
    """Whether OpenCV's own pixel limit is the one ``import wbc`` set (or the user's): OpenCV reads
    ``OPENCV_IO_MAX_IMAGE_PIXELS`` once, when cv2 is imported, so with ``import cv2`` before ``import wbc`` and the
    variable unset its default, 2**30 pixels, stays in force. Read from the package as ``import wbc`` left it, never
    imported from here: a foundation module imports nothing above it (docs/architecture.md's layers)."""
    return bool(getattr(sys.modules.get("wbc"), "_OPENCV_LIMIT_IN_FORCE", True))


def _opencv_only_format(data: bytes) -> bool:
    """Whether ``data`` starts like a format OpenCV decodes but neither wbc nor Pillow sizes from its header (PFM,
    PAM, OpenEXR, JPEG XL): only those need OpenCV's own pixel limit. Anything else whose size was not read (a
    truncated JPEG, a text file) is a broken file, left to the decoder's own message."""
    if data[:2] in (b"PF", b"Pf", b"P7") and data[2:3].isspace():
        return True
    return data.startswith((b"v/1\x01", b"\xff\x0a", b"\x00\x00\x00\x0cJXL \r\n\x87\n"))


def check_pixels(size: tuple[int, int], name: str, max_pixels: int) -> None:
    """Refuse an image of ``size`` (height, width) with more than ``max_pixels`` pixels, naming the file."""
    h, w = size
    if h * w > max_pixels:
        raise ImageTooLargeError(f"{name}: {w}x{h} pixels is over the limit of {max_pixels:,} pixels")


#: What Pillow raises on a malformed file: OSError (a truncated file; ``UnidentifiedImageError`` is one), ValueError,
#: SyntaxError (a PNG chunk whose length or CRC one flipped byte damaged: "broken PNG file") and EOFError (a file cut
#: inside a header). Before wbc 0.32.0 the last two escaped as a traceback that ended the whole `wbc classify` run.
PILLOW_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, SyntaxError, EOFError)
#: What decoders raise on malformed or oversized data; each becomes an ImageReadError naming the file.
DECODE_ERRORS: tuple[type[BaseException], ...] = (cv2.error, MemoryError, OverflowError, *PILLOW_ERRORS)


def decode_image(
    data: bytes, name: str = "<bytes>", min_size: int | None = None, max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    """Decode encoded image bytes to uint8 RGB.

    The size is read from the header first and an image over ``max_pixels`` is refused before any pixel
    is decoded (a few-MB PNG can hold billions of pixels). Every decoder failure, OpenCV's or Pillow's,
    becomes an :class:`ImageReadError` with a readable reason.

    ``min_size``: the caller will shrink the image so that its short side is about this many pixels;
    JPEGs are then decoded at 1/2, 1/4 or 1/8 scale directly (several times faster), never below it.
    """
    if not data:
        raise ImageReadError(f"{name}: file is empty")
    size = image_size(data, name)
    if size is not None:
        check_pixels(size, name, max_pixels)
    elif not opencv_limit_in_force() and _opencv_only_format(data):  # nothing would stop OpenCV decoding a bomb
        raise ImageReadError(f"{name}: its size cannot be read before decoding (not PNG, JPEG, Radiance or a format "
                             "Pillow opens), and OpenCV's pixel limit is off because cv2 was imported before wbc: "
                             "import wbc first, or set OPENCV_IO_MAX_IMAGE_PIXELS before importing cv2")
    icc = embedded_icc(data)
    if icc is not None and len(icc) > MAX_ICC_BYTES:  # since wbc 0.32.0; no real profile is near it
        raise ImageReadError(f"{name}: its embedded colour profile is over {MAX_ICC_BYTES >> 20} MB (a camera's is a "
                             "few KB), so its colours cannot be read as viewers show them; save it in sRGB")
    try:
        with _quiet_opencv():
            arr = _decode(data, name, size, min_size)
    except DECODE_ERRORS as exc:
        reason = str(exc).strip().splitlines()[-1][:160] if str(exc).strip() else exc.__class__.__name__
        raise ImageReadError(f"{name}: not a readable image ({exc.__class__.__name__}: {reason})") from None
    if arr.size == 0:
        raise ImageReadError(f"{name}: image has no pixels")
    check_pixels(arr.shape[:2], name, max_pixels)
    return to_srgb(_to_rgb8(arr, name), icc)


def _jpeg_icc(data: bytes) -> bytes | None:
    """The ICC profile a JPEG's APP2 segments carry (split over several when large), joined in their order."""
    parts: dict[int, bytes] = {}
    for marker, i in _jpeg_markers(data):
        if marker == 0xE2 and data[i + 4 : i + 16] == b"ICC_PROFILE\x00" and i + 18 <= len(data):
            parts[data[i + 16]] = data[i + 18 : i + 2 + int.from_bytes(data[i + 2 : i + 4], "big")]
    return b"".join(parts[k] for k in sorted(parts)) or None


def _png_icc(data: bytes) -> bytes | None:
    """The ICC profile of a PNG's iCCP chunk (before its image data), decompressed up to one byte over
    :data:`MAX_ICC_BYTES`: enough to tell that it is too large, without inflating a small file's 16 MB."""
    import zlib

    i = 8
    while i + 8 <= len(data):
        n, kind = int.from_bytes(data[i : i + 4], "big"), data[i + 4 : i + 8]
        if kind == b"iCCP":
            body = data[i + 8 : i + 8 + n]
            start = body.find(b"\x00") + 2  # after the profile's name and the compression method
            try:
                return zlib.decompressobj().decompress(body[start:], MAX_ICC_BYTES + 1) or None if start >= 2 else None
            except zlib.error:
                return None
        if kind in (b"IDAT", b"IEND"):
            return None
        i += 12 + n
    return None


def embedded_icc(data: bytes) -> bytes | None:
    """The ICC colour profile an image file embeds, None when none: a JPEG's and a PNG's read by hand (a few
    microseconds, before every decode), a TIFF's and a WebP's through Pillow's lazy open; other formats' are not read.
    A PNG's is inflated only to one byte over :data:`MAX_ICC_BYTES`, which :func:`decode_image` refuses.

    >>> from PIL import Image, ImageCms
    >>> icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    >>> for fmt in ("JPEG", "PNG", "TIFF", "WEBP"):
    ...     buf = io.BytesIO(); Image.new("RGB", (8, 8)).save(buf, fmt, icc_profile=icc)
    ...     assert embedded_icc(buf.getvalue()) == icc, fmt
    >>> embedded_icc(b"GIF89a") is None
    True
    """
    if data[:2] == b"\xff\xd8":
        return _jpeg_icc(data)
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return _png_icc(data)
    if not (data[:4] in _TIFF_MAGICS or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")):
        return None
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            icc = im.info.get("icc_profile")
    except Exception:  # an unreadable header: the decoder named the problem
        return None
    return bytes(icc) if icc else None


#: Transforms to sRGB built (:func:`_srgb_transform`), by the SHA-256 of their profile, most recently used last. Keyed
#: by a digest, not the profile: a cache keyed by the bytes kept each profile for the process's life, and 32 PNGs of
#: 16 KB whose profiles inflated to 16 MB, each refused, left a server 500 MB larger.
_TRANSFORMS: OrderedDict[bytes, Any] = OrderedDict()
_TRANSFORMS_LOCK = threading.Lock()
#: How many transforms :data:`_TRANSFORMS` keeps: a lab's cameras use one or two profiles.
_TRANSFORMS_KEPT = 32


def _srgb_transform(icc: bytes) -> Any:
    """A transform from the RGB profile ``icc`` to sRGB, built once per profile (:data:`_TRANSFORMS`); None for a
    profile that is no RGB one, is sRGB already, or cannot be read (:func:`_build_srgb_transform`)."""
    key = hashlib.sha256(icc).digest()
    with _TRANSFORMS_LOCK:
        if key in _TRANSFORMS:
            _TRANSFORMS.move_to_end(key)
            return _TRANSFORMS[key]
    transform = _build_srgb_transform(icc)  # outside the lock: two threads may build the same one, both alike
    with _TRANSFORMS_LOCK:
        _TRANSFORMS[key] = transform
        _TRANSFORMS.move_to_end(key)
        while len(_TRANSFORMS) > _TRANSFORMS_KEPT:
            _TRANSFORMS.popitem(last=False)
    return transform


def _build_srgb_transform(icc: bytes) -> Any:
    """A transform from the RGB profile ``icc`` to sRGB (relative colorimetric, as viewers show a matrix profile);
    None for a profile that is no RGB one (a CMYK JPEG's, a grey image's), is sRGB already by its description (nothing
    to change), or cannot be read: the image is then read as stored."""
    try:
        from PIL import ImageCms

        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if src.profile.xcolor_space.strip() != "RGB" or ImageCms.getProfileDescription(src).strip().lower(
                ).startswith("srgb"):
            return None
        srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
        # LittleCMS's own numbers (Pillow names them only since 10.x): relative colorimetric, and no pixel cache, as
        # the transform is shared by the decoding threads
        intent: Any = 1
        nocache: Any = 0x40
        return ImageCms.buildTransform(src, srgb, "RGB", "RGB", intent, nocache)
    except Exception:  # Pillow without LittleCMS, or a damaged profile
        return None


def to_srgb(rgb: np.ndarray, icc: bytes | None) -> np.ndarray:
    """``rgb`` (uint8, decoded from a file that embeds the ICC profile ``icc``) converted to sRGB, the colours the
    model was trained on, as a colour-managed viewer shows the file. Before wbc 0.32.0 the profile was ignored, so a
    cell saved in Adobe RGB (a microscope DSLR's setting) was read with other colours than it shows, and flagged
    unlike the training images where its sRGB copy was not; a ProPhoto-like one flagged every cell. ``rgb`` as it is
    without a profile, with an sRGB one, or with one that is no RGB profile or cannot be read (:func:`_srgb_transform`).
    """
    transform = _srgb_transform(icc) if icc else None
    if transform is None:
        return rgb
    from PIL import Image, ImageCms

    return np.asarray(ImageCms.applyTransform(Image.fromarray(rgb), transform))


def _decode(data: bytes, name: str, size: tuple[int, int] | None, min_size: int | None) -> np.ndarray:
    """OpenCV (reduced-size JPEG decoding when ``min_size`` allows), else Pillow; BGR(A) or grey, turned as its EXIF
    orientation says (:func:`exif_orientation`), as viewers show it: before wbc 0.31.0 a phone's JPEG came out as
    stored, so its boxes and outlines were where no viewer showed its cells. OpenCV's TIFF decoder turns the image
    itself; its other decoders, Pillow and tifffile (a TIFF of separate colour planes at more than 8 bits,
    :func:`_planar_deep_tiff`) leave it as stored."""
    is_jpeg = data[:2] == b"\xff\xd8"
    if is_jpeg and not jpeg_complete(data):
        raise ImageReadError(f"{name}: truncated JPEG (no end-of-image marker)")
    if _planar_deep_tiff(data):
        return orient(_decode_planar_tiff(data, name), exif_orientation(data))
    if data[:8] == b"\x89PNG\r\n\x1a\n" and not png_complete(data):
        # libpng prints its own error for a cut PNG, naming no file, and OpenCV fails even where only the end chunk is
        # missing; Pillow reads what there is or says why ("image file is truncated")
        return orient(_decode_with_pillow(data, name), exif_orientation(data))
    buf = np.frombuffer(data, np.uint8)
    if is_jpeg and min_size and size is not None:
        short = min(size)
        for factor, flag in ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4),
                             (2, cv2.IMREAD_REDUCED_COLOR_2)):
            if short // factor >= min_size:  # EXIF orientation applied here, as to the whole decoding below
                arr = cv2.imdecode(buf, flag | cv2.IMREAD_IGNORE_ORIENTATION)
                if arr is not None:
                    return orient(arr, exif_orientation(data))
                break
    arr = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if arr is None:
        return orient(_decode_with_pillow(data, name), exif_orientation(data))
    return arr if data[:4] in _TIFF_MAGICS else orient(arr, exif_orientation(data))


def _decode_with_pillow(data: bytes, name: str) -> np.ndarray:
    """Fallback for formats OpenCV cannot read; returns BGR(A) like OpenCV so conversion is shared."""
    from PIL import Image

    try:  # "Truncated File Read" names no file and is not shown (_PILLOW_FILE_WARNINGS): the error below says it
        with Image.open(io.BytesIO(data)) as opened:
            opened.load()
            im: Image.Image = opened
            if im.mode not in ("L", "RGB", "RGBA", "I;16", "I;16B", "I"):
                im = im.convert("RGBA" if "A" in im.mode else "RGB")
            arr = np.asarray(im)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{name}: image is far too large to decode ({exc})") from None
    except PILLOW_ERRORS as exc:
        raise ImageReadError(f"{name}: not a readable image ({pillow_reason(exc)})") from None
    if arr.dtype == np.int32:
        arr = np.clip(arr, 0, 65535).astype(np.uint16)
    if arr.ndim == 3 and arr.shape[2] >= 3:
        arr = np.concatenate([arr[:, :, 2::-1], arr[:, :, 3:]], axis=2)
    return arr


def pillow_reason(exc: BaseException) -> str:
    """Pillow's reason for refusing a file, on one line (at most 160 characters), for a message that names the file:
    "image file is truncated", "broken PNG file (chunk ...)". An unknown format keeps its class name, as Pillow's
    message would only repeat an in-memory object's address.

    >>> from PIL import UnidentifiedImageError
    >>> pillow_reason(OSError("image file is truncated")), pillow_reason(UnidentifiedImageError("cannot identify x"))
    ('image file is truncated', 'UnidentifiedImageError')
    >>> pillow_reason(EOFError())
    'EOFError'
    """
    from PIL import UnidentifiedImageError

    text = " ".join(str(exc).split())
    if isinstance(exc, UnidentifiedImageError) or not text:
        return exc.__class__.__name__
    return text[:160]


def _animated(data: bytes) -> bool:
    """Whether ``data`` is a GIF, or a PNG or WebP marked as animated (APNG's ``acTL`` chunk; WebP's VP8X animation
    flag): a file that may hold several frames, of which the decoders read the first."""
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return True
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        idat = data.find(b"IDAT")
        return b"acTL" in data[: idat if idat > 0 else len(data)]  # an APNG's control chunk comes before its image
    return data[:4] == b"RIFF" and data[8:16] == b"WEBPVP8X" and len(data) > 20 and bool(data[20] & 0x02)


def tiff_fields(data: bytes) -> int:
    """How many full-resolution images a TIFF file holds, or an animated GIF, PNG or WebP frames (1 for any other
    file), so that a run can say it analysed only the first. Pages marked as a reduced-resolution copy or a mask (a
    scanner's pyramid levels, thumbnails) are not counted. Before wbc 0.35.0 an animated file's frames were not
    counted: the cells of all but the first fell out of the count without a word.

    A best-effort count, never an error: the pages are read one by one, and a page whose directory cannot be read
    (a file cut short, as an interrupted copy or upload leaves a scanner's multi-field TIFF) ends the count, counted
    itself, as the file says another image follows. Before wbc 0.33.0 Pillow's page count raised ``TypeError``
    ("Missing dimensions") on such a file, and ``/analyze`` answered a field it had analysed "analysis failed".

    >>> from PIL import Image
    >>> buf = io.BytesIO()
    >>> Image.new("RGB", (8, 8)).save(buf, "TIFF", save_all=True, append_images=[Image.new("RGB", (8, 8))] * 2)
    >>> tiff_fields(buf.getvalue()), tiff_fields(b"\\xff\\xd8")
    (3, 1)
    """
    animated = _animated(data)
    if not animated and data[:4] not in _TIFF_MAGICS:
        return 1
    from PIL import Image

    if animated:
        try:
            with Image.open(io.BytesIO(data)) as im:
                return max(1, int(getattr(im, "n_frames", 1)))
        except Exception:  # frames Pillow cannot count: one image, as the decoder reads it
            return 1
    n = 0
    try:  # a damaged page's warnings name no file and are not shown (_PILLOW_FILE_WARNINGS)
        with Image.open(io.BytesIO(data)) as im:
            for i in range(10_000):
                try:
                    im.seek(i)
                except EOFError:  # the last page was read
                    break
                except Exception:  # this page's directory is damaged: an image the file holds, unread
                    n += 1
                    break
                kind = int(getattr(im, "tag_v2", {}).get(254, 0))  # NewSubfileType: reduced resolution 1, mask 4
                n += not kind & 0b101
    except Exception:  # a header Pillow cannot open: one image, as the decoder reads it
        pass
    return max(1, n)


def pages_warning(pages: int) -> str:
    """The field warning for a TIFF file of several images (:func:`tiff_fields`)."""
    return f"the file holds {pages} images; only the first was analysed: save each field as a file of its own"


def read_image(
    path: str | os.PathLike[str], min_size: int | None = None, max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    """Read an image file as uint8 RGB (H, W, 3), whatever its format, depth or channels.

    Images over ``max_pixels`` are refused from their header, before decoding (see :func:`decode_image`).

    >>> import tempfile, cv2, numpy as np
    >>> p = tempfile.mktemp(suffix=".png"); _ = cv2.imwrite(p, np.zeros((4, 5), np.uint16))
    >>> read_image(p).shape
    (4, 5, 3)
    """
    return decode_image(read_bytes(path), str(Path(path)), min_size=min_size, max_pixels=max_pixels)


def file_sha1(path: str | os.PathLike[str]) -> str:
    """The SHA-1 of a file's bytes, read in 1 MB pieces (the name a file's content is known by: duplicates, resumed
    runs, held-out files). An unreadable file raises OSError."""
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def not_a_regular_file(path: str | os.PathLike[str]) -> ImageReadError:
    """The error for a path that is neither a file nor a folder (a FIFO, a socket, a device): "no such file" named the
    wrong problem, and reading a FIFO waits for a writer, forever."""
    return ImageReadError(f"{path}: not a regular file")


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """A file's bytes, or an :class:`ImageReadError` naming it: missing, a directory, not a regular file
    (:func:`not_a_regular_file`; before wbc 0.36.0 the Python API waited forever on a FIFO), over
    :data:`MAX_FILE_BYTES` (checked before reading, and again as it is read: a file may grow), unreadable."""
    p = Path(path)
    try:
        st = p.stat()
        if stat.S_ISDIR(st.st_mode):
            raise ImageReadError(f"{p}: is a directory, not an image")
        if not stat.S_ISREG(st.st_mode):
            raise not_a_regular_file(p)
        if st.st_size > MAX_FILE_BYTES:
            raise _file_too_large(p, st.st_size)
        with p.open("rb") as f:
            # What stat said and a byte more: read(n) allocates n bytes up front, so read(MAX_FILE_BYTES + 1) took
            # 2 GiB of address space per file (MemoryError under ``ulimit -v``, SGE h_vmem, strict overcommit).
            data = f.read(st.st_size + 1)
            if len(data) > st.st_size:  # grown since stat (or a /proc file): on in 1 MiB steps, up to the limit
                parts, size = [data], len(data)
                while size <= MAX_FILE_BYTES and (part := f.read(min(1 << 20, MAX_FILE_BYTES + 1 - size))):
                    parts.append(part)
                    size += len(part)
                data = b"".join(parts)
    except FileNotFoundError:
        raise ImageReadError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise ImageReadError(f"{p}: is a directory, not an image") from None
    except OSError as exc:
        raise ImageReadError(f"{p}: cannot read ({exc.strerror or exc})") from None
    if len(data) > MAX_FILE_BYTES:
        raise _file_too_large(p, len(data))
    return data


def _file_too_large(p: Path, size: int) -> ImageReadError:
    return ImageReadError(f"{p}: file is {size / 2**20:,.1f} MiB, over the limit of {MAX_FILE_BYTES / 2**20:,g} MiB "
                          "for an image file (wbc.io.MAX_FILE_BYTES); crop or tile a scan into fields first")


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def files_under(folder: str | os.PathLike[str], skipped: list[str] | None = None) -> list[Path]:
    """Every file in ``folder`` and its subfolders, sorted, leaving out hidden files and hidden folders.

    ``skipped``: given a list, what the walk had to leave out is appended to it, one line each naming the path
    (:func:`left_out_under`): a folder it may not list (another user's day on a lab share) and a link named as an
    image whose file is missing; before wbc 0.32.0 both were dropped without a word.

    Hidden folders (``.thumbnails``, ``.Trash-1000``, ``.ipynb_checkpoints``) hold copies and thumbnails of a lab's
    images, which would count the same cells twice. Linked subfolders are followed, as a lab links today's scans
    into its folder, each real folder once: the real folders under ``folder`` first, then the links in sorted
    order, so a file is named by its real path when it has one, whatever order the file system lists folders in.
    A link to a folder that holds the link (``up -> ..``, a link to ``folder`` or above it) is not followed: it
    would loop, or count the other slides beside ``folder``.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> for n in ("b/1.jpg", "a.jpg", ".thumbnails/a.jpg", "b/.c.jpg"):
    ...     (d / n).parent.mkdir(exist_ok=True); _ = (d / n).write_bytes(b"x")
    >>> (d / "b" / "up").symlink_to(d)
    >>> (d / "0b").symlink_to(d / "b")
    >>> [str(p.relative_to(d)) for p in files_under(d)]
    ['a.jpg', 'b/1.jpg']
    """
    seen: set[str] = set()
    found: list[Path] = []
    links: list[str] = []

    def unlistable(exc: OSError) -> None:
        if skipped is not None:
            skipped.append(f"{exc.filename}: cannot list the folder ({exc.strerror or exc})")

    def walk(start: str) -> None:
        """The real folders under ``start``; the linked folders met are queued in ``links``, in sorted order."""
        # followlinks=False: a link is listed in dirs, not entered
        for top, dirs, files in os.walk(start, onerror=unlistable):
            real = os.path.realpath(top)
            if real in seen:
                dirs[:] = []
                continue
            seen.add(real)
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            links.extend(os.path.join(top, d) for d in dirs if os.path.islink(os.path.join(top, d)))
            for f in files:
                path = os.path.join(top, f)
                if f.startswith("."):
                    continue
                if os.path.isfile(path):
                    found.append(Path(path))
                elif skipped is not None and os.path.islink(path) and is_image_file(Path(f)):
                    skipped.append(f"{path}: link to a missing file ({os.readlink(path)})")

    def holds(outer: str, inner: str) -> bool:
        try:
            return os.path.commonpath([outer, inner]) == outer
        except ValueError:  # on two drives (Windows)
            return False

    root = os.path.realpath(folder)
    walk(os.fspath(folder))
    for link in links:  # grows while it is read: links inside a linked folder come after
        target = os.path.realpath(link)
        if target in seen or holds(target, root) or holds(target, os.path.realpath(os.path.dirname(link))):
            continue
        walk(link)
    if skipped is not None:
        skipped.sort()
    return sorted(found)


def left_out_under(inputs: Iterable[str | os.PathLike[str]]) -> list[str]:
    """What the folders among ``inputs`` hold that a run leaves out for a reason of its own, one line each naming the
    path (:func:`files_under`'s ``skipped``): a subfolder this user may not list and a link named as an image whose
    file is missing. The commands list them as skipped, as they list unreadable files.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> (d / "cell.png").symlink_to(d / "gone.png"); (d / "notes.txt").symlink_to(d / "gone.txt")
    >>> [m.split(": ", 1)[1] for m in left_out_under([d])] == [f"link to a missing file ({d / 'gone.png'})"]
    True
    """
    skipped: list[str] = []
    for item in (Path(i) for i in inputs):
        if item.is_dir():
            files_under(item, skipped)
    return skipped


def iter_image_paths(inputs: Iterable[str | os.PathLike[str]]) -> Iterator[Path]:
    """Yield image files from files and folders (folders recursively, sorted), in a stable order.

    A missing input raises :class:`ImageReadError`; a file given explicitly is yielded even if its
    extension is unusual, so that the reader reports what is wrong with it.
    """
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            yield from (q for q in files_under(p) if is_image_file(q))
        elif p.is_file():
            yield p
        elif p.exists():  # a FIFO, a socket, a device
            raise not_a_regular_file(p)
        else:
            raise ImageReadError(f"{p}: no such file or folder")


def no_images_message(inputs: Iterable[str | os.PathLike[str]]) -> str:
    """The one-line message for inputs that hold no image file, saying what they hold instead, so a folder of
    another format is not mistaken for an empty one.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / "cell_1.jxl").write_bytes(b"x"), (d / "notes.txt").write_text("x")
    >>> msg = no_images_message([d]).split(": ", 1)[1]
    >>> msg.split("; ")[0], msg.split("; ")[1][:37]
    ('2 other files (.jxl 1, .txt 1)', 'images end in .avif, .bmp, .gif, .j2k')
    """
    items = [Path(i) for i in inputs]
    suffixes: Counter[str] = Counter()
    skipped: list[str] = []
    for item in items:
        files = files_under(item, skipped) if item.is_dir() else [item] if item.is_file() else []
        for q in files:
            suffixes[q.suffix.lower() or "(no extension)"] += 1
    where = ", ".join(map(str, items))
    if skipped:  # a folder it may not list is no empty folder
        more = f" (and {len(skipped) - 1} more left out)" if len(skipped) > 1 else ""
        return f"no image files found in {where}: {skipped[0].removeprefix(where + ': ')}{more}"
    if not suffixes:
        return f"no image files in {where}: it holds no files"
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(suffixes.items(), key=lambda kv: (-kv[1], kv[0]))[:6])
    n = sum(suffixes.values())
    return (f"no image files in {where}: {n} other file{'s' if n != 1 else ''} ({kinds}); images end in "
            + ", ".join(sorted(IMAGE_EXTENSIONS)))


def foreign_images_note(inputs: Iterable[str | os.PathLike[str]]) -> str | None:
    """One line naming the files in the folders among ``inputs`` that are images wbc cannot read
    (:data:`FOREIGN_IMAGE_EXTENSIONS`), left out of the run, or None when there are none.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = [(d / n).write_bytes(b"x") for n in ("a.jpg", "b.HEIC", "c.heic", "notes.txt")]
    >>> foreign_images_note([d])
    '2 files in formats wbc cannot read were left out (.heic 2): save them as JPEG, PNG or TIFF to include them'
    >>> foreign_images_note([d / "a.jpg"]) is None
    True
    """
    suffixes: Counter[str] = Counter()
    for item in (Path(i) for i in inputs):
        if item.is_dir():
            for q in files_under(item):
                if q.suffix.lower() in FOREIGN_IMAGE_EXTENSIONS:
                    suffixes[q.suffix.lower()] += 1
    if not suffixes:
        return None
    n = sum(suffixes.values())
    kinds = ", ".join(f"{k} {c}" for k, c in sorted(suffixes.items(), key=lambda kv: (-kv[1], kv[0])))
    return (f"{n} file{'s' if n != 1 else ''} in formats wbc cannot read {'were' if n != 1 else 'was'} left out "
            f"({kinds}): save them as JPEG, PNG or TIFF to include them")


def check_output_file(path: str | os.PathLike[str]) -> Path:
    """Check, before any work, that a file can be written at ``path`` (its folder is created if missing).

    Raises :class:`WbcError` with one line naming the path: it is a folder, its parent is a file, or the
    folder is not writable. A probe file is created and removed, so permissions, read-only mounts and full
    disks are all caught, not guessed from mode bits.
    """
    from wbc.errors import WbcError

    p = Path(path)
    if p.is_dir():
        raise WbcError(f"{p}: is a folder; give a file name for the output")
    target, stream = output_target(p)
    if stream:  # /dev/stdout, a FIFO: written in place (a probe file beside it could not be made as non-root)
        return p
    parent = target.parent
    for q in (parent, *parent.parents):
        if q.exists() and not q.is_dir():
            raise WbcError(f"{p}: cannot be created because {q} is a file, not a folder")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{p.name}.probe.", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise WbcError(f"{p}: cannot write there ({exc.strerror or exc})") from None
    return p


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: Read once at import: setting the umask to read it would race with other threads creating files.
_UMASK: int = _read_umask()


#: A process's open file as /proc shows it (``/proc/self``, ``/dev/fd`` and ``/proc/thread-self`` resolve to these).
_FD_PATH = re.compile(r"/proc/(\d+)(?:/task/\d+)?/fd/(\d+)")


def fd_link(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """``(pid, fd)`` when ``path``'s chain of links passes through a process's open files (``/dev/stdout``,
    ``/dev/stderr``, ``/dev/fd/N``, ``/proc/self/fd/N``), else None. Such a link resolves to the file the shell opened
    (``> all.csv``), which is a stream to write into, never a file to rename over."""
    q = Path(path)
    for _ in range(40):  # the kernel's own limit on a chain of links
        m = _FD_PATH.fullmatch(os.path.join(os.path.realpath(q.parent), q.name))
        if m:
            return int(m[1]), int(m[2])
        if not q.is_symlink():
            return None
        t = Path(os.readlink(q))
        q = t if t.is_absolute() else q.parent / t
    return None


def output_target(path: str | os.PathLike[str]) -> tuple[Path, bool]:
    """Where a write to ``path`` lands, and whether it is a stream. A symbolic link's target is written, never the
    link (before wbc 0.33.0 the link was replaced by a file: a lab's ``latest.csv -> /share/today.csv`` left the shared
    file old, and ``-o /dev/stdout`` as root replaced the container's ``/dev/stdout`` link). A path that exists and is
    no regular file or folder (a FIFO, a terminal, ``/dev/stdout`` on a pipe), or is reached through a process's open
    files (``/dev/stdout`` with the shell's ``> all.csv`` or ``>> all.csv``: :func:`fd_link`), is a stream: it cannot
    be swapped atomically, so it is written in place, as named (renamed over, the shell's file lost its earlier rows).

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> (d / "latest.csv").symlink_to("today.csv")
    >>> output_target(d / "latest.csv") == (d.resolve() / "today.csv", False)
    True
    """
    p = Path(path)
    if p.exists() and ((not p.is_file() and not p.is_dir()) or fd_link(p) is not None):
        return p, True
    return Path(os.path.realpath(p)), False


def _write_stream(p: Path, data: bytes) -> None:
    """Write ``data`` into the stream ``p`` in place. This process's own descriptor (``/dev/stdout``) is written
    through a duplicate, so the bytes land at the shell's offset and wbc's later lines on it follow them (a file opened
    anew at the start would overwrite them, or they it); another open regular file is appended to (``>>`` wants its
    end, and ``>`` has already emptied it); anything else (a FIFO, a terminal) is opened for writing."""
    fd = fd_link(p)
    if fd is not None and fd[0] == os.getpid():
        for stream in (sys.stdout, sys.stderr):  # what Python still holds for that descriptor goes first
            with contextlib.suppress(Exception):
                stream.flush()
        with os.fdopen(os.dup(fd[1]), "wb") as fh:
            fh.write(data)
        return
    with open(p, "ab" if p.is_file() else "wb") as fh:
        fh.write(data)


#: The longest file name most disks take (ext4, XFS, NTFS, APFS: 255 bytes).
NAME_MAX = 255


def temp_prefix(name: str) -> str:
    """The prefix of the temporary file that :func:`atomic_write_bytes` writes before it is renamed to ``name``:
    ``.<name>.``, or, where that with :func:`tempfile.mkstemp`'s 8 random characters would pass :data:`NAME_MAX`
    bytes, a hash of ``name`` keeping its suffix (so a killed run's leftovers are still known by it). Before wbc
    0.35.0 a legal name of 246-255 bytes could not be written at all: its temporary name was too long.

    >>> temp_prefix("x.png"), temp_prefix("m" * 246 + ".png")
    ('.x.png.', '.122fded38badbebd.png.')
    """
    prefix = f".{name}."
    if len(os.fsencode(prefix)) + 8 <= NAME_MAX:
        return prefix
    suffix = Path(name).suffix if len(os.fsencode(Path(name).suffix)) <= 16 else ""
    return f".{hashlib.sha1(os.fsencode(name)).hexdigest()[:16]}{suffix}."


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers never see a half-written file: into a temporary file beside it,
    then renamed over it. Through a symbolic link the file it points to is replaced, and a stream (a FIFO,
    ``/dev/stdout``) is written in place (:func:`output_target`)."""
    p, stream = output_target(path)
    if stream:
        _write_stream(p, data)
        return
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(p.name), dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs are meant to be shared
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """``text`` as UTF-8, written atomically. A file name that is no UTF-8 (Latin-1 from an old camera or a Windows
    share: Python holds its bytes as surrogates) is written as its own bytes, not refused with an exception."""
    atomic_write_bytes(path, text.encode("utf-8", "surrogateescape"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """``obj`` as indented JSON, written atomically; a NaN or infinite number (an undefined metric) is written as
    null, as JSON has no such numbers (Python's ``json`` would write a bare ``NaN`` that strict parsers refuse).

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "m.json"
    >>> atomic_write_json(p, {"ap50": float("nan"), "n": [1, float("inf")]})
    >>> json.loads(p.read_text())
    {'ap50': None, 'n': [1, None]}
    """
    atomic_write_text(path, json.dumps(_finite(obj), indent=2, ensure_ascii=False) + "\n")


def _finite(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float inside dicts, lists and tuples replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def atomic_write_csv(
    path: str | os.PathLike[str], header: Sequence[str], rows: Iterable[Sequence[Any]]
) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def write_image(path: str | os.PathLike[str], rgb: np.ndarray) -> None:
    """Encode an RGB array by the file's extension and write it atomically."""
    p = Path(path)
    ok, enc = cv2.imencode(p.suffix or ".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:
        raise ImageReadError(f"{p}: cannot encode image")
    atomic_write_bytes(p, enc.tobytes())
