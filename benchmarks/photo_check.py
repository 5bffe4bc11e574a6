"""Which images `wbc` takes for photos of stained cells (:func:`wbc.preprocess.not_a_photo`), on everything here.

A lab's folders often hold a dataset's masks, label maps or drawings beside its photos (BCCD ships a nucleus and
cytoplasm mask per field in ``bccd/masks/``). `wbc classify` and `wbc analyze` refuse those; this counts how many
images of each kind are refused: every PBC cell (decoded as `wbc classify` decodes it), BCCD's and TXL-PBC's fields,
BCCD's masks, the PBC validation cells under each shift of ``benchmarks/shift_suite.py`` and pasted onto white
pages 2-8 times their size, and any ``--folder`` given (a class-per-folder tree of cells). It also times the check.

    python benchmarks/photo_check.py --folder /tmp/bccd_tight_trainval --output benchmarks/results/photo_check.json
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parents[1]  # the repository: relative defaults are resolved against it


def refused(images: Iterable[np.ndarray]) -> dict:
    """How many of ``images`` :func:`wbc.preprocess.not_a_photo` refuses, with the first few reasons."""
    from wbc.preprocess import not_a_photo

    n, why = 0, []
    for im in images:
        n += 1
        if reason := not_a_photo(im):
            why.append(reason)
    return {"n": n, "refused": len(why), "reasons": sorted(set(why))[:5]}


def readable(paths: Iterable[Path], min_size: int | None = None) -> Iterable[np.ndarray]:
    """The images among ``paths`` that decode (a broken file is not what this counts)."""
    from wbc.errors import WbcError
    from wbc.io import read_image

    for p in paths:
        try:
            yield read_image(p, min_size=min_size)
        except WbcError:
            continue


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=None, help="data root (default: $WBC_DATA_DIR or ../shared/data)")
    ap.add_argument("--folder", type=Path, action="append", default=[], help="more cell images (repeatable)")
    ap.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/photo_check.json")
    args = ap.parse_args(argv)

    from _provenance import provenance
    from shift_suite import SHIFTS, canvas

    from wbc.io import atomic_write_json, iter_image_paths
    from wbc.paths import data_root
    from wbc.preprocess import not_a_photo

    root = args.data or data_root()
    pbc = sorted((root / "pbc").glob("*/*.jpg"))
    if not pbc:
        raise SystemExit(f"error: {root / 'pbc'}: no PBC images (set --data or $WBC_DATA_DIR)")
    res: dict = {"sets": {}, "provenance": provenance(__file__, argv)}
    sets = {
        "PBC cells, all, decoded as `wbc classify` decodes them": (pbc, 160),
        "BCCD fields": (sorted((root / "bccd" / "JPEGImages").glob("*.jpg")), None),
        "TXL-PBC fields (three sources)": (sorted((root / "txl_pbc" / "images").glob("*/*.jpg")), None),
        "BCCD nucleus/cytoplasm masks": (sorted((root / "bccd" / "masks").glob("*.png")), None),
    }
    sets.update({f"--folder {f}": (list(iter_image_paths([f])), None) for f in args.folder})
    for name, (paths, min_size) in sets.items():
        res["sets"][name] = refused(readable(paths, min_size))
        print(name, res["sets"][name], flush=True)
    val = list(readable(pbc[::34][:320]))  # 320 cells over every class, as the shift suite's size
    for name, fn in SHIFTS.items():
        res["sets"][f"shift: {name}"] = refused(fn(im) for im in val)
    for factor in (2, 3, 5, 8):
        res["sets"][f"pasted onto a white page, {factor}x"] = refused(canvas(im, (255, 255, 255), factor)
                                                                      for im in val)
    cells = list(readable(pbc[:1000], 160))
    t0 = time.perf_counter()
    for im in cells:
        not_a_photo(im)
    res["ms_per_pbc_cell"] = (time.perf_counter() - t0) * 1000 / len(cells)
    photos = [v for k, v in res["sets"].items() if "masks" not in k]
    res["photos_refused"] = int(sum(v["refused"] for v in photos))
    res["photos"] = int(sum(v["n"] for v in photos))
    print(f"photos refused: {res['photos_refused']} of {res['photos']}; "
          f"{res['ms_per_pbc_cell']:.3f} ms a PBC cell")
    atomic_write_json(args.output, res)
    return 0


if __name__ == "__main__":
    from _run import run

    run(main)
