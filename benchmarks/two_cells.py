"""Images that show two nucleated cells: how often `wbc classify` flags them, and how often it flags PBC's own crops.

`wbc classify` answers a single-cell image for one cell. Where a second cell lies whole in the image, the answer is
for one of the two and which one is unclear, so the cell is flagged for review (:data:`wbc.reframe.OTHER_CELL`,
:func:`wbc.classify.predict_cells`). This measures both sides of that rule, on validation cells only (the run's
manifest, ``split == val``; the test split is never read):

- **PBC validation crops as they come**: every file through :func:`wbc.classify.classify_paths` (what `wbc classify`
  does), the share flagged by the rule, by class, the files named, and how many of them another rule (confidence,
  out-of-distribution, ...) flags already.
- **Synthetic pairs**: two validation cells of the nucleated classes (not platelet) drawn at random (``--seed``),
  each a disc of its crop around its nucleus (:data:`RADIUS` of the crop's side: the whole cell, some red cells
  around it) with a soft edge, side by side (across or above each other, a random gap of up to a tenth of a disc) on
  one square canvas of their own background colour (the mean of the two crops' glass): one single-cell image of two
  whole cells. Shown at a few scales (:data:`VARIANTS`): the canvas just holding the pair, 1.25x, 1.6x and 2x its
  length (the cells smaller in a wider field), and the 1.25x canvas at half and twice its pixels. Saved as PNG and
  classified as files, the share flagged by the rule.

``--other-cell SHARE,RIM,APART`` measures another setting of :data:`wbc.reframe.OTHER_CELL` (``--other-cell
0.25,0,0.35``: pieces of cells at the frame's border counted too).

    python benchmarks/two_cells.py --output benchmarks/results/two_cells_wbc0.31.0.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]

#: Each cell's disc: this much of its crop's shorter side as the radius, around its nucleus (PBC cells are centred).
RADIUS = 0.38

#: name -> (canvas side over the pair's length, pixel scale of the whole image).
VARIANTS: dict[str, tuple[float, float]] = {
    "tight": (1.0, 1.0),
    "framed": (1.25, 1.0),
    "framed_half_pixels": (1.25, 0.5),
    "framed_twice_pixels": (1.25, 2.0),
    "wide_1.6": (1.6, 1.0),
    "wide_2": (2.0, 1.0),
}


def cell_disc(rgb: np.ndarray, radius: float = RADIUS) -> tuple[np.ndarray, np.ndarray]:
    """The disc of ``rgb`` (float RGB) around its nucleus (the image centre when none is found), ``radius`` of its
    shorter side, and its alpha (1 inside, falling to 0 over the outer tenth of the radius)."""
    from wbc.reframe import measure_framing

    h, w = rgb.shape[:2]
    f = measure_framing(rgb)
    cx, cy = (f.cx, f.cy) if f.found else (w / 2, h / 2)
    r = round(radius * min(h, w))
    padded = cv2.copyMakeBorder(rgb, r, r, r, r, cv2.BORDER_REFLECT)
    x0, y0 = round(cx), round(cy)
    patch = padded[y0 : y0 + 2 * r, x0 : x0 + 2 * r].astype(np.float32)
    yy, xx = np.mgrid[: 2 * r, : 2 * r]
    alpha = np.clip((r - np.hypot(xx - r + 0.5, yy - r + 0.5)) / (0.1 * r), 0, 1).astype(np.float32)
    return patch, alpha[..., None]


def two_cell_image(a: np.ndarray, b: np.ndarray, frame: float, scale: float, gap: float, across: bool) -> np.ndarray:
    """Cells ``a`` and ``b`` (PBC crops) whole, side by side (``across``, else one above the other) ``gap`` of a disc
    apart, on a square canvas ``frame`` times the pair's length of their own background colour, resized by
    ``scale``."""
    from wbc.preprocess import brightest_tenth_colour

    pa, ma = cell_disc(a)
    pb, mb = cell_disc(b)
    d = pa.shape[0]
    if pb.shape[0] != d:
        pb, mb = cv2.resize(pb, (d, d)), cv2.resize(mb, (d, d))[..., None]
    space = round(gap * d)
    length = 2 * d + space
    side = max(round(frame * length), length)
    canvas = np.empty((side, side, 3), np.float32)
    canvas[:] = (brightest_tenth_colour(a) + brightest_tenth_colour(b)) / 2
    along, middle = (side - length) // 2, (side - d) // 2
    for patch, alpha, at in ((pa, ma, along), (pb, mb, along + d + space)):
        y, x = (middle, at) if across else (at, middle)
        under = canvas[y : y + d, x : x + d]
        canvas[y : y + d, x : x + d] = alpha * patch + (1 - alpha) * under
    out = canvas.round().clip(0, 255).astype(np.uint8)
    if scale != 1.0:
        out = cv2.resize(out, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="classifier ONNX (default: the shipped model)")
    ap.add_argument("--manifest", type=Path, default=ROOT / "runs/default/manifest.csv")
    ap.add_argument("--data", type=Path, default=None, help="data root (default: $WBC_DATA_DIR or ../shared/data)")
    ap.add_argument("--pairs", type=int, default=300, help="synthetic pairs (each shown in every variant)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--other-cell", default=None, help="SHARE,RIM,APART in place of wbc.reframe.OTHER_CELL")
    ap.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/two_cells.json")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _provenance import provenance

    import wbc.reframe
    from wbc.classify import classify_paths, other_cells_reason
    from wbc.data import read_manifest
    from wbc.errors import WbcError
    from wbc.io import atomic_write_json, read_image
    from wbc.model import load_model
    from wbc.paths import data_root

    if args.other_cell:
        try:
            share, rim, apart = (float(v) for v in args.other_cell.split(","))
        except ValueError:
            raise SystemExit(f"error: --other-cell {args.other_cell!r}: give three numbers, SHARE,RIM,APART") from None
        wbc.reframe.OTHER_CELL = (share, rim, apart)
    cv2.setNumThreads(1)
    clf = load_model(args.model, threads=args.threads)
    try:
        val = [s for s in read_manifest(args.manifest, root=data_root(args.data)) if s.split == "val"]
    except WbcError as e:
        raise SystemExit(f"error: {e}") from None
    if not val:
        raise SystemExit(f"error: {args.manifest}: no val cells")
    start = other_cells_reason(1).partition(" ")[2]  # the reason after its count: "nucleated cells in view: ..."

    res: dict = {"model": clf.model_id, "other_cell": list(wbc.reframe.OTHER_CELL), "radius": RADIUS,
                 "provenance": provenance(__file__, argv, clf.model_id)}

    t0 = time.perf_counter()
    got = classify_paths([s.path for s in val], clf, workers=args.threads)
    if got.errors:
        raise SystemExit(f"error: {got.errors[0][1]}")  # the message names the file
    labels = [s.label for s in val]
    flagged = [(lab, p) for lab, p in zip(labels, got.predictions, strict=True) if p.other_cells]

    pbc = _summary(got.predictions, start)
    pbc["by_class"] = {c: {"n": n, "flagged": sum(1 for lab, _ in flagged if lab == c)}
                       for c, n in sorted(Counter(labels).items())}
    pbc["files"] = sorted(Path(p.path).name for _, p in flagged)
    pbc["seconds"] = round(time.perf_counter() - t0, 1)
    res["pbc_val"] = pbc
    print(f"PBC val: {pbc['flagged']} of {pbc['n']} flagged ({100 * pbc['rate']:.2f} %), "
          f"{pbc['flagged_by_another_rule_too']} of them by another rule too: {', '.join(pbc['files'])}", flush=True)

    rng = np.random.default_rng(args.seed)
    nucleated = [s for s in val if s.label != "platelet"]
    res["pairs"] = {"n": args.pairs, "from": len(nucleated), "variants": {}}
    drawn = []
    for _ in range(args.pairs):
        i, j = rng.choice(len(nucleated), 2, replace=False)
        drawn.append((int(i), int(j), float(rng.uniform(0, 0.1)), bool(rng.integers(2))))
    with tempfile.TemporaryDirectory() as tmp:
        files: dict[str, list[str]] = {name: [] for name in VARIANTS}
        for k, (i, j, gap, across) in enumerate(drawn):
            a, b = read_image(nucleated[i].path), read_image(nucleated[j].path)
            for name, (frame, scale) in VARIANTS.items():
                path = Path(tmp) / f"{name}_{k:04d}.png"
                cv2.imwrite(str(path), cv2.cvtColor(two_cell_image(a, b, frame, scale, gap, across), cv2.COLOR_RGB2BGR))
                files[name].append(str(path))
        missed: Counter[str] = Counter()
        for name, paths in files.items():
            preds = classify_paths(paths, clf, workers=args.threads).predictions
            summary = _summary(preds, start)
            summary["answered_platelet"] = sum(1 for p in preds if p.label == "platelet")
            res["pairs"]["variants"][name] = summary
            for k, p in enumerate(preds):
                if not p.other_cells:
                    missed["+".join(sorted((nucleated[drawn[k][0]].label, nucleated[drawn[k][1]].label)))] += 1
            print(f"pairs, {name}: {summary['flagged']} of {summary['n']} flagged ({100 * summary['rate']:.1f} %); "
                  f"{summary['flagged_by_another_rule']} flagged by another rule", flush=True)
    n_all = sum(v["n"] for v in res["pairs"]["variants"].values())
    res["pairs"]["rate"] = sum(v["flagged"] for v in res["pairs"]["variants"].values()) / max(1, n_all)
    res["pairs"]["missed_by_classes"] = dict(missed.most_common())
    print(f"pairs, all variants: {100 * res['pairs']['rate']:.1f} % flagged")
    atomic_write_json(args.output, res)
    print(f"-> {args.output}")
    return 0


def _summary(preds: list, start: str) -> dict:
    """How many of ``preds`` the rule flags, and how many of those, and of all, another rule flags (a reason without
    ``start``, the rule's own reason after its count)."""
    def other_rule(p: object) -> bool:
        return any(start not in r for r in p.reasons)  # type: ignore[attr-defined]

    ruled = [p for p in preds if p.other_cells]
    return {"n": len(preds), "flagged": len(ruled), "rate": len(ruled) / max(1, len(preds)),
            "flagged_by_another_rule_too": sum(1 for p in ruled if other_rule(p)),
            "flagged_by_another_rule": sum(1 for p in preds if other_rule(p))}


if __name__ == "__main__":
    from _run import run

    run(main)
