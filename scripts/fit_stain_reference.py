"""Refit a model's training colours for one or more stain mappings (``colour_reference[METHOD]``), nothing else.

The cells are those ``wbc ood fit`` reads: up to ``--max-per-class`` of each class from the manifest's ``train``
split, seeded, prepared as the classifier sees them; the statistics are :func:`wbc.ood.colour_reference`'s, from
its seeded sample of them. Use it when a mapping's fitting changes, so that `wbc adapt --stain METHOD` maps a lab
onto a reference fitted the same way as the lab's own colours. Only the metadata changes: the model file and its
JSON copy.

    python scripts/fit_stain_reference.py --model src/wbc/models/default/wbc_classifier.onnx \\
        --manifest runs/default/manifest.csv --max-per-class 150 --methods macenko
"""

from __future__ import annotations

import argparse
import json


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="src/wbc/models/default/wbc_classifier.onnx")
    ap.add_argument("--manifest", default="runs/default/manifest.csv")
    ap.add_argument("--data", default=None, help="data root (default: $WBC_DATA_DIR or ../shared/data)")
    ap.add_argument("--max-per-class", type=int, default=150, help="as given to `wbc ood fit`")
    ap.add_argument("--methods", nargs="+", default=["macenko"], choices=["reinhard", "macenko", "histogram"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    from wbc.data import cap_per_class, read_manifest
    from wbc.model import load_model, update_metadata
    from wbc.ood import colour_reference
    from wbc.ood_fit import embed_samples
    from wbc.paths import data_root

    clf = load_model(args.model, threads=args.threads)
    train = cap_per_class([s for s in read_manifest(args.manifest, "train", data_root(args.data))
                           if s.label in clf.classes], args.max_per_class, args.seed)
    cells, _, _ = embed_samples(clf, [s.path for s in train], workers=args.threads)
    fitted = colour_reference(cells, seed=args.seed)
    changed = {m: fitted[m] for m in args.methods if m in fitted}
    update_metadata(args.model, colour_reference={**clf.info.colour_reference, **changed})
    print(json.dumps(changed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
