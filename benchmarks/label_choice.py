"""Which of a lab's cells to label for few-shot fine-tuning: drawn at random, or chosen without their labels.

Each draw holds out ``--held-out`` random cells of a labelled folder (scored, 5-part, the mean of four rotations,
as the adapted model answers) and treats the others as the lab's pool of unlabelled cells. ``--n`` cells of the
pool are labelled, either at random or by a rule that sees only the images (``--rules``), and the network is
fine-tuned on them with `wbc adapt`'s recipe (:func:`wbc.train.finetune.finetune`). Every rule is scored on the
same held-out cells of a draw, so rules that pick hard or rare cells are not rewarded with an easier test.

    python benchmarks/bccd_cells.py --split trainval --n 0 --tight --output /tmp/bccd_tight_trainval
    python benchmarks/label_choice.py --folder /tmp/bccd_tight_trainval --seeds 0 1 2 3 4 \\
        --output benchmarks/results/label_choice.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _lab_folder import load_lab_folder


def main(argv: list[str] | None = None) -> int:
    from wbc.adapt_select import RULES

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--folder", type=Path, required=True, help="<class>/<cell> images of one lab")
    ap.add_argument("--model", type=Path, default=None, help="ONNX model with its .pt beside it (default: shipped)")
    ap.add_argument("--n", type=int, default=100, help="cells labelled")
    ap.add_argument("--held-out", type=int, default=77, help="cells scored in each draw (never in the pool)")
    ap.add_argument("--rules", nargs="+", default=["random", *[r for r in RULES if r != "random"]],
                    choices=sorted(RULES), help="how the labelled cells are chosen")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--output", type=Path, default=None, help="JSON to write")
    args = ap.parse_args(argv)

    import numpy as np
    import torch
    from _provenance import provenance

    from wbc.adapt_select import choose_cells
    from wbc.io import atomic_write_json
    from wbc.labels import restrict_probabilities
    from wbc.train.finetune import finetune, mean_view_logits

    lab = load_lab_folder(args.folder, args.model, args.threads)
    clf, net, info, cells, labels, allowed = lab.clf, lab.net, lab.info, lab.cells, lab.labels, lab.allowed

    rows = []
    for seed in args.seeds:
        perm = np.random.default_rng(seed).permutation(len(labels))
        test, pool = perm[: args.held_out], perm[args.held_out :]
        for rule in args.rules:
            t0 = time.perf_counter()
            picked = pool[choose_cells(clf, cells[pool], args.n, rule=rule, seed=seed)]
            choose_s = time.perf_counter() - t0
            tuned = finetune(net, cells[picked], labels[picked], info.mean, info.std, seed=seed)
            logits = mean_view_logits(tuned, cells[test], info.mean, info.std, 4)
            p5, _ = restrict_probabilities(torch.softmax(torch.from_numpy(logits), 1).numpy(), clf.classes, allowed)
            acc = float((p5.argmax(1) == labels[test]).mean())
            counts = {clf.classes[c]: int((labels[picked] == c).sum()) for c in sorted(set(labels[picked]))}
            rows.append({"seed": seed, "rule": rule, "labelled": len(picked), "held_out": len(test),
                         "acc_held_out_tta4": acc, "labelled_per_class": counts, "choose_seconds": choose_s})
            print(f"seed {seed} {rule:>10}: held-out {acc:.3f}  labelled {counts}  ({choose_s:.1f} s to choose)",
                  flush=True)
    acc = {r: np.array([x["acc_held_out_tta4"] for x in rows if x["rule"] == r]) for r in args.rules}
    summary: dict[str, dict[str, object]] = {r: {"mean": float(a.mean()), "draws": a.tolist()} for r, a in acc.items()}
    if "random" in acc:  # each rule against the random draw on the same held-out cells, draw by draw
        from scipy.stats import wilcoxon

        for r, a in acc.items():
            if r != "random" and len(a) > 1:
                diff = a - acc["random"]
                summary[r]["gain_over_random"] = float(diff.mean())
                summary[r]["draws_up_level_down"] = [int(np.sum(diff > 0)), int(np.sum(diff == 0)),
                                                     int(np.sum(diff < 0))]
                summary[r]["wilcoxon_p"] = float(wilcoxon(diff).pvalue) if np.any(diff) else 1.0
    print(json.dumps(summary, indent=1))
    if args.output:
        atomic_write_json(args.output, {"model": str(clf.path), "model_id": clf.model_id,
                                        "folder": str(args.folder), "n": args.n,
                                        "held_out": args.held_out, "summary": summary, "draws": rows,
                                        "provenance": provenance(__file__, argv, clf.model_id)})
    return 0


if __name__ == "__main__":
    from _run import run

    run(main)
