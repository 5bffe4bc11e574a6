"""`wbc analyze` as a batch job: names no disk takes are one field's error, a Latin-1 name gets its report, and a
resumed run keeps exactly the fields it would answer the same way (a segmenter file rewritten under its id, the
folder spelled otherwise, an older wbc's platelet wording), saying why it redoes the others."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from wbc.batch import run_local, unique_stems
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


def test_unique_stems_cap_keeps_names_apart() -> None:
    """A 251-byte stem (a legal 255-byte name) or a long folder's name before one gave a ``<stem>.json`` over 255."""
    assert len(unique_stems([Path("m_" + "x" * 249 + ".jpg")])[0].encode()) <= 250
    a, b = unique_stems([Path("a/" + "y" * 260 + ".jpg"), Path("b/" + "y" * 260 + ".jpg")])
    assert a != b and max(len(a.encode()), len(b.encode())) <= 250
