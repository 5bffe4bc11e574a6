"""How `wbc adapt --no-labels` chooses a colour mapping, checked with labels: every candidate's label-free score
and its accuracy, and what each margin would choose.

For each model and each lab folder (``<class>/<cell>.png``, 5-part labels used only to score), the cells are
prepared as ``wbc adapt --no-labels`` prepares them (the model's own framing, the second framings of ambiguously
framed cells averaged in; ``--framing lab``: cut at the lab's one magnification, adapt's third framing,
:func:`wbc.adapt_unlabelled.measure_lab`), every candidate (no mapping and each stain mapping in ``--methods``,
fitted on the lab's pooled colours) is scored by :func:`wbc.adapt_unlabelled.score_probs`, and its accuracy is
measured as `wbc classify --classes 5part` would give it after adaptation: with the lab's class frequencies
estimated from the same cells (EM) and applied; ``--score-over all`` scores over every class, as `wbc adapt
--no-labels` does without ``--classes``. A margin "chooses" the best-scoring mapping only when it beats no
mapping by more than the margin (:func:`wbc.adapt_unlabelled.pick_mapping`).

    python benchmarks/framed_labs.py --colour --output /tmp/colour_labs
    python benchmarks/bccd_cells.py --split trainval --n 0 --output /tmp/bccd_trainval
    python benchmarks/mapping_choice.py --labs /tmp/bccd_trainval /tmp/colour_labs/* \\
        --output benchmarks/results/mapping_choice.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository: relative defaults are resolved against it


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=[None], help="classifier ONNX files (default: the shipped model)")
    ap.add_argument("--labs", type=Path, nargs="+", required=True, help="folders of <class>/<cell> images")
    ap.add_argument("--margins", type=float, nargs="+", default=[0.02, 0.05])
    ap.add_argument("--framing", choices=["own", "lab"], default="own",
                    help="the model's own framing, or the lab's one magnification")
    ap.add_argument("--methods", nargs="+", default=["reinhard", "macenko", "histogram"])
    ap.add_argument("--score-over", choices=["5part", "all"], default="5part",
                    help="the classes the scores are computed over: `wbc adapt --no-labels --classes 5part`, or "
                         "every class, as it scores without --classes")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/mapping_choice.json")
    args = ap.parse_args(argv)

    import numpy as np
    from _provenance import provenance

    from wbc.adapt_unlabelled import (
        candidate_views,
        class_prior_of,
        measure_lab,
        pick_mapping,
        score_probs,
        set_weights,
    )
    from wbc.classify import load_cell_views
    from wbc.io import atomic_write_json, iter_image_paths
    from wbc.labels import parse_class_set
    from wbc.model import apply_class_prior, load_model
    from wbc.reframe import framing_stats_of

    rows = []
    for model in args.models:
        clf = load_model(model, threads=args.threads)
        allowed = parse_class_set("5part", clf.classes)
        for lab in args.labs:
            paths = [p for p in iter_image_paths([lab]) if p.parent.name in allowed]
            if not paths:
                raise SystemExit(f"error: {lab}: no <class>/<image> files of the five WBC types")
            stats = (measure_lab(paths, args.threads) if args.framing == "lab" else None) or framing_stats_of(clf)
            # as `wbc adapt --no-labels` scores them: the second framings of ambiguously framed cells averaged in
            cells, second, ok, _ = load_cell_views(paths, clf.info.input_size, args.threads, reframe=stats)
            y = np.array([allowed.index(paths[i].parent.name) for i in ok])
            cands, acc = [], {}
            over = allowed if args.score_over == "5part" else ()
            five = [clf.classes.index(c) for c in allowed]
            for name, (_spec, views, w) in candidate_views(clf, cells, over, tuple(args.methods), second).items():
                cands.append(score_probs(views, list(over or clf.classes), name))
                p5 = views[0] if over else views[0][:, five] / views[0][:, five].sum(1, keepdims=True)
                w5 = w if over else set_weights(views[0], list(clf.classes), allowed)  # as `wbc adapt` weights them
                probs = apply_class_prior(p5, list(allowed), class_prior_of(p5, list(allowed), w5)[0])
                acc[name] = float((probs.argmax(1) == y).mean())
            row = {"model": clf.model_id, "version": clf.info.version, "lab": str(lab), "n": len(y),
                   "framing": args.framing, "scored_over": args.score_over,
                   "candidates": {c.name: {"score": round(c.score, 4), "accuracy": round(acc[c.name], 4)}
                                  for c in cands},
                   "chosen": {str(m): pick_mapping(cands, m)[0] for m in args.margins}}
            rows.append(row)
            line = "  ".join(f"{k} {v['score']:.3f}/{v['accuracy']:.3f}" for k, v in row["candidates"].items())
            print(f"{clf.info.version} {lab.name:<20} {line}  chosen {row['chosen']}", flush=True)
    atomic_write_json(args.output, {"what": "score/accuracy (5-part, class prior applied) per candidate",
                                    "margins": args.margins, "rows": rows, "provenance": provenance(__file__, argv)})
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    from _run import run

    run(main)
