"""Images that are no blood smear (a photograph, a page, blank glass): said in every output, their cells flagged.

Before wbc 0.31.0 `wbc analyze`, the Python API, POST /analyze and the case store gave a cat's photograph "WBCs" and
a differential, or "no white blood cell found", and nothing said the image was no smear (wbc.smear_look.not_a_smear).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from wbc.analyze import analyze_image
from wbc.io import read_image, write_image
from wbc.paths import PACKAGE_DIR
from wbc.synthetic import synthetic_smear
from wbc.types import Cell

sys.path.insert(0, str(Path(__file__).parent))
from test_serve import classifier, model_path, png_bytes  # noqa: F401  (session fixtures)

#: How such a field's warning begins, and its cells' review reason (wbc.smear_look.NOT_A_SMEAR_WARNING, _REASON).
NOT_A_SMEAR_WARNING = "does not look like a blood-smear field"
NOT_A_SMEAR_REASON = "its field does not look like a blood smear"


def photograph(name: str) -> np.ndarray:
    """One of scikit-image's sample images (shipped with it, no download), as 8-bit RGB."""
    import skimage.data

    rgb = getattr(skimage.data, name)()
    return np.ascontiguousarray(rgb[..., :3] if rgb.ndim == 3 else np.dstack([rgb] * 3))


def blank_glass(seed: int = 0) -> np.ndarray:
    """A bright, slightly tinted, vignetted and noisy frame: a slide with nothing on it."""
    yy, xx = np.mgrid[:480, :640]
    light = 1 - 0.25 * (np.hypot(xx - 320, yy - 240) / 400) ** 2
    noise = np.random.default_rng(seed).normal(0, 2.5, (480, 640, 3))
    return np.clip(np.float32([225, 222, 215]) * light[..., None] + noise, 0, 255).astype(np.uint8)


def printed_text(ink: tuple[int, int, int] = (30, 40, 160)) -> np.ndarray:
    page = np.full((480, 640, 3), 250, np.uint8)
    for y in range(30, 470, 26):
        cv2.putText(page, "The quick brown fox jumps over the lazy dog 0123456789", (10, y),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.6, ink, 1, cv2.LINE_AA)
    return page


def pale_smear_without_a_wbc(seed: int = 0) -> np.ndarray:
    """A field of the PBC lab without a WBC: pale red cells (pale centres) and 12 platelets on peach glass, 2 % of it
    coloured over 8 % of the light, as PBC's platelet images (1.7 % and more)."""
    rng = np.random.default_rng(seed)
    field = np.empty((363, 360, 3), np.float32)
    field[:] = (247, 228, 206)
    for _ in range(16):
        (cx, cy), r = (int(v) for v in rng.integers(30, 330, 2)), int(rng.integers(30, 36))
        disc = np.zeros(field.shape[:2], np.float32)
        cv2.circle(disc, (cx, cy), r, 1.0, -1)
        cv2.circle(disc, (cx, cy), r // 2, 0.5, -1)
        disc = cv2.GaussianBlur(disc, (0, 0), 2.0)[..., None]
        field = field * (1 - disc) + disc * np.float32([228, 203, 198])
    for _ in range(12):
        cv2.circle(field, (int(rng.integers(20, 340)), int(rng.integers(20, 340))), 8, (150, 110, 170), -1)
    return np.clip(field + rng.normal(0, 1.5, field.shape), 0, 255).astype(np.uint8)


class OneCell:
    """A segmenter that finds one 60 px cell in the middle of any image: what a detector may find in a photograph."""

    name = model_id = "one-cell"

    def segment(self, rgb: np.ndarray) -> list[Cell]:
        h, w = rgb.shape[:2]
        mask = np.ones((60, 60), bool)
        return [Cell(1, (w // 2 - 30, h // 2 - 30, w // 2 + 30, h // 2 + 30), mask.copy(), mask.copy())]


def test_the_pbc_labs_smear_fields_without_a_wbc_are_smears(real_data: Path) -> None:
    """Its pale red cells on peach glass barely count as stained: a field of them without a WBC (PBC's platelet images,
    1.7 % and more coloured) was called "nothing in it is stained ..., as on blank glass" before wbc 0.32.0 (30 of
    PBC's 1,360 train and val platelet images). Blank glass and plain surfaces measure 0.5 % at most."""
    from wbc.smear_look import MIN_STAINED, not_a_smear, smear_look

    field = pale_smear_without_a_wbc()
    assert 0.015 < smear_look(field).stained < 0.03 and not_a_smear(field) is None
    for name in ("PLATELET_2561", "PLATELET_310105", "PLATELET_359510", "PLATELET_435521", "PLATELET_464925"):
        assert not_a_smear(read_image(real_data / "pbc" / "platelet" / f"{name}.jpg")) is None, name
    assert smear_look(blank_glass()).stained < MIN_STAINED and not_a_smear(blank_glass()).startswith("nothing")


@pytest.mark.parametrize("make", [lambda: photograph("chelsea"), lambda: photograph("astronaut"),
                                  lambda: photograph("coffee"), lambda: photograph("rocket"),
                                  lambda: photograph("immunohistochemistry"), blank_glass, printed_text],
                         ids=["cat", "astronaut", "coffee", "rocket", "tissue section", "blank glass", "blue text"])
def test_photographs_pages_and_blank_glass_do_not_look_like_smears(make) -> None:
    from wbc.smear_look import not_a_smear

    assert not_a_smear(make())


def test_smear_fields_look_like_smears() -> None:
    """The shipped BCCD example fields, synthetic smears with and without WBCs, tinted, and a wide 1600 x 1200 frame
    of 14 px red cells (benchmarks/non_smear.py measures every BCCD and TXL-PBC field: none is flagged)."""
    from wbc.smear_look import NOT_A_SMEAR_REASON as REASON
    from wbc.smear_look import NOT_A_SMEAR_WARNING as WARNING
    from wbc.smear_look import not_a_smear

    assert (WARNING, REASON) == (NOT_A_SMEAR_WARNING, NOT_A_SMEAR_REASON)
    fields = [read_image(p) for p in sorted((PACKAGE_DIR / "example_fields").glob("*.jpg"))]
    fields += [synthetic_smear(n_wbc=n, seed=s)[0] for n in (0, 2) for s in (1, 2)]
    fields += [synthetic_smear(n_wbc=2, seed=1, tint=(1.0, 0.9, 0.8))[0],
               synthetic_smear(scale=0.2, n_wbc=3, seed=0, size=(1200, 1600))[0]]
    assert len(fields) == 12
    assert [not_a_smear(f) for f in fields] == [None] * len(fields)


def test_analysis_of_a_photograph_warns_first_and_flags_its_cells(classifier) -> None:  # noqa: F811
    cat = analyze_image(photograph("chelsea"), classifier, OneCell(), name="cat.png")
    assert cat.warnings[0].startswith(f"{NOT_A_SMEAR_WARNING}: it is textured all over")
    assert "its 1 cell is flagged for review" in cat.warnings[0]
    assert [c.prediction.review for c in cat.cells if c.prediction] == [True]
    assert NOT_A_SMEAR_REASON in cat.cells[0].prediction.reasons
    outlined = analyze_image(photograph("chelsea"), None, OneCell(), name="cat.png")  # outlines only: none flagged
    assert outlined.warnings[0].endswith("check the image: the cells found in it may be no WBCs")
    smear = analyze_image(synthetic_smear(n_wbc=2, seed=5)[0], classifier, OneCell(), name="smear.png")
    assert not any(w.startswith(NOT_A_SMEAR_WARNING) for w in smear.warnings)
    assert not any(NOT_A_SMEAR_REASON in c.prediction.reasons for c in smear.cells if c.prediction)


def test_python_api_says_it_of_a_photograph_without_cells(tmp_path: Path, classifier) -> None:  # noqa: F811
    import wbc

    write_image(tmp_path / "glass.png", blank_glass())
    res = wbc.analyze_images(tmp_path / "glass.png", model=classifier, segmenter=wbc.load_segmenter("classical"))[0]
    assert res.cells == [] and res.warnings[0].startswith(f"{NOT_A_SMEAR_WARNING}: nothing in it is stained")
    assert "finding no WBCs in it says nothing about a smear" in res.warnings[0]


def test_wbc_analyze_names_the_photograph_in_a_line_and_its_json(tmp_path: Path, model_path: Path) -> None:  # noqa: F811
    from typer.testing import CliRunner

    from wbc.cli import app

    (tmp_path / "in").mkdir()
    write_image(tmp_path / "in" / "cat.png", photograph("chelsea"))
    write_image(tmp_path / "in" / "smear.png", synthetic_smear(n_wbc=2, seed=5)[0])
    res = CliRunner().invoke(app, ["analyze", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model",
                                   str(model_path), "--segmenter", "classical", "--no-draw"])
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())
    assert f"cat.png: {NOT_A_SMEAR_WARNING}: it is textured all over" in said
    assert f"smear.png: {NOT_A_SMEAR_WARNING}" not in said
    doc = json.loads((tmp_path / "out" / "cat.json").read_text())
    assert doc["warnings"][0].startswith(NOT_A_SMEAR_WARNING)
    assert NOT_A_SMEAR_WARNING in (tmp_path / "out" / "report.html").read_text()


@pytest.mark.parametrize("n", [11, 12])
def test_wbc_analyze_counts_the_fields_past_ten_in_a_sentence(n: int, capsys, tmp_path: Path) -> None:
    """Past the ten fields named one by one, the count line read "1 more field(s) does not look like a blood-smear
    fields" (the warning's start with an "s" glued on)."""
    from wbc.cli.analyze import warn_not_smears

    docs = [{"image": f"f{i}.png", "warnings": [f"{NOT_A_SMEAR_WARNING}: it is textured all over"]} for i in range(n)]
    warn_not_smears(docs, tmp_path)
    lines = " ".join(capsys.readouterr().err.split()).split("warning: ")[1:]
    assert len(lines) == 11 and lines[9].startswith(f"f9.png: {NOT_A_SMEAR_WARNING}")
    want = (f"1 more field {NOT_A_SMEAR_WARNING}; its JSON in {tmp_path}/ says why, and its cells are flagged for "
            "review") if n == 11 else (f"2 more fields do not look like a blood-smear field; each one's JSON in "
                                       f"{tmp_path}/ says why, and their cells are flagged for review")
    assert lines[10].strip() == want


@pytest.fixture(scope="module")
def client(classifier, tmp_path_factory: pytest.TempPathFactory) -> Iterator:  # noqa: F811
    pytest.importorskip("fastapi")
    pytest.importorskip("sqlalchemy")
    from fastapi.testclient import TestClient

    from wbc.serve.app import create_app

    store = tmp_path_factory.mktemp("non_smear") / "cases.sqlite"
    with TestClient(create_app(classifier, OneCell(), max_upload_mb=5, store=store)) as c:
        yield c


def test_http_analyze_and_a_case_say_it_and_flag_the_cells(client) -> None:
    cat = ("file", ("cat.png", png_bytes(photograph("chelsea")), "image/png"))
    body = client.post("/analyze", files=[cat]).json()
    assert body["warnings"][0].startswith(NOT_A_SMEAR_WARNING) and body["n_review"] == 1
    assert NOT_A_SMEAR_REASON in body["cells"][0]["review_reasons"]
    r = client.post("/cases", data={"name": "not a smear"}, files=[("files", cat[1])])
    assert r.status_code == 201, r.text
    doc = r.json()
    assert doc["fields"][0]["warnings"][0].startswith(NOT_A_SMEAR_WARNING)
    assert [c["model_review"] for c in doc["cells"]] == [True] and doc["n_flagged"] == 1
    assert NOT_A_SMEAR_REASON in doc["cells"][0]["model_reasons"]


def test_wbc_cases_create_names_the_photograph_and_stores_its_warning(tmp_path: Path,
                                                                      model_path: Path) -> None:  # noqa: F811
    pytest.importorskip("sqlalchemy")
    from typer.testing import CliRunner

    from wbc.cli import app

    write_image(tmp_path / "cat.png", photograph("chelsea"))
    write_image(tmp_path / "smear.png", synthetic_smear(n_wbc=2, seed=5)[0])
    db = str(tmp_path / "cases.sqlite")
    run = CliRunner().invoke
    res = run(app, ["cases", "create", "C", str(tmp_path / "cat.png"), str(tmp_path / "smear.png"), "--store", db,
                    "--model", str(model_path), "--segmenter", "classical"])
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())
    assert f"cat.png: {NOT_A_SMEAR_WARNING}: it is textured all over" in said and f"smear.png: {NOT_A_SMEAR_WARNING}" \
        not in said
    doc = json.loads(run(app, ["cases", "show", "C", "--store", db, "--json"]).stdout)
    warned = {f["image"]: f["warnings"] for f in doc["fields"]}
    assert warned["cat.png"][0].startswith(NOT_A_SMEAR_WARNING)
    assert not any(w.startswith(NOT_A_SMEAR_WARNING) for w in warned["smear.png"])
