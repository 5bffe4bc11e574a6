"""Export a training run's current ``best.pt`` (e.g. of a run stopped early) as a float ONNX model.

`wbc train` exports only when a run finishes. On a shared 2-core machine the shape-first fine-tuning
(``configs/shape_first.toml``) could not finish in the time there was, so its best checkpoint so far was
exported with this script: the metadata is the run's (classes, input size, normalisation, its config),
temperature and review threshold are fitted on the run's validation split as `wbc train` fits them, the cell
fraction and colour statistics are copied from ``--like`` (the model the run was fine-tuned from, measured
on the same training images), and ``--reframe canonical`` records that the network was trained to take
every cell re-framed (``wbc.reframe.CANONICAL``). Then quantise with `wbc quantize` as usual.

    python scripts/export_partial_run.py runs/shape_first --like src/wbc/models/default/wbc_classifier.onnx \
        --output runs/shape_first/model.onnx [--reframe canonical]
"""

from __future__ import annotations

import argparse
import copy
import json
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from wbc.errors import WbcError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--like", type=Path, required=True, help="the model the run was fine-tuned from")
    ap.add_argument("--output", type=Path, required=True)
    ap.add_argument("--checkpoint", default="best.pt")
    ap.add_argument("--reframe", choices=["default", "canonical"], default="default")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    for f in (args.run / "config.json", args.run / "manifest.csv", args.run / args.checkpoint):
        if not f.is_file():
            raise SystemExit(f"error: {f}: not found (is {args.run} a training run folder?)")

    import numpy as np
    import torch

    from wbc.calibration import fit_temperature, review_threshold
    from wbc.classify import load_cells
    from wbc.data import read_manifest
    from wbc.model import load_model, softmax
    from wbc.reframe import CANONICAL
    from wbc.train.export import export_model
    from wbc.train.loop import predict_logits, summarise
    from wbc.train.models import create_model

    torch.set_num_threads(args.threads)
    like = load_model(args.like, threads=1)
    cfg = json.loads((args.run / "config.json").read_text())
    ck = torch.load(args.run / args.checkpoint, map_location="cpu", weights_only=False)
    net = create_model(ck["arch"], len(like.classes), pretrained=False, dropout=ck.get("dropout", 0.0))
    net.load_state_dict(ck["model"])
    net.eval()
    val = [s for s in read_manifest(args.run / "manifest.csv", "val") if s.label in like.classes]
    cells, ok, _ = load_cells([s.path for s in val], like.info.input_size, args.threads)
    y = np.array([like.classes.index(val[i].label) for i in ok])
    info = copy.deepcopy(like.info)
    logits = predict_logits(net, cells, info.mean, info.std)
    t = float(fit_temperature(logits, y))
    probs = softmax(logits, t)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    info.temperature = t
    info.review_threshold = float(review_threshold(probs.max(1), probs.argmax(1) == y, info.review_target_accuracy))
    info.metrics = summarise(logits, y, like.classes) | {"split": "val"}
    info.model_id = f"wbc-{ck['arch']}-pbc-shapefirst-{stamp}"
    info.created = stamp
    info.head = {}
    info.extra = {k: v for k, v in info.extra.items() if k not in ("quantization", "adapt")}
    info.extra["config"] = cfg
    info.extra["fine_tuned_from"] = like.model_id
    info.extra["checkpoint"] = f"{args.run / args.checkpoint} (epochs done: {ck.get('epoch', 'see metrics.csv')})"
    if args.reframe == "canonical":
        info.extra["reframe"] = {"target": CANONICAL.target, "low": CANONICAL.low, "high": CANONICAL.high}
    diff = export_model(net, info, args.output, torch.rand(2, 3, info.network_size, info.network_size) * 4 - 2)
    print(json.dumps({"output": str(args.output), "val": info.metrics["accuracy"], "temperature": t,
                      "review_threshold": info.review_threshold, "onnx_max_abs_diff": diff,
                      "model_id": info.model_id, "reframe": asdict(CANONICAL) if args.reframe == "canonical"
                      else "default"}, indent=2))
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except WbcError as exc:  # e.g. --like not a model: one line, as `wbc` says it
        raise SystemExit(f"error: {exc}") from None
