"""Segmentation on synthetic smears (runs anywhere) and on real BCCD fields (skipped without the data)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from wbc.evaluate.smears import dice_iou, match_detections, paste_masks
from wbc.segment import get_segmenter
from wbc.segment.classical import ClassicalSegmenter, estimate_rbc_diameter
from wbc.synthetic import synthetic_smear


@pytest.mark.parametrize("scale", [0.6, 1.0, 1.6])
def test_rbc_diameter_follows_the_image_scale(scale: float) -> None:
    rgb, *_ = synthetic_smear(
        scale=scale, n_wbc=1, seed=1, size=(int(480 * max(1, scale)), int(640 * max(1, scale)))
    )
    d = estimate_rbc_diameter(rgb)
    assert d is not None
    assert 0.7 * 70 * scale < d < 1.4 * 70 * scale


def test_blank_field_has_no_scale_and_no_cells() -> None:
    rgb = np.full((300, 400, 3), 210, np.uint8)
    assert estimate_rbc_diameter(rgb) is None
    assert ClassicalSegmenter().segment(rgb) == []


def test_field_without_wbc_is_empty() -> None:
    rgb, *_ = synthetic_smear(n_wbc=0, seed=3)
    assert ClassicalSegmenter().segment(rgb) == []


@pytest.mark.parametrize(("scale", "tint"), [(1.0, (1, 1, 1)), (0.6, (1, 1, 1)), (1.5, (0.9, 1.0, 1.05))])
def test_classical_finds_and_outlines_wbcs_at_any_scale(
    scale: float, tint: tuple[float, float, float]
) -> None:
    h, w = int(480 * max(1, scale)), int(640 * max(1, scale))
    rgb, boxes, nuc, cell = synthetic_smear(scale=scale, n_wbc=2, seed=2, size=(h, w), tint=tint)
    cells = ClassicalSegmenter().segment(rgb)
    tp, _, n = match_detections([c.box for c in cells], [1.0] * len(cells), boxes)
    assert sum(tp) == n == 2 and len(cells) == 2
    pn, pc = paste_masks(cells, rgb.shape[:2])
    assert dice_iou(pn, nuc)[0] > 0.8
    assert dice_iou(pc, cell)[0] > 0.85
    for c in cells:
        assert c.cell_mask.shape == (c.box[3] - c.box[1], c.box[2] - c.box[0])
        assert not (c.nucleus_mask & ~c.cell_mask).any()  # the cell includes its nucleus


def test_unknown_segmenter_is_a_clear_error() -> None:
    from wbc.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown segmenter"):
        get_segmenter("magic")


@pytest.mark.real_data
def test_learned_and_classical_on_real_bccd_train_fields(real_data: Path) -> None:
    """Both methods on a few BCCD *train* fields: every boxed WBC found, masks overlap the truth."""
    from wbc.evaluate.smears import evaluate_segmentation, load_bccd
    from wbc.paths import DEFAULT_SEGMENTER

    items = [it for it in load_bccd(real_data, "train") if len(it.wbc_boxes) == 1][:6]
    methods = ["classical"] + (["learned"] if DEFAULT_SEGMENTER.is_file() else [])
    for m in methods:
        res = evaluate_segmentation(items, get_segmenter(m).segment)
        assert res["detection"]["recall"] >= 5 / 6, m
        assert res["segmentation"]["cell_dice"] > 0.7, m


def _with_blob(rgb: np.ndarray, centre: tuple[int, int], diameter: float) -> np.ndarray:
    """``rgb`` with a violet, nucleus-coloured blob (a platelet or platelet clump) drawn in."""
    import cv2

    out = rgb.astype(np.float32)
    cv2.circle(out, centre, round(diameter / 2), (135, 115, 205), -1, cv2.LINE_AA)
    return np.clip(cv2.GaussianBlur(out, (0, 0), 1.2), 0, 255).astype(np.uint8)


def _far_from(boxes: list[tuple[int, int, int, int]], shape: tuple[int, ...], margin: float) -> tuple[int, int]:
    """A point of the field at least ``margin`` px away from every box."""
    h, w = shape[:2]
    for y in range(int(margin), h - int(margin), 10):
        for x in range(int(margin), w - int(margin), 10):
            if all(x < b[0] - margin or x > b[2] + margin or y < b[1] - margin or y > b[3] + margin for b in boxes):
                return x, y
    raise AssertionError("no free spot")


@pytest.mark.parametrize("diameter_rbc", [0.25, 0.35])
@pytest.mark.parametrize("scale_error", [1.0, 3.0])
def test_platelet_sized_blob_is_not_a_wbc(
    diameter_rbc: float, scale_error: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A platelet (1/16 to 1/8 of a red cell's area) next to a WBC is not reported, also when the
    red-cell diameter is under-estimated 3x (as on BCCD fields with pale-centred red cells)."""
    import wbc.segment.classical as classical

    rgb, boxes, *_ = synthetic_smear(n_wbc=1, seed=5)
    rgb = _with_blob(rgb, _far_from(boxes, rgb.shape, 40), diameter_rbc * 70)
    if scale_error != 1.0:
        true_d = classical.estimate_rbc_diameter(rgb)
        assert true_d is not None
        monkeypatch.setattr(classical, "estimate_rbc_diameter", lambda _rgb: true_d / scale_error)
    cells = classical.ClassicalSegmenter().segment(rgb)
    tp, _, _ = match_detections([c.box for c in cells], [1.0] * len(cells), boxes)
    assert sum(tp) == 1 and len(cells) == 1


def test_platelets_rejected_even_when_the_red_cell_scale_is_underestimated() -> None:
    """The field-relative size test does not need the red-cell scale: with the scale 4x too small (as on
    BCCD fields with pale-centred red cells) a platelet passes the red-cell floor but is still dropped."""
    from wbc.segment.classical import instances_from_maps

    nuc = np.zeros((200, 300), np.float32)
    yy, xx = np.mgrid[:200, :300]
    nuc[(yy - 100) ** 2 + (xx - 100) ** 2 < 20**2] = 1.0  # WBC nucleus, ~0.4 red-cell areas at rbc_px=64
    nuc[(yy - 100) ** 2 + (xx - 240) ** 2 < 6**2] = 1.0  # platelet
    inst = instances_from_maps(nuc, nuc.copy(), rbc_px=16.0)
    assert inst.nucleus.max() == 1
    assert inst.nucleus[100, 100] == 1 and inst.nucleus[100, 240] == 0


def test_keep_nucleus_groups_is_relative_to_the_field() -> None:
    from wbc.segment.classical import MIN_NUCLEUS_AREA_FIELD, keep_nucleus_groups

    rbc_area = 100.0
    keep = keep_nucleus_groups(np.array([5000, 200, 0.9 * MIN_NUCLEUS_AREA_FIELD * 200, 120, 10]), rbc_area)
    assert keep.tolist() == [False, True, False, True, False]  # background, WBC, platelet clump, WBC, debris
    assert not keep_nucleus_groups(np.array([5000, 10, 12]), rbc_area).any()  # no WBC: nothing kept


def test_lobes_far_apart_in_red_cells_but_close_for_the_nucleus_are_one_cell() -> None:
    """Two lobes whose gap exceeds the red-cell lobe gap (scale under-estimated) stay one cell because
    the gap is small relative to the nucleus itself."""
    from wbc.segment.classical import instances_from_maps

    nuc = np.zeros((200, 300), np.float32)
    yy, xx = np.mgrid[:200, :300]
    nuc[(yy - 100) ** 2 + (xx - 120) ** 2 < 30**2] = 1.0
    nuc[(yy - 100) ** 2 + (xx - 190) ** 2 < 30**2] = 1.0  # 10 px gap: > 0.25 x 16 px, < 0.25 x nucleus
    inst = instances_from_maps(nuc, nuc.copy(), rbc_px=16.0)
    assert inst.nucleus.max() == 1


@pytest.mark.real_data
def test_classical_precision_on_real_bccd_val_fields(real_data: Path) -> None:
    """On 30 BCCD *val* fields the classical detector finds the boxed WBCs with few false positives."""
    from wbc.evaluate.smears import evaluate_segmentation, load_bccd

    res = evaluate_segmentation(load_bccd(real_data, "val")[:30], ClassicalSegmenter().segment)
    assert res["detection"]["recall"] >= 0.95
    assert res["detection"]["precision"] >= 0.9


def _pale_centred_field(d: float, seed: int = 0, granules: bool = True) -> np.ndarray:
    """Red cells ``d`` px across drawn as thin pink rims around near-background centres (as on BCCD fields
    where the LoG of the red stain saw only the rim), optionally with a WBC ringed by red granules."""
    import cv2

    rng = np.random.default_rng(seed)
    h, w = 480, 640
    img = np.full((h, w, 3), (200, 202, 200), np.float32)
    for _ in range(int(h * w / (d * d) * 0.7)):
        x, y = rng.uniform([0, 0], [w, h])
        cv2.circle(img, (int(x), int(y)), int(d / 2), (178, 140, 150), -1, cv2.LINE_AA)
        cv2.circle(img, (int(x), int(y)), int(0.36 * d), (199, 196, 196), -1, cv2.LINE_AA)
    if granules:  # an eosinophil: violet nucleus, small bright-red granules around it
        for x, y in np.array([w / 2, h / 2]) + rng.normal(0, d * 0.5, (150, 2)):
            cv2.circle(img, (int(x), int(y)), max(1, int(d / 25)), (200, 90, 110), -1, cv2.LINE_AA)
        cv2.circle(img, (w // 2, h // 2), int(d * 0.35), (135, 115, 205), -1, cv2.LINE_AA)
    img = cv2.GaussianBlur(img + rng.normal(0, 3, img.shape), (0, 0), 1.2)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("d", [40.0, 70.0, 110.0])
@pytest.mark.parametrize("granules", [False, True])
def test_rbc_diameter_of_pale_centred_red_cells(d: float, granules: bool) -> None:
    """Thin-rimmed red cells and red granules do not shrink the scale (the former LoG gave ~0.23x)."""
    est = estimate_rbc_diameter(_pale_centred_field(d, granules=granules))
    assert est is not None
    assert 0.8 * d < est < 1.3 * d


def test_spectrum_mode_is_the_disc_radius_despite_overlaps_and_specks() -> None:
    """The opening spectrum peaks at the discs' radius: overlapping pairs and small specks do not move it."""
    import cv2

    from wbc.segment.classical import opening_areas, spectrum_mode

    mask = np.zeros((240, 320), np.uint8)
    rng = np.random.default_rng(0)
    for x, y in [(40, 40), (120, 50), (200, 60), (60, 150), (160, 170), (260, 180)]:
        cv2.circle(mask, (x, y), 12, 1, -1)
        cv2.circle(mask, (x + 14, y + 6), 12, 1, -1)  # an overlapping neighbour
    for x, y in rng.uniform([0, 0], [320, 240], (40, 2)):
        cv2.circle(mask, (int(x), int(y)), 2, 1, -1)
    radii = np.geomspace(1.25, 40.0, 25)
    areas = opening_areas(mask.astype(bool), radii)
    total = float(mask.sum())
    assert areas[radii < 8].min() > 0.8 * total  # discs of radius 12 survive smaller openings
    assert areas[radii > 14].max() < 0.05 * total  # and are gone once the disc is wider
    assert 0.85 * 12 < spectrum_mode(areas, radii) < 1.15 * 12


def test_red_cell_mask_fills_pale_centres_and_leaves_out_the_wbc() -> None:
    from wbc.segment.classical import red_cell_mask

    rgb = _pale_centred_field(70.0, granules=True)
    mask = red_cell_mask(rgb)
    assert not mask[240, 320]  # the WBC nucleus (and what touches it) is not a red cell
    assert 0.2 < mask.mean() < 0.9


def test_nucleus_with_pale_chromatin_comes_out_solid() -> None:
    """A nucleus whose probability map has a pale hole is reported without the hole (nuclei are solid)."""
    from wbc.segment.classical import cells_from_instances, instances_from_maps

    yy, xx = np.mgrid[:200, :300]
    r2 = (yy - 100) ** 2 + (xx - 150) ** 2
    nuc = ((r2 < 25**2) & (r2 >= 8**2)).astype(np.float32)
    cell = (r2 < 40**2).astype(np.float32)
    inst = instances_from_maps(nuc, cell, rbc_px=32.0)
    cells = cells_from_instances(inst, nuc, cell, (400, 600), rbc_px=32.0)
    assert len(cells) == 1
    c = cells[0]
    cy, cx = 200 - c.box[1], 300 - c.box[0]
    assert c.nucleus_mask[cy, cx]


def test_train_segmenter_replaces_its_model_in_one_step(tmp_path: Path) -> None:
    """The new model is written beside the old and renamed over it, never written into it: a crash or a full disk
    while writing left a truncated model (the default --output is the shipped one). A hard link to the old file
    still holds the old model afterwards, and no temporary file is left."""
    torch = pytest.importorskip("torch")
    import onnx

    from wbc.train.segmenter import UNet, export

    out = tmp_path / "seg.onnx"
    torch.manual_seed(0)
    export(UNet(widths=(4, 4, 4, 4, 4)), out, "first", {})
    old = out.read_bytes()
    (tmp_path / "old.onnx").hardlink_to(out)  # the same file as the model, as long as it is written in place
    export(UNet(widths=(4, 4, 4, 4, 4)), out, "second", {})
    assert (tmp_path / "old.onnx").read_bytes() == old
    assert {p.value for p in onnx.load(str(out)).metadata_props if p.key == "model_id"} == {"second"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.onnx", "seg.onnx"]


@pytest.mark.parametrize(("kwargs", "placed"), [
    ({"n_wbc": 40}, "placed 11"), ({"scale": 3, "size": (200, 200)}, "placed 0")])
def test_synthetic_smear_refuses_wbcs_it_has_no_room_for(kwargs: dict, placed: str) -> None:
    """Too many WBCs for the field, or a field smaller than one: a clear error, not fewer boxes than asked for
    without a word (40 gave 12) or numpy's "high - low < 0"."""
    from wbc.errors import WbcError

    with pytest.raises(WbcError, match=f"no room for .* WBCs .*{placed}"):
        synthetic_smear(**kwargs)
    assert len(synthetic_smear(n_wbc=3, seed=2)[1]) == 3


def _low_magnification_field() -> np.ndarray:
    """The six example fields at 0.15x (a 20x objective's view: red cells ~14 px, WBC boxes ~30 px), tiled 20 x 20
    into one 1,920 x 1,440 px field of 467 WBCs."""
    import cv2

    from wbc.examples import example_fields
    from wbc.io import read_image

    fields = [cv2.resize(read_image(p), (96, 72), interpolation=cv2.INTER_AREA) for p in example_fields()]
    tiles = [fields[k % 6] for k in range(400)]
    return np.ascontiguousarray(np.vstack([np.hstack(tiles[r * 20 : (r + 1) * 20]) for r in range(20)]))


def test_a_low_magnification_field_whose_red_cells_vanish_on_the_thumbnail_is_measured_on_its_centre() -> None:
    """Red cells of ~1 thumbnail pixel are not found on the whole field's thumbnail: that look's None must lead to a
    look at the centre (it ended the search, and the detector then looked for WBCs 17x too large and found none)."""
    from wbc.segment.classical import thumbnail_rbc_diameter

    field = _low_magnification_field()
    assert thumbnail_rbc_diameter(field) is None
    d = estimate_rbc_diameter(field)
    assert d is not None and 10 < d < 20
    assert len(get_segmenter("detector").segment(field)) >= 0.9 * 467


def test_the_instance_loop_works_inside_each_cell_s_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """The classical/U-Net instance loop ran an opening, a hole filling and a labelling over the whole working field
    once per cell (cells x field pixels: 292 s for a 12 Mpx field of 376 cells); each cell's work is inside its box
    (plus the opening's reach), with the same cells."""
    from scipy import ndimage as ndi

    import wbc.segment.classical as C
    from wbc.examples import example_fields
    from wbc.io import read_image

    rgb = read_image(example_fields()[3])  # two WBCs
    field = np.ascontiguousarray(np.vstack([np.hstack([rgb] * 3)] * 3))  # 18 WBCs
    sizes: list[int] = []
    real = ndi.binary_fill_holes

    def spy(m: np.ndarray, *a: object, **k: object) -> np.ndarray:
        sizes.append(m.size)
        return real(m, *a, **k)

    monkeypatch.setattr(C.ndi, "binary_fill_holes", spy)
    cells = C.ClassicalSegmenter().segment(field)
    assert len(cells) >= 15
    factor = C.work_factor(field, C.estimate_rbc_diameter(C.white_balance(field)))
    h, w = C.resample(field, factor).shape[:2]
    per_cell = sorted(sizes)[:-2]  # the two whole-field fills (nucleus groups, stained foreground) stay
    assert len(per_cell) >= 15 and max(per_cell) < 0.1 * h * w


def test_the_working_field_of_classical_and_learned_has_a_pixel_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``--pixel-size`` a low-magnification field is enlarged to red cells of 32 px: a 2,000 x 1,500 px field at
    0.75 um/px became 6,400 x 4,800 (a 12 MP camera's 123 Mpx ran out of memory). The working field is capped at
    MAX_WORK_PIXELS (here lowered to 4 Mpx), its red cells smaller, and the WBCs are still found."""
    import wbc.segment.classical as C

    rgb, boxes, *_ = synthetic_smear(scale=0.15, n_wbc=6, seed=1, size=(1500, 2000))  # red cells ~10 px
    monkeypatch.setattr(C, "MAX_WORK_PIXELS", 4_000_000, raising=False)
    shapes: list[tuple[int, ...]] = []
    real = C.resample

    def spy(img: np.ndarray, factor: float) -> np.ndarray:
        out = real(img, factor)
        shapes.append(out.shape)
        return out

    monkeypatch.setattr(C, "resample", spy)
    cells = ClassicalSegmenter(pixel_size=0.75).segment(rgb)
    assert shapes and all(h * w <= 4_000_000 for h, w, _ in shapes), shapes
    tp, _, _ = match_detections([c.box for c in cells], [c.score for c in cells], [tuple(b) for b in boxes])
    assert sum(tp) >= 5


def test_the_u_net_runs_a_large_working_field_in_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    """The U-Net took the whole working field in one call (ONNX Runtime could not allocate 860 MB for a 6,400 x 4,800
    one, and the run ended): a field wider than a window runs in overlapping windows, with the same cells."""
    import wbc.segment.learned as L

    rgb, *_ = synthetic_smear(n_wbc=4, seed=2, size=(1200, 1600))  # ~730 x 550 px at the working scale
    seg = L.LearnedSegmenter()
    one = [c.box for c in seg.segment(rgb)]
    monkeypatch.setattr(L, "MAX_WINDOW_SIDE", 320, raising=False)
    monkeypatch.setattr(L, "WINDOW_MARGIN", 64, raising=False)
    inputs: list[tuple[int, ...]] = []
    real = seg.session.run

    def spy(names: object, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        inputs.append(next(iter(feed.values())).shape)
        return real(names, feed)

    monkeypatch.setattr(seg, "session", type("S", (), {"run": staticmethod(spy)})())
    windowed = [c.box for c in seg.segment(rgb)]
    assert len(inputs) > 1 and all(max(s[2:]) <= 320 for s in inputs), inputs
    assert len(one) == 4 and windowed == one


def test_a_small_nucleus_far_from_the_field_s_largest_is_kept() -> None:
    """The platelet/fragment test compared each nucleus group with the whole field's largest: in a field of many
    fields' size the largest of dozens of nuclei dropped small lymphocytes far from it (classical on an 8 x 8 mosaic of
    BCCD val fields found 53 of the 65 WBCs the fields give one by one). It compares with the larger groups near it."""
    import cv2

    from wbc.segment.classical import instances_from_maps

    def nuclei(small_at: tuple[int, int]) -> np.ndarray:
        m = np.zeros((1500, 1500), np.uint8)
        cv2.circle(m, (100, 100), 20, 1, -1)  # a large nucleus: 40 px across, its reach 12 x 40 px
        cv2.circle(m, small_at, 10, 1, -1)  # a quarter of its area: under MIN_NUCLEUS_AREA_FIELD (0.3) of it
        return m.astype(np.float32)

    far = nuclei((1300, 1300))  # 1,700 px away: another field's WBC
    assert int(instances_from_maps(far, far).cell.max()) == 2
    near = nuclei((300, 100))  # 200 px away, in the same field: a fragment or platelet beside a WBC
    assert int(instances_from_maps(near, near).cell.max()) == 1


@pytest.mark.real_data
def test_classical_on_a_mosaic_of_bccd_val_fields_finds_what_the_fields_give_one_by_one(real_data: Path) -> None:
    """8 x 8 full-size BCCD val fields as one 5,120 x 3,840 px field: the whole-field nucleus test kept 53 of the 65
    WBCs the fields give one by one; the local one keeps 62."""
    from wbc.evaluate.smears import load_bccd
    from wbc.io import read_image

    items = load_bccd(real_data, "val")
    tiles = [read_image(items[k % len(items)].image) for k in range(64)]
    mosaic = np.ascontiguousarray(np.vstack([np.hstack(tiles[r * 8 : (r + 1) * 8]) for r in range(8)]))
    seg = ClassicalSegmenter()
    alone = sum(len(seg.segment(t)) for t in tiles)
    assert len(seg.segment(mosaic)) >= 0.9 * alone


def test_the_public_load_segmenter_takes_the_pixel_size() -> None:
    """Every method takes ``pixel_size``, but ``wbc.load_segmenter`` could not pass it: Python users could not give
    their optics."""
    import wbc
    from wbc.errors import ConfigError

    assert wbc.load_segmenter("classical", threads=1, pixel_size=0.2).pixel_size == 0.2
    assert wbc.load_segmenter("classical", threads=1).pixel_size is None
    with pytest.raises(ConfigError, match=r"^pixel_size -1\.0: expected a number"):
        wbc.load_segmenter("classical", pixel_size=-1.0)


@pytest.mark.parametrize("value", ["0.1", "abc", True, 0, float("nan"), [0.1]])
def test_load_segmenter_names_a_pixel_size_that_is_no_positive_number(value: object) -> None:
    """A pixel size read from a config file or the environment (a string) failed inside NumPy with a TypeError; every
    value that is no number between 0.01 and 10 is a one-line ConfigError naming the keyword and the value."""
    import wbc
    from wbc.errors import ConfigError

    shown = repr(value) if isinstance(value, str) else str(value)
    with pytest.raises(ConfigError, match=rf"^pixel_size {re.escape(shown)}: expected a number of micrometres per "
                                          r"pixel between 0\.01 and 10$"):
        wbc.load_segmenter("classical", threads=1, pixel_size=value)  # type: ignore[arg-type]
