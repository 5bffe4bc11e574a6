"""Shared by the benchmarks that show BCCD's smear fields otherwise (``eyepiece_smears.py``, ``canvas_smears.py``):
their common flags, and one split scored as ``wbc evaluate-smears`` scores it with the fields (and their boxes)
changed where the evaluation reads them, nothing else."""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]  # the repository: relative defaults are resolved against it


def add_smear_args(ap: argparse.ArgumentParser, output: str) -> None:
    """``--splits``, ``--model``, ``--data`` and ``--output`` (default ``output``)."""
    ap.add_argument("--splits", nargs="+", default=["val", "train"])
    ap.add_argument("--model", default=None, help="classifier ONNX (default: the shipped model)")
    ap.add_argument("--data", "--data-root", type=Path, default=None,  # --data-root: as load_bccd's message says
                    help="data root (default: $WBC_DATA_DIR or ../shared/data)")
    ap.add_argument("--output", type=Path, default=ROOT / output)


def load_parts(args: argparse.Namespace) -> tuple[Path, Any, Any, dict[str, Any]]:
    """The data root, the classifier (``--model``), the default segmenter and the result's header naming both."""
    from wbc.model import load_model
    from wbc.paths import data_root
    from wbc.segment import get_segmenter

    clf, seg = load_model(args.model), get_segmenter("auto")
    return data_root(args.data), clf, seg, {"model": clf.model_id, "segmenter": getattr(seg, "model_id", seg.name)}


def score_split(root: Path, seg: Any, clf: Any, split: str, shown: str, read: Callable[..., Any] | None = None,
                load: Callable[..., Any] | None = None) -> dict[str, Any]:
    """The detection and subtype metrics of ``split`` as `wbc evaluate-smears` scores them, each field read by
    ``read`` (default: as it is) and the split's items listed by ``load`` (default: BCCD's), as one result row
    labelled ``shown``."""
    import wbc.evaluate.smears as smears

    original_read, original_load = smears.read_image, smears.load_bccd
    smears.read_image = read or original_read  # type: ignore[assignment]
    smears.load_bccd = load or original_load  # type: ignore[assignment]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            m = smears.evaluate_smears(root, Path(tmp), seg, clf, split=split)
    finally:
        smears.read_image, smears.load_bccd = original_read, original_load  # type: ignore[assignment]
    det, sub = m["detection"], m["subtype"]
    f1 = None if det["f1"] is None else round(det["f1"], 4)  # None: a folder without any true box
    row = {"split": split, "field": shown, "detection_f1": f1, "ap50": round(det["ap50"], 4),
           "missed": det["fn"], "false": det["fp"], "subtype_n": sub["n"],
           "subtype_accuracy": round(sub["accuracy"], 4), "macro_f1": round(sub["macro_f1"], 4)}
    print(row, flush=True)
    return row
