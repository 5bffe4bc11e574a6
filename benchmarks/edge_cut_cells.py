"""Cells cut by the image's edge: how often their answers are wrong and unflagged, and how many cells the review flag
for them (``wbc.analyze.EDGE_REASON``, :data:`wbc.analyze.EDGE_CUT_SHARE`) marks in real fields.

Part 1, PBC cells (the training lab: no out-of-distribution flag hides the problem): each cell of the manifest's split
(``--per-class`` a class, seed 0) is analysed as a smear field by ``wbc analyze``'s path, whole and with one image edge
(a side drawn per cell) through its box at each of ``--keeps`` of the box kept. Per cut: the share of the whole cell's
outline cut off, the share :func:`wbc.analyze.share_beyond_image_edge` estimates from the cut cell, the answer and
whether anything but the edge flagged it. Part 2, smear fields (``--fields``, the split's BCCD and TXL-PBC fields):
the estimated share of every cell found. The summary gives, for each candidate share, the cut cells' answers left
unflagged and wrong, and the cells flagged in the fields. Choose on ``val``; never tune on ``test``.

    python benchmarks/edge_cut_cells.py --split val --output benchmarks/results/edge_cut_cells.json
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SIDES = ("left", "right", "top", "bottom")


def cut_field(rgb: np.ndarray, box: tuple[int, int, int, int], side: str, keep: float) -> tuple[np.ndarray, np.ndarray]:
    """``rgb`` cut by one image edge through ``box`` on ``side``, ``keep`` of the box kept; and the mask of the pixels
    of ``rgb`` cut away."""
    x0, y0, x1, y1 = box
    gone = np.zeros(rgb.shape[:2], bool)
    if side == "right":
        k = round(x0 + keep * (x1 - x0))
        part, gone[:, k:] = rgb[:, :k], True
    elif side == "left":
        k = round(x1 - keep * (x1 - x0))
        part, gone[:, :k] = rgb[:, k:], True
    elif side == "bottom":
        k = round(y0 + keep * (y1 - y0))
        part, gone[k:] = rgb[:k], True
    else:
        k = round(y1 - keep * (y1 - y0))
        part, gone[:k] = rgb[k:], True
    return np.ascontiguousarray(part), gone


def pbc_rows(args: argparse.Namespace, root: Path, clf: Any, seg: Any) -> list[dict[str, Any]]:
    """Part 1: one row per (cell, keep); ``found`` False where the cut cell was not found."""
    from wbc.analyze import EDGE_REASON, analyze_image, share_beyond_image_edge
    from wbc.errors import WbcError
    from wbc.io import read_image

    with open(args.manifest, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == args.split and r["label"] != "platelet"]
    by: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by.setdefault(r["label"], []).append(r)
    rng = random.Random(0)
    picked = [x for k in sorted(by) for x in rng.sample(by[k], min(args.per_class, len(by[k])))]
    out: list[dict[str, Any]] = []

    def centre(c: Any) -> tuple[float, float]:
        return (c.box[0] + c.box[2]) / 2, (c.box[1] + c.box[3]) / 2

    for r in picked:
        rgb = read_image(root / r["path"])
        h, w = rgb.shape[:2]
        whole = analyze_image(rgb, clf, seg, name=r["path"]).cells
        if not whole:
            continue
        c = min(whole, key=lambda c: (centre(c)[0] - w / 2) ** 2 + (centre(c)[1] - h / 2) ** 2)
        outline = np.zeros((h, w), bool)
        outline[c.box[1] : c.box[3], c.box[0] : c.box[2]] = c.cell_mask
        side = rng.choice(SIDES)
        for keep in (1.0, *args.keeps):
            part, gone = cut_field(rgb, c.box, side, keep) if keep < 1.0 else (rgb, np.zeros((h, w), bool))
            row: dict[str, Any] = {"path": r["path"], "label": r["label"], "side": side, "keep": keep,
                                   "true_share": round(float((outline & gone).sum() / outline.sum()), 4)}
            ys, xs = np.nonzero(outline & ~gone)  # where the cut cell's visible part is in the cut field
            ex = xs.mean() - (w - part.shape[1] if side == "left" else 0)
            ey = ys.mean() - (h - part.shape[0] if side == "top" else 0)
            try:
                cells = analyze_image(part, clf, seg, name=r["path"]).cells
            except WbcError:  # a field cut too small
                cells = []
            near = [q for q in cells if q.box[0] <= ex <= q.box[2] and q.box[1] <= ey <= q.box[3]]
            row["found"] = bool(near)
            if near:
                q = min(near, key=lambda q: (centre(q)[0] - ex) ** 2 + (centre(q)[1] - ey) ** 2)
                p = q.prediction
                row.update(est_share=share_beyond_image_edge(q, part.shape), answer=p.label,
                           confidence=round(p.confidence, 4), edge_flag=EDGE_REASON in p.reasons,
                           other_flag=bool(p.review and any(x != EDGE_REASON for x in p.reasons)))
            out.append(row)
    return out


def field_rows(args: argparse.Namespace, root: Path, clf: Any, seg: Any) -> list[dict[str, Any]]:
    """Part 2: one row per cell found in the split's BCCD and TXL-PBC fields."""
    from wbc.analyze import EDGE_REASON, analyze_image, share_beyond_image_edge, within_canvas
    from wbc.evaluate.smears import load_bccd, load_labelled_folder
    from wbc.io import read_image
    from wbc.types import Cell

    out: list[dict[str, Any]] = []
    sets = {"bccd": lambda: load_bccd(root, args.split),
            "txl_pbc": lambda: load_labelled_folder(root / "txl_pbc", args.split)}
    for name in args.fields:
        for it in sets[name]():
            rgb = read_image(it.image)
            field, (dx, dy) = within_canvas(rgb)
            for c in analyze_image(rgb, clf, seg, name=str(it.image)).cells:
                in_field = Cell(c.id, (c.box[0] - dx, c.box[1] - dy, c.box[2] - dx, c.box[3] - dy),
                                c.nucleus_mask, c.cell_mask)
                p = c.prediction
                out.append({"fields": name, "field": it.name, "touches_border": c.touches_border,
                            "est_share": share_beyond_image_edge(in_field, field.shape),
                            "edge_flag": EDGE_REASON in p.reasons,
                            "other_flag": bool(p.review and any(x != EDGE_REASON for x in p.reasons))})
    return out


def summary(cut: list[dict[str, Any]], fields: list[dict[str, Any]], shares: list[float]) -> list[dict[str, Any]]:
    """Per candidate share: PBC cut cells' answers left unflagged (neither flag) and wrong, the cells cut by 40 % or
    more of their box that the rule misses, and the cells flagged in the fields (and those flagged by nothing else)."""
    found = [r for r in cut if r["found"]]
    whole = [r for r in found if r["keep"] == 1.0]
    parts = [r for r in found if r["keep"] < 1.0]
    halves = [r for r in parts if r["keep"] <= 0.6]
    out = []
    for s in shares:
        left = [r for r in parts if not r["other_flag"] and r["est_share"] < s]
        row: dict[str, Any] = {
            "share": s,
            "cut_unflagged": len(left), "cut_unflagged_wrong": sum(r["answer"] != r["label"] for r in left),
            "cut_flagged": sum(r["est_share"] >= s for r in parts),
            "cut_40pc_or_more_missed": sum(r["est_share"] < s for r in halves), "cut_40pc_or_more": len(halves),
            "whole_flagged": sum(r["est_share"] >= s for r in whole),
        }
        for name in sorted({f["fields"] for f in fields}):
            fs = [f for f in fields if f["fields"] == name]
            row[f"{name}_cells"] = len(fs)
            row[f"{name}_flagged"] = sum(f["est_share"] >= s for f in fs)
            row[f"{name}_flagged_by_nothing_else"] = sum(f["est_share"] >= s and not f["other_flag"] for f in fs)
        out.append(row)
    left = [r for r in whole if not r["other_flag"]]
    out.append({"share": "whole cells", "cut_unflagged": len(left),
                "cut_unflagged_wrong": sum(r["answer"] != r["label"] for r in left)})
    return out


def by_keep(cut: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per share of the box kept: the cells found, named wrongly, left unflagged by anything but the edge flag (and
    of them wrong), flagged for the edge, and the mean true and estimated shares cut off."""
    out = []
    for keep in sorted({r["keep"] for r in cut}, reverse=True):
        rows = [r for r in cut if r["keep"] == keep]
        found = [r for r in rows if r["found"]]
        left = [r for r in found if not r["other_flag"]]
        out.append({"keep": keep, "cells": len(rows), "found": len(found),
                    "wrong": sum(r["answer"] != r["label"] for r in found),
                    "unflagged_otherwise": len(left), "unflagged_otherwise_wrong": sum(r["answer"] != r["label"]
                                                                                        for r in left),
                    "edge_flagged": sum(r["edge_flag"] for r in found),
                    "true_share": round(float(np.mean([r["true_share"] for r in found])), 4) if found else None,
                    "est_share": round(float(np.mean([r["est_share"] for r in found])), 4) if found else None})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--split", default="val", help="manifest and dataset split (val: for choosing; never tune on test)")
    ap.add_argument("--per-class", type=int, default=50, help="PBC cells per class")
    ap.add_argument("--keeps", type=float, nargs="+", default=[0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.4],
                    help="the shares of the cell's box kept in view")
    ap.add_argument("--fields", nargs="*", default=["bccd", "txl_pbc"], choices=["bccd", "txl_pbc"])
    ap.add_argument("--shares", type=float, nargs="+", default=[0.0001, 0.02, 0.05, 0.1, 0.2],
                    help="candidate shares for the flag")
    ap.add_argument("--manifest", type=Path, default=ROOT / "runs/default/manifest.csv")
    ap.add_argument("--data", type=Path, default=None, help="data root (default: $WBC_DATA_DIR or ../shared/data)")
    ap.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/edge_cut_cells.json")
    ap.add_argument("--rows", action="store_true", help="also write every cut cell and field cell (about 1 MB)")
    args = ap.parse_args(argv)

    from _provenance import provenance

    from wbc.errors import WbcError
    from wbc.io import atomic_write_json
    from wbc.model import load_model
    from wbc.paths import data_root
    from wbc.segment import get_segmenter

    root = data_root(args.data)
    if not (root / "pbc").is_dir():
        raise WbcError(f"{root}: no pbc/ folder (the data root: --data or $WBC_DATA_DIR)")
    if not args.manifest.is_file():  # as read_manifest says it, before the models load
        raise WbcError(f"{args.manifest}: manifest not found")
    clf, seg = load_model(), get_segmenter("auto")
    cut = pbc_rows(args, root, clf, seg)
    fields = field_rows(args, root, clf, seg)
    res: dict[str, Any] = {"provenance": provenance(__file__, argv, clf.model_id), "split": args.split,
                           "summary": summary(cut, fields, args.shares), "by_keep": by_keep(cut)}
    if args.rows:
        res.update(pbc_cut_cells=cut, field_cells=fields)
    atomic_write_json(args.output, res)
    for row in (*res["summary"], *res["by_keep"]):
        print(row)
    return 0


if __name__ == "__main__":
    from _run import run

    run(main)
