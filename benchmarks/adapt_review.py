"""How far a lab can trust the cells `wbc adapt` leaves unflagged: the review threshold fitted on few labelled cells.

`wbc adapt` fits the adapted model's temperature and review threshold on its labelled cells' held-out predictions
(cross-validated by default). The threshold is meant to leave unflagged only cells the model names right at the
review target (99.5 % by default). Each draw here labels ``n`` random cells of a labelled folder, runs `wbc adapt`
on them (the product's path: ``wbc.train.finetune.adapt_finetune``), classifies the folder's other cells with the
adapted model (5-part, as `wbc classify --classes 5part`) and reports how many are left unflagged and how many of
those are right. The held-out predictions the threshold was fitted on are kept, so other threshold rules are scored
on the same draws:

- ``point``: the lowest threshold at which the held-out cells it accepts are at least the target right (the rule
  `wbc adapt` used up to wbc 0.19.0, :func:`wbc.calibration.review_threshold`);
- ``shown``: the lowest threshold at which they *show* the target: the one-sided 95 % Clopper-Pearson lower bound
  of their accuracy is at least the target (:func:`wbc.calibration.shown_review_threshold`); none: every cell
  flagged.

Each rule is scored at the review targets in ``TARGETS`` (what ``wbc adapt --review-target`` asks for). Also the
rest's expected calibration error with the fitted temperature and with none (T = 1).

    python benchmarks/bccd_cells.py --split trainval --n 0 --tight --output /tmp/bccd_tight_trainval
    python benchmarks/adapt_review.py --folder /tmp/bccd_tight_trainval --n 25 50 100 --seeds 0 1 2 \
        --output benchmarks/results/adapt_review.json
    python benchmarks/adapt_review.py --folder /tmp/bccd_tight_trainval --n 100 --seeds 0 1 2 \
        --output benchmarks/results/adapt_review_n100_targets.json
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import numpy as np

TARGETS = (0.995, 0.98, 0.95, 0.9, 0.85, 0.8)

ROOT = Path(__file__).resolve().parents[1]  # the repository: relative defaults are resolved against it


def accepted(conf: np.ndarray, right: np.ndarray, other: np.ndarray, threshold: float) -> dict:
    """Cells left unflagged at ``threshold`` (and by no other flag): their share and how many of them are right."""
    keep = (conf >= threshold) & ~other
    return {"threshold": round(float(threshold), 4), "unflagged": round(float(keep.mean()), 4),
            "unflagged_accuracy": round(float(right[keep].mean()), 4) if keep.any() else None}


def one_draw(folder_cells: list[tuple[Path, str]], n: int, seed: int, threads: int, cross_validate: bool) -> dict:
    import wbc.calibration
    from wbc.calibration import expected_calibration_error, review_threshold, shown_review_threshold, softmax
    from wbc.classify import classify_paths, review_reason
    from wbc.labels import WBC5
    from wbc.model import load_model
    from wbc.train.finetune import adapt_finetune

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(folder_cells))
    labelled = [folder_cells[i] for i in order[:n]]
    rest = [folder_cells[i] for i in order[n:]]
    seen: dict = {}
    fit = wbc.calibration.calibrate

    def capture(logits, labels, target=None, **kw):  # the held-out evidence `wbc adapt` fits on
        seen.update(logits=np.asarray(logits), labels=np.asarray(labels))
        return fit(logits, labels, target, **kw)

    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "labelled.csv"
        with manifest.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["path", "label"])
            w.writerows([str(p), lab] for p, lab in labelled)
        wbc.calibration.calibrate = capture
        try:
            t0 = time.perf_counter()
            res = adapt_finetune(None, manifest, Path(tmp) / "lab.onnx", seed=seed, threads=threads,
                                 cross_validate=cross_validate)
            fit_s = time.perf_counter() - t0
        finally:
            wbc.calibration.calibrate = fit
        clf = load_model(Path(tmp) / "lab.onnx", threads=threads)
        out = classify_paths([p for p, _ in rest], clf, workers=threads, classes="5part")
    truth = {str(p): lab for p, lab in rest}
    preds = out.predictions
    right = np.array([p.label == truth[p.path] for p in preds])
    conf = np.array([p.confidence for p in preds])
    temp, thr = clf.info.temperature, clf.info.review_threshold
    # flagged for another reason than the threshold (unlike the training data, outside the chosen classes)
    other = np.array([any(r != review_reason(p.confidence, thr) for r in p.reasons) for p in preds])
    oof_probs = softmax(seen["logits"], temp)
    oof_conf, oof_right = oof_probs.max(1), oof_probs.argmax(1) == seen["labels"]
    five = [clf.classes.index(c) for c in WBC5]
    y = np.array([WBC5.index(truth[p.path]) for p in preds])

    def ece(t: float) -> float:
        pr = softmax(out.logits, t)[:, five]
        return round(expected_calibration_error(pr / pr.sum(1, keepdims=True), y), 4)

    rules = {}
    for target in TARGETS:
        rules[f"point@{target}"] = accepted(conf, right, other, review_threshold(oof_conf, oof_right, target))
        rules[f"shown@{target}"] = accepted(conf, right, other, shown_review_threshold(oof_conf, oof_right, target))
    return {
        "seed": seed, "n_labelled": n, "n_scored": len(preds), "cross_validate": cross_validate,
        "fit_seconds": round(fit_s, 1), "heldout_n": int(res.heldout_n),
        "heldout_accuracy": round(float(oof_right.mean()), 4), "temperature": round(temp, 3),
        "accuracy": round(float(right.mean()), 4),
        # the threshold the adapted model stores, by the rule of the wbc installed (point up to 0.19.0, shown since)
        "as_shipped": {**accepted(conf, right, other, thr), "flagged_other": round(float(other.mean()), 4)},
        "stored_rule": "point" if res.shown_accuracy is None else "shown",
        "shown_accuracy": None if res.shown_accuracy is None else round(res.shown_accuracy, 4),
        "rules": rules, "ece_fitted_temperature": ece(temp), "ece_no_temperature": ece(1.0),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--folder", type=Path, required=True, help="<class>/<cell> images of one lab (5-part classes)")
    ap.add_argument("--n", type=int, nargs="+", default=[25, 50, 100], help="labelled cells per draw")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-cross-validate", action="store_true", help="as `wbc adapt --no-cross-validate`")
    ap.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/adapt_review.json")
    args = ap.parse_args(argv)

    from _provenance import provenance

    from wbc.io import atomic_write_json, iter_image_paths
    from wbc.labels import canonical_label

    cells = [(p, canonical_label(p.parent.name)) for p in iter_image_paths([args.folder])]
    cells = [(p, lab) for p, lab in cells if lab]
    draws: list[dict] = []
    prov = provenance(__file__, argv)
    for n in args.n:
        for seed in args.seeds:
            d = one_draw(cells, n, seed, args.threads, not args.no_cross_validate)
            draws.append(d)
            print(json.dumps(d), flush=True)
            summary = {"folder": str(args.folder), "draws": draws, "provenance": prov}
            atomic_write_json(args.output, summary)  # after every draw: a long run keeps what it measured
    return 0


if __name__ == "__main__":
    from _run import run

    run(main)
