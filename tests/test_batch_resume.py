"""`wbc analyze` as a batch job: names no disk takes are one field's error, a Latin-1 name gets its report, and a
resumed run keeps exactly the fields it would answer the same way (a segmenter file rewritten under its id, the
folder spelled otherwise, an older wbc's platelet wording), saying why it redoes the others."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from wbc.batch import plan_jobs, run_local, unique_stems
from wbc.classify import OUTSIDE_SMEAR
from wbc.labels import CLASSES
from wbc.model import load_model
from wbc.segment.classical import ClassicalSegmenter

sys.path.insert(0, str(Path(__file__).parent))
from test_formats import write_fields
from tiny_models import mean_colour_model


@pytest.fixture(scope="module")
def clf(tmp_path_factory: pytest.TempPathFactory) -> Any:
    w = np.random.default_rng(0).normal(0, 3, (len(CLASSES), 3))
    return load_model(mean_colour_model(tmp_path_factory.mktemp("m") / "tiny.onnx", 32, w, "tiny-colour"))


class FileSegmenter(ClassicalSegmenter):
    """The classical segmenter under a model id with a model file, as a detector or U-Net is."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path, self.model_id, self.name = str(path), "seg-same-id", "seg-same-id"


def test_long_names_are_one_fields_error_and_the_run_finishes(tmp_path: Path) -> None:
    """A legal 250-byte image name: before wbc 0.35.0 its temporary file name passed 255 bytes and the run ended
    there, with no CSVs, and ran into it again on every resume."""
    long_stem = "m_" + "x" * 243
    paths = write_fields(tmp_path / "in", 3)
    paths[1].rename(paths[1].with_name(long_stem + ".png"))  # 249 bytes
    out = tmp_path / "out"
    summary = run_local([tmp_path / "in"], out, None, ClassicalSegmenter())
    assert summary.analyzed == 3 and not summary.errors
    assert len(list(out.glob("*.json"))) == 3 and (out / "cells.csv").is_file()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_a_name_the_disk_refuses_is_that_fields_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    import wbc.batch

    real = wbc.batch.atomic_write_bytes

    def refuse(path: Any, data: bytes) -> None:
        if "field_01" in str(path):
            raise OSError(errno.ENAMETOOLONG, "File name too long", str(path))
        real(path, data)

    monkeypatch.setattr(wbc.batch, "atomic_write_bytes", refuse)
    write_fields(tmp_path / "in", 3)
    out = tmp_path / "out"
    summary = run_local([tmp_path / "in"], out, None, ClassicalSegmenter())
    assert summary.analyzed == 2 and len(summary.errors) == 1
    assert "field_01.png: its results cannot be written" in summary.errors[0][1]
    assert "field_01" in (out / "errors.csv").read_text() and (out / "cells.csv").is_file()


def test_a_latin1_name_gets_its_report(clf: Any, tmp_path: Path) -> None:
    from wbc.analyze import smear_label_set
    from wbc.evaluate.classified import write_analysis_report

    (p,) = write_fields(tmp_path / "in", 1)
    p.rename(tmp_path / "in" / os.fsdecode(b"caf\xe9.png"))
    out = tmp_path / "out"
    summary = run_local([tmp_path / "in"], out, clf, ClassicalSegmenter())
    page = write_analysis_report(out, summary.docs, smear_label_set(clf), stems=summary.stems,
                                 model_id=summary.model_id)
    assert "href='./caf%E9.png'" in page.read_text(encoding="utf-8", errors="surrogateescape")


def test_a_latin1_names_report_is_utf8(clf: Any, tmp_path: Path) -> None:
    """The page declares UTF-8 but held the name's raw byte 0xE9 (shown as U+FFFD): the name reads as Latin-1,
    the link keeps the file's own bytes."""
    from wbc.analyze import smear_label_set
    from wbc.evaluate.classified import write_analysis_report

    (p,) = write_fields(tmp_path / "in", 1)
    p.rename(tmp_path / "in" / os.fsdecode(b"caf\xe9.png"))
    out = tmp_path / "out"
    summary = run_local([tmp_path / "in"], out, clf, ClassicalSegmenter())
    page = write_analysis_report(out, summary.docs, smear_label_set(clf), stems=summary.stems,
                                 model_id=summary.model_id).read_bytes().decode("utf-8")
    assert "café.png" in page and "href='./caf%E9.png'" in page


def test_a_segmenter_file_rewritten_under_its_id_redoes_the_fields(clf: Any, tmp_path: Path) -> None:
    seg_file = tmp_path / "seg.onnx"
    seg_file.write_bytes(b"first detector")
    write_fields(tmp_path / "in", 2)
    out = tmp_path / "out"
    run_local([tmp_path / "in"], out, clf, FileSegmenter(seg_file))
    assert run_local([tmp_path / "in"], out, clf, FileSegmenter(seg_file)).skipped == 2
    seg_file.write_bytes(b"retrained detector, same id")
    again = run_local([tmp_path / "in"], out, clf, FileSegmenter(seg_file))
    assert again.skipped == 0 and again.redone == {"the segmenter file changed": 2}


def test_the_folder_spelled_otherwise_keeps_the_fields(clf: Any, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    write_fields(tmp_path / "in", 2)
    monkeypatch.chdir(tmp_path)
    run_local(["in"], "out", clf, ClassicalSegmenter())
    again = run_local([tmp_path / "in"], "out", clf, ClassicalSegmenter())
    assert (again.skipped, again.analyzed) == (2, 0)
    with open("out/cells.csv", newline="", encoding="utf-8") as f:
        images = {r["image"] for r in csv.DictReader(f)}
    assert images and all(i.startswith(str(tmp_path / "in")) for i in images)
    assert {d["image"] for d in again.docs} == {str(tmp_path / "in" / f"field_0{i}.png") for i in range(2)}


def _clashing_and_long_fields(folder: Path) -> None:
    """``x.png`` beside ``sub/x.png`` (one gets the folder's name) and a 255-byte name (its stem is cut and hashed)."""
    a, b, c = write_fields(folder, 3)
    (folder / "sub").mkdir()
    a.rename(folder / "x.png")
    b.rename(folder / "sub" / "x.png")
    c.rename(folder / ("L" * 251 + ".png"))


def test_output_names_do_not_depend_on_how_the_folder_is_spelled(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A clashing name's folder was ``""`` under ``.`` and a long name's hash was of the path as typed."""
    _clashing_and_long_fields(tmp_path / "slide1")
    monkeypatch.chdir(tmp_path / "slide1")
    dot = sorted(j.stem for j in plan_jobs(["."]))
    absolute = sorted(j.stem for j in plan_jobs([tmp_path / "slide1"]))
    monkeypatch.chdir(tmp_path)
    relative = sorted(j.stem for j in plan_jobs(["slide1"]))
    assert dot == absolute == relative
    assert "slide1_x" in relative and "x" in relative  # today's names of the usual spelling are kept


def test_a_resume_spelled_otherwise_keeps_clashing_and_long_names(clf: Any, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    _clashing_and_long_fields(tmp_path / "slide1")
    monkeypatch.chdir(tmp_path / "slide1")
    run_local(["."], tmp_path / "out", clf, ClassicalSegmenter())
    again = run_local([tmp_path / "slide1"], tmp_path / "out", clf, ClassicalSegmenter())
    assert (again.skipped, again.analyzed) == (3, 0)
    assert len(list((tmp_path / "out").glob("*.json"))) == 3


def test_a_resume_with_other_settings_says_why(clf: Any, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from wbc.cli import app

    write_fields(tmp_path / "in", 2)
    out = tmp_path / "out"
    args = ["analyze", str(tmp_path / "in"), "-o", str(out), "--model", clf.path, "--segmenter", "classical",
            "--no-report", "--threads", "1"]
    assert CliRunner().invoke(app, [*args, "--tta", "1"]).exit_code == 0
    result = CliRunner().invoke(app, [*args, "--tta", "2"])
    assert result.exit_code == 0, result.output
    assert "2 field(s) done by an earlier run were analysed again (2: other settings: tta 1 -> 2)" in result.output


def test_an_older_wbcs_platelet_wording_reads_as_a_fresh_run(clf: Any, tmp_path: Path) -> None:
    """A field a wbc before 0.33.0 finished said "outside the chosen classes" of a platelet with no --classes chosen:
    before wbc 0.35.0 a resumed run kept and repeated it, in cells.csv, the terminal and report.html."""
    from wbc.analyze import smear_label_set
    from wbc.evaluate.classified import write_analysis_report

    write_fields(tmp_path / "in", 1)
    out = tmp_path / "out"
    run_local([tmp_path / "in"], out, clf, ClassicalSegmenter())
    doc = json.loads((out / "field_00.json").read_text())
    assert doc["settings"]["classes"] == [] and doc["cells"]
    doc["wbc_version"] = "0.32.0"
    doc["cells"][0]["review"] = True
    doc["cells"][0]["review_reasons"] = ["the model favours platelet (0.90), outside the chosen classes"]
    doc["warnings"] = [f"1 of {len(doc['cells'])} cells are most likely a class outside the chosen ones (platelet 1): "
                       "each is counted in the chosen class shown and flagged for review"]
    (out / "field_00.json").write_text(json.dumps(doc))
    summary = run_local([tmp_path / "in"], out, clf, ClassicalSegmenter())
    assert summary.skipped == 1 and summary.outside_smear == {"platelet"}
    with open(out / "cells.csv", newline="", encoding="utf-8") as f:
        reasons = [r["review_reasons"] for r in csv.DictReader(f)]
    assert any(r.endswith(OUTSIDE_SMEAR) for r in reasons) and "chosen" not in "".join(reasons)
    page = write_analysis_report(out, summary.docs, smear_label_set(clf), stems=summary.stems,
                                 model_id=summary.model_id).read_text()
    assert "outside the chosen ones" not in page and "a smear&#39;s differential does not count" in page
    assert json.loads((out / "field_00.json").read_text())["wbc_version"] == "0.32.0"


def test_unique_stems_cap_keeps_names_apart() -> None:
    """A 251-byte stem (a legal 255-byte name) or a long folder's name before one gave a ``<stem>.json`` over 255."""
    assert len(unique_stems([Path("m_" + "x" * 249 + ".jpg")])[0].encode()) <= 250
    a, b = unique_stems([Path("a/" + "y" * 260 + ".jpg"), Path("b/" + "y" * 260 + ".jpg")])
    assert a != b and max(len(a.encode()), len(b.encode())) <= 250
