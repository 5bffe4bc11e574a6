"""Smear fields calibrated on their own red cells, against not: subtype accuracy of ``wbc analyze``'s path.

Three checks, each run with calibration on and off (:meth:`wbc.model.Classifier.with_calibration`):

- BCCD smear fields (a lab the shipped model never saw) through the detector, as ``wbc evaluate-smears`` scores
  them: every class, and the answer restricted to the five WBC types. The choice was made on ``val`` and
  ``train``; ``test`` is read to report, not to choose (``--splits``).
- PBC validation cells as smear fields (360 px, the WBC centred): the training lab's own colours, where
  calibration must not cost accuracy. The detection nearest the centre is scored.
- The same PBC fields re-stained as other labs would show them (the shift suite's stain and hue shifts):
  does calibration bring the accuracy back.
- TXL-PBC's BCD fields (another lab, no subtype labels; its cells were in 1.2-1.4's training without labels):
  label-free, the mean confidence and the agreement of the four rotations' answers with their mean, as
  ``wbc adapt --no-labels`` scores a candidate.

    python benchmarks/smear_calibration.py --output benchmarks/results/smear_calibration_v1.4.0.json
    python benchmarks/smear_calibration.py --parts bcd --output benchmarks/results/smear_calibration_bcd_v1.4.0.json
    # over-exposed fields (a lamp too bright, a phone on an eyepiece): BCCD validation fields brightened 1.5x
    python benchmarks/smear_calibration.py --parts bccd --splits val,train --exposure 1.5 \
        --output benchmarks/results/smear_calibration_exposure1.5_wbc0.28.0.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shift_suite import SHIFTS

#: shift-suite shifts applied to whole PBC fields (colour only: calibration does not touch framing or blur)
FIELD_SHIFTS = ("none", "stain: haematoxylin x1.5, eosin x0.6", "stain: haematoxylin x0.6, eosin x1.4",
                "stain: other stain vectors", "hue -30 deg", "grey")

ROOT = Path(__file__).resolve().parents[1]  # the repository: relative defaults are resolved against it


def bccd_rows(root: Path, splits: list[str], clf, seg) -> list[dict]:
    from wbc.evaluate.smears import evaluate_smears

    rows = []
    for split in splits:
        for classes in (None, "5part"):
            for calibrate in (True, False):
                model = clf.with_classes(classes).with_colour_calibration(calibrate)
                with tempfile.TemporaryDirectory() as tmp:
                    m = evaluate_smears(root, Path(tmp), seg, model, split=split)
                sub = m["subtype"]
                rows.append({"data": f"BCCD {split}", "classes": classes or "all", "calibrate": calibrate,
                             "n": sub["n"], "accuracy": round(sub["accuracy"], 4),
                             "macro_f1": round(sub["macro_f1"], 4)})
                print(rows[-1], flush=True)
    return rows


def exposed_bccd(root: Path, factor: float, out: Path) -> Path:
    """A copy of BCCD's fields with every pixel's brightness multiplied by ``factor`` and clipped at 255, as an
    over-exposed camera saves them (JPEG quality 95); its boxes, splits, masks and labels linked, not copied."""
    import cv2

    from wbc.io import read_image

    src, dst = root / "bccd", out / "bccd"
    (dst / "JPEGImages").mkdir(parents=True)
    for name in ("Annotations", "ImageSets", "masks", "single_wbc_labels.csv", "labels.csv"):
        if (src / name).exists():
            (dst / name).symlink_to(src / name)
    for p in sorted((src / "JPEGImages").glob("*.jpg")):
        rgb = np.clip(read_image(p).astype(np.float32) * factor, 0, 255).astype(np.uint8)
        cv2.imwrite(str(dst / "JPEGImages" / p.name), rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    return out


def pbc_field_rows(root: Path, manifest: Path, n: int, seed: int, clf, seg) -> list[dict]:
    from wbc.analyze import classify_cells
    from wbc.data import read_manifest
    from wbc.io import read_image

    val = [s for s in read_manifest(manifest, "val", root) if s.label != "platelet"]  # platelets: no smear WBC
    pick = np.random.default_rng(seed).permutation(len(val))[: n or len(val)]
    right: dict[tuple[str, bool], list[bool]] = {}
    for i in pick:
        s = val[i]
        base = read_image(s.path)
        for shift in FIELD_SHIFTS:
            rgb = np.ascontiguousarray(SHIFTS[shift](base))
            cells = seg.segment(rgb)
            if not cells:
                for calibrate in (True, False):
                    right.setdefault((shift, calibrate), []).append(False)
                continue
            h, w = rgb.shape[:2]
            j = int(np.argmin([((c.box[0] + c.box[2] - w) ** 2 + (c.box[1] + c.box[3] - h) ** 2) for c in cells]))
            for calibrate in (True, False):
                cell = [cells[j]]
                classify_cells(rgb, cell, clf.with_colour_calibration(calibrate))
                right.setdefault((shift, calibrate), []).append(cell[0].prediction.label == s.label)
    rows = [{"data": f"PBC val as fields, {shift}", "classes": "all", "calibrate": cal, "n": len(v),
             "accuracy": round(float(np.mean(v)), 4)} for (shift, cal), v in right.items()]
    for r in rows:
        print(r, flush=True)
    return rows


def bcd_rows(root: Path, n: int, clf, seg) -> list[dict]:
    import csv

    from wbc.analyze import calibrate_field
    from wbc.crops import cell_fraction_of, crop_cells
    from wbc.io import read_image
    from wbc.model import class_probabilities
    from wbc.preprocess import dihedral_view

    txl = root / "txl_pbc"
    with (txl / "sources.csv").open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["origin"] == "bcd" and r["split"] in ("train", "val")][:n]
    size, fraction = int(clf.info.input_size), cell_fraction_of(clf)
    scores: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for r in rows:
        path = next((txl / "images" / r["split"]).glob(r["stem"] + ".*"))
        rgb = read_image(path)
        cells = seg.segment(rgb)
        if not cells:
            continue
        for calibrate in (True, False):
            field, _ = calibrate_field(rgb, cells, clf.with_colour_calibration(calibrate))
            crops = crop_cells(field, cells, size, fraction)
            views = np.stack([class_probabilities(clf.run(dihedral_view(crops, k))["logits"], clf.info)
                              for k in range(4)])
            mean = views.mean(0)
            agree = (views.argmax(2) == mean.argmax(1)[None]).mean(0)
            scores[calibrate] += list(zip(mean.max(1).tolist(), agree.tolist(), strict=True))
    out = [{"data": f"BCD fields (train/val, {len(rows)}), label-free", "calibrate": cal, "n": len(v),
            "mean_confidence": round(float(np.mean([a for a, _ in v])), 4),
            "view_agreement": round(float(np.mean([b for _, b in v])), 4)} for cal, v in scores.items()]
    for row in out:
        print(row, flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--output", type=Path, required=True)
    ap.add_argument("--model", type=Path, default=None, help="classifier (default: the shipped one)")
    ap.add_argument("--manifest", type=Path, default=ROOT / "runs/default/manifest.csv")
    ap.add_argument("--splits", default="val,train,test", help="BCCD splits (test only to report)")
    ap.add_argument("--pbc-fields", type=int, default=0, help="PBC validation cells as fields (0: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", "--data-root", type=Path, default=None,  # --data-root: as load_bccd's message says
                    help="data root (default: $WBC_DATA_DIR or ../shared/data)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parts", default="bccd,pbc", help="bccd, pbc, bcd (comma-separated)")
    ap.add_argument("--bcd-fields", type=int, default=200, help="BCD fields for the label-free part")
    ap.add_argument("--exposure", type=float, default=1.0, help="BCCD fields brightened by this factor first")
    args = ap.parse_args(argv)

    from _provenance import provenance

    from wbc.data import read_manifest
    from wbc.io import atomic_write_json
    from wbc.model import load_model
    from wbc.paths import data_root
    from wbc.segment import get_segmenter

    root = data_root(args.data)
    parts = set(args.parts.split(","))
    if "pbc" in parts:  # read now: its absence ended the run after minutes of BCCD scoring (before wbc 0.34.0)
        read_manifest(args.manifest, "val", root)
    clf = load_model(args.model, threads=args.threads)
    if clf.red_cell_target() is None:
        raise SystemExit(f"error: {clf.path}: no red-cell reference (run `wbc ood fit` on the model first)")
    seg = get_segmenter("auto", threads=args.threads)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        bccd_root = exposed_bccd(root, args.exposure, Path(tmp)) if args.exposure != 1.0 else root
        rows = bccd_rows(bccd_root, [s for s in args.splits.split(",") if s], clf, seg) if "bccd" in parts else []
    if "pbc" in parts:
        rows += pbc_field_rows(root, args.manifest, args.pbc_fields, args.seed, clf, seg)
    if "bcd" in parts:
        rows += bcd_rows(root, args.bcd_fields, clf, seg)
    doc = {"model_id": clf.model_id, "segmenter": seg.model_id, "red_cell_target": clf.red_cell_target(),
           "exposure": args.exposure,
           "seconds": round(time.time() - t0, 1), "rows": rows,
           "provenance": provenance(__file__, argv, clf.model_id)}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.output, doc)
    print(f"-> {args.output}")
    return 0


if __name__ == "__main__":
    from _run import run

    run(main)
