"""Smear fields on a canvas: ``wbc analyze``'s path on BCCD fields as they are and pasted onto a page or padded
with one colour (a figure, a screenshot, a dataset that pads its fields), as a lab may send them.

Each BCCD field of the split is scored as ``wbc evaluate-smears`` scores it (detection and subtypes; the outlines'
Dice is left out, the masks not being padded), once as it is and once in the middle of a canvas ``--factor`` x its
size of each ``--colours`` colour (:func:`shift_suite.canvas`), the boxes moved with it (``--jpeg Q``: the
pasted field saved as a JPEG of quality Q, whose ringing blurs the canvas's edge). The fields are changed where the
evaluation reads them, nothing else. Choose on ``val`` and ``train``; never tune on ``test``.

    python benchmarks/canvas_smears.py --splits val train --output benchmarks/results/canvas_smears.json
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shift_suite import canvas, jpeg

COLOURS = {"white": (255, 255, 255), "grey": (128, 128, 128), "black": (0, 0, 0)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--splits", nargs="+", default=["val", "train"])
    ap.add_argument("--colours", nargs="+", default=list(COLOURS), choices=list(COLOURS))
    ap.add_argument("--factor", type=float, default=1.3, help="the canvas's size / the field's")
    ap.add_argument("--jpeg", type=int, default=None, metavar="QUALITY",
                    help="the field on its canvas saved as a JPEG of this quality (default: exactly as pasted)")
    ap.add_argument("--model", default=None, help="classifier ONNX (default: the shipped model)")
    ap.add_argument("--data", type=Path, default=None, help="data root (default: $WBC_DATA_DIR or ../shared/data)")
    ap.add_argument("--output", type=Path, default=Path("benchmarks/results/canvas_smears.json"))
    args = ap.parse_args(argv)

    import wbc.evaluate.smears as smears
    from wbc.io import atomic_write_json
    from wbc.model import load_model
    from wbc.paths import data_root
    from wbc.segment import get_segmenter

    root = data_root(args.data)
    clf, seg = load_model(args.model), get_segmenter("auto")
    read, load = smears.read_image, smears.load_bccd
    res: dict = {"model": clf.model_id, "segmenter": getattr(seg, "model_id", seg.name), "factor": args.factor,
                 "jpeg_quality": args.jpeg, "rows": []}

    def pasted(rgb: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
        out = canvas(rgb, colour, args.factor)
        return out if args.jpeg is None else jpeg(out, args.jpeg)

    for split in args.splits:
        for shown in ["as it is", *args.colours]:
            def shifted(root_: Path, split_: str = "test", shown: str = shown) -> list:
                items = load(root_, split_)
                if shown == "as it is":
                    return [dataclasses.replace(it, mask=None) for it in items]
                out = []
                for it in items:
                    h, w = read(it.image).shape[:2]
                    ph, pw = round(h * (args.factor - 1) / 2), round(w * (args.factor - 1) / 2)
                    boxes = [(x0 + pw, y0 + ph, x1 + pw, y1 + ph) for x0, y0, x1, y1 in it.wbc_boxes]
                    out.append(dataclasses.replace(it, wbc_boxes=boxes, mask=None))
                return out

            smears.load_bccd = shifted  # type: ignore[assignment]
            if shown != "as it is":
                smears.read_image = (  # type: ignore[assignment]
                    lambda path, *a, c=COLOURS[shown], **k: pasted(read(path, *a, **k), c))
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    m = smears.evaluate_smears(root, Path(tmp), seg, clf, split=split)
            finally:
                smears.read_image, smears.load_bccd = read, load  # type: ignore[assignment]
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
