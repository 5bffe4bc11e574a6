"""WBC detection on large fields: BCCD fields tiled into mosaics of up to 6,400 x 4,800 px.

A slide scanner's region or a camera's whole frame holds many fields' worth of cells. Each mosaic is k x k BCCD
fields (their VOC boxes shifted with them), each shown at ``--tile-scale`` of its 640 x 480 (0.5: 80 px WBCs, as
at a lower magnification), segmented whole with the default segmenter; recall and precision at IoU 0.5 against
the boxes, and seconds per mosaic.

    python benchmarks/large_fields.py --split trainval --tile-scale 0.5 --grids 2 4 8 12 20 \
        --output benchmarks/results/large_fields.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parents[1]  # the repository: relative defaults are resolved against it


def score(found: list[tuple[float, float, float, float]], scores: list[float],
          truth: list[tuple[float, float, float, float]]) -> dict:
    """True positives, false positives and missed cells at IoU 0.5, matched as `wbc evaluate-smears` matches."""
    from wbc.evaluate.smears import match_detections

    tp = int(sum(match_detections(found, scores, truth, 0.5)[0]))
    return {"tp": tp, "fp": len(found) - tp, "fn": len(truth) - tp}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--grids", type=int, nargs="+", default=[1, 2, 6, 10], help="k for k x k fields a mosaic")
    ap.add_argument("--split", default="val", help="BCCD split (val: for choosing; never tune on test)")
    ap.add_argument("--segmenter", default="auto")
    ap.add_argument("--tile-scale", type=float, default=1.0, help="each field's size in the mosaic (of 640 x 480)")
    ap.add_argument("--pixel-size", type=float, default=None, help="micrometres per pixel (`wbc analyze --pixel-size`)")
    ap.add_argument("--data", "--data-root", type=Path, default=None,  # --data-root: as load_bccd's message says
                    help="data root (default: $WBC_DATA_DIR or ../shared/data)")
    ap.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/large_fields.json")
    args = ap.parse_args(argv)

    from _provenance import provenance

    from wbc.evaluate.smears import load_bccd
    from wbc.io import atomic_write_json, read_image
    from wbc.paths import data_root
    from wbc.segment import get_segmenter

    items = load_bccd(args.data or data_root(), args.split)
    seg = get_segmenter(args.segmenter, threads=2, pixel_size=args.pixel_size)
    res: dict = {"segmenter": getattr(seg, "model_id", args.segmenter), "split": args.split,
                 "tile_scale": args.tile_scale, "pixel_size": args.pixel_size, "mosaics": {},
                 "provenance": provenance(__file__, argv)}
    for k in args.grids:
        picked = [items[i % len(items)] for i in range(k * k)]
        h, w = round(480 * args.tile_scale), round(640 * args.tile_scale)
        tiles = [cv2.resize(read_image(it.image)[:480, :640], (w, h), interpolation=cv2.INTER_AREA) for it in picked]
        mosaic = np.zeros((k * h, k * w, 3), np.uint8)
        truth = []
        for n, (it, rgb) in enumerate(zip(picked, tiles, strict=True)):
            y, x = (n // k) * h, (n % k) * w
            mosaic[y : y + h, x : x + w] = rgb
            f = args.tile_scale
            truth += [(b[0] * f + x, b[1] * f + y, b[2] * f + x, b[3] * f + y) for b in it.wbc_boxes]
        t0 = time.perf_counter()
        cells = seg.segment(mosaic)
        seconds = time.perf_counter() - t0
        s = score([tuple(float(v) for v in c.box) for c in cells], [float(c.score) for c in cells], truth)
        s.update(recall=s["tp"] / max(1, len(truth)), precision=s["tp"] / max(1, len(cells)), seconds=seconds,
                 size=[k * w, k * h], wbc=len(truth))
        res["mosaics"][f"{k}x{k}"] = s
        print(f"{k}x{k} ({k * w} x {k * h}): {s['tp']}/{len(truth)} found, {s['fp']} false, {seconds:.1f} s",
              flush=True)
    atomic_write_json(args.output, res)
    return 0


if __name__ == "__main__":
    from _run import run

    run(main)
