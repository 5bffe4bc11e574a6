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


def test_analyze_images_names_an_unreadable_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(wbc.errors.WbcError, match=r"broken\.png"):
        wbc.analyze_images([bad], wbc.load_model(threads=1), wbc.load_segmenter("classical", threads=1))
