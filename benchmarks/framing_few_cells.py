"""`wbc adapt --no-labels` on small folders: which framing each margin rule would choose, and what it costs or gains.

Each draw takes ``--n`` random cells of a labelled pool (PBC validation cells of all eight kinds, as a lab's folder
holds them, or a ``<class>/<cell>`` folder such as BCCD's train/val crops), adapts the model on them without labels
with the framing chosen (``auto``) and with each framing fixed (``band``, ``lab``), and scores the shipped model and
each adapted one on ``--scored`` other cells of the pool (five WBC types, answered over them). Every framing's score
is kept, so each margin rule is judged on the same draws: ``fixed`` (:data:`wbc.adapt_unlabelled.LAB_MIN_GAIN` at any
size, what `wbc adapt --no-labels` does) and ``scaled`` (below ``FEW_CELLS`` at least two cells' worth, ``2 / n``;
measured for wbc 0.34.0 and not adopted: docs/generalisation.md, "One magnification for the lab"). ``auto_chose`` is
what the code run chose.

    python benchmarks/framing_few_cells.py --pool pbc-val --n 25 --seeds 1 2 3 4 5 6 7 8 --classes 5part all \\
        --output benchmarks/results/framing_few_cells_pbc25.json
    python benchmarks/framing_few_cells.py --pool /tmp/bccd_tight_trainval --n 25 --seeds 1 2 3 4 5 \\
        --output benchmarks/results/framing_few_cells_bccd25.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pool", default="pbc-val", help="pbc-val (the manifest's validation split) or a <class>/<cell> "
                    "folder")
    ap.add_argument("--manifest", type=Path, default=ROOT / "runs/default/manifest.csv")
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--n", type=int, default=25, help="cells per draw (the lab's folder)")
    ap.add_argument("--scored", type=int, default=200, help="other cells of the five WBC types scored per draw")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1])
    ap.add_argument("--classes", nargs="+", default=["5part"], help="5part and/or all (no --classes)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--output", type=Path, default=None)
    args = ap.parse_args(argv)

    import shutil

    import numpy as np
    from _provenance import provenance

    from wbc.adapt_unlabelled import FEW_CELLS, LAB_MIN_GAIN, MIN_GAIN, adapt_unlabelled, pick_mapping
    from wbc.classify import classify_paths
    from wbc.data import load_dataset, read_manifest
    from wbc.io import atomic_write_json
    from wbc.labels import WBC5
    from wbc.model import load_model
    from wbc.paths import data_root

    pool = ([(s.path, s.label) for s in read_manifest(args.manifest, "val", data_root())] if args.pool == "pbc-val"
            else [(s.path, s.label) for s in load_dataset(args.pool).samples])

    def accuracy(model: Path | None, cells: list[tuple[Path, str]]) -> float:
        res = classify_paths([p for p, _ in cells], load_model(model, threads=args.threads), classes="5part")
        return float(np.mean([p.label == lab for p, (_, lab) in zip(res.predictions, cells, strict=True)]))

    def chosen(scores: dict[str, float], n: int, rule: str) -> str:
        """The framing a margin rule chooses from every framing's score (band: the model's own)."""
        lab_margin = max(LAB_MIN_GAIN, 2 / n) if rule == "scaled" and n < FEW_CELLS else LAB_MIN_GAIN
        clear = {k: v for k, v in scores.items() if k != "band"
                 and v > scores["band"] + (lab_margin if k == "lab" else MIN_GAIN)}
        return max(clear, key=lambda k: clear[k]) if clear else "band"

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            draw = random.Random(seed).sample(pool, args.n)
            rest = [c for c in pool if c not in draw and c[1] in WBC5]
            scored = random.Random(99).sample(rest, min(args.scored, len(rest)))
            folder = Path(tmp) / f"draw{seed}"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            for i, (p, _) in enumerate(draw):
                shutil.copy(p, folder / f"{i:03d}_{Path(p).name}")
            shipped = accuracy(args.model, scored)
            for classes in args.classes:
                restrict = None if classes == "all" else classes
                auto = adapt_unlabelled(args.model, folder, Path(tmp) / "auto.onnx", classes=restrict,
                                        threads=args.threads)
                best_per = {}  # each framing's score under the colour mapping chosen for it, as choose_framing has it
                for f in dict.fromkeys(c.framing for c in auto.candidates):
                    of_f = [c for c in auto.candidates if c.framing == f]
                    name = pick_mapping(of_f)[0]
                    best_per[f] = next(c.score for c in of_f if c.name == name)
                acc = {}
                for framing in ("band", "lab"):
                    if framing in best_per:
                        adapt_unlabelled(args.model, folder, Path(tmp) / f"{framing}.onnx", classes=restrict,
                                         threads=args.threads, framing=framing)
                        acc[framing] = accuracy(Path(tmp) / f"{framing}.onnx", scored)
                row = {"seed": seed, "n": args.n, "classes": classes, "scores": best_per, "auto_chose": auto.framing,
                       "shipped": shipped, "adapted": acc,
                       "rules": {r: chosen(best_per, len(draw), r) for r in ("fixed", "scaled")}}
                rows.append(row)
                print(json.dumps(row), flush=True)
    summary = {}
    for classes in args.classes:
        got = [r for r in rows if r["classes"] == classes]
        for rule in ("fixed", "scaled"):
            accs = [r["adapted"].get(r["rules"][rule], np.nan) for r in got]
            summary[f"{classes} {rule}"] = {
                "lab_chosen": sum(r["rules"][rule] == "lab" for r in got), "draws": len(got),
                "mean_adapted": float(np.nanmean(accs)), "mean_shipped": float(np.mean([r["shipped"] for r in got])),
                "draws_below_shipped": sum(a + 1e-9 < r["shipped"] for a, r in zip(accs, got, strict=True))}
            print(classes, rule, summary[f"{classes} {rule}"], flush=True)
    if args.output:
        atomic_write_json(args.output, {"provenance": provenance(__file__, argv), "summary": summary, "rows": rows})
    return 0


if __name__ == "__main__":
    from _run import run

    run(main)
