"""A class the lab labelled no cell of: what adaptation does to it, and whether keeping it out of the softmax helps.

Each draw labels ``--n`` random cells of ``--train`` with no cell of the ``--absent`` class (``none``: any cells),
adapts the shipped model on them (``--methods``: the head refit, :func:`wbc.adapt.adapt_embeddings`, and the
fine-tuning, :func:`wbc.train.finetune.finetune`, `wbc adapt`'s recipe) once as `wbc adapt` did before wbc 0.34.0
(every class in the softmax, so every labelled cell pushes the absent classes' logits down) and once with the
five-part classes no cell is labelled as left out of it (``kept``/``trained``: their head rows stay the base
model's), and scores both on ``--val`` (five-part, the mean of four rotations, as the adapted model answers): the
accuracy on its cells of the other classes, and how many cells of the absent class (``--val`` and ``--train``, none
of which was labelled) are still named as it. The model as shipped is scored on the same cells.

    python benchmarks/bccd_cells.py --split train --n 0 --tight --output /tmp/bccd_train
    python benchmarks/bccd_cells.py --split val --n 0 --tight --output /tmp/bccd_val
    python benchmarks/absent_class.py --train /tmp/bccd_train --val /tmp/bccd_val --n 50 --seeds 0 1 2 3 4 \\
        --absent none monocyte lymphocyte eosinophil --methods head --output benchmarks/results/absent_class_head.json
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
    ap.add_argument("--train", type=Path, required=True, help="<class>/<cell> images the labelled cells are drawn from")
    ap.add_argument("--val", type=Path, required=True, help="<class>/<cell> images scored (never labelled)")
    ap.add_argument("--model", type=Path, default=None, help="ONNX model with its .pt beside it (default: shipped)")
    ap.add_argument("--n", type=int, default=50, help="cells labelled per draw")
    ap.add_argument("--absent", nargs="+", default=["none", "monocyte"], help="class left out of the draw")
    ap.add_argument("--methods", nargs="+", default=["head"], choices=["head", "finetune"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs (default: the recipe's)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--output", type=Path, default=None, help="JSON to write")
    args = ap.parse_args(argv)

    import numpy as np
    from _provenance import provenance

    from wbc.adapt import adapt_embeddings, embed_tta, original_head
    from wbc.io import atomic_write_json
    from wbc.labels import WBC5
    from wbc.train.finetune import finetune, mean_view_logits

    train = load_lab_folder(args.train, args.model, args.threads)
    val = load_lab_folder(args.val, args.model, args.threads)
    clf, net, info, classes = train.clf, train.net, train.info, list(train.clf.classes)
    five = [classes.index(c) for c in WBC5 if c in classes]
    w0, b0 = original_head(clf)
    emb_train = embed_tta(clf, train.cells, views=8) if "head" in args.methods else None
    emb_val = embed_tta(clf, val.cells, views=4)

    def answers(logits: np.ndarray) -> np.ndarray:
        """The five-part answer (the class index) of mean-of-rotations logits."""
        return np.asarray(five)[logits[:, five].argmax(1)]

    def scores(named_val: np.ndarray, named_train: np.ndarray, absent: int | None, drawn: np.ndarray
               ) -> dict[str, object]:
        others = val.labels != absent if absent is not None else np.ones(len(val.labels), bool)
        out: dict[str, object] = {"others_right": int((named_val[others] == val.labels[others]).sum()),
                                  "others_n": int(others.sum())}
        if absent is not None:
            rest = np.setdiff1d(np.flatnonzero(train.labels == absent), drawn)  # never labelled (none is)
            named = np.concatenate([named_val[val.labels == absent], named_train[rest]])
            out |= {"absent_named_right": int((named == absent).sum()), "absent_n": len(named),
                    "absent_named_as": {classes[c]: int((named == c).sum()) for c in sorted(set(named.tolist()))}}
        return out

    base_val = answers(emb_val.mean(0) @ w0.T + b0)
    base_train = answers(embed_tta(clf, train.cells, views=4).mean(0) @ w0.T + b0)
    rows = []
    for absent_name in args.absent:
        absent = None if absent_name == "none" else classes.index(absent_name)
        pool = np.flatnonzero(train.labels != absent) if absent is not None else np.arange(len(train.labels))
        for seed in args.seeds:
            drawn = np.sort(np.random.default_rng(seed).choice(pool, min(args.n, len(pool)), replace=False))
            labels = [classes[c] for c in train.labels[drawn]]
            kept = tuple(c for c in WBC5 if c in classes and c not in labels)
            row: dict[str, object] = {"absent": absent_name, "seed": seed, "labelled": len(drawn), "kept": list(kept),
                                      "shipped": scores(base_val, base_train, absent, drawn)}
            for method in args.methods:
                for variant, keep in (("all_in_softmax", ()), ("absent_kept", kept)):
                    t0 = time.perf_counter()
                    if method == "head":
                        assert emb_train is not None
                        w, b, _ = adapt_embeddings(emb_train[:, drawn], labels, classes, w0, b0, seed=seed,
                                                   tta_views=4, kept=keep)
                        lv = emb_val.mean(0) @ w.T + b
                        lt = emb_train[:4].mean(0) @ w.T + b
                    else:
                        recipe = {"epochs": args.epochs} if args.epochs else {}
                        tuned = finetune(net, train.cells[drawn], train.labels[drawn], info.mean, info.std, seed=seed,
                                         trained=[classes.index(c) for c in classes if c not in keep] if keep
                                         else None, **recipe)
                        lv = mean_view_logits(tuned, val.cells, info.mean, info.std, 4)
                        lt = mean_view_logits(tuned, train.cells, info.mean, info.std, 4)
                    row[f"{method}/{variant}"] = scores(answers(lv), answers(lt), absent, drawn) | {
                        "seconds": round(time.perf_counter() - t0, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary: dict[str, dict[str, object]] = {}
    for absent_name in args.absent:
        got = [r for r in rows if r["absent"] == absent_name]
        for key in ["shipped", *[f"{m}/{v}" for m in args.methods for v in ("all_in_softmax", "absent_kept")]]:
            parts = [r[key] for r in got]
            s: dict[str, object] = {"others": sum(p["others_right"] for p in parts) / sum(p["others_n"] for p in parts)}
            if absent_name != "none":
                s["absent_recall"] = (sum(p["absent_named_right"] for p in parts) / sum(p["absent_n"] for p in parts))
            summary[f"{absent_name} {key}"] = s
            print(f"absent {absent_name:<11} {key:<24} " + "  ".join(f"{k} {v:.3f}" for k, v in s.items()), flush=True)
    if args.output:
        atomic_write_json(args.output, {"provenance": provenance(__file__, argv, clf.model_id), "summary": summary,
                                        "rows": rows})
    return 0


if __name__ == "__main__":
    from _run import run

    run(main)
