"""Classify single-cell images with an exported model: files in, :class:`Prediction` objects out.

Decoding runs in a thread pool (OpenCV releases the GIL) while ONNX Runtime works on the previous
batch, so the model, not JPEG decoding, sets the pace.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wbc.errors import ImageReadError
from wbc.io import atomic_write_csv
from wbc.model import Classifier, softmax
from wbc.preprocess import load_cell
from wbc.types import Prediction


@dataclass
class ClassifyResult:
    """Predictions in input order (failed files left out), the raw logits, and the failures."""

    predictions: list[Prediction]
    logits: np.ndarray  # (N, C), before temperature scaling
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, message)
    embeddings: np.ndarray | None = None

    def counts(self) -> Counter[str]:
        return Counter(p.label for p in self.predictions)


def predictions_from_probs(
    probs: np.ndarray, classifier: Classifier, paths: Sequence[str] = ()
) -> list[Prediction]:
    """Label, confidence and the review flag (confidence below the model's threshold) per row."""
    classes = classifier.classes
    thr = classifier.info.review_threshold
    out = []
    for i, p in enumerate(probs):
        k = int(p.argmax())
        conf = float(p[k])
        review = conf < thr
        out.append(Prediction(
            label=classes[k],
            confidence=conf,
            review=review,
            probabilities={c: float(v) for c, v in zip(classes, p, strict=True)},
            path=str(paths[i]) if i < len(paths) else "",
            reasons=[f"confidence {conf:.2f} < {thr:.2f}"] if review else [],
        ))
    return out


def predict_cells(
    classifier: Classifier, cells: np.ndarray, names: Sequence[str] = (), with_embeddings: bool = False,
    exclude: Sequence[str] = (),
) -> tuple[list[Prediction], dict[str, np.ndarray]]:
    """Predictions for one batch of uint8 cells at the model's input size, and the raw outputs.

    The one place where logits become calibrated probabilities, labels, review and out-of-distribution
    flags, so `wbc classify`, `wbc analyze` and the HTTP API always agree. ``exclude``: classes these
    cells cannot be (known from how they were found); their probability is set to 0 and the rest
    renormalised, the same as predicting over the other classes' logits only.
    """
    ood = classifier.info.ood
    out = classifier.run(cells, ("logits", "embedding") if with_embeddings or ood else ("logits",))
    probs = softmax(out["logits"], classifier.info.temperature)
    excluded = set(exclude)
    drop = [i for i, c in enumerate(classifier.classes) if c in excluded]
    if drop and len(drop) < len(classifier.classes):
        probs[:, drop] = 0.0
        probs /= probs.sum(1, keepdims=True)
    preds = predictions_from_probs(probs, classifier, names)
    if ood:  # out-of-distribution cells get review and a reason (wbc.ood)
        from wbc.ood import flag_predictions

        flag_predictions(preds, cells, out["embedding"], ood)
    return preds, out


def _load(path: Path, size: int) -> np.ndarray | str:
    try:
        return load_cell(path, size)
    except ImageReadError as exc:
        return str(exc)


def iter_batches(
    paths: Sequence[Path], size: int, batch_size: int, workers: int
) -> Iterator[tuple[list[Path], np.ndarray, list[tuple[str, str]]]]:
    """Decoded, resized batches in order, with the files that failed to load."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        chunks = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
        pending = [pool.map(lambda p: _load(p, size), c) for c in chunks[:2]]
        for ci, chunk in enumerate(chunks):
            loaded = list(pending[ci])
            if ci + 2 < len(chunks):
                pending.append(pool.map(lambda p: _load(p, size), chunks[ci + 2]))
            ok = [(p, a) for p, a in zip(chunk, loaded, strict=True) if not isinstance(a, str)]
            errors = [(str(p), a) for p, a in zip(chunk, loaded, strict=True) if isinstance(a, str)]
            arr = np.stack([a for _, a in ok]) if ok else np.zeros((0, size, size, 3), np.uint8)
            yield [p for p, _ in ok], arr, errors


def load_cells(
    paths: Sequence[str | os.PathLike[str]], size: int, workers: int = 2, batch_size: int = 128
) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
    """All readable images as uint8 cells (N, size, size, 3), the indices into ``paths`` of those
    that loaded, and (path, message) for those that did not (never fatal)."""
    paths = [Path(p) for p in paths]
    index = {str(p): i for i, p in enumerate(paths)}
    cells, ok, errors = [], [], []
    for ok_paths, arr, errs in iter_batches(paths, size, batch_size, workers):
        cells.append(arr)
        ok += [index[str(p)] for p in ok_paths]
        errors += errs
    arr = np.concatenate(cells) if cells else np.zeros((0, size, size, 3), np.uint8)
    return arr, ok, errors


def classify_paths(
    paths: Sequence[str | os.PathLike[str]],
    classifier: Classifier,
    batch_size: int = 128,
    workers: int = 2,
    with_embeddings: bool = False,
    progress: object | None = None,
) -> ClassifyResult:
    """Classify image files. A file that cannot be read is recorded in ``errors``, never fatal.

    ``progress``: an optional callable ``progress(n_done)`` for progress bars.
    """
    paths = [Path(p) for p in paths]
    size = classifier.info.input_size
    preds: list[Prediction] = []
    logits: list[np.ndarray] = []
    embs: list[np.ndarray] = []
    errors: list[tuple[str, str]] = []
    done = 0
    for ok_paths, arr, errs in iter_batches(paths, size, batch_size, workers):
        errors += errs
        if len(arr):
            batch_preds, out = predict_cells(classifier, arr, [str(p) for p in ok_paths], with_embeddings)
            preds += batch_preds
            logits.append(out["logits"])
            if with_embeddings:
                embs.append(out["embedding"])
        done += len(arr) + len(errs)
        if callable(progress):
            progress(done)
    n_cls = len(classifier.classes)
    return ClassifyResult(
        predictions=preds,
        logits=np.concatenate(logits) if logits else np.zeros((0, n_cls), np.float32),
        errors=errors,
        embeddings=np.concatenate(embs) if embs else None,
    )


def prediction_header(classes: Sequence[str]) -> list[str]:
    return ["path", "label", "confidence", "review", *[f"p_{c}" for c in classes]]


def prediction_row(p: Prediction, classes: Sequence[str]) -> list[object]:
    return [p.path, p.label, f"{p.confidence:.4f}", str(p.review).lower(),
            *[f"{p.probabilities.get(c, 0.0):.4f}" for c in classes]]


def write_predictions_csv(
    path: str | os.PathLike[str], predictions: Sequence[Prediction], classes: Sequence[str],
    extra: dict[str, Sequence[object]] | None = None,
) -> None:
    """``path,label,confidence,review,p_<class>...`` (plus ``extra`` columns), written atomically."""
    header = prediction_header(classes) + list(extra or {})
    rows = []
    for i, p in enumerate(predictions):
        rows.append(prediction_row(p, classes) + [v[i] for v in (extra or {}).values()])
    atomic_write_csv(path, header, rows)
