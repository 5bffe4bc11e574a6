"""Every output format in one place: per-field JSON, ``cells.csv``, ``differential.csv``, ``errors.csv``,
the predictions CSV of ``wbc classify`` and the HTTP API's JSON.

One module owns them so that ``wbc analyze`` (local or Ray engine), ``wbc classify``, ``wbc evaluate``
and ``wbc serve`` write the same bytes for the same results, and so that the pooled CSVs can be rebuilt
from the per-field JSON documents alone (a resumed run has no in-memory results for the fields done
before it started). CSV cells that a spreadsheet would run as a formula are neutralised here.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

import cv2
import numpy as np

from wbc.counts import DIFFERENTIAL_HEADER, differential_rows, fixed, half_up
from wbc.io import atomic_write_csv
from wbc.types import Cell, Prediction, SmearResult

#: A spreadsheet evaluates a text cell starting with one of these as a formula (CWE-1236).
FORMULA_PREFIXES: tuple[str, ...] = ("=", "+", "-", "@", "\t", "\r")
ERRORS_HEADER: tuple[str, ...] = ("path", "error")
#: The byte copies a run left out, each with the file kept (`wbc analyze`'s ``copies.csv``, `wbc classify`'s
#: ``<stem>.copies.csv``; since wbc 0.35.0, before which past the tenth they were named nowhere).
COPIES_HEADER: tuple[str, ...] = ("path", "same_bytes_as")


# --------------------------------------------------------------------------- CSV safety


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def neutralise(value: Any) -> Any:
    """A CSV cell that no spreadsheet runs as a formula: text starting with ``= + - @`` (or a tab or CR)
    gets a leading apostrophe; numbers, and text that reads as a number ("-0.5"), stay as they are.

    Text that already starts with apostrophes before such a character gets one more, so that :func:`read_back`
    can always undo it (a file named ``'-scan.png``).

    >>> [neutralise(v) for v in ("=HYPERLINK(1)", "@SUM(A1)", "-0.5", -2, "cell_1.png", "'-scan.png")]
    ["'=HYPERLINK(1)", "'@SUM(A1)", '-0.5', -2, 'cell_1.png', "''-scan.png"]
    """
    if isinstance(value, str) and _escaped(value):
        return "'" + value
    return value


def _escaped(value: str) -> bool:
    """Whether :func:`neutralise` prefixes ``value``: after any leading apostrophes, a formula character starts
    it, and it does not read as a number."""
    rest = value.lstrip("'")
    return rest.startswith(FORMULA_PREFIXES) and not _is_number(rest)


def read_back(value: str) -> str:
    """A CSV cell as it was before :func:`neutralise`: its leading apostrophe taken off again.

    >>> [read_back(neutralise(v)) for v in ("=HYPERLINK(1)", "'quoted", "cell_1.png", "'-scan.png", "''=x")]
    ['=HYPERLINK(1)', "'quoted", 'cell_1.png', "'-scan.png", "''=x"]
    """
    return value[1:] if value.startswith("'") and _escaped(value[1:]) else value


def write_csv(path: str | os.PathLike[str], header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A user-facing CSV, formula-safe and written atomically."""
    atomic_write_csv(path, [neutralise(h) for h in header], ([neutralise(v) for v in r] for r in rows))


# --------------------------------------------------------------------------- per-field JSON


def mask_to_polygons(
    mask: np.ndarray, offset: tuple[int, int] = (0, 0), tolerance: float = 0.7
) -> list[list[list[int]]]:
    """Outer outlines of a bool mask as integer [x, y] polygons in image coordinates (simplified)."""
    cs, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE, offset=offset)
    out = []
    for c in cs:
        if len(c) < 3:
            continue
        c = cv2.approxPolyDP(c, tolerance, True)
        out.append(c.reshape(-1, 2).astype(int).tolist())
    return out


def cell_to_dict(c: Cell) -> dict[str, Any]:
    x0, y0 = c.box[:2]
    p = c.prediction
    return {
        "id": c.id,
        "box": [int(v) for v in c.box],
        "nucleus": mask_to_polygons(c.nucleus_mask, (x0, y0)),
        "cell": mask_to_polygons(c.cell_mask, (x0, y0)),
        "area_px": c.area_px,
        "nucleus_area_px": int(c.nucleus_mask.sum()),
        "touches_border": bool(c.touches_border),
        "detection_score": half_up(float(c.score), 4),  # half up, as every output rounds (wbc.counts.fixed)
        "label": p.label if p else None,
        "confidence": half_up(p.confidence, 6) if p else None,  # 6: enough to tell a flagged cell from the threshold
        "review": bool(p.review) if p else None,
        "review_reasons": list(p.reasons) if p else [],
        "ood": bool(p.ood) if p else None,  # unlike the training cells (wbc.ood), as /classify's "ood"
        "probabilities": {k: half_up(v, 4) for k, v in p.probabilities.items()} if p else {},
    }


def result_to_dict(res: SmearResult, classes: Sequence[str] = (), segmenter_id: str = "",
                   settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON document for one field (``DIR/<stem>.json``, and the body of ``POST /analyze``). ``settings``: what
    besides the models decided its answers (`wbc analyze`'s, :func:`wbc.batch.run_settings`), stored last."""
    doc = {
        "image": res.image,
        "width": res.width,
        "height": res.height,
        "model_id": res.model_id,
        "segmenter": segmenter_id,
        "counts": res.counts(classes),
        "n_cells": len(res.cells),
        "cells": [cell_to_dict(c) for c in res.cells],
        "warnings": list(res.warnings),
        "colour_calibration": res.calibration,
    }
    if settings is not None:
        doc["settings"] = dict(settings)
    return doc


def json_text(doc: Mapping[str, Any]) -> str:
    """The exact text of a per-field JSON file (one serialisation, so every engine writes the same bytes)."""
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


# --------------------------------------------------------------------------- pooled CSVs (from JSON documents)


def cells_csv_header(classes: Sequence[str]) -> list[str]:
    return ["image", "id", "x0", "y0", "x1", "y1", "area_px", "nucleus_area_px", "touches_border", "label",
            "confidence", "review", *[f"p_{c}" for c in classes], "review_reasons"]


def cells_csv_rows(doc: Mapping[str, Any], classes: Sequence[str]) -> list[list[Any]]:
    """``cells.csv`` rows of one field's JSON document."""
    rows = []
    for c in doc["cells"]:
        labelled = c.get("label") is not None
        probs = [c["probabilities"].get(k, 0.0) if labelled else "" for k in classes]
        rows.append([doc["image"], c["id"], *c["box"], c["area_px"], c["nucleus_area_px"], int(c["touches_border"]),
                     c["label"] if labelled else "", c["confidence"] if labelled else "",
                     int(c["review"]) if labelled else "", *probs, reasons_text(c.get("review_reasons", []))])
    return rows


def write_cells_csv(path: str | os.PathLike[str], docs: Iterable[Mapping[str, Any]], classes: Sequence[str]) -> None:
    write_csv(path, cells_csv_header(classes), (r for d in docs for r in cells_csv_rows(d, classes)))


def pooled_counts(docs: Iterable[Mapping[str, Any]], classes: Sequence[str]) -> dict[str, int]:
    out = {c: 0 for c in classes}
    for d in docs:
        for c, k in d["counts"].items():
            out[c] = out.get(c, 0) + int(k)
    return out


def write_differential_csv(
    path: str | os.PathLike[str], docs: Sequence[Mapping[str, Any]], classes: Sequence[str]
) -> None:
    """``differential.csv``: per field, then ``ALL`` pooled over fields (counts from the JSON documents), each row
    with its :func:`differential_unit` (an NRBC row's upper bound of 3900 per 100 WBCs, from one WBC, sat under the
    header "percent" before wbc 0.33.0). With no WBC counted every class's percent and bounds are empty, as
    report.html shows "-": a clinician read "0.0 % neutrophils [0-100]" in the CSV of a field with one NRBC and no WBC
    (before wbc 0.30.0)."""
    rows: list[list[Any]] = []
    for d in docs:
        rows += differential_rows(d["counts"], classes, d["image"])
    rows += differential_rows(pooled_counts(docs, classes), classes, "ALL")
    rows = [[*r[:4], None, None, None] if r[3] == 0 else r for r in rows]  # no WBC: no share to give
    write_csv(path, DIFFERENTIAL_HEADER, ([*r, differential_unit(r[1])] for r in rows))


def write_errors_csv(path: str | os.PathLike[str], errors: Iterable[tuple[str, str]]) -> None:
    write_csv(path, ERRORS_HEADER, errors)


def write_copies_csv(path: str | os.PathLike[str], copies: Iterable[tuple[str, str]]) -> None:
    """The (copy, file kept) pairs of a run as :data:`COPIES_HEADER` rows."""
    write_csv(path, COPIES_HEADER, copies)


# --------------------------------------------------------------------------- a confidence beside its flag


def confidence_text(confidence: float, threshold: float = 0.0, digits: int = 2, scale: float = 1.0) -> str:
    """A cell's confidence as an output shows it beside its review flag (``scale`` 100: in percent): ``digits``
    decimals (:func:`wbc.counts.fixed`), more while it would read as the review ``threshold`` at those digits, or as
    the threshold as the outputs show it (:func:`threshold_text`; compared as values: 0.9860 reads as 0.986), or as 1
    (100 %) though below it. Before wbc 0.30.0 a cell of 0.9854 under a threshold of 0.9863 was labelled "0.99 ?",
    one of 0.98597 "0.9860 ?" under "0.986", and one flagged as unlike the training images "1.00 ?". At most 5 digits
    more, and no zeros past the decimals ``confidence`` itself has (0.986 read from a JSON document shows 0.9860, not
    0.9860000). The pages do the same (``confidenceText`` in common.js).

    >>> confidence_text(0.9854, 0.98633), confidence_text(0.9412, 0.98633), confidence_text(0.998), confidence_text(1.0)
    ('0.985', '0.94', '0.998', '1.00')
    >>> confidence_text(0.9854, 0.98633, 1, 100), confidence_text(0.98597, 0.98633), confidence_text(0.986, 0.98633)
    ('98.5', '0.98597', '0.9860')
    """
    k = round(math.log10(scale)) if scale > 0 else 0
    shown = Decimal(threshold_text(threshold, max(0, 3 - k), scale)) if 0 < threshold < 1 else None
    own = max(0, -int(Decimal(repr(float(confidence))).normalize().as_tuple().exponent) - k)  # decimals it has
    d = digits
    while d < digits + 5:
        c = fixed(scale * confidence, d)
        if not (shown is not None and (c == fixed(scale * threshold, d) or (d < own and Decimal(c) == shown))) and not (
                confidence < 1 and c == fixed(scale * 1.0, d)):
            break
        d += 1
    return fixed(scale * confidence, d)


def threshold_text(threshold: float, digits: int = 3, scale: float = 1.0) -> str:
    """The review threshold as an output shows it: ``digits`` decimals (0.986, or 98.6 % with ``digits`` 1 and ``scale``
    100: the digits a confidence beside a flag has at least), one trailing zero dropped (0.83, 99 %), more while a
    threshold below 1 would read as 1. Shown as 0.99 (99 %) before wbc 0.30.0, it stood above cells of 0.986 the model
    had not flagged. The pages do the same (``thresholdText`` in common.js).

    >>> threshold_text(0.9863332509994507), threshold_text(0.9863332509994507, 1, 100), threshold_text(0.99995)
    ('0.986', '98.6', '0.99995')
    >>> threshold_text(0.83), threshold_text(0.5), threshold_text(0.99, 1, 100)
    ('0.83', '0.50', '99')
    """
    d = digits
    while d < digits + 5 and threshold < 1 and fixed(scale * threshold, d) == fixed(scale * 1.0, d):
        d += 1
    text = fixed(scale * threshold, d)
    return text[:-1].removesuffix(".") if d == digits > 0 and text.endswith("0") else text


# --------------------------------------------------------------------------- wbc classify / wbc evaluate


def prediction_header(classes: Sequence[str]) -> list[str]:
    return ["path", "label", "confidence", "review", *[f"p_{c}" for c in classes], "review_reasons"]


def prediction_row(p: Prediction, classes: Sequence[str]) -> list[object]:
    """A predictions CSV row; numbers to 4 decimals, half up (:func:`wbc.counts.fixed`; ``:.4f`` before wbc 0.33.0)."""
    return [p.path, p.label, fixed(p.confidence, 4), str(p.review).lower(),
            *[fixed(p.probabilities.get(c, 0.0), 4) for c in classes], reasons_text(p.reasons)]


def reasons_text(reasons: Sequence[str]) -> str:
    """Why a cell is flagged for review, as one CSV cell: the reasons joined by "; " (empty when it is not).

    >>> reasons_text(["confidence 0.80, below the review threshold 0.99", "colours unlike the training images"])
    'confidence 0.80, below the review threshold 0.99; colours unlike the training images'
    """
    return "; ".join(reasons)


def write_predictions_csv(
    path: str | os.PathLike[str], predictions: Sequence[Prediction], classes: Sequence[str],
    extra: dict[str, Sequence[object]] | None = None,
) -> None:
    """``path,label,confidence,review,p_<class>...,review_reasons`` (plus ``extra`` columns), formula-safe and
    atomic."""
    header = prediction_header(classes) + list(extra or {})
    rows = [prediction_row(p, classes) + [v[i] for v in (extra or {}).values()] for i, p in enumerate(predictions)]
    write_csv(path, header, rows)


# --------------------------------------------------------------------------- the HTTP API's JSON


def differential_dicts(counts: Mapping[str, int], classes: Sequence[str]) -> list[dict[str, Any]]:
    """Per class: count, percent and the exact 95 % interval in percent, to 4 decimals (see :mod:`wbc.counts`)."""
    keys = ("class", "count", "total", "percent", "ci95_low", "ci95_high")
    return [{**dict(zip(keys, row[1:], strict=True)), "unit": differential_unit(row[1])}
            for row in differential_rows(dict(counts), classes, "", digits=4)]


def differential_unit(label: str) -> str:
    """What a differential row's ``percent`` counts: ``"percent"`` of the WBCs, or ``"per 100 WBC"`` for NRBCs and
    platelets (:data:`wbc.labels.PER_100_WBC`), so a page or a client need not know the convention."""
    from wbc.labels import PER_100_WBC

    return "per 100 WBC" if label in PER_100_WBC else "percent"


def prediction_to_dict(p: Prediction) -> dict[str, Any]:
    """One classified cell in the API's JSON."""
    return {
        "filename": p.path,
        "label": p.label,
        "confidence": half_up(float(p.confidence), 6),  # 6, as cell_to_dict
        "review": bool(p.review),
        "review_reasons": list(p.reasons),
        "ood": bool(p.ood),
        "probabilities": {k: half_up(float(v), 4) for k, v in p.probabilities.items()},
    }
