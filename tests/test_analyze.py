"""End-to-end smear analysis: Python API, CLI outputs, bad input, crops; synthetic data, a tiny real ONNX."""

from __future__ import annotations

import csv
import html
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from tiny_models import mean_colour_model
from wbc.analyze import analyze_image, mask_to_polygons
from wbc.batch import analyze_paths
from wbc.crops import DEFAULT_CELL_FRACTION, cell_fraction_of, crop_cell, measure_cell_fraction
from wbc.labels import CLASSES
from wbc.model import load_model
from wbc.segment.classical import ClassicalSegmenter
from wbc.synthetic import synthetic_smear
from wbc.types import Cell


def make_colour_classifier(path: Path, size: int = 32, extra: dict | None = None) -> Path:
    """A real ONNX classifier (mean colour -> linear layer) with wbc metadata; needs the onnx package."""
    w = np.random.default_rng(0).normal(0, 3, (len(CLASSES), 3))
    return mean_colour_model(path, size, w, "tiny-colour", extra)


@pytest.fixture(scope="module")
def clf(tmp_path_factory: pytest.TempPathFactory):
    return load_model(make_colour_classifier(tmp_path_factory.mktemp("m") / "tiny.onnx"))


def test_analyze_image_labels_every_found_cell(clf) -> None:
    rgb, _boxes, *_ = synthetic_smear(n_wbc=2, seed=5)
    res = analyze_image(rgb, clf, ClassicalSegmenter(), name="x.png")
    assert (res.width, res.height) == (640, 480) and len(res.cells) == 2
    for c in res.cells:
        assert c.prediction is not None and c.prediction.label in CLASSES
        assert sum(c.prediction.probabilities.values()) == pytest.approx(1, abs=1e-4)
    assert sum(res.counts(CLASSES).values()) == 2 and res.model_id == "tiny-colour"


def test_smear_cells_are_never_called_platelets(tmp_path: Path) -> None:
    """A classifier that favours "platelet" for every colour still labels smear cells as something nucleated."""
    from wbc.classify import predict_cells

    w = np.zeros((len(CLASSES), 3))
    w[CLASSES.index("platelet")] = 5.0  # every cell is brighter than the 0.5 mean -> platelet wins
    platelet_lover = load_model(mean_colour_model(tmp_path / "p.onnx", 32, w, "platelet-lover"))
    cells = np.full((3, 32, 32, 3), 220, np.uint8)
    assert {p.label for p in predict_cells(platelet_lover, cells)[0]} == {"platelet"}
    preds, _ = predict_cells(platelet_lover, cells, exclude=("platelet",))
    for p in preds:
        assert p.label != "platelet" and p.probabilities["platelet"] == 0.0
        assert abs(sum(p.probabilities.values()) - 1.0) < 1e-5
    rgb, *_ = synthetic_smear(n_wbc=2, seed=5)
    res = analyze_image(rgb, platelet_lover, ClassicalSegmenter(), name="x.png")
    assert res.cells and all(c.prediction.label != "platelet" for c in res.cells)


def test_a_smear_cell_the_model_takes_for_a_platelet_is_flagged_naming_platelet(tmp_path: Path) -> None:
    """The detector boxes giant platelets and clumps (217 of PBC's 240 validation platelet images): `wbc analyze`
    answered each among the nucleated classes and counted it (as it still does), but only flagged "confidence 0.44",
    with the platelet named nowhere: the outside check read the probabilities after platelet was removed (wbc 0.32.0).
    Each such cell now names platelet in its reason, and the terminal and report.html count them."""
    from typer.testing import CliRunner

    from wbc.classify import outside_class, predict_cells
    from wbc.cli import app

    w = np.zeros((len(CLASSES), 3))
    w[CLASSES.index("platelet")] = 5.0  # every cell is brighter than the 0.5 mean -> platelet wins
    path = mean_colour_model(tmp_path / "p.onnx", 32, w, "platelet-lover")
    preds, _ = predict_cells(load_model(path), np.full((3, 32, 32, 3), 220, np.uint8), exclude=("platelet",))
    for p in preds:
        assert p.label != "platelet" and p.review and p.outside == "platelet"
        assert [outside_class(r) for r in p.reasons if outside_class(r)] == ["platelet"], p.reasons
    cv2.imwrite(str(tmp_path / "f.png"), synthetic_smear(n_wbc=3, seed=5)[0][:, :, ::-1])
    res = CliRunner().invoke(app, ["analyze", str(tmp_path / "f.png"), "-o", str(tmp_path / "out"), "--model",
                                   str(path), "--segmenter", "classical", "--threads", "1"])
    assert res.exit_code == 0, res.output
    cells = list(csv.DictReader((tmp_path / "out" / "cells.csv").open()))
    assert cells and all("the model favours platelet (" in c["review_reasons"] for c in cells)
    said = f"{len(cells)} of {len(cells)} cells are most likely a class a smear's differential does not count " \
           f"(platelet {len(cells)}): each is counted in the class shown"
    assert said in " ".join(res.output.split())
    assert said.replace("'", "&#39;") in (tmp_path / "out" / "report.html").read_text()


def test_without_classes_the_platelet_flag_does_not_speak_of_chosen_classes(tmp_path: Path) -> None:
    """A plain `wbc analyze` (no --classes) flagged a detection taken for a platelet "outside the chosen classes",
    and the run said "most likely a class outside the chosen ones ... counted in the chosen class shown", though no
    class had been chosen (wbc 0.33.0 in progress). Without --classes the reason and the sentence speak of the classes
    a smear's differential counts; with --classes they still speak of the chosen ones; and a reason written either
    way, or by an older wbc, is still read (cells.csv and the fields' JSON keep the reasons only)."""
    from wbc.classify import outside_class, outside_note, predict_cells

    w = np.zeros((len(CLASSES), 3))
    w[CLASSES.index("platelet")] = 5.0  # every cell is brighter than the 0.5 mean -> platelet wins
    clf = load_model(mean_colour_model(tmp_path / "p.onnx", 32, w, "platelet-lover"))
    cells = np.full((2, 32, 32, 3), 220, np.uint8)
    plain, _ = predict_cells(clf, cells, exclude=("platelet",))
    for p in plain:
        [reason] = [r for r in p.reasons if outside_class(r) == "platelet"]
        assert reason.startswith("the model favours platelet (") and reason.endswith(
            "), outside the classes counted on smears")
        assert not any("chosen" in r for r in p.reasons)
    note = outside_note(plain) or ""
    assert note.startswith("2 of 2 cells are most likely a class a smear's differential does not count (platelet 2)")
    assert "chosen" not in note
    five, _ = predict_cells(clf, cells, exclude=("platelet",), classes=("lymphocyte", "neutrophil"))
    assert all(outside_class(r) == "platelet" for r in five[0].reasons if "favours" in r)
    assert any(r.endswith("outside the chosen classes") for r in five[0].reasons)
    assert (outside_note(five) or "").startswith("2 of 2 cells are most likely a class outside the chosen ones (")
    # a --classes set that holds platelet did not leave it out: a smear's differential did
    named, _ = predict_cells(clf, cells, exclude=("platelet",), classes=("lymphocyte", "platelet"))
    assert any(r.endswith("outside the classes counted on smears") for r in named[0].reasons)
    assert outside_class("the model favours platelet (0.99), outside the chosen classes") == "platelet"  # older JSON


def test_no_doc_says_a_smear_cell_is_never_a_platelet() -> None:
    """docs/api.md said smear_label_set lacks platelets, "which no smear cell is", and docs/smear_analysis.md that "a
    smear cell is never called one", after wbc 0.33.0 began flagging the detections the model takes for platelets."""
    root = Path(__file__).resolve().parents[1]
    api, smears = (" ".join((root / "docs" / f).read_text().split()) for f in ("api.md", "smear_analysis.md"))
    assert "which no smear cell is" not in api and "a smear cell is never called one" not in smears
    for text in (api, smears):
        assert "a detection the model takes for a platelet is counted in the class shown and flagged for review, " \
               "its reason naming platelet" in text


def test_the_smear_docs_name_what_post_analyze_answers() -> None:
    """docs/smear_analysis.md said three times that the JSON's `settings`, `sha1` and `wbc_version` are "not in `POST
    /analyze`'s answer", which gives them since wbc 0.37.0 (`wbc.batch.stamped`; the answer's schema, AnalyzeBody)."""
    pytest.importorskip("fastapi")
    from wbc.serve.app import AnalyzeBody

    smears = " ".join((Path(__file__).resolve().parents[1] / "docs" / "smear_analysis.md").read_text().split())
    answered = {"settings", "sha1", "wbc_version"}
    assert answered <= set(AnalyzeBody.model_fields), sorted(AnalyzeBody.model_fields)
    assert "not in `POST /analyze`'s answer" not in smears
    assert smears.count("in `POST /analyze`'s answer too") == len(answered)


def test_the_report_of_a_run_whose_every_file_failed_says_no_field_could_be_read(clf, tmp_path: Path) -> None:
    """A folder of truncated transfers: report.html opened with "No WBC was found." and a differential of dashes, a
    result for a slide of which nothing was analysed; the failed files came last (wbc 0.32.0)."""
    from typer.testing import CliRunner

    from wbc.cli import app

    (tmp_path / "in").mkdir()
    for name in ("a.jpg", "b.jpg"):
        (tmp_path / "in" / name).write_bytes(b"junk")
    res = CliRunner().invoke(app, ["analyze", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model",
                                   str(clf.path), "--segmenter", "classical", "--threads", "1"])
    assert res.exit_code == 1, res.output
    page = (tmp_path / "out" / "report.html").read_text()
    assert "No WBC was found" not in page and "<h2>Differential</h2>" not in page
    assert "No field could be read</b>: all 2 files failed (listed below)" in page
    assert page.count("a.jpg") == page.count("b.jpg") == 1  # in the list of failed files


def test_empty_field_is_a_valid_empty_result(clf) -> None:
    rgb, *_ = synthetic_smear(n_wbc=0, seed=6)
    res = analyze_image(rgb, clf, ClassicalSegmenter())
    assert res.cells == [] and res.warnings


def test_crop_is_scale_normalised() -> None:
    """The same cell imaged at two magnifications gives (nearly) the same crop."""
    crops = []
    for scale in (1.0, 2.0):
        rgb = np.full((int(200 * scale), int(200 * scale), 3), 220, np.uint8)
        cv2.circle(rgb, (int(100 * scale), int(100 * scale)), int(30 * scale), (120, 80, 200), -1)
        m = np.zeros(rgb.shape[:2], bool)
        m[rgb[:, :, 0] < 200] = True
        ys, xs = np.nonzero(m)
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        cell = Cell(1, box, m[box[1] : box[3], box[0] : box[2]], m[box[1] : box[3], box[0] : box[2]])
        crops.append(crop_cell(rgb, cell, 64, fraction=0.5).astype(np.float32))
    assert np.abs(crops[0] - crops[1]).mean() < 3
    disc = (crops[0][:, :, 0] < 170).sum() / 64**2  # disc area / crop area = pi/4 * fraction^2
    assert disc == pytest.approx(np.pi / 4 * 0.25, rel=0.1)


def test_crop_near_the_border_mirrors_the_field() -> None:
    rgb = np.full((100, 100, 3), 200, np.uint8)
    m = np.ones((20, 20), bool)
    crop = crop_cell(rgb, Cell(1, (0, 0, 20, 20), m, m), 48, fraction=0.3)
    assert crop.shape == (48, 48, 3) and crop.min() == 200  # no black padding


def test_cell_fraction_from_metadata_or_default(tmp_path: Path) -> None:
    assert cell_fraction_of(load_model(make_colour_classifier(tmp_path / "a.onnx"))) == DEFAULT_CELL_FRACTION
    m = load_model(make_colour_classifier(tmp_path / "b.onnx", extra={"cell_fraction": 0.6}))
    assert cell_fraction_of(m) == pytest.approx(0.6)


def test_measure_cell_fraction_on_synthetic_crops() -> None:
    crops = []
    for seed in range(3):
        rgb, boxes, _, _cell = synthetic_smear(n_wbc=1, seed=seed)
        x0, y0, x1, y1 = boxes[0]
        cx, cy = (x0 + x1) // 2 + 150, (y0 + y1) // 2 + 150
        padded = cv2.copyMakeBorder(rgb, 150, 150, 150, 150, cv2.BORDER_REFLECT_101)
        crops.append(padded[cy - 150 : cy + 150, cx - 150 : cx + 150])
    true = (np.sqrt(4 / np.pi * np.pi * (0.75 * 70) ** 2)) / 300  # disc diameter / side
    assert measure_cell_fraction(crops) == pytest.approx(true, rel=0.12)


def test_polygons_round_trip_the_mask() -> None:
    m = np.zeros((40, 50), np.uint8)
    cv2.circle(m, (25, 20), 12, 1, -1)
    polys = mask_to_polygons(m.astype(bool), (100, 200))
    back = np.zeros((300, 200), np.uint8)
    cv2.fillPoly(back, [np.asarray(p, np.int32) for p in polys], 1)
    assert int(back[200:240, 100:150].sum()) == pytest.approx(int(m.sum()), rel=0.1)


def _write_inputs(folder: Path) -> None:
    folder.mkdir()
    rgb, *_ = synthetic_smear(n_wbc=2, seed=7)
    cv2.imwrite(str(folder / "a.jpg"), rgb[:, :, ::-1])
    rgb16 = rgb[:, :, ::-1].astype(np.uint16) * 257  # a 16-bit colour camera's field (a grey one is refused)
    cv2.imwrite(str(folder / "rgb16.png"), rgb16)
    rgba = np.dstack([rgb[:, :, ::-1], np.full(rgb.shape[:2], 255, np.uint8)])
    cv2.imwrite(str(folder / "rgba.png"), rgba)
    empty, *_ = synthetic_smear(n_wbc=0, seed=8)
    cv2.imwrite(str(folder / "empty.png"), empty[:, :, ::-1])
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")


def test_analyze_paths_writes_everything_and_survives_bad_files(clf, tmp_path: Path) -> None:
    _write_inputs(tmp_path / "in")
    out = tmp_path / "out"
    summary = analyze_paths([tmp_path / "in"], out, clf, ClassicalSegmenter())
    assert summary.analyzed == 4 and len(summary.docs) == 4 and len(summary.errors) == 1
    errors = list(csv.DictReader((out / "errors.csv").open()))
    assert len(errors) == 1 and "corrupt.jpg" in errors[0]["error"]
    doc = json.loads((out / "a.json").read_text())
    assert {"image", "width", "height", "cells", "counts", "model_id"} <= doc.keys()
    assert len(doc["cells"]) == 2
    c = doc["cells"][0]
    assert {
        "id",
        "box",
        "nucleus",
        "cell",
        "area_px",
        "touches_border",
        "label",
        "confidence",
        "review",
        "probabilities",
    } <= c.keys()
    assert len(c["cell"][0]) >= 3 and c["label"] in CLASSES
    assert json.loads((out / "empty.json").read_text())["cells"] == []
    png = cv2.imread(str(out / "a.png"))
    assert png.shape == (480, 640, 3)
    rows = list(csv.DictReader((out / "cells.csv").open()))
    assert len(rows) == sum(d["n_cells"] for d in summary.docs)
    diff = list(csv.DictReader((out / "differential.csv").open()))
    pooled = sum(int(r["count"]) for r in diff if r["image"] == "ALL")
    assert pooled == len(rows)


def test_a_grey_field_is_not_reported_as_a_field_without_wbcs(clf, tmp_path: Path) -> None:
    """Every segmenter finds WBCs by their stain's colours: a grey field (a monochrome camera, a grey JPEG) gave
    "no white blood cell found", a valid empty result counted into the run. It is refused by name, into errors.csv."""
    from wbc.errors import ImageReadError
    from wbc.examples import example_fields
    from wbc.io import read_image

    rgb = read_image(example_fields()[0])
    grey = np.repeat(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[:, :, None], 3, axis=2)
    with pytest.raises(ImageReadError, match=r"^grey\.png: a grey image .*analyse the colour original$"):
        analyze_image(grey, None, ClassicalSegmenter(), name="grey.png")
    assert analyze_image(rgb, None, ClassicalSegmenter(), name="colour.png").cells  # the colour original is analysed
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "colour.png"), rgb[:, :, ::-1])
    cv2.imwrite(str(tmp_path / "in" / "grey.jpg"), grey[:, :, 0])  # a one-channel JPEG, as a monochrome camera's
    summary = analyze_paths([tmp_path / "in"], tmp_path / "out", clf, ClassicalSegmenter(), draw=False)
    assert [d["image"] for d in summary.docs] == [str(tmp_path / "in" / "colour.png")]
    errors = list(csv.DictReader((tmp_path / "out" / "errors.csv").open()))
    assert len(errors) == 1 and "grey.jpg: a grey image" in errors[0]["error"]


def test_analyze_image_refuses_arrays_that_are_not_uint8_rgb() -> None:
    """The Python API took any array: a 16-bit one got other cells and labels, a float one was called "too dark", a
    2-D one crashed in numpy. It names the array and says what it expects, as read_image would have converted."""
    from wbc.errors import ImageReadError

    rgb, *_ = synthetic_smear(n_wbc=1, seed=3)
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    for arr in (rgb.astype(np.uint16) * 257, rgb / np.float32(255), rgb.astype(np.float32), grey, rgba):
        with pytest.raises(ImageReadError, match=r"^a\.tif: expected an 8-bit RGB array .*wbc\.io\.read_image"):
            analyze_image(arr, None, ClassicalSegmenter(), name="a.tif")
    assert len(analyze_image(rgb, None, ClassicalSegmenter(), name="a.tif").cells) == 1


def test_a_field_too_small_within_its_canvas_is_refused() -> None:
    """The minimum side was checked on the whole page only: a 24 px field pasted onto a 400 px page was segmented and
    a "cell" in it classified."""
    from wbc.errors import ImageReadError

    rgb, *_ = synthetic_smear(n_wbc=1, seed=3)
    page = np.full((400, 400, 3), 255, np.uint8)
    page[100:124, 150:174] = cv2.resize(rgb, (24, 24), interpolation=cv2.INTER_AREA)
    with pytest.raises(ImageReadError, match=r"^page\.png \(the field within its canvas\): 24x24 is too small"):
        analyze_image(page, None, ClassicalSegmenter(), name="page.png")


def test_oversized_image_is_refused_with_a_message(clf, monkeypatch: pytest.MonkeyPatch) -> None:
    import wbc.analyze
    from wbc.errors import ImageReadError

    monkeypatch.setattr(wbc.analyze, "MAX_ANALYZE_PIXELS", 1000)
    with pytest.raises(ImageReadError, match=r"big\.png.*over the analysis limit"):
        analyze_image(np.zeros((100, 100, 3), np.uint8), clf, ClassicalSegmenter(), name="big.png")


@pytest.mark.slow
def test_cli_analyze_default_folder(clf, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    _write_inputs(tmp_path / "data" / "raw_images")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "wbc",
            "analyze",
            "--output",
            "out",
            "--model",
            str(clf.path),
            "--segmenter",
            "classical",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "1 file(s) failed" in r.stderr
    assert (tmp_path / "out" / "differential.csv").is_file() and (tmp_path / "out" / "a.png").is_file()
    page = (tmp_path / "out" / "report.html").read_text()  # written by default, for a person to check
    assert "report: out/report.html" in r.stderr and "<h1>Smear analysis</h1>" in page and "corrupt.jpg" in page
    assert "<tr><td>erythroblast</td>" in page  # the differential lists every class the model answers among in a smear
    assert "<tr><td>platelet</td>" not in page  # which platelets are not (since wbc 0.30.0)
    r = subprocess.run([sys.executable, "-m", "wbc", "analyze", "--output", "out5", "--model", str(clf.path),
                        "--segmenter", "classical", "--classes", "5part"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    table = (tmp_path / "out5" / "report.html").read_text().split("<h2>Differential</h2>")[1].split("</table>")[0]
    assert re.findall(r"<tr><td>(\w+)</td>", table) == ["basophil", "eosinophil", "lymphocyte", "monocyte",
                                                         "neutrophil"]


def test_cli_analyze_tells_cells_from_wbcs_and_gives_no_rate_without_wbcs(tmp_path: Path) -> None:
    """A field whose only cells are NRBCs (the shipped example BloodImage_00021.jpg): the console said "2 WBC(s)" and
    "0.0 per 100 WBCs", differential.csv 0.0 with a 95 % interval of 0-100, report.html "2 WBCs found" (wbc 0.28.0):
    its NRBCs are no WBCs, and a rate per 100 WBCs with no WBC counted has no value."""
    from typer.testing import CliRunner

    from wbc.cli import app

    w = np.zeros((len(CLASSES), 3))
    w[CLASSES.index("erythroblast")] = 5.0  # every cell is brighter than the 0.5 mean -> erythroblast wins
    model = mean_colour_model(tmp_path / "e.onnx", 32, w, "erythroblast-lover")
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "f.png"), synthetic_smear(n_wbc=2, seed=5)[0][:, :, ::-1])
    res = CliRunner().invoke(app, ["analyze", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model",
                                   str(model), "--segmenter", "classical", "--no-draw"])
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert "1 image(s), 2 cell(s) (0 WBC(s))" in out and "erythroblast 2 n/a (no WBC counted)" in out
    rows = {(r["image"], r["class"]): r for r in csv.DictReader((tmp_path / "out" / "differential.csv").open())}
    assert [rows["ALL", "erythroblast"][k] for k in ("count", "total", "percent", "ci95_low", "ci95_high")] == [
        "2", "0", "", "", ""]
    page = " ".join((tmp_path / "out" / "report.html").read_text().split())
    assert "2 cells found in 1 smear fields" in page and "0 WBCs, the differential's total" in page
    assert "n/a (no WBC counted)" in page and "WBCs found" not in page


def test_cli_analyze_errors_are_one_line(tmp_path: Path) -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "wbc",
            "analyze",
            str(tmp_path / "nothing.jpg"),
            "--output",
            str(tmp_path / "o"),
            "--model",
            str(tmp_path / "none.onnx"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr and "error" in r.stderr



def test_a_smear_label_set_without_a_wbc_class_is_refused_as_the_http_api_refuses_it(clf, tmp_path: Path) -> None:
    """``/analyze?classes=platelet`` is 422 since wbc 0.33.0, but the check lived in the server: the Python API called
    every WBC a platelet (``counts == {'platelet': 1}``) and `wbc analyze --classes platelet` exited 0 without a
    differential or a report. The library refuses it, before any field, in the server's words."""
    import wbc
    from wbc.errors import WbcError

    said = "classes 'platelet': none is a class a smear cell can be (a smear analysis never counts platelets)"
    _write_inputs(tmp_path / "in")
    field = tmp_path / "in" / "a.png"
    platelet = clf.with_classes("platelet")
    seg = ClassicalSegmenter()
    for call in (lambda: analyze_image(synthetic_smear(n_wbc=1, seed=1)[0], platelet, seg),
                 lambda: wbc.analyze_images([field], platelet, seg),
                 lambda: wbc.analyze_images([field], platelet, seg, errors=[]),
                 lambda: analyze_paths([field], tmp_path / "out", platelet, seg)):
        with pytest.raises(WbcError, match=re.escape(said)):
            call()
    assert not (tmp_path / "out").exists()
    if importlib.util.find_spec("fastapi"):  # the server's extra
        from wbc.serve.app import UploadProblem, smear_answered

        with pytest.raises(UploadProblem) as info:
            smear_answered(platelet)
        assert str(info.value.detail).startswith(said)
    r = subprocess.run([sys.executable, "-m", "wbc", "analyze", str(field), "-o", str(tmp_path / "cli"), "--model",
                        str(clf.path), "--segmenter", "classical", "--classes", "platelet"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and said in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "cli").exists()

def test_an_eyepiece_photo_of_a_smear_is_classified_without_its_black_surround(monkeypatch) -> None:
    """A smear photographed through an eyepiece: the field is segmented as it is, and the cells are classified from
    the field with the black outside its round field of view turned background, so a crop near the rim and the
    red-cell colour calibration never see the black."""
    import wbc.analyze as analyze

    rgb, _boxes, *_ = synthetic_smear(n_wbc=3, seed=2)
    h, w = rgb.shape[:2]
    yy, xx = np.mgrid[:h, :w]
    photo = rgb.copy()
    photo[np.hypot(xx - w / 2, yy - h / 2) > 0.55 * h] = 0  # the corners are black
    seen: list[np.ndarray] = []
    real_crops = analyze.crop_cells

    def crops(field: np.ndarray, *args, **kwargs):  # what each crop is cut from
        seen.append(field)
        return real_crops(field, *args, **kwargs)

    monkeypatch.setattr(analyze, "crop_cells", crops)
    cells = ClassicalSegmenter().segment(rgb)
    analyze.classify_cells(photo, cells, load_model(None))
    assert seen and all(int(f.max(axis=2)[photo.max(axis=2) == 0].min()) > 100 for f in seen)  # no black left
    assert all(c.prediction is not None for c in cells)
    # a cell the disc's edge cuts is flagged for review, saying why; the cells inside it are not flagged for that
    centre = [((c.box[0] + c.box[2]) / 2 - w / 2, (c.box[1] + c.box[3]) / 2 - h / 2) for c in cells]
    far = int(np.argmax([np.hypot(*xy) for xy in centre]))
    radius = float(np.hypot(*centre[far]))
    photo = rgb.copy()
    photo[np.hypot(xx - w / 2, yy - h / 2) > radius] = 0  # the edge through the farthest cell's centre
    cells = ClassicalSegmenter().segment(rgb)
    analyze.classify_cells(photo, cells, load_model(None))
    cut = cells[far]
    assert cut.prediction.review and analyze.FIELD_STOP_REASON in cut.prediction.reasons
    inside = [c for c in cells if max(np.hypot(x - w / 2, y - h / 2) for x in c.box[::2] for y in c.box[1::2]) < radius]
    assert all(analyze.FIELD_STOP_REASON not in c.prediction.reasons for c in inside)


@pytest.mark.parametrize("quality", [None, 90])
def test_a_smear_field_on_a_canvas_is_analysed_within_it(quality) -> None:
    """A field pasted onto a white page (a figure, a screenshot, a dataset that pads its fields), as it is or saved as
    a JPEG whose ringing blurs the page's edge: the page used to be read as the field's glass by its colour
    calibration, and the cells were named otherwise (BCCD validation fields so pasted: 0.824 -> 0.741; as a JPEG,
    0.706). Now the field is analysed within the canvas: the same cells, the same calibration, the same answers,
    their boxes in the image's coordinates."""
    rgb, *_ = synthetic_smear(n_wbc=3, seed=2)
    h, w = rgb.shape[:2]
    page = cv2.copyMakeBorder(rgb, 60, 60, 90, 90, cv2.BORDER_CONSTANT, value=(255, 255, 255))
    if quality:
        _ok, enc = cv2.imencode(".jpg", page[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
        page = cv2.imdecode(enc, cv2.IMREAD_COLOR)[:, :, ::-1].copy()
        _ok, enc = cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
        rgb = cv2.imdecode(enc, cv2.IMREAD_COLOR)[:, :, ::-1].copy()
    clf, seg = load_model(None), ClassicalSegmenter()
    plain, pasted = analyze_image(rgb, clf, seg), analyze_image(page, clf, seg)
    assert (pasted.width, pasted.height) == (w + 180, h + 120) and len(pasted.cells) == len(plain.cells) >= 2
    assert plain.calibration is not None and pasted.calibration is not None
    assert pasted.calibration["background"] == pytest.approx(plain.calibration["background"], abs=3)  # not the page
    for a, b in zip(sorted(plain.cells, key=lambda c: c.box), sorted(pasted.cells, key=lambda c: c.box), strict=True):
        assert b.box[0] - 90 == pytest.approx(a.box[0], abs=2) and b.box[1] - 60 == pytest.approx(a.box[1], abs=2)
        assert b.prediction is not None and a.prediction is not None and b.prediction.label == a.prediction.label


def test_the_black_beside_an_eyepiece_photo_is_not_taken_for_a_canvas() -> None:
    """An eyepiece photo wider than its round field of view has whole black columns at its sides, as uniform as a
    canvas. Cutting them as one changed the field the detector sees (BCCD fields so shown: 2 and 5 more false WBCs,
    validation and train); the field stop is its own case. A field padded with black is still cut to itself."""
    from wbc.analyze import within_canvas

    rgb, *_ = synthetic_smear(n_wbc=3, seed=2)
    h, w = rgb.shape[:2]
    yy, xx = np.mgrid[:h, :w]
    photo = rgb.copy()
    photo[np.hypot(xx - w / 2, yy - h / 2) > 0.58 * h] = 0  # the side columns all black
    assert within_canvas(photo)[1] == (0, 0)
    padded = cv2.copyMakeBorder(rgb, 40, 40, 40, 40, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    field, offset = within_canvas(padded)
    assert offset == (40, 40) and field.shape == rgb.shape


def test_a_file_replaced_under_the_same_name_is_analysed_again(clf, tmp_path: Path) -> None:
    """A camera re-using IMG_0001.jpg: the second run into the same folder kept the first image's cells (wbc
    0.27.0 compared only the name, models and settings). The JSON holds the file's SHA-1; a changed file is redone,
    an unchanged one (even with a new modification time, as `cp` gives) is skipped."""
    import hashlib
    import os

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    two, none = synthetic_smear(n_wbc=2, seed=5)[0], synthetic_smear(n_wbc=0, seed=6)[0]
    cv2.imwrite(str(src / "IMG_0001.png"), two[:, :, ::-1])
    first = analyze_paths([src], out, clf, ClassicalSegmenter(), draw=False)
    doc = json.loads((out / "IMG_0001.json").read_text())
    assert first.docs[0]["n_cells"] == 2
    cv2.imwrite(str(src / "IMG_0001.png"), none[:, :, ::-1])  # today's slide, same name
    os.utime(src / "IMG_0001.png", ns=(1, 1))  # an older time than the JSON's: a time alone would not tell
    second = analyze_paths([src], out, clf, ClassicalSegmenter(), draw=False)
    assert (second.analyzed, second.skipped, second.docs[0]["n_cells"]) == (1, 0, 0)
    assert doc["sha1"] != json.loads((out / "IMG_0001.json").read_text())["sha1"]
    assert json.loads((out / "IMG_0001.json").read_text())["sha1"] == hashlib.sha1(
        (src / "IMG_0001.png").read_bytes()).hexdigest()
    assert len(list(csv.DictReader((out / "cells.csv").open()))) == 0
    os.utime(src / "IMG_0001.png")  # touched, not changed
    third = analyze_paths([src], out, clf, ClassicalSegmenter(), draw=False)
    assert (third.analyzed, third.skipped) == (0, 1)


def test_a_run_resumed_after_an_upgrade_names_the_fields_an_older_wbc_answered(clf, tmp_path: Path) -> None:
    """A run resumed by a newer wbc kept the fields an older one had analysed (their answers, warnings and flags:
    before wbc 0.31.0 no not-a-smear check) and said only "2 done by an earlier run": nothing told which wbc answered
    them. Each field's JSON now holds its ``wbc_version``; a resumed run still keeps them (no hours of work redone
    unasked) but says how many another wbc answered, and that --overwrite redoes them."""
    from typer.testing import CliRunner

    import wbc
    from wbc.cli import app

    (tmp_path / "in").mkdir()
    for i in range(3):
        cv2.imwrite(str(tmp_path / "in" / f"f{i}.png"), synthetic_smear(n_wbc=1, seed=i)[0][:, :, ::-1])
    args = ["analyze", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", str(clf.path), "--segmenter",
            "classical", "--threads", "1", "--no-draw", "--no-report"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "another wbc" not in first.output
    for stem, version in (("f0", None), ("f1", "0.29.1")):  # as wbc 0.30.0 wrote it (no version), and a later one
        path = tmp_path / "out" / f"{stem}.json"
        doc = json.loads(path.read_text())
        assert doc["wbc_version"] == wbc.__version__
        if version is None:
            del doc["wbc_version"]
        else:
            doc["wbc_version"] = version
        path.write_text(json.dumps(doc))
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    said = " ".join(again.output.split())
    assert "3 done by an earlier run" in said  # kept, not redone
    assert (f"2 field(s) in {tmp_path / 'out'}/ were analysed by another wbc (1 by a wbc before 0.31.0, 1 by wbc "
            f"0.29.1), kept with that wbc's answers and warnings; run again with --overwrite to redo every field with "
            f"wbc {wbc.__version__}") in said
    assert "wbc_version" not in json.loads((tmp_path / "out" / "f0.json").read_text())
    redo = CliRunner().invoke(app, [*args, "--overwrite"])
    assert redo.exit_code == 0 and "another wbc" not in redo.output, redo.output
    assert json.loads((tmp_path / "out" / "f0.json").read_text())["wbc_version"] == wbc.__version__


def test_an_identical_file_under_another_name_is_counted_once(clf, tmp_path: Path) -> None:
    """The same image copied under another name (a folder and a copy in it, a double selection) was analysed and
    counted twice; the copy is left out of the run and named with the file it copies."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    rgb = synthetic_smear(n_wbc=2, seed=5)[0]
    cv2.imwrite(str(src / "a.png"), rgb[:, :, ::-1])
    (src / "sub").mkdir()
    (src / "sub" / "a_copy.png").write_bytes((src / "a.png").read_bytes())
    cv2.imwrite(str(src / "b.png"), synthetic_smear(n_wbc=1, seed=7)[0][:, :, ::-1])
    summary = analyze_paths([src], out, clf, ClassicalSegmenter(), draw=False)
    assert [d["image"] for d in summary.docs] == [str(src / "a.png"), str(src / "b.png")]
    assert summary.copies == [(str(src / "sub" / "a_copy.png"), str(src / "a.png"))]
    assert not (out / "a_copy.json").exists()
    rows = list(csv.DictReader((out / "cells.csv").open()))
    assert {r["image"] for r in rows} == {str(src / "a.png"), str(src / "b.png")}
    res = subprocess.run([sys.executable, "-m", "wbc", "analyze", str(src / "a.png"), str(src / "sub" / "a_copy.png"),
                          "--model", str(clf.path), "--segmenter", "classical", "--output", str(tmp_path / "o2"),
                          "--no-draw", "--no-report", "--threads", "1"], capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "COLUMNS": "300", "WBC_NO_REEXEC": "1"})
    assert res.returncode == 0, res.stderr
    note = [ln for ln in res.stderr.splitlines() if "a_copy.png" in ln]
    assert len(note) == 1 and str(src / "a.png") in note[0] and "counted once" in note[0], res.stderr
    assert "1 image(s)" in res.stderr


def test_cli_analyze_says_when_cells_look_unlike_the_training_data(tmp_path: Path) -> None:
    """Another lab's fields (BCCD, the shipped examples): every cell out of distribution. The field's JSON said so, and
    `wbc classify` on the terminal, but `wbc analyze` printed a clean differential (wbc 0.29.0). It now gives the run's
    flagged count and the sentence with its advice, and each cell its machine-readable ``ood``."""
    from typer.testing import CliRunner

    from wbc.cli import app
    from wbc.ood import ADAPT_ADVICE
    from wbc.paths import PACKAGE_DIR

    (tmp_path / "in").mkdir()
    for name in ("BloodImage_00007.jpg", "BloodImage_00015.jpg"):
        (tmp_path / "in" / name).write_bytes((PACKAGE_DIR / "example_fields" / name).read_bytes())
    res = CliRunner().invoke(app, ["analyze", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--threads", "1",
                                   "--no-draw", "--no-report"])
    assert res.exit_code == 0, res.output
    cells = [c for f in ("BloodImage_00007", "BloodImage_00015")
             for c in json.loads((tmp_path / "out" / f"{f}.json").read_text())["cells"]]
    out = " ".join(res.output.split())
    n = len(cells)
    assert n and f"flagged for review: {n}" in out
    assert f"{n} of {n} cells (100%) look unlike the model's training data" in out and ADAPT_ADVICE in out
    assert all(c["ood"] is True for c in cells)


def test_report_html_says_when_cells_look_unlike_the_training_data(tmp_path: Path) -> None:
    """Example BloodImage_00041, another lab's field: the terminal said "2 of 2 cells (100%) look unlike the model's
    training data ...", but report.html, "open it first", gave the differential with no such word at its top (wbc
    0.35.0; only its fields table had each field's). Its summary now gives the terminal's sentence, as `wbc classify
    --report`'s page does, without the commands (it speaks to lab staff). The detection the model takes for a
    platelet is captioned so in its gallery, as on the annotated field, not as any unsure neutrophil."""
    from typer.testing import CliRunner

    from wbc.cli import app
    from wbc.ood import ADAPT_ADVICE
    from wbc.paths import PACKAGE_DIR

    (tmp_path / "in").mkdir()
    name = "BloodImage_00041.jpg"
    (tmp_path / "in" / name).write_bytes((PACKAGE_DIR / "example_fields" / name).read_bytes())
    res = CliRunner().invoke(app, ["analyze", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--threads", "1",
                                   "--no-draw"])
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())
    sentence = said[said.index("2 of 2 cells (100%)"):said.index(f"; {ADAPT_ADVICE}")]
    assert "look unlike the model's training data" in sentence and "adapted to this lab" in sentence
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    summary = html.unescape(" ".join(page[page.index("<section class='summary'>"):page.index("</section>")].split()))
    assert f"<b>Warning:</b> {sentence}.</p>" in summary
    assert "`" not in summary and "wbc adapt" not in summary
    assert re.search(r"<span class='wrong'>platelet\? [\d.]+%", page)


def test_cli_analyze_pools_the_label_set_sentence_over_its_fields(clf, tmp_path: Path) -> None:
    """`wbc classify --classes` says how many cells are most likely a class outside the set, and so does each field's
    JSON, but `wbc analyze --classes`' terminal never said it for the run. It now gives /classify's sentence pooled
    over the fields: for one field, that field's own sentence."""
    from typer.testing import CliRunner

    from wbc.cli import app

    (tmp_path / "in").mkdir()
    for i in range(2):
        cv2.imwrite(str(tmp_path / "in" / f"f{i}.png"), synthetic_smear(n_wbc=3, seed=5 + i)[0][:, :, ::-1])
    base = ["analyze", "-o", str(tmp_path / "out"), "--model", str(clf.path), "--segmenter", "classical",
            "--threads", "1", "--no-draw", "--no-report", "--classes", "neutrophil,lymphocyte"]
    one = CliRunner().invoke(app, [base[0], str(tmp_path / "in" / "f0.png"), *base[1:]])
    assert one.exit_code == 0, one.output
    field = [w for w in json.loads((tmp_path / "out" / "f0.json").read_text())["warnings"]
             if "outside the chosen ones" in w]
    assert len(field) == 1  # the tiny model takes some of these cells for other classes
    assert f"warning: {field[0]}" in " ".join(one.output.split())
    both = CliRunner().invoke(app, [base[0], str(tmp_path / "in"), *base[1:]])
    assert both.exit_code == 0, both.output
    docs = [json.loads((tmp_path / "out" / f"f{i}.json").read_text()) for i in range(2)]
    n = sum(c["label"] is not None for d in docs for c in d["cells"])
    k = sum(any("outside the chosen classes" in r for r in c["review_reasons"]) for d in docs for c in d["cells"])
    assert f"warning: {k} of {n} cells are most likely a class outside the chosen ones (" in " ".join(
        both.output.split())
    plain = CliRunner().invoke(app, [base[0], str(tmp_path / "in"), *base[1:-2], "-o", str(tmp_path / "all")])
    assert plain.exit_code == 0 and "outside the chosen ones" not in plain.output


def _legend_rows(png: Path) -> int:
    """How many rows the legend of an annotated PNG has: its opaque white panel's height over a row's."""
    img = cv2.imread(str(png))
    h, w = img.shape[:2]
    ys, _xs = np.nonzero(np.all(img == 255, axis=-1))
    return (int(ys.max()) - int(ys.min()) + 1 - 5) // (int(24 * max(0.45, min(h, w) / 900)) + 4)


@pytest.mark.parametrize("classes", [None, "5part"])
def test_smear_outputs_list_the_classes_answered_and_no_platelet_rate(clf, tmp_path: Path, classes: str | None
                                                                      ) -> None:
    """`wbc analyze` never answers "platelet" (wbc.labels.NOT_IN_SMEAR_DETECTIONS), yet differential.csv, report.html
    and every PNG's legend gave it a measured-looking 0 per 100 WBCs with an interval; a five-part run listed the
    model's eight classes, ig and erythroblasts at 0 with intervals too (wbc 0.29.0). Each lists the classes answered
    among, without platelets; cells.csv keeps a probability column per class of the model."""
    from typer.testing import CliRunner

    from wbc.cli import app

    cv2.imwrite(str(tmp_path / "f.png"), synthetic_smear(n_wbc=3, seed=5)[0][:, :, ::-1])
    args = ["analyze", str(tmp_path / "f.png"), "-o", str(tmp_path / "out"), "--model", str(clf.path),
            "--segmenter", "classical", "--threads", "1"]
    res = CliRunner().invoke(app, args + (["--classes", classes] if classes else []))
    assert res.exit_code == 0, res.output
    want = ["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"] if classes else \
        [c for c in CLASSES if c != "platelet"]
    out = tmp_path / "out"
    rows = list(csv.DictReader((out / "differential.csv").open()))
    assert [r["class"] for r in rows if r["image"] == "ALL"] == want
    assert list(json.loads((out / "f.json").read_text())["counts"]) == want
    page = (out / "report.html").read_text()
    table = page.split("<h2>Differential</h2>")[1].split("</table>")[0]
    assert re.findall(r"<tr><td>(\w+)</td>", table) == want
    assert "Platelets are not counted in smear analysis" in page and "platelets are counted" not in page
    cells = list(csv.DictReader((out / "cells.csv").open()))
    assert cells and "p_platelet" in cells[0]
    flagged = any(c["review"] == "1" for c in cells)
    assert _legend_rows(out / "f.png") == len(want) + flagged  # and a row for the review mark


@pytest.mark.parametrize("edge", ["left", "top"])
def test_a_box_past_the_field_edge_is_checked_against_the_field_stop(edge: str) -> None:
    """A cell whose box reaches past the image's left or top edge (a custom segmenter may give one) is checked on its
    part inside the image: its window started at a negative index, so the wrong columns were read and it was not
    flagged although its visible part lies on the field stop as a box inside the image does."""
    from wbc.analyze import cut_by_field_stop

    stop = np.zeros((200, 300), bool)
    stop[:, :10] = True  # the field stop: the 10 leftmost columns are black
    m = np.ones((60, 60), bool)
    inside, past = Cell(1, (0, 70, 60, 130), m, m), Cell(2, (-20, 70, 40, 130), m, m)  # 60 or 40 columns visible
    if edge == "top":
        stop = np.ascontiguousarray(stop.T)
        inside, past = (Cell(c.id, (c.box[1], c.box[0], c.box[3], c.box[2]), m, m) for c in (inside, past))
    assert cut_by_field_stop(inside, stop) and cut_by_field_stop(past, stop)
    far = np.zeros_like(stop)
    far[-10:, -10:] = True  # a stop far from the cell
    assert not cut_by_field_stop(past, far)
    assert not cut_by_field_stop(Cell(3, (-80, -80, -20, -20), m, m), stop)  # wholly outside the image


def test_a_phone_photo_turned_by_its_exif_is_analysed_as_every_viewer_shows_it(clf) -> None:
    """A smear photo whose JPEG says "turn 90 degrees clockwise to show" (phones write it): the JSON's width, height
    and boxes are those of the photo as every viewer and browser shows it, the same as for the photo saved turned
    (before wbc 0.31.0 they were in the stored pixels' frame: boxes drawn over the photo in a browser missed)."""
    import io

    from PIL import Image

    from wbc.analyze import analyze_bytes

    rgb, boxes, *_ = synthetic_smear(n_wbc=2, seed=5)
    stored = np.ascontiguousarray(np.rot90(rgb, 1))  # the camera's pixels
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(buf, "JPEG", quality=95, exif=exif)
    shown, res = analyze_bytes(buf.getvalue(), "phone.jpg", clf, ClassicalSegmenter())
    assert shown.shape == rgb.shape and (res.width, res.height) == (rgb.shape[1], rgb.shape[0])
    centres = sorted(((c.box[0] + c.box[2]) / 2, (c.box[1] + c.box[3]) / 2) for c in res.cells)
    truth = sorted(((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in boxes)
    assert len(centres) == len(truth)
    assert all(np.hypot(x - u, y - v) < 10 for (x, y), (u, v) in zip(centres, truth, strict=True))


def _disc_cell(cx: float, cy: float, r: float, shape: tuple[int, int]) -> Cell:
    """A disc-shaped cell centred at (cx, cy), cut to an image of ``shape`` as a segmenter gives it."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    m = (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= r * r
    ys, xs = np.nonzero(m)
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    return Cell(1, (x0, y0, x1, y1), m[y0:y1, x0:x1], m[y0:y1, x0:x1],
                touches_border=x0 == 0 or y0 == 0 or x1 == w or y1 == h)


def test_the_share_of_a_cell_beyond_the_image_edge_is_estimated_from_its_outline() -> None:
    """A disc cut by one edge, or with its box reaching past the edge: the share beyond the image is the disc's; in a
    corner it is understated."""
    from wbc.analyze import share_beyond_image_edge

    shape = (300, 400)
    assert share_beyond_image_edge(_disc_cell(200, 150, 50, shape), shape) == 0.0  # whole
    assert share_beyond_image_edge(_disc_cell(50, 150, 50, shape), shape) < 0.01  # whole, grazing the left edge
    assert abs(share_beyond_image_edge(_disc_cell(400, 150, 50, shape), shape) - 0.5) < 0.02  # half, right edge
    assert abs(share_beyond_image_edge(_disc_cell(150, 0, 60, shape), shape) - 0.5) < 0.02  # half, top edge
    # a quarter in a corner: each edge's chord ends at the other edge, so the sum understates it, but not to a flag's
    assert 0.25 < share_beyond_image_edge(_disc_cell(0, 300, 60, shape), shape) < 0.75
    assert abs(share_beyond_image_edge(_disc_cell(30, 150, 50, shape), shape) - 0.142) < 0.01  # 20 px of 100 cut off
    m = np.ones((60, 60), bool)  # a box 20 px past the left edge whose mask fills it: its visible 40 columns count
    assert share_beyond_image_edge(Cell(1, (-20, 70, 40, 130), m, m), shape) > 0.3


def test_a_cell_cut_by_the_image_edge_is_flagged_for_review_saying_why(clf) -> None:
    """A WBC cut by the image's edge is cropped from its visible part, mirrored past the edge: the classifier sees a
    larger, symmetric cell: PBC val cells with half their box cut off were named wrongly 3 times as often as whole
    (31 of 305 against 12 of 350), 6 of them with no flag (before wbc 0.31.0 nothing flagged such a cell; one cut by
    an eyepiece's field stop was). A cell cut by the edge is flagged, saying why; a whole cell and one cut by less than
    :data:`wbc.analyze.EDGE_CUT_SHARE` are not."""
    from wbc.analyze import EDGE_CUT_SHARE, EDGE_REASON, classify_cells, share_beyond_image_edge

    rgb, *_ = synthetic_smear(n_wbc=1, seed=5)
    shape = rgb.shape[:2]
    half, whole, grazing = (_disc_cell(rgb.shape[1], 200, 50, shape), _disc_cell(200, 200, 50, shape),
                            _disc_cell(42, 300, 50, shape))
    assert share_beyond_image_edge(grazing, shape) < EDGE_CUT_SHARE < share_beyond_image_edge(half, shape)
    cells = [half, whole, grazing]
    classify_cells(rgb, cells, clf)
    assert half.prediction is not None and half.prediction.review and EDGE_REASON in half.prediction.reasons
    assert all(EDGE_REASON not in c.prediction.reasons for c in (whole, grazing) if c.prediction is not None)


def test_a_cell_wider_than_the_field_is_flagged_as_cut(clf) -> None:
    """The 159 px eosinophil of example BloodImage_00041 in a 100 px crop: the detector's box is the whole image and
    its outline meets three edges in short chords (39, 37 and 23 px), so the disc estimate gives 0.025, under
    :data:`wbc.analyze.EDGE_CUT_SHARE`, and the cell, about 40 % of it outside, was not flagged (wbc 0.35.0). A cell
    whose outline reaches two opposite edges is at least as wide as the image: flagged, saying why."""
    from wbc.analyze import EDGE_CUT_SHARE, EDGE_REASON, classify_cells, share_beyond_image_edge

    rgb, *_ = synthetic_smear(n_wbc=1, seed=5)
    rgb = np.ascontiguousarray(rgb[100:200, 100:200])
    m = np.zeros((100, 100), bool)  # the detector's outline: a lobe across the crop, narrowing at each edge
    m[1:99, 30:70] = True
    m[10:60, 1:99] = True
    m[0, 40:63] = m[20:59, 0] = m[20:57, -1] = True
    spanning = Cell(1, (0, 0, 100, 100), m, m, touches_border=True)
    grazing = _disc_cell(12.4, 50, 12.5, (100, 100))  # grazing one edge: not flagged, as before
    assert share_beyond_image_edge(spanning, rgb.shape) < EDGE_CUT_SHARE  # what the estimate alone says
    classify_cells(rgb, [spanning], clf)
    assert spanning.prediction is not None and spanning.prediction.review
    assert EDGE_REASON in spanning.prediction.reasons
    assert share_beyond_image_edge(grazing, rgb.shape) < EDGE_CUT_SHARE
    classify_cells(rgb, [grazing], clf)
    assert grazing.prediction is not None and EDGE_REASON not in grazing.prediction.reasons


@pytest.mark.real_data
def test_a_wbc_cut_in_half_by_the_image_edge_is_flagged(real_data: Path) -> None:
    """A PBC validation myelocyte (the training lab's own colours) cut through the middle of its box by the image's
    right edge was answered "basophil" at 0.999, counted and not flagged (before wbc 0.31.0); it is flagged now."""
    from wbc.analyze import EDGE_REASON
    from wbc.io import read_image
    from wbc.segment import get_segmenter

    rgb = read_image(real_data / "pbc" / "ig" / "MY_513277.jpg")
    seg = get_segmenter("auto")
    h, w = rgb.shape[:2]
    c = min(seg.segment(rgb), key=lambda c: ((c.box[0] + c.box[2]) / 2 - w / 2) ** 2
            + ((c.box[1] + c.box[3]) / 2 - h / 2) ** 2)
    cut = np.ascontiguousarray(rgb[:, : (c.box[0] + c.box[2]) // 2])
    res = analyze_image(cut, load_model(None), seg, name="MY_513277_cut.png")
    [edge] = [c for c in res.cells if c.touches_border]
    assert edge.prediction is not None and edge.prediction.review and EDGE_REASON in edge.prediction.reasons
