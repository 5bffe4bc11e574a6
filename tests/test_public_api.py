"""The public Python API: every function in ``wbc.__all__`` works after every submodule has been imported.

The bug this guards against: a public function named like a submodule (``wbc.classify``) is replaced by the
module the first time anything imports ``wbc.classify``; the next call raised "'module' object is not
callable".
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import numpy as np
import pytest

import wbc
import wbc.analyze
import wbc.errors
import wbc.model
from wbc.examples import example_fields
from wbc.io import read_image, write_image
from wbc.synthetic import synthetic_cell, synthetic_smear

#: Submodules that need optional extras (torch, ray, ...) are imported when their extra is installed.
OPTIONAL_ROOTS = ("torch", "torchvision", "timm", "ray", "playwright")


def import_every_submodule() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(wbc.__path__, "wbc."):
        try:
            importlib.import_module(info.name)
        except ImportError as exc:  # an optional extra that is not installed
            if (exc.name or "").split(".")[0] not in OPTIONAL_ROOTS:
                raise
            continue
        names.append(info.name)
    return names


def test_public_names_are_not_submodules() -> None:
    submodules = {info.name.split(".")[1] for info in pkgutil.iter_modules(wbc.__path__, "wbc.")}
    assert not submodules & set(wbc.__all__), "a public function would be shadowed by its submodule"


def test_every_public_function_works_twice_after_importing_every_submodule(tmp_path: Path) -> None:
    imported = import_every_submodule()
    assert {"wbc.classify", "wbc.analyze", "wbc.model", "wbc.cli"} <= set(imported)
    cells = []
    for i, label in enumerate(["neutrophil", "lymphocyte"]):
        cells.append(tmp_path / f"cell{i}.png")
        write_image(cells[-1], synthetic_cell(label, size=96, seed=i))
    field = tmp_path / "field.png"
    write_image(field, synthetic_smear(seed=0)[0])
    for _ in range(2):
        for name in wbc.__all__:
            assert name == "__version__" or callable(getattr(wbc, name)), name
        clf = wbc.load_model(threads=1)
        res = wbc.classify_images(cells, clf)
        assert [p.path for p in res.predictions] == [str(c) for c in cells]
        assert all(p.label in clf.classes for p in res.predictions)
        seg = wbc.load_segmenter("classical", threads=1)
        smears = wbc.analyze_images([field], clf, seg)
        assert len(smears) == 1 and smears[0].image == "field.png" and smears[0].width > 0


def test_onnx_runtime_sends_nothing_and_keeps_no_device_id(tmp_path: Path) -> None:
    """ONNX Runtime (1.29 and newer) sends usage telemetry and writes a device id under ~/.cache unless told not to;
    wbc tells it not to. A user who sets the variable to 0 gets ONNX Runtime's own default back (which shows this
    check can see the device id when one is written).

    ONNX Runtime also keeps quiet by itself on a build server (it looks for ``CI``, ``GITHUB_ACTIONS`` and the other
    build servers' variables below, found in its library's strings and checked one by one), so both runs leave those
    out: what is measured is wbc's opt-out, as on a lab's workstation, not the CI machine's."""
    import os
    import subprocess
    import sys

    build_server = {"CI", "TF_BUILD", "GITHUB_ACTIONS", "GITLAB_CI", "CIRCLECI", "TRAVIS", "JENKINS_URL",
                    "CODEBUILD_BUILD_ID", "BUILDKITE", "TEAMCITY_VERSION", "APPVEYOR", "BITBUCKET_BUILD_NUMBER",
                    "ORT_RUNNING_UNIT_TESTS"}
    cell = tmp_path / "cell.png"
    write_image(cell, synthetic_cell("neutrophil", size=96, seed=0))

    def classify(home: Path, **extra: str) -> list[Path]:
        env = {k: v for k, v in os.environ.items() if k not in {*wbc.ORT_TELEMETRY_OPT_OUTS, *build_server}}
        env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), **extra)
        r = subprocess.run([sys.executable, "-m", "wbc", "classify", str(cell), "--output", str(home / "p.csv")],
                           env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        return [p for p in home.rglob("*") if "Microsoft" in p.parts]

    import onnxruntime

    assert classify(tmp_path / "home") == []
    if not classify(tmp_path / "opted_in", **dict.fromkeys(wbc.ORT_TELEMETRY_OPT_OUTS, "0")):
        pytest.skip(f"ONNX Runtime {onnxruntime.__version__} wrote no device id here even when opted back in (no "
                    "telemetry in this version or this environment), so nothing showed the check above can see one")


def test_analyze_images_names_an_unreadable_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(wbc.errors.WbcError, match=r"broken\.png"):
        wbc.analyze_images([bad], wbc.load_model(threads=1), wbc.load_segmenter("classical", threads=1))


def test_one_path_is_one_image_not_its_characters(tmp_path: Path) -> None:
    """A plain ``str`` is a sequence too (of its characters): one path, as str or Path, answers as a list of one."""
    cell, field = tmp_path / "cell.png", tmp_path / "field.png"
    write_image(cell, synthetic_cell("neutrophil", size=96, seed=0))
    write_image(field, synthetic_smear(seed=0)[0])
    clf, seg = wbc.load_model(threads=1), wbc.load_segmenter("classical", threads=1)
    for one in (str(cell), cell):
        res = wbc.classify_images(one, clf)
        assert [p.path for p in res.predictions] == [str(cell)] and not res.errors
    for one in (str(field), field):
        assert [s.image for s in wbc.analyze_images(one, clf, seg)] == ["field.png"]


def test_analyze_images_says_a_tiff_holds_more_fields(tmp_path: Path) -> None:
    """A TIFF of 3 fields gave the first field's result without a word about the other two (wbc 0.28.0), where
    `wbc analyze` and POST /analyze say it in the field's warnings."""
    from PIL import Image

    pages = [Image.fromarray(synthetic_smear(n_wbc=1, seed=s)[0]) for s in (1, 2, 3)]
    pages[0].save(tmp_path / "slide.tif", save_all=True, append_images=pages[1:])
    write_image(tmp_path / "one.png", synthetic_smear(n_wbc=1, seed=1)[0])
    clf, seg = wbc.load_model(threads=1), wbc.load_segmenter("classical", threads=1)
    tiff, png = wbc.analyze_images([tmp_path / "slide.tif", tmp_path / "one.png"], clf, seg)
    assert tiff.image == "slide.tif" and tiff.cells
    assert any("the file holds 3 images; only the first was analysed" in w for w in tiff.warnings)
    assert not any("only the first" in w for w in png.warnings)


# Contracts an integrator relies on (the pyapi review of wbc 0.29.0): each test failed before wbc 0.30.0.

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def clf() -> wbc.model.Classifier:
    return wbc.load_model(threads=1)


@pytest.fixture(scope="module")
def seg() -> object:
    return wbc.load_segmenter("classical", threads=1)


def test_analyze_images_keeps_the_other_fields_results(tmp_path: Path, clf, seg) -> None:
    """One grey field in a list lost every other field's result; with ``errors=`` it is listed and the rest answered,
    and without it the call still raises, as before (a short list is never taken for a complete one)."""
    good = tmp_path / "good.png"
    write_image(good, synthetic_smear(n_wbc=1, seed=1)[0])
    grey = tmp_path / "grey.png"  # a monochrome camera's field
    write_image(grey, np.repeat(read_image(example_fields()[0]).mean(2, keepdims=True), 3, 2).astype(np.uint8))
    errors: list[tuple[str, str]] = []
    res = wbc.analyze_images([good, grey, tmp_path / "missing.png", good], clf, seg, errors=errors)
    assert [r.image for r in res] == ["good.png", "good.png"]
    assert [e[0] for e in errors] == [str(grey), str(tmp_path / "missing.png")]
    assert errors[0][1].startswith("grey.png: a grey image") and "no such file" in errors[1][1]
    with pytest.raises(wbc.errors.ImageReadError, match=r"grey\.png: a grey image"):
        wbc.analyze_images([good, grey], clf, seg)


@pytest.mark.parametrize("make", [
    lambda c: c.astype(np.float32) / 255,  # answered as near-black: platelet
    lambda c: c.astype(np.uint16) * 257,  # answered as blown out: monocyte 0.99
    lambda c: c[..., :1],  # one channel
    lambda c: c[0],  # one cell without the batch axis
    lambda c: c[:, :-8, :-8],  # not at the model's input size
    lambda c: [c[0], c[0, :-8]],  # a list of cells of different sizes
], ids=["float01", "uint16", "one_channel", "no_batch_axis", "wrong_size", "ragged_list"])
def test_classifier_refuses_cells_that_are_not_uint8_rgb_batches(clf, make) -> None:
    cells = synthetic_cell("neutrophil", size=clf.info.input_size, seed=0)[None]
    with pytest.raises(wbc.errors.ImageReadError, match=r"^cells: expected uint8 RGB cells \(N x \d+ x \d+ x 3\)"):
        clf.predict_proba(make(cells))
    with pytest.raises(wbc.errors.ImageReadError, match="uint8"):
        clf.run(make(cells))
    assert clf.predict_proba([cells[0], cells[0]]).shape == (2, len(clf.classes))  # a list of uint8 cells: answered
    assert clf.predict_proba([]).shape == (0, len(clf.classes))


@pytest.mark.parametrize("dtype", [np.float32, np.uint16])
def test_prepare_cell_refuses_what_is_not_an_8bit_rgb_image(dtype) -> None:
    """``prepare_cell`` crashed inside OpenCV on float 0-1 and answered 16-bit cells with a confident wrong class."""
    from wbc.classify import prepare_cell

    with pytest.raises(wbc.errors.ImageReadError, match=r"^the image: expected an 8-bit RGB array"):
        prepare_cell(synthetic_cell("neutrophil", size=120, seed=0).astype(dtype), 96)


def test_predict_proba_answers_within_the_label_set(clf) -> None:
    """``with_classes`` promises answers only among its classes; ``predict_proba`` still named platelet."""
    from wbc.classify import predict_cells

    five = clf.with_classes("5part")
    cells = np.stack([synthetic_cell(c, size=clf.info.input_size, seed=0) for c in ("platelet", "neutrophil")])
    p = five.predict_proba(cells)
    outside = [i for i, c in enumerate(clf.classes) if c not in five.label_set]
    assert np.all(p[:, outside] == 0) and np.allclose(p.sum(1), 1)
    preds, _ = predict_cells(five.with_tta(1), cells, classes=five.label_set)  # the same answer classify gives
    assert [clf.classes[k] for k in p.argmax(1)] == [q.label for q in preds]
    assert clf.predict_proba(cells)[:, outside].sum() > 0  # no label set: every class, as before


def test_package_is_marked_typed() -> None:
    """PEP 561: without ``py.typed`` shipped in the package, integrators' mypy/pyright treat all of wbc as untyped."""
    import subprocess
    import tomllib

    assert (Path(wbc.__file__).parent / "py.typed").is_file()
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["wbc"]
    assert "py.typed" in data
    ignored = subprocess.run(["git", "check-ignore", "-q", "src/wbc/py.typed"], cwd=ROOT, check=False)
    assert ignored.returncode != 0, "py.typed is git-ignored: a checkout would build a wheel without it"


@pytest.mark.parametrize("fn", ["classify_images", "analyze_images"])
@pytest.mark.parametrize("value", [np.zeros((64, 64, 3), np.uint8), b"\xff\xd8\xff", [np.zeros((64, 64, 3), np.uint8)],
                                   None, [b"cell.png"]], ids=["ndarray", "bytes", "list_of_ndarray", "none",
                                                              "list_of_bytes"])
def test_public_functions_name_a_non_path_argument(fn, value, clf, seg) -> None:
    """An array, bytes or PIL image where paths go failed inside pathlib with a TypeError that pointed nowhere."""
    args = (value, clf) if fn == "classify_images" else (value, clf, seg)
    with pytest.raises(wbc.errors.WbcError, match=r"^expected image file paths .*wbc\.analyze\.analyze_image"):
        getattr(wbc, fn)(*args)


def test_public_functions_take_a_generator_and_a_pil_image_is_refused(tmp_path: Path, clf, seg) -> None:
    from PIL import Image

    cell = tmp_path / "cell.png"
    write_image(cell, synthetic_cell("neutrophil", size=96, seed=0))
    assert [p.path for p in wbc.classify_images((c for c in [cell]), clf).predictions] == [str(cell)]
    with pytest.raises(wbc.errors.WbcError, match="got PngImageFile"):
        wbc.classify_images(Image.open(cell), clf)


def test_result_types_name_the_json_they_have(clf, seg) -> None:
    """``wbc.types`` said every result type has ``to_dict``; only ``Prediction`` does: it names the JSON a
    SmearResult has, and that one is JSON."""
    import json

    import wbc.types as t
    from wbc.formats import result_to_dict

    doc = t.__doc__ or ""
    assert "wbc.formats.result_to_dict" in doc and "Each has ``to_dict``" not in doc
    smear = wbc.analyze.analyze_image(synthetic_smear(n_wbc=1, seed=1)[0], clf, seg, name="f.png")
    assert json.loads(json.dumps(result_to_dict(smear, clf.classes)))["image"] == "f.png"


def test_array_refusal_without_a_name_reads_as_a_sentence(seg) -> None:
    """An array refused without ``name`` gave a message starting with ": "."""
    from wbc.analyze import analyze_image
    from wbc.smear_look import check_colour

    with pytest.raises(wbc.errors.ImageReadError, match=r"^the image: expected an 8-bit RGB array"):
        analyze_image(np.zeros((64, 64), np.uint8), None, seg)
    with pytest.raises(wbc.errors.ImageReadError, match=r"^the image: a grey image"):
        check_colour(np.full((64, 64, 3), 200, np.uint8))


@pytest.mark.parametrize("call", [
    lambda clf: wbc.load_model(threads="2"),  # TypeError in max()
    lambda clf: clf.with_tta("x"),  # ValueError in int()
    lambda clf: clf.with_tta(2.7),  # silently 2 views
    lambda clf: wbc.classify_images([], clf, batch_size=0),  # ValueError in range()
    lambda clf: clf.predict_proba(np.zeros((1, 8, 8, 3), np.uint8), batch_size=0),
], ids=["threads_str", "tta_str", "tta_float", "batch_size_0", "predict_proba_batch_size_0"])
def test_a_wrong_argument_is_a_one_line_error_naming_it(clf, call) -> None:
    with pytest.raises(wbc.errors.WbcError, match=r"^(threads|tta|batch_size) .*: must be a whole number"):
        call(clf)


def test_python_errors_name_keywords_not_command_line_flags(clf) -> None:
    """Python callers were told about ``--tta`` and ``--classes``; the message names the keyword (the flag's name
    without dashes, so the command line's user still finds it)."""
    with pytest.raises(wbc.errors.ModelError, match=r"^tta 0: must be a whole number between 1 and 8"):
        clf.with_tta(0)
    with pytest.raises(wbc.errors.WbcError, match=r"^classes: 'bogus' is not a class of this model"):
        clf.with_classes("bogus")
    assert clf.with_tta(2.0).tta == 2


def test_python_docs_record_the_segmenter_and_say_arrays_are_rgb() -> None:
    """docs/review.md's case example stored no segmenter (its report said "Segmenter: not recorded"), and no doc said
    that ``cv2.imread``'s BGR arrays are answered wrongly without a word."""
    review = (ROOT / "docs" / "review.md").read_text()
    assert "create_case_from_fields(store, \"S-2026-0142\", fields, clf, segmenter_id=seg.model_id)" in review
    assert "cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)" in (ROOT / "docs" / "smear_analysis.md").read_text()
