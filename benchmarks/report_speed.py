"""How long ``wbc evaluate`` takes for 2,000 cells (target: <= 60 s on 2 cores), written as JSON.

Usage::

    python benchmarks/report_speed.py [--model M] [--cells 2000] [--threads 2] [--output bench.json]

Cells are the first N/8 images of each PBC class in sorted order (``<data root>/pbc``); without the
real data, synthetic cells are generated instead (and the JSON says so). The JSON splits the time into
classification (set by the model) and everything after it (metrics, bootstrap, figures, thumbnails,
Grad-CAM, HTML), which is what this benchmark is about.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository: relative defaults are resolved against it


def pick_cells(n: int, work: Path) -> tuple[Path, str]:
    """A class-per-folder set of ``n`` cells: symlinks into the real data, or synthetic images."""
    from wbc.labels import CLASSES
    from wbc.paths import data_root

    pbc = data_root() / "pbc"
    per = n // len(CLASSES)
    out = work / "cells"
    if pbc.is_dir():
        for c in CLASSES:
            (out / c).mkdir(parents=True)
            for f in sorted((pbc / c).glob("*.jpg"))[:per]:
                os.symlink(f, out / c / f.name)
        return out, f"pbc ({per} per class)"
    from wbc.synthetic import make_dataset

    make_dataset(out, n_per_class=per, size=360)
    return out, f"synthetic ({per} per class, 360 px)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="ONNX model or run folder (default: the shipped model)")
    ap.add_argument("--cells", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--output", default=ROOT / "benchmarks/report_speed.json")
    args = ap.parse_args()

    from _provenance import provenance

    from wbc.evaluate import evaluate, resolve_model_path
    from wbc.io import atomic_write_json
    from wbc.model import load_model

    clf = load_model(resolve_model_path(args.model), threads=args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        data, source = pick_cells(args.cells, Path(tmp))
        t0 = time.perf_counter()
        m = evaluate(data, clf, Path(tmp) / "out", workers=args.threads)
        total = time.perf_counter() - t0
        html_bytes = (Path(tmp) / "out" / "report.html").stat().st_size
    result = {
        "cells": m["n"],
        "data": source,
        "model": clf.model_id,
        "input_size": clf.info.input_size,
        "threads": args.threads,
        "seconds_total": round(total, 2),
        "seconds_classify": m["timing_seconds"]["classify"],
        "seconds_report": m["timing_seconds"]["report"],
        "seconds_metrics_and_rest": round(
            total - m["timing_seconds"]["classify"] - m["timing_seconds"]["report"], 2
        ),
        "report_html_mb": round(html_bytes / 1e6, 2),
        "accuracy": m["accuracy"],
        "target_seconds": 60,
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, Python {sys.version.split()[0]}",
        "load_average_1min": round(os.getloadavg()[0], 2),
        "provenance": provenance(__file__, model_id=clf.model_id),
    }
    atomic_write_json(args.output, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    from _run import run

    run(main)
