"""Fitting the out-of-distribution statistics of :mod:`wbc.ood` for a trained model, from its run's manifest.

Apart from :mod:`wbc.ood` because fitting runs the classifier (:mod:`wbc.classify` reads the cells), while
:mod:`wbc.classify` itself uses :mod:`wbc.ood` to flag predictions: imports point down, never back up.
``wbc ood fit`` and ``wbc quantize`` call :func:`fit_from_manifest`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wbc.classify import load_cells
from wbc.errors import WbcError
from wbc.ood import DEFAULT_PERCENTILE, colour_reference, fit_ood
from wbc.protocols import ClassifierLike


def embed_samples(
    classifier: ClassifierLike, paths: Sequence[Path], batch_size: int = 64, workers: int = 2
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Cells at input size (N,S,S,3) uint8, embeddings (N,D), and the indices of the paths that loaded."""
    cells, ok, _errors = load_cells(paths, classifier.info.input_size, workers, batch_size)
    if not ok:
        return cells, np.zeros((0, 1), np.float32), []
    embs = [classifier.run(cells[i : i + batch_size], ("embedding",))["embedding"]
            for i in range(0, len(cells), batch_size)]
    return cells, np.concatenate(embs), ok


def fit_from_manifest(
    model: str | os.PathLike[str], manifest: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None, max_per_class: int = 300,
    percentile: float = DEFAULT_PERCENTILE, data_root: Path | None = None, threads: int = 2, seed: int = 0,
) -> dict[str, Any]:
    """Fit OOD statistics for ``model`` on its run's manifest (train split) with thresholds from val."""
    from wbc.data import cap_per_class, read_manifest
    from wbc.model import load_model, write_model

    clf = load_model(model, threads=threads)
    train = cap_per_class([s for s in read_manifest(manifest, "train", data_root) if s.label in clf.classes],
                 max_per_class, seed)
    val = cap_per_class([s for s in read_manifest(manifest, "val", data_root) if s.label in clf.classes],
               max_per_class, seed)
    if not train or not val:
        raise WbcError(f"{manifest}: needs rows in both the train and val splits")
    tc, te, ti = embed_samples(clf, [s.path for s in train], workers=threads)
    vc, ve, _ = embed_samples(clf, [s.path for s in val], workers=threads)
    if len(tc) < 3 or len(vc) < 3:
        raise WbcError(f"{manifest}: too few readable images (train {len(tc)}, val {len(vc)}); "
                       "check --data-root")
    ood = fit_ood(tc, te, [train[i].label for i in ti], vc, ve, clf.classes, percentile)
    info = clf.info
    info.ood = ood
    # merged, not replaced: the model may carry more colour statistics than these (the training cells' cytoplasm
    # colours, scripts/fit_cytoplasm_colours.py), which the cytoplasm evidence reads
    info.colour_reference = {**(info.colour_reference or {}), **colour_reference(tc, seed=seed)}
    write_model(Path(output) if output else clf.path, clf.path.read_bytes(), info)
    return ood
