"""The case store and review API on this machine: what a technologist waits for, and what a case costs on disk.

Creates a case from ``--fields`` BCCD test fields (synthetic fields without the data) through the real
HTTP app (FastAPI TestClient, a SQLite file store), then measures: creating the case (analysis + storing),
reclassifying a cell (``POST /cases/{id}/cells/{cell}/label``, the answer carries the new differential),
signing off, the report (HTML and PDF), the export for ``wbc adapt``, and the store's size per field and
per cell. Medians over ``--repeats`` label calls.

    python benchmarks/review_store.py --fields 20 --output benchmarks/results/review_store.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]  # the repository: relative defaults are resolved against it


def field_images(n: int) -> tuple[list[tuple[str, bytes]], str]:
    from wbc.paths import data_root

    test = data_root() / "bccd" / "ImageSets" / "Main" / "test.txt"
    if test.is_file():
        names = test.read_text().split()[:n]
        return [(f"{k}.jpg", (data_root() / "bccd" / "JPEGImages" / f"{k}.jpg").read_bytes()) for k in names], \
            "bccd-test"
    from wbc.synthetic import synthetic_smear

    out = []
    for i in range(n):
        rgb = synthetic_smear(n_wbc=2, seed=i)[0]
        out.append((f"synthetic_{i}.png", cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))[1].tobytes()))
    return out, "synthetic"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fields", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=40, help="label calls timed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/review_store.json")
    args = ap.parse_args()

    from _provenance import provenance
    from fastapi.testclient import TestClient

    from wbc.cases import CaseStore
    from wbc.cases.export import export_cases
    from wbc.io import atomic_write_json
    from wbc.model import load_model
    from wbc.segment import get_segmenter
    from wbc.serve.app import create_app

    images, source = field_images(args.fields)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "cases.sqlite"
        app = create_app(load_model(None, threads=args.threads), get_segmenter("auto", threads=args.threads),
                         store=db, max_upload_mb=100)
        with TestClient(app, base_url="http://localhost") as client:  # a Host the app answers
            t0 = time.perf_counter()
            r = client.post("/cases", data={"name": "bench", "user": "bench"},
                            files=[("files", (n, b, "application/octet-stream")) for n, b in images])
            create_s = time.perf_counter() - t0
            if r.status_code != 201:
                sys.exit(f"case creation failed: {r.status_code} {r.text[:300]}")
            doc = r.json()
            cid, cells, classes = doc["id"], doc["cells"], doc["classes"]
            label_ms = []
            for i in range(args.repeats):
                cell = cells[i % len(cells)]
                lab = classes[(classes.index(cell["model_label"]) + 1 + i) % len(classes)]
                t0 = time.perf_counter()
                r = client.post(f"/cases/{cid}/cells/{cell['id']}/label", json={"label": lab, "user": "bench"})
                label_ms.append(1000 * (time.perf_counter() - t0))
                assert r.status_code == 200, r.text
            t0 = time.perf_counter()
            assert client.get(f"/cases/{cid}").status_code == 200
            get_ms = 1000 * (time.perf_counter() - t0)
            t0 = time.perf_counter()
            assert client.post(f"/cases/{cid}/sign-off", json={"user": "bench"}).status_code == 200
            sign_ms = 1000 * (time.perf_counter() - t0)
            t0 = time.perf_counter()
            html = client.get(f"/cases/{cid}/report")
            html_ms = 1000 * (time.perf_counter() - t0)
            t0 = time.perf_counter()
            pdf = client.get(f"/cases/{cid}/report.pdf")
            pdf_ms = 1000 * (time.perf_counter() - t0)
        app.state.case_store.close()  # the last connection closing folds the write-ahead log into the file
        store = CaseStore.open(db)
        t0 = time.perf_counter()
        exp = export_cases(store, Path(tmp) / "export", include_accepted=True)  # every cell, as measured below
        export_ms = 1000 * (time.perf_counter() - t0)
        store.close()
        size = sum(f.stat().st_size for f in db.parent.glob(db.name + "*"))  # with any write-ahead log left
    n_cells = len(cells)
    out = {
        "source": source, "fields": len(images), "cells": n_cells, "threads": args.threads,
        "create_case_s": round(create_s, 2), "create_case_ms_per_field": round(1000 * create_s / len(images), 1),
        "label_ms_median": round(statistics.median(label_ms), 1),
        "label_ms_p95": round(float(np.percentile(label_ms, 95)), 1), "label_calls": len(label_ms),
        "get_case_ms": round(get_ms, 1), "sign_off_ms": round(sign_ms, 1),
        "report_html_ms": round(html_ms, 1), "report_html_kb": round(len(html.content) / 1024, 1),
        "report_pdf_ms": round(pdf_ms, 1), "report_pdf_kb": round(len(pdf.content) / 1024, 1),
        "export_ms": round(export_ms, 1), "exported_cells": exp.n_cells,
        "store_kb": round(size / 1024, 1), "store_kb_per_field": round(size / 1024 / len(images), 1),
        "platform": platform.platform(), "python": platform.python_version(),
        "provenance": provenance(__file__),
    }
    atomic_write_json(args.output, out)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    from _run import run

    run(main)
