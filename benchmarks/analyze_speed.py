"""Milliseconds per smear field for ``wbc analyze``: segmentation, classification, JSON; drawing apart.

Runs on BCCD 640x480 fields (the first ``--n`` of the test split) when the data is present, else on
synthetic 640x480 fields, with ``--threads`` CPU threads (default 2: the target is <= 100 ms per field
end to end on 2 cores, PNG drawing reported separately). All segmenters are timed unless ``--segmenter``
names one. Per-stage wall-clock medians and means are written as JSON, plus ``end_to_end_cpu``: the CPU
seconds of all threads, which a busy shared machine does not inflate (wall time >= cpu / threads).

    python benchmarks/analyze_speed.py --threads 2 --output benchmarks/results/analyze_speed.json

Smear cells are classified over ``SMEAR_TTA_VIEWS`` flips/rotations by default (``wbc analyze``'s default);
``--tta 1`` times one view.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]  # the repository: relative defaults are resolved against it


def fields(n: int) -> tuple[list[np.ndarray], str]:
    from wbc.io import read_image
    from wbc.paths import data_root

    test = data_root() / "bccd" / "ImageSets" / "Main" / "test.txt"
    if test.is_file():
        names = test.read_text().split()[:n]
        return [read_image(data_root() / "bccd" / "JPEGImages" / f"{k}.jpg") for k in names], "bccd-test"
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_segment import synthetic_smear

    return [synthetic_smear(n_wbc=1 + i % 2, seed=i)[0] for i in range(n)], "synthetic"


def time_one(rgb: np.ndarray, clf, seg) -> dict[str, float]:
    from wbc.analyze import check_field, classify_cells, result_to_dict
    from wbc.render import render
    from wbc.types import SmearResult

    c0 = time.process_time()
    t0 = time.perf_counter()
    check_field(rgb)
    cells = seg.segment(rgb)
    t1 = time.perf_counter()
    classify_cells(rgb, cells, clf)
    t2 = time.perf_counter()
    res = SmearResult("x", rgb.shape[1], rgb.shape[0], cells, model_id=clf.model_id)
    json.dumps(result_to_dict(res, clf.classes))
    t3 = time.perf_counter()
    c3 = time.process_time()
    render(rgb, res, clf.classes)
    t4 = time.perf_counter()
    return {
        "segment": t1 - t0,
        "classify": t2 - t1,
        "json": t3 - t2,
        "end_to_end": t3 - t0,
        "render": t4 - t3,
        "end_to_end_cpu": c3 - c0,
        "cells": len(cells),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=30, help="fields to time")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default=None, help="classifier ONNX (default: shipped)")
    ap.add_argument("--segmenter", default=None, help="detector | classical | learned (default: all three)")
    ap.add_argument("--segmenter-model", default=None, help="ONNX for a learned segmenter (default: shipped)")
    ap.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/analyze_speed.json")
    ap.add_argument("--tta", type=int, default=None, help="views per cell (default: wbc analyze's)")
    ap.add_argument("--no-colour-calibration", action="store_true",
                    help="time without calibrating each field on its red cells (wbc analyze's default: with)")
    a = ap.parse_args()
    if a.segmenter_model and not a.segmenter:  # it was ignored: the three segmenters timed with their shipped models
        ap.error("--segmenter-model needs --segmenter (the one segmenter it is for)")
    import cv2

    cv2.setNumThreads(a.threads)
    from _provenance import provenance

    from wbc.io import atomic_write_json
    from wbc.model import load_model
    from wbc.segment import get_segmenter

    clf = load_model(a.model, threads=a.threads).with_tta(a.tta).with_colour_calibration(not a.no_colour_calibration)
    imgs, source = fields(a.n)
    out: dict = {
        "source": source,
        "n_fields": len(imgs),
        "field_size": list(imgs[0].shape[:2][::-1]),
        "threads": a.threads,
        "classifier": clf.model_id,
        "colour_calibration": clf.red_cell_target() is not None,
        "input_size": clf.info.input_size,
        "tta_views": clf.tta_views(smear=True),
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "load_avg": list(os.getloadavg()),
        },
        "segmenters": {},
    }
    for name in [a.segmenter] if a.segmenter else ["detector", "classical", "learned"]:
        try:
            seg = get_segmenter(name, a.segmenter_model if a.segmenter else None, threads=a.threads)
        except Exception as exc:  # the learned model may be absent; one named is the run's point: its error ends it
            if a.segmenter:
                raise
            out["segmenters"][name] = {"error": str(exc)}
            continue
        for rgb in imgs[:3]:  # warm-up
            time_one(rgb, clf, seg)
        runs = [time_one(rgb, clf, seg) for rgb in imgs]
        stats = {}
        for k in ("segment", "classify", "json", "end_to_end", "render", "end_to_end_cpu"):
            v = np.array([r[k] for r in runs]) * 1000
            stats[k] = {
                "median_ms": round(float(np.median(v)), 1),
                "mean_ms": round(float(v.mean()), 1),
                "p90_ms": round(float(np.percentile(v, 90)), 1),
            }
        stats["cells_per_field"] = float(np.mean([r["cells"] for r in runs]))
        stats["model_id"] = getattr(seg, "model_id", name)
        out["segmenters"][name] = stats
        print(
            f"{name}: end to end {stats['end_to_end']['median_ms']} ms median "
            f"(segment {stats['segment']['median_ms']}, classify {stats['classify']['median_ms']}, "
            f"json {stats['json']['median_ms']}); render {stats['render']['median_ms']} ms",
            flush=True,
        )
    out["machine"]["load_avg_after"] = list(os.getloadavg())
    out["provenance"] = provenance(__file__, model_id=clf.model_id)
    atomic_write_json(a.output, out)
    print(f"wrote {a.output}")


if __name__ == "__main__":
    from _run import run

    run(main)
