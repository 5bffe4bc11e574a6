"""The head refit (``wbc adapt --method head``) scored with one view and with the four rotations.

``n`` random cells of a labelled folder (one lab) are the lab's labelled cells; ``wbc adapt --method head``
fits on them, through the CLI's own function, and the other cells are classified (5-part) by the adapted model
with ``--tta 1`` and ``--tta 4``. Validation for the choice of ``wbc.model.ADAPTED_TTA_VIEWS``:

    python benchmarks/bccd_cells.py --split trainval --n 0 --output /tmp/bccd_trainval
    python benchmarks/head_tta.py --folder /tmp/bccd_trainval --seeds 0 1 2 --output benchmarks/results/head_tta.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--folder", type=Path, required=True, help="<class>/<cell> images of one lab")
    ap.add_argument("--model", type=Path, default=None, help="ONNX model (default: shipped)")
    ap.add_argument("--n", type=int, default=100, help="labelled cells (the rest are scored)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--views", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--output", type=Path, default=None, help="JSON to write")
    args = ap.parse_args(argv)

    import numpy as np
    from _provenance import provenance

    from wbc.adapt import adapt_model
    from wbc.classify import classify_paths
    from wbc.io import atomic_write_json, iter_image_paths
    from wbc.model import load_model

    files = sorted(iter_image_paths([args.folder]))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            perm = np.random.default_rng(seed).permutation(len(files))
            lab, rest = [files[i] for i in perm[: args.n]], [files[i] for i in perm[args.n :]]
            folder = Path(tmp) / f"lab{seed}"
            for f in lab:  # the labelled cells as a <class>/<image> folder, by links
                (folder / f.parent.name).mkdir(parents=True, exist_ok=True)
                os.symlink(f.resolve(), folder / f.parent.name / f.name)
            out = Path(tmp) / f"lab{seed}.onnx"
            adapt_model(args.model, folder, out, seed=seed)
            clf = load_model(out).with_classes("5part")
            truth = np.array([f.parent.name for f in rest])
            row: dict = {"seed": seed, "labelled": len(lab), "scored": len(rest)}
            for v in args.views:
                res = classify_paths(rest, clf.with_tta(v))
                row[f"acc_views{v}"] = float(np.mean(np.array([p.label for p in res.predictions]) == truth))
            rows.append(row)
            print(", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)
    summary = {f"acc_views{v}": float(np.mean([r[f"acc_views{v}"] for r in rows])) for v in args.views}
    print(json.dumps(summary))
    if args.output:
        atomic_write_json(args.output, {"folder": str(args.folder), "summary": summary, "draws": rows,
                                        "provenance": provenance(__file__, argv)})
    return 0


if __name__ == "__main__":
    from _run import run

    run(main)
