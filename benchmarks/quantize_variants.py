"""Which parts of the network to keep float when quantising: int8 variants of one float model compared.

For each variant (everything int8 but the head, as ``wbc quantize`` did up to model 1.2.0; the first
convolution float too, as it does now; the depthwise convolutions, the last blocks or the final 1x1
convolution float; percentile or entropy activation ranges) the float model is quantised with the same
calibration cells and scored on the PBC validation split (8 classes) and on a folder of another lab's
labelled cells (5-part, the cells as they are), with the network's speed (cells/s, batch 64). Nothing here
reads a test split.

    wbc export src/wbc/models/default/wbc_classifier.pt --output /tmp/float.onnx
    python benchmarks/bccd_cells.py --split trainval --n 0 --output /tmp/bccd_trainval
    python benchmarks/quantize_variants.py --model /tmp/float.onnx --lab /tmp/bccd_trainval \\
        --output benchmarks/results/quantize_variants.json
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]  # the repository: relative defaults are resolved against it


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="the float ONNX model (wbc export)")
    ap.add_argument("--manifest", type=Path, default=ROOT / "runs/default/manifest.csv")
    ap.add_argument("--lab", type=Path, required=True, help="another lab's cells, <class>/<image>")
    ap.add_argument("--per-class", type=int, default=64, help="calibration cells per class (train split)")
    ap.add_argument("--data", type=Path, default=None, help="data root (default: $WBC_DATA_DIR or ../shared/data)")
    ap.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/quantize_variants.json")
    args = ap.parse_args(argv)

    from _provenance import provenance

    from wbc.classify import load_cells
    from wbc.data import cap_per_class, read_manifest
    from wbc.errors import WbcError
    from wbc.io import atomic_write_json, iter_image_paths
    from wbc.labels import WBC5
    from wbc.model import Classifier, write_model
    from wbc.quantize import float_nodes, quantize_onnx

    fp = Classifier(args.model, threads=2)
    if fp.info.extra.get("quantization"):  # quantising it again failed deep in onnx ("single static assignment")
        raise WbcError(f"{args.model}: already int8; give the float model it came from (wbc export)")
    lab_paths = [p for p in iter_image_paths([args.lab]) if p.parent.name in WBC5]
    if not lab_paths:
        raise WbcError(f"{args.lab}: no <class>/<image> files of the five WBC types ({', '.join(WBC5)})")
    classes, size = fp.classes, fp.info.input_size
    train = [s for s in read_manifest(args.manifest, "train", args.data) if s.label in classes]
    val = [s for s in read_manifest(args.manifest, "val", args.data) if s.label in classes]
    cal, _, _ = load_cells([s.path for s in cap_per_class(train, args.per_class, 0)], size, 2)
    val_cells, val_ok, _ = load_cells([s.path for s in val], size, 2)
    y_val = np.array([classes.index(val[i].label) for i in val_ok])
    lab_cells, lab_ok, _ = load_cells(lab_paths, size, 2)
    y_lab = np.array([classes.index(lab_paths[i].parent.name) for i in lab_ok])
    five = np.array([classes.index(c) for c in WBC5])
    x_cal = fp.network_input(cal)

    def logits(clf: Classifier, cells: np.ndarray) -> np.ndarray:
        return np.concatenate([clf.run(cells[i : i + 64])["logits"] for i in range(0, len(cells), 64)])

    def score(clf: Classifier) -> dict[str, float]:
        lv, ll = logits(clf, val_cells), logits(clf, lab_cells)
        t = time.perf_counter()
        logits(clf, val_cells[:640])
        return {"pbc_val_accuracy": float((lv.argmax(1) == y_val).mean()),
                "lab_accuracy_5part": float((five[ll[:, five].argmax(1)] == y_lab).mean()),
                "network_cells_per_s": round(640 / (time.perf_counter() - t))}

    def named(*parts: str) -> Callable[[Any], list[str]]:
        """Keep float the head and the nodes whose names contain any of ``parts``."""
        def pick(graph: Any) -> list[str]:
            head = [n.name for n in graph.node if "logits" in n.output]
            return head + [n.name for n in graph.node if any(p in n.name for p in parts)]
        return pick

    def stem_and(*parts: str) -> Callable[[Any], list[str]]:
        return lambda graph: sorted(set(float_nodes(graph)) | set(named(*parts)(graph)))

    head_only = named()
    variants: dict[str, tuple[Callable[[Any], list[str]], str]] = {
        "all int8 but the head (up to 1.2.0)": (head_only, "MinMax"),
        "first convolution float too (wbc quantize since 1.2.1)": (float_nodes, "MinMax"),
        "final 1x1 convolution and pooling float": (named("conv_head", "ReduceMean"), "MinMax"),
        "both": (stem_and("conv_head", "ReduceMean"), "MinMax"),
        "depthwise convolutions float": (named("conv_dw"), "MinMax"),
        "last two blocks float": (named("conv_head", "ReduceMean", "blocks.5", "blocks.6"), "MinMax"),
        "percentile ranges (99.99)": (head_only, "Percentile"),
        "entropy ranges": (head_only, "Entropy"),
    }
    results = {"float": score(fp)}
    print("float", results["float"], flush=True)
    with tempfile.TemporaryDirectory(prefix="wbc-qv-") as tmp:
        for i, (name, (keep_float, method)) in enumerate(variants.items()):
            dst = Path(tmp) / f"v{i}.onnx"
            extra = {"CalibPercentile": 99.99} if method == "Percentile" else None
            quantize_onnx(args.model, dst, x_cal, keep_float=keep_float, method=method, extra_options=extra)
            write_model(dst, dst.read_bytes(), fp.info)
            results[name] = score(Classifier(dst, threads=2))
            print(name, results[name], flush=True)
    atomic_write_json(args.output, {"model": fp.info.model_id, "lab": str(args.lab), "n_val": len(y_val),
                                    "n_lab": len(y_lab), "calibration_cells": len(cal), "variants": results,
                                    "provenance": provenance(__file__, argv, fp.info.model_id)})
    print(f"-> {args.output}")
    return 0


if __name__ == "__main__":
    from _run import run

    run(main)
