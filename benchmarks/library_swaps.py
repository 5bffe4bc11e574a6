"""Library calls against the hand-written code they could replace (issue 12): same numbers, what they cost.

Measures, on this machine, per call:

* Clopper-Pearson: ``beta.ppf`` at the two bounds (``wbc.counts.clopper_pearson``) against
  ``scipy.stats.binomtest(k, n).proportion_ci(method="exact")``, over every k for n = 1..200;
* the image size from a JPEG header: the SOF-marker parser against Pillow's lazy ``Image.open(...).size``,
  on real PBC cells and BCCD fields, next to the cost of decoding the same file (``wbc.io.decode_image``
  at the classifier's size), which is what the header read sits in front of (``--files`` of them; a data root without
  PBC images is one ``error:`` line, since wbc 0.34.0: before, a checkout away from ``../shared/data`` left this half
  out without a word, ``$WBC_DATA_DIR`` unread; ``--files 0`` skips it).

    python benchmarks/library_swaps.py --output benchmarks/results/library_swaps.json
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]  # the repository: relative defaults are resolved against it


def per_call_us(fn: Callable[[], Any], calls: int, repeats: int = 5) -> float:
    """Best of ``repeats`` of the mean time of one call over a loop of ``calls`` (microseconds)."""
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, (time.perf_counter() - t) / calls * 1e6)
    return best


def clopper_pearson_check() -> dict[str, Any]:
    from scipy.stats import binomtest

    from wbc.counts import clopper_pearson

    def library(k: int, n: int) -> tuple[float, float]:
        ci = binomtest(k, n).proportion_ci(0.95, method="exact")
        return float(ci.low), float(ci.high)

    pairs = [(k, n) for n in range(1, 201) for k in range(n + 1)]
    diff = max(max(abs(a - b) for a, b in zip(clopper_pearson(k, n), library(k, n), strict=True)) for k, n in pairs)
    sample = [(5, 100), (0, 100), (47, 200), (3, 10), (250, 500)]
    return {
        "pairs_compared": len(pairs),
        "max_abs_difference": diff,
        "by_hand_us": per_call_us(lambda: [clopper_pearson(k, n) for k, n in sample], len(sample)),
        "binomtest_us": per_call_us(lambda: [library(k, n) for k, n in sample], len(sample)),
    }


def jpeg_header_check(data_root: Path, n_files: int) -> dict[str, Any]:
    from PIL import Image

    from wbc.io import _jpeg_size, decode_image

    files = sorted(data_root.glob("pbc/*/*.jpg"))[:: max(1, 10986 // n_files)][:n_files]
    files += sorted(data_root.glob("bccd/JPEGImages/*.jpg"))[: max(1, n_files // 10)]
    blobs = [f.read_bytes() for f in files]

    def pillow(b: bytes) -> tuple[int, int]:
        with Image.open(io.BytesIO(b)) as im:
            return int(im.size[1]), int(im.size[0])

    agree = sum(_jpeg_size(b) == pillow(b) for b in blobs)
    return {
        "files": len(blobs),
        "sizes_agree": agree,
        "by_hand_us": per_call_us(lambda: [_jpeg_size(b) for b in blobs], len(blobs)),
        "pillow_us": per_call_us(lambda: [pillow(b) for b in blobs], len(blobs)),
        "decode_image_us": per_call_us(lambda: [decode_image(b, min_size=160) for b in blobs], len(blobs), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", "--data", type=Path, default=None,
                    help="data root (default: $WBC_DATA_DIR or ../shared/data)")
    ap.add_argument("--files", type=int, default=400, help="PBC cells for the JPEG header half (0: skip it)")
    ap.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/library_swaps.json")
    args = ap.parse_args()
    if args.files < 0:
        raise SystemExit(f"error: --files {args.files}: must be 0 or more")

    from _provenance import provenance

    from wbc.errors import WbcError
    from wbc.io import atomic_write_json
    from wbc.paths import data_root

    root = data_root(args.data_root)
    if args.files and not any(root.glob("pbc/*/*.jpg")):
        raise WbcError(f"{root / 'pbc'}: no PBC images for the JPEG header half (--files 0 skips it)")
    res: dict[str, Any] = {"machine": platform.processor() or platform.machine(),
                           "clopper_pearson": clopper_pearson_check(), "provenance": provenance(__file__)}
    if args.files:
        res["jpeg_header"] = jpeg_header_check(root, args.files)
    atomic_write_json(args.output, res)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    from _run import run

    run(main)
