"""A page of single-cell answers for a person to check (`wbc classify --report`).

`wbc classify` answers in a CSV; a lab trying wbc on its own cells wants to *see* them: the differential with its
intervals, and each class's cells as the model saw them (re-framed where they were), flagged ones first, so a
hematologist can tell at a glance whether "eosinophil" holds eosinophils. One self-contained HTML file: the
pictures are embedded, nothing is fetched, and it opens from a USB stick or an e-mail.

Small pure functions (:func:`gallery_order`, :func:`differential`) under one renderer (:func:`classified_page`) and
one writer (:func:`write_classified_report`) that reads the shown cells again as the classifier prepared them.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wbc.types import Prediction

#: How many cells each class's gallery shows by default (`wbc classify --report-cells`): flagged ones first, then
#: the least confident, so what most needs a look is always on the page. 48 a class keeps an eight-class page
#: near 3 MB.
REPORT_CELLS: int = 48


@dataclass
class ShownCell:
    """One cell in a gallery: the network's view of it and its answer."""

    rgb: np.ndarray  # uint8 RGB, the model's input (re-framed where `wbc classify` re-framed it)
    label: str
    confidence: float
    review: bool
    path: str = ""
    reasons: list[str] = field(default_factory=list)


def gallery_order(predictions: Sequence[Prediction], per_class: int = REPORT_CELLS) -> dict[str, list[int]]:
    """{class: indices of the cells its gallery shows}: the cells flagged for review first, then the rest, each
    group least confident first, at most ``per_class`` of them (0: every cell).

    >>> P = lambda label, conf, review: Prediction(label, conf, review, {})
    >>> preds = [P("lymphocyte", 0.99, False), P("lymphocyte", 0.6, True), P("monocyte", 0.8, False),
    ...          P("lymphocyte", 0.7, False), P("lymphocyte", 0.9, True)]
    >>> gallery_order(preds, per_class=3)
    {'lymphocyte': [1, 4, 3], 'monocyte': [2]}
    """
    by_class: dict[str, list[int]] = {}
    for i, p in enumerate(predictions):
        by_class.setdefault(p.label, []).append(i)
    out = {}
    for label, idx in by_class.items():
        idx.sort(key=lambda i: (not predictions[i].review, predictions[i].confidence, i))
        out[label] = idx[:per_class] if per_class > 0 else idx
    return out


def differential(predictions: Sequence[Prediction], classes: Sequence[str]) -> list[dict[str, Any]]:
    """One row per class of ``classes``: cells, share, its 95 % interval (exact binomial) and how many are flagged.

    >>> preds = [Prediction("lymphocyte", 0.9, False, {})] * 3 + [Prediction("monocyte", 0.6, True, {})]
    >>> [(r["label"], r["n"], r["percent"], r["flagged"]) for r in differential(preds, ["lymphocyte", "monocyte"])]
    [('lymphocyte', 3, '75.0%', 0), ('monocyte', 1, '25.0%', 1)]
    >>> differential(preds, ["lymphocyte"])[0]["interval"]
    '19.4-99.4%'
    """
    from wbc.counts import clopper_pearson

    n = len(predictions)
    rows = []
    for c in classes:
        k = sum(p.label == c for p in predictions)
        lo, hi = clopper_pearson(k, n) if n else (0.0, 0.0)
        rows.append({"label": c, "n": k, "percent": f"{100 * k / n:.1f}%" if n else "-",
                     "interval": f"{100 * lo:.1f}-{100 * hi:.1f}%" if n else "-",
                     "flagged": sum(p.label == c and p.review for p in predictions)})
    return rows


def _cell_items(cells: Sequence[ShownCell]) -> list[dict[str, Any]]:
    from wbc.evaluate.report import image_to_data_uri

    return [{"src": image_to_data_uri(c.rgb), "percent": f"{100 * c.confidence:.0f}%", "review": c.review,
             "name": Path(c.path).name, "title": "\n".join([c.path, *c.reasons])} for c in cells]


def classified_page(
    predictions: Sequence[Prediction],
    classes: Sequence[str],
    shown: Mapping[str, Sequence[ShownCell]],
    *,
    model_id: str,
    sources: Sequence[str] = (),
    reframe: bool = True,
    warning: str | None = None,
    errors: Sequence[tuple[str, str]] = (),
    created: str | None = None,
) -> str:
    """The page as one HTML string: the differential over ``classes`` (the answer's label set), then a gallery
    per class of the ``shown`` cells, then the files that could not be read (``errors``: (path, message)).

    >>> page = classified_page([], ["lymphocyte"], {}, model_id="m")
    >>> page.startswith("<!DOCTYPE html>") and "No cell was classified." in page
    True
    """
    from wbc import __version__
    from wbc.evaluate.report import display_name, render

    n = len(predictions)
    galleries = [{"label": c, "name": display_name(c), "n": sum(p.label == c for p in predictions),
                  "flagged": sum(p.label == c and p.review for p in predictions),
                  "cells": _cell_items(shown.get(c, ()))} for c in classes]
    return render(
        "classified.html",
        title=f"{n:,} cells — {model_id}",
        model_id=model_id,
        sources=", ".join(str(s) for s in sources),
        n=n,
        n_cells=f"{n:,}",
        n_review=sum(p.review for p in predictions),
        classes=", ".join(classes),
        reframe=reframe,
        warning=warning,
        rows=differential(predictions, classes),
        galleries=[g for g in galleries if g["n"]],
        errors=[{"path": p, "message": m} for p, m in errors],
        created=created or _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        version=__version__,
    )


def write_classified_report(
    path: str | os.PathLike[str],
    predictions: Sequence[Prediction],
    classifier: Any,
    *,
    per_class: int = REPORT_CELLS,
    reframe: bool = True,
    sources: Sequence[str] = (),
    warning: str | None = None,
    errors: Sequence[tuple[str, str]] = (),
) -> None:
    """Write :func:`classified_page` for ``predictions`` (each with its ``path``, as `wbc classify` makes them) to
    ``path``, atomically. The cells shown (:func:`gallery_order`) are read again and prepared as the classifier
    prepared them (:func:`wbc.classify.read_cell`, its framing when ``reframe``); a file gone since is left out."""
    from wbc.classify import read_cell
    from wbc.errors import ImageReadError
    from wbc.io import atomic_write_text
    from wbc.reframe import framing_stats_of

    framing = framing_stats_of(classifier) if reframe else False
    size = classifier.info.input_size
    shown: dict[str, list[ShownCell]] = {}
    for label, idx in gallery_order(predictions, per_class).items():
        for i in idx:
            p = predictions[i]
            try:
                rgb = read_cell(p.path, size, framing)
            except (ImageReadError, OSError):
                continue
            shown.setdefault(label, []).append(ShownCell(rgb, p.label, p.confidence, p.review, p.path, p.reasons))
    classes = tuple(getattr(classifier, "label_set", ()) or ()) or tuple(classifier.classes)
    page = classified_page(predictions, classes, shown, model_id=classifier.model_id, sources=sources,
                           reframe=reframe, warning=warning, errors=errors)
    atomic_write_text(path, page)
