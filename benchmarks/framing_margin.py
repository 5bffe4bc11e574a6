"""How far `wbc adapt --no-labels` scores every-cell re-framing ("all") and the lab's one magnification ("lab")
above the model's own framing ("band"), on PBC validation cells as PBC frames them and padded 2x: the noise and the
signal the framing margins (``MIN_GAIN``, ``LAB_MIN_GAIN``) must separate.

Each draw takes ``--per-class`` random validation cells of each WBC type (seed ``--seed``), writes them as they are and
padded 2x with their own background (a lab whose crops show the cell at half PBC's size), and runs
:func:`wbc.adapt_unlabelled.adapt_unlabelled` (5-part, no colour mapping) on each; a gap is the "all" (or "lab")
framing's score minus the "band" framing's. It chose ``MIN_GAIN = 0.1`` (wbc 0.9.0) and ``LAB_MIN_GAIN``
(wbc 0.10.0; docs/generalisation.md):

    python benchmarks/framing_margin.py --models src/wbc/models/default/wbc_classifier.onnx OLD.onnx \\
        --output benchmarks/results/framing_margin.json
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository: relative defaults are resolved against it


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=[None], help="classifier ONNX files (default: the shipped model)")
    ap.add_argument("--manifest", type=Path, default=ROOT / "runs/default/manifest.csv")
    ap.add_argument("--draws", type=int, default=6)
    ap.add_argument("--per-class", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--data", type=Path, default=None, help="data root (default: $WBC_DATA_DIR or ../shared/data)")
    ap.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/framing_margin.json")
    args = ap.parse_args(argv)

    import cv2
    import numpy as np
    from _provenance import provenance

    from wbc.adapt_unlabelled import LAB_MIN_GAIN, MIN_CELLS, MIN_GAIN, adapt_unlabelled
    from wbc.data import read_manifest
    from wbc.io import atomic_write_json, read_image, write_image
    from wbc.labels import WBC5
    from wbc.model import load_model
    from wbc.paths import data_root
    from wbc.reframe import background_colour

    if args.per_class * len(WBC5) < MIN_CELLS:  # wbc adapt --no-labels needs that many cells
        raise SystemExit(f"error: --per-class {args.per_class}: a draw needs at least {MIN_CELLS} cells, "
                         f"{-(-MIN_CELLS // len(WBC5))} per class")
    val = [s for s in read_manifest(args.manifest, "val", data_root(args.data)) if s.label in WBC5]
    if not val:
        raise SystemExit(f"error: {args.manifest}: no validation cells of the five WBC types")
    rng = np.random.default_rng(args.seed)
    names = {m: f"{(i := load_model(m).info).model_id} ({i.version})" for m in args.models}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for d in range(args.draws):
            base = Path(tmp) / str(d)
            for c in WBC5:
                of_class = [s for s in val if s.label == c]
                for i in rng.permutation(len(of_class))[: args.per_class]:
                    s = of_class[int(i)]
                    rgb = read_image(s.path)
                    h, w = rgb.shape[:2]
                    wide = cv2.copyMakeBorder(rgb, h // 2, h // 2, w // 2, w // 2, cv2.BORDER_CONSTANT,
                                              value=background_colour(rgb))
                    write_image(base / "native" / c / f"{Path(s.path).stem}.png", rgb)
                    write_image(base / "padded_2x" / c / f"{Path(s.path).stem}.png", wide)
            for model in args.models:
                for kind in ("native", "padded_2x"):
                    res = adapt_unlabelled(model, base / kind, base / f"{kind}.onnx", classes="5part", methods=())
                    score = {c.framing: c.score for c in res.candidates}
                    rows.append({"model": names[model], "draw": d, "cells": kind,
                                 "gap": round(score["all"] - score["band"], 4),
                                 "gap_lab": round(score["lab"] - score["band"], 4), "chosen": res.framing})
                    print(f"draw {d} {rows[-1]['model']} {kind:<9} all - band {rows[-1]['gap']:+.3f}, "
                          f"lab - band {rows[-1]['gap_lab']:+.3f}, chosen {res.framing}", flush=True)

    def spread(key: str) -> dict[str, list[float]]:
        return {f"{m} {k}": [min(r[key] for r in rows if r["model"] == m and r["cells"] == k),
                             max(r[key] for r in rows if r["model"] == m and r["cells"] == k)]
                for m in {r["model"] for r in rows} for k in ("native", "padded_2x")}

    summary, summary_lab = spread("gap"), spread("gap_lab")
    atomic_write_json(args.output, {"min_gain": MIN_GAIN, "lab_min_gain": LAB_MIN_GAIN, "per_class": args.per_class,
                                    "seed": args.seed, "gap_range": summary, "gap_range_lab": summary_lab,
                                    "draws": rows, "provenance": provenance(__file__, argv)})
    for k, (lo, hi) in sorted(summary.items()):
        print(f"{k}: all - band {lo:+.3f} to {hi:+.3f}, lab - band {summary_lab[k][0]:+.3f} to "
              f"{summary_lab[k][1]:+.3f}")
    print(f"-> {args.output}")
    return 0


if __name__ == "__main__":
    from _run import run

    run(main)
