"""Which cells do independently trained models all get wrong? (residual analysis across runs)

If every run misclassifies the same cells, more runs, an ensemble or a longer schedule will not fix them:
they sit on a class boundary or carry a doubtful label, and a hematologist should look at them. If the
errors differ between runs, an ensemble (or distillation from one) can still gain.

For runs that share one split (same ``split_seed``), this scores each run's ``model.onnx`` on a split of the
first run's manifest and writes JSON: per-run accuracy and errors, the errors common to all runs, the union,
and the accuracy of the mean-probability ensemble of all runs.

    python benchmarks/error_overlap.py runs/default runs/ema_seed1 runs/plain runs/robust \\
        --split test --output benchmarks/results/error_overlap_test.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]  # the repository: relative defaults are resolved against it


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", type=Path, nargs="+", help="run folders with model.onnx and manifest.csv")
    ap.add_argument("--split", default="test", choices=["train", "val", "test"])
    ap.add_argument("--data", type=Path, default=None, help="data root (default: WBC_DATA_DIR or ../shared/data)")
    ap.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/error_overlap.json")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--html", type=Path, default=None,
                    help="also write a page showing the cells every run gets wrong, for an expert's review")
    ap.add_argument("--views", type=int, default=1, choices=[1, 2, 4, 8],
                    help="test-time augmentation: mean probability over this many flips/rotations of each cell")
    args = ap.parse_args(argv)

    from _provenance import provenance

    from wbc.adapt import dihedral_view
    from wbc.classify import load_cells
    from wbc.data import read_manifest
    from wbc.io import atomic_write_json
    from wbc.model import load_model
    from wbc.paths import data_root

    if len(args.runs) < 2:
        raise SystemExit("error: give at least two run folders")
    manifests = [r / "manifest.csv" for r in args.runs]
    for m in manifests:
        if not m.is_file():
            raise SystemExit(f"error: {m}: no manifest (not a finished run folder)")
        if m.read_bytes() != manifests[0].read_bytes():
            raise SystemExit(f"error: {m} and {manifests[0]} hold different splits")
    root = data_root(args.data)
    samples = read_manifest(manifests[0], split=args.split, root=root)
    models = [load_model(r / "model.onnx", threads=args.threads) for r in args.runs]
    classes = models[0].classes
    if any(m.classes != classes for m in models):
        raise SystemExit("error: the runs' models have different class lists")
    sizes = {m.info.input_size for m in models}
    cells_by_size = {}
    for size in sizes:
        cells, _, errors = load_cells([s.path for s in samples], size, workers=args.threads)
        if errors:
            raise SystemExit(f"error: {errors[0][1]} ({len(errors)} unreadable images in the {args.split} split)")
        cells_by_size[size] = cells
    labels = np.array([classes.index(s.label) for s in samples])
    # Views 1, 2, 4, 8 are the identity; + the horizontal flip; the 4 rotations; all 8 flips/rotations.
    pick = {1: [0], 2: [0, 4], 4: [0, 1, 2, 3], 8: list(range(8))}[args.views]
    probs = [np.mean([m.predict_proba(dihedral_view(cells_by_size[m.info.input_size], k)) for k in pick], axis=0)
             for m in models]
    wrong = [set(np.flatnonzero(p.argmax(1) != labels).tolist()) for p in probs]
    common, union = set.intersection(*wrong), set.union(*wrong)
    ens = np.mean(probs, axis=0).argmax(1)

    def cell(i: int) -> dict[str, object]:
        return {"path": str(Path(samples[i].path).relative_to(root)) if Path(samples[i].path).is_relative_to(root)
                else str(samples[i].path), "label": samples[i].label,
                "predicted": [classes[int(p[i].argmax())] for p in probs]}

    report = {
        "split": args.split, "cells": len(labels), "runs": [str(r) for r in args.runs], "views": args.views,
        "per_run": [{"run": str(r), "model_id": m.model_id, "accuracy": float(np.mean(p.argmax(1) == labels)),
                     "errors": len(w)} for r, m, p, w in zip(args.runs, models, probs, wrong, strict=True)],
        "errors_in_all_runs": len(common), "errors_in_any_run": len(union),
        "ensemble_accuracy": float(np.mean(ens == labels)), "ensemble_errors": int(np.sum(ens != labels)),
        "common_errors": [cell(i) for i in sorted(common)],
        "command": "python benchmarks/error_overlap.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "provenance": provenance(__file__, argv),
    }
    atomic_write_json(args.output, report)
    if args.html:
        from wbc.evaluate.report import Thumb, review_page
        from wbc.io import atomic_write_text, read_image

        mean_p = np.mean(probs, axis=0)
        thumbs = [Thumb(rgb=read_image(samples[i].path), true=samples[i].label,
                        predicted=classes[int(mean_p[i].argmax())], probability=float(mean_p[i].max()),
                        path=cell(i)["path"]) for i in sorted(common)]
        runs = ", ".join(map(str, args.runs))
        intro = (f"The {len(common)} {args.split} cells that all {len(args.runs)} runs ({runs}) classify wrongly. "
                 "Under each: the dataset's label, and the runs' mean-probability call. "
                 "Is the label right? Hover for the file name.")
        atomic_write_text(args.html, review_page(f"Cells every run gets wrong ({args.split} split)", intro, thumbs))
    for r in report["per_run"]:
        print(f"{r['run']:<28} accuracy {r['accuracy']:.4f}  errors {r['errors']}")
    views = f"{args.views} view" + ("s" if args.views > 1 else "")
    print(f"{args.split} ({views}): {len(labels)} cells; errors in all {len(args.runs)} runs: {len(common)}, in any: "
          f"{len(union)}; ensemble accuracy {report['ensemble_accuracy']:.4f} ({report['ensemble_errors']} errors)")
    for c in report["common_errors"]:
        print(f"  {c['path']}  {c['label']} -> {', '.join(c['predicted'])}")
    print(f"wrote {args.output}" + (f" and {args.html}" if args.html else ""))
    return 0


if __name__ == "__main__":
    from _run import run

    run(main)
