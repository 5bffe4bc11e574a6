"""WBCs shown in whole smear fields, given to ``wbc classify`` as single-cell images: where their nucleus sits and
what the network names them.

A smear field photographed whole is cut around nothing: its WBC lies anywhere, among crowded red cells, where every
training crop shows its cell centred. Over eight classes such a WBC was often named "platelet" (a PBC platelet crop
shows red cells and little else). Two sets of fields, each with exactly one annotated WBC:

- TXL-PBC's BCD fields (416 x 416, a Kaggle blood-cell-detection set; train and val), which have no subtype labels:
  every field shows a WBC, so each "platelet" (or "erythroblast") answer is wrong. Label-free.
- ``--labelled DIR``: a ``<class>/<field>`` folder with subtype labels, e.g. BCCD's train/val fields shown whole
  (``python benchmarks/bccd_cells.py --split trainval --n 0 --whole-field --output DIR``): accuracy over eight
  classes and five-part, and the same counts.

For each: how far the nucleus sits from the centre of the square ``wbc classify`` takes of the frame (per side of the
frame; ``wbc.reframe.OFF_CENTRE`` re-frames beyond it), which look finds the nucleus where the first does not (a
closer look at the centre, its hue), the labels, and how many are "platelet".

    python benchmarks/bccd_cells.py --split trainval --n 0 --whole-field --output /tmp/bccd_fields_trainval
    python benchmarks/whole_fields.py --labelled /tmp/bccd_fields_trainval \\
        --output benchmarks/results/whole_fields_wbc0.23.0.json
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]  # the repository: relative defaults are resolved against it


def bcd_one_wbc_fields(root: Path, out: Path) -> list[Path]:
    """Copy TXL-PBC's BCD train/val fields that show exactly one WBC box into ``out``; their paths."""
    import shutil

    txl = root / "txl_pbc"
    paths = []
    with (txl / "sources.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            if row["origin"] != "bcd" or row["split"] not in ("train", "val"):
                continue
            boxes = (txl / "labels" / row["split"] / f"{row['stem']}.txt").read_text().splitlines()
            if sum(1 for line in boxes if line.split()[:1] == ["0"]) != 1:
                continue
            dst = out / f"{row['stem']}.jpg"
            shutil.copyfile(txl / "images" / row["split"] / f"{row['stem']}.jpg", dst)
            paths.append(dst)
    return sorted(paths)


def nucleus_offset(path: Path) -> tuple[float | None, str]:
    """How far the nucleus sits from the centre of the square ``wbc classify`` takes of the image (per side; None
    where the first look finds no nucleus), and which look finds it: "first" (``measure_framing``), "closer" (the
    centre looked at closer), "hue" (``measure_by_hue``, since wbc 0.23.0) or "none"."""
    from wbc.io import read_image
    from wbc.reframe import SQUARE_TOLERANCE, measure_by_hue, measure_closer, measure_framing, off_centre, square_view

    rgb = read_image(path)
    h, w = rgb.shape[:2]
    if max(h, w) > SQUARE_TOLERANCE * min(h, w):
        rgb = square_view(rgb, measure_framing(rgb))[0]
    f = measure_framing(rgb)
    if f.found:
        return off_centre(f, rgb.shape), "first"
    look = "closer" if measure_closer(rgb).found else "hue" if measure_by_hue(rgb).found else "none"
    return None, look


def score(paths: list[Path], labels: list[str] | None, model: str | None) -> dict:
    """Offsets, answers and (with ``labels``) accuracy over eight classes and five-part for ``paths``."""
    import wbc
    from wbc.labels import WBC5

    measured = [nucleus_offset(p) for p in paths]
    offsets = [o for o, _ in measured if o is not None]
    looks = Counter(look for _, look in measured)
    clf = wbc.load_model(model)
    eight = wbc.classify_images(paths, model=clf).predictions
    five = wbc.classify_images(paths, model=clf, classes="5part").predictions
    out: dict = {
        "n": len(paths),
        "nucleus_found": len(offsets),
        "found_closer": looks["closer"],
        "found_by_hue": looks["hue"],
        "no_nucleus": looks["none"],
        "offset_median": round(float(np.median(offsets)), 3) if offsets else None,
        "offset_p90": round(float(np.percentile(offsets, 90)), 3) if offsets else None,
        "labels": dict(sorted(Counter(p.label for p in eight).items())),
        "platelet": sum(p.label == "platelet" for p in eight),
    }
    if labels is not None:
        out["accuracy"] = round(float(np.mean([p.label == y for p, y in zip(eight, labels, strict=True)])), 4)
        wbc5 = [(p, y) for p, y in zip(five, labels, strict=True) if y in WBC5]
        out["accuracy_5part"] = round(float(np.mean([p.label == y for p, y in wbc5])), 4)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--labelled", type=Path, default=None, help="a <class>/<field> folder of whole fields to score too")
    ap.add_argument("--model", default=None, help="classifier ONNX (default: the shipped model)")
    ap.add_argument("--data", type=Path, default=None, help="data root (default: $WBC_DATA_DIR or ../shared/data)")
    ap.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/whole_fields.json")
    args = ap.parse_args(argv)

    from _provenance import provenance

    from wbc import __version__
    from wbc.io import atomic_write_json
    from wbc.paths import data_root
    from wbc.reframe import OFF_CENTRE

    root = data_root(args.data)
    if not (root / "txl_pbc" / "sources.csv").is_file():
        print(f"error: no TXL-PBC data under {root} (set WBC_DATA_DIR or --data)", file=sys.stderr)
        return 1
    result: dict = {"wbc": __version__, "off_centre": OFF_CENTRE, "model": args.model or "shipped"}
    with tempfile.TemporaryDirectory() as tmp:
        result["bcd_one_wbc_fields"] = score(bcd_one_wbc_fields(root, Path(tmp)), None, args.model)
    if args.labelled is not None:
        from wbc.data import scan_folder

        samples = scan_folder(args.labelled).samples  # class folders named as `wbc train` reads them
        paths, labels = [s.path for s in samples], [s.label for s in samples]
        result["labelled"] = {"folder": str(args.labelled), **score(paths, labels, args.model)}
    for name, part in result.items():
        if isinstance(part, dict):
            print(f"{name:20s} n={part['n']} nucleus found {part['nucleus_found']} (closer {part['found_closer']}, "
                  f"by hue {part['found_by_hue']}, none {part['no_nucleus']})  offset median {part['offset_median']} "
                  f"p90 {part['offset_p90']}  "
                  f"platelet {part['platelet']}  " + (f"accuracy {part['accuracy']} five-part "
                                                      f"{part['accuracy_5part']}" if "accuracy" in part else ""))
    result["provenance"] = provenance(__file__, argv)
    atomic_write_json(args.output, result)
    print(f"-> {args.output}")
    return 0


if __name__ == "__main__":
    from _run import run

    run(main)
