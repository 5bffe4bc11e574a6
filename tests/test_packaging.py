"""What the package ships and says about itself: install hints, licences, build requirements, version."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_install_hints_never_name_a_pypi_wbc() -> None:
    """wbc is installed from its checkout (``pip install -e '.[extra]'``) and is not on PyPI: before wbc 0.34.0 two
    messages and docs/scale_out.md said ``pip install 'wbc[...]'``, which fails today and would install a stranger's
    package (on every Ray worker) if anyone registered the name."""
    said = []
    for p in [*ROOT.joinpath("src/wbc").rglob("*.py"), ROOT / "README.md", *ROOT.joinpath("docs").glob("*.md")]:
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"pip install [\"']?wbc\b", line):
                said.append(f"{p.relative_to(ROOT)}:{i}")
    assert not said, said


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_licence_text_is_in_the_repository_and_declared_as_a_licence_file() -> None:
    """Apache-2.0 asks that recipients get its text: before wbc 0.34.0 neither the repository, the sdist nor the
    wheel had it (only ``License-Expression: Apache-2.0``). ``license-files`` puts it in both."""
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
    files = _pyproject()["project"]["license-files"]
    assert "LICENSE" in files and all((ROOT / f).is_file() for f in files), files


def test_the_shipped_models_credit_their_training_data_inside_the_package() -> None:
    """The wheel ships models trained on PBC (CC BY 4.0, which asks for credit and the licence): before wbc 0.34.0
    its citation was only in docs/model_card.md, which is not packaged. models/default/README.md is package data,
    and names every file of that folder, so that a new model cannot ship without its credit."""
    folder = ROOT / "src/wbc/models/default"
    readme = (folder / "README.md").read_text(encoding="utf-8")
    assert "models/default/README.md" in _pyproject()["tool"]["setuptools"]["package-data"]["wbc"]
    for words in ("PBC", "CC BY 4.0", "Acevedo A, Merino A", "doi:10.1016/j.dib.2020.105474", "BCCD", "TXL-PBC"):
        assert words in readme, words
    unnamed = [p.name for p in folder.iterdir() if p.name != "README.md" and f"`{p.name}`" not in readme]
    assert not unnamed, unnamed


def test_build_requirement_admits_the_licence_string() -> None:
    """A PEP 639 licence string (``license = "Apache-2.0"``) and ``license-files`` need setuptools 77 or newer:
    ``setuptools>=68`` let a build without isolation (a distro's or an HPC site's setuptools 68-76) stop with
    "configuration error: `project.license` must be valid exactly by one definition"."""
    from packaging.requirements import Requirement

    project = _pyproject()
    if not isinstance(project["project"].get("license"), str) and "license-files" not in project["project"]:
        return
    req = next(Requirement(r) for r in project["build-system"]["requires"] if Requirement(r).name == "setuptools")
    assert not req.specifier.contains("76.9.9") and req.specifier.contains("84.2.1"), req


def test_the_package_version_has_one_place() -> None:
    """pyproject.toml and src/wbc/__init__.py each wrote the version out, and nothing tied them together; now the
    build reads ``wbc.__version__`` (``dynamic = ["version"]``), as setuptools resolves it here."""
    from setuptools.config.pyprojecttoml import read_configuration

    import wbc

    project = _pyproject()
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "wbc.__version__"}
    assert read_configuration(ROOT / "pyproject.toml", expand=True)["project"]["version"] == wbc.__version__
