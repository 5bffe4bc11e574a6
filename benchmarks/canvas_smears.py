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
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _smears_shown import add_smear_args, load_parts, score_split
from shift_suite import canvas, jpeg

COLOURS = {"white": (255, 255, 255), "grey": (128, 128, 128), "black": (0, 0, 0)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_smear_args(ap, "benchmarks/results/canvas_smears.json")
    ap.add_argument("--colours", nargs="+", default=list(COLOURS), choices=list(COLOURS))
    ap.add_argument("--factor", type=float, default=1.3, help="the canvas's size / the field's")
    ap.add_argument("--jpeg", type=int, default=None, metavar="QUALITY",
                    help="the field on its canvas saved as a JPEG of this quality (default: exactly as pasted)")
    args = ap.parse_args(argv)

    from _provenance import provenance

    from wbc.evaluate.smears import load_bccd, read_image
    from wbc.io import atomic_write_json

    root, clf, seg, res = load_parts(args)
    res["provenance"] = provenance(__file__, argv, clf.model_id)
    res.update({"factor": args.factor, "jpeg_quality": args.jpeg, "rows": []})

    def margins(h: int, w: int) -> tuple[int, int]:  # the canvas's rows above and columns left of the field
        return round(h * (args.factor - 1) / 2), round(w * (args.factor - 1) / 2)

    def items(root_: Path, split_: str = "test", errors: list[tuple[str, str]] | None = None, *,
              moved: bool = True) -> list:
        """``load_bccd``'s items (called with its arguments), their boxes moved with the pasted field: with
        ``moved`` a keyword, an argument ``evaluate_smears`` adds to its call cannot land on it (before wbc 0.34.0
        its third, ``errors``, did: every run failed, and a lambda patched to take it scored unmoved boxes)."""
        out = []
        for it in load_bccd(root_, split_, errors):
            ph, pw = margins(*read_image(it.image).shape[:2]) if moved else (0, 0)
            boxes = [(x0 + pw, y0 + ph, x1 + pw, y1 + ph) for x0, y0, x1, y1 in it.wbc_boxes]
            out.append(dataclasses.replace(it, wbc_boxes=boxes, mask=None))  # the masks are not padded: no Dice
        return out

    def pasted(colour: tuple[int, int, int]) -> Callable[..., np.ndarray]:
        def read(path: Path, *a: object, **k: object) -> np.ndarray:
            out = canvas(read_image(path, *a, **k), colour, args.factor)
            return out if args.jpeg is None else jpeg(out, args.jpeg)

        return read

    for split in args.splits:
        res["rows"].append(score_split(root, seg, clf, split, "as it is",
                                       load=lambda r, s="test", e=None: items(r, s, e, moved=False)))
        for name in args.colours:
            res["rows"].append(score_split(root, seg, clf, split, name, pasted(COLOURS[name]), items))
    atomic_write_json(args.output, res)
    return 0


if __name__ == "__main__":
    from _run import run

    run(main)
