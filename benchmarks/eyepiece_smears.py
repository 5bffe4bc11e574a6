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
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _smears_shown import add_smear_args, load_parts, score_split
from reframe_accuracy import eyepiece
from shift_suite import stray_light


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_smear_args(ap, "benchmarks/results/eyepiece_smears.json")
    ap.add_argument("--radius", type=float, default=0.58, help="the field of view's radius / the field's height")
    ap.add_argument("--black", type=float, default=0.0,
                    help="stray light: the black outside the field of view lifted to this (0-255), evenly")
    args = ap.parse_args(argv)

    from _provenance import provenance

    from wbc.evaluate.smears import read_image
    from wbc.io import atomic_write_json

    root, clf, seg, res = load_parts(args)
    res["provenance"] = provenance(__file__, argv, clf.model_id)
    res.update({"radius": args.radius, "black": args.black, "rows": []})

    def photographed(path: Path, *a: object, **k: object) -> np.ndarray:
        return stray_light(eyepiece(read_image(path, *a, **k), radius=args.radius), args.black)

    for split in args.splits:
        res["rows"].append(score_split(root, seg, clf, split, "as it is"))
        res["rows"].append(score_split(root, seg, clf, split, "through an eyepiece", photographed))
    atomic_write_json(args.output, res)
    return 0


if __name__ == "__main__":
    from _run import run

    run(main)
