"""Fields per second of ``wbc analyze`` on the local engine and on Ray with 1 and 2 actors, in one run.

Same fields, same models (the shipped classifier and default segmenter), same total CPU threads for each
engine (local: one process with ``--threads 2``; Ray: 1 actor x 2 threads, 2 actors x 1 thread), annotated
PNGs written. Rounds alternate the engines so that a shared machine's load drifts over all of them alike;
the median round counts. Two rates per engine: steady state (fields per second from the first result to the
last: what more fields, or more machines, add) and end to end (the whole call, Ray's actor start included;
the Ray runtime's own start is timed apart). Writes ``benchmarks/results/scale_out.json``::

    python benchmarks/scale_out.py                      # 100 BCCD fields from ../shared/data, 2 rounds
    python benchmarks/scale_out.py --n 40 --synthetic   # without the real data
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def fields(n: int, synthetic: bool, tmp: Path) -> list[Path]:
    if not synthetic:
        from wbc.paths import data_root

        folder = data_root() / "bccd" / "JPEGImages"
        if folder.is_dir():
            return sorted(folder.glob("*.jpg"))[:n]
    import cv2

    from wbc.synthetic import synthetic_smear

    out = []
    for i in range(n):
        rgb, *_ = synthetic_smear(n_wbc=3, seed=i)
        out.append(tmp / f"field_{i:03d}.png")
        cv2.imwrite(str(out[-1]), rgb[:, :, ::-1])
    return out


class Clock:
    """Progress callback that records when each field was committed."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.marks: list[tuple[int, float]] = []

    def __call__(self, done: int, total: int) -> None:
        self.marks.append((done, time.perf_counter()))

    def result(self, n: int) -> dict[str, float]:
        wall = time.perf_counter() - self.t0
        done = [(k, t) for k, t in self.marks if k > 0]
        (k0, t0), (k1, t1) = done[0], done[-1]
        return {"wall_s": round(wall, 2), "fields_per_s_end_to_end": round(n / wall, 3),
                "fields_per_s_steady": round((k1 - k0) / (t1 - t0), 3) if t1 > t0 else float("nan"),
                "first_result_s": round(t0 - self.t0, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100, help="fields per engine and round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="CPU threads per engine in all")
    ap.add_argument("--synthetic", action="store_true", help="synthetic fields instead of BCCD")
    ap.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "scale_out.json")
    args = ap.parse_args()

    from _provenance import provenance

    from wbc.batch import ModelSpec, run_local
    from wbc.distributed import analyze_paths_ray, connect
    from wbc.io import atomic_write_json

    tmp = Path(tempfile.mkdtemp(prefix="wbc-scale-out-"))
    paths = fields(args.n, args.synthetic, tmp)
    load_before = os.getloadavg()
    t = time.perf_counter()
    ray = connect(None, num_cpus=args.threads)
    ray_start = time.perf_counter() - t
    engines: dict[str, Any] = {
        "local": lambda out, clock: run_local(paths, out, *ModelSpec(threads=args.threads).load(),
                                              overwrite=True, progress=clock),
        "ray_1_actor": lambda out, clock: analyze_paths_ray(paths, out, ModelSpec(threads=args.threads),
                                                            overwrite=True, actors=1, progress=clock),
        "ray_2_actors": lambda out, clock: analyze_paths_ray(paths, out, ModelSpec(threads=args.threads // 2 or 1),
                                                             overwrite=True, actors=2, progress=clock),
    }
    rounds: dict[str, list[dict[str, float]]] = {k: [] for k in engines}
    outputs: dict[str, Path] = {}
    for r in range(args.rounds):
        for name, run in engines.items():
            out = tmp / f"{name}_{r}"
            clock = Clock()
            summary = run(out, clock)
            rounds[name].append(clock.result(len(paths)) | {"errors": len(summary.errors)})
            outputs[name] = out
            print(name, r, rounds[name][-1], flush=True)
    same = {name: all((outputs["local"] / p.name).read_bytes() == p.read_bytes()
                      for p in outputs[name].iterdir()) for name in engines}
    ray.shutdown()

    def median(name: str, key: str) -> float:
        return statistics.median(x[key] for x in rounds[name])

    summary = {name: {key: median(name, key) for key in ("fields_per_s_steady", "fields_per_s_end_to_end",
                                                         "wall_s", "first_result_s")} for name in engines}
    result = {
        "fields": len(paths), "source": "synthetic" if args.synthetic or "field_" in paths[0].name else "BCCD",
        "rounds": args.rounds, "threads_per_engine": args.threads, "cpu_count": os.cpu_count(),
        "load_average_before": [round(v, 2) for v in load_before],
        "ray_runtime_start_s": round(ray_start, 2),
        "median": summary, "all_rounds": rounds,
        "ray_2_actors_over_local_steady": round(summary["ray_2_actors"]["fields_per_s_steady"]
                                                / summary["local"]["fields_per_s_steady"], 3),
        "ray_2_actors_over_local_end_to_end": round(summary["ray_2_actors"]["fields_per_s_end_to_end"]
                                                    / summary["local"]["fields_per_s_end_to_end"], 3),
        "outputs_identical_to_local": same,
        "provenance": provenance(__file__),
    }
    atomic_write_json(args.output, result)
    print(json.dumps({k: v for k, v in result.items() if k != "all_rounds"}, indent=2))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    from _run import run

    run(main)
