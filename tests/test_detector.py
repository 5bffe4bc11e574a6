"""The learned WBC detector (decoding, instance masks, scale) and labelled-folder evaluation.

The pure parts run on synthetic arrays anywhere; the shipped ONNX detector is checked on real fields
(BCCD/TXL-PBC, skipped without the data): a field with no WBC, a WBC cut by the border, two touching WBCs,
and a field at 4x the expected scale.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from wbc.errors import ConfigError, WbcError
from wbc.evaluate.smears import box_iou, evaluate_segmentation, load_labelled_folder, read_yolo_boxes
from wbc.io import read_image
from wbc.paths import DEFAULT_DETECTOR
from wbc.segment import AUTO_ORDER, get_segmenter, list_segmenters, resolve_method
from wbc.segment import detector as D
from wbc.segment.scale import RBC_UM, WBC_BOX_UM, estimate_field_scale
from wbc.synthetic import synthetic_smear

needs_detector = pytest.mark.skipif(not DEFAULT_DETECTOR.is_file(), reason="no shipped detector model")


def _heatmap_with(centres: list[tuple[float, float]], side: int = 256, sigma: float = 2.0) -> np.ndarray:
    g = side // D.HM_STRIDE
    yy, xx = np.mgrid[0:g, 0:g].astype(np.float32)
    hm = np.zeros((g, g), np.float32)
    for cx, cy in centres:
        gx, gy = cx / D.HM_STRIDE - 0.5, cy / D.HM_STRIDE - 0.5
        hm = np.maximum(hm, np.exp(-((xx - gx) ** 2 + (yy - gy) ** 2) / (2 * sigma**2)))
    return hm


def test_decode_recovers_centres_and_sizes() -> None:
    hm = _heatmap_with([(60.0, 70.0), (180.0, 150.0)])
    size = np.zeros((2, *hm.shape), np.float32)
    size[0] = np.log(100 / D.NOMINAL_WBC)  # 100 px wide
    size[1] = np.log(60 / D.NOMINAL_WBC)  # 60 px high
    dets = D.decode(hm, size, threshold=0.3)
    assert len(dets) == 2
    got = sorted(((d.box[0] + d.box[2]) / 2, (d.box[1] + d.box[3]) / 2) for d in dets)
    assert np.allclose(got, [(60, 70), (180, 150)], atol=1.0)
    for d in dets:
        assert d.box[2] - d.box[0] == pytest.approx(100, rel=1e-3)
        assert d.box[3] - d.box[1] == pytest.approx(60, rel=1e-3)


def test_decode_empty_heatmap_gives_nothing() -> None:
    assert D.decode(np.zeros((40, 40), np.float32), np.zeros((2, 40, 40), np.float32)) == []


def test_touching_wbcs_are_split_between_their_centres() -> None:
    """Two WBCs whose cell masks merge into one blob get one instance each, split near the midline."""
    h, w = 120, 200
    cell = np.zeros((h, w), np.float32)
    cv2.circle(cell, (70, 60), 40, 1.0, -1)
    cv2.circle(cell, (140, 60), 40, 1.0, -1)  # overlaps the first: one connected blob
    nuc = np.zeros((h, w), np.float32)
    cv2.circle(nuc, (70, 60), 18, 1.0, -1)
    cv2.circle(nuc, (140, 60), 18, 1.0, -1)
    dets = [D.Detection((30, 20, 110, 100), 0.9), D.Detection((100, 20, 180, 100), 0.8)]
    full = []
    for (x0, y0), n, c in D.instance_masks(dets, nuc, cell):
        fn, fc = np.zeros((h, w), bool), np.zeros((h, w), bool)
        fn[y0 : y0 + n.shape[0], x0 : x0 + n.shape[1]] = n
        fc[y0 : y0 + c.shape[0], x0 : x0 + c.shape[1]] = c
        full.append((fn, fc))
    (n1, c1), (n2, c2) = full
    assert not (c1 & c2).any()
    assert c1[60, 60] and c2[60, 150] and not c1[60, 150]
    assert n1[60, 70] and n2[60, 140] and not (n1 & ~c1).any()
    assert abs(int(c1.sum()) - int(c2.sum())) < 0.1 * c1.sum()


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_nucleus_follows_the_cells_own_colour_where_the_network_draws_it_wide() -> None:
    """A 60 px cell with a 30 px violet nucleus; the network's map says 'nucleus' over a disc 40 % wider.
    The colour evidence pulls the outline back to the violet pixels, whatever the stain's absolute level."""
    yy, xx = np.mgrid[0:80, 0:80]
    r = np.hypot(xx - 40, yy - 40)
    cell, true_nuc = r < 30, r < 15
    rng = np.random.default_rng(0)
    p_net = np.where(r < 21, 0.9, 0.1).astype(np.float32)
    for offset in (0.0, 40.0):  # the same cell under a bluer stain
        blue = np.where(true_nuc, 70.0, 15.0) + offset + rng.normal(0, 4, r.shape)
        nuc = D.nucleus_mask(p_net, blue.astype(np.float32), cell)
        assert _dice(nuc, true_nuc) > 0.95
        assert _dice(p_net > 0.5, true_nuc) < 0.7  # the network's map alone is far off
    # a grey cell (no blueness contrast) keeps the network's outline
    grey = D.nucleus_mask(p_net, np.zeros(r.shape, np.float32), cell)
    assert np.array_equal(grey, (p_net > 0.5) & cell)


def test_refine_factor_only_when_far_from_nominal() -> None:
    near = [D.Detection((0, 0, D.NOMINAL_WBC * 1.1, D.NOMINAL_WBC), 0.9)]
    assert D.refine_factor(near, 0.5) is None
    big = [D.Detection((0, 0, 4 * D.NOMINAL_WBC, 4 * D.NOMINAL_WBC), 0.9)]
    assert D.refine_factor(big, 0.5) == pytest.approx(0.125)
    assert D.refine_factor([], 0.5) is None


def test_pixel_size_overrides_the_measured_scale() -> None:
    rgb, *_ = synthetic_smear(seed=1)
    s = estimate_field_scale(rgb, pixel_size=0.25)
    assert s.source == "pixel_size"
    assert s.rbc_px == pytest.approx(RBC_UM / 0.25) and s.wbc_px == pytest.approx(WBC_BOX_UM / 0.25)
    assert estimate_field_scale(rgb).source == "red_cells"
    assert estimate_field_scale(np.full((200, 200, 3), 210, np.uint8)).source == "fallback"
    with pytest.raises(ConfigError, match="pixel_size"):
        estimate_field_scale(rgb, pixel_size=-1.0)


def test_classical_uses_the_pixel_size() -> None:
    """A wrong pixel size (red cells 4x too small) loses the WBCs; the right one finds them."""
    rgb, boxes, *_ = synthetic_smear(scale=1.0, n_wbc=2, seed=2)
    right = RBC_UM / 70.0  # synthetic red cells are 70 px across at scale 1
    cells = get_segmenter("classical", pixel_size=right).segment(rgb)
    assert len(cells) == 2
    assert all(max(box_iou(c.box, b) for b in boxes) > 0.5 for c in cells)


def test_crop_follows_the_box_when_the_outline_is_poor() -> None:
    """A detector box with an outline covering only the nucleus still gives a whole-cell-sized crop."""
    from wbc.crops import cell_diameter
    from wbc.types import Cell

    m = np.zeros((200, 200), bool)
    m[80:120, 80:120] = True  # a 40 px "outline" inside a 200 px box
    c = Cell(1, (10, 10, 210, 210), m.copy(), m)
    assert cell_diameter(c) == pytest.approx(0.75 * 200)
    full = np.ones((200, 200), bool)
    assert cell_diameter(Cell(1, (10, 10, 210, 210), full, full)) == pytest.approx(1.05 * 200)
    disc = np.zeros((200, 200), np.uint8)
    cv2.circle(disc, (100, 100), 95, 1, -1)
    d = cell_diameter(Cell(1, (10, 10, 210, 210), disc > 0, disc > 0))
    assert d == pytest.approx(190, rel=0.02)  # a good outline is used as it is


def test_registry_names_and_auto() -> None:
    names = list_segmenters()
    assert {"detector", "classical", "learned"} <= set(names)
    assert resolve_method("auto") in AUTO_ORDER
    assert resolve_method("classical") == "classical"
    with pytest.raises(ConfigError, match="unknown segmenter"):
        get_segmenter("magic")


def test_a_segmenter_model_of_the_wrong_kind_is_refused_in_one_line() -> None:
    """A model file of another kind was loaded unchecked: the U-Net on the detector's file raised IndexError on every
    field, the detector on the classifier's ONNX Runtime's InvalidArgument (a traceback, the run lost)."""
    from wbc.errors import ModelError
    from wbc.paths import DEFAULT_MODEL, DEFAULT_SEGMENTER

    with pytest.raises(ModelError, match=r"wbc_detector\.onnx: --segmenter learned needs a U-Net segmenter; this file "
                                         r"is a WBC detector \(--segmenter detector\)$"):
        get_segmenter("learned", DEFAULT_DETECTOR)
    with pytest.raises(ModelError, match=r"wbc_classifier\.onnx: --segmenter detector needs a WBC detector; this file "
                                         r"is a cell classifier \(--model\)$"):
        get_segmenter("detector", DEFAULT_MODEL)
    with pytest.raises(ModelError, match=r"wbc_segmenter\.onnx: .*this file is a U-Net segmenter"):
        get_segmenter("detector", DEFAULT_SEGMENTER)
    with pytest.raises(ModelError, match=r"wbc_classifier\.onnx: not a segmenter model"):
        get_segmenter("auto", DEFAULT_MODEL)


def test_auto_with_a_u_net_model_file_is_not_run_as_the_detector() -> None:
    """``auto`` with ``--segmenter-model`` ran any file as the detector: the shipped U-Net gave "analysis failed
    (ValueError: not enough values to unpack)" on every field. It runs the kind the file is."""
    from wbc.paths import DEFAULT_SEGMENTER

    assert get_segmenter("auto", DEFAULT_SEGMENTER).name == "learned"
    assert get_segmenter("auto", DEFAULT_DETECTOR).name == "detector"
    assert resolve_method("auto", DEFAULT_SEGMENTER) == "learned"


# ------------------------------------------------------------------------------------ labelled folders
def _write_yolo_folder(root: Path) -> list[tuple[int, int, int, int]]:
    rgb, boxes, *_ = synthetic_smear(n_wbc=2, seed=4)
    (root / "images" / "test").mkdir(parents=True)
    (root / "labels" / "test").mkdir(parents=True)
    cv2.imwrite(str(root / "images" / "test" / "a.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    h, w = rgb.shape[:2]
    lines = ["0 0.5 0.5 0.02 0.02"]  # an RBC (class 0 here) that must be ignored
    for x0, y0, x1, y1 in boxes:
        lines.append(f"1 {(x0 + x1) / 2 / w} {(y0 + y1) / 2 / h} {(x1 - x0) / w} {(y1 - y0) / h}")
    (root / "labels" / "test" / "a.txt").write_text("\n".join(lines) + "\n")
    (root / "data.yaml").write_text("nc: 2\nnames:\n  0: RBC\n  1: WBC\n")
    return boxes


def test_yolo_folder_is_read_with_its_class_names(tmp_path: Path) -> None:
    boxes = _write_yolo_folder(tmp_path)
    items = load_labelled_folder(tmp_path, "test")
    assert len(items) == 1 and len(items[0].wbc_boxes) == 2
    for got, want in zip(sorted(items[0].wbc_boxes), sorted(boxes), strict=True):
        assert box_iou(got, want) > 0.98
    res = evaluate_segmentation(items, get_segmenter("classical").segment)
    assert res["detection"]["recall"] == 1.0 and res["detection"]["precision"] == 1.0


def test_voc_folder_flat_layout(tmp_path: Path) -> None:
    rgb, boxes, *_ = synthetic_smear(n_wbc=1, seed=5)
    cv2.imwrite(str(tmp_path / "f.jpg"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    x0, y0, x1, y1 = boxes[0]
    (tmp_path / "f.xml").write_text(
        "<annotation><object><name>neutrophil</name><bndbox>"
        f"<xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1 - 1}</xmax><ymax>{y1 - 1}</ymax></bndbox></object>"
        "<object><name>RBC</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox>"
        "</object></annotation>"
    )
    items = load_labelled_folder(tmp_path, None)
    assert [len(it.wbc_boxes) for it in items] == [1]


def test_bad_labels_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "x.txt"
    bad.write_text("0 0.5 zero 0.1 0.1\n")
    with pytest.raises(WbcError, match=r"x\.txt:1"):
        read_yolo_boxes(bad, 100, 100, {0})
    (tmp_path / "empty").mkdir()
    with pytest.raises(WbcError, match="no labelled images"):
        load_labelled_folder(tmp_path / "empty", None)


# ------------------------------------------------------------------------ the shipped detector, real data
def _txl_field(root: Path, origin: str, k: int = 0, n_wbc: int = 1) -> tuple[np.ndarray, list]:
    """The k-th TXL-PBC *val* field of ``origin`` with exactly ``n_wbc`` WBC boxes."""
    from wbc.io import read_image

    items = [it for it in load_labelled_folder(root / "txl_pbc", "val")
             if it.origin == origin and len(it.wbc_boxes) == n_wbc]
    it = items[k]
    return read_image(it.image), list(it.wbc_boxes)


@pytest.fixture(scope="module")
def detector() -> D.DetectorSegmenter:
    if not DEFAULT_DETECTOR.is_file():
        pytest.skip("no shipped detector model")
    return D.DetectorSegmenter(threads=1)


@pytest.mark.real_data
@needs_detector
def test_field_without_wbc(real_data: Path, detector: D.DetectorSegmenter) -> None:
    """A real field with its WBC painted over by the surrounding smear: nothing is found."""
    rgb, boxes = _txl_field(real_data, "bccd")
    x0, y0, x1, y1 = (int(v) for v in boxes[0])
    mask = np.zeros(rgb.shape[:2], np.uint8)
    mask[max(0, y0 - 10) : y1 + 10, max(0, x0 - 10) : x1 + 10] = 255
    blank = cv2.inpaint(rgb, mask, 5, cv2.INPAINT_TELEA)
    assert detector.segment(blank) == []
    assert len(detector.segment(rgb)) >= 1


@pytest.mark.real_data
@needs_detector
def test_wbc_cut_by_the_border(real_data: Path, detector: D.DetectorSegmenter) -> None:
    """The field cropped through the middle of its WBC: the visible half is found and touches the border."""
    rgb, boxes = _txl_field(real_data, "bccd")
    x0, y0, x1, y1 = boxes[0]
    cut = int((x0 + x1) / 2)
    part = np.ascontiguousarray(rgb[:, cut:])
    cells = detector.segment(part)
    want = (0.0, y0, x1 - cut, y1)
    assert len(cells) == 1
    assert cells[0].touches_border
    assert box_iou(cells[0].box, want) > 0.5


@pytest.mark.real_data
@needs_detector
def test_two_touching_wbcs(real_data: Path, detector: D.DetectorSegmenter) -> None:
    """A WBC copied right beside itself (cells touching): two cells, one box each, disjoint masks."""
    rgb, boxes = _txl_field(real_data, "bcd")
    x0, y0, x1, y1 = (int(v) for v in boxes[0])
    w = x1 - x0
    # widen the field by one WBC (mirrored smear), then paste a copy of the WBC right against it
    img = np.ascontiguousarray(cv2.copyMakeBorder(rgb, 0, 0, 0, w, cv2.BORDER_REFLECT_101))
    nx0 = x1 - 4
    img[y0:y1, nx0 : nx0 + w] = rgb[y0:y1, x0:x1]
    want = [(x0, y0, x1, y1), (nx0, y0, nx0 + w, y1)]
    cells = detector.segment(img)
    a, b = (max(cells, key=lambda c: box_iou(c.box, t)) for t in want)
    assert a is not b
    assert box_iou(a.box, want[0]) > 0.5 and box_iou(b.box, want[1]) > 0.5
    from wbc.evaluate.smears import paste_masks

    assert not (paste_masks([a], img.shape[:2])[1] & paste_masks([b], img.shape[:2])[1]).any()


@pytest.mark.real_data
@needs_detector
def test_field_at_4x_the_expected_scale(real_data: Path, detector: D.DetectorSegmenter) -> None:
    """A PBC-origin field (100x) enlarged 4x: the WBC fills most of the field and its box covers it."""
    rgb, boxes = _txl_field(real_data, "pbc")
    big = cv2.resize(rgb, None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC)
    want = tuple(4 * v for v in boxes[0])
    cells = detector.segment(big)
    assert len(cells) >= 1
    best = max(cells, key=lambda c: box_iou(c.box, want))
    assert box_iou(best.box, want) > 0.6


def test_a_weak_small_detection_does_not_rescale_the_field() -> None:
    """A WBC at nominal size (0.92) beside a platelet (0.38, 24 px): the WBC alone sets the scale, no second pass
    (BloodImage_00222 flipped left-right: before wbc 0.34.0 the median of 88 and 24 px, 56 px, enlarged the field
    1.43x and two platelets were reported as WBCs)."""
    wbc = D.Detection((0.0, 0.0, 88.0, 86.0), 0.92)
    platelet = D.Detection((200.0, 200.0, 224.0, 224.0), 0.38)
    assert D.refine_factor([wbc, platelet], 0.416) is None
    assert D.refine_factor([platelet], 0.416) == pytest.approx(0.416 * D.NOMINAL_WBC / 24)  # alone, it still votes


@pytest.mark.real_data
@needs_detector
def test_flipping_a_field_does_not_change_its_scale(real_data: Path, detector: D.DetectorSegmenter) -> None:
    """BloodImage_00222 (BCCD val) as is and flipped left-right: the same working scale and one WBC found (flipped,
    before wbc 0.34.0, a 0.38 platelet beside the 0.92 WBC pulled the scale to 0.595 and 3 cells were reported)."""
    rgb = read_image(real_data / "bccd/JPEGImages/BloodImage_00222.jpg")
    f, dets, _ = detector.detect(rgb)
    f_flipped, dets_flipped, _ = detector.detect(np.ascontiguousarray(rgb[:, ::-1]))
    assert f_flipped == pytest.approx(f, rel=1e-3)  # the red cells measured flipped differ in the 5th digit
    assert sum(d.score >= 0.5 for d in dets_flipped) == sum(d.score >= 0.5 for d in dets) == 1


@pytest.mark.real_data
@needs_detector
def test_a_field_whose_first_pass_finds_only_platelets_is_looked_at_coarser(
    real_data: Path, detector: D.DetectorSegmenter
) -> None:
    """BloodImage_00383 (BCCD val, one eosinophil) enlarged 2x: its red cells are measured 6x too small, the first
    pass, far too magnified, finds two platelets (0.47, 0.44), and before wbc 0.34.0 the coarse look that finds the
    WBC ran only when the first pass found nothing: the eosinophil was lost and both platelets reported."""
    from wbc.evaluate.smears import read_voc_boxes

    rgb = read_image(real_data / "bccd/JPEGImages/BloodImage_00383.jpg")
    truth = [tuple(2 * v for v in b) for b in read_voc_boxes(real_data / "bccd/Annotations/BloodImage_00383.xml")]
    cells = detector.segment(cv2.resize(rgb, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC))
    assert len(truth) == len(cells) == 1
    assert box_iou(tuple(map(float, cells[0].box)), truth[0]) >= 0.5


def test_cli_evaluate_smears_on_a_yolo_folder_with_pixel_size(tmp_path: Path) -> None:
    """`wbc evaluate-smears --dataset` scores any YOLO folder; `--pixel-size` reaches the segmenter."""
    import json

    from typer.testing import CliRunner

    from wbc.cli import app

    _write_yolo_folder(tmp_path / "lab")
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["evaluate-smears", "--dataset", str(tmp_path / "lab"), "--segmenter", "classical",
                                   "--pixel-size", str(RBC_UM / 70.0), "--no-classifier", "-o", str(out)])
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["detection"]["recall"] == 1.0 and m["n_images"] == 1
    bad = CliRunner().invoke(app, ["evaluate-smears", "--dataset", str(tmp_path / "nowhere"), "--segmenter",
                                   "classical", "--no-classifier", "-o", str(out)])
    assert bad.exit_code != 0 and isinstance(bad.exception, WbcError) and "not a folder" in str(bad.exception)


@pytest.mark.slow
@pytest.mark.real_data
def test_train_detector_runs_and_exports(real_data: Path, tmp_path: Path) -> None:
    """Two iterations of `wbc train-detector`'s loop write an ONNX model the segmenter loads and runs."""
    pytest.importorskip("torch")
    from wbc.train.detector import train_detector

    out = tmp_path / "d.onnx"
    res = train_detector(real_data, out, minutes=0.05, iters=2, batch=2, crop=128, eval_every=1,
                         val_per_origin=1, log=lambda _msg: None)
    assert out.is_file() and out.with_suffix(".pt").is_file() and res["best_it"] >= 1
    seg = D.DetectorSegmenter(out)
    rgb, *_ = synthetic_smear(seed=0)
    assert isinstance(seg.segment(rgb), list)


def _detector_data(root: Path) -> None:
    """A tiny data root: BCCD fields A (train), B (val), C (test); TXL-PBC train field t1 and val fields
    copying A and C by name, copying t1 byte for byte under another name, and one of its own."""
    from wbc.io import write_image

    rng = np.random.default_rng(0)
    voc = ("<annotation><object><name>WBC</name><bndbox><xmin>10</xmin><ymin>10</ymin><xmax>40</xmax>"
           "<ymax>40</ymax></bndbox></object></annotation>")
    bccd, txl = root / "bccd", root / "txl_pbc"
    (bccd / "ImageSets" / "Main").mkdir(parents=True)
    (bccd / "Annotations").mkdir()
    for split, name in (("train", "A"), ("val", "B"), ("test", "C")):
        (bccd / "ImageSets" / "Main" / f"{split}.txt").write_text(f"{name}\n")
        write_image(bccd / "JPEGImages" / f"{name}.jpg", rng.integers(0, 255, (64, 80, 3), dtype=np.uint8))
        (bccd / "Annotations" / f"{name}.xml").write_text(voc)
    rows = ["split,stem,origin,bccd_image,width,height", "train,t1,bcd,,80,64", "val,copy_a,bccd,A,80,64",
            "val,copy_c,bccd,C,80,64", "val,same_as_t1,pbc,,80,64", "val,own,bcd,,80,64"]
    (txl / "images" / "train").mkdir(parents=True)
    (txl / "images" / "val").mkdir(parents=True)
    write_image(txl / "images" / "train" / "t1.jpg", rng.integers(0, 255, (64, 80, 3), dtype=np.uint8))
    write_image(txl / "images" / "val" / "own.jpg", rng.integers(0, 255, (64, 80, 3), dtype=np.uint8))
    for stem, src in (("copy_a", bccd / "JPEGImages" / "A.jpg"), ("copy_c", bccd / "JPEGImages" / "C.jpg"),
                      ("same_as_t1", txl / "images" / "train" / "t1.jpg")):
        (txl / "images" / "val" / f"{stem}.jpg").write_bytes(src.read_bytes())
    (txl / "sources.csv").write_text("\n".join(rows) + "\n")


def test_detector_validation_holds_no_training_field(tmp_path: Path) -> None:
    """TXL-PBC val copies of BCCD train images, and fields byte-identical to a training field, are not
    validation fields: the checkpoint is chosen on fields the network has not seen."""
    pytest.importorskip("torch")
    from wbc.data import file_sha1
    from wbc.train.detector import build_training_set, build_val_set

    _detector_data(tmp_path)
    train = build_training_set(tmp_path)
    assert sorted(f.name for f in train) == ["A", "t1"]
    trained = {file_sha1(f.path) for f in train if f.path is not None}
    val = build_val_set(tmp_path)
    assert sorted(f.name for f in val) == ["B", "own"]
    assert not {file_sha1(f.path) for f in val if f.path is not None} & trained
    # leaving BCCD out of training, its train fields may validate (the BCCD origin is not validated then)
    assert sorted(f.name for f in build_val_set(tmp_path, holdout="bccd")) == ["own"]
    assert sorted(f.name for f in build_val_set(tmp_path, holdout="pbc")) == ["B", "own"]


def test_detector_never_trains_or_validates_on_resized_copies_of_held_out_fields(tmp_path: Path) -> None:
    """Training copies were left out by sources.csv's bccd_image alone, which names only BCCD-origin copies: 20 BCD
    fields of TXL-PBC train are BCCD val/test images resized to 416x416, and `wbc train-detector` trained on them
    (5 BCCD test fields included) while its help said test is never read; validation, SHA-1 alone, picked the
    checkpoint on TXL-PBC val fields resized from training fields or BCCD test images. All are now found by content
    (wbc.evaluate.smears.field_thumbnail)."""
    pytest.importorskip("torch")
    from wbc.io import write_image
    from wbc.train.detector import build_training_set, build_val_set

    rng = np.random.default_rng(0)

    def field() -> np.ndarray:  # a 640x480 field of smooth random shapes: distinct fields are far apart
        small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        return cv2.resize(small, (640, 480), interpolation=cv2.INTER_CUBIC)

    def resized(img: np.ndarray) -> np.ndarray:
        return cv2.resize(img, (416, 416), interpolation=cv2.INTER_AREA)

    voc = ("<annotation><object><name>WBC</name><bndbox><xmin>100</xmin><ymin>100</ymin><xmax>300</xmax>"
           "<ymax>300</ymax></bndbox></object></annotation>")
    bccd, txl = tmp_path / "bccd", tmp_path / "txl_pbc"
    (bccd / "ImageSets" / "Main").mkdir(parents=True)
    (bccd / "Annotations").mkdir()
    fields = {}
    for split, name in (("train", "A"), ("val", "B"), ("test", "C")):
        (bccd / "ImageSets" / "Main" / f"{split}.txt").write_text(f"{name}\n")
        fields[name] = field()
        write_image(bccd / "JPEGImages" / f"{name}.jpg", fields[name])
        (bccd / "Annotations" / f"{name}.xml").write_text(voc)
    fields["own"] = field()
    txl_fields = {("train", "copy_of_B"): resized(fields["B"]), ("train", "copy_of_C"): resized(fields["C"]),
                  ("train", "own"): fields["own"], ("val", "copy_of_own"): resized(fields["own"]),
                  ("val", "val_copy_of_C"): resized(fields["C"]), ("val", "val_own"): resized(field())}
    rows = ["split,stem,origin,bccd_image,width,height"]
    for (split, stem), img in txl_fields.items():
        write_image(txl / "images" / split / f"{stem}.jpg", img)
        (txl / "labels" / split).mkdir(parents=True, exist_ok=True)
        (txl / "labels" / split / f"{stem}.txt").write_text("0 0.3 0.4 0.3 0.4\n")
        rows.append(f"{split},{stem},bcd,,{img.shape[1]},{img.shape[0]}")
    (txl / "sources.csv").write_text("\n".join(rows) + "\n")
    assert sorted(f.name for f in build_training_set(tmp_path)) == ["A", "own"]
    assert sorted(f.name for f in build_val_set(tmp_path)) == ["B", "val_own"]
    (bccd / "JPEGImages" / "C.jpg").unlink()
    with pytest.raises(WbcError, match=r"C\.jpg: .*its copies in TXL-PBC train cannot be left out of training"):
        build_training_set(tmp_path)


@pytest.mark.slow
def test_train_detector_with_iters_is_repeatable(tmp_path: Path) -> None:
    """With --iters the learning rate follows the iterations, not the wall clock: two runs with one seed give the
    same weights (the time budget only ends a run early). The learning rate followed the wall time used."""
    torch = pytest.importorskip("torch")
    from wbc.train.detector import train_detector

    _detector_data(tmp_path / "data")
    weights, results = [], []
    for run in ("a", "b"):
        out = tmp_path / run / "d.onnx"
        results.append(train_detector(tmp_path / "data", out, minutes=1.0, iters=3, batch=2, crop=64, lr=0.1,
                                      eval_every=3, pretrained=False, log=lambda _msg: None))
        weights.append(torch.load(out.with_suffix(".pt"), weights_only=True))
    assert all(torch.equal(v, weights[1][k]) for k, v in weights[0].items())
    assert [r["iterations"] for r in results] == [3, 3]


def test_smear_scores_on_fields_without_masks_or_without_boxes(tmp_path: Path) -> None:
    """A field without a mask (a YOLO folder, TXL-PBC) counts every detection in the "unannotated cells ignored"
    block too (wbc 0.26.0 showed precision 1, recall 0 there); fields without any WBC box give AP null, not a bare NaN
    that makes metrics.json invalid JSON."""
    import json

    from wbc.evaluate.smears import BccdItem, evaluate_smears, summary_markdown
    from wbc.types import Cell

    img = tmp_path / "f.png"
    cv2.imwrite(str(img), np.full((100, 100, 3), 200, np.uint8))
    m = np.ones((20, 20), bool)

    def seg(rgb: np.ndarray) -> list[Cell]:  # one detection on a true box, one on nothing
        return [Cell(0, (10, 10, 30, 30), m, m, score=0.9), Cell(1, (80, 0, 100, 20), m, m, score=0.8)]

    res = evaluate_segmentation([BccdItem("f", img, [(10.0, 10.0, 30.0, 30.0), (50.0, 50.0, 70.0, 70.0)], None, None)],
                                seg)
    det, ign = res["detection"], res["detection_ignore_unannotated"]
    assert (det["tp"], det["fp"], det["fn"]) == (1, 1, 1)
    assert (ign["tp"], ign["fp"], ign["fn"], ign["precision"], ign["recall"]) == (1, 1, 1, 0.5, 0.5)

    folder = tmp_path / "yolo"
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    cv2.imwrite(str(folder / "images" / "a.png"), np.full((100, 100, 3), 200, np.uint8))
    (folder / "labels" / "a.txt").write_text("")  # a field without WBCs

    class Seg:
        name = model_id = "fake"

        def segment(self, rgb: np.ndarray) -> list[Cell]:
            return seg(rgb)[:1]

    evaluate_smears(tmp_path, tmp_path / "out", Seg(), dataset=folder)
    text = (tmp_path / "out" / "metrics.json").read_text()
    metrics = json.loads(text, parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))
    assert metrics["detection"]["ap50"] is None
    assert "| AP@0.5 | n/a (no WBC box) |" in summary_markdown(metrics)


def test_a_field_larger_than_the_network_s_window_is_run_in_stitched_windows(monkeypatch) -> None:
    """A pointwise stand-in for the network: the windows' outputs, stitched, are the whole field's."""
    seg = D.DetectorSegmenter.__new__(D.DetectorSegmenter)

    def pointwise(small: np.ndarray, ref: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        f = small.astype(np.float32) / 255
        hm = f[D.HM_STRIDE // 2 :: D.HM_STRIDE, D.HM_STRIDE // 2 :: D.HM_STRIDE, 0]
        hh, ww = -(-small.shape[0] // D.HM_STRIDE), -(-small.shape[1] // D.HM_STRIDE)
        hm = np.pad(hm, ((0, hh - hm.shape[0]), (0, ww - hm.shape[1])))
        return hm, np.stack([hm, 2 * hm]), np.moveaxis(f[..., :2], 2, 0)

    monkeypatch.setattr(seg, "run", pointwise)
    field = np.random.default_rng(0).integers(0, 255, (1500, 2300, 3), np.uint8)
    whole, tiled = pointwise(field), seg.run_tiled(field)
    for a, b in zip(whole, tiled, strict=True):
        assert a.shape == b.shape and np.array_equal(a, b)


def bccd_mosaic(root: Path, k: int) -> tuple[np.ndarray, list[tuple[float, float, float, float]]]:
    """k x k BCCD train/val fields at half size (320 x 240, 80 px WBCs) in one image, and their WBC boxes."""
    from wbc.evaluate.smears import load_bccd
    from wbc.io import read_image

    items = load_bccd(root, "trainval")
    h, w = 240, 320
    mosaic, truth = np.zeros((k * h, k * w, 3), np.uint8), []
    for n in range(k * k):
        it = items[n % len(items)]
        y, x = (n // k) * h, (n % k) * w
        field = read_image(it.image)[:480, :640]
        mosaic[y : y + h, x : x + w] = cv2.resize(field, (w, h), interpolation=cv2.INTER_AREA)
        truth += [(b[0] / 2 + x, b[1] / 2 + y, b[2] / 2 + x, b[3] / 2 + y) for b in it.wbc_boxes]
    return mosaic, truth


def test_cells_of_a_large_field_are_found_at_their_own_scale(real_data: Path) -> None:
    """A 3840 x 2880 mosaic of 144 BCCD train/val fields at half size (80 px WBCs): the field was shrunk to 1024 px,
    its WBCs below the smallest the detector was trained on, and at most 100 kept: 94 of 152 found (wbc 0.26.0)."""
    mosaic, truth = bccd_mosaic(real_data, 12)
    cells = get_segmenter("auto", threads=2).segment(mosaic)
    found = sum(any(box_iou(tuple(float(v) for v in c.box), t) >= 0.5 for c in cells) for t in truth)
    assert len(truth) == 152 and found >= 145 and len(cells) <= len(truth) + 8


def test_the_red_cells_of_a_field_of_many_megapixels_are_measured_on_its_centre(real_data: Path) -> None:
    """On a 6,400 x 4,800 mosaic of BCCD fields at half size the whole field's 160 px thumbnail made a red cell a
    pixel across, and the estimate was noise (156 px for red cells of about 40): no WBC was found without
    --pixel-size (wbc 0.26.0). The central part is measured instead, as a 640 x 480 field is."""
    from wbc.evaluate.smears import load_bccd
    from wbc.io import read_image
    from wbc.segment.classical import estimate_rbc_diameter

    items = load_bccd(real_data, "trainval")
    mosaic, _ = bccd_mosaic(real_data, 20)
    one = np.median([estimate_rbc_diameter(cv2.resize(read_image(it.image), (320, 240), interpolation=cv2.INTER_AREA))
                     for it in items[:20]])
    assert 0.7 < estimate_rbc_diameter(mosaic) / one < 1.4


def test_cropped_copy_drops_boxes_outside_the_crop(tmp_path: Path) -> None:
    """``benchmarks/smear_detection.py --crop``: a box wholly outside the central crop, on both axes, is dropped
    (clipped, its negative width and height once multiplied to a positive area kept it as a box no detection
    could match); a box inside is kept and scaled."""
    import sys

    from wbc.evaluate.smears import BccdItem

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from smear_detection import resized_copy

    image = tmp_path / "field.png"
    cv2.imwrite(str(image), np.full((100, 100, 3), 200, np.uint8))
    item = BccdItem("field", image, [(40.0, 40.0, 60.0, 60.0), (0.0, 0.0, 10.0, 10.0)], None, None)
    (out,) = resized_copy([item], 100, tmp_path / "copy", crop=0.5)
    assert out.wbc_boxes == [(30.0, 30.0, 70.0, 70.0)]


@needs_detector
def test_with_the_optics_given_a_field_over_1024_px_is_enlarged_to_the_nominal_wbc(monkeypatch) -> None:
    """With --pixel-size the WBC size is known, but a field over 1,024 px was never enlarged (the one-pass rule from
    before windows): a 20x objective's 21 px WBCs stayed at 0.26x nominal. It is enlarged within MAX_UPSCALE and
    MAX_WORK_PIXELS and run in windows; a measured scale keeps the one-pass rule."""
    field, *_ = synthetic_smear(scale=0.2, n_wbc=3, seed=0, size=(1200, 1600))
    seen: list[tuple[int, ...]] = []

    def fake_run(small: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # shapes only, no network
        seen.append(small.shape)
        h, w = small.shape[:2]
        return np.zeros((-(-h // 4), -(-w // 4)), np.float32), np.zeros((2, -(-h // 4), -(-w // 4)), np.float32), \
            np.zeros((2, h, w), np.float32)

    seg = D.DetectorSegmenter(pixel_size=1.0)  # a 14 um WBC box is 14 px: 80 / 14 > MAX_UPSCALE
    monkeypatch.setattr(seg, "run_tiled", fake_run)
    assert seg.segment(field) == [] and seen == [(3600, 4800, 3)]
    assert D.working_factor((1200, 1600), 14.0) == 1.0  # measured: one pass, as before


@pytest.mark.slow
@pytest.mark.real_data
@needs_detector
def test_bccd_fields_at_a_20x_objective_s_magnification_are_found_with_the_pixel_size(real_data: Path) -> None:
    """BCCD val fields at 0.1x (WBC boxes ~21 px) tiled 30 x 30 into 1,920 x 1,440 px: with --pixel-size 1.0 the
    detector found 388 of the 900 WBCs (the field was not enlarged), 880 when it is."""
    from wbc.evaluate.smears import load_bccd
    from wbc.io import read_image

    items = load_bccd(real_data, "val")
    tiles, truth = [], []
    for k in range(900):
        it, (r, c) = items[k % len(items)], divmod(k, 30)
        tiles.append(cv2.resize(read_image(it.image), (64, 48), interpolation=cv2.INTER_AREA))
        truth += [(c * 64 + b[0] * 0.1, r * 48 + b[1] * 0.1, c * 64 + b[2] * 0.1, r * 48 + b[3] * 0.1)
                  for b in it.wbc_boxes]
    mosaic = np.ascontiguousarray(np.vstack([np.hstack(tiles[r * 30 : (r + 1) * 30]) for r in range(30)]))
    cells = D.DetectorSegmenter(pixel_size=1.0, threads=2).segment(mosaic)
    found = sum(any(box_iou(c.box, t) >= 0.5 for c in cells) for t in truth)
    assert found >= 0.9 * len(truth)
