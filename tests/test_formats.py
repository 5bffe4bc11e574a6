"""Output formats (wbc.formats) and resumable, atomic batch runs of the local engine (wbc.batch)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from tiny_models import mean_colour_model
from wbc.batch import run_local
from wbc.formats import neutralise, write_predictions_csv
from wbc.labels import CLASSES
from wbc.model import load_model
from wbc.segment.classical import ClassicalSegmenter
from wbc.synthetic import synthetic_smear
from wbc.types import Prediction


@pytest.fixture(scope="module")
def clf(tmp_path_factory: pytest.TempPathFactory):
    w = np.random.default_rng(0).normal(0, 3, (len(CLASSES), 3))
    return load_model(mean_colour_model(tmp_path_factory.mktemp("m") / "tiny.onnx", 32, w, "tiny-colour"))


def write_fields(folder: Path, n: int, size: tuple[int, int] = (240, 320)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        rgb, *_ = synthetic_smear(n_wbc=2, seed=i, size=size, scale=0.6)
        out.append(folder / f"field_{i:02d}.png")
        cv2.imwrite(str(out[-1]), rgb[:, :, ::-1])
    return out


def test_formula_cells_are_neutralised_and_numbers_kept(tmp_path: Path) -> None:
    assert neutralise("=1+1") == "'=1+1" and neutralise("+SUM(A1)") == "'+SUM(A1)"
    assert neutralise("@cmd") == "'@cmd" and neutralise("-2+3") == "'-2+3"
    assert neutralise("-0.25") == "-0.25" and neutralise(-3) == -3 and neutralise(0.5) == 0.5
    assert neutralise("\tx") == "'\tx" and neutralise("\rx") == "'\rx"  # skipped by some spreadsheets
    p = Prediction(label="neutrophil", confidence=0.9, review=False, probabilities={"neutrophil": 0.9},
                   path="=HYPERLINK(\"http://x\")")
    write_predictions_csv(tmp_path / "p.csv", [p], ["neutrophil"])
    row = next(csv.DictReader((tmp_path / "p.csv").open()))
    assert row["path"] == "'=HYPERLINK(\"http://x\")" and row["confidence"] == "0.9000"


def test_read_back_undoes_neutralise_for_every_name() -> None:
    """A file named ``'-scan.png`` was left as it was and read back as ``-scan.png`` (wbc 0.26.0), so its cells fell
    out of report.html's galleries."""
    from wbc.formats import read_back

    names = ["=1+1", "'=1+1", "''=1+1", "'-scan.png", "-scan.png", "'quoted", "''", "'", "-0.5", "'-0.5", "@a",
             "'@a", "\tx", "'\tx", "\rx", "'\rx", "plain.png", "+", "'+", ""]
    assert [read_back(neutralise(v)) for v in names] == names
    assert all(not str(neutralise(v)).startswith(("=", "+", "-", "@", "\t", "\r")) or v in ("-0.5",) for v in names)


def test_formula_file_name_is_neutralised_in_cells_csv(clf, tmp_path: Path) -> None:
    rgb, *_ = synthetic_smear(n_wbc=1, seed=3, size=(240, 320), scale=0.6)
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "=cmd.png"), rgb[:, :, ::-1])
    run_local([tmp_path / "in" / "=cmd.png"], tmp_path / "out", clf, ClassicalSegmenter(), draw=False)
    rows = list(csv.DictReader((tmp_path / "out" / "cells.csv").open()))
    assert rows and all(not r["image"].startswith("=") for r in rows)
    assert float(rows[0]["confidence"]) > 0  # numbers stay numbers


def test_the_csvs_say_why_a_cell_is_flagged(tmp_path: Path) -> None:
    """Both CSVs carry each flagged cell's reasons (the JSON's ``review_reasons``), empty for an accepted cell, so a
    reviewer working from a spreadsheet sees why, as the web page and the JSON show it."""
    flagged = Prediction(label="eosinophil", confidence=0.8, review=True, probabilities={"eosinophil": 0.8},
                         path="a.png", reasons=["confidence 0.80, below the review threshold 0.99",
                                                "colours unlike the training images (OOD score 2.7)"])
    accepted = Prediction(label="neutrophil", confidence=0.999, review=False, probabilities={"neutrophil": 0.999},
                          path="b.png")
    write_predictions_csv(tmp_path / "p.csv", [flagged, accepted], ["eosinophil", "neutrophil"])
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert rows[0]["review_reasons"] == ("confidence 0.80, below the review threshold 0.99; "
                                         "colours unlike the training images (OOD score 2.7)")
    assert rows[1]["review_reasons"] == ""
    write_fields(tmp_path / "in", 1)
    unsure = load_model(mean_colour_model(tmp_path / "flat.onnx", 32, np.zeros((len(CLASSES), 3)), "tiny-flat"))
    run_local([tmp_path / "in"], tmp_path / "out", unsure, ClassicalSegmenter(), draw=False)
    doc = json.loads((tmp_path / "out" / "field_00.json").read_text())
    cells = list(csv.DictReader((tmp_path / "out" / "cells.csv").open()))
    assert cells and [r["review_reasons"] for r in cells] == ["; ".join(c["review_reasons"]) for c in doc["cells"]]
    assert all(r["review_reasons"].endswith("below the review threshold 0.50") for r in cells)  # no class stands out


def test_rerun_skips_complete_fields_and_rebuilds_the_csvs(clf, tmp_path: Path) -> None:
    paths = write_fields(tmp_path / "in", 4)
    out = tmp_path / "out"
    first = run_local([tmp_path / "in"], out, clf, ClassicalSegmenter())
    assert first.analyzed == 4 and first.skipped == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (out / "field_02.json").unlink()  # as if the run had been stopped before this field
    (out / "field_03.png").unlink()  # ... or between its PNG and its JSON
    again = run_local([tmp_path / "in"], out, clf, ClassicalSegmenter())
    assert (again.analyzed, again.skipped) == (2, 2)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # same bytes as one uninterrupted run
    redo = run_local([tmp_path / "in"], out, clf, ClassicalSegmenter(), overwrite=True)
    assert (redo.analyzed, redo.skipped) == (4, 0)
    # a re-used folder: the CSVs describe this run's inputs only, never stale rows of earlier ones
    run_local([paths[0]], out, clf, ClassicalSegmenter())
    images = {r["image"] for r in csv.DictReader((out / "cells.csv").open())}
    assert images == {str(paths[0])}
    assert {r["image"] for r in csv.DictReader((out / "differential.csv").open())} == {str(paths[0]), "ALL"}


def test_other_model_results_are_not_taken_as_done(clf, tmp_path: Path) -> None:
    write_fields(tmp_path / "in", 2)
    out = tmp_path / "out"
    run_local([tmp_path / "in"], out, clf, ClassicalSegmenter())
    doc = json.loads((out / "field_00.json").read_text())
    doc["model_id"] = "another-model"
    (out / "field_00.json").write_text(json.dumps(doc))
    (out / ".field_01.json.abcd1234").write_text("{half")  # a temporary file left by a killed run
    again = run_local([tmp_path / "in"], out, clf, ClassicalSegmenter())
    assert (again.analyzed, again.skipped) == (1, 1)
    assert json.loads((out / "field_00.json").read_text())["model_id"] == "tiny-colour"
    assert not list(out.glob(".*"))  # no temporary file


def test_a_run_resumed_with_other_settings_redoes_the_fields(clf, tmp_path: Path) -> None:
    """--classes, --tta, --no-colour-calibration and --pixel-size change the answers but not the model's id: a run
    resumed with any of them changed redoes every field (wbc 0.26.0 kept the earlier answers, so a five-part
    report.html left out the cells of the other classes while still counting them). So does a model file rewritten
    under its id (`wbc ood fit`, `wbc quantize`: wbc 0.27.0 kept the answers without OOD flags or calibration)."""
    import hashlib
    import shutil

    from wbc.model import update_metadata

    model = tmp_path / "tiny.onnx"
    shutil.copy(clf.path, model)
    update_metadata(model, colour_reference={"red_cells": {"background": [240.0, 235.0, 230.0], "od": [0.2, 0.6, 0.5]}})
    clf = load_model(model)
    write_fields(tmp_path / "in", 2)
    out = tmp_path / "out"
    run_local([tmp_path / "in"], out, clf, ClassicalSegmenter())
    doc = json.loads((out / "field_00.json").read_text())
    assert doc["settings"] == {"classes": [], "tta": 4, "colour_calibration": True, "pixel_size": None,
                               "model_sha1": hashlib.sha1(model.read_bytes()).hexdigest()}
    refitted = tmp_path / "refitted.onnx"  # the same model id, other statistics
    shutil.copy(model, refitted)
    update_metadata(refitted, temperature=2.0)
    for other, seg in ((clf.with_classes("5part"), ClassicalSegmenter()), (clf.with_tta(1), ClassicalSegmenter()),
                       (clf.with_colour_calibration(False), ClassicalSegmenter()),
                       (clf, ClassicalSegmenter(pixel_size=0.2)), (load_model(refitted), ClassicalSegmenter())):
        redo = run_local([tmp_path / "in"], out, other, seg)
        assert (redo.analyzed, redo.skipped) == (2, 0)
        again = run_local([tmp_path / "in"], out, other, seg)  # the same settings again: nothing to redo
        assert (again.analyzed, again.skipped) == (0, 2)
    five = run_local([tmp_path / "in"], out, clf.with_classes("5part"), ClassicalSegmenter())
    assert five.analyzed == 2
    labels = {r["label"] for r in csv.DictReader((out / "cells.csv").open())}
    assert labels and labels <= {"neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil"}


def test_output_path_that_is_a_file_is_refused_before_work(clf, tmp_path: Path) -> None:
    from wbc.errors import WbcError

    write_fields(tmp_path / "in", 1)
    (tmp_path / "taken").write_text("x")
    with pytest.raises(WbcError, match="taken: exists and is not a folder"):
        run_local([tmp_path / "in"], tmp_path / "taken", clf, ClassicalSegmenter())


def test_every_field_once_under_its_own_name_and_no_output_taken_for_a_field(clf, tmp_path: Path) -> None:
    """wbc 0.26.0 gave ``a/x_2`` and ``c/b/x`` one output name (one field lost from the CSVs), analysed a file twice
    when a folder and the file in it were both named, read an earlier run's annotated PNGs as fields when the output
    folder was inside an input folder, and left a PNG a --no-draw run no longer matched."""
    rgb, *_ = synthetic_smear(n_wbc=1, seed=5, size=(240, 320))
    names = ["a/x.png", "a/x_2.png", "b/x.png", "c/b/x.png"]
    for i, name in enumerate(names):  # four images (a copy of one would be counted once)
        (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / "in" / name), np.roll(rgb, i, axis=1)[:, :, ::-1])
    out = tmp_path / "in" / "results"  # inside the input folder
    first = run_local([tmp_path / "in", tmp_path / "in" / "a" / "x.png"], out, clf, ClassicalSegmenter())
    assert first.analyzed == 4 and len(set(first.stems.values())) == 4
    images = {r["image"] for r in csv.DictReader((out / "cells.csv").open())}
    assert images == {str(tmp_path / "in" / n) for n in names}
    again = run_local([tmp_path / "in"], out, clf, ClassicalSegmenter())  # results/*.png are not fields
    assert (again.analyzed, again.skipped) == (0, 4)
    assert (out / "x.png").is_file()
    redo = run_local([tmp_path / "in"], out, clf.with_tta(1), ClassicalSegmenter(), draw=False)
    assert redo.analyzed == 4 and not list(out.glob("*.png"))


def test_fields_in_folders_below_the_output_folder_are_analysed(clf, tmp_path: Path) -> None:
    """Only the output folder's own files are left out (fe8aa07 left out everything below it: `wbc analyze fields
    -o .` lost every field)."""
    write_fields(tmp_path / "fields", 2)
    run = run_local([tmp_path / "fields"], tmp_path, clf, ClassicalSegmenter())
    assert run.analyzed == 2
    write_fields(tmp_path / "only", 1)
    from wbc.errors import WbcError

    with pytest.raises(WbcError, match="is in the output folder"):
        run_local([tmp_path / "only"], tmp_path / "only", clf, ClassicalSegmenter())


def test_an_earlier_run_s_output_folder_beside_the_fields_is_not_read_as_fields(clf, tmp_path: Path) -> None:
    """`wbc analyze .` then `wbc analyze . -o results_v2`: the second run took the first's annotated PNGs in
    ``results/`` for 3 more fields (wbc 0.31.0: 3 fields read as 6, their drawn labels adding "WBCs"). An annotated PNG
    carries wbc's tag since wbc 0.32.0; one written before it is known by its JSON document, naming another image."""
    from typer.testing import CliRunner

    from wbc.cli import app
    from wbc.errors import WbcError

    d = tmp_path / "d"
    write_fields(d, 2)
    run_local([d], d / "results", clf, ClassicalSegmenter())
    for png in (d / "results").glob("*.png"):  # as a wbc before 0.32.0 left them: without the tag
        cv2.imwrite(str(png), cv2.imread(str(png)))
    second = run_local([d], d / "results_v2", clf, ClassicalSegmenter())
    assert len(second.docs) == 2 and second.analyzed == 2
    assert not [doc["image"] for doc in second.docs if not doc["image"].startswith(f"{d}/field_")]
    assert second.earlier_outputs == {str(d / "results"): 2}
    res = CliRunner().invoke(app, ["analyze", str(d), "-o", str(d / "results_v3"), "--model", str(clf.path),
                                   "--segmenter", "classical", "--threads", "1", "--no-report"])
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())
    assert "2 image(s)" in said
    assert f"note: left out 4 image(s) in output folders of wbc ({d / 'results'}/, {d / 'results_v2'}/)" in said
    with pytest.raises(WbcError, match=r"is in an output folder of wbc .*: annotated results, not smear fields"):
        run_local([d / "results_v2"], tmp_path / "elsewhere", clf, ClassicalSegmenter())


def test_a_run_stopped_part_way_leaves_no_pooled_file_that_disagrees_with_the_json(clf, tmp_path: Path) -> None:
    """A run killed after committing a changed field left the run before's cells.csv and differential.csv, which
    still counted the old image beside its new JSON (wbc 0.31.0). A run removes them before its first commit and
    writes them again at its end."""
    import hashlib

    paths = write_fields(tmp_path / "in", 2)
    out = tmp_path / "out"
    run_local([tmp_path / "in"], out, clf, ClassicalSegmenter())
    rgb, *_ = synthetic_smear(n_wbc=5, seed=99, size=(240, 320), scale=0.6)  # a camera re-uses the name
    cv2.imwrite(str(paths[0]), rgb[:, :, ::-1])

    def killed(i: int, n: int) -> None:  # as SIGKILL right after the first commit
        if i > 1:
            raise SystemExit(137)

    with pytest.raises(SystemExit):
        run_local([tmp_path / "in"], out, clf, ClassicalSegmenter(), progress=killed)
    doc = json.loads((out / "field_00.json").read_text())
    assert doc["sha1"] == hashlib.sha1(paths[0].read_bytes()).hexdigest()  # the new image's field is committed
    for name in ("cells.csv", "differential.csv", "errors.csv"):
        if (out / name).is_file():  # a pooled file left must describe the fields as their JSON does
            rows = [r for r in csv.DictReader((out / name).open()) if r.get("image") == str(paths[0])]
            if name == "cells.csv":
                assert len(rows) == len(doc["cells"])
            if name == "differential.csv":
                assert {r["class"]: int(r["count"]) for r in rows} == {c: int(k) for c, k in doc["counts"].items()}
    run_local([tmp_path / "in"], out, clf, ClassicalSegmenter())  # the same command again writes them
    assert len([r for r in csv.DictReader((out / "cells.csv").open()) if r["image"] == str(paths[0])]) == len(
        doc["cells"])


def test_a_run_that_stops_before_its_first_field_keeps_the_last_summary(
        clf, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run removed the last run's cells.csv, differential.csv, errors.csv and report.html as it started, so one that
    stopped before writing any field (Ctrl-C during the first field; with --engine ray, a mistyped --ray-address)
    lost a summary that still matched the JSON (a development version of wbc 0.32.0). They go only just before the
    first field is written."""
    import wbc.batch

    write_fields(tmp_path / "in", 2)
    out = tmp_path / "out"
    run_local([tmp_path / "in"], out, clf, ClassicalSegmenter())
    (out / "report.html").write_text("<html>the last run's report</html>")
    pooled = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".csv", ".html")}
    assert set(pooled) == {"cells.csv", "differential.csv", "errors.csv", "report.html"}
    rgb, *_ = synthetic_smear(n_wbc=2, seed=7, size=(240, 320), scale=0.6)  # one more field arrives
    cv2.imwrite(str(tmp_path / "in" / "field_02.png"), rgb[:, :, ::-1])

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(wbc.batch, "analyze_job", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_local([tmp_path / "in"], out, clf, ClassicalSegmenter())
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".csv", ".html")} == pooled


def test_a_users_own_fields_beside_wbc_s_results_are_still_fields(clf, tmp_path: Path) -> None:
    """A folder once given as --output (results written beside the fields: `wbc analyze slide/more -o slide`) had
    every image in it left out of later runs for good, the user's own JPEGs and PNGs too, and a file named on the
    command line was refused (a development version of wbc 0.32.0, by a hidden marker file that stayed when the
    results were deleted). Only wbc's own annotated PNGs are left out, and never a file named explicitly."""
    from wbc.batch import plan_jobs, plan_run

    slide = tmp_path / "slide"
    write_fields(slide / "more", 1)  # more/field_00.png: its results go beside the slide's own fields
    rgb, *_ = synthetic_smear(n_wbc=2, seed=3, size=(240, 320), scale=0.6)
    cv2.imwrite(str(slide / "own_field.jpg"), rgb[:, :, ::-1])
    cv2.imwrite(str(slide / "own_scan.png"), rgb[::-1, :, ::-1])  # a PNG of the user's, no JSON beside it
    run_local([slide / "more"], slide, clf, ClassicalSegmenter())
    assert (slide / "field_00.png").is_file() and (slide / "field_00.json").is_file()
    planned, left_out = plan_run([slide], tmp_path / "all")
    assert sorted(j.path for j in planned) == sorted(
        str(p) for p in (slide / "own_field.jpg", slide / "own_scan.png", slide / "more" / "field_00.png"))
    assert left_out == {str(slide): 1}  # the annotated field_00.png
    for name in ("field_00.png", "field_00.json", "cells.csv", "differential.csv", "errors.csv"):
        (slide / name).unlink()  # the user clears the results
    assert len(plan_jobs([slide], tmp_path / "all")) == 3
    assert [j.path for j in plan_jobs([slide / "own_field.jpg"], tmp_path / "one")] == [str(slide / "own_field.jpg")]
    run_local([slide / "more"], slide, clf, ClassicalSegmenter())
    assert [j.path for j in plan_jobs([slide / "field_00.png"])] == [str(slide / "field_00.png")]  # named: analysed


def test_an_own_png_field_in_the_output_folder_is_never_overwritten(clf, tmp_path: Path) -> None:
    """--output naming a folder that holds the user's own PNG fields: a field of the same name elsewhere replaced the
    original image by its annotated copy without a word (wbc 0.31.0). The run is now refused before any work, in one
    line naming the file. wbc's own annotated PNG is still replaced, also one whose JSON a killed run never wrote."""
    from PIL import Image

    from wbc.errors import WbcError

    slide = tmp_path / "slide"
    own = write_fields(slide, 1)[0]  # slide/field_00.png, the user's original
    write_fields(slide / "more", 2)  # more/field_00.png: the same output name
    original = own.read_bytes()
    for draw in (True, False):
        with pytest.raises(WbcError, match=rf"^{re.escape(str(own))}: an image wbc did not write .* give another "
                                           "--output$"):
            run_local([slide / "more"], slide, clf, ClassicalSegmenter(), draw=draw)
        assert own.read_bytes() == original and not (slide / "field_01.json").exists()  # refused before any work
    out = tmp_path / "out"
    run_local([slide / "more"], out, clf, ClassicalSegmenter())
    from wbc.batch import has_annotated_tag

    assert has_annotated_tag(out / "field_00.png") and not has_annotated_tag(own)
    with Image.open(out / "field_00.png") as im:  # a valid PNG, its tag a standard text chunk
        im.load()
        assert im.text["Software"] == "wbc annotated field"
    (out / "field_00.json").unlink()  # a run killed between the PNG's rename and the JSON's
    again = run_local([slide / "more"], out, clf, ClassicalSegmenter())
    assert (again.analyzed, again.skipped) == (1, 1)


def test_a_full_disk_ends_the_run_in_one_line_naming_the_file_and_keeps_the_fields(
        clf, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that fails mid-run (a full disk) ended `wbc analyze` with a 43-line traceback (wbc 0.31.0), in commit
    and in the pooled CSVs alike; the fields written before it stay, so the same command finishes the run."""
    import errno

    import wbc.batch
    import wbc.io
    from wbc.errors import WbcError

    write_fields(tmp_path / "in", 2)
    out = tmp_path / "out"
    write = wbc.io.atomic_write_bytes
    for full in ("field_01.png", "cells.csv"):
        def atomic_write_bytes(path: Path, data: bytes, full: str = full) -> None:
            if Path(path).name == full:
                raise OSError(errno.ENOSPC, "No space left on device")
            write(path, data)

        for module in (wbc.batch, wbc.io):  # the fields' files, and the CSVs (wbc.io.atomic_write_csv)
            monkeypatch.setattr(module, "atomic_write_bytes", atomic_write_bytes)
        with pytest.raises(WbcError, match=rf"{full}: cannot write \(No space left on device\); the fields written "
                                           "before it are kept"):
            run_local([tmp_path / "in"], out, clf, ClassicalSegmenter())
        assert (out / "field_00.json").is_file() and (out / "field_00.png").is_file()
    monkeypatch.undo()
    done = run_local([tmp_path / "in"], out, clf, ClassicalSegmenter())
    assert (done.analyzed, done.skipped) == (0, 2) and (out / "cells.csv").is_file()


def test_results_of_another_image_of_the_same_name_are_named_when_replaced(clf, tmp_path: Path) -> None:
    """Two slides whose camera re-used a name, analysed one after the other into one --output: the second run
    replaced the first slide's x.json and x.png without a word (wbc 0.31.0). The JSON names its input: the run now
    says which fields held another image's results. A folder moved or named otherwise (the same bytes) is no other
    image."""
    from typer.testing import CliRunner

    from wbc.cli import app

    for slide, seed in (("a", 1), ("b", 2)):
        (tmp_path / slide).mkdir()
        rgb, *_ = synthetic_smear(n_wbc=1, seed=seed, size=(240, 320))
        cv2.imwrite(str(tmp_path / slide / "x.png"), rgb[:, :, ::-1])
    out = tmp_path / "out"
    assert run_local([tmp_path / "a"], out, clf, ClassicalSegmenter()).replaced == []
    second = run_local([tmp_path / "b"], out, clf, ClassicalSegmenter())
    assert second.replaced == [("x", str(tmp_path / "a" / "x.png"), str(tmp_path / "b" / "x.png"))]
    (tmp_path / "b").rename(tmp_path / "b_moved")
    assert run_local([tmp_path / "b_moved"], out, clf, ClassicalSegmenter()).replaced == []
    res = CliRunner().invoke(app, ["analyze", str(tmp_path / "a"), "-o", str(out), "--model", str(clf.path),
                                   "--segmenter", "classical", "--threads", "1", "--no-report"])
    assert res.exit_code == 0, res.output
    assert (f"warning: {out}/x.json held the results of another image, {tmp_path / 'b_moved' / 'x.png'}: replaced "
            f"by those of {tmp_path / 'a' / 'x.png'}; give each slide its own --output") in " ".join(res.output.split())


def test_each_of_several_identical_broken_files_is_listed_as_failed(clf, tmp_path: Path) -> None:
    """Empty files (an interrupted transfer) have the same bytes: all but the first were called copies "analysed and
    counted once" and left out of errors.csv (wbc 0.31.0), though none was analysed."""
    write_fields(tmp_path / "in", 1)
    for i in (2, 3, 4):
        (tmp_path / "in" / f"IMG_000{i}.jpg").write_bytes(b"")
    summary = run_local([tmp_path / "in"], tmp_path / "out", clf, ClassicalSegmenter())
    assert summary.copies == []
    rows = list(csv.DictReader((tmp_path / "out" / "errors.csv").open()))
    assert [(r["path"], r["error"]) for r in rows] == [
        (str(tmp_path / "in" / f"IMG_000{i}.jpg"), f"{tmp_path / 'in' / f'IMG_000{i}.jpg'}: file is empty")
        for i in (2, 3, 4)]


def test_flagged_confidence_never_reads_as_the_shown_threshold() -> None:
    """A cell of 0.98597 under a threshold of 0.98633 was labelled "0.9860 ?" (98.60 % on a page) beside a threshold
    shown as 0.986 (98.6 %): the same number. The confidence gets the digits that tell it apart, and a value that is
    itself rounded (0.986 from a JSON document) gets no run of zeros. Before wbc 0.30.0: "0.9860"."""
    from decimal import Decimal

    from wbc.formats import confidence_text, prediction_to_dict, threshold_text

    thr = 0.9863332509994507
    for conf in (0.98597, 0.98604, 0.9859723448753357, 0.98600412):
        for digits, scale in ((2, 1.0), (3, 1.0), (1, 100.0), (0, 100.0)):
            shown = Decimal(threshold_text(thr, 3 if scale == 1 else 1, scale))
            assert Decimal(confidence_text(conf, thr, digits, scale)) != shown, (conf, digits, scale)
    assert confidence_text(0.98597, thr) == "0.98597" and confidence_text(0.98597, thr, 1, 100) == "98.597"
    assert confidence_text(0.986, thr) == "0.9860" and confidence_text(0.986, thr, 1, 100) == "98.60"
    # the API sends 6 decimals, enough for the page to tell 0.985972 from 98.6 %
    p = Prediction(label="eosinophil", confidence=0.9859723448753357, probabilities={"eosinophil": 0.9859723448753357},
                   review=True)
    assert prediction_to_dict(p)["confidence"] == 0.985972
    assert confidence_text(prediction_to_dict(p)["confidence"], thr, 1, 100) == "98.597"
