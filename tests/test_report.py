"""The HTML report and Grad-CAM display, from metrics and arrays (no model needed)."""

from __future__ import annotations

import base64
import re

import cv2
import numpy as np
import pytest

from wbc.evaluate.gradcam import cam_heatmap, gradcam_overlays, overlay_heatmap
from wbc.evaluate.metrics import classification_metrics
from wbc.evaluate.report import (
    ReportInputs,
    Thumb,
    build_report,
    main_confusion,
    summary_paragraphs,
    weakest_classes,
)

CLASSES = ["lymphocyte", "monocyte", "neutrophil", "ig"]


def _case(n: int = 400, seed: int = 0) -> tuple[dict, ReportInputs]:
    """Monocytes are often called lymphocytes and IG often neutrophils; the rest is mostly right."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    pred = y.copy()
    mono = np.nonzero(y == 1)[0]
    pred[mono[: len(mono) * 4 // 10]] = 0  # 40% of monocytes -> lymphocyte
    ig = np.nonzero(y == 3)[0]
    pred[ig[: len(ig) * 2 // 10]] = 2  # 20% of IG -> neutrophil
    logits = rng.normal(0, 0.5, (n, 4))
    logits[np.arange(n), pred] += 3.0
    from wbc.model import softmax

    prob = softmax(logits, 1.5)
    m = classification_metrics(
        y, prob, CLASSES, logits=logits, temperature=1.5, review_threshold=0.6, n_boot=200
    )
    m.update(
        model_id="m-1",
        data="somewhere/pbc",
        split="test",
        data_kind="manifest",
        own_run=True,  # the run's own model on its own split: only then are the test cells held out from it
        manifest_hash="abc",
        created="today",
        unknown_labels={"count": 3, "labels": {"smudge": 3}, "called": {"smudge": {"lymphocyte": 3}}},
        unreadable=[["bad.jpg", "bad.jpg: truncated JPEG"]],
    )
    cell = np.full((64, 64, 3), 200, np.uint8)
    cv2.circle(cell, (32, 32), 14, (90, 40, 140), -1)
    thumbs = [Thumb(cell, "monocyte", "lymphocyte", 0.93, "a.jpg")]
    heat = cam_heatmap(np.array([[0.0, 1.0], [0.5, 0.0]]), (64, 64))
    cams = {"monocyte": [Thumb(cell, "monocyte", "monocyte", 0.8, "b.jpg", overlay_heatmap(cell, heat))]}
    return m, ReportInputs(
        y_true=y,
        y_prob=prob,
        logits=logits,
        confident_mistakes=thumbs,
        unsure_correct=thumbs,
        gradcam=cams,
        folds={"accuracy": {"mean": 0.9, "sd": 0.01, "n": 3, "values": [0.89, 0.9, 0.91]}},
    )


def test_summary_names_the_weakest_classes_and_their_confusions() -> None:
    m, _ = _case()
    weak = weakest_classes(m)
    assert [c for c, _ in weak] == ["monocyte", "ig"]
    assert main_confusion(m, "monocyte")[0] == "lymphocyte"
    assert main_confusion(m, "ig")[0] == "neutrophil"
    text = " ".join(summary_paragraphs(m))
    assert f"{m['n']:,} cells" in text
    assert f"{100 * m['accuracy']:.1f}%" in text
    lo, hi = m["ci"]["accuracy"]
    assert f"{100 * lo:.1f}–{100 * hi:.1f}%" in text
    assert "<b>monocytes</b>" in text and "mistaken for lymphocytes" in text
    assert "immature granulocytes (IG)" in text and "mistaken for neutrophils" in text
    assert "never seen" in text  # test split: says the cells were held out
    assert "smudge" in text and "could not be read" in text
    assert "flags a cell for human review when the model's confidence is below 0.60" in text


def test_summary_says_why_a_model_that_reviews_every_cell_does() -> None:
    """An adapted model whose labelled cells did not show its review target (threshold 1.0) flags every cell,
    even one it is certain of, and the report says why instead of "confidence below 1.00"."""
    from wbc.evaluate.metrics import selective_metrics

    m, _ = _case()
    certain = np.eye(4)  # four cells, each named with confidence 1
    m["selective"] = selective_metrics(certain, np.arange(len(certain)), 1.0)
    assert m["selective"]["accepted_fraction"] == 0.0 and m["selective"]["flagged"] == len(certain)
    text = " ".join(summary_paragraphs(m))
    assert "flags every cell for human review" in text and "below 1.00" not in text


def test_a_perfect_small_set_is_not_reported_as_certain() -> None:
    """40 cells all right, 5 a class: the report printed "95% confidence interval 100.0–100.0%" for the accuracy and
    for each class, which a lab reads as certain. The exact intervals are 91.2–100 % and 47.8–100 %; macro-F1, which
    the bootstrap cannot vary here, is said to have none."""
    from wbc.evaluate.report import key_numbers_rows, per_class_rows, technical_rows

    y = np.repeat(np.arange(4), 10)
    m = classification_metrics(y, np.eye(4)[y] * 0.97 + 0.01, CLASSES, review_threshold=0.6, n_boot=200)
    m.update(model_id="m", data="d", split="test", data_kind="manifest", own_run=True)
    text = " ".join(summary_paragraphs(m))
    assert "(95% confidence interval 91.2–100.0%)" in text
    assert all(r["recall_ci"] == "69.2–100.0%" for r in per_class_rows(m))  # 10 of 10
    keys = {r["measure"]: r["ci"] for r in key_numbers_rows(m)}
    assert keys["Accuracy"] == "91.2–100.0%" and keys["Macro F1"].startswith("none")
    assert "Clopper-Pearson" in dict(technical_rows(m))["95% intervals"]
    html = build_report(m, ReportInputs(y_true=y, y_prob=np.eye(4)[y] * 0.97 + 0.01))
    assert "100.0–100.0" not in html and "1.000–1.000" not in html


@pytest.mark.parametrize("split", [None, "train", "val"])
def test_a_run_s_own_train_or_val_rows_are_said_not_to_be_held_out(split: str | None) -> None:
    """wbc evaluate RUN --split all/train/val scores the cells that trained or calibrated the run's model; the report
    had no caution for them (only a folder and another run's manifest had one)."""
    from markupsafe import escape

    from wbc.evaluate.report import caution_text

    m, _ = _case(n=120)
    m.update(split=split, data_kind="manifest", own_run=True)
    text = " ".join(summary_paragraphs(m))
    assert "Caution: these cells come from the manifest of the run that trained this model" in text
    assert "too optimistic" in text and "never seen" not in text and str(escape(caution_text(m))) in text
    m.update(split="test")
    assert "Caution" not in " ".join(summary_paragraphs(m)) and caution_text(m) == ""


def test_the_review_threshold_is_shown_with_the_digits_that_tell_it_from_the_cells() -> None:
    """The report said "confidence below 0.99" and its chart "review threshold 0.99" for a threshold of 0.98633, so
    a cell of 0.988, not flagged, read as below it; predictions.csv of the same run says 0.986."""
    from wbc.evaluate.metrics import selective_metrics

    m, _ = _case(n=120)
    t = 0.9863332509994507
    for review in (None, np.zeros(m["n"], bool)):  # the threshold-only sentence, and the one with every flag
        m["selective"] = selective_metrics(np.eye(4)[np.arange(m["n"]) % 4] * 0.9 + 0.025, np.arange(m["n"]) % 4, t,
                                           review=review)
        text = " ".join(summary_paragraphs(m))
        assert "below 0.986" in text and "0.99 " not in text and "0.99." not in text
    from wbc.evaluate.report import threshold_label

    assert threshold_label(t) == "review threshold 0.986"


def test_key_numbers_say_how_many_cells_a_coverage_kept() -> None:
    """On 42 cells the key numbers said "Accuracy on the 99% most confident ... If the least confident 1% of cells
    went to a human": that kept all 42, the overall accuracy. Each row now gives the cells kept and left."""
    from wbc.evaluate.report import key_numbers_rows

    m, _ = _case(n=42)
    measures = [r["measure"] for r in key_numbers_rows(m) if r["measure"].startswith("Accuracy on")]
    assert measures == ["Accuracy on the 90% most confident (38 of 42 cells)",
                        "Accuracy on the 95% most confident (40 of 42 cells)"]
    meanings = [r["meaning"] for r in key_numbers_rows(m) if r["measure"].startswith("Accuracy on")]
    assert meanings[1] == "If the least confident 2 cells (5%) went to a human."


def test_report_html_is_complete_and_offline() -> None:
    m, inputs = _case()
    html = build_report(m, inputs)
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    for heading in (
        "Key numbers",
        "Per class",
        "Where the mistakes go",
        "Telling classes apart",
        "Can the confidence be trusted?",
        "Sending unsure cells to review",
        "Most confident mistakes",
        "Grad-CAM",
        "Cross-validation",
        "Left out",
        "Technical details",
    ):
        assert heading in html, heading
    srcs = re.findall(r"<img[^>]*\ssrc='([^']*)'", html)
    assert len(srcs) == 5 + 2 + 2  # five figures, two gallery thumbnails, one Grad-CAM pair
    for s in srcs:
        kind, data = s.split(",", 1)
        assert kind in ("data:image/png;base64", "data:image/jpeg;base64")
        img = cv2.imdecode(np.frombuffer(base64.b64decode(data), np.uint8), cv2.IMREAD_COLOR)
        assert img is not None and img.shape[0] > 10
    assert "http://" not in html and "https://" not in html and "<script" not in html
    assert "0.900 ± 0.010" in html  # fold mean ± sd


def test_report_escapes_user_text() -> None:
    m, inputs = _case(n=120)
    m["model_id"] = "<script>alert(1)</script>"
    m["unknown_labels"] = {"count": 1, "labels": {"<b>x": 1}, "called": {"<b>x": {"ig": 1}}}
    html = build_report(m, inputs)
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "<b>x" not in html


def test_gallery_escapes_file_names_and_keeps_data_uris_intact() -> None:
    """Autoescaping (Jinja2) turns a hostile file name into text but leaves base64 data URIs byte for byte."""
    from wbc.evaluate.report import image_to_data_uri, review_page

    cell = np.full((32, 32, 3), 180, np.uint8)
    name = "x/<script>alert('a')</script>&.png"
    page = review_page("<i>Shared</i>", "intro & <b>more</b>", [Thumb(cell, "ig", "neutrophil", 0.7, name)])
    assert "<script" not in page and "<i>" not in page and "<b>more" not in page
    assert "&lt;script&gt;alert(&#39;a&#39;)&lt;/script&gt;&amp;.png" in page
    assert f"src='{image_to_data_uri(cell)}'" in page
    assert page.count("<figure>") == 1 and "class='wrong'" in page

def test_report_without_logits_or_cams() -> None:
    m, inputs = _case(n=150)
    inputs.logits = None
    inputs.gradcam = {}
    inputs.gradcam_note = "no cam output"
    html = build_report(m, inputs)
    assert "no cam output" in html


def test_gradcam_heat_and_overlay() -> None:
    heat = cam_heatmap(np.array([[-2.0, 0.0], [0.0, 4.0]]), (40, 40))
    assert heat.shape == (40, 40) and heat.min() >= 0 and heat.max() == pytest.approx(1.0, abs=0.02)
    assert heat[35, 35] > 0.9 and heat[2, 2] < 0.05  # the hot corner stays hot after upsampling
    assert not cam_heatmap(np.full((3, 3), -1.0), (9, 9)).any()  # no positive evidence: no heat
    rgb = np.full((40, 40, 3), 120, np.uint8)
    over = overlay_heatmap(rgb, heat)
    assert over.dtype == np.uint8 and over.shape == rgb.shape
    assert np.abs(over[2, 2].astype(int) - 120).max() <= 3  # cold pixels keep the image
    assert int(over[36, 36, 0]) > int(over[36, 36, 2]) + 50  # hot pixels turn red
    # alignment: feature cell i is centred on input pixel i * stride (symmetric padding), not (i+.5) * stride
    one = np.zeros((5, 5))
    one[2, 2] = 1.0
    aligned = cam_heatmap(one, (128, 128), input_size=160)
    assert np.unravel_index(aligned.argmax(), aligned.shape) == (51, 51)  # 2 * 32 px * 128/160, pixel centres
    plain = cam_heatmap(one, (128, 128))
    assert np.unravel_index(plain.argmax(), plain.shape) == (63, 63)  # 2.5 cells of 25.6 px
    cams = np.zeros((2, 3, 2, 2), np.float32)
    cams[0, 1, 0, 0] = 1.0
    cams[1, 2, 1, 1] = 1.0
    outs = gradcam_overlays(np.stack([rgb, rgb]), cams, np.array([1, 2]))
    assert outs[0][0, 0, 0] > outs[0][39, 39, 0] and outs[1][39, 39, 0] > outs[1][0, 0, 0]


def test_shares_and_gallery_captions_have_the_digits_that_tell_them_apart() -> None:
    """At whole percents a class with one miss in 300 was "the weakest" yet "recognised 100%", like the best class,
    and a confident mistake at 0.996 read "model: ... 100%"; cells of 0.9855 (flagged) and 0.9904 both read "99%"."""
    from wbc.evaluate.report import thumb_items

    y = np.r_[np.zeros(300, int), np.ones(300, int)]
    pred = y.copy()
    pred[0] = 1  # one 'a' cell of 300 called 'b'
    p = np.full((600, 2), 0.01)
    p[np.arange(600), pred] = 0.99
    m = classification_metrics(y, p, ["a", "b"], n_boot=100)
    m.update(model_id="m", data_kind="folder")
    text = re.sub(r"<[^>]+>", "", str(summary_paragraphs(m)[0]))
    assert "it recognised 99.7% of them" in text and "best on b (100%)" in text and "100% of them" not in text
    cells = np.zeros((8, 8, 3), np.uint8)
    items = thumb_items([Thumb(cells, "a", "b", p) for p in (0.996, 0.9855, 0.9904)], 0.9863)
    assert [t["percent"] for t in items] == ["99.6%", "98.55%", "99.0%"]  # 98.55: not the threshold's 98.6
    m["selective"]["review_threshold"] = 0.9863
    html = build_report(m, ReportInputs(y_true=y, y_prob=p, confident_mistakes=[Thumb(cells, "a", "b", 0.996)]))
    assert "model: b 99.6%" in html
