"""Training's test summary before and after issue 12 moved it onto ``wbc.evaluate.metrics``, on real cells.

Scores a model on a run's test split and computes the summary two ways: the code ``wbc.train.loop`` had
(sklearn point estimates, macro-F1 over every class, its own per-resample bootstrap loop; copied below)
and :func:`wbc.evaluate.metrics.summary_metrics` (macro-F1 over the classes present, the one bootstrap that
``wbc evaluate`` uses). Point estimates must agree exactly when every class has test cells; the intervals
come from different resamples, so they agree to bootstrap noise. Also re-fits the calibration on the
validation split through :func:`wbc.calibration.calibrate` against the two calls it replaced.

    python benchmarks/summary_parity.py --manifest runs/default/manifest.csv \\
        --output benchmarks/results/summary_parity.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, recall_score

ROOT = Path(__file__).resolve().parents[1]  # the repository: relative defaults are resolved against it


def old_summary(logits: np.ndarray, labels: np.ndarray, classes: list[str], n_boot: int = 1000,
                seed: int = 0) -> dict[str, Any]:
    """``wbc.train.loop.summarise`` + ``bootstrap_summary`` as they were before issue 12."""
    pred = logits.argmax(1)
    idx = list(range(len(classes)))
    rec = recall_score(labels, pred, labels=idx, average=None, zero_division=0)
    point: dict[str, Any] = {
        "n": len(labels), "accuracy": float(accuracy_score(labels, pred)),
        "macro_f1": float(f1_score(labels, pred, labels=idx, average="macro", zero_division=0)),
        "recall": {c: float(r) for c, r in zip(classes, rec, strict=True)},
    }
    rng = np.random.default_rng(seed)
    accs, f1s, recs = [], [], []
    for _ in range(n_boot):
        s = rng.integers(0, len(labels), len(labels))
        accs.append(accuracy_score(labels[s], pred[s]))
        f1s.append(f1_score(labels[s], pred[s], labels=idx, average="macro", zero_division=0))
        recs.append(recall_score(labels[s], pred[s], labels=idx, average=None, zero_division=0))
    r = np.asarray(recs)

    def ci(v: Any) -> list[float]:
        return [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]

    point.update(accuracy_ci95=ci(accs), macro_f1_ci95=ci(f1s),
                 recall_ci95={c: ci(r[:, k]) for k, c in enumerate(classes)})
    return point


def logits_of(clf: Any, samples: list[Any], threads: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """The logits and class indices of ``samples`` (``what``: the manifest and split, for the message). Every cell
    must load: the two summaries are compared on the run's whole split, and a missing data root read as no cells
    (numpy's "need at least one array to concatenate")."""
    from wbc.classify import load_cells
    from wbc.errors import WbcError

    if not samples:
        raise WbcError(f"{what}: no cells")
    cells, ok, errors = load_cells([s.path for s in samples], clf.info.input_size, threads)
    if errors:
        raise WbcError(f"{what}: {len(errors)} of {len(samples)} cells could not be read (first: {errors[0][1]})")
    y = np.array([clf.classes.index(samples[i].label) for i in ok])
    lg = np.concatenate([clf.run(cells[i : i + 64])["logits"] for i in range(0, len(cells), 64)])
    return lg, y


def main() -> None:
    from wbc.calibration import calibrate, fit_temperature, review_threshold
    from wbc.data import read_manifest
    from wbc.evaluate.metrics import summary_metrics
    from wbc.io import atomic_write_json
    from wbc.model import load_model, softmax

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="default: the shipped model")
    ap.add_argument("--manifest", type=Path, default=ROOT / "runs/default/manifest.csv")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/summary_parity.json")
    args = ap.parse_args()

    from _provenance import provenance

    clf = load_model(args.model, threads=args.threads)
    classes = clf.classes
    test_lg, test_y = logits_of(clf, read_manifest(args.manifest, "test"), args.threads,
                                f"{args.manifest}, test split")
    old, new = old_summary(test_lg, test_y, classes), summary_metrics(test_y, test_lg.argmax(1), classes, n_boot=1000)
    val_lg, val_y = logits_of(clf, read_manifest(args.manifest, "val"), args.threads,
                              f"{args.manifest}, val split")
    t = fit_temperature(val_lg, val_y)
    p = softmax(val_lg, t)
    before = {"temperature": t, "review_threshold": review_threshold(p.max(1), p.argmax(1) == val_y, 0.995)}
    after = calibrate(val_lg, val_y, 0.995).to_dict()
    res = {
        "model_id": clf.model_id, "test_cells": len(test_y), "val_cells": len(val_y),
        "point_estimates_identical": all(old[k] == new[k] for k in ("n", "accuracy", "macro_f1", "recall")),
        "old": old, "new": new,
        "max_ci_bound_difference": max(
            abs(a - b) for k in ("accuracy_ci95", "macro_f1_ci95") for a, b in zip(old[k], new[k], strict=True)),
        "calibration_before": before, "calibration_after": after,
        "calibration_identical": before == {k: after[k] for k in before},
        "provenance": provenance(__file__, model_id=clf.model_id),
    }
    atomic_write_json(args.output, res)
    print(json.dumps({k: v for k, v in res.items() if k not in ("old", "new")}, indent=2))


if __name__ == "__main__":
    from _run import run

    run(main)
