"""Cross-dataset generalisation: a PBC-trained classifier on BCCD cells (another lab, stain and camera).

BCCD single-WBC fields (``bccd/single_wbc_labels.csv``, one WBC box each) are cropped around their
box so that they look like PBC crops: one cell centred, the cell filling the same fraction of the field as
in PBC (measured with the classical segmenter on both datasets: PBC cells span a median 0.36 of the
360 px field; a BCCD WBC box is 1/0.88 of the segmented cell; so crop side = box side * 0.88 / 0.36).
Borders beyond the field are reflected. The model predicts 8 classes; BCCD has 5, so predictions are
restricted to neutrophil, eosinophil, lymphocyte, monocyte and basophil by renormalising those 5
probabilities (equivalently: arg-max over the 5 logits).

Measured, each on its own and without any BCCD label (the test-time "robustness measures"):
``none``; ``tta`` (mean probability over the 8 flips/rot90s); per-image stain normalisation to the
training colours (``reinhard``, ``macenko``, ``histogram``); lab-level Reinhard (the pooled colours of
all BCCD crops mapped to the training colours: one fixed transform, unlabelled); ``feature-centring``
(subtract the BCCD embedding mean, add the PBC training mean: unlabelled feature-space alignment); and
combinations. Then few-shot adaptation (:func:`wbc.adapt.adapt_embeddings`, exactly what ``wbc adapt``
runs) with 25/50/100 random labelled BCCD cells, the rest as test, over several random draws.
Every measure is also checked on the PBC test split (8 classes) for "no loss on PBC".

    python benchmarks/cross_dataset.py --model src/wbc/models/default/wbc_classifier.onnx \\
        --manifest runs/default/manifest.csv --output benchmarks/results/cross_dataset
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import cv2
import numpy as np

GLIBC_FIX = "glibc.malloc.mmap_threshold=4294967295:glibc.malloc.trim_threshold=4294967295"
BCCD_CLASSES = ["neutrophil", "eosinophil", "lymphocyte", "monocyte", "basophil"]
PBC_FILL = 0.36  # median cell width / field width in PBC (classical segmenter, 60 cells of 5 classes)
BOX_TO_CELL = 0.88  # median segmented BCCD cell width / annotated WBC box side


# --- BCCD crops ----------------------------------------------------------------------------------


def wbc_box(xml_path: Path) -> tuple[float, float, float, float] | None:
    """The single WBC box of a BCCD annotation, or None when there is not exactly one."""
    boxes = []
    for obj in ET.parse(xml_path).getroot().iter("object"):
        if (obj.findtext("name") or "").strip() == "WBC":
            bb = obj.find("bndbox")
            boxes.append(tuple(float(bb.findtext(k) or 0) for k in ("xmin", "ymin", "xmax", "ymax")))
    return boxes[0] if len(boxes) == 1 else None  # type: ignore[return-value]


def background_colour(rgb: np.ndarray) -> tuple[int, int, int]:
    """Median colour of the least saturated quarter of the pixels (the empty glass between cells)."""
    flat = rgb.reshape(-1, 3).astype(np.int16)
    sat = flat.max(1) - flat.min(1)
    bg = flat[sat <= np.percentile(sat, 25)]
    return tuple(int(v) for v in np.median(bg, axis=0))  # type: ignore[return-value]


def crop_cell(rgb: np.ndarray, box: tuple[float, float, float, float], fill: float = PBC_FILL,
              box_to_cell: float = BOX_TO_CELL, pad: str = "background") -> np.ndarray:
    """A square crop centred on ``box`` in which the cell spans ``fill`` of the width.

    Beyond the field the crop is filled with the field's background colour (``pad="background"``) or
    mirrored (``"reflect"``, which can mirror the cell itself when it lies near the border).
    """
    x0, y0, x1, y1 = box
    side = round(max(x1 - x0, y1 - y0) * box_to_cell / fill)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left, top = round(cx - side / 2), round(cy - side / 2)
    h, w = rgb.shape[:2]
    p = max(0, -left, -top, left + side - w, top + side - h)
    if p and pad == "reflect":
        src = cv2.copyMakeBorder(rgb, p, p, p, p, cv2.BORDER_REFLECT_101)
    elif p:
        src = cv2.copyMakeBorder(rgb, p, p, p, p, cv2.BORDER_CONSTANT, value=background_colour(rgb))
    else:
        src = rgb
    return src[top + p : top + p + side, left + p : left + p + side]


def load_bccd_cells(
    root: Path, size: int, pad: str = "background"
) -> tuple[np.ndarray, list[str], list[str]]:
    from wbc.io import read_image
    from wbc.preprocess import resize_square

    cells, labels, names = [], [], []
    with (root / "bccd" / "single_wbc_labels.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            box = wbc_box(root / "bccd" / "Annotations" / f"{row['image']}.xml")
            label = row["label"].strip().lower()
            if box is None or label not in BCCD_CLASSES:
                continue
            rgb = read_image(root / "bccd" / "JPEGImages" / f"{row['image']}.jpg")
            cells.append(resize_square(crop_cell(rgb, box, pad=pad), size))
            labels.append(label)
            names.append(row["image"])
    return np.stack(cells), labels, names


# --- metrics -------------------------------------------------------------------------------------


def restricted_pred(probs: np.ndarray, classes: list[str], allowed: list[str]) -> list[str]:
    """Arg-max over the ``allowed`` classes only (their renormalised probabilities)."""
    idx = [classes.index(c) for c in allowed]
    return [allowed[i] for i in probs[:, idx].argmax(1)]


def metrics(y_true: list[str], y_pred: list[str], labels: list[str]) -> dict[str, Any]:
    from sklearn.metrics import f1_score, recall_score

    present = [c for c in labels if c in set(y_true)]
    return {
        "n": len(y_true),
        "accuracy": float(np.mean(np.asarray(y_true) == np.asarray(y_pred))),
        "macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        "recall": {c: float(r) for c, r in zip(present, recall_score(
            y_true, y_pred, labels=present, average=None, zero_division=0), strict=True)},
    }


# --- measures ------------------------------------------------------------------------------------


def embed_views(clf: Any, cells: np.ndarray, views: int) -> np.ndarray:
    from wbc.adapt import embed_tta

    return embed_tta(clf, cells, views=views)


def probs_from_emb(emb_views: np.ndarray, w: np.ndarray, b: np.ndarray, tta: bool) -> np.ndarray:
    from wbc.model import softmax

    views = emb_views if tta else emb_views[:1]
    return np.mean([softmax(e @ w.T + b) for e in views], axis=0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--manifest", type=Path, default=Path("runs/default/manifest.csv"))
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--output", type=Path, default=Path("benchmarks/results/cross_dataset"))
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--sizes", type=int, nargs="+", default=[25, 50, 100])
    ap.add_argument("--pbc-per-class", type=int, default=60, help="PBC test cells per class (0: all)")
    ap.add_argument("--train-per-class", type=int, default=60, help="PBC train cells per class for stats")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pad", choices=["background", "reflect"], default="background",
                    help="how BCCD crops are filled beyond the field")
    args = ap.parse_args(argv)

    from wbc.adapt import adapt_embeddings, original_head
    from wbc.data import read_manifest
    from wbc.model import load_model
    from wbc.ood import _cap, embed_samples
    from wbc.paths import data_root
    from wbc.stain import METHODS, fit_stain_stats

    t0 = time.perf_counter()
    root = data_root(args.data)
    clf = load_model(args.model, threads=args.threads)
    classes = clf.classes
    size = clf.info.input_size
    w0, b0 = original_head(clf)
    base_info = clf.info

    print("loading BCCD crops ...", flush=True)
    b_cells, b_labels, _ = load_bccd_cells(root, size, args.pad)
    counts = ", ".join(f"{c} {b_labels.count(c)}" for c in BCCD_CLASSES)
    print(f"  {len(b_cells)} cells: {counts}", flush=True)
    pbc_test = _cap([s for s in read_manifest(args.manifest, "test", root) if s.label in classes],
                    args.pbc_per_class, 0)
    pbc_train = _cap([s for s in read_manifest(args.manifest, "train", root) if s.label in classes],
                     args.train_per_class, 1)
    p_cells, _, p_ok = embed_samples(clf, [s.path for s in pbc_test], workers=args.threads)
    p_labels = [pbc_test[i].label for i in p_ok]
    t_cells, t_emb, _ = embed_samples(clf, [s.path for s in pbc_train], workers=args.threads)
    train_ref = {m: fit_stain_stats(list(t_cells[:: max(1, len(t_cells) // 200)]), m) for m in METHODS}
    train_mean = t_emb.mean(0)

    def stain_spec(method: str | None, source: dict | None = None) -> dict | None:
        if method is None:
            return None
        spec = {"method": method, "target": train_ref[method]}
        if source is not None:
            spec["source"] = source
        return spec

    # embeddings (8 views) of BCCD and PBC-test cells under each preprocessing
    preps: dict[str, dict | None] = {
        "none": None, "reinhard": stain_spec("reinhard"), "macenko": stain_spec("macenko"),
        "histogram": stain_spec("histogram"),
        "reinhard-lab": stain_spec("reinhard", fit_stain_stats(list(b_cells), "reinhard")),
    }
    emb: dict[str, dict[str, np.ndarray]] = {}
    for name, spec in preps.items():
        info = copy.deepcopy(base_info)
        info.extra.pop("stain", None)
        if spec:
            info.extra["stain"] = spec
        clf.info = info
        print(f"embedding with preprocessing {name} ...", flush=True)
        emb[name] = {"bccd": embed_views(clf, b_cells, 8)}
        if name == "reinhard-lab":  # lab-level: PBC's own pooled colours are the target, i.e. per-image off
            info.extra.pop("stain")
        emb[name]["pbc"] = embed_views(clf, p_cells, 8)
    clf.info = base_info

    results: dict[str, Any] = {"measures": {}, "adapt": {}}
    for name in preps:
        for tta in (False, True):
            for centre in (False, True):
                key = name + ("+tta" if tta else "") + ("+feature-centring" if centre else "")
                eb, ep = emb[name]["bccd"], emb[name]["pbc"]
                if centre:
                    eb = eb - eb[0].mean(0) + train_mean
                pb = probs_from_emb(eb, w0, b0, tta)
                pp = probs_from_emb(ep, w0, b0, tta)
                results["measures"][key] = {
                    "bccd": metrics(b_labels, restricted_pred(pb, classes, BCCD_CLASSES), BCCD_CLASSES),
                    "pbc_test": metrics(p_labels, [classes[i] for i in pp.argmax(1)], classes),
                }
                m = results["measures"][key]
                print(f"{key:<36} BCCD acc {m['bccd']['accuracy']:.3f} F1 {m['bccd']['macro_f1']:.3f}   "
                      f"PBC acc {m['pbc_test']['accuracy']:.3f}", flush=True)

    # few-shot adaptation: random draws of labelled BCCD cells, the rest as test
    rng = np.random.default_rng(0)
    y = np.asarray(b_labels)
    for name in ("none", "reinhard-lab"):
        eb, ep = emb[name]["bccd"], emb[name]["pbc"]
        for n in args.sizes:
            rows = []
            for _ in range(args.draws):
                idx = rng.permutation(len(y))
                tr, te = idx[:n], idx[n:]
                t1 = time.perf_counter()
                w, b, res = adapt_embeddings(eb[:, tr], list(y[tr]), classes, w0, b0)
                secs = time.perf_counter() - t1
                row = {"n": n, "fit_seconds": secs, "lam": res.lam, "cv_acc": res.heldout_acc_after}
                for tta in (False, True):
                    pb = probs_from_emb(eb[:, te], w, b, tta)
                    m = metrics(list(y[te]), restricted_pred(pb, classes, BCCD_CLASSES), BCCD_CLASSES)
                    row["bccd" + ("_tta" if tta else "")] = m
                pp = probs_from_emb(ep, w, b, False)
                row["pbc_test_acc_after_adapt"] = float(np.mean(np.asarray(p_labels) == np.asarray(
                    [classes[i] for i in pp.argmax(1)])))
                rows.append(row)
            accs = [r["bccd"]["accuracy"] for r in rows]
            f1s = [r["bccd"]["macro_f1"] for r in rows]
            accs_t = [r["bccd_tta"]["accuracy"] for r in rows]
            results["adapt"][f"{name}/{n}"] = {
                "draws": rows, "acc_mean": float(np.mean(accs)), "acc_min": float(np.min(accs)),
                "acc_max": float(np.max(accs)), "f1_mean": float(np.mean(f1s)),
                "acc_tta_mean": float(np.mean(accs_t)),
                "pbc_acc_mean": float(np.mean([r["pbc_test_acc_after_adapt"] for r in rows])),
            }
            a = results["adapt"][f"{name}/{n}"]
            print(f"adapt {name:<13} n={n:<4} BCCD acc {a['acc_mean']:.3f} "
                  f"[{a['acc_min']:.3f}-{a['acc_max']:.3f}] F1 {a['f1_mean']:.3f}  "
                  f"+tta {a['acc_tta_mean']:.3f}  PBC {a['pbc_acc_mean']:.3f}", flush=True)

    results["setup"] = {
        "model": str(clf.path), "model_id": clf.model_id, "input_size": size,
        "bccd_cells": len(b_cells), "bccd_counts": {c: b_labels.count(c) for c in BCCD_CLASSES},
        "pbc_test_cells": len(p_cells), "pbc_train_cells_for_stats": len(t_cells),
        "pbc_fill": PBC_FILL, "box_to_cell": BOX_TO_CELL, "pad": args.pad, "draws": args.draws,
        "seconds": time.perf_counter() - t0, "command": " ".join(sys.argv),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    from wbc.io import atomic_write_text

    atomic_write_text(args.output.with_suffix(".json"), json.dumps(results, indent=2) + "\n")
    atomic_write_text(args.output.with_suffix(".md"), markdown(results))
    print(f"wrote {args.output.with_suffix('.json')} and .md ({results['setup']['seconds']:.0f} s)")
    return 0


def markdown(res: dict[str, Any]) -> str:
    s = res["setup"]
    lines = [
        f"Model `{s['model_id']}` (input {s['input_size']} px), trained on PBC only. BCCD: {s['bccd_cells']} "
        "single-WBC fields cropped around their box ("
        + ", ".join(f"{c} {n}" for c, n in s["bccd_counts"].items())
        + "); predictions restricted to these 5 classes by renormalising their probabilities. "
        f"PBC test: {s['pbc_test_cells']} cells of the run's test split, 8 classes.",
        "",
        "| measure (no BCCD labels) | BCCD accuracy | BCCD macro-F1 | "
        + " | ".join(f"recall {c[:4]}" for c in BCCD_CLASSES) + " | PBC test accuracy |",
        "|---|---:|---:|" + "---:|" * len(BCCD_CLASSES) + "---:|",
    ]
    for key, m in res["measures"].items():
        rec = m["bccd"]["recall"]
        lines.append(f"| {key} | {m['bccd']['accuracy']:.3f} | {m['bccd']['macro_f1']:.3f} | "
                     + " | ".join(f"{rec[c]:.2f}" if c in rec else "-" for c in BCCD_CLASSES)
                     + f" | {m['pbc_test']['accuracy']:.3f} |")
    lines += ["", f"Few-shot adaptation (`wbc adapt` head refit), {s['draws']} random draws of n labelled "
              "BCCD cells, the remaining cells as test:", "",
              "| preprocessing / n labelled | BCCD accuracy mean [min-max] | macro-F1 mean | "
              "accuracy with TTA | PBC test accuracy after |", "|---|---:|---:|---:|---:|"]
    for key, a in res["adapt"].items():
        lines.append(f"| {key} | {a['acc_mean']:.3f} [{a['acc_min']:.3f}-{a['acc_max']:.3f}] | "
                     f"{a['f1_mean']:.3f} | {a['acc_tta_mean']:.3f} | {a['pbc_acc_mean']:.3f} |")
    lines += ["", f"Reproduce: `{s['command']}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("GLIBC_TUNABLES", GLIBC_FIX)
    raise SystemExit(main())
