"""Smear fields photographed through an eyepiece: ``wbc analyze``'s path on BCCD fields as they are and with the
black outside a round field of view a phone or camera behind an eyepiece records.

Each BCCD field of the split is scored as ``wbc evaluate-smears`` scores it (detection, outlines, subtypes), once
as it is and once shown through an eyepiece (:func:`reframe_accuracy.eyepiece`: black outside a disc
``--radius`` x the field's height across from its centre, a soft edge, dimmer toward the rim; the field's corners
fall outside; ``--black``: with stray light lifting that black, as a phone's flare or lifted shadows do). The
fields are changed where the evaluation reads them, nothing else. Choose on ``val`` and ``train``; never tune on
``test``.

    python benchmarks/eyepiece_smears.py --splits val train --output benchmarks/results/eyepiece_smears.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reframe_accuracy import eyepiece
from shift_suite import stray_light


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--splits", nargs="+", default=["val", "train"])
    ap.add_argument("--radius", type=float, default=0.58, help="the field of view's radius / the field's height")
    ap.add_argument("--black", type=float, default=0.0,
                    help="stray light: the black outside the field of view lifted to this (0-255), evenly")
    ap.add_argument("--model", default=None, help="classifier ONNX (default: the shipped model)")
    ap.add_argument("--data", type=Path, default=None, help="data root (default: $WBC_DATA_DIR or ../shared/data)")
    ap.add_argument("--output", type=Path, default=Path("benchmarks/results/eyepiece_smears.json"))
    args = ap.parse_args(argv)

    import wbc.evaluate.smears as smears
    from wbc.io import atomic_write_json
    from wbc.model import load_model
    from wbc.paths import data_root
    from wbc.segment import get_segmenter

    root = data_root(args.data)
    clf, seg = load_model(args.model), get_segmenter("auto")
    read = smears.read_image
    res: dict = {"model": clf.model_id, "segmenter": getattr(seg, "model_id", seg.name), "radius": args.radius,
                 "black": args.black, "rows": []}
    for split in args.splits:
        for shown in ("as it is", "through an eyepiece"):
            smears.read_image = read if shown == "as it is" else (  # type: ignore[assignment]
                lambda path, *a, **k: stray_light(eyepiece(read(path, *a, **k), radius=args.radius), args.black))
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    m = smears.evaluate_smears(root, Path(tmp), seg, clf, split=split)
            finally:
                smears.read_image = read  # type: ignore[assignment]
            det, sub = m["detection"], m["subtype"]
            row = {"split": split, "field": shown, "detection_f1": round(det["f1"], 4), "ap50": round(det["ap50"], 4),
                   "missed": det["fn"], "false": det["fp"], "subtype_n": sub["n"],
                   "subtype_accuracy": round(sub["accuracy"], 4), "macro_f1": round(sub["macro_f1"], 4)}
            res["rows"].append(row)
            print(row, flush=True)
    atomic_write_json(args.output, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
