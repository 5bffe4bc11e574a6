"""Framing invariance of `wbc classify`: PBC validation cells re-framed synthetically, with and without re-framing.

Each validation cell (the run's manifest, ``split == val``) is shown as it is and re-framed the ways other
labs frame single cells: cropped tight around the centred cell (the cell filling the frame; also at 100 px),
padded wide with its own background colour (the cell small in a large field; also as a 600 px field), widened
to a camera's 4:3 frame, in the middle of a wide 16:9 camera frame (also a camera's whole 6.7 and 15 MP frame, which
`wbc classify` refused as too large before wbc 0.26.0), rescaled 0.5x and 2x, and photographed through an
eyepiece (black outside a round field of view). Every variant goes
through what `wbc classify` does
(:func:`wbc.classify.prepare_cell_views` with re-framing on, an ambiguously framed cell averaged over both
framings; a plain resize with ``--no-reframe``),
then the model. Accuracy over the model's classes, and over the five WBC types with ``--classes 5part``
semantics for the WBC cells; ``ms_per_cell``: preparation and network together. The variants are made and
classified :data:`CHUNK` cells at a time, so memory stays bounded whatever ``--per-class``.

    python benchmarks/reframe_accuracy.py --manifest runs/default/manifest.csv \
        --output benchmarks/results/reframe_accuracy.json

``--jpeg 95`` saves every variant as a JPEG first and reads it as `wbc classify` reads a file, where a large JPEG
is decoded at a reduced size (`benchmarks/results/reframe_accuracy_v1.4.0_wbc0.14.1_jpeg95.json`).

``--grey`` chose the second-framing zone (:class:`wbc.reframe.FramingStats`) on the whole validation split
(the default ``--per-class 0``): ``--grey 0.12`` (no second framing), 0.22 (chosen) and 0.26,
``benchmarks/results/reframe_grey_*.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _pbc_val import add_val_args, classify_shown, load_val_cells


def tight(rgb: np.ndarray, frac: float) -> np.ndarray:
    """The central ``frac`` of the frame (PBC cells are centred): the cell fills a tight crop."""
    h, w = rgb.shape[:2]
    ch, cw = round(h * frac), round(w * frac)
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    return np.ascontiguousarray(rgb[y0 : y0 + ch, x0 : x0 + cw])


def pad_wide(rgb: np.ndarray, factor: float, side: int | None = None) -> np.ndarray:
    """The crop in the middle of a ``factor`` x larger canvas of its own background colour (optionally
    resized to ``side`` px): the cell small in a wide field."""
    from wbc.reframe import background_colour

    h, w = rgb.shape[:2]
    ph, pw = round(h * (factor - 1) / 2), round(w * (factor - 1) / 2)
    out = cv2.copyMakeBorder(rgb, ph, ph, pw, pw, cv2.BORDER_CONSTANT, value=background_colour(rgb))
    if side:
        out = cv2.resize(out, (side, side), interpolation=cv2.INTER_AREA)
    return out


def side_pad(rgb: np.ndarray, aspect: float) -> np.ndarray:
    """The crop widened to ``aspect`` (width / height) with its own background colour: a camera's 4:3 frame."""
    from wbc.reframe import background_colour

    h, w = rgb.shape[:2]
    extra = max(0, round(h * aspect) - w)
    return cv2.copyMakeBorder(rgb, 0, 0, extra // 2, extra - extra // 2, cv2.BORDER_CONSTANT,
                              value=background_colour(rgb))


def camera_frame(rgb: np.ndarray, factor: float) -> np.ndarray:
    """The crop in the middle of a 16:9 frame of its own background ``factor`` x its height: one cell photographed
    with a camera at a lower magnification (a 1,089 x 1,936 frame for ``factor`` 3)."""
    from wbc.reframe import background_colour

    h, w = rgb.shape[:2]
    fh = round(h * factor)
    fw = round(fh * 16 / 9)
    top, left = (fh - h) // 2, (fw - w) // 2
    return cv2.copyMakeBorder(rgb, top, fh - h - top, left, fw - w - left, cv2.BORDER_CONSTANT,
                              value=background_colour(rgb))


def rescale(rgb: np.ndarray, factor: float) -> np.ndarray:
    h, w = rgb.shape[:2]
    interp = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
    return cv2.resize(rgb, (max(8, round(w * factor)), max(8, round(h * factor))), interpolation=interp)


def eyepiece(rgb: np.ndarray, radius: float = 0.45, edge: float = 0.04, fall: float = 0.3) -> np.ndarray:
    """``rgb`` photographed through an eyepiece (a phone held to it, a camera behind a field stop): black outside a
    round field of view ``radius`` x the shorter side across from the centre, a soft edge ``edge`` wide, and the
    field dimmer toward its rim by up to ``fall``."""
    h, w = rgb.shape[:2]
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot(xx - w / 2, yy - h / 2) / min(h, w)
    gain = np.clip((radius - r) / edge, 0, 1) * (1 - fall * np.minimum(r / radius, 1) ** 2)
    return (rgb.astype(np.float32) * gain[..., None].astype(np.float32)).round().astype(np.uint8)


#: Cells re-framed and classified at a time. A 15 MP frame is about 45 MB, so the whole validation split's
#: frames at once (1,648 cells) would need about 80 GB; a chunk needs about 3 GB.
CHUNK = 64

VARIANTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "native": lambda x: x,
    "tight 0.5 (cell fills the frame)": lambda x: tight(x, 0.5),
    "tight 0.4, as a 100 px crop": lambda x: rescale(tight(x, 0.4), 100 / (0.4 * x.shape[0])),
    "padded 2x (own background)": lambda x: pad_wide(x, 2.0),
    "padded 3x, as a 600 px field": lambda x: pad_wide(x, 3.0, 600),
    "4:3 frame (padded sideways)": lambda x: side_pad(x, 4 / 3),
    "16:9 camera frame, 3x the crop's height": lambda x: camera_frame(x, 3.0),
    "camera 6.7 MP: 16:9 frame 5.35x the crop's height": lambda x: camera_frame(x, 5.35),
    "camera 15 MP: 16:9 frame 8x the crop's height": lambda x: camera_frame(x, 8.0),
    "rescaled 0.5x": lambda x: rescale(x, 0.5),
    "rescaled 2x": lambda x: rescale(x, 2.0),
    "eyepiece photo: 600 px field, black outside a disc": lambda x: eyepiece(pad_wide(x, 3.0, 600)),
    "eyepiece photo: 16:9 frame, black outside a disc": lambda x: eyepiece(camera_frame(x, 3.0), radius=0.5),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_val_args(ap, per_class=0, output="benchmarks/results/reframe_accuracy.json")
    ap.add_argument("--band", type=float, nargs=2, metavar=("LOW", "HIGH"), default=None,
                    help="nucleus-fraction band left untouched (default: the model's); to choose it on validation")
    ap.add_argument("--grey", type=float, default=None,
                    help="cells left as they are with a nucleus fraction below this also run re-framed, and the two "
                         "answers are averaged (default: the model's; the band's low end: never)")
    ap.add_argument("--jpeg", type=int, default=None, metavar="QUALITY",
                    help="save every variant as a JPEG of this quality and read it as `wbc classify` reads a file "
                         "(a large JPEG decoded at a reduced size); default: the decoded pixels as they are")
    ap.add_argument("--only", nargs="+", default=None, metavar="WORD",
                    help="score only the variants whose name contains one of these words (and native)")
    args = ap.parse_args(argv)

    from _provenance import provenance

    from wbc.io import atomic_write_json
    from wbc.labels import WBC5, restrict_probabilities
    from wbc.reframe import FramingStats, framing_stats_of

    val = load_val_cells(args)  # exits with a one-line error when the split has no cells
    clf, samples, images, y, wbc = val.clf, val.samples, val.images, val.y, val.wbc
    y5 = y[wbc]
    res: dict = {"model": clf.model_id, "split": args.split, "n": len(samples), "n_wbc5": int(wbc.sum()),
                 "jpeg_quality": args.jpeg, "variants": {}, "provenance": provenance(__file__, argv, clf.model_id)}
    stats = framing_stats_of(clf)  # the model's framing, as `wbc classify` uses it
    if args.band:
        stats = FramingStats(stats.target, *args.band, grey=stats.grey)
    if args.grey is not None:
        stats = FramingStats(stats.target, stats.low, stats.high, args.grey)
    res["band"] = [stats.low, stats.high]
    res["grey"] = stats.grey

    chosen = {k: f for k, f in VARIANTS.items() if k == "native" or not args.only or any(w in k for w in args.only)}
    modes = (("no_reframe", False), ("reframe", stats))
    for name, fn in chosen.items():
        sides: list[int] = []
        answered: dict[str, list[np.ndarray]] = {mode: [] for mode, _ in modes}
        networks: dict[str, list[np.ndarray]] = {mode: [] for mode, _ in modes}
        seconds = dict.fromkeys(answered, 0.0)
        for i in range(0, len(images), CHUNK):  # a chunk's frames at a time: never the whole split's
            shown = [fn(im) for im in images[i : i + CHUNK]]
            sides += [max(s.shape[:2]) for s in shown]
            for mode, framing in modes:
                t0 = time.perf_counter()
                probs, network = classify_shown(clf, shown, framing, args.jpeg)
                seconds[mode] += time.perf_counter() - t0
                answered[mode].append(probs)
                networks[mode].append(network)
            del shown
        row: dict = {"side_px": int(np.median(sides))}
        for mode, _ in modes:
            probs, network = np.concatenate(answered[mode]), np.concatenate(networks[mode])
            p5, _ = restrict_probabilities(network[wbc], clf.classes, WBC5)  # five-part: no evidence to weigh
            row[mode] = {"accuracy": float((probs.argmax(1) == y).mean()),
                         "accuracy_5part": float((p5.argmax(1) == y5).mean()),
                         "ms_per_cell": seconds[mode] / len(images) * 1e3}
        res["variants"][name] = row
        print(f"{name:<34} {row['side_px']:>5}px  no reframe {row['no_reframe']['accuracy']:.4f}"
              f"  reframe {row['reframe']['accuracy']:.4f}  (5-part {row['no_reframe']['accuracy_5part']:.4f} / "
              f"{row['reframe']['accuracy_5part']:.4f})", flush=True)
    native = res["variants"]["native"]["no_reframe"]["accuracy"]
    worst = min(v["reframe"]["accuracy"] for v in res["variants"].values())
    res["native_accuracy"] = native
    res["worst_reframed_accuracy"] = worst
    res["max_drop_points"] = 100 * (native - worst)
    atomic_write_json(args.output, res)
    print(f"native {native:.4f}; worst variant with re-framing {worst:.4f} ({res['max_drop_points']:.2f} points) "
          f"-> {args.output}")
    return 0


if __name__ == "__main__":
    from _run import run

    run(main)
