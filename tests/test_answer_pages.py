"""The pages a person checks answers on (wbc.evaluate.classified): `wbc classify --report`, `wbc analyze`'s
report.html."""

from __future__ import annotations

import base64
import csv
import re
import subprocess
import sys
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import cv2
import numpy as np

from wbc.batch import analyze_paths
from wbc.classify import classify_paths, read_cell
from wbc.crops import box_window
from wbc.evaluate.classified import (
    CUT_MARGIN,
    THUMB_SIDE,
    gallery_order,
    write_analysis_report,
    write_classified_report,
)
from wbc.io import iter_image_paths
from wbc.model import load_model
from wbc.reframe import framing_stats_of
from wbc.segment.classical import ClassicalSegmenter
from wbc.synthetic import synthetic_smear
from wbc.types import Prediction


class _Images(HTMLParser):
    """The <img> tags of a page, in order, and whether every opened tag was closed in order."""

    VOID = frozenset({"img", "meta", "br", "input", "link"})

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str | None]] = []
        self.stack: list[str] = []
        self.balanced = True

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.images.append(dict(attrs))
        elif tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in self.VOID:
            return
        if not self.stack or self.stack.pop() != tag:
            self.balanced = False


def _parse(page: str) -> _Images:
    p = _Images()
    p.feed(page)
    return p


def _decode(uri: str) -> np.ndarray:
    data = base64.b64decode(uri.split(",", 1)[1])
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]


def _cells(folder: Path, n: int = 9) -> Path:
    """``n`` synthetic single-cell images: the cell small in a wide frame, as it comes, and filling a tight crop."""
    from wbc.synthetic import make_dataset

    src = make_dataset(folder.parent / "synth", n_per_class=2, size=96)
    folder.mkdir()
    for i, p in enumerate(list(iter_image_paths([src]))[:n]):
        rgb = cv2.imread(str(p))
        if i % 3 == 1:  # tight: the cell fills the frame
            rgb = rgb[18:78, 18:78]
        elif i % 3 == 2:  # wide: the cell small in a large frame of its own background
            rgb = cv2.copyMakeBorder(rgb, 96, 96, 96, 96, cv2.BORDER_REPLICATE)
        cv2.imwrite(str(folder / f"cell_{i:02d}.png"), rgb)
    return folder


def test_gallery_order_shows_flagged_cells_first_then_the_least_confident() -> None:
    preds = [Prediction("neutrophil", c, r, {}) for c, r in
             [(0.99, False), (0.55, False), (0.97, True), (0.80, True), (0.60, False)]]
    assert gallery_order(preds, per_class=0) == {"neutrophil": [3, 2, 1, 4, 0]}
    assert gallery_order(preds, per_class=2) == {"neutrophil": [3, 2]}
    assert gallery_order([], per_class=5) == {}


def test_the_report_shows_each_cell_as_the_model_saw_it(tmp_path: Path) -> None:
    """The picture of a cell is the network's input (re-framed as `wbc classify` re-framed it), not the file."""
    folder = _cells(tmp_path / "cells")
    clf = load_model(None, threads=1)
    res = classify_paths(list(iter_image_paths([folder])), clf, workers=1)
    page = tmp_path / "report.html"
    write_classified_report(page, res.predictions, clf, per_class=0, sources=[str(folder)])
    html = page.read_text()
    parsed = _parse(html)
    assert parsed.balanced and len(parsed.images) == len(res.predictions) == 9
    framing = framing_stats_of(clf)
    by_path = {p.path: p for p in res.predictions}
    for img in parsed.images:
        path = str(img["title"]).splitlines()[0]
        shown = _decode(str(img["src"]))
        seen = read_cell(path, clf.info.input_size, framing)
        assert shown.shape == seen.shape == (160, 160, 3)
        assert np.abs(shown.astype(int) - seen).mean() < 4  # the same picture, through a JPEG
        assert img["alt"] == f"{by_path[path].label} cell"
    # the tight crops were re-framed: the picture differs from the file merely resized
    tight = str(folder / "cell_01.png")
    plain = cv2.resize(cv2.imread(tight)[:, :, ::-1], (160, 160), interpolation=cv2.INTER_AREA)
    assert np.abs(read_cell(tight, 160, framing).astype(int) - plain).mean() > 10


def test_classify_cli_writes_the_report_with_counts_galleries_and_skipped_files(tmp_path: Path) -> None:
    folder = _cells(tmp_path / "cells")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out, page = tmp_path / "preds.csv", tmp_path / "out" / "report.html"
    page.parent.mkdir()
    r = subprocess.run([sys.executable, "-m", "wbc", "classify", str(folder), "--output", str(out), "--classes",
                        "5part", "--report", str(page), "--report-cells", "2"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"report -> {page}" in r.stderr
    rows = list(csv.DictReader(out.open()))
    counts = Counter(row["label"] for row in rows)
    html = page.read_text()
    parsed = _parse(html)
    assert parsed.balanced
    # every answered class has its heading with its count, and at most two of its cells shown
    for label, n in counts.items():
        assert re.search(rf"<h3 id='{label}'>[^<]*: {n} cells?, \d+ flagged", html), label
    assert len(parsed.images) == sum(min(2, n) for n in counts.values())
    assert all(str(i["src"]).startswith("data:image/jpeg;base64,") for i in parsed.images)
    # the differential lists the five classes asked for, even those with no cell, and only them
    table = html.split("<h2>Differential</h2>")[1].split("</table>")[0]
    assert re.findall(r"<tr><td>(\w+)</td>", table) == ["basophil", "eosinophil", "lymphocyte", "monocyte",
                                                         "neutrophil"]
    assert "broken.png" in html.split("Files not read")[1]
    assert "<script" not in html and "http" not in html.replace("http-equiv", "")  # self-contained, nothing fetched


def test_the_analysis_report_cuts_each_cell_from_its_field_and_links_the_annotated_field(tmp_path: Path) -> None:
    """`wbc analyze`'s report.html: counts as in cells.csv, each picture the cell's box cut from its own field, its
    link the annotated PNG of that field (two fields of one name in two folders kept apart), failures listed."""
    src = tmp_path / "in"
    for i, folder in enumerate(["day1", "day1", "day2"]):
        (src / folder).mkdir(parents=True, exist_ok=True)
        rgb, *_ = synthetic_smear(n_wbc=2 + i % 2, seed=20 + i)
        name = "field.png" if i != 1 else "javascript:alert(1).png"  # a hostile name stays a relative link
        cv2.imwrite(str(src / folder / name), rgb[:, :, ::-1])
    (src / "day2" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "out"
    clf = load_model(None, threads=1)
    summary = analyze_paths([src], out, clf, ClassicalSegmenter())
    assert summary.analyzed == 3 and len(summary.errors) == 1
    page = write_analysis_report(out, summary.docs, summary.classes, stems=summary.stems, model_id=clf.model_id,
                                 per_class=1, errors=summary.errors)
    html = page.read_text()
    parsed = _parse(html)
    assert page == out / "report.html" and parsed.balanced
    rows = list(csv.DictReader((out / "cells.csv").open()))
    counts = Counter(r["label"] for r in rows)
    assert len(rows) >= 5
    for label, n in counts.items():
        assert re.search(rf"<h3 id='{label}'>[^<]*: {n} cells?, \d+ flagged", html), label
    assert len(parsed.images) == len(counts)  # one a class
    links = re.findall(r"<figure><a href='([^']+)'><img", html)
    assert len(links) == len(parsed.images)
    for img, href in zip(parsed.images, links, strict=True):
        image, cell = re.fullmatch(r"(.+) \(cell (\d+)\)", str(img["title"]).splitlines()[0]).groups()
        assert href.startswith("./") and unquote(href) == f"./{summary.stems[image]}.png"
        assert (out / unquote(href)).is_file()
        row = next(r for r in rows if r["image"] == image and r["id"] == cell)
        assert img["alt"] == f"{row['label']} cell"
        field = cv2.imread(image)[:, :, ::-1]
        box = [int(row[k]) for k in ("x0", "y0", "x1", "y1")]
        cut = cv2.resize(box_window(field, box, CUT_MARGIN), (THUMB_SIDE, THUMB_SIDE), interpolation=cv2.INTER_AREA)
        assert np.abs(_decode(str(img["src"])).astype(int) - cut).mean() < 4
    assert len(set(summary.stems.values())) == 3  # the two field.png kept apart
    assert "href='./javascript%3Aalert%281%29.png'" in html and "href='javascript" not in html
    assert "corrupt.jpg" in html.split("Fields not analysed")[1]
    # the same outputs give the same page, byte for byte (no timestamp)
    again = write_analysis_report(out, summary.docs, summary.classes, stems=summary.stems, model_id=clf.model_id,
                                  per_class=1, errors=summary.errors)
    assert again.read_text() == html


def test_every_cell_of_a_field_named_with_an_apostrophe_is_shown(tmp_path: Path, monkeypatch) -> None:
    """cells.csv writes ``'-scan.png`` as it is; the page read it back as ``-scan.png`` and lost its cells (wbc
    0.26.0). Every cell in cells.csv is on the page when every cell is asked for."""
    monkeypatch.chdir(tmp_path)
    rgb, *_ = synthetic_smear(n_wbc=2, seed=5)
    cv2.imwrite("'-scan.png", rgb[:, :, ::-1])
    clf = load_model(None, threads=1)
    summary = analyze_paths(["'-scan.png"], "out", clf, ClassicalSegmenter())
    page = write_analysis_report(Path("out"), summary.docs, summary.classes, stems=summary.stems,
                                 model_id=clf.model_id, per_class=0)
    rows = list(csv.DictReader(Path("out/cells.csv").read_text().splitlines()))
    assert rows and len(_parse(page.read_text()).images) == len(rows)


def test_the_commands_show_as_many_cells_a_class_as_the_library_by_default() -> None:
    """`--report-cells`' default is written out in the CLI (it does not import the page code at start-up)."""
    import inspect

    from wbc.cli.analyze import analyze
    from wbc.cli.classify import classify
    from wbc.evaluate.classified import REPORT_CELLS

    for command in (classify, analyze):
        assert inspect.signature(command).parameters["report_cells"].default == REPORT_CELLS


def test_the_fields_table_of_a_large_run_lists_the_first_fields_and_says_so(tmp_path: Path, monkeypatch) -> None:
    """A whole slide's thousands of fields are counted on the page but listed only up to MAX_FIELD_ROWS."""
    import wbc.evaluate.classified as classified

    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        rgb, *_ = synthetic_smear(n_wbc=1, seed=40 + i)
        cv2.imwrite(str(src / f"f{i}.png"), rgb[:, :, ::-1])
    out = tmp_path / "out"
    clf = load_model(None, threads=1)
    summary = analyze_paths([src], out, clf, ClassicalSegmenter())
    monkeypatch.setattr(classified, "MAX_FIELD_ROWS", 2)
    html = write_analysis_report(out, summary.docs, summary.classes, stems=summary.stems,
                                 model_id=clf.model_id).read_text()
    table = html.split("<h2>Fields</h2>")[1]
    assert "The first 2 of 3 fields" in table and table.count("<tr><td>") == 2
    assert "3 fields" in html.split("</div>")[0]  # the header counts them all


def test_a_flagged_caption_has_the_digits_that_tell_it_from_the_review_threshold() -> None:
    """`wbc classify --report` captioned a cell flagged at 0.9862 under the threshold 0.98633 "99% · review" beside an
    unflagged 0.9904's "99%", the threshold only in hover titles (wbc 0.29.0); the review page and the case report
    give the digits that tell them apart (wbc.formats.confidence_text), and so does this page, its header the
    threshold."""
    from wbc.evaluate.classified import GalleryPicker, ShownCell, analysis_page, classified_page
    from wbc.types import Prediction

    rgb = np.full((32, 32, 3), 200, np.uint8)
    cells = [ShownCell(rgb, "monocyte", 0.9862, True, "a.png"), ShownCell(rgb, "monocyte", 0.9904, False, "b.png")]
    preds = [Prediction("monocyte", c.confidence, c.review, {}, path=c.path) for c in cells]
    page = classified_page(preds, ["monocyte"], {"monocyte": cells}, model_id="m", threshold=0.98633)
    assert "98.62% · review" in page and ">99.0%<" in page and ">99%" not in page
    assert "(review threshold 98.6% confidence)" in page
    picker = GalleryPicker()
    for c in cells:
        picker.add(c.label, c.confidence, c.review, c)
    smear = analysis_page(["monocyte"], picker, {"monocyte": cells}, [], model_id="m", threshold=0.98633)
    assert "98.62% · review" in smear and ">99%" not in smear and "review threshold 98.6% confidence" in smear


def test_the_failed_files_note_says_every_other_file_was_read_only_when_one_was() -> None:
    """A run whose every file failed: report.html said "Nothing was analysed", then under the failed files "every
    other field was analysed" (wbc 0.33.0 in progress); `wbc classify --report` said "every other file was
    classified" over 0 cells. The note says so only where some field or file was read."""
    from wbc.evaluate.classified import GalleryPicker, analysis_page, classified_page
    from wbc.types import Prediction

    errors = [("a.jpg", "a.jpg: bad"), ("b.jpg", "b.jpg: bad")]
    none = analysis_page(["neutrophil"], GalleryPicker(), {}, [], model_id="m", n_fields=0, errors=errors)
    assert "No field could be read" in none and "every other field was analysed" not in none
    assert "These files failed (also in errors.csv).</p>" in none
    some = analysis_page(["neutrophil"], GalleryPicker(), {}, [], model_id="m", n_fields=3, errors=errors)
    assert "These files failed (also in errors.csv); every other field was analysed.</p>" in some
    none = classified_page([], ["neutrophil"], {}, model_id="m", errors=errors)
    assert "every other file" not in none and "These files were skipped.</p>" in none
    some = classified_page([Prediction("neutrophil", 0.9, False, {}, path="c.png")], ["neutrophil"], {},
                           model_id="m", errors=errors)
    assert "These files were skipped; every other file was classified.</p>" in some
