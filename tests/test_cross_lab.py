"""Issue 13: framing-invariant single-cell input, a chosen label set, shape-first augmentation."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from tests.conftest import needs_torch

from wbc.errors import WbcError
from wbc.labels import CLASSES, WBC5, parse_class_set, restrict_probabilities
from wbc.reframe import (
    CANONICAL,
    background_colour,
    frame_cell,
    frame_cell_views,
    framing_stats_of,
    lab_framing,
    measure_framing,
    needs_reframe,
    nucleus_extent,
    reframe_cell,
)
from wbc.synthetic import synthetic_cell


def _cell(label: str = "lymphocyte", size: int = 200, seed: int = 0) -> np.ndarray:
    return synthetic_cell(label, size, seed)


def _pad(rgb: np.ndarray, factor: float) -> np.ndarray:
    h = rgb.shape[0]
    p = round(h * (factor - 1) / 2)
    return cv2.copyMakeBorder(rgb, p, p, p, p, cv2.BORDER_CONSTANT, value=(235, 215, 205))


def test_measure_framing_finds_the_central_nucleus() -> None:
    img = _cell()
    f = measure_framing(img)
    assert f.found
    assert abs(f.cx - 100) < 15 and abs(f.cy - 100) < 15
    # the synthetic lymphocyte nucleus has radius 0.24 of the side: extent ~0.48
    assert 0.35 < f.fraction < 0.6


def test_measure_framing_scales_with_the_frame() -> None:
    img = _cell()
    wide = measure_framing(_pad(img, 3.0))
    assert wide.found
    assert wide.fraction == pytest.approx(measure_framing(img).fraction / 3, rel=0.25)


def test_no_nucleus_means_no_reframe() -> None:
    blank = np.full((120, 120, 3), 230, np.uint8)
    cv2.circle(blank, (60, 60), 15, (225, 150, 150), -1)  # a red cell: pale, not a nucleus
    f = measure_framing(blank)
    assert not f.found
    assert not needs_reframe(f, blank.shape)
    out = frame_cell(blank, 64)
    assert np.array_equal(out, cv2.resize(blank, (64, 64), interpolation=cv2.INTER_AREA))


def _pale_field(nucleus: bool = True) -> np.ndarray:
    """A pale, blurred stain as in BCCD's fields: the nucleus no darker than the red cells in its smallest channel,
    only bluer; red cells crowd the centre, the WBC sits off it."""
    field = np.full((240, 320, 3), (222, 226, 232), np.uint8)  # bluish glass
    for x, y in [(160, 120), (190, 100), (130, 140), (40, 40), (280, 200), (70, 200)]:
        cv2.circle(field, (x, y), 24, (214, 150, 160), -1)  # pink red cells: smallest channel ~0.67 of the glass
    if nucleus:
        cv2.circle(field, (240, 80), 36, (200, 175, 205), -1)  # pale cytoplasm
        cv2.ellipse(field, (240, 80), (26, 22), 20, 0, 360, (160, 150, 214), -1)  # pale, blue nucleus
    return cv2.GaussianBlur(field, (0, 0), 2)


def test_a_pale_nucleus_is_found_by_its_colour_where_red_cells_are_as_dark() -> None:
    """In the smallest channel a pale nucleus is no darker than the red cells around it, and the two merge into one
    component; in red it stands out, as red cells are almost as light as the glass (BCCD's fields 320 x 240: a nucleus
    found in 241 of 277 against 184; fails on wbc 0.20.0's code)."""
    f = measure_framing(_pale_field())
    assert f.found
    assert abs(f.cx - 240) < 12 and abs(f.cy - 80) < 12
    assert 0.15 < f.fraction < 0.3  # the nucleus' ~52 px of the 240 px side


def test_pale_red_cells_are_no_nucleus() -> None:
    """Without a WBC the same field has nothing nucleus-like: red cells are redder than blue, however central."""
    assert not measure_framing(_pale_field(nucleus=False)).found


def test_reframe_brings_tight_and_wide_cells_to_the_target_fraction() -> None:
    img = _cell(size=240)
    tight = np.ascontiguousarray(img[60:180, 60:180])  # the cell fills the frame
    for shown in (tight, _pad(img, 3.0)):
        out = reframe_cell(shown, 160, CANONICAL)
        assert out.shape == (160, 160, 3)
        f = measure_framing(out)
        assert f.fraction == pytest.approx(CANONICAL.target, abs=0.08)


def test_tight_crop_is_padded_with_its_own_background() -> None:
    img = _cell(size=240)
    tight = np.ascontiguousarray(img[70:170, 70:170])
    out = reframe_cell(tight, 160, CANONICAL)
    corner = out[:8, :8].reshape(-1, 3).astype(int).mean(0)
    assert np.abs(corner - np.array(background_colour(tight))).max() <= 2  # filled with its brightest tenth's colour
    assert corner.sum() > 400  # not black


def _disc(side: int, radius: int) -> np.ndarray:
    img = np.full((side, side, 3), 235, np.uint8)
    cv2.circle(img, (side // 2, side // 2), radius, (90, 40, 140), -1)
    return img


def test_lab_framing_cuts_every_cell_at_one_magnification() -> None:
    """``--framing lab``: one square side for the whole lab, from its median nucleus, so the cells keep their
    sizes relative to each other, which re-framing each cell to the target fraction takes away."""
    from dataclasses import asdict
    from types import SimpleNamespace

    small, large = _disc(300, 20), _disc(200, 40)  # nuclei 41 and 81 px across, in images of other sizes
    extents = [nucleus_extent(img) for img in (small, large) * 4]
    stats = lab_framing(extents)
    assert stats is not None and stats.side == pytest.approx(float(np.median(extents)) / stats.target)
    fa, fb = (measure_framing(frame_cell(img, 96, stats)).fraction for img in (small, large))
    assert fb / fa == pytest.approx(2.0, rel=0.2)  # the relative size kept
    assert (fa + fb) / 2 == pytest.approx(stats.target, rel=0.2)  # the lab's median nucleus at the target
    ca, cb = (measure_framing(frame_cell(img, 96, CANONICAL)).fraction for img in (small, large))
    assert cb / ca == pytest.approx(1.0, abs=0.2)  # per-cell re-framing: both nuclei at the target fraction
    assert frame_cell_views(small, 96, stats)[1] is None  # one magnification: no second framing
    model = SimpleNamespace(info=SimpleNamespace(extra={"reframe": asdict(stats)}))
    assert framing_stats_of(model) == stats  # what an adapted model stores, read back
    assert lab_framing([None] * 10 + [30.0] * 7) is None  # fewer than 8 nuclei: no lab magnification
    assert nucleus_extent(np.full((90, 90, 3), 235, np.uint8)) is None


def test_a_lab_of_small_cells_in_wide_fields_gets_its_magnification() -> None:
    """Nuclei too small to stand out at the measuring size are measured on a closer look, so a lab whose images
    show small cells in wide fields still gets its one magnification (``--framing lab``)."""
    fields = [_disc(600, r) for r in (9, 10, 11, 12, 13, 9, 10, 11)]  # nuclei 19-27 px across in 600 px fields
    assert not any(measure_framing(f).found for f in fields)
    extents = [nucleus_extent(f) for f in fields]
    assert all(e is not None and 15 < e < 32 for e in extents)
    stats = lab_framing(extents)
    assert stats is not None and stats.side == pytest.approx(float(np.median(extents)) / stats.target)
    f = measure_framing(frame_cell(fields[2], 96, stats))  # cut at the lab's magnification: the nucleus at ~target
    assert f.found and f.fraction == pytest.approx(stats.target, abs=0.08)


def test_parse_class_set() -> None:
    assert parse_class_set("5part", CLASSES) == WBC5
    assert parse_class_set(["Neutrophils", "LY"], CLASSES) == ("lymphocyte", "neutrophil")
    assert parse_class_set("all", CLASSES) == ()
    with pytest.raises(WbcError, match="bogus"):
        parse_class_set("neutrophil,bogus", CLASSES)


def test_restrict_probabilities_renormalises() -> None:
    p = np.array([[0.1, 0.2, 0.3, 0.4], [0.7, 0.1, 0.1, 0.1]], np.float32)
    out, mass = restrict_probabilities(p, ["a", "b", "c", "d"], ["b", "c"])
    assert np.allclose(out.sum(1), 1)
    assert np.allclose(out[:, [0, 3]], 0)
    assert np.allclose(mass, [0.5, 0.2])
    assert np.allclose(out[0, 1:3], [0.4, 0.6])


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory: pytest.TempPathFactory):
    from tests.tiny_models import mean_colour_model

    from wbc.model import load_model

    rng = np.random.default_rng(0)
    path = mean_colour_model(tmp_path_factory.mktemp("m") / "tiny.onnx", 32, rng.normal(0, 3, (len(CLASSES), 3)),
                             "tiny")
    return load_model(path, threads=1)


def test_classify_with_a_label_set(tiny_classifier, tmp_path) -> None:
    from wbc.classify import classify_paths
    from wbc.io import write_image

    paths = []
    for i, label in enumerate(CLASSES):
        write_image(tmp_path / f"{label}.png", synthetic_cell(label, 64, i))
        paths.append(tmp_path / f"{label}.png")
    full = classify_paths(paths, tiny_classifier)
    five = classify_paths(paths, tiny_classifier, classes="5part")
    via_model = classify_paths(paths, tiny_classifier.with_classes("5part"))
    for a, b, c in zip(full.predictions, five.predictions, via_model.predictions, strict=True):
        assert b.label in WBC5 and c.label == b.label
        assert sum(b.probabilities.values()) == pytest.approx(1, abs=1e-4)
        assert b.probabilities["platelet"] == 0 and b.probabilities["ig"] == 0
        assert b.confidence >= max(a.probabilities[k] for k in WBC5) - 1e-6
        # the review threshold still applies to the renormalised confidence
        thr = tiny_classifier.info.review_threshold
        assert b.review or b.confidence >= thr
        if a.label not in WBC5 and a.confidence > 0.5:
            assert b.review and any("outside the chosen classes" in r for r in b.reasons)
    assert tiny_classifier.label_set == ()  # with_classes returns a copy


def test_classify_reframe_flag(tiny_classifier, tmp_path) -> None:
    from wbc.classify import classify_paths
    from wbc.io import write_image

    img = _cell(size=240)
    p = tmp_path / "tight.png"
    write_image(p, np.ascontiguousarray(img[60:180, 60:180]))
    on = classify_paths([p], tiny_classifier)
    off = classify_paths([p], tiny_classifier, reframe=False)
    assert len(on.predictions) == len(off.predictions) == 1
    assert not np.allclose(on.logits, off.logits)  # re-framing changed what the network saw



def test_a_cell_small_in_its_frame_is_averaged_over_both_framings(tiny_classifier, tmp_path) -> None:
    """A nucleus inside the band but below ``grey`` (a small cell, or any cell shown at half scale): classify
    answers with the weighted mean logits of the cell as it is and re-framed to the target
    (``SECOND_VIEW_WEIGHT`` on the re-framed one), in every path."""
    from fastapi.testclient import TestClient

    from wbc.classify import classify_paths, prepare_cell_views
    from wbc.io import write_image
    from wbc.reframe import DEFAULT_STATS, SECOND_VIEW_WEIGHT
    from wbc.segment.classical import ClassicalSegmenter
    from wbc.serve.app import create_app

    img = _pad(_cell(size=200), 2.5)  # lymphocyte nucleus ~0.48 of 200 px -> ~0.19 of the padded frame
    assert DEFAULT_STATS.low <= measure_framing(img).fraction < DEFAULT_STATS.grey
    size = tiny_classifier.info.input_size
    first, zoomed = prepare_cell_views(img, size, DEFAULT_STATS)
    assert zoomed is not None and not np.array_equal(first, zoomed)
    assert 0.25 < measure_framing(zoomed).fraction < 0.45  # at the target, 0.34
    w = SECOND_VIEW_WEIGHT
    assert 0.5 <= w < 1  # the re-framed view weighs at least as much, the cell as it is still counts
    expected = (1 - w) * tiny_classifier.run(first[None])["logits"] + w * tiny_classifier.run(zoomed[None])["logits"]
    write_image(tmp_path / "small.png", img)
    write_image(tmp_path / "native.png", _cell(size=200))
    res = classify_paths([tmp_path / "small.png", tmp_path / "native.png"], tiny_classifier)
    np.testing.assert_allclose(res.logits[0], expected[0], rtol=1e-5, atol=1e-5)
    native_first, native_zoomed = prepare_cell_views(_cell(size=200), size, DEFAULT_STATS)
    assert native_zoomed is None  # framed like the training crops: one framing, as before
    np.testing.assert_allclose(res.logits[1], tiny_classifier.run(native_first[None])["logits"][0], rtol=1e-5,
                               atol=1e-5)
    off = classify_paths([tmp_path / "small.png"], tiny_classifier, reframe=False)
    assert not np.allclose(off.logits[0], expected[0])
    client = TestClient(create_app(tiny_classifier, ClassicalSegmenter()))  # /classify: the same two framings
    files = [("files", ("small.png", (tmp_path / "small.png").read_bytes(), "image/png"))]
    served = client.post("/classify", files=files).json()["results"][0]["probabilities"]
    assert served == pytest.approx(res.predictions[0].probabilities, abs=1e-3)


def test_a_nucleus_seen_only_on_a_closer_look_gets_both_framings() -> None:
    """A cell so small in a wide field that its nucleus does not stand out at the measuring size (an erythroblast in
    a 600 px field): the centre of the frame is looked at again, and the cell is answered as it is and re-framed
    around what is found there. Nothing found, re-framing off for a second view, or a lab's one magnification: as
    before."""
    from wbc.classify import prepare_cell_views
    from wbc.preprocess import resize_square
    from wbc.reframe import DEFAULT_STATS, FramingStats, measure_closer

    field = _disc(600, 9)  # a nucleus 19 px across in a 600 px field: ~2 px at the 64 px measuring size
    assert not measure_framing(resize_square(field, 96)).found
    assert measure_closer(resize_square(field, 96)).found
    first, zoomed = prepare_cell_views(field, 96, DEFAULT_STATS)
    np.testing.assert_array_equal(first, resize_square(field, 96))  # the image as it is keeps its say
    assert zoomed is not None
    f = measure_framing(zoomed)
    assert f.found and f.fraction == pytest.approx(DEFAULT_STATS.target, abs=0.08)  # re-framed around it
    assert abs(f.cx - 48) < 8 and abs(f.cy - 48) < 8
    blank = np.full((600, 600, 3), 235, np.uint8)
    assert prepare_cell_views(blank, 96, DEFAULT_STATS)[1] is None  # nothing anywhere: no second framing
    assert frame_cell_views(field, 96, DEFAULT_STATS, second=False)[1] is None
    no_second = FramingStats(DEFAULT_STATS.target, DEFAULT_STATS.low, DEFAULT_STATS.high, DEFAULT_STATS.low)
    assert frame_cell_views(field, 96, no_second)[1] is None  # grey <= low: the model wants no second view
    # a wide camera frame (16:9) with the same small nucleus: the square around it as it is, and re-framed around it
    wide = cv2.copyMakeBorder(field, 0, 0, 234, 233, cv2.BORDER_CONSTANT, value=(235, 235, 235))  # 600 x 1067
    assert not measure_framing(wide).found
    first, zoomed = prepare_cell_views(wide, 96, DEFAULT_STATS)
    np.testing.assert_array_equal(first, resize_square(field, 96))  # the frame's square around it, not squashed
    assert zoomed is not None and measure_framing(zoomed).fraction == pytest.approx(DEFAULT_STATS.target, abs=0.08)
    large = cv2.copyMakeBorder(_disc(600, 80), 0, 0, 234, 233, cv2.BORDER_CONSTANT, value=(235, 235, 235))
    assert prepare_cell_views(large, 96, DEFAULT_STATS)[1] is None  # a nucleus seen at once: re-framed, one view


def test_a_four_by_three_frame_is_cut_square_not_squashed() -> None:
    """A camera's 4:3 frame around a cell is cut to its central square before the resize (a round nucleus stays
    round); one whose nucleus sits near a side is moved to hold it; square images are untouched."""
    from wbc.classify import prepare_cell_views
    from wbc.preprocess import resize_square
    from wbc.reframe import DEFAULT_STATS

    cell = _cell("neutrophil", size=300, seed=3)  # square, PBC-like framing
    wide = cv2.copyMakeBorder(cell, 0, 0, 50, 50, cv2.BORDER_CONSTANT, value=(235, 215, 205))  # 400 x 300: 4:3
    first, second = prepare_cell_views(wide, 96, DEFAULT_STATS)
    assert second is None
    np.testing.assert_array_equal(first, resize_square(cell, 96))  # the central square: the cell as it was
    assert not np.array_equal(first, resize_square(wide, 96))  # not the squashed frame
    np.testing.assert_array_equal(prepare_cell_views(cell, 96, DEFAULT_STATS)[0], resize_square(cell, 96))
    # the cell near the right side of a wider frame: the square moves to hold its nucleus
    off = cv2.copyMakeBorder(cell, 0, 0, 110, 0, cv2.BORDER_CONSTANT, value=(235, 215, 205))  # 410 x 300
    shown, _ = prepare_cell_views(off, 96, DEFAULT_STATS)
    f = measure_framing(shown)
    assert f.found and abs(f.cx - 48) < 20  # the nucleus well inside the square, not cut at its edge


def test_a_cell_off_its_frames_centre_is_framed_around_its_nucleus() -> None:
    """A WBC more than a fifth of the frame from its centre, at a size within the band, is re-framed around its
    nucleus, in a square frame and in a 4:3 camera frame (every training crop shows its cell centred; a WBC off the
    centre of a crowded field looked like a platelet crop); a cell a twentieth off is left as it is."""
    from wbc.preprocess import resize_square

    cell = _cell("lymphocyte", size=150, seed=1)
    for width in (300, 400):
        for shift, moved in ((66, True), (15, False)):  # 0.22 and 0.05 of the 300 px high frame, downwards
            frame = np.full((300, width, 3), (235, 215, 205), np.uint8)
            x0 = (width - 150) // 2
            frame[75 + shift : 225 + shift, x0 : x0 + 150] = cell
            f = measure_framing(frame)
            assert f.found and 0.12 < f.fraction < 0.5  # within the band: only its place could move it
            assert abs(f.cy - 150 - shift) < 0.03 * 300
            shown, _ = frame_cell_views(frame, 96)
            g = measure_framing(shown)
            if moved:
                assert abs(g.cx - 48) < 0.06 * 96 and abs(g.cy - 48) < 0.06 * 96
            elif width == 300:
                np.testing.assert_array_equal(shown, resize_square(frame, 96))
            else:
                assert abs(g.cy - 48 - shift * 96 / 300) < 0.06 * 96  # where it was


def test_a_nucleus_as_dark_as_the_red_cells_it_touches_is_found_by_its_hue() -> None:
    """A nucleus touching crowded red cells of nearly its own darkness (BCCD's whole fields: 16 of 277 found no
    nucleus, most then named "platelet") is found by its hue when no other look finds it, and the field re-framed
    around it, at the model's framing and at a lab's one magnification (whose side it counts in too); red cells
    alone, with nothing bluer than the glass, are still no nucleus and left as they are."""
    from wbc.preprocess import resize_square
    from wbc.reframe import lab_framing, measure_by_hue, measure_closer, nucleus_extent, square_view

    glass, red_cell, nucleus = (225, 215, 220), (185, 150, 160), (165, 145, 200)
    field = np.full((240, 320, 3), glass, np.uint8)  # a 4:3 camera frame
    for c in [(100, 60), (190, 60), (100, 150), (190, 160), (140, 105), (230, 110), (240, 200), (80, 215)]:
        cv2.circle(field, c, 30, red_cell, -1)
    red_cells_only = field.copy()
    cv2.circle(field, (150, 185), 26, nucleus, -1)  # 0.27 of the frame below its centre
    square = square_view(field, measure_framing(field))[0]
    assert not measure_framing(square).found and not measure_closer(square).found
    shown, _ = frame_cell_views(field, 96)
    g = measure_by_hue(shown)
    assert g.found and abs(g.cx - 48) < 0.06 * 96 and abs(g.cy - 48) < 0.06 * 96
    assert 0.25 < g.fraction < 0.45  # at the training crops' nucleus fraction, not the field's 0.22
    assert 45 < nucleus_extent(field) < 60  # what a lab's one magnification is measured from: 52 px across
    one_magnification = lab_framing([52.0] * 8)  # `wbc adapt --no-labels --framing lab`: every cell cut at one side
    g = measure_by_hue(frame_cell_views(field, 96, one_magnification)[0])
    assert g.found and abs(g.cx - 48) < 0.06 * 96 and abs(g.cy - 48) < 0.06 * 96
    shown, second = frame_cell_views(red_cells_only, 96)
    assert not measure_by_hue(shown).found and second is None
    as_it_is = square_view(red_cells_only, measure_framing(red_cells_only))[0]
    np.testing.assert_array_equal(shown, resize_square(as_it_is, 96))


def test_a_cell_named_platelet_with_a_nucleus_in_view_is_answered_again_around_it(tmp_path) -> None:
    """A WBC left as it is (its nucleus within the band, near enough the centre) that the network names platelet
    is shown again re-framed around its nucleus, and answered by both framings' weighted logits, in `wbc classify`
    and ``/classify``; glass with no nucleus named platelet, and the same image with re-framing off, keep their
    one framing and their answer; `wbc adapt --no-labels` scores the cell as `wbc classify` answers it."""
    from fastapi.testclient import TestClient
    from tests.tiny_models import mean_colour_model

    from wbc.adapt_unlabelled import view_probs
    from wbc.classify import classify_paths, prepare_cell_views
    from wbc.io import write_image
    from wbc.model import load_model
    from wbc.reframe import DEFAULT_STATS, SECOND_VIEW_WEIGHT, needs_reframe, nucleus_view
    from wbc.segment.classical import ClassicalSegmenter
    from wbc.serve.app import create_app

    field = np.full((200, 200, 3), 232, np.uint8)
    cv2.circle(field, (130, 120), 26, (90, 40, 140), -1)  # 0.26 of the frame, 0.15 off its centre
    noise = np.random.default_rng(0).integers(-4, 5, field.shape)  # a camera's: wbc refuses flat drawings unread
    field = (field + noise).astype(np.uint8)
    glass = (232 + noise).astype(np.uint8)
    f = measure_framing(field)
    assert f.found and DEFAULT_STATS.grey < f.fraction < DEFAULT_STATS.high and not needs_reframe(f, field.shape)
    size = 32
    as_is, second = prepare_cell_views(field, size, DEFAULT_STATS)
    around = nucleus_view(as_is, size)
    assert second is None and around is not None

    # a linear model on the mean colour, built so the frame as it is reads platelet and the mixed answer lymphocyte
    probe = load_model(mean_colour_model(tmp_path / "probe.onnx", size, np.zeros((len(CLASSES), 3)), "probe",
                                         embedding_output=True), threads=1)
    m_as_is, m_around = probe.run(np.stack([as_is, around]), ("embedding",))["embedding"]
    w = SECOND_VIEW_WEIGHT
    both = np.stack([m_as_is, (1 - w) * m_as_is + w * m_around])
    weight = np.zeros((len(CLASSES), 3))
    weight[CLASSES.index("platelet")] = np.linalg.pinv(both) @ [1.0, -1.0]
    weight[CLASSES.index("lymphocyte")] = np.linalg.pinv(both) @ [0.0, 1.0]
    clf = load_model(mean_colour_model(tmp_path / "m.onnx", size, weight, "m"), threads=1)
    assert clf.predict_proba(as_is[None]).argmax() == CLASSES.index("platelet")

    write_image(tmp_path / "field.png", field)
    write_image(tmp_path / "glass.png", glass)
    res = classify_paths([tmp_path / "field.png", tmp_path / "glass.png"], clf)
    expected = (1 - w) * clf.run(as_is[None])["logits"][0] + w * clf.run(around[None])["logits"][0]
    np.testing.assert_allclose(res.logits[0], expected, rtol=1e-5, atol=1e-5)
    assert [p.label for p in res.predictions] == ["lymphocyte", "platelet"]
    off = classify_paths([tmp_path / "field.png"], clf, reframe=False)
    assert off.predictions[0].label == "platelet"
    client = TestClient(create_app(clf, ClassicalSegmenter()))
    files = [("files", ("field.png", (tmp_path / "field.png").read_bytes(), "image/png"))]
    served = client.post("/classify", files=files).json()["results"][0]
    assert served["label"] == "lymphocyte"
    assert served["probabilities"] == pytest.approx(res.predictions[0].probabilities, abs=1e-3)
    scored = view_probs(clf, as_is[None], refocus=DEFAULT_STATS)[0][0]  # `wbc adapt --no-labels` scores the same
    assert CLASSES[int(scored.argmax())] == "lymphocyte"
    assert CLASSES[int(view_probs(clf, as_is[None])[0][0].argmax())] == "platelet"


def test_second_framings_keep_their_cells_index_across_batches_and_bad_files(tmp_path) -> None:
    """The second framing is keyed by the cell's index among the cells that loaded, whatever the batching."""
    from wbc.classify import load_cell_views, load_cells, prepare_cell_views
    from wbc.io import write_image
    from wbc.reframe import DEFAULT_STATS

    small, native = _pad(_cell(size=200), 2.5), _cell(size=200, seed=1)
    write_image(tmp_path / "a_small.png", small)
    (tmp_path / "b_broken.png").write_bytes(b"not an image")
    write_image(tmp_path / "c_native.png", native)
    write_image(tmp_path / "d_small.png", small)
    paths = sorted(tmp_path.glob("*.png"))
    cells, second, ok, errors = load_cell_views(paths, 64, workers=1, batch_size=2, reframe=DEFAULT_STATS)
    assert ok == [0, 2, 3] and [e[0] for e in errors] == [str(paths[1])]
    assert sorted(second) == [0, 2]  # the two small cells, by their place among the loaded cells
    want = prepare_cell_views(small, 64, DEFAULT_STATS)[1]
    assert all(np.array_equal(second[k], want) for k in (0, 2))
    plain, ok2, _ = load_cells(paths, 64, workers=1, batch_size=2, reframe=DEFAULT_STATS)
    assert np.array_equal(plain, cells) and ok2 == ok

@needs_torch
def test_strong_colour_ops_keep_shape_and_range() -> None:
    import torch

    from wbc.train.transforms import RandomStrongColour, RandomTightPad

    torch.manual_seed(0)
    img = torch.from_numpy(_cell(size=64)).permute(2, 0, 1).contiguous()
    for op in RandomStrongColour.OPS:
        t = RandomStrongColour(1.0, {o: float(o == op) for o in RandomStrongColour.OPS})
        out = t(img)
        assert out.shape == img.shape and out.dtype == torch.uint8
        # the nucleus stays darker than the background whatever the colours (shape is kept)
        centre = out[:, 28:36, 28:36].float().mean()
        corner = out[:, :6, :6].float().mean()
        assert centre < corner, op
    padded = RandomTightPad((0.5, 0.5))(img)
    assert torch.equal(padded[:, 16:48, 16:48], img[:, 16:48, 16:48])
    assert padded[:, 0, 0].float().sum() > 500  # filled with the bright background, not black


@needs_torch
def test_config_rejects_unknown_colour_ops() -> None:
    from wbc.config import TrainConfig
    from wbc.errors import ConfigError

    with pytest.raises(ConfigError, match="strong_colour_ops"):
        TrainConfig().updated({"strong_colour_ops": ["hue", "sepia"]})
    assert TrainConfig().updated({"strong_colour_ops": ["hue", "grey"], "strong_colour_p": 0.5}).strong_colour_p == 0.5


def test_adapt_unlabelled_scores_a_seeded_sample_of_a_large_folder(tmp_path) -> None:
    """A folder larger than ``max_cells`` is scored on a random sample of that size, the same each run, and the
    report says so; the CLI's default is the library's."""
    import inspect

    from tests.tiny_models import mean_colour_model

    from wbc.adapt_unlabelled import MAX_CELLS, adapt_unlabelled, summary_lines
    from wbc.cli.adapt import adapt as adapt_command
    from wbc.io import write_image
    from wbc.model import load_model

    for i, c in enumerate(list(CLASSES) * 3):
        write_image(tmp_path / "lab" / f"{i:02d}.png", synthetic_cell(c, 64, i))
    model = mean_colour_model(tmp_path / "m.onnx", 32, np.random.default_rng(1).normal(0, 3, (len(CLASSES), 3)),
                              "tiny")
    runs = [adapt_unlabelled(model, tmp_path / "lab", tmp_path / f"s{k}.onnx", threads=1, framing="band",
                             max_cells=10) for k in range(2)]
    whole = adapt_unlabelled(model, tmp_path / "lab", tmp_path / "all.onnx", threads=1, framing="band", max_cells=0)
    assert [r.n_cells for r in runs] == [10, 10] and whole.n_cells == 24 and runs[0].n_files == whole.n_files == 24
    assert runs[0].class_prior == runs[1].class_prior != whole.class_prior  # one sample, drawn alike each run
    assert any("scored on a random 10 of the folder's 24 images" in line for line in summary_lines(runs[0]))
    assert not any("random" in line for line in summary_lines(whole))
    assert load_model(tmp_path / "s0.onnx", threads=1).info.extra["adapt"]["n_files"] == 24
    with pytest.raises(WbcError, match="max-cells"):
        adapt_unlabelled(model, tmp_path / "lab", tmp_path / "x.onnx", threads=1, max_cells=-1)
    assert inspect.signature(adapt_command).parameters["max_cells"].default == MAX_CELLS


def test_score_prefers_diverse_consistent_predictions() -> None:
    from wbc.adapt_unlabelled import score_probs

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 60)
    sharp = np.eye(3)[labels] * 0.9 + 0.1 / 3
    collapsed = np.tile([0.96, 0.02, 0.02], (60, 1))  # confident and consistent, but one class for every cell
    good = score_probs([sharp, sharp], ["a", "b", "c"], "good")
    bad = score_probs([collapsed, collapsed], ["a", "b", "c"], "bad")
    assert good.agreement == bad.agreement == 1.0
    assert bad.entropy < good.entropy  # more confident ...
    assert good.score > bad.score  # ... but the diversity term rejects the collapse
    flip = score_probs([sharp, np.roll(sharp, 1, axis=1)], ["a", "b", "c"], "flip")
    assert flip.agreement == 0.0 and flip.score < good.score


def test_adapt_unlabelled_reports_and_keeps_no_mapping_for_training_like_cells(tmp_path) -> None:
    from tests.tiny_models import mean_colour_model

    from wbc.adapt_unlabelled import adapt_unlabelled, summary_lines
    from wbc.io import write_image
    from wbc.model import load_model
    from wbc.stain import fit_stain_stats

    cells = [synthetic_cell(c, 64, i) for i, c in enumerate(list(CLASSES) * 3)]
    for i, c in enumerate(cells):
        write_image(tmp_path / "lab" / f"{i}.png", c)
    ref = {m: fit_stain_stats(cells, m) for m in ("reinhard", "macenko", "histogram")}
    rng = np.random.default_rng(1)
    model = mean_colour_model(tmp_path / "m.onnx", 32, rng.normal(0, 3, (len(CLASSES), 3)), "tiny",
                              extra={"colour_reference": ref})
    res = adapt_unlabelled(model, tmp_path / "lab", tmp_path / "out.onnx", classes="5part", threads=1)
    # Macenko is no candidate (wbc.adapt_unlabelled.CANDIDATE_METHODS), though the model has its training colours
    assert {c.name for c in res.candidates} == {"none", "reinhard"}  # histogram matching no candidate since 0.27.0
    asked = adapt_unlabelled(model, tmp_path / "lab", tmp_path / "m2.onnx", classes="5part", threads=1,
                             methods=("macenko",), framing="band")
    assert {c.name for c in asked.candidates} == {"none", "macenko"}
    assert res.chosen == "none"  # the lab's colours are the training colours: no mapping can help
    assert res.classes == list(WBC5)
    adapted = load_model(tmp_path / "out.onnx", threads=1)
    assert adapted.info.extra["adapt"]["chosen"] == "none"
    assert adapted.info.preprocessing.stain is None
    assert any("chose none" in line for line in summary_lines(res))
    assert any(line.startswith("warning: only 24 cells") for line in summary_lines(res))  # too few to choose well
    # the lab's class frequencies, estimated over the chosen label set, travel with the model
    assert set(res.class_prior) == set(WBC5) and sum(res.class_prior.values()) == pytest.approx(1, abs=1e-3)
    assert adapted.info.class_prior == res.class_prior
    assert any("class frequencies" in line for line in summary_lines(res))
    # the adapted model averages each cell over the four rotations; --tta 1 keeps one view
    assert adapted.info.extra["tta_views"] == 4 and adapted.tta_views() == 4
    assert any("averaged over 4 flips/rotations" in line for line in summary_lines(res))
    plain = adapt_unlabelled(model, tmp_path / "lab", tmp_path / "plain.onnx", classes="5part", threads=1,
                             prior=False, tta=1)
    assert plain.class_prior == {} and load_model(tmp_path / "plain.onnx", threads=1).info.class_prior == {}
    assert load_model(tmp_path / "plain.onnx", threads=1).tta_views() == 1
    # re-adapting an adapted model starts from its own probabilities, not from the stored prior
    again = adapt_unlabelled(tmp_path / "out.onnx", tmp_path / "lab", tmp_path / "again.onnx", classes="5part",
                             threads=1)
    assert again.class_prior == pytest.approx(res.class_prior, abs=1e-3)
    with pytest.raises(WbcError, match="at least 8"):
        adapt_unlabelled(model, tmp_path / "lab" / "0.png", tmp_path / "x.onnx", threads=1)
    # the lab's one magnification is a third framing scored, when its nuclei can be measured
    assert {c.framing for c in res.candidates} == {"band", "all", "lab"}
    for i in range(8):
        write_image(tmp_path / "blank" / f"{i}.png", np.full((64, 64, 3), 235, np.uint8))
    with pytest.raises(WbcError, match="--framing lab: fewer than 8"):
        adapt_unlabelled(model, tmp_path / "blank", tmp_path / "y.onnx", threads=1, framing="lab")


def test_http_classify_takes_classes_and_reframe(tiny_classifier) -> None:
    from fastapi.testclient import TestClient

    from wbc.segment.classical import ClassicalSegmenter
    from wbc.serve.app import create_app

    client = TestClient(create_app(tiny_classifier, ClassicalSegmenter(), max_upload_mb=2))
    _ok, png = cv2.imencode(".png", _cell(size=120)[:, :, ::-1])
    files = [("files", ("cell.png", png.tobytes(), "image/png"))]
    res = client.post("/classify?classes=5part", files=files)
    assert res.status_code == 200, res.text
    probs = res.json()["results"][0]["probabilities"]
    assert res.json()["results"][0]["label"] in WBC5 and probs["platelet"] == 0
    assert client.post("/classify?reframe=false", files=files).status_code == 200
    bad = client.post("/classify?classes=neutrophil,bogus", files=files)
    assert bad.status_code == 422 and "bogus" in bad.text


@pytest.mark.real_data
def test_adapt_unlabelled_chooses_framing_for_cells_small_in_wide_fields(real_data, tmp_path) -> None:
    """A lab whose crops show PBC cells at half the size (nucleus inside the untouched band) gets its cells
    re-framed (every cell to the target fraction, or the lab's one magnification, whichever scores higher);
    PBC-framed crops keep the model's framing. Real PBC validation cells, the shipped model."""
    from pathlib import Path

    from wbc.adapt_unlabelled import adapt_unlabelled, summary_lines
    from wbc.classify import classify_paths
    from wbc.data import read_manifest
    from wbc.io import read_image, write_image
    from wbc.model import load_model

    manifest = Path(__file__).resolve().parents[1] / "runs" / "default" / "manifest.csv"
    val = read_manifest(manifest, "val", real_data)
    cells = [s for c in WBC5 for s in [s for s in val if s.label == c][:8]]
    for s in cells:
        rgb = read_image(s.path)
        h, w = rgb.shape[:2]
        wide = cv2.copyMakeBorder(rgb, h // 2, h // 2, w // 2, w // 2, cv2.BORDER_CONSTANT,
                                  value=background_colour(rgb))
        write_image(tmp_path / "wide" / s.label / f"{Path(s.path).stem}.png", wide)
        write_image(tmp_path / "native" / s.label / f"{Path(s.path).stem}.png", rgb)
    wide = adapt_unlabelled(None, tmp_path / "wide", tmp_path / "wide.onnx", classes="5part", threads=2)
    assert wide.framing in ("all", "lab") and {c.framing for c in wide.candidates} == {"band", "all", "lab"}
    assert any(line.startswith(f"{wide.framing} ") and line.endswith("<- chosen") for line in summary_lines(wide))
    adapted = load_model(tmp_path / "wide.onnx", threads=2)
    assert adapted.info.extra["reframe"]["low"] == adapted.info.extra["reframe"]["high"] == CANONICAL.target
    assert (adapted.info.extra["reframe"]["side"] > 0) == (wide.framing == "lab")
    assert adapted.info.model_id.endswith(f"+framing-{wide.framing}")
    paths = sorted((tmp_path / "wide").glob("*/*.png"))
    truth = [p.parent.name for p in paths]

    def accuracy(model) -> float:
        preds = classify_paths(paths, model, classes="5part").predictions
        return float(np.mean([p.label == t for p, t in zip(preds, truth, strict=True)]))

    shipped = load_model(None, threads=2)
    one_framing = load_model(None, threads=2)  # the band without the second framing of small-nucleus cells
    one_framing.info.extra = {**one_framing.info.extra, "reframe": {"target": 0.34, "low": 0.12, "high": 0.5}}
    assert framing_stats_of(one_framing).grey == 0.12
    # measured on these 40 cells: one framing 0.675, both framings averaged 0.900, adapted (every cell re-framed) 1.0
    assert accuracy(shipped) >= accuracy(one_framing) + 0.15
    assert accuracy(adapted) >= accuracy(shipped) + 0.05
    native = adapt_unlabelled(None, tmp_path / "native", tmp_path / "native.onnx", classes="5part", threads=2)
    assert native.framing == "band" and "reframe" not in load_model(tmp_path / "native.onnx").info.extra
    fixed = adapt_unlabelled(None, tmp_path / "wide", tmp_path / "fixed.onnx", classes="5part", threads=2,
                             framing="band")
    assert fixed.framing == "band" and {c.framing for c in fixed.candidates} == {"band"}
    # the lab's one magnification, fixed: a square of PBC's crop size around each nucleus (363 px crops padded 2x)
    lab = adapt_unlabelled(None, tmp_path / "wide", tmp_path / "lab.onnx", classes="5part", threads=2, framing="lab")
    assert lab.framing == "lab" and 250 < load_model(tmp_path / "lab.onnx").info.extra["reframe"]["side"] < 500
    assert accuracy(load_model(tmp_path / "lab.onnx", threads=2)) >= accuracy(shipped) + 0.05
    with pytest.raises(WbcError, match="--framing sideways"):
        adapt_unlabelled(None, tmp_path / "wide", tmp_path / "x.onnx", framing="sideways")


@needs_torch
def test_training_copies_cut_tight_are_framed_as_wbc_classify_frames_them(tmp_path) -> None:
    """``reframe_tight``: that share of the re-framed training copies is the cell cut tight, then framed by
    `wbc classify`'s path (re-framed, its background around it); the others stay re-framed from the whole crop."""
    from wbc.data import Sample
    from wbc.train.data import decode_all, tight_crop

    samples = []
    for i in range(6):
        path = tmp_path / f"cell{i}.png"
        cv2.imwrite(str(path), cv2.cvtColor(_cell(size=240, seed=i), cv2.COLOR_RGB2BGR))
        samples.append(Sample(path, "lymphocyte", "train"))
    whole, ok, bad = decode_all(samples, 96, reframe=True)
    cut, _, _ = decode_all(samples, 96, reframe=True, tight=1.0, seed=3)
    assert ok == list(range(6)) and not bad
    for i, s in enumerate(samples):
        rgb = cv2.cvtColor(cv2.imread(str(s.path)), cv2.COLOR_BGR2RGB)
        assert np.array_equal(whole[i], frame_cell(rgb, 96, CANONICAL))
        shown = [frame_cell(tight_crop(rgb, f), 96) for f in np.linspace(0.45, 0.65, 41)]
        assert min(np.abs(cut[i].astype(int) - v.astype(int)).mean() for v in shown) < 2.0
        assert np.abs(cut[i].astype(int) - whole[i].astype(int)).mean() > 2.0
    half, _, _ = decode_all(samples, 96, reframe=True, tight=0.5, seed=3)
    same = [np.array_equal(half[i], whole[i]) for i in range(6)]
    assert any(same) and not all(same)  # a share, drawn with the seed
    again, _, _ = decode_all(samples, 96, reframe=True, tight=0.5, seed=3)
    assert np.array_equal(again, half)


def test_a_large_jpeg_is_cut_at_the_files_resolution(tmp_path) -> None:
    """A large JPEG is decoded at 1/2-1/8 of its size for speed, enough when the network sees it whole; a cell small
    in it, re-framed, is cut from the file decoded whole, so it keeps the file's detail (it was cut from the reduced
    decoding and blown up: PBC validation cells as JPEG files padded 2x, 0.9563 -> 0.9660). A lab's one
    magnification, measured in the file's pixels, is cut at the same region of the file either way."""
    from wbc.classify import decode_cell_views, prepare_cell_views, read_cell_views
    from wbc.io import decode_image, read_image
    from wbc.reframe import DEFAULT_STATS, FramingStats

    field = _pad(_cell("neutrophil", size=240, seed=4), 5.0)  # 1,200 px, the cell 240 px: 30 px at 1/8
    path = tmp_path / "field.jpg"
    cv2.imwrite(str(path), cv2.cvtColor(field, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    data = path.read_bytes()
    reduced, whole = decode_image(data, "f", min_size=96), decode_image(data, "f")
    assert reduced.shape[0] * 8 == whole.shape[0] == 1200  # decoded at 1/8
    got = read_cell_views(path, 96, DEFAULT_STATS)[0]
    np.testing.assert_array_equal(got, decode_cell_views(data, "f", 96, DEFAULT_STATS)[0])  # files and uploads alike
    at_full = prepare_cell_views(whole, 96, DEFAULT_STATS)[0]
    blown_up = prepare_cell_views(reduced, 96, DEFAULT_STATS)[0]  # before: cut from the reduced decoding

    def diff(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.abs(a.astype(int) - b.astype(int)).mean())

    def detail(a: np.ndarray) -> float:
        return float(cv2.Laplacian(cv2.cvtColor(a, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())

    # the same framing (measured on the reduced decoding either way), with the detail of the whole decoding
    assert measure_framing(got).fraction == pytest.approx(measure_framing(at_full).fraction, abs=0.03)
    assert detail(got) > 0.7 * detail(at_full) and detail(got) > 3 * detail(blown_up)
    # a lab's one magnification (side in the file's pixels): the same region of the file, not 8x as much of it
    lab = FramingStats(DEFAULT_STATS.target, DEFAULT_STATS.target, DEFAULT_STATS.target, DEFAULT_STATS.target,
                       side=400.0)
    got = read_cell_views(path, 96, lab)[0]
    at_full = prepare_cell_views(read_image(path), 96, lab)[0]
    assert diff(got, at_full) < 3
    assert diff(prepare_cell_views(reduced, 96, lab)[0], at_full) > 3 * diff(got, at_full)
    # an image the network sees whole is read as before: nothing decoded twice
    small = tmp_path / "cell.jpg"
    cv2.imwrite(str(small), cv2.cvtColor(_cell("neutrophil", size=400, seed=4), cv2.COLOR_RGB2BGR))
    np.testing.assert_array_equal(read_cell_views(small, 96, DEFAULT_STATS)[0],
                                  prepare_cell_views(read_image(small, min_size=96), 96, DEFAULT_STATS)[0])


def _eyepiece(rgb: np.ndarray, radius: float = 0.45, edge: float = 0.04, fall: float = 0.0,
              centre: tuple[float, float] | None = None) -> np.ndarray:
    """``rgb`` as a phone photo through an eyepiece: black outside a round field of view with a soft edge, the light
    falling by ``fall`` toward its rim, the disc centred at ``centre`` (x, y; default the image's)."""
    h, w = rgb.shape[:2]
    cx, cy = centre or (w / 2, h / 2)
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot(xx - cx, yy - cy) / min(h, w)
    gain = np.clip((radius - r) / edge, 0, 1) * (1 - fall * np.minimum(r / radius, 1) ** 2)
    return (rgb * gain[..., None]).round().astype(np.uint8)


def test_an_eyepiece_field_is_lit_evenly_and_a_cell_its_edge_cuts_keeps_what_is_left() -> None:
    """Through an eyepiece the light falls toward the rim of the field of view and over the field stop's soft edge.
    The field is brightened back to its centre's light wherever at least 0.3 of it arrives, and only dimmer pixels
    are outside: a nucleus in the dim rim stays a nucleus (the soft edge used to be grown into every pixel darker
    than the background, eating into such cells; BCCD smear fields so shown lost 12 of 85 validation cells, 11 of
    them across the rim), and the glass reads the same at the rim as at the centre. The disc is found off-centre
    too."""
    from wbc.preprocess import field_light, field_stop_mask, fill_field_stop, tenth_brightest

    field = np.full((300, 400, 3), (236, 228, 222), np.uint8)
    rng = np.random.default_rng(0)
    for x, y in rng.integers(20, 280, (40, 2)):  # red cells
        cv2.circle(field, (int(x) + 60, int(y)), 14, (205, 150, 150), -1)
    centre = (215.0, 140.0)
    nucleus = (int(centre[0] + 0.40 * 300), int(centre[1]))  # inside the disc (radius 0.45), in its dim rim
    cv2.circle(field, nucleus, 9, (90, 40, 140), -1)
    photo = _eyepiece(field, radius=0.45, edge=0.04, fall=0.4, centre=centre)
    mask = field_stop_mask(photo)
    assert mask is not None and mask[0, 0] and not mask[nucleus[1], nucleus[0]]
    out = fill_field_stop(photo, mask)

    def glass(img: np.ndarray, x: float, y: float) -> float:  # the glass level of a 40 px patch
        return tenth_brightest(img[int(y) - 20 : int(y) + 20, int(x) - 20 : int(x) + 20].max(axis=2))

    rim = (centre[0] - 0.36 * 300 * 0.6, centre[1] - 0.36 * 300 * 0.8)  # 0.36 of the shorter side from the centre
    assert glass(photo, *rim) < 0.85 * glass(photo, *centre)  # dim at the rim as photographed
    assert glass(out, *rim) == pytest.approx(glass(out, *centre), rel=0.05)  # lit as the centre once filled
    # the nucleus is kept, as dark against its glass as it was in the field
    assert out[nucleus[1], nucleus[0]].max() < 0.7 * glass(out, *centre)
    light = field_light(photo.max(axis=2).astype(np.float32), mask)
    assert light[int(centre[1]), int(centre[0])] == pytest.approx(1.0, abs=0.02)
    assert light[int(centre[1]), nucleus[0]] == pytest.approx(1 - 0.4 * (0.40 / 0.45) ** 2, abs=0.08)


def test_an_eyepiece_photo_is_framed_within_its_field_of_view(tmp_path) -> None:
    """A cell photographed through an eyepiece sits in a bright disc in black. The black ring, dark and centred,
    was measured as the nucleus (extent = the frame), so the cell was shrunk to a speck (PBC validation cells so
    shown: 12 % named right). Now the outside of the field of view is background and the image is cut to the disc's
    square: the cell is framed as the same cell in a plain field, in every path that frames single cells."""
    from wbc.adapt_unlabelled import measure_lab
    from wbc.classify import decode_cell_views, prepare_cell_views
    from wbc.io import write_image
    from wbc.preprocess import field_of_view, field_stop_mask
    from wbc.reframe import DEFAULT_STATS

    plain = _pad(_cell("neutrophil", size=200, seed=5), 3.0)  # 600 px, nucleus ~0.15 of the frame
    wide = cv2.copyMakeBorder(plain, 0, 0, 233, 234, cv2.BORDER_CONSTANT, value=(235, 215, 205))  # 16:9
    for photo in (_eyepiece(plain), _eyepiece(wide, radius=0.5)):
        mask = field_stop_mask(photo)
        assert mask is not None and mask[0, 0] and not mask[photo.shape[0] // 2, photo.shape[1] // 2]
        assert measure_framing(field_of_view(photo)[0]).fraction == pytest.approx(
            measure_framing(plain).fraction, abs=0.04)  # the nucleus, not the black ring
        for got, want in zip(prepare_cell_views(photo, 96, DEFAULT_STATS), prepare_cell_views(plain, 96, DEFAULT_STATS),
                             strict=True):
            assert got is not None and want is not None
            assert measure_framing(got).fraction == pytest.approx(measure_framing(want).fraction, abs=0.05)
    _ok, png = cv2.imencode(".png", cv2.cvtColor(_eyepiece(wide, radius=0.5), cv2.COLOR_RGB2BGR))
    got = decode_cell_views(png.tobytes(), "photo.png", 96, DEFAULT_STATS)[0]  # a file or an upload alike
    assert measure_framing(got).fraction == pytest.approx(measure_framing(prepare_cell_views(plain, 96)[0]).fraction,
                                                          abs=0.05)
    # the lab's one magnification is measured within the field of view too
    for kind in ("plain", "photo"):
        (tmp_path / kind).mkdir()
    for seed in range(8):
        cell = _pad(_cell("lymphocyte", size=200, seed=seed), 2.0)
        write_image(tmp_path / "plain" / f"{seed}.png", cell)
        write_image(tmp_path / "photo" / f"{seed}.png", _eyepiece(cell))
    lab_plain = measure_lab(sorted((tmp_path / "plain").iterdir()))
    lab_photo = measure_lab(sorted((tmp_path / "photo").iterdir()))
    assert lab_plain is not None and lab_photo is not None
    assert lab_photo.side == pytest.approx(lab_plain.side, rel=0.1)
    # images without a field stop are left alone (every PBC, BCCD and TXL-PBC image was, when this was added)
    assert field_stop_mask(plain) is None and field_stop_mask(_cell(size=200)) is None
    assert field_of_view(plain)[1] is None


def test_stray_light_around_an_eyepiece_photo_is_still_outside() -> None:
    """A phone's flare lifts the black around an eyepiece's field of view to dark grey: at 30 of 255 it was above the
    near-black level, the ring was measured as the nucleus again, and PBC cells so shown were named at chance. The
    dark, flat corners now give the black the outside is measured from, and the stray light is taken off the field."""
    from wbc.preprocess import black_level, field_of_view, field_stop_mask, fill_field_stop

    plain = _pad(_cell("neutrophil", size=200, seed=5), 3.0)
    photo = _eyepiece(plain)
    lifted = np.clip(photo.astype(np.float32) * (1 - 30 / 255) + 30, 0, 255).round().astype(np.uint8)
    assert black_level(lifted, 235.0) == pytest.approx(30, abs=1) and black_level(plain, 235.0) == 0.0
    mask = field_stop_mask(lifted)
    assert mask is not None and mask[0, 0] and not mask[300, 300]
    assert measure_framing(field_of_view(lifted)[0]).fraction == pytest.approx(
        measure_framing(field_of_view(photo)[0]).fraction, abs=0.03)  # the nucleus, not the grey ring
    filled = fill_field_stop(lifted, mask)
    centre = (slice(250, 350), slice(250, 350))
    assert int(np.abs(filled[centre].astype(int) - plain[centre].astype(int)).mean()) <= 3  # the flare taken off
    assert int(np.abs(filled.astype(int) - plain.astype(int))[mask].max()) <= 12  # the outside is background


def test_a_nucleus_at_the_border_is_not_taken_for_a_field_stop() -> None:
    """Only near-black counts as outside the field of view: a stained nucleus cut by the frame's edge stays."""
    from wbc.preprocess import field_stop_mask

    cell = _cell("lymphocyte", size=200)
    cut = np.ascontiguousarray(cell[:, 100:])  # the nucleus cut in half by the left edge
    assert field_stop_mask(cut) is None


def test_a_scale_bar_is_never_the_nucleus() -> None:
    """A black scale bar and label burnt into a corner (published and exported images carry them): near-black is
    never a nucleus, so a crop without a WBC (a platelet, debris) is not re-framed around the bar, and a cell is
    framed as without it (PBC validation cells with a bar: 0.9625 -> 0.9906 on the shift suite)."""
    from wbc.classify import prepare_cell_views
    from wbc.reframe import DEFAULT_STATS

    def with_bar(rgb: np.ndarray) -> np.ndarray:
        out = rgb.copy()
        h, w = out.shape[:2]
        cv2.rectangle(out, (round(w * 0.65), round(h * 0.9)), (round(w * 0.92), round(h * 0.93)), (0, 0, 0), -1)
        cv2.putText(out, "10 um", (round(w * 0.68), round(h * 0.87)), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 2)
        return out

    blank = np.full((200, 200, 3), (235, 215, 205), np.uint8)
    assert not measure_framing(with_bar(blank)).found
    np.testing.assert_array_equal(prepare_cell_views(with_bar(blank), 96, DEFAULT_STATS)[0],
                                  cv2.resize(with_bar(blank), (96, 96), interpolation=cv2.INTER_AREA))
    cell = _cell("neutrophil", size=200, seed=2)
    assert measure_framing(with_bar(cell)) == measure_framing(cell)


def test_a_cell_pasted_onto_a_canvas_is_framed_as_its_own_image() -> None:
    """A cell image pasted onto a white page or padded to a square with grey: the canvas's uniform rows and columns
    are cut off before framing (the white page read as the background made the whole crop the "nucleus", and the cell
    stayed small: PBC validation cells on a white page 2x, 0.919 on the shift suite)."""
    from wbc.classify import prepare_cell_views
    from wbc.preprocess import field_of_view, padding_box
    from wbc.reframe import DEFAULT_STATS

    cell = _cell("monocyte", size=160, seed=3)
    for colour in ((255, 255, 255), (128, 128, 128), (0, 0, 0)):
        page = cv2.copyMakeBorder(cell, 80, 80, 200, 120, cv2.BORDER_CONSTANT, value=colour)
        assert padding_box(page) == (200, 80, 360, 240)
        np.testing.assert_array_equal(field_of_view(page)[0], cell)
        np.testing.assert_array_equal(prepare_cell_views(page, 96, DEFAULT_STATS)[0],
                                      prepare_cell_views(cell, 96, DEFAULT_STATS)[0])
    assert padding_box(cell) is None  # edges in the image's own background colour: a wide field, not a canvas
    thin = cv2.copyMakeBorder(cell, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=(255, 255, 255))
    assert padding_box(thin) is None  # a hairline frame is not a canvas


def test_a_nucleus_in_a_strip_over_8_to_1_is_measured_where_it_is() -> None:
    """The 64 px measuring copy keeps at least 8 px on its short side; both axes were scaled back by the long
    side's factor, which put a nucleus at y = 70 of a 100 px strip at y = 188, 125 px across instead of 41."""
    from wbc.reframe import measure_framing

    for shape, centre in (((100, 2000), (1000, 70)), ((2000, 100), (70, 1000))):
        img = np.random.default_rng(0).normal(225, 4, (*shape, 3)).clip(0, 255).astype(np.uint8)
        cv2.circle(img, centre, 20, (90, 40, 140), -1)
        f = measure_framing(img)
        assert f.found and abs(f.cx - centre[0]) < 15 and abs(f.cy - centre[1]) < 15, (shape, f)
        assert 30 < f.extent < 80, (shape, f)  # within the 64 px copy's resolution (31 px a pixel here)


def test_a_file_given_twice_keeps_both_of_its_indices(tmp_path) -> None:
    """``load_cells`` maps cells back to the input list; a file given twice got the later index for both (wbc 0.26.0:
    ``[a, broken, a, b]`` gave ``[2, 2, 3]``), and adapt, quantize and ood fit index their samples with these."""
    from wbc.classify import load_cells
    from wbc.io import write_image

    write_image(tmp_path / "a.png", _cell(size=64))
    write_image(tmp_path / "b.png", _cell(size=64, seed=1))
    (tmp_path / "broken.png").write_bytes(b"not an image")
    paths = [tmp_path / "a.png", tmp_path / "broken.png", tmp_path / "a.png", tmp_path / "b.png"]
    for batch_size in (1, 2, 128):
        cells, ok, errors = load_cells(paths, 32, workers=1, batch_size=batch_size)
        assert ok == [0, 2, 3] and len(cells) == 3 and len(errors) == 1


def test_cells_most_likely_outside_the_label_set_are_flagged_and_said_by_every_output(
        tiny_classifier, tmp_path, monkeypatch) -> None:
    """`wbc classify --classes 5part` on 40 PBC cells counted 14 platelets, NRBCs and IGs as basophils and
    lymphocytes with only per-cell flags, and one whose set held over half the probability went unflagged (wbc
    0.29.0): each cell most likely outside the set is flagged naming its class, and the terminal, the --report page,
    /classify and the Python API say how many, by class, with one sentence (wbc.classify.outside_note)."""
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    import wbc.classify
    from wbc.classify import classify_paths, outside_note, predict_cells
    from wbc.cli import app
    from wbc.io import write_image
    from wbc.segment.classical import ClassicalSegmenter
    from wbc.serve.app import create_app
    from wbc.types import Prediction

    def probs(**p: float) -> np.ndarray:
        return np.array([p.get(c, 1e-6) for c in tiny_classifier.classes])

    # platelet most likely but the five-part classes hold 0.55; then a lymphocyte
    rows = np.stack([probs(platelet=0.45, lymphocyte=0.3, basophil=0.25), probs(lymphocyte=0.98)])
    logits = (np.log(rows) * tiny_classifier.info.temperature).astype(np.float32)
    monkeypatch.setattr(wbc.classify, "unsure_views_of", lambda clf: (0.0, 1))
    monkeypatch.setattr(wbc.classify, "run_views",
                        lambda clf, cells, want, views=1, first=None: {"logits": logits[:len(cells)]})
    cells = np.zeros((2, 32, 32, 3), np.uint8)
    preds, _ = predict_cells(tiny_classifier, cells, ["a", "b"], classes=WBC5)
    assert preds[0].label == "lymphocyte" and preds[0].review and preds[0].outside == "platelet"
    assert any("favours platelet" in r and "outside the chosen classes" in r for r in preds[0].reasons)
    assert preds[1].outside == ""
    want = ("1 of 2 cells are most likely a class outside the chosen ones (platelet 1): each is counted in the "
            "chosen class shown and flagged for review")
    assert outside_note(preds) == want

    monkeypatch.setattr(wbc.classify, "predict_cells", lambda clf, arr, names, *a, **k: (
        [Prediction("lymphocyte", 0.6, True, {}, path=n, outside="platelet" if i < 2 else "")
         for i, n in enumerate(names)], {"logits": np.zeros((len(names), len(clf.classes)), np.float32)}))
    paths = []
    for i in range(4):
        write_image(tmp_path / f"c{i}.png", _cell(size=64, seed=i))
        paths.append(tmp_path / f"c{i}.png")
    want = want.replace("1 of 2", "2 of 4").replace("platelet 1", "platelet 2")
    assert classify_paths(paths, tiny_classifier, classes="5part").outside_note() == want
    res = CliRunner().invoke(app, ["classify", str(tmp_path / "c0.png"), str(tmp_path / "c1.png"),
                                   str(tmp_path / "c2.png"), str(tmp_path / "c3.png"),
                                   "--model", str(tiny_classifier.path), "--classes", "5part",
                                   "-o", str(tmp_path / "p.csv"), "--report", str(tmp_path / "r.html")])
    assert res.exit_code == 0, res.output
    assert want in " ".join(res.output.split())
    assert want in (tmp_path / "r.html").read_text()
    client = TestClient(create_app(tiny_classifier, ClassicalSegmenter(), max_upload_mb=2))
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in paths]
    body = client.post("/classify?classes=5part", files=files).json()
    assert body["warnings"][0] == want


def test_a_smear_field_says_how_many_of_its_cells_are_outside_the_label_set(tiny_classifier, monkeypatch) -> None:
    """/analyze, `POST /cases` and `wbc analyze --classes` (all wbc.analyze.analyze_image) flagged a cell most likely a
    class the label set left out (an NRBC counted as a monocyte) only in that cell's reasons; the field's warnings,
    which the pages show above each field, did not say what /classify and `wbc classify` say (wbc 0.30.0). They now
    give the same sentence (wbc.classify.outside_note), first."""
    from fastapi.testclient import TestClient

    import wbc.analyze
    from wbc.analyze import analyze_image
    from wbc.classify import outside_note
    from wbc.segment.classical import ClassicalSegmenter
    from wbc.serve.app import create_app
    from wbc.synthetic import synthetic_smear
    from wbc.types import Prediction

    def predict(clf, crops, *a, **k):  # the first cell most likely an erythroblast, which 5part leaves out
        return ([Prediction("monocyte", 0.6, True, {}, outside="erythroblast" if i == 0 else "")
                 for i in range(len(crops))], {})

    field = synthetic_smear(n_wbc=2, seed=10)[0]
    five = tiny_classifier.with_classes("5part")
    monkeypatch.setattr(wbc.analyze, "predict_cells", predict)
    res = analyze_image(field, five, ClassicalSegmenter(), name="f.png")
    assert len(res.cells) >= 2
    want = outside_note([c.prediction for c in res.cells])
    assert want and want.startswith(f"1 of {len(res.cells)} cells are most likely a class outside the chosen ones "
                                    "(erythroblast 1)")
    assert res.warnings[:1] == [want]
    client = TestClient(create_app(tiny_classifier, ClassicalSegmenter(), max_upload_mb=2))
    png = cv2.imencode(".png", np.ascontiguousarray(field[:, :, ::-1]))[1].tobytes()
    body = client.post("/analyze?classes=5part", files={"file": ("f.png", png, "image/png")}).json()
    assert body["warnings"][0] == want
    monkeypatch.setattr(wbc.analyze, "predict_cells", lambda clf, crops, *a, **k: (
        [Prediction("monocyte", 0.9, False, {}) for _ in crops], {}))
    assert not any("outside the chosen" in w for w in analyze_image(field, five, ClassicalSegmenter()).warnings)
