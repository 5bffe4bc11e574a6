"""Write PBC validation cells framed (or coloured) as another lab would show them, one "lab" folder each.

Each folder holds ``<class>/<cell>.png`` for the five WBC types, every cell re-framed by one of
``reframe_accuracy.VARIANTS`` (padded 2x with its background, a 600 px field, a tight 100 px crop, as is), or
with ``--colour`` shifted by one of the shift suite's colour shifts (:data:`COLOUR_LABS`): a lab for
``wbc adapt --no-labels`` to adapt to without labels, then ``wbc evaluate --classes 5part`` (or
``benchmarks/mapping_choice.py``) to check. Cells are drawn with ``--seed`` (default 1), so they are not the
re-framing benchmark's or the shift suite's (seed 0).

    python benchmarks/framed_labs.py --output /tmp/framed_labs
    python benchmarks/framed_labs.py --colour --output /tmp/colour_labs
    wbc adapt --no-labels --data /tmp/framed_labs/padded_2x --classes 5part --output /tmp/padded.onnx
    wbc evaluate /tmp/framed_labs/padded_2x --model /tmp/padded.onnx --classes 5part --output out/padded
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reframe_accuracy import VARIANTS
from shift_suite import SHIFTS

#: folder name -> variant of ``reframe_accuracy.VARIANTS``
LABS = {
    "native": "native",
    "tight_100px": "tight 0.4, as a 100 px crop",
    "padded_2x": "padded 2x (own background)",
    "field_600px": "padded 3x, as a 600 px field",
}

#: folder name -> colour shift of ``shift_suite.SHIFTS`` (``--colour``)
COLOUR_LABS = {
    "hue_180": "hue 180 deg",
    "hue_minus_30": "hue -30 deg",
    "grey": "grey",
    "other_stain_vectors": "stain: other stain vectors",
    "pale_haematoxylin": "stain: haematoxylin x0.6, eosin x1.4",
    "other_lab": "other lab (stain+blur+low-res+JPEG+tight)",
}

ROOT = Path(__file__).resolve().parents[1]  # the repository: relative defaults are resolved against it


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--output", type=Path, required=True, help="folder to write <lab>/<class>/<cell>.png into")
    ap.add_argument("--manifest", type=Path, default=ROOT / "runs/default/manifest.csv")
    ap.add_argument("--per-class", type=int, default=40)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--data", type=Path, default=None, help="data root (default: $WBC_DATA_DIR or ../shared/data)")
    ap.add_argument("--colour", action="store_true", help="colour-shifted labs (COLOUR_LABS) instead of framings")
    args = ap.parse_args(argv)

    from wbc.data import read_manifest
    from wbc.io import read_image, write_image
    from wbc.labels import WBC5

    val = [s for s in read_manifest(args.manifest, "val", args.data) if s.label in WBC5]
    random.Random(args.seed).shuffle(val)
    cells = [s for c in WBC5 for s in [s for s in val if s.label == c][: args.per_class]]
    if not cells:
        raise SystemExit(f"error: {args.manifest}: no validation cells of the five WBC types")
    labs = {k: SHIFTS[v] for k, v in COLOUR_LABS.items()} if args.colour else {k: VARIANTS[v] for k, v in LABS.items()}
    for folder, transform in labs.items():
        for s in cells:
            out = args.output / folder / s.label / f"{Path(s.path).stem}.png"
            write_image(out, transform(read_image(s.path)))
        print(f"wrote {len(cells)} cells ({folder}) to {args.output / folder}")
    return 0


if __name__ == "__main__":
    from _run import run

    run(main)
