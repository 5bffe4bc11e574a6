"""The PBC validation cells the framing and shift benchmarks score: one loader, so both see the same cells."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]  # the repository: relative defaults are resolved against it


@dataclass
class ValCells:
    """The model, the chosen cells with their images, class indices ``y`` and which cells are WBC5 types."""

    clf: Any
    samples: list
    images: list[np.ndarray]
    y: np.ndarray
    wbc: np.ndarray


def add_val_args(ap: argparse.ArgumentParser, per_class: int, output: str) -> None:
    """The options :func:`load_val_cells` reads: model, manifest and split, cells per class, threads, data root;
    and the JSON to write (default ``output``)."""
    ap.add_argument("--model", default=None, help="classifier ONNX (default: the shipped model)")
    ap.add_argument("--manifest", type=Path, default=ROOT / "runs/default/manifest.csv")
    ap.add_argument("--split", default="val", help="manifest split (val: for choosing; never tune on test)")
    ap.add_argument("--per-class", type=int, default=per_class, help="cells per class at most (0: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--output", type=Path, default=ROOT / output)
    ap.add_argument("--data", type=Path, default=None, help="data root (default: $WBC_DATA_DIR or ../shared/data)")


def load_val_cells(args: argparse.Namespace) -> ValCells:
    """Load the model and the manifest's split cells (at most ``--per-class`` a class, seed 0; 0: all), as the
    options of :func:`add_val_args` say.

    Exits with status 1 and a one-line error on stderr naming the manifest when it cannot be read or the split has
    no cells.
    """
    manifest, split, per_class = args.manifest, args.split, args.per_class
    from wbc.data import read_manifest
    from wbc.errors import WbcError
    from wbc.io import read_image
    from wbc.labels import WBC5
    from wbc.model import load_model
    from wbc.paths import data_root

    cv2.setNumThreads(1)
    clf = load_model(args.model, threads=args.threads)
    try:
        samples = [s for s in read_manifest(manifest, root=data_root(args.data)) if s.split == split]
    except WbcError as e:
        raise SystemExit(f"error: {e}") from None
    if per_class:
        rng = np.random.default_rng(0)
        by: dict[str, list] = {}
        for s in samples:
            by.setdefault(s.label, []).append(s)
        samples = [s for lab in sorted(by) for s in [by[lab][i] for i in sorted(rng.permutation(len(by[lab]))
                                                                               [:per_class])]]
    if not samples:
        raise SystemExit(f"error: {manifest}: no {split} cells")
    images = [read_image(s.path) for s in samples]
    y = np.array([clf.classes.index(s.label) for s in samples])
    wbc = np.isin(np.array([s.label for s in samples]), WBC5)
    return ValCells(clf, samples, images, y, wbc)


def classify_shown(
    clf: Any, images: list[np.ndarray], framing: Any, jpeg: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (N, C) for decoded single-cell images exactly as `wbc classify` computes them: each image
    prepared by :func:`wbc.classify.prepare_cell_views` (``framing``: the model's
    :class:`~wbc.reframe.FramingStats`, or False as ``--no-reframe``), an ambiguously framed cell averaged
    over both framings, the model's own views and the cytoplasm's colour (:func:`wbc.classify.predict_cells`,
    :func:`wbc.cytoplasm.single_cell_evidence`). ``jpeg``: each image saved as
    a JPEG of this quality first and read as `wbc classify` reads such a file (:func:`wbc.classify.decode_cell_views`:
    a large one decoded at a reduced size). Returned with the network's own (the same logits, without the
    cytoplasm's evidence), which the benchmarks restrict to the five WBC types for their five-part figure:
    `--classes 5part` leaves the cytoplasm no erythroblast to weigh against."""
    import cv2

    from wbc.classify import decode_cell_views, predict_cells, prepare_cell_views
    from wbc.cytoplasm import single_cell_evidence
    from wbc.model import class_probabilities
    from wbc.reframe import FramingStats

    size = clf.info.input_size

    def prepare(im: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if jpeg is None:
            return prepare_cell_views(im, size, framing)
        _, data = cv2.imencode(".jpg", np.ascontiguousarray(im[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, jpeg])
        return decode_cell_views(data.tobytes(), "cell.jpg", size, framing)

    prepared = [prepare(im) for im in images]
    answered: list[np.ndarray] = []
    network: list[np.ndarray] = []
    for i in range(0, len(prepared), 128):
        part = prepared[i : i + 128]
        second = {k: z for k, (_, z) in enumerate(part) if z is not None}
        cells = np.stack([c for c, _ in part])
        preds, raw = predict_cells(clf, cells, second=second, adjust=single_cell_evidence(cells, clf),
                                   refocus=framing if isinstance(framing, FramingStats) else None)
        answered.append(np.array([[p.probabilities[c] for c in clf.classes] for p in preds], np.float32))
        network.append(class_probabilities(raw["logits"], clf.info))
    return np.concatenate(answered), np.concatenate(network)
