"""Does data-parallel training (``wbc train --nproc 2``, DDP over gloo on the CPU) train as well as one process?

Trains the same recipe (default ``configs/ddp_check.toml``: 300 PBC cells per class, 64 px, 10 epochs) in one
process and in two, with the same total threads, for each seed, and writes the validation accuracies, the
two-process minus one-process difference per seed, the difference of the means with its 95 % interval
(Welch), and each mode's spread across seeds (the noise it is to be judged against) to
``benchmarks/results/ddp_train.json``. A run folder that already holds its results is reused when this script
trained it with the same config (its contents) and extra flags (``settings.json`` in the folder says); one
trained otherwise stops the script with a message rather than be reported under the new settings. Needs the
real data (``../shared/data``)::

    nice -n 10 python benchmarks/ddp_train.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from wbc.io import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]


def train(config: Path, out: Path, nproc: int, seed: int, extra: list[str]) -> dict:
    settings = {"config_sha256": hashlib.sha256(config.read_bytes()).hexdigest(), "extra_flags": extra}
    stamp = out / "settings.json"
    if (out / "test_metrics.json").is_file():
        if not stamp.is_file() or json.loads(stamp.read_text()) != settings:
            raise SystemExit(f"error: {out}: trained with another config or other flags than {config} "
                             f"{' '.join(extra)}; remove it or give another --runs")
    else:
        if out.exists():
            shutil.rmtree(out)
        cmd = [sys.executable, "-P", "-m", "wbc", "train", "--config", str(config), "--output", str(out),
               "--nproc", str(nproc), "--seed", str(seed), *extra]
        subprocess.run(cmd, check=True, env={**os.environ, "GLIBC_TUNABLES": os.environ.get(
            "GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=4294967295:glibc.malloc.trim_threshold=4294967295")})
        atomic_write_json(stamp, settings)
    val = json.loads((out / "val_metrics.json").read_text())
    test = json.loads((out / "test_metrics.json").read_text())
    return {"nproc": nproc, "seed": seed, "val_accuracy": val["accuracy"], "val_macro_f1": val["macro_f1"],
            "n_val": val["n"], "test_accuracy": test["accuracy"], "train_seconds": round(test["train_seconds"], 1)}


def mean_difference(one: list[float], many: list[float], nproc: int) -> dict[str, float | list[float] | None]:
    """Means (points), their difference (``nproc`` processes minus one) and its 95 % Welch interval."""
    import numpy as np
    from scipy import stats

    out: dict[str, float | list[float] | None] = {
        "one_process_val_accuracy_mean": round(float(np.mean(one)), 2),
        f"{nproc}_processes_val_accuracy_mean": round(float(np.mean(many)), 2),
        "difference_of_means_points": round(float(np.mean(many) - np.mean(one)), 2),
        "difference_of_means_ci95_points": None,
    }
    if len(one) > 1 and len(many) > 1:
        res = stats.ttest_ind(many, one, equal_var=False)
        ci = res.confidence_interval(0.95)
        out["difference_of_means_ci95_points"] = [round(float(ci.low), 2), round(float(ci.high), 2)]
        out["welch_p_value"] = round(float(res.pvalue), 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "ddp_check.toml")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "ddp_check")
    ap.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "ddp_train.json")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    args, extra = ap.parse_known_args()
    if not args.config.is_file():
        raise SystemExit(f"error: {args.config}: no such config file")

    from _provenance import provenance

    one = [train(args.config, args.runs / f"nproc1_seed{s}", 1, s, extra) for s in args.seeds]
    many = [train(args.config, args.runs / f"nproc{args.nproc}_seed{s}", args.nproc, s, extra) for s in args.seeds]
    diffs = [round(100 * (m["val_accuracy"] - o["val_accuracy"]), 2) for o, m in zip(one, many, strict=True)]
    accs = [100 * o["val_accuracy"] for o in one]
    accs_many = [100 * m["val_accuracy"] for m in many]
    result = {
        "config": str(args.config.relative_to(ROOT)) if args.config.is_relative_to(ROOT) else str(args.config),
        "extra_flags": extra,
        "one_process": one,
        f"{args.nproc}_processes": many,
        "val_accuracy_difference_points_per_seed": diffs,
        "val_accuracy_difference_points_mean": round(sum(diffs) / len(diffs), 2),
        "one_process_val_accuracy_range_over_seeds_points": round(max(accs) - min(accs), 2),
        **mean_difference(accs, accs_many, args.nproc),
        "cpu_count": os.cpu_count(),
        "provenance": provenance(__file__),
    }
    atomic_write_json(args.output, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    from _run import run

    run(main)
