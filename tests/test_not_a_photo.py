"""Masks, label maps, drawings and blank frames in a lab's folder are refused by name, never counted as cells."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from test_analyze import make_colour_classifier
from wbc.cli import app
from wbc.io import read_image, write_image
from wbc.preprocess import not_a_photo
from wbc.synthetic import synthetic_cell, synthetic_smear


def binary_mask(size: int = 120, seed: int = 0) -> np.ndarray:
    """A nucleus/cell mask as datasets ship them: white discs on black, grey RGB."""
    rng = np.random.default_rng(seed)
    m = np.zeros((size, size, 3), np.uint8)
    cv2.circle(m, tuple(int(v) for v in rng.integers(40, 80, 2)), 30, (255, 255, 255), -1)
    return m


def label_map(size: int = 120) -> np.ndarray:
    """Background 0, cytoplasm 1, nucleus 2 (a segmentation dataset's ground truth), anti-aliased edges."""
    m = np.zeros((size, size, 3), np.uint8)
    cv2.circle(m, (60, 60), 40, (1, 1, 1), -1, cv2.LINE_AA)
    cv2.circle(m, (60, 60), 20, (2, 2, 2), -1, cv2.LINE_AA)
    return m


def test_masks_drawings_and_blank_frames_are_not_photos() -> None:
    grey_mask = binary_mask()
    colour_map = np.zeros((120, 120, 3), np.uint8)  # an annotation tool's colour-coded classes
    cv2.circle(colour_map, (60, 60), 40, (255, 0, 0), -1)
    cv2.circle(colour_map, (60, 60), 20, (0, 0, 255), -1)
    _ok, enc = cv2.imencode(".jpg", cv2.resize(grey_mask, (480, 480), interpolation=cv2.INTER_LINEAR),
                           [cv2.IMWRITE_JPEG_QUALITY, 90])  # a mask saved as JPEG: ringing at its edges
    jpeg_mask = cv2.imdecode(enc, cv2.IMREAD_COLOR)
    for name, img in {"binary mask": grey_mask, "label map": label_map(), "colour-coded map": colour_map,
                      "mask saved as JPEG": jpeg_mask, "blank frame": np.full((80, 80, 3), 240, np.uint8)}.items():
        assert not_a_photo(img) is not None, name
    assert not_a_photo(np.full((80, 80, 3), 240, np.uint8)) == "one flat colour: nothing in view"
    assert "mask or a drawing" in (not_a_photo(label_map()) or "")


def test_photos_are_photos_also_grey_small_on_a_page_or_in_a_palette() -> None:
    cell = synthetic_cell("neutrophil", 96, seed=3)
    page = cv2.copyMakeBorder(cell, 340, 340, 340, 340, cv2.BORDER_CONSTANT, value=(255, 255, 255))  # 8x the side
    grey = cv2.cvtColor(cv2.cvtColor(cell, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    posterised = np.asarray(Image.fromarray(cell).quantize(64).convert("RGB"))  # a GIF's palette of 64 colours
    smear, *_ = synthetic_smear(n_wbc=2, seed=1)
    for name, img in {"cell": cell, "cell small on a white page": page, "grey cell": grey,
                      "cell in 64 colours": posterised, "smear field": smear}.items():
        assert not_a_photo(img) is None, name


def test_classify_and_analyze_skip_masks_by_name_and_count_only_the_cells(tmp_path: Path) -> None:
    """A dataset's folder with its masks beside its photos: the masks are named as skipped (the first ten one by
    one, the rest counted by problem), and neither the predictions nor the differential count them."""
    model = make_colour_classifier(tmp_path / "tiny.onnx", size=32)
    lab = tmp_path / "lab"
    for i in range(2):
        write_image(lab / "cells" / f"cell_{i}.png", synthetic_cell("lymphocyte", 96, seed=i))
    for i in range(12):
        write_image(lab / "masks" / f"mask_{i:02d}.png", binary_mask(seed=i))
    res = CliRunner().invoke(app, ["classify", str(lab), "--model", str(model), "--output", str(tmp_path / "p.csv"),
                                   "--threads", "1"])
    assert res.exit_code == 0, res.output
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert len(rows) == 3 and all("/cells/" in r for r in rows[1:])
    named = [ln for ln in res.output.splitlines() if ln.startswith("skipped") and "mask_" in ln]
    assert len(named) == 10 and all("not a photo of stained cells" in ln for ln in named)
    # since wbc 0.33.0 every unreadable file is also named in <output>.errors.csv, which the count line points to
    assert (f"skipped 2 more file(s), every one named in {tmp_path / 'p.errors.csv'}: a mask or a drawing, not a photo "
            "of stained cells (2)") in " ".join(res.output.split())

    fields = tmp_path / "fields"
    smear, *_ = synthetic_smear(n_wbc=2, seed=3)
    write_image(fields / "field.png", smear)
    write_image(fields / "field_mask.png", binary_mask())
    res = CliRunner().invoke(app, ["analyze", str(fields), "--model", str(model), "--segmenter", "classical",
                                   "--output", str(tmp_path / "out"), "--threads", "1", "--no-report"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out" / "field.json").is_file() and not (tmp_path / "out" / "field_mask.json").exists()
    errors = (tmp_path / "out" / "errors.csv").read_text()
    assert "field_mask.png" in errors and "not a photo of stained cells" in errors
    cells = (tmp_path / "out" / "cells.csv").read_text().splitlines()[1:]
    assert cells and all("field.png" in c for c in cells)


def test_the_bccd_masks_are_refused_and_every_bccd_field_taken(real_data: Path) -> None:
    """BCCD ships a nucleus/cytoplasm mask per field beside its photos (``bccd/masks/``): `wbc analyze` on the
    dataset's folder analysed them as fields and counted 175 "cells" in them (wbc 0.26.0)."""
    bccd = real_data / "bccd"
    masks, fields = sorted((bccd / "masks").glob("*.png")), sorted((bccd / "JPEGImages").glob("*.jpg"))
    if not masks:
        pytest.skip(f"{bccd / 'masks'}: no masks here")
    assert all(not_a_photo(read_image(p)) for p in masks)
    assert not [p.name for p in fields if not_a_photo(read_image(p))]


def test_a_camera_frame_on_flat_glass_is_a_photo_also_as_a_jpeg_read_reduced() -> None:
    """A large JPEG is decoded at a reduced size, which averages away the noise the photo check counts: a cell on
    flat-lit glass in a camera frame was refused as a JPEG and classified as a PNG of the same pixels."""
    from wbc.classify import decode_cell_views

    cell = synthetic_cell("lymphocyte", 360, seed=4)
    frame = (np.random.default_rng(0).normal(0, 3, (2400, 3200, 3)) + cell[:20, :20].reshape(-1, 3).mean(0))
    frame = frame.clip(0, 255).astype(np.uint8)
    frame[1020:1380, 1420:1780] = cell
    _, jpg = cv2.imencode(".jpg", frame[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    small = cv2.imdecode(jpg, cv2.IMREAD_REDUCED_COLOR_8)[:, :, ::-1]
    assert not_a_photo(small) is not None  # what the reduced decoding alone would say
    view, _ = decode_cell_views(jpg.tobytes(), "frame.jpg", 64, reframe=True)
    assert view.shape == (64, 64, 3)


def test_an_under_exposed_smear_is_called_too_dark_not_a_drawing(tmp_path: Path) -> None:
    """A smear photographed with too little light shows only a few levels per channel: wbc 0.27.0 refused it as "a
    mask or a drawing", which sends a lab scientist looking for a wrong file instead of at the lamp."""
    smear, *_ = synthetic_smear(n_wbc=2, seed=1)
    dark = (smear * 0.03).astype(np.uint8)
    why = not_a_photo(dark) or ""
    assert why.startswith("too dark (under-exposed)") and "mask" not in why, why
    assert "mask or a drawing" in (not_a_photo(label_map()) or "")  # class numbers 0-2: dark, grey, still a mask
    assert not_a_photo(np.zeros((80, 80, 3), np.uint8)) == "one flat colour: nothing in view"  # a black frame
    model = make_colour_classifier(tmp_path / "tiny.onnx", size=32)
    write_image(tmp_path / "in" / "dark.png", dark)
    res = CliRunner().invoke(app, ["analyze", str(tmp_path / "in"), "--model", str(model), "--segmenter",
                                   "classical", "--output", str(tmp_path / "out"), "--threads", "1", "--no-report"])
    assert "dark.png: too dark (under-exposed)" in res.output and "re-take it" in res.output, res.output
    assert "too dark (under-exposed)" in (tmp_path / "out" / "errors.csv").read_text()
