"""Few-shot fine-tuning with the lab's unlabelled cells (``wbc adapt --unlabelled``) against without them.

``n`` random cells of a labelled folder are the lab's labelled cells; the other cells are split in two random
halves: half A is given to the fine-tuning without labels (``--unlabelled``), half B is not. Both halves are
scored (5-part), so one fit says how the consistency term does on cells it saw without labels (a lab adapting
on the slides it will count) and on cells it never saw (new slides). ``--weight 0`` is the plain recipe on the
same draw. Fitting time is reported too.

    python benchmarks/bccd_cells.py --split trainval --n 0 --output /tmp/bccd_trainval
    python benchmarks/semi_finetune.py --folder /tmp/bccd_trainval --seeds 0 1 2 --threshold 0.75 \
        --output benchmarks/results/semi_finetune_t075.json
    python benchmarks/semi_finetune.py --folder /tmp/bccd_trainval --seeds 0 1 2 --weights 1 --threshold 0.9 \
        --output benchmarks/results/semi_finetune_t090.json

The second chose ``wbc adapt``'s threshold (0.9; docs/generalisation.md). ``--tta 4`` also scores the mean of
the four rotations, what the fine-tuned model answers (``wbc adapt --tta``, default 4):

    python benchmarks/semi_finetune.py --folder /tmp/bccd_trainval --seeds 0 1 2 --weights 0 --tta 4 \
        --output benchmarks/results/semi_finetune_tta4.json

``--frozen PREFIX...`` keeps some weights fixed (surgical fine-tuning) and ``--members K`` averages K fine-tuned
copies, as ``wbc adapt --members K`` (both measured in wbc 0.19.0, not adopted: docs/generalisation.md).
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
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--folder", type=Path, required=True, help="<class>/<cell> images of one lab")
    ap.add_argument("--model", type=Path, default=None, help="ONNX model with its .pt beside it (default: shipped)")
    ap.add_argument("--n", type=int, default=100, help="labelled cells (the rest are scored)")
    ap.add_argument("--weights", type=float, nargs="+", default=[0.0, 1.0], help="consistency weights to compare")
    ap.add_argument("--threshold", type=float, default=0.9, help="pseudo-label confidence (wbc adapt: 0.9)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tta", type=int, default=1, help="also score the mean logits of this many flips/rotations")
    ap.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs (default: wbc adapt's)")
    ap.add_argument("--lr", type=float, default=None, help="peak learning rate (default: wbc adapt's)")
    ap.add_argument("--label-smoothing", type=float, default=None, help="(default: wbc adapt's)")
    ap.add_argument("--interpolate", type=float, nargs="+", default=[1.0],
                    help="score the fine-tuned weights blended with the original ones, this share fine-tuned "
                         "(1: the fine-tuned network alone; WiSE-FT, Wortsman et al. 2022)")
    ap.add_argument("--framing", choices=("model", "auto"), default="model",
                    help="model: the cells framed as the model frames them; auto: each draw's labelled cells "
                         "choose it without their labels, as `wbc adapt --no-labels` chooses (tried in wbc 0.18.0, "
                         "not adopted: docs/generalisation.md)")
    ap.add_argument("--members", type=int, default=1,
                    help="fine-tuned copies (seeds seed, seed+1, ...) averaged, as `wbc adapt --members K`")
    ap.add_argument("--frozen", nargs="*", default=[], help="parameter-name prefixes kept fixed "
                    "(e.g. backbone.conv_stem backbone.blocks.0)")
    ap.add_argument("--output", type=Path, default=None, help="JSON to write")
    args = ap.parse_args(argv)

    from _provenance import provenance

    if args.members > 1 and args.interpolate != [1.0]:
        ap.error("--interpolate blends one network with the original; it cannot be used with --members")

    import numpy as np
    import torch

    from wbc.classify import load_cells
    from wbc.io import atomic_write_json
    from wbc.labels import restrict_probabilities
    from wbc.reframe import framing_stats_of
    from wbc.train.finetune import blend_weights, finetune_members, mean_view_logits, strong_augment
    from wbc.train.loop import predict_logits

    lab = load_lab_folder(args.folder, args.model, args.threads)
    clf, net, info, paths, ok = lab.clf, lab.net, lab.info, lab.paths, lab.ok
    cells, labels, allowed = lab.cells, lab.labels, lab.allowed
    strong = strong_augment(clf.info)
    recipe = {k: v for k, v in (("epochs", args.epochs), ("lr", args.lr),
                                ("label_smoothing", args.label_smoothing)) if v is not None}

    def score(logits: np.ndarray, idx: np.ndarray) -> np.ndarray:  # right or wrong, 5-part, each cell of idx
        p5, _ = restrict_probabilities(torch.softmax(torch.from_numpy(logits), 1).numpy(), clf.classes, allowed)
        return p5.argmax(1) == labels[idx]

    rows = []
    own_cells = cells
    for seed in args.seeds:
        perm = np.random.default_rng(seed).permutation(len(labels))
        lab, rest = perm[: args.n], perm[args.n :]
        framing = "model"
        cells = own_cells
        if args.framing == "auto":  # chosen on this draw's labelled cells, without their labels
            from wbc.adapt_unlabelled import choose_framing, framing_name, framing_reason

            best, tried = choose_framing(clf, [paths[ok[i]] for i in lab], "auto", (), (), args.threads)
            framing = framing_name(best.stats)
            print(f"seed {seed}: {framing_reason(best, tried)}", flush=True)
            if best.stats != framing_stats_of(clf):
                cells, ok_now, _ = load_cells(paths, clf.info.input_size, args.threads, reframe=best.stats)
                assert ok_now == ok, "the same files must load in every framing"
        half_a, half_b = rest[: len(rest) // 2], rest[len(rest) // 2 :]
        for weight in args.weights:
            t0 = time.perf_counter()
            tuned = finetune_members(net, cells[lab], labels[lab], info.mean, info.std, args.members, seed=seed,
                             unlabelled=np.concatenate([cells[lab], cells[half_a]]), unlabelled_weight=weight,
                             unlabelled_threshold=args.threshold, strong=strong,
                             frozen=args.frozen, **recipe)
            secs = time.perf_counter() - t0
            for share in args.interpolate:
                scored = blend_weights(net, tuned, share)
                right = score(predict_logits(scored, cells[rest], info.mean, info.std), rest)
                row = {"seed": seed, "framing": framing, "weight": weight, "share": share, "threshold": args.threshold,
                       "labelled": len(lab), "acc_seen_unlabelled": float(right[: len(half_a)].mean()),
                       "acc_unseen": float(right[len(half_a) :].mean()), "acc_all_other": float(right.mean()),
                       "n_seen": len(half_a), "n_unseen": len(half_b), "fit_seconds": secs}
                if args.tta > 1:
                    right_tta = score(mean_view_logits(scored, cells[rest], info.mean, info.std, args.tta), rest)
                    row[f"acc_all_other_tta{args.tta}"] = float(right_tta.mean())
                rows.append(row)
                print(f"seed {seed} weight {weight} share {share}: other cells {row['acc_all_other']:.3f} "
                      + (f"({args.tta} views {row[f'acc_all_other_tta{args.tta}']:.3f}) " if args.tta > 1 else "")
                      + f"(given unlabelled {row['acc_seen_unlabelled']:.3f}, never given {row['acc_unseen']:.3f}), "
                      f"{secs:.0f} s", flush=True)
    keys = ("acc_seen_unlabelled", "acc_unseen", "acc_all_other", "fit_seconds",
            *([f"acc_all_other_tta{args.tta}"] if args.tta > 1 else []))
    summary = {(str(w) if args.interpolate == [1.0] else f"{w} share {a}"):
               {k: float(np.mean([r[k] for r in rows if r["weight"] == w and r["share"] == a])) for k in keys}
               for w in args.weights for a in args.interpolate}
    print(json.dumps(summary, indent=1))
    if args.output:
        atomic_write_json(args.output, {"model": str(clf.path), "model_id": clf.model_id,
                                        "folder": str(args.folder), "recipe": recipe,
                                        "frozen": args.frozen, "members": args.members, "summary": summary,
                                        "draws": rows,
                                        "provenance": provenance(__file__, argv, clf.model_id)})
    return 0


if __name__ == "__main__":
    from _run import run

    run(main)
