"""The public Python API: every function in ``wbc.__all__`` works after every submodule has been imported.

The bug this guards against: a public function named like a submodule (``wbc.classify``) is replaced by the
module the first time anything imports ``wbc.classify``; the next call raised "'module' object is not
callable".
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import pytest

import wbc
import wbc.errors
from wbc.io import write_image
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
