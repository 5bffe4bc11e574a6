"""Synthetic shift suite: PBC validation cells as other labs would show them (stain, hue, grey, blur, JPEG,
resolution, framing, lamp colour, exposure, tone curve, a 12-bit camera's files, an eyepiece photo (also with stray
light lifting its black), a scale bar,
a canvas around the image), scored through
`wbc classify`'s preprocessing.

Each shift is a fixed, deterministic transform of the original image file (numpy/OpenCV, independent of the
training augmentation code), applied before the cell is prepared exactly as `wbc classify` prepares it
(:func:`wbc.classify.prepare_cell`, re-framing on unless ``--no-reframe``). Reported per shift: accuracy over
the model's classes, and over the five WBC types for the WBC cells (``--classes 5part``).

    python benchmarks/shift_suite.py --model src/wbc/models/default/wbc_classifier.onnx \
        --manifest runs/default/manifest.csv --per-class 60 --output benchmarks/results/shift_suite.json
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _pbc_val import add_val_args, classify_shown, load_val_cells
from reframe_accuracy import eyepiece, pad_wide, rescale, tight

# Haematoxylin / eosin / DAB optical-density vectors (Ruifrok & Johnston 2001), rows.
_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_RGB_FROM_HED[2] = np.cross(_RGB_FROM_HED[0], _RGB_FROM_HED[1])
_RGB_FROM_HED /= np.linalg.norm(_RGB_FROM_HED, axis=1, keepdims=True)
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED)


def _od(rgb: np.ndarray) -> np.ndarray:
    return -np.log(np.maximum(rgb.astype(np.float32), 1.0) / 255.0)


def _rgb(od: np.ndarray) -> np.ndarray:
    return np.clip(np.exp(-np.maximum(od, 0)) * 255.0, 0, 255).round().astype(np.uint8)


def stain(rgb: np.ndarray, h: float, e: float, vec: np.ndarray | None = None) -> np.ndarray:
    """Haematoxylin x ``h``, eosin x ``e`` (optionally re-mixed with other stain vectors ``vec``)."""
    hed = _od(rgb) @ _HED_FROM_RGB
    hed[..., 0] *= h
    hed[..., 1] *= e
    return _rgb(hed @ (vec if vec is not None else _RGB_FROM_HED))


#: Another Romanowsky recipe: bluer haematoxylin, more orange eosin (a May-Gruenwald-Giemsa look).
_OTHER_VECTORS = _RGB_FROM_HED.copy()
_OTHER_VECTORS[0] = np.array([0.75, 0.60, 0.28]) / np.linalg.norm([0.75, 0.60, 0.28])
_OTHER_VECTORS[1] = np.array([0.05, 0.80, 0.60]) / np.linalg.norm([0.05, 0.80, 0.60])


def hue(rgb: np.ndarray, degrees: float) -> np.ndarray:
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + round(degrees / 2)) % 180).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def grey(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)


def blur(rgb: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(rgb, (0, 0), sigma)


def jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    _ok, enc = cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(enc, cv2.IMREAD_COLOR)[:, :, ::-1].copy()


def lowres(rgb: np.ndarray, factor: float) -> np.ndarray:
    h, w = rgb.shape[:2]
    small = cv2.resize(rgb, (round(w * factor), round(h * factor)), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def lamp(rgb: np.ndarray, gains: tuple[float, float, float]) -> np.ndarray:
    """Each channel times its gain (clipped): another lamp's colour (halogen is warm, LED cool) or exposure."""
    return np.clip(rgb.astype(np.float32) * np.float32(gains), 0, 255).round().astype(np.uint8)


def gamma(rgb: np.ndarray, g: float) -> np.ndarray:
    """A camera's other tone curve: every level ``255 * (v / 255) ** g``."""
    return ((np.arange(256) / 255.0) ** g * 255.0).round().astype(np.uint8)[rgb]


def camera_bits(rgb: np.ndarray, bits: int) -> np.ndarray:
    """Saved by a ``bits``-bit scientific camera into a 16-bit PNG (samples 0 to 2**bits - 1) and read back as
    `wbc classify` reads the file (:func:`wbc.io.decode_image`)."""
    from wbc.io import decode_image

    high = (rgb[:, :, ::-1].astype(np.uint32) * (2**bits - 1) // 255).astype(np.uint16)
    return decode_image(cv2.imencode(".png", high)[1].tobytes(), "camera.png")


def scale_bar(rgb: np.ndarray) -> np.ndarray:
    """A black scale bar and its label burnt into the bottom right corner, as published and exported images carry."""
    out = rgb.copy()
    h, w = out.shape[:2]
    cv2.rectangle(out, (round(w * 0.65), round(h * 0.9)), (round(w * 0.92), round(h * 0.93)), (0, 0, 0), -1)
    cv2.putText(out, "10 um", (round(w * 0.68), round(h * 0.87)), cv2.FONT_HERSHEY_SIMPLEX, h / 600, (0, 0, 0), 2)
    return out


def canvas(rgb: np.ndarray, colour: tuple[int, int, int], factor: float = 2.0) -> np.ndarray:
    """The image pasted in the middle of a ``factor`` x larger canvas of one colour: a page, or a dataset's padding."""
    h, w = rgb.shape[:2]
    ph, pw = round(h * (factor - 1) / 2), round(w * (factor - 1) / 2)
    return cv2.copyMakeBorder(rgb, ph, ph, pw, pw, cv2.BORDER_CONSTANT, value=colour)


def stray_light(rgb: np.ndarray, black: float) -> np.ndarray:
    """Stray light (flare, a phone's lifted shadows) added evenly: black becomes ``black``, white stays white."""
    return np.clip(rgb.astype(np.float32) * (1 - black / 255) + black, 0, 255).round().astype(np.uint8)


def other_lab(rgb: np.ndarray) -> np.ndarray:
    """Several shifts at once: another stain recipe, a softer lens, a JPEG camera, the cell filling more."""
    return jpeg(lowres(blur(stain(tight(rgb, 0.7), 1.2, 0.8, _OTHER_VECTORS), 1.5), 0.5), 50)


SHIFTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "none": lambda x: x,
    "stain: haematoxylin x1.5, eosin x0.6": lambda x: stain(x, 1.5, 0.6),
    "stain: haematoxylin x0.6, eosin x1.4": lambda x: stain(x, 0.6, 1.4),
    "stain: other stain vectors": lambda x: stain(x, 1.0, 1.0, _OTHER_VECTORS),
    "hue +30 deg": lambda x: hue(x, 30),
    "hue -30 deg": lambda x: hue(x, -30),
    "hue 180 deg": lambda x: hue(x, 180),
    "grey": grey,
    "blur sigma 3 px (of 360)": lambda x: blur(x, 3.0),
    "JPEG quality 20": lambda x: jpeg(x, 20),
    "resolution 0.25x": lambda x: lowres(x, 0.25),
    "framing: tight (cell fills frame)": lambda x: tight(x, 0.5),
    "framing: 600 px field, small cell": lambda x: pad_wide(x, 3.0, 600),
    "scale 0.5x": lambda x: rescale(x, 0.5),
    "other lab (stain+blur+low-res+JPEG+tight)": other_lab,
    "lamp: warm halogen (R x1, G x0.88, B x0.68)": lambda x: lamp(x, (1.0, 0.88, 0.68)),
    "lamp: cool LED (R x0.85, G x0.95, B x1)": lambda x: lamp(x, (0.85, 0.95, 1.0)),
    "exposure x0.6": lambda x: lamp(x, (0.6, 0.6, 0.6)),
    "gamma 1.6": lambda x: gamma(x, 1.6),
    "12-bit camera, 16-bit PNG": lambda x: camera_bits(x, 12),
    "eyepiece photo (600 px field, black outside a disc)": lambda x: eyepiece(pad_wide(x, 3.0, 600)),
    "eyepiece photo with stray light (its black at 30)": lambda x: stray_light(eyepiece(pad_wide(x, 3.0, 600)), 30),
    "scale bar and label burnt in": scale_bar,
    "canvas: pasted onto a white page (2x)": lambda x: canvas(x, (255, 255, 255)),
    "canvas: padded with grey (2x)": lambda x: canvas(x, (128, 128, 128)),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_val_args(ap, per_class=60, output="benchmarks/results/shift_suite.json")
    ap.add_argument("--no-reframe", action="store_true", help="as `wbc classify --no-reframe`")
    args = ap.parse_args(argv)

    from _provenance import provenance

    from wbc.io import atomic_write_json, atomic_write_text
    from wbc.labels import WBC5, restrict_probabilities
    from wbc.reframe import framing_stats_of

    val = load_val_cells(args)  # exits with a one-line error when the split has no cells
    clf, samples, images, y, wbc = val.clf, val.samples, val.images, val.y, val.wbc
    res: dict = {"model": clf.model_id, "split": args.split, "n": len(samples), "n_wbc5": int(wbc.sum()),
                 "reframe": not args.no_reframe, "shifts": {},
                 "provenance": provenance(__file__, argv, clf.model_id)}
    for name, fn in SHIFTS.items():
        framing = False if args.no_reframe else framing_stats_of(clf)  # as `wbc classify` prepares cells
        probs, network = classify_shown(clf, [fn(im) for im in images], framing)
        p5, _ = restrict_probabilities(network[wbc], clf.classes, WBC5)  # five-part: no evidence to weigh
        res["shifts"][name] = {"accuracy": float((probs.argmax(1) == y).mean()),
                               "accuracy_5part": float((p5.argmax(1) == y[wbc]).mean())}
        print(f"{name:<44} {res['shifts'][name]['accuracy']:.4f}  5-part {res['shifts'][name]['accuracy_5part']:.4f}",
              flush=True)
    shifted = [v for k, v in res["shifts"].items() if k != "none"]
    res["mean_shifted_accuracy"] = float(np.mean([v["accuracy"] for v in shifted]))
    res["mean_shifted_accuracy_5part"] = float(np.mean([v["accuracy_5part"] for v in shifted]))
    print(f"mean over shifts: {res['mean_shifted_accuracy']:.4f}  5-part {res['mean_shifted_accuracy_5part']:.4f}")
    atomic_write_json(args.output, res)
    lines = [f"Shift suite, {clf.model_id}, {res['n']} PBC {args.split} cells ({res['n_wbc5']} of the 5 WBC types), "
             f"re-framing {'on' if res['reframe'] else 'off'}", "", "| shift | accuracy (8 classes) | 5-part |",
             "| --- | ---: | ---: |"]
    lines += [f"| {k} | {v['accuracy']:.3f} | {v['accuracy_5part']:.3f} |" for k, v in res["shifts"].items()]
    lines.append(f"| **mean over shifts** | **{res['mean_shifted_accuracy']:.3f}** | "
                 f"**{res['mean_shifted_accuracy_5part']:.3f}** |")
    atomic_write_text(args.output.with_suffix(".md"), "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    from _run import run

    run(main)
