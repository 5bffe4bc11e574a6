"""Fit the training cells' cytoplasm colour per class into a model's metadata (``colour_reference["cytoplasm_eosin"]``).

Up to ``--per-class`` training cells of every class a smear's WBC can be (the manifest's ``train`` split,
seeded) are each analysed as a smear field: the WBC nearest its centre is segmented as `wbc analyze` segments it,
and its cytoplasm's eosin measured against the field's own red cells
(:func:`wbc.cytoplasm.central_cytoplasm_eosin`). The mean and standard deviation per class go into the model file
and its JSON copy, where `wbc analyze` reads them (:func:`wbc.cytoplasm.cytoplasm_evidence`). Only the metadata changes.
When a class has fewer than 20 cells measured, nothing is written (its earlier statistics would be lost, and with
a lymphocyte's or erythroblast's the cytoplasm weighing turned off): the script says which class and exits 1.

    python scripts/fit_cytoplasm_colours.py --model src/wbc/models/default/wbc_classifier.onnx \\
        --manifest runs/default/manifest.csv --per-class 150
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from wbc.errors import WbcError

#: The fewest cells of a class whose measures make its statistics.
MIN_CELLS = 20


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="src/wbc/models/default/wbc_classifier.onnx")
    ap.add_argument("--manifest", default="runs/default/manifest.csv")
    ap.add_argument("--data", default=None, help="data root (default: $WBC_DATA_DIR or ../shared/data)")
    ap.add_argument("--per-class", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from wbc.cytoplasm import central_cytoplasm_eosin
    from wbc.data import read_manifest
    from wbc.io import read_image
    from wbc.labels import NOT_IN_SMEAR_DETECTIONS
    from wbc.model import load_model, update_metadata
    from wbc.paths import data_root
    from wbc.segment import get_segmenter

    info = load_model(args.model, threads=1).info
    segmenter = get_segmenter("auto")
    rows = [s for s in read_manifest(args.manifest, root=data_root(args.data)) if s.split == "train"]
    rng = np.random.default_rng(args.seed)
    fitted: dict[str, list[float]] = {}
    for label in [c for c in info.classes if c not in NOT_IN_SMEAR_DETECTIONS]:  # what a smear's WBC can be
        these = [s for s in rows if s.label == label]
        picked = [these[i] for i in sorted(rng.permutation(len(these))[: args.per_class])]
        values = [v for s in picked if (v := central_cytoplasm_eosin(read_image(s.path), segmenter)) is not None]
        if len(values) >= MIN_CELLS:
            fitted[label] = [round(float(np.mean(values)), 4), round(float(np.std(values)), 4)]
        print(f"{label:<13} {len(values):>4} of {len(picked)} measured  {fitted.get(label)}", flush=True)
    short = [c for c in info.classes if c not in NOT_IN_SMEAR_DETECTIONS and c not in fitted]
    if short:
        raise SystemExit(f"error: fewer than {MIN_CELLS} cells measured for {', '.join(short)}; {args.model} left "
                         "as it was (a larger --per-class, or a manifest with more training cells of the class)")
    reference = {**info.colour_reference, "cytoplasm_eosin": fitted}
    update_metadata(args.model, colour_reference=reference)  # the model file and its JSON copy
    print(json.dumps(fitted))
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except WbcError as exc:  # a missing model, manifest or image: one line, as `wbc` says it
        raise SystemExit(f"error: {exc}") from None
