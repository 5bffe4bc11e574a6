"""Average the weights of networks trained from one starting point (a "model soup", Wortsman et al. 2022).

Writes a checkpoint that ``wbc export`` turns into an ONNX model, to score like any other:

    python benchmarks/weight_average.py --output /tmp/soup.pt runs/e2_lr2/best.pt runs/e2_lr2_s2/best.pt
    wbc export /tmp/soup.pt --output /tmp/soup.onnx
    wbc evaluate runs/default/manifest.csv --split val --model /tmp/soup.onnx
    wbc evaluate /tmp/bccd_trainval --model /tmp/soup.onnx --classes 5part

``PATH:W`` weights a checkpoint (default 1; normalised). Float tensors are averaged (BatchNorm statistics
included), integer ones (BatchNorm's step counter) are taken from the first. Tried for model 1.4 and not
adopted (docs/generalisation.md, "A third epoch").
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoints", nargs="+", help="best.pt files (or wbc_classifier.pt), PATH[:WEIGHT]")
    ap.add_argument("--output", type=Path, required=True)
    args = ap.parse_args(argv)

    paths, weights = [], []
    for spec in args.checkpoints:
        path, _, w = spec.partition(":")
        paths.append(path)
        weights.append(float(w or 1))
    weights = [w / sum(weights) for w in weights]
    for path in paths:  # before torch's import (seconds)
        if not Path(path).is_file():
            raise SystemExit(f"error: {path}: no such checkpoint")

    import torch

    from wbc.train.loop import save_atomic

    ckpts = [torch.load(p, map_location="cpu", weights_only=False) for p in paths]
    first = ckpts[0]["model"]
    if any(set(c["model"]) != set(first) for c in ckpts[1:]):
        raise SystemExit("error: the checkpoints are not the same network")
    state = {k: (sum(w * c["model"][k].float() for w, c in zip(weights, ckpts, strict=True))
                 if v.is_floating_point() else v) for k, v in first.items()}
    save_atomic({**ckpts[0], "model": state}, args.output)
    print(f"{args.output}: {', '.join(f'{p} x {w:.2f}' for p, w in zip(paths, weights, strict=True))}")
    return 0


if __name__ == "__main__":
    from _run import run

    run(main)
