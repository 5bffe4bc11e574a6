"""Each stain mapping of ``wbc adapt --stain METHOD`` applied to the training lab's own cells: near identity expected.

Draws of PBC validation cells (the lab the model was trained on) are mapped onto the model's training colours
(``colour_reference[METHOD]``), with the draw's own colours fitted as ``wbc adapt --stain`` fits a lab's
(:func:`wbc.stain.fit_stain_stats`), and classified. A mapping that costs accuracy here costs it by its own
fitting, not by a lab's difference.

    python benchmarks/stain_same_lab.py --output benchmarks/results/stain_same_lab_wbc0.28.0.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--output", type=Path, required=True)
    ap.add_argument("--model", type=Path, default=None, help="classifier (default: the shipped one)")
    ap.add_argument("--manifest", type=Path, default=Path(__file__).resolve().parents[1] / "runs/default/manifest.csv")
    ap.add_argument("--data", type=Path, default=None, help="data root (default: $WBC_DATA_DIR or ../shared/data)")
    ap.add_argument("--n", type=int, default=80, help="cells a draw")
    ap.add_argument("--draws", type=int, default=3)
    args = ap.parse_args(argv)

    from _provenance import provenance

    from wbc.data import read_manifest
    from wbc.io import atomic_write_json
    from wbc.model import load_model
    from wbc.paths import data_root
    from wbc.preprocess import load_cell
    from wbc.stain import METHODS, fit_stain_stats, normalise_batch

    clf = load_model(args.model, threads=2)
    val = [s for s in read_manifest(args.manifest, "val", data_root(args.data)) if s.label in clf.classes]
    rows = []
    for draw in range(1, args.draws + 1):
        picked = [val[i] for i in np.random.default_rng(draw).choice(len(val), args.n, replace=False)]
        cells = np.stack([load_cell(s.path, clf.info.input_size) for s in picked])
        truth = np.array([clf.classes.index(s.label) for s in picked])
        row: dict[str, object] = {"draw": draw, "n": args.n,
                                  "none": float((clf.run(cells)["logits"].argmax(1) == truth).mean())}
        for method in METHODS:
            spec = {"method": method, "target": clf.info.colour_reference[method],
                    "source": fit_stain_stats(list(cells), method)}
            mapped = normalise_batch(cells, spec)
            row[method] = float((clf.run(mapped)["logits"].argmax(1) == truth).mean())
        rows.append(row)
        print(row, flush=True)
    doc = {"model_id": clf.model_id, "split": "val", "rows": rows,
           "mean": {k: round(float(np.mean([r[k] for r in rows])), 4) for k in ("none", *METHODS)}}
    doc["provenance"] = provenance(__file__, argv, clf.model_id)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.output, doc)
    print(json.dumps(doc["mean"]), f"-> {args.output}")
    return 0


if __name__ == "__main__":
    from _run import run

    run(main)
