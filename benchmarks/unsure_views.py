"""Rotations where the model is unsure: accuracy and cost of re-running low-confidence cells over four rotations.

`wbc classify` answers a single-cell image with one network pass; a cell it names below a confidence gate is
answered again by the mean of its four rotations (:data:`wbc.model.UNSURE_GATE`). This scores, through
:func:`wbc.classify.classify_paths` (what `wbc classify` and `wbc evaluate` run), each gate against one view for
every cell (gate 0) and four views for every cell (``--tta 4``): accuracy, the share of cells re-run, and the
wall time per cell (decoding included, ``--threads``; after one untimed warm-up pass over the set's files: results
written before it was added, such as ``unsure_views_v1.4.0.json``, charged the first variant, gate 0, with the cold
start). Validation data only, to choose the gate:

    python benchmarks/bccd_cells.py --tight --split trainval --n 0 --output /tmp/bccd_tight_trainval
    python benchmarks/bccd_cells.py --split trainval --n 0 --output /tmp/bccd_trainval
    python benchmarks/unsure_views.py --manifest runs/default/manifest.csv --split val \\
        --folders /tmp/bccd_tight_trainval /tmp/bccd_trainval --output benchmarks/results/unsure_views_v1.4.0.json

PBC cells are scored over the model's classes and over the five WBC types for the WBC cells; a folder of
``<class>/<cell>`` images (another lab) over the five WBC types, as ``--classes 5part`` answers.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="classifier ONNX (default: the shipped model)")
    ap.add_argument("--manifest", type=Path, default=None, help="PBC manifest CSV (its --split is scored)")
    ap.add_argument("--split", default="val", help="manifest split (val: for choosing; never tune on test)")
    ap.add_argument("--folders", type=Path, nargs="*", default=[], help="<class>/<cell> folders of other labs")
    ap.add_argument("--gates", type=float, nargs="+", default=[0.0, 0.7, 0.8, 0.9, 0.95])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", type=Path, default=None, help="data root (default: $WBC_DATA_DIR or ../shared/data)")
    ap.add_argument("--output", type=Path, default=None, help="JSON to write")
    args = ap.parse_args(argv)

    from _provenance import provenance

    from wbc.classify import classify_paths
    from wbc.data import read_manifest
    from wbc.errors import WbcError
    from wbc.io import atomic_write_json, iter_image_paths
    from wbc.labels import WBC5
    from wbc.model import load_model
    from wbc.paths import data_root

    clf = load_model(args.model, threads=args.threads)
    sets: list[tuple[str, list[Path], list[str], str | None]] = []
    if args.manifest:
        samples = [s for s in read_manifest(args.manifest, root=data_root(args.data)) if s.split == args.split]
        if not samples:
            raise WbcError(f"{args.manifest}: no {args.split} cells")
        sets.append((f"PBC {args.split}, 8 classes", [s.path for s in samples], [s.label for s in samples], None))
        wbc = [s for s in samples if s.label in WBC5]
        sets.append((f"PBC {args.split}, 5-part", [s.path for s in wbc], [s.label for s in wbc], "5part"))
    for folder in args.folders:
        paths = list(iter_image_paths([folder]))
        if not paths:  # scored, an empty folder divided by its zero cells
            raise WbcError(f"{folder}: no <class>/<image> files")
        sets.append((f"{folder.name}, 5-part", paths, [p.parent.name for p in paths], "5part"))
    if not sets:
        raise SystemExit("error: nothing to score (give --manifest and/or --folders)")

    rows = []
    for name, paths, labels, classes in sets:
        variants = [(f"gate {g}", clf.with_unsure_gate(g)) for g in args.gates] + [("4 views", clf.with_tta(4))]
        # an untimed warm-up pass (file cache, sessions, threads), so the first variant timed does not pay the cold
        # start; its one-view answers give each cell's confidence: which cells a gate re-runs
        base = classify_paths(paths, clf.with_unsure_gate(0.0), workers=args.threads, classes=classes)
        conf = np.array([p.confidence for p in base.predictions])
        for variant, c in variants:
            gate, _ = c.unsure_views()
            t0 = time.perf_counter()
            res = classify_paths(paths, c, workers=args.threads, classes=classes)
            secs = time.perf_counter() - t0
            if res.errors:
                raise SystemExit(f"error: {res.errors[0][1]}")  # the message names the file
            pred = np.array([p.label for p in res.predictions])
            row = {"set": name, "variant": variant, "gate": gate, "n": len(pred),
                   "accuracy": float(np.mean(pred == np.array(labels))), "ms_per_cell": 1000 * secs / len(pred)}
            rows.append(row)
        for r in rows:
            if r["set"] == name:
                r["share_rerun"] = 1.0 if r["variant"] == "4 views" else float(np.mean(conf < r["gate"]))
        print(f"{name} (n={len(paths)}):", flush=True)
        for r in rows:
            if r["set"] == name:
                print(f"  {r['variant']:>10}: accuracy {r['accuracy']:.4f}, re-run {r['share_rerun']:.3f}, "
                      f"{r['ms_per_cell']:.2f} ms/cell", flush=True)
    if args.output:
        atomic_write_json(args.output, {"model": str(clf.path), "model_id": clf.model_id,
                                        "threads": args.threads, "rows": rows,
                                        "provenance": provenance(__file__, argv, clf.model_id)})
    return 0


if __name__ == "__main__":
    from _run import run

    run(main)
