"""Fitting the out-of-distribution statistics of :mod:`wbc.ood` for a trained model, from its run's manifest.

Apart from :mod:`wbc.ood` because fitting runs the classifier (:mod:`wbc.classify` reads the cells), while
:mod:`wbc.classify` itself uses :mod:`wbc.ood` to flag predictions: imports point down, never back up.
``wbc ood fit`` and ``wbc quantize`` call :func:`fit_from_manifest`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from wbc.classify import load_cells
from wbc.data import Sample
from wbc.errors import WbcError
from wbc.model import ModelInfo
from wbc.ood import DEFAULT_PERCENTILE, check_percentile, colour_reference, fit_ood, min_val_cells
from wbc.protocols import ClassifierLike
from wbc.reframe import FramingStats, framing_stats_of


def embed_samples(
    classifier: ClassifierLike, paths: Sequence[Path], batch_size: int = 64, workers: int = 2,
    reframe: bool | FramingStats = False,
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Cells at input size (N,S,S,3) uint8, embeddings (N,D), and the indices of the paths that loaded;
    ``reframe``: cells framed unlike the training crops re-framed first (:func:`wbc.classify.load_cells`)."""
    cells, ok, _errors = load_cells(paths, classifier.info.input_size, workers, batch_size, reframe)
    if not ok:
        return cells, np.zeros((0, 1), np.float32), []
    embs = [classifier.run(cells[i : i + batch_size], ("embedding",))["embedding"]
            for i in range(0, len(cells), batch_size)]
    return cells, np.concatenate(embs), ok


def model_samples(manifest: str | os.PathLike[str], split: str, classes: Sequence[str],
                  data_root: Path | None = None) -> tuple[list[Sample], list[str]]:
    """The ``split``'s rows of ``manifest`` whose label is one of ``classes``, read as ``wbc evaluate`` reads labels
    (:func:`wbc.labels.canonical_label`: ``Neutrophils`` and ``NRBC`` are the model's ``neutrophil`` and
    ``erythroblast``), and the labels left out, sorted: a class spelled otherwise would have no centre, and its
    every cell would be flagged."""
    from wbc.data import read_manifest
    from wbc.labels import canonical_label

    known = set(classes)
    kept, other = [], set()
    for s in read_manifest(manifest, split, data_root):
        label = s.label if s.label in known else canonical_label(s.label)
        if label in known:
            kept.append(replace(s, label=label))
        else:
            other.add(s.label)
    return kept, sorted(other)


def check_own_split(info: ModelInfo, model: str | os.PathLike[str], manifest: str | os.PathLike[str]) -> None:
    """Refuse ``manifest`` when the model (``info``, at ``model``) records the split it was trained on
    (``extra["split_hash"]``, :func:`wbc.data.split_hash`) and this is another: its val rows may have trained the model,
    and would re-fit its temperature, review threshold, validation metrics and OOD thresholds in-sample (before wbc
    0.36.0 `wbc quantize` and `wbc ood fit` took any manifest: another run's "val" cells, 24 of 30 of which trained the
    model, gave the int8 model its stated val accuracy). A model recording no split (trained before wbc 0.33.0) is not
    checked; an adapted one is refused by `wbc ood fit` and keeps its calibration in `wbc quantize`. The refusal names
    the ``manifest.csv`` beside the model when that holds the recorded split; any other file there (a lab's own, a bad
    one) only leaves the hint generic, never replaces the refusal with an error about itself."""
    from wbc.data import load_dataset, split_hash

    recorded = info.extra.get("split_hash")
    if not isinstance(recorded, str) or not recorded or "adapt" in info.extra:
        return

    def split_of(path: Path) -> str:
        return split_hash(load_dataset(path).samples)

    if split_of(Path(manifest)) != recorded:
        own = Path(model).parent / "manifest.csv"  # a run's model: its own manifest beside it, named when it is
        try:
            mine = own.is_file() and split_of(own) == recorded
        except (WbcError, OSError):  # a user's own manifest.csv there, or a bad one: the refusal stands, unhinted
            mine = False
        hint = own if mine else "the manifest.csv of the run that trained it"
        raise WbcError(f"{manifest}: not the split {model} was trained on (its val rows may have trained it); give "
                       f"{hint}")


def check_not_adapted(info: ModelInfo, model: str | os.PathLike[str]) -> None:
    """Refuse to fit OOD statistics for a model adapted to a lab (`wbc adapt`): its reference is that lab's cells, and
    a run manifest's cells through its adapted network flagged every one of the 40 cells it was adapted on as unlike
    its training images (before wbc 0.36.0). They are fitted on the model it was adapted from, and kept by the
    adaptation (:func:`wbc.ood.add_reference`)."""
    adapt = info.extra.get("adapt")
    if isinstance(adapt, dict):
        base = (adapt.get("base") or {}).get("model_id") or "the model it was adapted from"
        raise WbcError(f"{model}: adapted to a lab's cells by wbc adapt, whose reference for unfamiliar cells is those "
                       f"cells, not a run manifest's: fit OOD statistics on {base} (wbc ood fit --model BASE "
                       "--manifest RUN/manifest.csv) and adapt it again")


def fit_from_manifest(
    model: str | os.PathLike[str], manifest: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None, max_per_class: int = 300,
    percentile: float = DEFAULT_PERCENTILE, data_root: Path | None = None, threads: int = 2, seed: int = 0,
    note: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Fit OOD statistics for ``model`` on its run's manifest (train split) with thresholds from val.

    ``note``: told (one line each) of what makes the flags less trustworthy without stopping the fit: model classes
    without training rows (their cells measured against the other classes' centres, so mostly flagged), labels
    that are no class of the model, and a validation split too small for the percentile.
    """
    from wbc.data import cap_per_class
    from wbc.model import check_model_output, load_model, write_model

    check_percentile(percentile)  # before any work: a bad value fails at once, in one line
    check_model_output(output or model)
    clf = load_model(model, threads=threads)
    check_not_adapted(clf.info, model)
    check_own_split(clf.info, model, manifest)
    if "embedding" not in clf.outputs:
        raise WbcError(f"{clf.path}: the model has no 'embedding' output to fit OOD statistics on")
    (train, unknown), (val, _) = (model_samples(manifest, split, clf.classes, data_root) for split in ("train", "val"))
    if not train or not val:
        which = " and ".join(s for s, rows in (("train", train), ("val", val)) if not rows)
        seen = f" (labels seen: {', '.join(unknown[:8])}{', ...' if len(unknown) > 8 else ''})" if unknown else ""
        raise WbcError(f"{manifest}: no {which} rows of the model's classes{seen}")
    say = note or (lambda _msg: None)
    missing = [c for c in clf.classes if not any(s.label == c for s in train)]
    if missing:
        say(f"{manifest}: no train rows of the model's class(es) {', '.join(missing)}: their cells have no centre "
            "to be measured against and will mostly be flagged as unlike the training cells")
    if unknown:
        say(f"{manifest}: rows labelled {', '.join(unknown)} left out (no class of the model)")
    train, val = cap_per_class(train, max_per_class, seed), cap_per_class(val, max_per_class, seed)
    # the views `wbc classify` scores: cells framed unlike the training crops re-framed (fitted on the crops as loaded,
    # before wbc 0.30.0, `wbc classify` flagged 12 of PBC's 1,648 validation cells by appearance; 7 not re-framed)
    framing = framing_stats_of(clf)
    tc, te, ti = embed_samples(clf, [s.path for s in train], workers=threads, reframe=framing)
    vc, ve, _ = embed_samples(clf, [s.path for s in val], workers=threads, reframe=framing)
    if len(tc) < 3 or len(vc) < 3:
        raise WbcError(f"{manifest}: too few readable images (train {len(tc)}, val {len(vc)}); "
                       "check --data-root")
    if (few := min_val_cells(percentile)) > len(vc):
        say(f"{manifest}: only {len(vc)} validation cells: a {percentile:g}th-percentile threshold needs {few} or "
            f"more; it is in effect their largest score, so about 1 in {len(vc) + 1} of the training lab's own cells "
            "will be flagged")
    try:
        ood = fit_ood(tc, te, [train[i].label for i in ti], vc, ve, clf.classes, percentile)
    except WbcError as exc:
        raise WbcError(f"{manifest}: {exc}") from None
    info = clf.info
    info.ood = ood
    # merged, not replaced: the model may carry more colour statistics than these (the training cells' cytoplasm
    # colours, scripts/fit_cytoplasm_colours.py), which the cytoplasm evidence reads. From the crops as they are
    # (not re-framed): the red cells around them are what `wbc analyze` calibrates a field to
    plain = load_cells([train[i].path for i in ti], clf.info.input_size, threads)[0]
    info.colour_reference = {**(info.colour_reference or {}),
                             **colour_reference(plain if len(plain) == len(tc) else tc, seed=seed)}
    write_model(Path(output) if output else clf.path, clf.path.read_bytes(), info)
    return ood
