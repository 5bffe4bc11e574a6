"""Model metadata: typed preprocessing settings (format 2), a lab's class prior (format 3) and the readers for
formats 1 (models before 1.1.0) and 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wbc.errors import ModelError
from wbc.model import FORMAT_VERSION, ModelInfo, Preprocessing, load_model
from wbc.paths import DEFAULT_MODEL

SHIPPED_JSON = DEFAULT_MODEL.with_suffix(".json")


def test_shipped_metadata_reads_into_typed_fields_and_as_format_1() -> None:
    raw = json.loads(SHIPPED_JSON.read_text())
    info = ModelInfo.from_json(SHIPPED_JSON.read_text())
    assert raw["format_version"] <= info.format_version == FORMAT_VERSION  # read as the current format
    assert info.class_prior == {}  # format 2 had none: probabilities as calibrated
    for key in ("classes", "input_size", "mean", "std", "temperature", "review_threshold",
                "review_target_accuracy", "ood", "metrics", "model_id", "colour_reference"):
        assert getattr(info, key) == raw[key], key
    assert info.preprocessing == Preprocessing(**raw["preprocessing"])
    # the ONNX file's own copy reads the same
    assert load_model(DEFAULT_MODEL, threads=1).info == info
    # the same metadata written as format 1 (models shipped before 1.1.0 kept these settings in ``extra``)
    v1 = {k: v for k, v in raw.items() if k not in ("format_version", "preprocessing", "colour_reference")}
    v1["extra"] = {**raw["extra"], "cell_fraction": raw["preprocessing"]["cell_fraction"],
                   "colour_reference": raw["colour_reference"]}
    assert ModelInfo.from_json(json.dumps(v1)) == info


def test_format_2_round_trip_and_legacy_extra_keys(tmp_path: Path) -> None:
    stain = {"method": "reinhard", "target": {"mean": [1.0, 2.0, 3.0], "std": [1.0, 1.0, 1.0]}}
    info = ModelInfo(classes=["a", "b"], input_size=32, mean=[0.5] * 3, std=[0.25] * 3,
                     preprocessing=Preprocessing(stain=stain, cell_fraction=0.4), colour_reference={"x": 1})
    text = info.to_json()
    assert json.loads(text)["format_version"] == FORMAT_VERSION == 3
    assert json.loads(text)["preprocessing"] == {"stain": stain, "cell_fraction": 0.4}
    assert ModelInfo.from_json(text) == info
    # format 1 kept these settings in ``extra``: the reader moves them into the typed fields
    v1 = {**json.loads(text), "extra": {"stain": stain, "cell_fraction": 0.4, "colour_reference": {"x": 1},
                                       "opset": 17}}
    for k in ("format_version", "preprocessing", "colour_reference"):
        del v1[k]
    old = ModelInfo.from_json(json.dumps(v1))
    assert old.preprocessing == info.preprocessing and old.colour_reference == {"x": 1}
    assert old.extra == {"opset": 17}


def test_newer_format_is_refused_with_a_message() -> None:
    data = json.loads(SHIPPED_JSON.read_text()) | {"format_version": FORMAT_VERSION + 1}
    with pytest.raises(ModelError, match="newer"):
        ModelInfo.from_json(json.dumps(data))


def test_class_prior_round_trips_and_reweights_probabilities(tmp_path: Path) -> None:
    import numpy as np

    from wbc.model import class_probabilities

    info = ModelInfo(classes=["a", "b", "c"], input_size=32, mean=[0.5] * 3, std=[0.25] * 3, temperature=2.0,
                     class_prior={"a": 0.8, "b": 0.2})
    assert ModelInfo.from_json(info.to_json()).class_prior == {"a": 0.8, "b": 0.2}
    logits = np.log(np.array([[2.0, 2.0, 1.0]]))  # temperature 2: probabilities ∝ sqrt -> [1.41, 1.41, 1]
    p = class_probabilities(logits, info)[0]
    w = np.sqrt([2.0, 2.0, 1.0]) * [0.8 * 2, 0.2 * 2, 1.0]  # a, b re-weighted from 1/2 each; c untouched
    assert np.allclose(p, w / w.sum(), atol=1e-6)
    info.class_prior = {}
    assert np.allclose(class_probabilities(logits, info)[0], np.sqrt([2, 2, 1]) / np.sqrt([2, 2, 1]).sum())


def _tiny_model_with(path: Path, metadata: object) -> Path:
    """A tiny real ONNX classifier (32 px input, 8 classes, a 3-wide embedding) whose wbc metadata is replaced
    by ``metadata`` (a dict: the tiny model's own fields with these changed; anything else: stored as it is)."""
    import numpy as np

    from tiny_models import mean_colour_model

    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(mean_colour_model(path, 32, np.zeros((8, 3)), "tiny", embedding_output=True)))
    entry = model.metadata_props[0]
    entry.value = json.dumps(json.loads(entry.value) | metadata if isinstance(metadata, dict) else metadata)
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(("edit", "msg"), [
    ({"classes": ["basophil", "eosinophil"]}, "the network answers 8 classes, its metadata names 2"),
    ({"classes": "basophil"}, "field classes: a non-empty list of distinct class names"),
    ({"input_size": 48}, "the network takes 32x32 inputs, its metadata says 48"),
    ({"input_size": "32"}, "field input_size: a whole number > 0"),
    ({"input_size": 0}, "field input_size: a whole number > 0"),
    ({"mean": [0.5]}, "field mean: three numbers"),
    ({"temperature": "abc"}, "field temperature: a finite number > 0"),
    ({"temperature": None}, "field temperature: a finite number > 0"),
    ({"review_threshold": "high"}, "field review_threshold: a number"),
    ({"class_prior": {"basophil": "x"}}, "field class_prior"),
    ({"head": {"weight": [[0.0] * 4] * 8, "bias": [0.0] * 8}}, "head does not map the 3-wide embedding to its 8"),
    ({"head": {"weight": [[0.0] * 3] * 8, "bias": [0.0] * 7}}, "head does not map"),
    ([1, 2], "metadata is a JSON list, not an object"),
])
def test_edited_metadata_that_does_not_fit_is_refused_in_one_line(tmp_path: Path, edit: object, msg: str) -> None:
    """Metadata edited by hand (wrong types, or not matching the network) is refused when the model loads,
    naming the model and the field, instead of a traceback at the first cell or wrong answers without a word."""
    path = _tiny_model_with(tmp_path / "edited.onnx", edit)
    with pytest.raises(ModelError, match=msg) as info:
        load_model(path, threads=1)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


_COLOUR = {"mean": [0.5, 0.5], "icov": [[1.0, 0.0], [0.0, 1.0]], "threshold": 3.0}


@pytest.mark.parametrize(("edit", "msg"), [
    ({"temperature": float("inf")}, "field temperature: a finite number > 0"),
    ({"temperature": float("nan")}, "field temperature: a finite number > 0"),
    ({"review_threshold": float("nan")}, "field review_threshold: a number between 0 and 1"),
    ({"review_threshold": 1.5}, "field review_threshold: a number between 0 and 1"),
    ({"review_threshold": -0.1}, "field review_threshold: a number between 0 and 1"),
    ({"classes": ["basophil"] * 8}, "field classes: a non-empty list of distinct class names"),
    ({"ood": {"references": [{"colour": {}}]}}, r"field ood: references\[0\]\.colour"),
    ({"ood": {"references": [{"colour": {**_COLOUR, "threshold": 0}}]}}, r"field ood: references\[0\]\.colour"),
    ({"ood": {"references": "x"}}, "field ood: references: a list of objects"),
    ({"ood": {"pca": {"mean": [0.0]}, "references": [{"colour": _COLOUR}]}}, "field ood: pca"),
    ({"ood": {"pca": {"mean": [0.0] * 3, "components": [[1.0] * 3] * 2, "scale": [1.0] * 2},
              "references": [{"colour": _COLOUR, "feature": {"centres": {"a": [0.0]}, "resid_scale": 1.0,
                                                              "threshold": 2.0}}]}},
     r"field ood: references\[0\]\.feature"),
])
def test_metadata_that_would_answer_wrongly_or_fail_later_is_refused_at_load(tmp_path: Path, edit: dict,
                                                                             msg: str) -> None:
    """An infinite temperature (every cell one class, uniform probabilities), a NaN or out-of-range review threshold,
    duplicate class names (a p_ column contradicting the confidence) answered wrongly without a word, and a malformed
    ``ood`` block raised KeyError at the first cell: each is refused when the model loads, naming file and field."""
    path = _tiny_model_with(tmp_path / "edited.onnx", edit)
    with pytest.raises(ModelError, match=msg) as info:
        load_model(path, threads=1)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_ood_statistics_as_wbc_writes_them_load(tmp_path: Path) -> None:
    """What `wbc ood fit`, `wbc adapt` and `wbc quantize` write passes the ``ood`` check: the shipped model's, one
    with colour references only, one with only the percentile to re-fit at."""
    shipped = json.loads(SHIPPED_JSON.read_text())["ood"]
    pca = {"mean": [0.0] * 3, "components": [[1.0, 0.0, 0.0]] * 2, "scale": [1.0] * 2}
    feature = {"centres": {"basophil": [0.0, 0.0]}, "resid_scale": 1.0, "threshold": 2.0}
    from wbc.model import ood_problem

    assert ood_problem(shipped) is None
    for ood in ({"references": [{"colour": _COLOUR}]}, {"percentile": 99.0},
                {"pca": pca, "references": [{"colour": _COLOUR, "feature": feature}]}):
        assert load_model(_tiny_model_with(tmp_path / "ok.onnx", {"ood": ood}), threads=1).info.ood == ood


def test_metadata_that_fits_the_network_loads(tmp_path: Path) -> None:
    head = {"weight": [[0.5] * 3] * 8, "bias": [0.0] * 8}  # a head refitted by `wbc adapt`: 3-wide embedding
    clf = load_model(_tiny_model_with(tmp_path / "ok.onnx", {"head": head, "temperature": 2}), threads=1)
    assert clf.info.head == head and clf.info.temperature == 2


@pytest.mark.parametrize(("version", "number"), [("1.2.0", 1), ("2024-06", 2024), ("2rc1", 2), ("v3", 0), ("", 0),
                                                 ("9" * 30, 2**63 - 1)])
def test_any_version_label_exports(tmp_path: Path, version: str, number: int) -> None:
    """A version whose first part is not a plain number ("2024-06") crashed the export at the end of training."""
    import numpy as np
    import onnx

    from tiny_models import mean_colour_model
    from wbc.model import with_metadata

    raw = mean_colour_model(tmp_path / "m.onnx", 32, np.zeros((8, 3)), "tiny").read_bytes()
    info = ModelInfo([f"c{i}" for i in range(8)], 32, [0.5] * 3, [0.25] * 3, version=version)  # distinct names
    proto = onnx.load_from_string(with_metadata(raw, info))
    assert proto.model_version == number
    assert ModelInfo.from_json(proto.metadata_props[0].value).version == version


def test_a_model_written_through_a_link_keeps_its_readable_copy_and_weights_beside_the_file(tmp_path: Path) -> None:
    """``write_model(lab.onnx -> models/lab_v3.onnx)`` wrote the ONNX into models/ but its .json beside the link, so
    models/lab_v3.json went on describing the previous model and a stray lab.json appeared; quantize's own rename
    replaced the link with a file. The .json (and an adaptation's .pt) describe the file, so they go beside it."""
    from wbc.adapt import carry_weights
    from wbc.model import write_model
    from wbc.quantize import _finished_then_moved

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "lab_v3.onnx").write_bytes(DEFAULT_MODEL.read_bytes())
    (tmp_path / "models" / "lab_v3.json").write_text("{}")
    link = tmp_path / "lab.onnx"
    link.symlink_to("models/lab_v3.onnx")
    info = load_model(link, threads=1).info
    info.model_id = "lab-v4"
    write_model(link, DEFAULT_MODEL.read_bytes(), info)
    assert json.loads((tmp_path / "models" / "lab_v3.json").read_text())["model_id"] == "lab-v4"
    (tmp_path / "base.pt").write_bytes(b"weights")
    (tmp_path / "base.onnx").write_bytes(b"")
    carry_weights(tmp_path / "base.onnx", link, same_network=True)
    assert (tmp_path / "models" / "lab_v3.pt").read_bytes() == b"weights"
    info.model_id = "lab-v4-int8"
    with _finished_then_moved(link) as work:
        write_model(work, DEFAULT_MODEL.read_bytes(), info)
    assert link.is_symlink() and load_model(link, threads=1).info.model_id == "lab-v4-int8"
    assert json.loads((tmp_path / "models" / "lab_v3.json").read_text())["model_id"] == "lab-v4-int8"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["base.onnx", "base.pt", "lab.onnx", "lab_v3.json",
                                                          "lab_v3.onnx", "lab_v3.pt", "models"]
