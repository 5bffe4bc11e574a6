"""Averaging over flips/rotations (``--tta``): what is averaged, who decides how many views, and where it applies.

The classifier is a tiny real ONNX model whose answer reads the top half of the image only, so turning a cell
changes it (a model that pools the whole image would hide a missing or wrong view).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wbc.errors import ModelError
from wbc.labels import CLASSES

SIZE = 32


def _model(path: Path, extra: dict | None = None) -> Path:
    from tests.tiny_models import mean_colour_model

    w = np.random.default_rng(0).normal(0, 3, (len(CLASSES), 3))
    return mean_colour_model(path, SIZE, w, "turned", extra=extra, embedding_output=True, top_half=True)


def _cells(n: int = 6) -> np.ndarray:
    """Cells whose top and bottom halves differ in colour, with a camera's noise (wbc refuses flat drawings)."""
    rng = np.random.default_rng(1)
    cells = np.zeros((n, SIZE, SIZE, 3), np.int16)
    for i in range(n):
        cells[i, : SIZE // 2] = rng.integers(8, 248, 3)
        cells[i, SIZE // 2 :] = rng.integers(8, 248, 3)
    return (cells + rng.integers(-6, 7, cells.shape)).clip(0, 255).astype(np.uint8)


@pytest.fixture()
def clf(tmp_path: Path):
    from wbc.model import load_model

    return load_model(_model(tmp_path / "turned.onnx"), threads=1)


def test_run_views_averages_the_logits_of_the_first_views(clf) -> None:
    from wbc.classify import run_views
    from wbc.preprocess import dihedral_view

    cells = _cells()
    one = run_views(clf, cells, ("logits", "embedding"), 1)
    four = run_views(clf, cells, ("logits", "embedding"), 4)
    by_hand = np.mean([clf.run(dihedral_view(cells, k))["logits"] for k in range(4)], axis=0)
    np.testing.assert_allclose(four["logits"], by_hand, rtol=1e-5, atol=1e-5)
    assert not np.allclose(four["logits"], one["logits"])  # the views differ for this model
    # the out-of-distribution flags read the cell as it is, the view they were fitted on
    np.testing.assert_array_equal(four["embedding"], one["embedding"])


def test_how_many_views_the_flag_the_model_and_smear_cells_decide(clf, tmp_path: Path) -> None:
    from wbc.model import SMEAR_TTA_VIEWS, load_model

    assert (clf.tta_views(), clf.tta_views(smear=True)) == (1, SMEAR_TTA_VIEWS)
    two = clf.with_tta(2)
    assert (two.tta_views(), two.tta_views(smear=True)) == (2, 2)  # asked for: also in smears
    assert clf.tta is None  # with_tta returns a copy
    adapted = load_model(_model(tmp_path / "a.onnx", extra={"tta_views": 8}), threads=1)
    assert (adapted.tta_views(), adapted.tta_views(smear=True)) == (8, 8)
    assert adapted.unsure_views() == (0.0, 1)  # every cell turned already: nothing to re-run
    one = load_model(_model(tmp_path / "one.onnx", extra={"tta_views": 1}), threads=1)
    assert one.unsure_views() == (0.0, 1)  # `wbc adapt --tta 1`: one view asked for, one view given
    assert adapted.with_tta(1).tta_views() == 1
    with pytest.raises(ModelError, match="between 1 and 8"):
        clf.with_tta(9)


def test_unsure_cells_are_answered_by_four_rotations(clf) -> None:
    """With one view the default, cells named below the gate get the mean of the four rotations, the others their
    one view; the gate reads the answer's confidence (after ``--classes``); ``--tta`` (even 1) turns it off."""
    from wbc.classify import answer_probabilities, predict_cells, run_views
    from wbc.model import UNSURE_GATE, UNSURE_TTA_VIEWS

    cells = _cells(16)
    one = run_views(clf, cells, ("logits",), 1)["logits"]
    four = run_views(clf, cells, ("logits",), UNSURE_TTA_VIEWS)["logits"]
    assert clf.unsure_views() == (UNSURE_GATE, UNSURE_TTA_VIEWS)
    for model in (clf, clf.with_classes("5part")):
        conf = answer_probabilities(one, model, (), model.label_set)[0].max(1)
        gate = float(np.median(conf))
        _, out = predict_cells(model.with_unsure_gate(gate), cells)
        unsure = conf < gate
        assert 0 < unsure.sum() < len(cells)
        np.testing.assert_allclose(out["logits"][unsure], four[unsure], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(out["logits"][~unsure], one[~unsure])
    # an unsure cell shown in two framings: the weighted mean of both framings' four rotations
    from wbc.reframe import SECOND_VIEW_WEIGHT as w

    other = _cells(17)[16:]
    _, out = predict_cells(clf.with_unsure_gate(1.0), cells[:2], second={1: other[0]})
    both = (1 - w) * four[1] + w * run_views(clf, other, ("logits",), UNSURE_TTA_VIEWS)["logits"][0]
    np.testing.assert_allclose(out["logits"][1], both, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["logits"][0], four[0], rtol=1e-5, atol=1e-5)
    # views chosen explicitly: no gate, whatever the confidence
    assert clf.with_tta(1).unsure_views() == (0.0, 1)
    _, out = predict_cells(clf.with_tta(1).with_unsure_gate(1.0), cells)
    np.testing.assert_array_equal(out["logits"], one)
    _, out = predict_cells(clf.with_unsure_gate(1.0), cells, views=1)  # a caller's own views: the same
    np.testing.assert_array_equal(out["logits"], one)
    with pytest.raises(ModelError, match="between 0 and 1"):
        clf.with_unsure_gate(1.5)


def test_unsure_cells_reuse_their_first_view(clf, monkeypatch) -> None:
    """The rotations of an unsure cell do not run the cell as it is again: it was the one view already scored
    (each framing of a cell shown in two). Every cell unsure: N + 3N network images, + 1 + 3 for a second framing."""
    from wbc.classify import predict_cells
    from wbc.model import UNSURE_TTA_VIEWS

    seen: list[int] = []
    run = type(clf).run

    def counted(self, cells, want):
        seen.append(len(cells))
        return run(self, cells, want)

    monkeypatch.setattr(type(clf), "run", counted)
    cells, other = _cells(5), _cells(6)[5:]
    predict_cells(clf.with_unsure_gate(1.0), cells)
    assert sum(seen) == len(cells) * UNSURE_TTA_VIEWS
    seen.clear()
    predict_cells(clf.with_unsure_gate(1.0), cells, second={2: other[0]})
    assert sum(seen) == (len(cells) + 1) * UNSURE_TTA_VIEWS


def test_classify_and_analyze_average_the_views_they_are_given(clf, tmp_path: Path) -> None:
    from wbc.analyze import classify_cells
    from wbc.classify import classify_paths, predict_cells
    from wbc.io import write_image
    from wbc.types import Cell

    cells = _cells(4)
    paths = []
    for i, c in enumerate(cells):
        paths.append(tmp_path / f"{i}.png")
        write_image(paths[-1], c)
    plain = classify_paths(paths, clf.with_tta(1), reframe=False)
    turned = classify_paths(paths, clf.with_tta(4), reframe=False)
    expected, _ = predict_cells(clf, cells, views=4)
    for got, want in zip(turned.predictions, expected, strict=True):
        assert got.probabilities == pytest.approx(want.probabilities, abs=1e-5)
    assert not np.allclose(plain.logits, turned.logits)
    # a smear field: its cells get the smear default (SMEAR_TTA_VIEWS) unless --tta says otherwise
    field = np.full((96, 96, 3), 230, np.uint8)
    field[24:48, 24:48] = (120, 60, 160)  # a cell whose upper half differs from its lower half
    field[48:72, 24:48] = (200, 80, 90)
    mask = np.ones((48, 24), bool)
    cell = Cell(id=1, box=(24, 24, 48, 72), nucleus_mask=mask, cell_mask=mask)
    results = {}
    for name, model in (("default", clf), ("one", clf.with_tta(1)), ("four", clf.with_tta(4))):
        c = Cell(id=1, box=cell.box, nucleus_mask=mask, cell_mask=mask)
        classify_cells(field, [c], model)
        results[name] = c.prediction.probabilities
    assert results["default"] == pytest.approx(results["four"])
    assert results["one"] != pytest.approx(results["four"])


def test_http_routes_take_tta_per_request(clf) -> None:
    """``/classify?tta=4`` averages as ``--tta 4`` does; the default is the model's own (one view here)."""
    import cv2
    from fastapi.testclient import TestClient

    from wbc.classify import predict_cells
    from wbc.segment.classical import ClassicalSegmenter
    from wbc.serve.app import create_app

    client = TestClient(create_app(clf, ClassicalSegmenter(), max_upload_mb=2))
    cell = _cells(1)[0]
    _ok, png = cv2.imencode(".png", cell[:, :, ::-1])
    files = [("files", ("cell.png", png.tobytes(), "image/png"))]
    got = {t: client.post("/classify?reframe=false" + (f"&tta={t}" if t else ""), files=files)
           for t in (None, 1, 4)}
    assert all(r.status_code == 200 for r in got.values()), got[4].text
    probs = {t: r.json()["results"][0]["probabilities"] for t, r in got.items()}
    assert probs[4] != pytest.approx(probs[1])
    for t, model in ((None, clf), (1, clf.with_tta(1)), (4, clf.with_tta(4))):  # the default: unsure cells turned
        expected, _ = predict_cells(model, cell[None])
        assert probs[t] == pytest.approx(expected[0].probabilities, abs=1e-4)
    assert client.post("/classify?tta=9", files=files).status_code == 422
