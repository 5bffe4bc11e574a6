"""Cross-dataset generalisation: a PBC-trained classifier on BCCD cells (another lab, stain and camera).

BCCD single-WBC fields (``bccd/single_wbc_labels.csv``, one WBC box each) are cropped like ``wbc analyze``
crops smear cells (:func:`wbc.crops.crop_cell`): one cell centred, its equivalent diameter filling the
model's cell fraction of the crop side (PBC-measured, 0.45 by default), borders mirrored. The cell is an
ellipse 0.88 times the annotated box (the median ratio of segmented cell width to box side, measured with
the classical segmenter on 40 BCCD fields). ``--crop local`` uses this script's own crop instead (max
extent / 0.36, background-coloured borders). The model predicts 8 classes; BCCD has 5, so predictions are
restricted to neutrophil, eosinophil, lymphocyte, monocyte and basophil by renormalising those 5
probabilities (equivalently: arg-max over the 5 logits). The crop scale is checked at x0.8 and x1.25.

Measured, each on its own and without any BCCD label (the test-time "robustness measures"):
``none``; ``tta`` (mean probability over the 8 flips/rot90s); per-image stain normalisation to the
training colours (``reinhard``, ``macenko``, ``histogram``); lab-level Reinhard (the pooled colours of
all BCCD crops mapped to the training colours: one fixed transform, unlabelled); ``feature-centring``
(subtract the BCCD embedding mean, add the PBC training mean: unlabelled feature-space alignment); and
combinations. Then few-shot adaptation with 25/50/100 random labelled BCCD cells, the rest as test, over
several random draws (the same draws for both methods): the head refit (:func:`wbc.adapt.adapt_embeddings`,
what ``wbc adapt --method head`` runs) and fine-tuning of the whole network
(:func:`wbc.train.finetune.finetune`, what ``wbc adapt`` runs by default; needs the model's PyTorch
weights, the ``.pt`` beside it, or ``--finetune-checkpoint``).
Every measure is also checked on the PBC test split (8 classes) for "no loss on PBC".

    python benchmarks/cross_dataset.py --model src/wbc/models/default/wbc_classifier.onnx \\
        --manifest runs/default/manifest.csv --output benchmarks/results/cross_dataset
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import hashlib
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

ROOT = Path(__file__).resolve().parents[1]  # the repository: relative defaults are resolved against it


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


def box_cell(box: tuple[float, float, float, float], box_to_cell: float = BOX_TO_CELL) -> Any:
    """A :class:`wbc.types.Cell` for an annotated box: an ellipse ``box_to_cell`` of the box's size."""
    from wbc.types import Cell

    x0, y0, x1, y1 = (round(v) for v in box)
    h, w = max(1, y1 - y0), max(1, x1 - x0)
    yy, xx = np.mgrid[0:h, 0:w]
    ry, rx = box_to_cell * h / 2, box_to_cell * w / 2
    mask = ((yy + 0.5 - h / 2) / ry) ** 2 + ((xx + 0.5 - w / 2) / rx) ** 2 <= 1
    return Cell(id=1, box=(x0, y0, x1, y1), nucleus_mask=mask, cell_mask=mask)


def load_bccd_cells(
    root: Path, size: int, crop: str = "wbc", fraction: float | None = None, lab_scale: bool = False,
    framing: object = None, red_cells: dict | None = None,
) -> tuple[np.ndarray, list[str], list[str]]:
    """BCCD single-WBC crops at ``size`` with their labels and image names.

    ``crop="wbc"``: :func:`wbc.crops.crop_cell` (what ``wbc analyze`` does) on an ellipse fitted in the box,
    with ``fraction`` (default: :data:`wbc.crops.DEFAULT_CELL_FRACTION`); the field is mirrored past its border,
    as it is for 261 of BCCD's 277 train/val cells. ``"single"``: the box as a lab's single-cell image shows it
    (:func:`wbc.crops.box_window`, nothing mirrored), re-framed as `wbc classify` re-frames it with ``framing``
    (the model's :class:`wbc.reframe.FramingStats`; one framing). ``"local"``: :func:`crop_cell`
    here (max extent / PBC_FILL, background-coloured borders). ``lab_scale``: one crop side for the whole
    lab (the median cell diameter / ``fraction``) instead of one per cell, so that cells keep their sizes
    relative to each other, as in PBC's fixed-magnification crops (small lymphocytes, large monocytes); with
    ``"single"``, the lab's one magnification as `wbc adapt --no-labels --framing lab` sets it
    (:func:`wbc.reframe.lab_framing` of the windows' nuclei: no label used). ``red_cells`` (with ``"wbc"``): the
    model's red-cell target; each field is calibrated on its own red cells first, as `wbc analyze` does
    (:func:`wbc.analyze.calibrate_field`).
    """
    from wbc import crops
    from wbc.io import read_image
    from wbc.preprocess import resize_square

    frac = fraction or crops.DEFAULT_CELL_FRACTION
    fields = []
    with (root / "bccd" / "single_wbc_labels.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            box = wbc_box(root / "bccd" / "Annotations" / f"{row['image']}.xml")
            label = row["label"].strip().lower()
            if box is not None and label in BCCD_CLASSES:
                fields.append((row["image"], label, box))
    if crop == "single":
        from wbc.reframe import DEFAULT_STATS, FramingStats, frame_cell, lab_framing, nucleus_extent

        windows = [crops.box_window(read_image(root / "bccd" / "JPEGImages" / f"{image}.jpg"), box)
                   for image, _, box in fields]
        stats = framing if isinstance(framing, FramingStats) else DEFAULT_STATS
        if lab_scale:
            stats = lab_framing([nucleus_extent(w) for w in windows]) or stats
        return (np.stack([frame_cell(w, size, stats) for w in windows]), [lab for _, lab, _ in fields],
                [image for image, _, _ in fields])
    diameters = [crops.cell_diameter(box_cell(box)) for _, _, box in fields]
    side = float(np.median(diameters)) / frac
    cells = []
    for (image, _, box), d in zip(fields, diameters, strict=True):
        rgb = read_image(root / "bccd" / "JPEGImages" / f"{image}.jpg")
        if red_cells and crop == "wbc":  # as `wbc analyze` does, measured on every pixel (as first measured)
            from wbc.analyze import calibrate_to

            rgb = calibrate_to(rgb, [box_cell(box)], red_cells, step=1)[0]
        if crop == "wbc":
            cells.append(crops.crop_cell(rgb, box_cell(box), size, d / side if lab_scale else frac))
        else:
            cells.append(resize_square(crop_cell(rgb, box), size))
    return np.stack(cells), [lab for _, lab, _ in fields], [image for image, _, _ in fields]


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
    ap.add_argument("--manifest", type=Path, default=ROOT / "runs/default/manifest.csv")
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/cross_dataset")
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--sizes", type=int, nargs="+", default=[25, 50, 100])
    ap.add_argument("--pbc-per-class", type=int, default=30, help="PBC test cells per class (0: all)")
    ap.add_argument("--train-per-class", type=int, default=30, help="PBC train cells per class for stats")
    ap.add_argument("--measures", nargs="+", default=list(PREPS), choices=list(PREPS))
    ap.add_argument("--cache", type=Path, default=None,
                    help="folder for cached embeddings (resumable; one sub-folder per model and cell setting)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--crop", choices=["wbc", "single", "local"], default="wbc",
                    help="wbc: wbc.crops (as wbc analyze, mirrored past the field); single: the box as a lab's "
                         "single-cell image, re-framed as wbc classify does; local: this script's padded crop")
    ap.add_argument("--finetune-checkpoint", type=Path, default=None,
                    help="PyTorch weights for the fine-tuning rows (default: the .pt beside --model)")
    ap.add_argument("--no-finetune", action="store_true", help="skip the fine-tuning rows (the slow part)")
    ap.add_argument("--colour-calibration", action="store_true",
                    help="with --crop wbc: calibrate each field on its own red cells first, as wbc analyze does")
    ap.add_argument("--lab-scale", action="store_true",
                    help="crop every BCCD cell with one side (the lab's median diameter / the cell fraction), "
                         "keeping cell sizes relative to each other, instead of scaling each crop to its cell; "
                         "with --crop single: the lab's one magnification, as wbc adapt --no-labels --framing lab")
    ap.add_argument("--finetune-members", type=int, default=1,
                    help="fine-tune K copies per draw and score their ensemble (wbc adapt --members K)")
    ap.add_argument("--finetune-unlabelled", action="store_true",
                    help="also give the fine-tuning half of the other cells without labels (wbc adapt "
                         "--unlabelled); both halves are scored, and reported apart too")
    args = ap.parse_args(argv)
    if args.finetune_checkpoint and not args.finetune_checkpoint.is_file():  # was dropped: rows as --no-finetune
        raise SystemExit(f"error: {args.finetune_checkpoint}: no such checkpoint (--finetune-checkpoint)")

    from _provenance import provenance

    from wbc.adapt import original_head
    from wbc.crops import cell_fraction_of
    from wbc.data import cap_per_class, read_manifest
    from wbc.io import atomic_write_json, atomic_write_text
    from wbc.model import load_model
    from wbc.ood_fit import embed_samples
    from wbc.paths import data_root
    from wbc.reframe import framing_stats_of
    from wbc.stain import METHODS, fit_stain_stats

    t0 = time.perf_counter()
    root = data_root(args.data)
    clf = load_model(args.model, threads=args.threads)
    classes = clf.classes
    size = clf.info.input_size
    w0, b0 = original_head(clf)
    temperature = float(clf.info.temperature)
    base_info = clf.info
    fraction = cell_fraction_of(clf)
    cache = args.cache
    if cache:  # one sub-folder per setting that changes the cells or the model: a cache never answers another run
        key = json.dumps([clf.model_id, str(clf.path), str(args.manifest), str(root), args.crop, args.lab_scale,
                          args.colour_calibration, fraction, args.pbc_per_class, args.train_per_class])
        cache = cache / hashlib.sha1(key.encode()).hexdigest()[:12]
        cache.mkdir(parents=True, exist_ok=True)

    print("loading BCCD crops ...", flush=True)
    b_cells, b_labels, _ = load_bccd_cells(root, size, args.crop, fraction, args.lab_scale, framing_stats_of(clf),
                                           clf.red_cell_target() if args.colour_calibration else None)
    counts = ", ".join(f"{c} {b_labels.count(c)}" for c in BCCD_CLASSES)
    print(f"  {len(b_cells)} cells: {counts}", flush=True)
    pbc_test = cap_per_class([s for s in read_manifest(args.manifest, "test", root) if s.label in classes],
                    args.pbc_per_class, 0)
    pbc_train = cap_per_class([s for s in read_manifest(args.manifest, "train", root) if s.label in classes],
                     args.train_per_class, 1)
    p_cells, _, p_ok = embed_samples(clf, [s.path for s in pbc_test], workers=args.threads)
    p_labels = [pbc_test[i].label for i in p_ok]
    t_cells, t_emb, _ = embed_samples(clf, [s.path for s in pbc_train], workers=args.threads)
    train_ref = {m: fit_stain_stats(list(t_cells[:: max(1, len(t_cells) // 200)]), m) for m in METHODS}
    train_mean = t_emb.mean(0)
    results: dict[str, Any] = {"measures": {}, "adapt": {}, "finetune": {}}
    ft_ckpt = args.finetune_checkpoint or clf.path.with_suffix(".pt")
    if args.no_finetune or not ft_ckpt.is_file():
        ft_ckpt = None
    results["provenance"] = provenance(__file__, argv, clf.model_id)
    results["setup"] = {
        "model": str(clf.path), "model_id": clf.model_id, "input_size": size,
        "bccd_cells": len(b_cells), "bccd_counts": {c: b_labels.count(c) for c in BCCD_CLASSES},
        "pbc_test_cells": len(p_cells), "pbc_train_cells_for_stats": len(t_cells),
        "pbc_fill": PBC_FILL, "box_to_cell": BOX_TO_CELL, "crop": args.crop, "cell_fraction": fraction,
        "lab_scale": args.lab_scale,
        "colour_calibration": args.colour_calibration,
        "cache": str(cache) if cache else None,
        "draws": args.draws, "command": "python benchmarks/cross_dataset.py " + " ".join(sys.argv[1:]),
    }

    def save() -> None:
        results["setup"]["seconds"] = time.perf_counter() - t0
        args.output.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(_out(args.output, ".json"), results)
        atomic_write_text(_out(args.output, ".md"), markdown(results))

    chosen: dict[str, Any] = {}

    def spec_for(name: str) -> dict | None:
        if name == "none" or name.startswith("scale"):
            return None
        if name == "reinhard-lab":
            return {"method": "reinhard", "target": train_ref["reinhard"],
                    "source": fit_stain_stats(list(b_cells), "reinhard")}
        if name == "auto-lab":  # what `wbc adapt --no-labels --classes 5part` chooses on the unlabelled cells
            from wbc.adapt_unlabelled import choose_preprocessing

            if "auto-lab" not in chosen:
                chosen["auto-lab"] = choose_preprocessing(clf, b_cells, tuple(sorted(BCCD_CLASSES)))
                results["setup"]["auto_lab_choice"] = {"chosen": chosen["auto-lab"][2],
                                                       "reason": chosen["auto-lab"][3]}
            return chosen["auto-lab"][0]
        return {"method": name, "target": train_ref[name]}

    def embeddings(name: str, which: str, cells: np.ndarray, views: int) -> np.ndarray:
        f = cache / f"{name}_{which}_{views}.npy" if cache else None
        if f and f.is_file():
            return np.load(f)
        info = copy.deepcopy(base_info)
        spec = spec_for(name) if (which == "bccd" or name not in ("reinhard-lab", "auto-lab")) else None
        info.preprocessing = dataclasses.replace(info.preprocessing, stain=spec or None)
        clf.info = info
        out = embed_views(clf, cells, views)
        clf.info = base_info
        if f:
            np.save(f, out)
        return out

    emb: dict[str, dict[str, np.ndarray]] = {}
    for name in args.measures:
        print(f"embedding with preprocessing {name} ...", flush=True)
        # 8 views on BCCD (TTA and adaptation); PBC: 8 views for the baseline only (CPU time)
        emb[name] = {"bccd": embeddings(name, "bccd", b_cells, 8),
                     "pbc": embeddings(name, "pbc", p_cells, 8 if name == "none" else 1)}
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
                    "pbc_views": len(ep) if tta else 1,
                }
                m = results["measures"][key]
                print(f"{key:<36} BCCD acc {m['bccd']['accuracy']:.3f} F1 {m['bccd']['macro_f1']:.3f}   "
                      f"PBC acc {m['pbc_test']['accuracy']:.3f}", flush=True)
                if not centre:  # + the lab's class frequencies, estimated by EM as `wbc adapt --no-labels` does
                    key_p = key + "+prior (EM)"
                    results["measures"][key_p] = {
                        "bccd": metrics(b_labels, prior_pred(eb, w0, b0, tta, temperature, classes),
                                        BCCD_CLASSES),
                        "pbc_test": results["measures"][key]["pbc_test"],
                        "pbc_views": results["measures"][key]["pbc_views"],
                    }
                    m = results["measures"][key_p]
                    print(f"{key_p:<36} BCCD acc {m['bccd']['accuracy']:.3f} F1 {m['bccd']['macro_f1']:.3f}",
                          flush=True)
        save()
        if name in ("none", "reinhard-lab", "auto-lab"):
            adapt_runs(results, name, emb[name], b_labels, p_labels, classes, w0, b0, args)
            save()
            if ft_ckpt:
                finetune_runs(results, name, b_cells, spec_for(name) if name != "none" else None, b_labels,
                              p_cells, p_labels, ft_ckpt, args)
                save()

    # crop-scale sensitivity: the same cells cropped tighter / looser (1 view, no stain normalisation)
    for factor in (0.8, 1.25) if "none" in args.measures and args.crop != "single" else ():
        cells_f, labels_f, _ = load_bccd_cells(root, size, args.crop, fraction * factor, args.lab_scale)
        key = f"none, cell fraction x{factor}"
        pb = probs_from_emb(embeddings(f"scale{factor}", "bccd", cells_f, 1), w0, b0, False)
        results["measures"][key] = {
            "bccd": metrics(labels_f, restricted_pred(pb, classes, BCCD_CLASSES), BCCD_CLASSES),
            "pbc_test": results["measures"]["none"]["pbc_test"],
        }
        m = results["measures"][key]["bccd"]
        print(f"{key:<36} BCCD acc {m['accuracy']:.3f} F1 {m['macro_f1']:.3f}", flush=True)
    save()
    print(f"wrote {_out(args.output, '.json')} and .md ({results['setup']['seconds']:.0f} s)")
    return 0


PREPS = ("none", "reinhard", "reinhard-lab", "auto-lab", "histogram", "macenko")


def draw_splits(n_cells: int, sizes: list[int], draws: int) -> dict[int, list[tuple[np.ndarray, np.ndarray]]]:
    """(labelled, test) index pairs per size: the same random draws for every adaptation method."""
    rng = np.random.default_rng(0)
    out: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
    for n in sizes:
        out[n] = []
        for _ in range(draws):
            idx = rng.permutation(n_cells)
            out[n].append((idx[:n], idx[n:]))
    return out


def finetune_runs(
    results: dict[str, Any], name: str, b_cells: np.ndarray, spec: dict | None, b_labels: list[str],
    p_cells: np.ndarray, p_labels: list[str], checkpoint: Path, args: argparse.Namespace,
) -> None:
    """Few-shot fine-tuning of the whole network (``wbc adapt``'s default) on the same draws as the head."""
    import torch

    from wbc.model import ADAPTED_TTA_VIEWS
    from wbc.preprocess import centre_crop
    from wbc.stain import normalise_batch
    from wbc.train.finetune import DEFAULTS, finetune_members, load_weights, mean_view_logits, strong_augment
    from wbc.train.loop import predict_logits

    torch.set_num_threads(args.threads)
    net, info = load_weights(checkpoint)
    classes = list(info.classes)
    x = np.ascontiguousarray(centre_crop(normalise_batch(b_cells, spec) if spec else b_cells, info.centre_crop))
    p_cells = np.ascontiguousarray(centre_crop(p_cells, info.centre_crop))
    y = np.array([classes.index(lab) for lab in b_labels])
    allowed = [classes.index(c) for c in BCCD_CLASSES]
    splits = draw_splits(len(y), args.sizes, args.draws)
    for n in args.sizes:
        rows = []
        for tr, te in splits[n]:
            t1 = time.perf_counter()
            # --finetune-members K: K copies (seeds 0..K-1), their mean probability (`wbc adapt --members K`)
            # --finetune-unlabelled: the first half of the other cells is also given, without labels
            given = te[: len(te) // 2]
            extra = ({"unlabelled": np.concatenate([x[tr], x[given]]), "strong": strong_augment(info)}
                     if args.finetune_unlabelled else {})
            tuned = finetune_members(net, x[tr], y[tr], info.mean, info.std, args.finetune_members, **extra)
            secs = time.perf_counter() - t1
            lg = predict_logits(tuned, x[te], info.mean, info.std)  # an ensemble's logits: log mean probability
            pred = [classes[allowed[i]] for i in lg[:, allowed].argmax(1)]
            pp = predict_logits(tuned, p_cells, info.mean, info.std).argmax(1)
            right = np.asarray(pred) == np.asarray([b_labels[i] for i in te])
            # what the adapted model answers: the mean of the four rotations (wbc adapt's --tta default)
            lg4 = mean_view_logits(tuned, x[te], info.mean, info.std, ADAPTED_TTA_VIEWS)
            right4 = np.asarray([classes[allowed[i]] for i in lg4[:, allowed].argmax(1)]) == np.asarray(
                [b_labels[i] for i in te])
            rows.append({"n": n, "fit_seconds": secs,
                         "bccd": metrics([b_labels[i] for i in te], pred, BCCD_CLASSES),
                         "acc_tta": float(right4.mean()),
                         "acc_given_unlabelled": float(right[: len(given)].mean()),
                         "acc_never_given": float(right[len(given) :].mean()),
                         "pbc_test_acc_after_adapt": float(np.mean(np.asarray(p_labels) == np.asarray(
                             [classes[i] for i in pp])))})
        accs = [r["bccd"]["accuracy"] for r in rows]
        results["finetune"][f"{name}/{n}" + ("+unlabelled" if args.finetune_unlabelled else "")] = {
            "draws": rows, "acc_mean": float(np.mean(accs)), "acc_min": float(np.min(accs)),
            "acc_max": float(np.max(accs)), "f1_mean": float(np.mean([r["bccd"]["macro_f1"] for r in rows])),
            "pbc_acc_mean": float(np.mean([r["pbc_test_acc_after_adapt"] for r in rows])),
            "fit_seconds_mean": float(np.mean([r["fit_seconds"] for r in rows])),
            "recipe": DEFAULTS, "members": args.finetune_members, "checkpoint": str(checkpoint),
        }
        a = results["finetune"][f"{name}/{n}" + ("+unlabelled" if args.finetune_unlabelled else "")]
        a["unlabelled"] = args.finetune_unlabelled
        for k in ("acc_tta", "acc_given_unlabelled", "acc_never_given"):
            a[f"{k}_mean"] = float(np.mean([r[k] for r in rows]))
        print(f"finetune {name:<13} n={n:<4} BCCD acc {a['acc_mean']:.3f} [{a['acc_min']:.3f}-{a['acc_max']:.3f}] "
              f"(4 rotations {a['acc_tta_mean']:.3f}) "
              f"(half given unlabelled {a['acc_given_unlabelled_mean']:.3f}, never given "
              f"{a['acc_never_given_mean']:.3f}) "
              f"F1 {a['f1_mean']:.3f}  PBC {a['pbc_acc_mean']:.3f}  {a['fit_seconds_mean']:.0f} s", flush=True)


def _out(output: Path, suffix: str) -> Path:
    """``output`` + ``suffix`` (a name like ``cross_dataset_v1.1.0`` keeps its dots)."""
    return output.with_name(output.name + suffix)


def prior_pred(emb_views: np.ndarray, w: np.ndarray, b: np.ndarray, tta: bool, temperature: float,
               classes: list[str]) -> list[str]:
    """Predictions over BCCD's classes after the class frequencies are estimated by EM from the calibrated,
    restricted probabilities (:func:`wbc.calibration.estimate_class_prior`, as `wbc adapt --no-labels`)."""
    from wbc.calibration import estimate_class_prior
    from wbc.model import softmax

    views = emb_views if tta else emb_views[:1]
    idx = [classes.index(c) for c in BCCD_CLASSES]
    p = np.mean([softmax(e @ w.T + b, temperature)[:, idx] for e in views], axis=0)
    p /= p.sum(1, keepdims=True)
    prior, _ = estimate_class_prior(p)
    return [BCCD_CLASSES[i] for i in (p * prior).argmax(1)]


def adapt_runs(
    results: dict[str, Any], name: str, emb: dict[str, np.ndarray], b_labels: list[str], p_labels: list[str],
    classes: list[str], w0: np.ndarray, b0: np.ndarray, args: argparse.Namespace,
) -> None:
    """Few-shot adaptation: random draws of labelled BCCD cells, the rest as test."""
    from wbc.adapt import adapt_embeddings

    y = np.asarray(b_labels)
    eb, ep = emb["bccd"], emb["pbc"]
    splits = draw_splits(len(y), args.sizes, args.draws)
    for n in args.sizes:
        rows = []
        for tr, te in splits[n]:
            t1 = time.process_time()
            w, b, res = adapt_embeddings(eb[:, tr], list(y[tr]), classes, w0, b0)
            row = {"n": n, "fit_cpu_seconds": time.process_time() - t1, "lam": res.lam,
                   "cv_acc": res.heldout_acc_after}
            for tta in (False, True):
                pb = probs_from_emb(eb[:, te], w, b, tta)
                m = metrics(list(y[te]), restricted_pred(pb, classes, BCCD_CLASSES), BCCD_CLASSES)
                row["bccd" + ("_tta" if tta else "")] = m
            pp = probs_from_emb(ep[:1], w, b, False)
            row["pbc_test_acc_after_adapt"] = float(np.mean(np.asarray(p_labels) == np.asarray(
                [classes[i] for i in pp.argmax(1)])))
            rows.append(row)
        accs = [r["bccd"]["accuracy"] for r in rows]
        results["adapt"][f"{name}/{n}"] = {
            "draws": rows, "acc_mean": float(np.mean(accs)), "acc_min": float(np.min(accs)),
            "acc_max": float(np.max(accs)), "f1_mean": float(np.mean([r["bccd"]["macro_f1"] for r in rows])),
            "acc_tta_mean": float(np.mean([r["bccd_tta"]["accuracy"] for r in rows])),
            "pbc_acc_mean": float(np.mean([r["pbc_test_acc_after_adapt"] for r in rows])),
            "fit_cpu_seconds_mean": float(np.mean([r["fit_cpu_seconds"] for r in rows])),
        }
        a = results["adapt"][f"{name}/{n}"]
        print(f"adapt {name:<13} n={n:<4} BCCD acc {a['acc_mean']:.3f} "
              f"[{a['acc_min']:.3f}-{a['acc_max']:.3f}] F1 {a['f1_mean']:.3f}  "
              f"+tta {a['acc_tta_mean']:.3f}  PBC {a['pbc_acc_mean']:.3f}", flush=True)


def markdown(res: dict[str, Any]) -> str:
    s = res["setup"]
    lines = [
        f"Model `{s['model_id']}` (input {s['input_size']} px), trained on PBC only. BCCD: {s['bccd_cells']} "
        "single-WBC fields cropped around their box"
        + (" as single-cell images (`--crop single`)" if s.get("crop") == "single" else "")
        + (" with one crop size for the whole lab (`--lab-scale`)" if s.get("lab_scale") else "")
        + (", each field first calibrated on its red cells (`--colour-calibration`)"
           if s.get("colour_calibration") else "") + " ("
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
    lines += ["", f"Few-shot adaptation (`wbc adapt --method head`, last-layer refit), {s['draws']} random "
              "draws of n labelled BCCD cells, the remaining cells as test:", "",
              "| preprocessing / n labelled | BCCD accuracy mean [min-max] | macro-F1 mean | "
              "accuracy with TTA | PBC test accuracy after |", "|---|---:|---:|---:|---:|"]
    for key, a in res["adapt"].items():
        lines.append(f"| {key} | {a['acc_mean']:.3f} [{a['acc_min']:.3f}-{a['acc_max']:.3f}] | "
                     f"{a['f1_mean']:.3f} | {a['acc_tta_mean']:.3f} | {a['pbc_acc_mean']:.3f} |")
    if res.get("finetune"):
        k = next(iter(res["finetune"].values())).get("members", 1)
        what = f"an ensemble of {k} fine-tuned copies (`wbc adapt --members {k}`)" if k > 1 else (
            "`wbc adapt`, the default method")
        lines += ["", f"Few-shot fine-tuning of the whole network ({what}), the same draws:", "",
                  "| preprocessing / n labelled | BCCD accuracy mean [min-max] | macro-F1 mean | "
                  "fit seconds | PBC test accuracy after | half given unlabelled / never given | "
                  "mean of 4 rotations |", "|---|---:|---:|---:|---:|---:|---:|"]
        for key, a in res["finetune"].items():
            halves = (f"{a['acc_given_unlabelled_mean']:.3f} / {a['acc_never_given_mean']:.3f}"
                      if a.get("unlabelled") else "-")
            lines.append(f"| {key} | {a['acc_mean']:.3f} [{a['acc_min']:.3f}-{a['acc_max']:.3f}] | "
                         f"{a['f1_mean']:.3f} | {a['fit_seconds_mean']:.0f} | {a['pbc_acc_mean']:.3f} | {halves} | "
                         + (f"{a['acc_tta_mean']:.3f} |" if "acc_tta_mean" in a else "- |"))
    lines += ["", f"Reproduce: `{s['command']}` ({s.get('seconds', 0):.0f} s)", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    from _run import run

    os.environ.setdefault("GLIBC_TUNABLES", GLIBC_FIX)
    run(main)
