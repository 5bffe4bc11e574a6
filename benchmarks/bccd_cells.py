"""Write BCCD single-WBC crops as a class-per-folder dataset: a "new lab's labelled cells" for `wbc adapt`.

The crops are exactly those of ``benchmarks/cross_dataset.py`` (``wbc.crops.crop_cell`` at the model's cell
fraction, one PNG per BCCD field with one WBC). ``--split`` picks fields from BCCD's own split, so cells for
adaptation can come from trainval while ``wbc evaluate-smears`` scores the test fields; ``--split all
--exclude LAB`` writes every other cell, to score the adapted model on the cells it did not see:

    python benchmarks/bccd_cells.py --split trainval --n 100 --output /tmp/bccd_lab
    wbc adapt --data /tmp/bccd_lab --output /tmp/bccd_lab.onnx --stain reinhard
    wbc evaluate-smears --model /tmp/bccd_lab.onnx --output /tmp/smears_adapted
    python benchmarks/bccd_cells.py --split all --n 0 --exclude /tmp/bccd_lab --output /tmp/bccd_rest
    wbc evaluate /tmp/bccd_rest --model /tmp/bccd_lab.onnx --output /tmp/bccd_rest_eval

``--tight`` writes the cells as a lab's own single-cell images would come instead: the annotated box (its longer
side x 1.1, the window kept inside the field, so nothing is mirrored) at the field's resolution, the cell
filling the image; ``wbc classify`` re-frames such crops itself. ``--whole-field`` writes each field whole, halved
to 320 x 240 (a JPEG of quality 95), as the widely used Kaggle "Blood Cell Images" release shows BCCD's cells: the
WBC wherever it lies in the field, among crowded red cells; ``--field-size 4000 3000`` enlarges them to a 12 MP
camera's whole frame instead (wbc 0.26.0 takes single-cell images of up to 40 MP).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cross_dataset import BCCD_CLASSES, load_bccd_cells, wbc_box


def labelled_fields(root: Path) -> Iterator[tuple[str, str, np.ndarray, tuple[float, float, float, float]]]:
    """(field name, label, RGB field, its one WBC box) for each BCCD field with one annotated WBC of a known class."""
    import csv

    from wbc.io import read_image

    with (root / "bccd" / "single_wbc_labels.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            box = wbc_box(root / "bccd" / "Annotations" / f"{row['image']}.xml")
            label = row["label"].strip().lower()
            if box is None or label not in BCCD_CLASSES:
                continue
            yield row["image"], label, read_image(root / "bccd" / "JPEGImages" / f"{row['image']}.jpg"), box


def tight_bccd_cells(root: Path) -> tuple[list[np.ndarray], list[str], list[str]]:
    """BCCD's single-WBC fields cut to their annotated box (:func:`wbc.crops.box_window`)."""
    from wbc.crops import box_window

    fields = list(labelled_fields(root))
    return [box_window(rgb, box) for _, _, rgb, box in fields], [f[1] for f in fields], [f[0] for f in fields]


def whole_bccd_fields(root: Path, size: tuple[int, int] = (320, 240)) -> tuple[list[np.ndarray], list[str], list[str]]:
    """BCCD's single-WBC fields, whole, resized to ``size`` (width, height; halved to 320 x 240 by default, where the
    WBC lies is not used)."""
    import cv2

    fields = list(labelled_fields(root))
    cells = [cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if size[0] <= rgb.shape[1] else cv2.INTER_CUBIC)
             for _, _, rgb, _ in fields]
    return cells, [f[1] for f in fields], [f[0] for f in fields]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--output", type=Path, required=True, help="folder to write <class>/<field>.png into")
    ap.add_argument("--split", default="trainval", choices=["train", "val", "trainval", "test", "all"])
    ap.add_argument("--exclude", type=Path, default=None, help="skip the fields already written under this "
                    "folder (e.g. the lab's cells, to score an adapted model on the other cells)")
    ap.add_argument("--n", type=int, default=100, help="random cells to keep (0: all of the split)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", type=Path, default=None, help="classifier whose input size and cell fraction "
                    "the crops follow (default: the shipped model)")
    ap.add_argument("--data", type=Path, default=None, help="data root (default: $WBC_DATA_DIR or ../shared/data)")
    ap.add_argument("--tight", action="store_true", help="the annotated box at the field's resolution, the cell "
                    "filling the image (a lab's own crops), instead of wbc analyze's crops")
    ap.add_argument("--whole-field", action="store_true", help="each field whole, halved to 320 x 240, as JPEG "
                    "(the Kaggle 'Blood Cell Images' release of BCCD), instead of wbc analyze's crops")
    ap.add_argument("--field-size", type=int, nargs=2, default=(320, 240), metavar=("WIDTH", "HEIGHT"),
                    help="--whole-field's size (default 320 x 240; 4000 3000: a 12 MP camera's whole frame)")
    args = ap.parse_args(argv)

    from wbc.crops import cell_fraction_of
    from wbc.io import write_image
    from wbc.model import load_model
    from wbc.paths import data_root

    root = data_root(args.data)
    names_in_split: set[str] = set()
    for split in ("trainval", "test") if args.split == "all" else (args.split,):
        split_file = root / "bccd" / "ImageSets" / "Main" / f"{split}.txt"
        if not split_file.is_file():
            print(f"error: {split_file}: BCCD split not found (is --data the data root?)", file=sys.stderr)
            return 1
        names_in_split |= set(split_file.read_text().split())
    if args.exclude:
        names_in_split -= {p.stem for p in args.exclude.glob("*/*.*")}
    if args.whole_field:
        cells, labels, names = whole_bccd_fields(root, tuple(args.field_size))
    elif args.tight:
        cells, labels, names = tight_bccd_cells(root)
    else:
        clf = load_model(args.model)
        cells, labels, names = load_bccd_cells(root, clf.info.input_size, "wbc", cell_fraction_of(clf))
    idx = [i for i, n in enumerate(names) if n in names_in_split]
    idx = list(np.random.default_rng(args.seed).permutation(idx))
    if args.n:
        idx = idx[: args.n]
    suffix = ".jpg" if args.whole_field else ".png"
    for i in idx:
        write_image(args.output / labels[i] / f"{names[i]}{suffix}", cells[i])
    counts = Counter(labels[i] for i in idx)
    print(f"wrote {len(idx)} cells of BCCD {args.split} to {args.output}: "
          + ", ".join(f"{c} {k}" for c, k in counts.most_common()))
    return 0


if __name__ == "__main__":
    from _run import run

    run(main)
