"""The public Python API: every function in ``wbc.__all__`` works after every submodule has been imported.

The bug this guards against: a public function named like a submodule (``wbc.classify``) is replaced by the
module the first time anything imports ``wbc.classify``; the next call raised "'module' object is not
callable".
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
from collections.abc import Callable
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


def test_readme_names_every_variable_import_wbc_sets() -> None:
    """``import wbc`` sets ``OPENCV_IO_MAX_IMAGE_PIXELS``, which caps the caller's own ``cv2.imread`` at 200 megapixels
    when wbc is imported first; before wbc 0.34.0 README's "What wbc changes in your program" did not say so. Every
    variable ``import wbc`` changes is named there."""
    import json
    import os
    import subprocess
    import sys

    code = ("import json, os; before = dict(os.environ); import wbc; "
            "print(json.dumps(sorted(k for k in os.environ if os.environ.get(k) != before.get(k))))")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORT_", "OPENCV_"))}
    changed = json.loads(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                        check=True, timeout=60).stdout)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("What wbc changes in your program:", 1)[1].split("\n\n", 1)[0]
    assert "OPENCV_IO_MAX_IMAGE_PIXELS" in changed and [k for k in changed if f"`{k}" not in section] == [], changed


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
    assert errors[0][1].startswith(f"{grey}: a grey image") and "no such file" in errors[1][1]
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
    """An array, bytes or PIL image where paths go failed inside pathlib with a TypeError that pointed nowhere. Since
    wbc 0.33.0 ``classify_images`` points to ``classify_arrays``: the smear functions it named find 0 or 2 cells in
    some single-cell images and never answer platelet."""
    args = (value, clf) if fn == "classify_images" else (value, clf, seg)
    where = r"wbc\.classify_arrays" if fn == "classify_images" else r"wbc\.analyze\.analyze_image"
    with pytest.raises(wbc.errors.WbcError, match=rf"^expected image file paths .*{where}"):
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


# The pyapi review of wbc 0.32.0: each test below failed before wbc 0.33.0.

def same_answers(res: object) -> list[tuple[object, ...]]:
    """What must agree between routes: each answer with its flags and reasons, and each refusal."""
    preds = [(p.path, p.label, p.review, p.ood, tuple(p.reasons), round(p.confidence, 6), p.other_cells, p.outside)
             for p in res.predictions]  # type: ignore[attr-defined]
    return [*preds, *res.errors]  # type: ignore[attr-defined]


def write_png(path: Path, rgb: np.ndarray) -> Path:
    """``rgb`` losslessly, as an RGB(A) or grey PNG (OpenCV writes BGR)."""
    import cv2

    order = {3: cv2.COLOR_RGB2BGR, 4: cv2.COLOR_RGBA2BGRA}
    cv2.imwrite(str(path), cv2.cvtColor(rgb, order[rgb.shape[2]]) if rgb.ndim == 3 else rgb)
    return path


def test_pbc_cells_in_memory_are_answered_as_their_files(real_data: Path, clf, tmp_path: Path) -> None:
    """16 PBC validation cells (2 a class): their files' bytes get exactly the files' answers, flags and reasons, and
    their decoded arrays their lossless files'. The smear route that the refusal named got 45 of 64 such cells right
    (classify_images 62), and ``prepare_cell`` + ``predict_proba`` gave no review, OOD flag or reason."""
    import csv

    with open(ROOT / "runs" / "default" / "manifest.csv", newline="") as fh:
        val = sorted(r["path"] for r in csv.DictReader(fh) if r["split"] == "val")
    picked: dict[str, list[Path]] = {}
    for p in val:
        if len(picked.setdefault(p.split("/")[1], [])) < 2:
            picked[p.split("/")[1]].append(real_data / p)
    files = [p for ps in picked.values() for p in ps]
    assert len(files) == 16
    ref = wbc.classify_images(files, clf)
    res = wbc.classify_arrays([p.read_bytes() for p in files], clf, names=[str(p) for p in files])
    assert same_answers(res) == same_answers(ref) and np.array_equal(res.logits, ref.logits)
    assert sum(p.label == f.parent.name for p, f in zip(res.predictions, files, strict=True)) >= 14
    arrays = [read_image(p) for p in files]
    pngs = [write_png(tmp_path / f"{p.stem}.png", a) for p, a in zip(files, arrays, strict=True)]
    assert same_answers(wbc.classify_arrays(arrays, clf, names=[str(p) for p in pngs])) == same_answers(
        wbc.classify_images(pngs, clf))


def test_synthetic_cells_in_memory_are_answered_as_their_files_with_every_flag(clf, tmp_path: Path) -> None:
    """Arrays and bytes, mixed, against their PNG files: two cells in one image (flagged), a TIFF of two images
    (bytes: flagged), an image too small to be a cell and a blank frame (refused by name into ``errors``), grey and
    RGBA arrays (converted as such files are read), with a label set and without re-framing too."""
    from PIL import Image

    from test_two_cells import two_cells

    rgb = {"neutrophil": synthetic_cell("neutrophil", size=200, seed=1),
           "platelet": synthetic_cell("platelet", size=96, seed=2),
           "pair": two_cells(), "tiny": synthetic_cell("lymphocyte", size=12, seed=3),
           "blank": np.full((96, 96, 3), 230, np.uint8)}
    grey = synthetic_cell("monocyte", size=96, seed=4).mean(2).astype(np.uint8)
    rgba = np.dstack([synthetic_cell("eosinophil", size=96, seed=5), np.full((96, 96), 200, np.uint8)])
    files = [write_png(tmp_path / f"{k}.png", v) for k, v in rgb.items()]
    files += [write_png(tmp_path / "grey.png", grey), write_png(tmp_path / "rgba.png", rgba)]
    pages = [Image.fromarray(synthetic_cell("basophil", size=96, seed=s)) for s in (6, 7)]
    pages[0].save(tmp_path / "stack.tif", save_all=True, append_images=pages[1:])
    files.append(tmp_path / "stack.tif")
    names = [str(p) for p in files]
    images = [*rgb.values(), grey, rgba, files[-1].read_bytes()]
    kept = [i.copy() for i in images[:-1]]
    for kwargs in ({}, {"classes": "5part"}, {"reframe": False}, {"batch_size": 3, "workers": 1}):
        ref = wbc.classify_images(files, clf, **kwargs)
        assert same_answers(wbc.classify_arrays(images, clf, names=names, **kwargs)) == same_answers(ref), kwargs
        assert same_answers(wbc.classify_arrays([p.read_bytes() for p in files], clf, names=names, **kwargs)
                            ) == same_answers(ref), kwargs
    assert all(np.array_equal(a, b) for a, b in zip(images, kept, strict=False))  # the caller's arrays untouched
    flags = {Path(p.path).stem: p.reasons for p in ref.predictions}
    assert any("2 nucleated cells in view" in r for r in flags["pair"])
    assert any("holds 2 images" in r for r in flags["stack"])
    assert [Path(e[0]).stem for e in ref.errors] == ["tiny", "blank"]
    one = wbc.classify_arrays(rgb["neutrophil"], clf)  # one array is one image, named by its index
    assert [p.path for p in one.predictions] == ["images[0]"] and not one.errors
    stack = wbc.classify_arrays(np.stack([rgb["neutrophil"]] * 2), clf, names=("a", "b"))  # a 4-D array: a stack
    assert [p.path for p in stack.predictions] == ["a", "b"]



def test_byte_sources_are_read_once_as_needed_and_a_refused_read_is_one_error(clf, tmp_path: Path) -> None:
    """``classify_byte_sources`` (the HTTP API's /classify since wbc 0.34.0): each source read once, a read that
    refuses its file (an upload over the size limit) listed in ``errors`` with its own message, the others answered
    exactly as their files are."""
    from wbc.classify import classify_byte_sources

    files = [write_png(tmp_path / f"{k}.png", synthetic_cell(k, size=96, seed=i))
             for i, k in enumerate(["neutrophil", "monocyte", "eosinophil"])]
    calls: list[int] = []

    def read(i: int) -> bytes:
        calls.append(i)
        if i == 1:
            raise wbc.errors.ImageReadError("monocyte.png: file is larger than the limit of 2 MiB")
        return files[i].read_bytes()

    res = classify_byte_sources(read, [str(p) for p in files], clf, batch_size=1, workers=1)
    assert sorted(calls) == [0, 1, 2]
    assert res.errors == [(str(files[1]), "monocyte.png: file is larger than the limit of 2 MiB")]
    assert same_answers(res)[:2] == same_answers(wbc.classify_images([files[0], files[2]], clf))


def test_classify_arrays_converts_grey_and_rgba_arrays_as_it_goes(clf) -> None:
    """Every grey or RGBA array was converted to an RGB copy before any work, and all the copies were held to the end:
    400 grey cells of 360 px allocated 150 MiB more than the same cells as RGB arrays (none). Converted as each is
    loaded, the extra is a few batches' worth."""
    import tracemalloc

    cell = synthetic_cell("neutrophil", size=360, seed=0)
    n = 160  # old: 61 MiB of grey copies (and as much of RGBA), all at once
    kinds = {"rgb": [cell] * n, "grey": [np.ascontiguousarray(cell.mean(2).astype(np.uint8))] * n,
             "rgba": [np.dstack([cell, np.full(cell.shape[:2], 255, np.uint8)])] * n}
    wbc.classify_arrays(kinds["rgb"][:4], clf)  # warm up: the session's own buffers
    peak = {}
    for kind, images in kinds.items():
        tracemalloc.start()
        try:
            res = wbc.classify_arrays(images, clf, batch_size=16, workers=1)
            peak[kind] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert len(res.predictions) == n and not res.errors
    assert peak["grey"] < peak["rgb"] + 20 * 2**20 and peak["rgba"] < peak["rgb"] + 20 * 2**20, peak


@pytest.mark.parametrize(("images", "said"), [
    ([np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64, 3), np.float32)],
     r"^images\[1\]: expected a uint8 RGB image array \(height x width x 3\), got float32 \(64, 64, 3\); convert it to "
     r"8 bits"),
    ([np.zeros((64, 64, 3), np.uint16)], r"^images\[0\]: .*got uint16 .*pass the image file's bytes"),
    ([np.zeros((64, 64, 2), np.uint8)], r"^images\[0\]: .*got uint8 \(64, 64, 2\); give height x width x 3"),
    ([np.zeros((2, 64, 64, 3, 1), np.uint8)], r"^images\[0\]: .*got uint8 \(2, 64, 64, 3, 1\)"),
    (["cell.png"], r"^images\[0\]: expected .*got str; for image files use wbc\.classify_images"),
    ("cell.png", r"^images: expected .*got str; for image files use wbc\.classify_images"),
    ([None], r"^images\[0\]: expected a uint8 RGB image array or an image file's bytes, got NoneType$"),
], ids=["float", "uint16", "two_channels", "five_dims", "path_in_list", "path", "none"])
def test_classify_arrays_refuses_what_is_not_an_8bit_image_in_one_line(clf, images, said) -> None:
    with pytest.raises(wbc.errors.WbcError, match=said):
        wbc.classify_arrays(images, clf)


def test_classify_arrays_names_a_refused_array_and_a_pil_image_and_counts_names(clf, tmp_path: Path) -> None:
    from PIL import Image

    cell = synthetic_cell("neutrophil", size=96, seed=0)
    with pytest.raises(wbc.errors.WbcError, match=r"^images\[1\] \(b\.png\): .*got float64"):
        wbc.classify_arrays([cell, cell / 255.0], clf, names=["a.png", "b.png"])
    pil = r"got PngImageFile; a PIL image: np\.asarray\(img\.convert\('RGB'\)\)"
    with pytest.raises(wbc.errors.WbcError, match=pil):
        wbc.classify_arrays([Image.open(write_png(tmp_path / "c.png", cell))], clf)
    with pytest.raises(wbc.errors.WbcError, match=r"^names: 1 given for 2 images"):
        wbc.classify_arrays([cell, cell], clf, names=["a.png"])
    assert [p.path for p in wbc.classify_arrays(cell, clf, names="a.png").predictions] == ["a.png"]
    assert "classify_arrays" in wbc.__all__


def test_analyze_images_results_name_their_file(tmp_path: Path, clf, seg) -> None:
    """Each day's microscope names its fields alike: the results gave the name alone, and with a failed field a
    ``zip(paths, results)`` paired a result with the wrong file. ``path`` is the file; the JSON stays as it was."""
    from wbc.formats import result_to_dict

    field = synthetic_smear(n_wbc=1, seed=1)[0]
    paths = [tmp_path / d / "field_001.png" for d in ("mon", "tue", "wed")]
    for p in paths:
        p.parent.mkdir()
    write_image(paths[0], field)
    paths[1].write_text("not an image")
    write_image(paths[2], field)
    errors: list[tuple[str, str]] = []
    res = wbc.analyze_images(paths, clf, seg, errors=errors)
    assert [r.path for r in res] == [str(paths[0]), str(paths[2])] and [e[0] for e in errors] == [str(paths[1])]
    assert [r.image for r in res] == ["field_001.png"] * 2 and "path" not in result_to_dict(res[0], clf.classes)


def test_readme_python_example_counts_smears_without_a_platelet_row() -> None:
    """``smear.counts(clf.classes)`` printed ``'platelet': 0`` for each field, a count smear analysis never makes; the
    README and the package docstring count over the smear label set, and show ``classify_arrays``."""
    readme = (ROOT / "README.md").read_text()
    example = readme.split("## Python API", 1)[1].split("```", 2)[1]
    for text in (example, wbc.__doc__ or ""):
        assert "smear.counts(clf.classes)" not in text and "smear_label_set(clf)" in text
        assert "wbc.classify_arrays(" in text
    assert "smear.path" in example


# The Python API review of wbc 0.35.0: each test failed before wbc 0.36.0.


class Logged:
    """An integrator's metering wrapper offering only what ``ClassifierLike`` asked for before wbc 0.36.0."""

    def __init__(self, inner: wbc.model.Classifier) -> None:
        self._inner, self.info = inner, inner.info

    @property
    def classes(self) -> list[str]:
        return self._inner.classes

    @property
    def model_id(self) -> str:
        return self._inner.model_id

    def run(self, cells: np.ndarray, want: tuple[str, ...] = ("logits",)) -> dict[str, np.ndarray]:
        return self._inner.run(cells, want)


class Delegating(Logged):
    """The same wrapper delegating every other member to the classifier it wraps."""

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)


def test_a_wrapper_lacking_the_classifier_settings_is_refused_in_one_line(clf, seg, tmp_path: Path) -> None:
    """A wrapper passed ``isinstance(w, ClassifierLike)`` and mypy, and was answered without the field's colour
    calibration, the smear views, the unsure cells' rotations and its label set: other labels, without a word."""
    from wbc.analyze import analyze_image
    from wbc.batch import analyze_paths
    from wbc.classify import predict_cells, prepare_cell
    from wbc.protocols import ClassifierLike
    from wbc.serve.app import create_app

    rgb = read_image(example_fields()[3])
    cell = prepare_cell(synthetic_cell("lymphocyte", size=96, seed=0), clf.info.input_size)[None]
    write_image(tmp_path / "cell.png", synthetic_cell("lymphocyte", size=96, seed=0))
    wrapped = Logged(clf.with_classes("5part"))
    assert not isinstance(wrapped, ClassifierLike)
    for call in (lambda: analyze_image(rgb, wrapped, seg, name="f"), lambda: predict_cells(wrapped, cell, ["c"]),
                 lambda: wbc.classify_images([tmp_path / "cell.png"], wrapped),
                 lambda: wbc.classify_arrays([cell[0]], wrapped),
                 lambda: wbc.analyze_images([example_fields()[3]], wrapped, seg),
                 # these read a member before any check: a bare AttributeError, not this line, until it was mended
                 lambda: create_app(wrapped, seg),
                 lambda: analyze_paths([example_fields()[3]], tmp_path / "out", wrapped, seg, draw=False)):
        with pytest.raises(wbc.errors.WbcError) as info:
            call()
        said = str(info.value)
        assert said.startswith("classifier Logged: lacks label_set, colour_calibration, tta_views, unsure_views, "
                               "red_cell_target") and "delegate them" in said and "\n" not in said
    assert not (tmp_path / "out").exists()


def test_a_wrapper_delegating_the_settings_is_answered_as_its_classifier(clf, seg) -> None:
    from wbc.analyze import analyze_image
    from wbc.protocols import CLASSIFIER_MEMBERS, ClassifierLike

    members = set(ClassifierLike.__annotations__) | {n for n in vars(ClassifierLike) if not n.startswith("_")}
    assert set(CLASSIFIER_MEMBERS) == members
    five = clf.with_classes("5part")
    assert isinstance(Delegating(five), ClassifierLike)
    rgb = read_image(example_fields()[3])
    plain, wrapped = analyze_image(rgb, five, seg, name="f"), analyze_image(rgb, Delegating(five), seg, name="f")
    assert wrapped.calibration == plain.calibration is not None
    assert [(c.prediction.label, c.prediction.confidence) for c in wrapped.cells if c.prediction] == \
           [(c.prediction.label, c.prediction.confidence) for c in plain.cells if c.prediction]


def _within(seconds: float, call: Callable[[], object], unblock: Path) -> object:
    """``call()``'s result, or a failure if it is still running after ``seconds`` (opening ``unblock`` for writing
    then, so that a reader blocked on that FIFO ends and the test run with it)."""
    import threading

    out: list[object] = []
    t = threading.Thread(target=lambda: out.append(call()), daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        with open(unblock, "wb"):
            pass
        t.join(5)
        pytest.fail(f"still waiting on the named pipe {unblock} after {seconds} s")
    return out[0]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_named_pipe_is_refused_as_wbc_classify_refuses_it(tmp_path: Path, clf, seg) -> None:
    """`wbc classify` refused a FIFO ("not a regular file"); the Python API opened it and waited for a writer,
    forever."""
    pipe = tmp_path / "pipe.jpg"
    os.mkfifo(pipe)
    said = f"{pipe}: not a regular file"
    res = _within(20, lambda: wbc.classify_images([pipe], clf), pipe)
    assert res.errors == [(str(pipe), said)]  # type: ignore[attr-defined]
    errors: list[tuple[str, str]] = []
    _within(20, lambda: wbc.analyze_images([pipe], clf, seg, errors=errors), pipe)
    assert errors == [(str(pipe), said)]
    from wbc.io import iter_image_paths

    with pytest.raises(wbc.errors.ImageReadError) as info:
        list(iter_image_paths([pipe]))
    assert str(info.value) == said


def test_a_file_over_the_size_limit_is_refused_before_it_is_read(tmp_path: Path, clf, seg, monkeypatch) -> None:
    """Any file was read whole before its header was checked: a 1 GiB non-image took 1 GiB of memory per decoding
    thread, `/dev/zero` all of it. A file over ``wbc.io.MAX_FILE_BYTES`` is that file's one-line error."""
    import wbc.io

    assert wbc.io.MAX_FILE_BYTES >= wbc.io.MAX_PIXELS * 8  # a 16-bit RGBA image within the pixel limit fits
    monkeypatch.setattr(wbc.io, "MAX_FILE_BYTES", 1 << 20)
    big = tmp_path / "big.tif"
    big.write_bytes(b"II*\x00" + bytes(2 << 20))
    write_image(tmp_path / "cell.png", synthetic_cell("lymphocyte", size=96, seed=0))
    said = f"{big}: file is 2.0 MiB, over the limit of 1 MiB for an image file (wbc.io.MAX_FILE_BYTES)"
    res = wbc.classify_images([big, tmp_path / "cell.png"], clf)
    assert len(res.predictions) == 1 and [e[0] for e in res.errors] == [str(big)]
    assert res.errors[0][1].startswith(said) and "\n" not in res.errors[0][1]
    errors: list[tuple[str, str]] = []
    assert not wbc.analyze_images([big], clf, seg, errors=errors) and errors[0][1].startswith(said)
    monkeypatch.setattr(Path, "open", lambda *a, **k: pytest.fail("read before it was refused"))
    with pytest.raises(wbc.errors.ImageReadError, match="over the limit"):
        wbc.io.read_bytes(big)


def test_read_bytes_takes_no_more_memory_than_the_file(tmp_path: Path, monkeypatch) -> None:
    """``read_bytes`` read every file with ``read(MAX_FILE_BYTES + 1)``, which allocates 2 GiB before reading a
    byte: under an address-space limit (``ulimit -v``, SGE h_vmem, strict overcommit) every image failed with
    MemoryError. It now reads the size stat gave and a byte more, and still refuses a file that grows past the
    limit as it is read."""
    import tracemalloc

    import wbc.io

    cell = tmp_path / "cell.png"
    write_image(cell, synthetic_cell("lymphocyte", size=96, seed=0))
    tracemalloc.start()
    try:
        assert wbc.io.read_bytes(cell) == cell.read_bytes()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * cell.stat().st_size + (1 << 20)
    status = Path("/proc/self/status")  # a file stat calls empty that holds text: read as a file grown since stat
    if status.exists():
        assert status.stat().st_size == 0 and wbc.io.read_bytes(status).startswith(b"Name:")
        monkeypatch.setattr(wbc.io, "MAX_FILE_BYTES", 64)
        with pytest.raises(wbc.errors.ImageReadError, match=r"^/proc/self/status: file is .* over the limit"):
            wbc.io.read_bytes(status)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux's RLIMIT_AS and /proc")
def test_a_cell_is_classified_under_an_address_space_limit(tmp_path: Path) -> None:
    """Under ``ulimit -v`` (or SGE h_vmem) every file was "could not be read (MemoryError)": ``read_bytes`` asked for
    2 GiB per file. With the model loaded, a limit 1 GiB above what the process holds is ample for one cell."""
    import subprocess
    import sys

    cell = tmp_path / "cell.png"
    write_image(cell, synthetic_cell("lymphocyte", size=96, seed=0))
    code = f"""
import re, resource
from pathlib import Path
import wbc
clf = wbc.load_model(threads=1)
held = int(re.search(r"VmSize:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1)) << 10
resource.setrlimit(resource.RLIMIT_AS, (held + (1 << 30), resource.RLIM_INFINITY))
res = wbc.classify_images([{str(cell)!r}], clf)
print(len(res.predictions), res.errors)
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "1 []"


def test_analyze_images_names_a_dir_entry_by_its_path(tmp_path: Path, clf, seg) -> None:
    """``os.scandir``'s entries are path-likes: results and errors named them ``"<DirEntry 'field_001.jpg'>"``, the
    folder lost (``classify_images`` named them by their path)."""
    import shutil

    shutil.copy(example_fields()[0], tmp_path / "field_001.jpg")
    (tmp_path / "field_002.jpg").write_bytes(b"")
    errors: list[tuple[str, str]] = []
    res = wbc.analyze_images(sorted(os.scandir(tmp_path), key=lambda e: e.name), clf, seg, errors=errors)
    assert [r.path for r in res] == [str(tmp_path / "field_001.jpg")]
    assert errors == [(str(tmp_path / "field_002.jpg"), f"{tmp_path / 'field_002.jpg'}: file is empty")]
    one = next(e for e in os.scandir(tmp_path) if e.name == "field_001.jpg")
    assert [r.path for r in wbc.analyze_images(one, clf, seg)] == [str(tmp_path / "field_001.jpg")]


def test_analyze_images_refusal_names_the_path_given(tmp_path: Path, clf, seg) -> None:
    """A grey, mask or too-small field was refused by its name alone (``field_001.png: a grey image``), where `wbc
    analyze` names ``days/tue/field_001.png``: which day's field could not be told."""
    grey = tmp_path / "tue" / "field_001.png"
    grey.parent.mkdir()
    write_image(grey, np.repeat(read_image(example_fields()[0]).mean(2, keepdims=True), 3, 2).astype(np.uint8))
    small = tmp_path / "tue" / "field_002.png"
    write_image(small, np.zeros((20, 20, 3), np.uint8))
    with pytest.raises(wbc.errors.ImageReadError) as info:
        wbc.analyze_images([grey], clf, seg)
    assert str(info.value).startswith(f"{grey}: a grey image")
    errors: list[tuple[str, str]] = []
    wbc.analyze_images([grey, small], clf, seg, errors=errors)
    assert [e[1].split(": ")[0] for e in errors] == [str(grey), str(small)]
    with pytest.raises(wbc.errors.ImageReadError, match=r"^tue/field_001\.png: a grey image"):
        wbc.analyze.analyze_bytes(grey.read_bytes(), grey.name, clf, seg, source="tue/field_001.png")
    assert wbc.analyze.analyze_bytes(example_fields()[0].read_bytes(), "f.jpg", clf, seg, source="day/f.jpg")[1].image \
        == "f.jpg"


@pytest.mark.parametrize("fn", ["classify_images", "classify_arrays", "analyze_images"])
def test_a_model_path_as_model_is_a_one_line_error(fn, tmp_path: Path) -> None:
    """``model=`` given a path, as ``load_model`` takes it, failed deep inside: ``AttributeError: 'str' object has no
    attribute 'classes'``."""
    from wbc.paths import DEFAULT_MODEL

    cell = tmp_path / "cell.png"
    write_image(cell, synthetic_cell("lymphocyte", size=96, seed=0))
    given = [cell] if fn != "classify_arrays" else [synthetic_cell("lymphocyte", size=96, seed=0)]
    for model in (str(DEFAULT_MODEL), DEFAULT_MODEL):
        with pytest.raises(wbc.errors.WbcError) as info:
            getattr(wbc, fn)(given, model)
        assert str(info.value) == (f"model {str(DEFAULT_MODEL)!r}: a path, not a loaded classifier; pass "
                                   f"wbc.load_model({str(DEFAULT_MODEL)!r}), loaded once for every call")


def test_an_empty_label_set_is_refused_not_widened_to_every_class(tmp_path: Path) -> None:
    """``classes=[]`` (a filtered list that came out empty) or ``""`` meant every class, overriding a
    ``with_classes("5part")`` classifier: its platelets came back "platelet", unflagged. None keeps its own set."""
    five = wbc.load_model(threads=1).with_classes("5part")
    cell = tmp_path / "platelet.png"
    write_image(cell, synthetic_cell("platelet", size=96, seed=0))
    for empty in ([], "", " , "):
        with pytest.raises(wbc.errors.WbcError, match=r"^classes: empty; name classes, a set \(5part\) or 'all'"):
            wbc.classify_images([cell], five, classes=empty)
        with pytest.raises(wbc.errors.WbcError, match="classes: empty"):
            five.with_classes(empty)
    assert wbc.classify_images([cell], five, classes=None).predictions[0].label in five.label_set


def test_the_docs_smear_example_counts_as_analyze_does_and_image_is_said_right(tmp_path: Path, clf, seg) -> None:
    """docs/smear_analysis.md's "Python and HTTP use the same function" example counted over ``clf.classes``: a
    ``'platelet': 0`` row neither ``/analyze`` nor `wbc analyze` has. And three places said ``image`` is the name "as
    the JSON gives it", where `wbc analyze`'s JSON gives the path as listed."""
    import shutil

    from wbc.batch import analyze_paths

    page = (ROOT / "docs" / "smear_analysis.md").read_text()
    example = page.split("Python and HTTP use the same function:", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    field = tmp_path / "day" / "field.jpg"
    field.parent.mkdir()
    shutil.copy(example_fields()[0], field)
    scope: dict[str, object] = {}
    exec(example.replace('"field.jpg")', f"{str(field)!r})").replace("get_segmenter(\"auto\")", "seg")
                 .replace("load_model()", "clf"), {"clf": clf, "seg": seg}, scope)
    doc = scope["doc"]
    analyze_paths([field], tmp_path / "out", clf, seg, draw=False)
    cli = json.loads((tmp_path / "out" / "field.json").read_text())
    assert list(doc["counts"]) == list(cli["counts"]) and "platelet" not in doc["counts"]  # type: ignore[index]
    assert cli["image"] == str(field) and wbc.analyze_images(field, clf, seg)[0].image == "field.jpg"
    readme = " ".join((ROOT / "README.md").read_text().split())
    for text in (readme, " ".join((wbc.analyze_images.__doc__ or "").split())):
        assert "as the JSON and the annotated image give it" not in text and "as in the JSON)" not in text
        assert "`wbc analyze`'s `<stem>.json`" in text or "`wbc analyze`'s ``<stem>.json``" in text
