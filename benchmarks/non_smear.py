"""Which images `wbc analyze` says do not look like a blood-smear field (:func:`wbc.smear_look.not_a_smear`).

Every image goes the way :func:`wbc.analyze.analyze_image` takes it: refused when it is no photo
(:func:`wbc.preprocess.not_a_photo`) or grey (:func:`wbc.smear_look.check_colour`), else measured within any canvas
(:func:`wbc.smear_look.smear_look`) and flagged or passed. Counted per set:

* smear fields, tuned on (none may be flagged): BCCD train and val, TXL-PBC train and val (less the fields that show
  a BCCD test image), BCCD train+val fields cut to the part beside their WBCs (a field without a WBC), PBC train and
  val platelet images (the PBC lab's fields without a WBC: pale red cells on peach glass, since wbc 0.32.0), BCCD
  mosaics (2x2 to 12x12 half-size fields and 4x4 to 16x16 quarter-size ones: wide low-magnification frames), and
  every third BCCD val field and every eighth TXL-PBC val field under each of the changes :func:`_shifts` lists
  (stain, lamp, exposure, tone curve, noise, JPEG, blur, scale, scale bar, eyepiece, canvas);
* smear fields held out, reported after the choice: BCCD test, TXL-PBC test, the TXL-PBC fields that show a BCCD
  test image and PBC test platelet images;
* smear fields reported apart: TXL-PBC train+val fields (less those showing a BCCD test image) cut to the part beside
  their WBCs, at least 160 px each way (fields without a WBC from its BCCD and BCD labs; PBC-origin fields have no
  such part): parts of the palest BCD-lab fields are flagged;
* not smears (all should be told): scikit-image's sample images (offline: photographs, a scanned page, text, a fundus
  photograph, a tissue section, the Hubble deep field, a logo, ...), their quarters, the colour ones enlarged 3x,
  and synthetic ones (blank glass with vignetting, dust, noise, plain and noisy colours, printed text in five inks,
  a colour gradient, a checkerboard);
* beyond that: grey photographs tinted with a stain's purple (duotones), reported apart.

It also times the check on BCCD val fields against the whole of `analyze_image` there (default model and segmenter).

    python benchmarks/non_smear.py --output benchmarks/results/non_smear.json
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parents[1]  # the repository: relative defaults are resolved against it

Image = tuple[str, np.ndarray]


def noisy(rgb: np.ndarray, sd: float, seed: int = 0) -> np.ndarray:
    """Camera noise: each sample plus a normal deviate of ``sd`` levels."""
    noise = np.random.default_rng(seed).normal(0.0, sd, rgb.shape)
    return np.clip(rgb.astype(np.float32) + noise, 0, 255).round().astype(np.uint8)


def _shifts() -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """The changes a smear field must withstand unflagged (most from ``benchmarks/shift_suite.py``)."""
    import shift_suite as s
    from reframe_accuracy import eyepiece, rescale

    return {
        "stain: haematoxylin x1.5, eosin x0.6": lambda x: s.stain(x, 1.5, 0.6),
        "stain: haematoxylin x0.6, eosin x1.4": lambda x: s.stain(x, 0.6, 1.4),
        "stain: other stain vectors": lambda x: s.stain(x, 1.0, 1.0, s._OTHER_VECTORS),
        "hue +30 deg": lambda x: s.hue(x, 30),
        "hue -30 deg": lambda x: s.hue(x, -30),
        "lamp: warm halogen": lambda x: s.lamp(x, (1.0, 0.88, 0.68)),
        "lamp: cool LED": lambda x: s.lamp(x, (0.85, 0.95, 1.0)),
        "exposure x0.6": lambda x: s.lamp(x, (0.6, 0.6, 0.6)),
        "exposure x0.4": lambda x: s.lamp(x, (0.4, 0.4, 0.4)),
        "gamma 1.6": lambda x: s.gamma(x, 1.6),
        "gamma 0.6": lambda x: s.gamma(x, 0.6),
        "noise sd 4": lambda x: noisy(x, 4),
        "noise sd 8": lambda x: noisy(x, 8),
        "JPEG quality 20": lambda x: s.jpeg(x, 20),
        "blur sigma 3 px": lambda x: s.blur(x, 3.0),
        "resolution 0.25x": lambda x: s.lowres(x, 0.25),
        "scale 0.3x": lambda x: rescale(x, 0.3),
        "scale 2x": lambda x: rescale(x, 2.0),
        "scale 3x, noise sd 6": lambda x: noisy(rescale(x, 3.0), 6),
        "scale bar and label burnt in": s.scale_bar,
        "eyepiece photo": lambda x: eyepiece(x, 0.58),
        "eyepiece photo with stray light (black at 30)": lambda x: s.stray_light(eyepiece(x, 0.58), 30),
        "canvas: white page (2x)": lambda x: s.canvas(x, (255, 255, 255)),
        "canvas: grey padding (2x)": lambda x: s.canvas(x, (128, 128, 128)),
    }


def bccd_split(root: Path, split: str) -> list[tuple[str, Path]]:
    ids = (root / "bccd" / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
    return [(f"bccd/{split}/{i}", root / "bccd" / "JPEGImages" / f"{i}.jpg") for i in ids]


def txl_fields(root: Path, splits: Iterable[str], bccd_test: bool | None) -> list[tuple[str, Path]]:
    """TXL-PBC fields of ``splits``: those showing a BCCD test image only (``bccd_test`` True), none of them (False),
    or all (None)."""
    test = set((root / "bccd" / "ImageSets" / "Main" / "test.txt").read_text().split())
    out = []
    with open(root / "txl_pbc" / "sources.csv", newline="") as fh:
        for r in csv.DictReader(fh):
            shows_test = r["bccd_image"] in test
            if r["split"] in splits and (bccd_test is None or shows_test == bccd_test):
                out.append((f"txl/{r['split']}/{r['origin']}/{r['stem']}",
                            root / "txl_pbc" / "images" / r["split"] / f"{r['stem']}.jpg"))
    return out


def read_all(items: Iterable[tuple[str, Path]]) -> Iterator[Image]:
    from wbc.io import read_image

    for name, path in items:
        yield name, read_image(path)


def _beside(rgb: np.ndarray, boxes: list[tuple[float, float, float, float]]) -> np.ndarray | None:
    """The field's largest part left, right, above or below all ``boxes`` (x0, y0, x1, y1), at least 160 px each way;
    None when there is no box or no such part."""
    if not boxes:
        return None
    h, w = rgb.shape[:2]
    x0, y0 = int(min(b[0] for b in boxes)), int(min(b[1] for b in boxes))
    x1, y1 = int(max(b[2] for b in boxes)) + 1, int(max(b[3] for b in boxes)) + 1
    parts = [p for p in [(0, 0, x0, h), (x1, 0, w, h), (0, 0, w, y0), (0, y1, w, h)]
             if p[2] - p[0] >= 160 and p[3] - p[1] >= 160]
    if not parts:
        return None
    a, b, c, d = max(parts, key=lambda p: (p[2] - p[0]) * (p[3] - p[1]))
    return np.ascontiguousarray(rgb[b:d, a:c])


def beside_wbcs(root: Path, items: Iterable[tuple[str, Path]]) -> Iterator[Image]:
    """Each BCCD field's largest part beside all its WBC boxes (:func:`_beside`)."""
    from wbc.evaluate.smears import read_voc_boxes

    for name, rgb in read_all(items):
        part = _beside(rgb, read_voc_boxes(root / "bccd" / "Annotations" / f"{name.rsplit('/', 1)[1]}.xml"))
        if part is not None:
            yield f"{name} beside its WBCs", part


def txl_beside_wbcs(root: Path, items: Iterable[tuple[str, Path]]) -> Iterator[Image]:
    """Each TXL-PBC field's largest part beside all its WBC boxes (YOLO labels, class 0; :func:`_beside`)."""
    for name, rgb in read_all(items):
        split, stem = name.split("/")[1], name.rsplit("/", 1)[1]
        h, w = rgb.shape[:2]
        boxes = []
        for line in (root / "txl_pbc" / "labels" / split / f"{stem}.txt").read_text().splitlines():
            if line.split()[:1] == ["0"]:
                xc, yc, bw, bh = (float(v) for v in line.split()[1:5])
                boxes.append(((xc - bw / 2) * w, (yc - bh / 2) * h, (xc + bw / 2) * w, (yc + bh / 2) * h))
        part = _beside(rgb, boxes)
        if part is not None:
            yield f"{name} beside its WBCs", part


def pbc_platelets(root: Path, splits: Iterable[str]) -> list[tuple[str, Path]]:
    """PBC's platelet images in ``splits`` of the committed manifest: smear fields of the PBC lab without a WBC."""
    from wbc.data import read_manifest

    return [(f"pbc/{s.split}/{s.path.name}", s.path)
            for s in read_manifest(ROOT / "runs" / "default" / "manifest.csv", root=root)
            if s.label == "platelet" and s.split in set(splits)]


def mosaics(items: list[tuple[str, Path]]) -> Iterator[Image]:
    """k x k fields in one image, each at half size (320 x 240, red cells about 40 px: k 2 to 12) or a quarter
    (160 x 120, red cells about 20 px, as with a 20x objective: k 4 to 16)."""
    fields = [rgb for _, rgb in read_all(items[:144])]
    for tile, grids in [((320, 240), (2, 4, 8, 12)), ((160, 120), (4, 8, 16))]:
        w, h = tile
        tiles = [cv2.resize(rgb, tile, interpolation=cv2.INTER_AREA) for rgb in fields]
        for k in grids:
            m = np.zeros((h * k, w * k, 3), np.uint8)
            for i in range(k * k):
                m[h * (i // k) : h * (i // k + 1), w * (i % k) : w * (i % k + 1)] = tiles[i % len(tiles)]
            yield f"mosaic {k}x{k} of BCCD fields at {w}x{h} ({w * k}x{h * k})", m


def shifted(items: list[tuple[str, Path]]) -> Iterator[Image]:
    shifts = _shifts()
    for name, rgb in read_all(items):
        for shift, fn in shifts.items():
            yield f"{name} | {shift}", fn(rgb)


def skimage_images() -> dict[str, np.ndarray]:
    """scikit-image's sample images that ship with it (no download), as 8-bit RGB on white (the logo's alpha)."""
    import skimage.data as sk

    names = ["astronaut", "chelsea", "coffee", "rocket", "colorwheel", "hubble_deep_field", "immunohistochemistry",
             "retina", "logo", "camera", "text", "page", "coins", "moon", "brick", "grass", "gravel", "clock", "cell",
             "checkerboard", "horse", "binary_blobs", "microaneurysms"]
    out: dict[str, np.ndarray] = {}
    for n in [*names, "stereo_motorcycle"]:
        a = getattr(sk, n)()
        a = a[0] if n == "stereo_motorcycle" else a
        a = a.astype(np.uint8) * 255 if a.dtype == bool else a
        if a.ndim == 2:
            a = np.dstack([a] * 3)
        if a.shape[2] == 4:
            alpha = a[..., 3:4].astype(np.float32) / 255.0
            a = (a[..., :3] * alpha + 255.0 * (1 - alpha)).round().astype(np.uint8)
        out[n.replace("stereo_", "")] = np.ascontiguousarray(a)
    return out


def quarters(images: dict[str, np.ndarray]) -> Iterator[Image]:
    for n, a in images.items():
        h, w = a.shape[:2]
        if min(h, w) >= 200:
            for k, (y, x) in enumerate([(0, 0), (0, w // 2), (h // 2, 0), (h // 2, w // 2)]):
                yield f"{n} quarter {k + 1}", np.ascontiguousarray(a[y : y + h // 2, x : x + w // 2])


def enlarged(images: dict[str, np.ndarray]) -> Iterator[Image]:
    for n, a in images.items():
        if a.shape[0] < 700 and np.ptp(a.astype(np.int16), axis=2).max() > 0:  # the colour ones
            yield f"{n} enlarged 3x", cv2.resize(a, None, fx=3, fy=3, interpolation=cv2.INTER_CUBIC)


def synthetic(seed: int = 0) -> Iterator[Image]:
    """Blank glass, dust, noise, colours, printed text, a gradient and a checkerboard, 640 x 480."""
    rng = np.random.default_rng(seed)
    h, w = 480, 640
    yy, xx = np.mgrid[:h, :w]
    vignette = 1 - 0.25 * (np.hypot(xx - w / 2, yy - h / 2) / np.hypot(w / 2, h / 2)) ** 2

    def u8(a: np.ndarray) -> np.ndarray:
        return np.clip(a, 0, 255).round().astype(np.uint8)

    for k, tint in enumerate([(225, 222, 215), (235, 230, 238), (200, 205, 215), (240, 236, 225)]):
        glass = u8(np.float32(tint) * vignette[..., None] + rng.normal(0, 2.5, (h, w, 3)))
        yield f"blank glass {k + 1}", glass
        for _ in range(15):
            cv2.circle(glass, (int(rng.integers(0, w)), int(rng.integers(0, h))), int(rng.integers(1, 4)),
                       (120, 120, 120), -1)
        yield f"blank glass {k + 1} with dust", cv2.GaussianBlur(glass, (0, 0), 1.0)
    yield "uniform noise", rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    yield "grey-centred colour noise", u8(rng.normal(128, 40, (h, w, 3)))
    yield "smoothed noise", cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 4)
    yield "noise blobs", cv2.resize(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), (w, h),
                                    interpolation=cv2.INTER_CUBIC)
    colours = {"pink": (230, 170, 190), "purple": (150, 100, 190), "red": (200, 30, 40), "green": (40, 160, 60),
               "blue": (40, 80, 200), "white": (250, 250, 250), "black": (5, 5, 5), "beige": (240, 225, 200)}
    for name, c in colours.items():
        yield f"plain {name}", np.full((h, w, 3), c, np.uint8)
        yield f"{name}, noisy", u8(np.float32(c) + rng.normal(0, 4, (h, w, 3)))
    words = ["The", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "0123456789", "Haematology",
             "report"]
    inks = {"black": ((20, 20, 20), (250, 250, 248)), "blue": ((30, 40, 160), (250, 250, 248)),
            "red": ((180, 20, 30), (250, 248, 240)), "purple": ((110, 40, 140), (252, 250, 250)),
            "black on cream": ((30, 30, 30), (245, 235, 210))}
    for ink_name, (ink, paper) in inks.items():
        page = np.full((h, w, 3), paper, np.uint8)
        for y in range(30, h - 10, 26):
            cv2.putText(page, " ".join(rng.choice(words, 6)), (10, y), cv2.FONT_HERSHEY_SIMPLEX, 0.6, ink, 1,
                        cv2.LINE_AA)
        yield f"text, {ink_name} ink", u8(page.astype(np.float32) + rng.normal(0, 2, page.shape))
    gradient = np.zeros((h, w, 3), np.uint8)
    gradient[..., 0], gradient[..., 1], gradient[..., 2] = xx * 255 // w, yy * 255 // h, 128
    yield "colour gradient", gradient
    squares = (((xx // 40) + (yy // 40)) % 2).astype(bool)
    yield "pink and purple checkerboard", np.where(squares[..., None], np.uint8([230, 180, 200]),
                                                   np.uint8([120, 60, 150]))


def duotone(rgb: np.ndarray) -> np.ndarray:
    """A photograph in shades of a stain's purple (dark) to white."""
    g = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)[..., None] / 255.0
    return (np.float32([90, 40, 140]) * (1 - g) + np.float32([245, 235, 240]) * g).astype(np.uint8)


def judge(rgb: np.ndarray) -> dict[str, Any]:
    """What `wbc analyze` does with ``rgb`` before segmenting: ``refused`` (its message), or the field's
    :class:`wbc.smear_look.SmearLook` and ``flagged`` (:func:`wbc.smear_look.not_a_smear`'s reason, or None)."""
    from dataclasses import asdict

    from wbc.analyze import check_field, within_canvas
    from wbc.errors import WbcError
    from wbc.smear_look import check_colour, not_a_smear, smear_look

    try:
        check_field(rgb, "image")
        field, _ = within_canvas(rgb)
        if field is not rgb:
            check_field(field, "image")
        check_colour(field, "image")
    except WbcError as exc:
        return {"refused": str(exc).split(": ", 1)[-1]}
    look = smear_look(field)
    return {**{k: round(v, 4) for k, v in asdict(look).items()}, "flagged": not_a_smear(field, look)}


def tally(images: Iterable[Image], smears: bool, every: bool = False) -> dict[str, Any]:
    """Refused, flagged and passed counts of ``images``, each measure's range, and the images that were told
    wrongly (smears flagged or refused) or not at all (other images passed); ``every``: each image's outcome too."""
    n, refused, flagged = 0, 0, 0
    wrong: list[dict[str, Any]] = []
    each: list[dict[str, Any]] = []
    ranges: dict[str, list[float]] = {}
    for name, rgb in images:
        n += 1
        r = judge(rgb)
        if "refused" in r:
            refused += 1
        elif r["flagged"]:
            flagged += 1
        for k in ("stained", "dark", "off_stain", "glass", "smooth", "solid"):
            if k in r:
                lo, hi = ranges.get(k, [r[k], r[k]])
                ranges[k] = [min(lo, r[k]), max(hi, r[k])]
        told = "refused" in r or bool(r.get("flagged"))
        if told == smears:
            wrong.append({"image": name, **r})
        if every:
            each.append({"image": name, **r})
    out: dict[str, Any] = {"n": n, "refused": refused, "flagged": flagged, "passed": n - refused - flagged,
                           "ranges": ranges}
    out["flagged_or_refused" if smears else "passed_untold"] = wrong
    if every:
        out["images"] = each
    return out


def timing(root: Path, n: int = 20, repeats: int = 3) -> dict[str, Any]:
    """Milliseconds a field for :func:`wbc.smear_look.smear_look` and for all of :func:`wbc.analyze.analyze_image`
    (which includes it; default model and segmenter, two threads) on ``n`` BCCD val fields: the two interleaved field by
    field, each ``repeats`` times, so that a busy machine slows both alike; the median over fields of each field's
    fastest run, wall-clock and CPU (all threads)."""
    import wbc
    from wbc.analyze import analyze_image
    from wbc.smear_look import smear_look

    fields = [rgb for _, rgb in read_all(bccd_split(root, "val")[:n])]
    clf, seg = wbc.load_model(threads=2), wbc.load_segmenter(threads=2)
    analyze_image(fields[0], clf, seg)  # sessions warm

    def best(fn: Callable[[], Any]) -> tuple[float, float]:
        runs = []
        for _ in range(repeats):
            w, c = time.perf_counter(), time.process_time()
            fn()
            runs.append((time.perf_counter() - w, time.process_time() - c))
        return min(r[0] for r in runs) * 1000, min(r[1] for r in runs) * 1000

    times = [(best(lambda rgb=rgb: analyze_image(rgb, clf, seg)), best(lambda rgb=rgb: smear_look(rgb)))
             for rgb in fields]
    out: dict[str, Any] = {"fields": n, "repeats": repeats}
    for clock, i in (("wall", 0), ("cpu", 1)):
        a = float(np.median([t[0][i] for t in times]))
        lo = float(np.median([t[1][i] for t in times]))
        out[clock] = {"analyze_image_ms": round(a, 1), "smear_look_ms": round(lo, 2), "share": round(lo / a, 4)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=None, help="data root (default: $WBC_DATA_DIR or ../shared/data)")
    ap.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/non_smear.json")
    ap.add_argument("--no-timing", action="store_true", help="leave out the timing against analyze_image")
    ap.add_argument("--every", action="store_true", help="list every smear field's measures too (not only the "
                                                          "other images'), to choose thresholds on")
    args = ap.parse_args(argv)

    from _provenance import provenance

    from wbc import smear_look
    from wbc.io import atomic_write_json
    from wbc.paths import data_root

    root = args.data or data_root()
    if not (root / "bccd" / "JPEGImages").is_dir():
        raise SystemExit(f"error: {root}: no BCCD fields (set --data or $WBC_DATA_DIR)")
    trainval = bccd_split(root, "train") + bccd_split(root, "val")
    shift_fields = bccd_split(root, "val")[::3] + txl_fields(root, ["val"], False)[::8]
    nat = skimage_images()
    tuned: dict[str, Callable[[], Iterable[Image]]] = {
        "BCCD train": lambda: read_all(bccd_split(root, "train")),
        "BCCD val": lambda: read_all(bccd_split(root, "val")),
        "TXL-PBC train+val (less BCCD test images)": lambda: read_all(txl_fields(root, ["train", "val"], False)),
        "BCCD train+val beside their WBCs": lambda: beside_wbcs(root, trainval),
        "PBC train+val platelet images": lambda: read_all(pbc_platelets(root, ["train", "val"])),
        "BCCD mosaics": lambda: mosaics(trainval),
        "BCCD val and TXL-PBC val fields, shifted": lambda: shifted(shift_fields),
    }
    held_out: dict[str, Callable[[], Iterable[Image]]] = {
        "BCCD test": lambda: read_all(bccd_split(root, "test")),
        "TXL-PBC test (less BCCD test images)": lambda: read_all(txl_fields(root, ["test"], False)),
        "TXL-PBC fields showing BCCD test images": lambda: read_all(txl_fields(root, ["train", "val", "test"], True)),
        "PBC test platelet images": lambda: read_all(pbc_platelets(root, ["test"])),
    }
    apart: dict[str, Callable[[], Iterable[Image]]] = {
        "TXL-PBC train+val (less BCCD test images) beside their WBCs":
            lambda: txl_beside_wbcs(root, txl_fields(root, ["train", "val"], False)),
    }
    others: dict[str, Callable[[], Iterable[Image]]] = {
        "scikit-image sample images": lambda: nat.items(),
        "their quarters": lambda: quarters(nat),
        "the colour ones enlarged 3x": lambda: enlarged(nat),
        "synthetic non-smears": synthetic,
    }
    res: dict[str, Any] = {
        "thresholds": {k: getattr(smear_look, k) for k in ("MIN_STAINED", "MAX_DARK", "MAX_OFF_STAIN", "MIN_GLASS",
                                                          "MIN_SMOOTH", "MIN_SOLID")},
        "smears_tuned": {}, "smears_held_out": {}, "smears_apart": {}, "not_smears": {}, "beyond": {},
        "provenance": provenance(__file__, argv)}
    for group, sets, smears in [("smears_tuned", tuned, True), ("smears_held_out", held_out, True),
                                ("smears_apart", apart, True), ("not_smears", others, False)]:
        for name, make in sets.items():
            res[group][name] = t = tally(make(), smears, every=not smears or (args.every and group == "smears_tuned"))
            print(f"{name}: {t['n']} images, {t['refused']} refused, {t['flagged']} flagged, {t['passed']} passed",
                  flush=True)
    res["beyond"]["grey photographs in a stain's purple (duotones)"] = tally(
        ((f"{n} in purple", duotone(nat[n])) for n in ["camera", "astronaut", "chelsea", "coins", "text", "page"]),
        False, every=True)
    for group in ("smears_tuned", "smears_held_out", "smears_apart"):
        res[f"{group}_false"] = sum(t["n"] - t["passed"] for t in res[group].values())
        res[f"{group}_n"] = sum(t["n"] for t in res[group].values())
    told = sum(t["refused"] + t["flagged"] for t in res["not_smears"].values())
    res["not_smears_n"] = n_other = sum(t["n"] for t in res["not_smears"].values())
    res["not_smears_told"] = told
    res["not_smears_told_rate"] = round(told / n_other, 4)
    print(f"smears tuned on: {res['smears_tuned_false']} of {res['smears_tuned_n']} flagged or refused; held out: "
          f"{res['smears_held_out_false']} of {res['smears_held_out_n']}; apart: {res['smears_apart_false']} of "
          f"{res['smears_apart_n']}; other images told: {told} of {n_other}")
    if not args.no_timing:
        res["timing"] = timing(root)
        print(res["timing"])
    atomic_write_json(args.output, res)
    return 0


if __name__ == "__main__":
    from _run import run

    run(main)
