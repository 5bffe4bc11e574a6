"""How red is the cytoplasm of BCCD's eosinophils the model calls neutrophils? A label-independent check.

BCCD's subtype labels come from a public Kaggle release of uncertain provenance (the data README says a few
look wrong), and its eosinophils are the model's main error there. Whether those cells are eosinophils the
network misses, or neutrophils labelled eosinophil, decides whether a method can still win on BCCD. Eosin
stains eosinophil granules orange-red, so their cytoplasm is redder than a neutrophil's; this script measures
that directly from BCCD's own nucleus/cytoplasm masks (Banik et al. 2020): the mean CIELAB a* of each cell's
cytoplasm above the field's background, grouped by (BCCD label, model's answer), and how well it separates
each group of labelled eosinophils from the neutrophils (ROC AUC: 0.5 = no redder than a neutrophil).

    python benchmarks/bccd_cells.py --split trainval --n 0 --output /tmp/bccd_trainval
    wbc adapt --no-labels --data /tmp/bccd_trainval --classes 5part --output /tmp/l_tv.onnx
    wbc evaluate /tmp/bccd_trainval --model /tmp/l_tv.onnx --classes 5part --output /tmp/ev_tv
    python benchmarks/bccd_label_check.py --predictions /tmp/ev_tv/predictions.csv \\
        --output benchmarks/results/bccd_label_check.json
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np


def cytoplasm_redness(field_rgb: np.ndarray, mask: np.ndarray) -> float | None:
    """Mean CIELAB a* of the cytoplasm pixels (mask grey 128) minus the background's median (mask 0), or None
    when the mask shows fewer than 50 cytoplasm pixels. BCCD's mask greys are noisy: quantised to 0/128/255.

    >>> rgb = np.full((20, 20, 3), 230, np.uint8); rgb[5:15, 5:15] = (220, 150, 170)  # pink cytoplasm
    >>> mask = np.zeros((20, 20), np.uint8); mask[5:15, 5:15] = 130
    >>> round(cytoplasm_redness(rgb, mask), 1) > 10
    True
    """
    import cv2

    grey = np.where(mask < 64, 0, np.where(mask < 192, 128, 255))
    if (grey == 128).sum() < 50 or (grey == 0).sum() < 50:
        return None
    a_star = cv2.cvtColor(np.ascontiguousarray(field_rgb), cv2.COLOR_RGB2LAB)[..., 1].astype(np.float64)  # 8-bit a*
    return float(a_star[grey == 128].mean() - np.median(a_star[grey == 0]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--predictions", type=Path, required=True,
                    help="predictions.csv of `wbc evaluate` on BCCD cells written by bccd_cells.py")
    ap.add_argument("--data", type=Path, default=None, help="data root (default: $WBC_DATA_DIR or ../shared/data)")
    ap.add_argument("--output", type=Path, default=None, help="JSON to write")
    args = ap.parse_args(argv)

    import cv2
    from _provenance import provenance
    from sklearn.metrics import roc_auc_score

    from wbc.io import atomic_write_json, read_image
    from wbc.paths import data_root

    root = data_root(args.data) / "bccd"
    groups: dict[tuple[str, str], list[float]] = {}
    with args.predictions.open(newline="") as fh:
        for row in csv.DictReader(fh):
            name = Path(row["path"]).stem  # BloodImage_NNNNN
            mask = cv2.imread(str(root / "masks" / f"BloodImage_Mask_{name.split('_')[-1]}.png"), cv2.IMREAD_GRAYSCALE)
            if mask is None:
                continue
            rgb = read_image(root / "JPEGImages" / f"{name}.jpg")
            if mask.shape != rgb.shape[:2]:
                mask = cv2.resize(mask, rgb.shape[1::-1], interpolation=cv2.INTER_NEAREST)
            red = cytoplasm_redness(rgb, mask)
            if red is not None:
                groups.setdefault((row["true_label"], row["label"]), []).append(red)
    neut = groups.get(("neutrophil", "neutrophil"), [])
    rows = []
    for (truth, pred), vals in sorted(groups.items()):
        row = {"label": truth, "predicted": pred, "n": len(vals), "median_a": float(np.median(vals)),
               "q25_a": float(np.percentile(vals, 25)), "q75_a": float(np.percentile(vals, 75))}
        if truth == "eosinophil" and len(neut) and len(vals) >= 5:
            row["auc_vs_neutrophils"] = float(roc_auc_score([0] * len(neut) + [1] * len(vals), neut + vals))
        rows.append(row)
        auc = f"  AUC vs neutrophils {row['auc_vs_neutrophils']:.2f}" if "auc_vs_neutrophils" in row else ""
        print(f"label {truth:<11} called {pred:<11} n {len(vals):>3}  cytoplasm a* {row['median_a']:5.1f} "
              f"[{row['q25_a']:.1f}, {row['q75_a']:.1f}]{auc}")
    if args.output:
        atomic_write_json(args.output, {"predictions": str(args.predictions), "groups": rows,
                                        "provenance": provenance(__file__, argv)})
    return 0


if __name__ == "__main__":
    from _run import run

    run(main)
