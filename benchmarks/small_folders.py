"""How `wbc adapt --no-labels` fares on a small folder: draws of N cells of a labelled lab folder, each adapted on
and scored on itself (5-part, as a lab would run it), against the model as it is.

Each draw goes through the commands a lab runs (`wbc adapt --no-labels --data DRAW --output lab.onnx`, then `wbc
evaluate DRAW --classes 5part` with and without ``--model lab.onnx``); labels are used only to score. Nothing here
reads a test split when the folder is a train/val one.

    python benchmarks/bccd_cells.py --split trainval --n 0 --tight --output /tmp/bccd_tight_trainval
    python benchmarks/small_folders.py --folder /tmp/bccd_tight_trainval --sizes 25 50 100 --draws 5 \\
        --output benchmarks/results/small_folders.json
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]  # the repository: relative defaults are resolved against it


def wbc(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``wbc ARGS`` (the installed CLI of this interpreter); a failure ends the benchmark naming the command
    and the CLI's own one-line reason."""
    cmd = [sys.executable, "-P", "-m", "wbc", *args]  # -P: never a wbc.py in the working directory
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise SystemExit(f"error: {' '.join(cmd[3:])}: {last.removeprefix('error: ')}")
    return done


def accuracy(folder: Path, out: Path, model: Path | None) -> float:
    wbc("evaluate", str(folder), "--classes", "5part", "--output", str(out),
        *(["--model", str(model)] if model else []))
    return float(json.loads((out / "metrics.json").read_text())["accuracy"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--folder", type=Path, required=True, help="a lab's labelled cells, <class>/<image>")
    ap.add_argument("--sizes", type=int, nargs="+", default=[25, 50, 100])
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/small_folders.json")
    args = ap.parse_args(argv)

    from _provenance import provenance

    from wbc.io import atomic_write_json, iter_image_paths

    files = sorted(iter_image_paths([args.folder]))
    if bad := [n for n in args.sizes if not 0 < n <= len(files)]:
        raise SystemExit(f"error: {args.folder}: --sizes {bad[0]}: the folder has {len(files)} cells")
    rows: list[dict] = []

    def save() -> None:  # after every draw: a failing draw keeps the ones before it
        summary = {}
        for n in args.sizes:
            a = np.array([r["as_is"] for r in rows if r["n"] == n])
            b = np.array([r["adapted"] for r in rows if r["n"] == n])
            if len(a):
                summary[str(n)] = {"as_is": round(float(a.mean()), 4), "adapted": round(float(b.mean()), 4),
                                   "worst_change": round(float((b - a).min()), 4),
                                   "best_change": round(float((b - a).max()), 4)}
        atomic_write_json(args.output, {"folder": str(args.folder), "draws": args.draws, "rows": rows,
                                        "summary": summary, "provenance": provenance(__file__, argv)})

    for n in args.sizes:
        for seed in range(args.draws):
            with tempfile.TemporaryDirectory() as tmp:
                draw = Path(tmp) / "cells"
                for p in random.Random(seed).sample(files, n):
                    (draw / p.parent.name).mkdir(parents=True, exist_ok=True)
                    shutil.copy(p, draw / p.parent.name / p.name)
                lab = Path(tmp) / "lab.onnx"
                log = wbc("adapt", "--no-labels", "--data", str(draw), "--output", str(lab))
                chose = next((line for line in log.stdout.splitlines() + log.stderr.splitlines()
                              if line.startswith("chose")), "")
                row = {"n": n, "seed": seed, "as_is": accuracy(draw, Path(tmp) / "as_is", None),
                       "adapted": accuracy(draw, Path(tmp) / "adapted", lab), "chose": chose}
            rows.append(row)
            save()
            print(f"{n:>4} cells, draw {seed}: {row['as_is']:.3f} -> {row['adapted']:.3f}  {chose[:70]}", flush=True)
    for n in args.sizes:
        a = np.array([r["as_is"] for r in rows if r["n"] == n])
        b = np.array([r["adapted"] for r in rows if r["n"] == n])
        print(f"{n:>4} cells: as is {a.mean():.3f}, adapted {b.mean():.3f}, change {(b - a).min():+.3f} .. "
              f"{(b - a).max():+.3f}")
    return 0


if __name__ == "__main__":
    from _run import run

    run(main)
