"""Pages of answers for a person to check: `wbc classify --report` and `wbc analyze`'s ``report.html``.

`wbc classify` answers in a CSV and `wbc analyze` in JSON and CSVs; a lab trying wbc on its own images wants to
*see* the answers: the differential with its intervals, and each class's cells, flagged ones first, so a
hematologist can tell at a glance whether "eosinophil" holds eosinophils. One self-contained HTML file each: the
pictures are embedded, nothing is fetched, and the same inputs give the same bytes (no timestamp).

A streaming picker (:class:`GalleryPicker`, :func:`gallery_order`: at most so many cells a class, never the whole
batch in memory) and :func:`differential` under two renderers (:func:`classified_page`, :func:`analysis_page`) and two
writers: :func:`write_classified_report` reads the shown single-cell images again as the classifier prepared them;
:func:`write_analysis_report` cuts the shown cells from their fields by the boxes in ``cells.csv``.
"""

from __future__ import annotations

import functools
import heapq
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wbc.labels import PER_100_WBC
from wbc.types import Prediction

#: How many cells each class's gallery shows by default (`wbc classify --report-cells`): flagged ones first, then
#: the least confident, so what most needs a look is always on the page. 48 a class keeps an eight-class page
#: near 3 MB.
REPORT_CELLS: int = 48


@dataclass
class ShownCell:
    """One cell in a gallery: its picture and its answer."""

    rgb: np.ndarray  # uint8 RGB: the model's input (`wbc classify`), the cell cut from its field (`wbc analyze`)
    label: str
    confidence: float
    review: bool
    path: str = ""
    reasons: list[str] = field(default_factory=list)
    href: str = ""  # what the picture links to (`wbc analyze`: its field's annotated PNG)
    cell_id: int | None = None  # `wbc analyze`: the cell's id in its field (cells.csv, the annotated PNG)


class GalleryPicker:
    """Counts the cells of each class and keeps, per class, the ``per_class`` (0: all) a gallery shows first: the
    cells flagged for review, then the rest, each group least confident first. Streaming, so a million cells'
    answers never sit in memory at once.

    >>> picker = GalleryPicker(per_class=1)
    >>> for label, conf, review in [("monocyte", 0.9, False), ("monocyte", 0.95, True), ("lymphocyte", 0.5, False)]:
    ...     picker.add(label, conf, review, f"{label} {conf}")
    >>> picker.galleries()
    {'monocyte': ['monocyte 0.95'], 'lymphocyte': ['lymphocyte 0.5']}
    >>> dict(picker.n), dict(picker.flagged)
    ({'monocyte': 2, 'lymphocyte': 1}, {'monocyte': 1})
    """

    def __init__(self, per_class: int = REPORT_CELLS) -> None:
        self.per_class = per_class
        self.n: Counter[str] = Counter()
        self.flagged: Counter[str] = Counter()
        self._heaps: dict[str, list[tuple[int, float, int, Any]]] = {}
        self._seen = 0

    def add(self, label: str, confidence: float, review: bool, item: Any) -> None:
        """One cell's answer; ``item`` is what :meth:`galleries` returns for it."""
        self.n[label] += 1
        if review:
            self.flagged[label] += 1
        # the heap's smallest entry is the kept cell shown last: evicted first
        entry = (-int(not review), -float(confidence), -self._seen, item)
        self._seen += 1
        heap = self._heaps.setdefault(label, [])
        if self.per_class <= 0 or len(heap) < self.per_class:
            heapq.heappush(heap, entry)
        elif entry > heap[0]:
            heapq.heapreplace(heap, entry)

    def galleries(self) -> dict[str, list[Any]]:
        """{class: the kept items, in the order the gallery shows them}, classes in the order first seen."""
        return {label: [e[3] for e in sorted(heap, key=lambda e: e[:3], reverse=True)]
                for label, heap in self._heaps.items()}


def gallery_order(predictions: Sequence[Prediction], per_class: int = REPORT_CELLS) -> dict[str, list[int]]:
    """{class: indices of the cells its gallery shows}: the cells flagged for review first, then the rest, each
    group least confident first, at most ``per_class`` of them (0: every cell).

    >>> P = lambda label, conf, review: Prediction(label, conf, review, {})
    >>> preds = [P("lymphocyte", 0.99, False), P("lymphocyte", 0.6, True), P("monocyte", 0.8, False),
    ...          P("lymphocyte", 0.7, False), P("lymphocyte", 0.9, True)]
    >>> gallery_order(preds, per_class=3)
    {'lymphocyte': [1, 4, 3], 'monocyte': [2]}
    """
    picker = GalleryPicker(per_class)
    for i, p in enumerate(predictions):
        picker.add(p.label, p.confidence, p.review, i)
    return picker.galleries()


def differential(n: Mapping[str, int], flagged: Mapping[str, int], classes: Sequence[str]) -> list[dict[str, Any]]:
    """One row per class of ``classes``: cells (``n``), share, its 95 % interval (exact binomial) and how many are
    flagged. Shares are of the WBCs; erythroblasts (NRBCs) and platelets per 100 WBCs (:mod:`wbc.counts`).

    >>> rows = differential({"lymphocyte": 3, "monocyte": 1}, {"monocyte": 1}, ["lymphocyte", "monocyte"])
    >>> [(r["label"], r["n"], r["percent"], r["interval"], r["flagged"]) for r in rows]
    [('lymphocyte', 3, '75.0%', '19.4-99.4%', 0), ('monocyte', 1, '25.0%', '0.6-80.6%', 1)]
    >>> [(r["percent"], r["interval"]) for r in differential({"a": 1, "b": 7}, {}, ["a", "b"])][:1]  # 0.316-52.651
    [('12.5%', '0.3-52.7%')]
    >>> [r["percent"] for r in differential({"erythroblast": 1, "lymphocyte": 4}, {}, ["erythroblast", "lymphocyte"])]
    ['25.0 /100 WBC', '100.0%']
    >>> [(r["percent"], r["interval"]) for r in differential({"erythroblast": 1}, {}, ["erythroblast", "lymphocyte"])]
    [('n/a (no WBC counted)', '-'), ('-', '-')]
    """
    from wbc.counts import NO_WBC_RATE, differential_rows, fixed  # the numbers differential.csv and the pages give

    rows = []  # from the 4-decimal values the HTTP API and the case store hold, by the one rule (wbc.counts.fixed)
    for _, c, k, total, percent, lo, hi in differential_rows({c: int(n.get(c, 0)) for c in classes}, classes, "",
                                                             digits=4):
        unit = " /100 WBC" if c in PER_100_WBC else "%"
        rows.append({"label": c, "n": k,
                     "percent": f"{fixed(percent)}{unit}" if total else NO_WBC_RATE if k else "-",
                     "interval": f"{fixed(lo)}-{fixed(hi)}{unit}" if total else "-",
                     "flagged": int(flagged.get(c, 0))})
    return rows


def _galleries(classes: Sequence[str], n: Mapping[str, int], flagged: Mapping[str, int],
               shown: Mapping[str, Sequence[ShownCell]], threshold: float = 0.0) -> list[dict[str, Any]]:
    from wbc.evaluate.report import display_name

    return [{"label": c, "name": display_name(c), "n": int(n.get(c, 0)), "flagged": int(flagged.get(c, 0)),
             "cells": _cell_items(shown.get(c, ()), threshold)} for c in classes if n.get(c)]


def _cell_items(cells: Sequence[ShownCell], threshold: float = 0.0) -> list[dict[str, Any]]:
    """Each shown cell's picture and caption. The confidence has the digits that tell it from the model's review
    ``threshold`` (:func:`wbc.formats.confidence_text`, as the review page and the case report): before wbc 0.30.0
    a cell flagged at 0.9862 under 0.9863 read "99% · review" beside an unflagged 0.9904's "99%". A cell the model
    takes for a class not counted says so first, as on the annotated field (:func:`wbc.render.label_texts`):
    "platelet? 32%" in the neutrophils (since wbc 0.36.0; before, "32%", as any unsure neutrophil)."""
    from wbc.classify import outside_of
    from wbc.evaluate.report import image_to_data_uri
    from wbc.formats import confidence_text  # never 100 % below 1 (an unusual cell's "1.00 ?")

    def caption(c: ShownCell) -> str:
        outside = next((f"{o}? " for o, _ in filter(None, map(outside_of, c.reasons))), "")
        return f"{outside}{confidence_text(c.confidence, threshold, 0, 100)}%"

    return [{"src": image_to_data_uri(c.rgb), "percent": caption(c),
             "review": c.review,
             "name": Path(c.path).name + ("" if c.cell_id is None else f" #{c.cell_id}"),
             "title": "\n".join([c.path + ("" if c.cell_id is None else f" (cell {c.cell_id})"), *c.reasons]),
             "href": c.href} for c in cells]


def threshold_note(threshold: float) -> str:
    """The page header's words for the model's review threshold, in the digits the pages give it
    (:func:`wbc.formats.threshold_text`): the captions' confidences are read against it.

    >>> threshold_note(0.9863332509994507), threshold_note(1.0), threshold_note(0.0)
    ('review threshold 98.6% confidence', 'every cell is flagged (review threshold 100%)', '')
    """
    from wbc.formats import threshold_text

    if threshold >= 1:
        return "every cell is flagged (review threshold 100%)"
    return f"review threshold {threshold_text(threshold, 1, 100)}% confidence" if threshold > 0 else ""


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
    threshold: float = 0.0,
) -> str:
    """`wbc classify --report`'s page as one HTML string: the differential over ``classes`` (the answer's label
    set), then a gallery per class of the ``shown`` cells, then the files that could not be read (``errors``:
    (path, message)). The header says how many cells the model took for a class outside ``classes``
    (:func:`wbc.classify.outside_note`): they are counted in the differential as the chosen class shown; and how many
    images show more than one nucleated cell (:func:`wbc.classify.other_cells_note`).

    >>> page = classified_page([], ["lymphocyte"], {}, model_id="m")
    >>> page.startswith("<!DOCTYPE html>") and "No cell was classified." in page
    True
    """
    from wbc import __version__
    from wbc.classify import other_cells_note, outside_note
    from wbc.evaluate.report import render

    n = Counter(p.label for p in predictions)
    flagged = Counter(p.label for p in predictions if p.review)
    return render(
        "classified.html",
        title=f"{len(predictions):,} cells — {model_id}",
        model_id=model_id,
        sources=", ".join(str(s) for s in sources),
        n=len(predictions),
        n_cells=f"{len(predictions):,}",
        n_review=sum(flagged.values()),
        classes=", ".join(classes),
        reframe=reframe,
        warning=warning,
        outside=outside_note(predictions),
        crowded=other_cells_note(predictions),
        threshold=threshold_note(threshold),
        rows=differential(n, flagged, classes),
        galleries=_galleries(classes, n, flagged, shown, threshold),
        errors=[{"path": p, "message": m} for p, m in errors],
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
                           reframe=reframe, warning=warning, errors=errors,
                           threshold=float(classifier.info.review_threshold))
    atomic_write_text(path, page)


#: Side of a cell's picture on `wbc analyze`'s page, cut from its field around its box (:data:`CUT_MARGIN` x the box's
#: longer side, kept inside the field) at the field's resolution, then resized.
THUMB_SIDE: int = 128
CUT_MARGIN: float = 1.4
#: The fields table of `wbc analyze`'s page lists at most this many fields (every one is in ``differential.csv``),
#: so a run over a whole slide's fields does not make a page of hundreds of megabytes.
MAX_FIELD_ROWS: int = 1000


def analysis_page(
    classes: Sequence[str],
    picker: GalleryPicker,
    shown: Mapping[str, Sequence[ShownCell]],
    fields: Sequence[Mapping[str, Any]],
    *,
    model_id: str,
    segmenter_id: str = "",
    errors: Sequence[tuple[str, str]] = (),
    n_fields: int | None = None,
    n_warned: int | None = None,
    threshold: float = 0.0,
    outside: str | None = None,
    warning: str | None = None,
) -> str:
    """`wbc analyze`'s ``report.html`` as one HTML string: the differential over ``classes`` (those the run answered
    among, no platelets: :func:`wbc.analyze.smear_label_set`) pooled over the fields (``fields``, each
    ``{"image", "href", "n_cells", "counts", "warnings"}``, the rows of its fields table; ``n_fields`` and ``n_warned``:
    how many fields there are and carry a warning, when the table shows only some), a gallery per class of the
    ``shown`` cells (counted by ``picker``), then the files that failed (``errors``: (path, message)). ``outside``: how
    many cells the model takes for a class not answered among (:func:`wbc.classify.outside_sentence`; a smear's
    platelets too), said as the terminal says it. ``warning``: how many of the run's cells look unlike the model's
    training data (:func:`wbc.ood.ood_sentence`), as `wbc classify --report`'s page gives it; before wbc 0.36.0 the
    page said it only field by field, in its fields table.

    >>> page = analysis_page(["neutrophil"], GalleryPicker(), {}, [], model_id="m", n_fields=1)
    >>> page.startswith("<!DOCTYPE html>") and "No WBC was found." in page
    True

    With no field analysed (every file failed) it says so, not "No WBC was found.", and gives no differential:

    >>> page = analysis_page(["neutrophil"], GalleryPicker(), {}, [], model_id="m", errors=[("a.jpg", "a.jpg: bad")])
    >>> "No field could be read</b>: all 1 file failed" in page, "No WBC" in page, "<h2>Differential" in page
    (True, False, False)
    """
    from wbc import __version__
    from wbc.counts import wbc_total
    from wbc.evaluate.report import render

    n_cells = sum(picker.n.values())
    total = len(fields) if n_fields is None else n_fields
    return render(
        "analysis.html",
        title=f"{total:,} smear fields — {model_id}",
        model_id=model_id,
        segmenter_id=segmenter_id,
        n=n_cells,
        n_cells=f"{n_cells:,}",
        n_wbc=f"{wbc_total(picker.n, classes):,}",  # the differential's total: NRBCs and platelets are no WBCs
        n_fields=f"{total:,}",
        n_listed=len(fields),
        total=total,
        n_review=sum(picker.flagged.values()),
        n_warned=sum(1 for f in fields if f.get("warnings")) if n_warned is None else n_warned,
        outside=outside,
        warning=warning,
        classes=", ".join(classes),
        nrbc=any(c in PER_100_WBC for c in classes),  # erythroblasts answered (platelets never are in a smear)
        threshold=threshold_note(threshold),
        rows=differential(picker.n, picker.flagged, classes),
        galleries=_galleries(classes, picker.n, picker.flagged, shown, threshold),
        fields=[{**f, "counts": ", ".join(f"{k} {c}" for c, k in f["counts"].items() if k),
                 "warnings": "; ".join(f.get("warnings") or ())} for f in fields],
        errors=[{"path": p, "message": m} for p, m in errors],
        version=__version__,
    )


def pick_smear_cells(rows: Iterable[Mapping[str, str]], per_class: int = REPORT_CELLS) -> GalleryPicker:
    """A :class:`GalleryPicker` over ``cells.csv``'s rows (:func:`wbc.formats.cells_csv_rows`), each kept cell as
    ``(image, box, confidence, review, reasons, id)``."""
    from wbc.formats import read_back

    picker = GalleryPicker(per_class)
    for r in rows:
        image = read_back(r["image"])  # neutralised for spreadsheets
        review = r["review"] in ("1", "True", "true")
        box = tuple(int(float(r[k])) for k in ("x0", "y0", "x1", "y1"))
        reasons = [t for t in (r.get("review_reasons") or "").split("; ") if t]
        picker.add(r["label"], float(r["confidence"]), review,
                   (image, box, float(r["confidence"]), review, reasons, int(r["id"])))
    return picker


#: A byte of a file name that is no UTF-8, as Python holds it (``surrogateescape``: U+DC80-U+DCFF).
_UNDECODED = re.compile("[\udc80-\udcff]")


def readable_names(text: str) -> str:
    """``text`` with each byte of a file name that is no UTF-8 as the Latin-1 character it most likely is (U+FFFD for
    0x80-0x9F, control characters in Latin-1): a page declaring UTF-8 held the raw byte, which browsers show as one
    U+FFFD for any such character, so names that differ only there could not be told apart.

    >>> readable_names(os.fsdecode(b"caf\\xe9 \\x85.jpg"))
    'café \ufffd.jpg'
    """
    return _UNDECODED.sub(lambda m: chr(ord(m[0]) - 0xDC00) if ord(m[0]) >= 0xDCA0 else "\ufffd", text)


def write_analysis_report(
    out: str | os.PathLike[str],
    docs: Sequence[Mapping[str, Any]],
    classes: Sequence[str],
    *,
    stems: Mapping[str, str],
    model_id: str,
    segmenter_id: str = "",
    per_class: int = REPORT_CELLS,
    errors: Sequence[tuple[str, str]] = (),
    threshold: float = 0.0,
    warning: str | None = None,
) -> Path:
    """Write :func:`analysis_page` to ``out/report.html`` (atomically) from a finished `wbc analyze` batch: its
    ``cells.csv`` in ``out`` (streamed), the fields' summary ``docs`` (:class:`wbc.batch.AnalyzeSummary`) and
    ``stems`` ({image: output stem}, for the links to the annotated PNGs). Each field with shown cells is read once;
    a field that cannot be read now leaves its cells out of the galleries, not the counts. The cells the model takes
    for a class not answered among (their reasons' :func:`wbc.classify.outside_of`) are counted in a warning, as
    the terminal gives it: before wbc 0.33.0 the page said nothing of a smear's detections taken for platelets.
    ``warning``: :func:`analysis_page`'s, the run's out-of-distribution sentence."""
    import csv
    from urllib.parse import quote

    import cv2

    from wbc.classify import outside_of, outside_sentence
    from wbc.crops import box_window
    from wbc.errors import ImageReadError
    from wbc.io import atomic_write_text, read_image

    out = Path(out)
    cells_csv = out / "cells.csv"
    outside: Counter[str] = Counter()
    smear: set[str] = set()  # of those, the classes no --classes left out: a smear's differential does not count them

    def counted(rows: Iterable[dict[str, str]]) -> Iterator[dict[str, str]]:
        for r in rows:
            for other, chosen in filter(None, map(outside_of, (r.get("review_reasons") or "").split("; "))):
                outside[other] += 1
                if not chosen:
                    smear.add(other)
            yield r

    with cells_csv.open(newline="", encoding="utf-8", errors="surrogateescape") as f:  # a Latin-1 name's own bytes
        picker = pick_smear_cells(counted(csv.DictReader(f)), per_class)
    chosen = picker.galleries()
    by_image: dict[str, list[tuple[str, int]]] = {}
    for label, items in chosen.items():
        for j, item in enumerate(items):
            by_image.setdefault(item[0], []).append((label, j))
    pictures: dict[tuple[str, int], np.ndarray] = {}
    for image, refs in by_image.items():
        try:
            rgb = read_image(image)
        except (ImageReadError, OSError):
            continue
        for label, j in refs:
            cut = box_window(rgb, chosen[label][j][1], CUT_MARGIN)
            pictures[(label, j)] = cv2.resize(cut, (THUMB_SIDE, THUMB_SIDE), interpolation=cv2.INTER_AREA)

    @functools.cache
    def href(image: str) -> str:  # "./" and quoted: a file named "javascript:..." stays a relative path
        stem = stems.get(image)
        return f"./{quote(stem + '.png', errors='surrogateescape')}" if stem and (out / f"{stem}.png").is_file() else ""

    shown = {label: [ShownCell(pictures[(label, j)], label, conf, review, image, reasons, href(image), cell_id)
                     for j, (image, _box, conf, review, reasons, cell_id) in enumerate(items) if (label, j) in pictures]
             for label, items in chosen.items()}
    fields = [{"image": d["image"], "href": href(str(d["image"])), "n_cells": d["n_cells"], "counts": d["counts"],
               "warnings": d.get("warnings") or []} for d in docs[:MAX_FIELD_ROWS]]
    page = analysis_page(classes, picker, shown, fields, model_id=model_id, segmenter_id=segmenter_id,
                         errors=errors, n_fields=len(docs), n_warned=sum(1 for d in docs if d.get("warnings")),
                         threshold=threshold, outside=outside_sentence(outside, sum(picker.n.values()), smear),
                         warning=warning)
    path = out / "report.html"
    atomic_write_text(path, readable_names(page))  # the links are quoted with the file's own bytes (href)
    return path
