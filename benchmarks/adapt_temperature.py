"""The temperature of a head refit on a lab's few labelled cells: fitted on their held-out predictions, or kept at the
base model's, scored by calibration on the folder's other cells.

``--n`` random cells of a labelled folder are the lab's labelled cells (:func:`wbc.adapt.adapt_embeddings`, as
``wbc adapt --method head`` fits them); the folder's other cells score the adapted head, on the mean of the four
rotations the adapted model answers with. Each rule is a temperature for the same head:

* ``fit``: the temperature that minimises the held-out cells' NLL (``wbc.calibration.fit_temperature``; before
  wbc 0.37.0 used whatever it was). With every held-out cell right it is not identified and runs to its 0.05 bound;
* ``base_if_no_error``: the base model's temperature when every held-out cell is right, else the fit (what
  `wbc adapt` does since wbc 0.37.0: ``calibrate(base_temperature=...)``);
* ``floor``: the fit, no lower than the base model's temperature;
* ``base_if_few_errors``: the base model's temperature when the held-out cells hold fewer than 2 errors, else the fit;
* ``base``: the base model's temperature, always;
* ``oracle``: the temperature fitted on the scored cells themselves (the best any rule could do; for reference).

    python benchmarks/adapt_temperature.py --folder /tmp/pbcval --n 30 --seeds 0 1 2 3 4 5 6 7 8 9 10 11 \
        --output benchmarks/results/adapt_temperature_pbcval_n30.json
    python benchmarks/adapt_temperature.py --folder /tmp/bccd_trainval --n 30 --seeds 0 1 2 3 4 5 6 7 8 9 10 11 \
        --output benchmarks/results/adapt_temperature_bccd_n30.json      # and --n 60: ..._bccd_n60.json

(``/tmp/pbcval``: 60 cells each of the five WBC types from the shipped model's PBC val split, ``runs/default/
manifest.csv``, linked as ``<class>/<file>``; ``python benchmarks/bccd_cells.py --split trainval --n 0 --output
/tmp/bccd_trainval`` for another lab.) Never a test split: the rule is chosen here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

RULES = ("fit", "base_if_no_error", "floor", "base_if_few_errors", "base", "oracle")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folder", type=Path, required=True, help="a labelled <class>/<cell> folder")
    ap.add_argument("--model", type=Path, default=None, help="classifier ONNX (default: the shipped model)")
    ap.add_argument("--n", type=int, default=30, help="labelled cells per draw")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--output", type=Path, default=None, help="JSON to write")
    args = ap.parse_args(argv)

    import numpy as np
    from _lab_folder import load_lab_folder
    from _provenance import provenance

    from wbc.adapt import adapt_embeddings, embed_tta, original_head
    from wbc.calibration import expected_calibration_error, fit_temperature, nll
    from wbc.io import atomic_write_json
    from wbc.model import softmax

    lab = load_lab_folder(args.folder, args.model, args.threads)
    clf, classes = lab.clf, list(lab.clf.classes)
    base_t = float(clf.info.temperature)
    w0, b0 = original_head(clf)
    emb = embed_tta(clf, lab.cells, views=8)
    rows = []
    for seed in args.seeds:
        drawn = np.sort(np.random.default_rng(seed).choice(len(lab.labels), args.n, replace=False))
        rest = np.setdiff1d(np.arange(len(lab.labels)), drawn)
        w, b, res = adapt_embeddings(emb[:, drawn], [classes[c] for c in lab.labels[drawn]], classes, w0, b0,
                                     seed=seed, tta_views=4, base_temperature=None)
        fitted = float(res.temperature)  # no base given: the held-out fit as it is
        errors = round((1 - res.heldout_acc_after) * res.heldout_n)
        logits, y = emb[:4, rest].mean(0) @ w.T + b, lab.labels[rest]
        temps = {"fit": fitted, "base_if_no_error": base_t if errors == 0 else fitted,
                 "floor": max(fitted, base_t), "base": base_t,
                 "base_if_few_errors": base_t if errors < 2 else fitted, "oracle": fit_temperature(logits, y)}
        row: dict[str, object] = {"seed": seed, "heldout_errors": errors, "heldout_n": res.heldout_n,
                                  "scored_n": len(rest), "accuracy": float((logits.argmax(1) == y).mean())}
        for rule, t in temps.items():
            p = softmax(logits, t)
            conf, right = p.max(1), p.argmax(1) == y
            row[rule] = {"temperature": round(t, 3), "ece": expected_calibration_error(p, y), "nll": nll(logits, y, t),
                         "overconfidence": float(conf.mean() - right.mean()),
                         "wrong_conf": float(conf[~right].mean()) if (~right).any() else None,
                         "at_least_0.999": int((conf >= 0.999).sum())}
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary = {rule: {k: float(np.mean([r[rule][k] for r in rows]))  # type: ignore[index]
                      for k in ("temperature", "ece", "nll", "overconfidence", "at_least_0.999")} for rule in RULES}
    for rule, s in summary.items():
        print(f"{rule:<20} " + "  ".join(f"{k} {v:.3f}" for k, v in s.items()), flush=True)
    if args.output:
        atomic_write_json(args.output, {"provenance": provenance(__file__, argv, clf.model_id), "base_temperature":
                                        base_t, "n": args.n, "summary": summary, "rows": rows})
    return 0


if __name__ == "__main__":
    from _run import run

    run(main)
