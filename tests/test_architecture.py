"""The architecture contracts in pyproject.toml ([tool.importlinter], docs/architecture.md) cover what they say."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PACKAGE = ROOT / "src" / "wbc"


def _contracts() -> list[dict[str, object]]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def _module_name(path: Path) -> str:
    """``src/wbc/a/b.py`` -> ``wbc.a.b``; a package's ``__init__.py`` is the package."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_every_wbc_module_but_the_command_layer_is_kept_from_the_command_line_libraries(tmp_path: Path) -> None:
    """docs/architecture.md: "only wbc.cli imports typer, click or argparse", checked by lint-imports. Before wbc
    0.32.0 the contract listed its modules by hand and missed five: an ``import argparse`` in any of them passed. Here
    every module outside wbc.cli gets one, in a copy of the package, and lint-imports must name each of them."""
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if lint is None:
        pytest.skip("lint-imports not installed (the dev extra)")
    copy = tmp_path / "src" / "wbc"
    shutil.copytree(PACKAGE, copy, ignore=lambda _d, names: [n for n in names if n.endswith((".onnx", ".json"))])
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    probed = set()
    for path in sorted(copy.rglob("*.py")):
        name = _module_name(PACKAGE / path.relative_to(copy))
        in_package = all((d / "__init__.py").is_file() for d in path.parents if d.is_relative_to(copy))
        if not in_package or name == "wbc.cli" or name.startswith("wbc.cli."):  # migrations: loaded by path
            continue
        path.write_text(path.read_text() + "\nimport argparse  # probe\n")
        probed.add(name)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "src")}
    out = subprocess.run([lint, "--no-cache"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    caught = set(re.findall(r"^-\s+(wbc[\w.]*) -> argparse", out.stdout, flags=re.M))
    assert "Only the command layer uses command-line libraries BROKEN" in out.stdout, out.stdout
    assert not probed - caught, f"an argparse import the contract does not see: {sorted(probed - caught)}"


def test_every_wbc_module_is_in_a_layer() -> None:
    """A module outside every layer of the layers contract could import upwards unchecked: each top-level module and
    subpackage of wbc is on one layer (the package's own __init__ and __main__ aside)."""
    layers = next(c for c in _contracts() if c["type"] == "layers")["layers"]
    assert isinstance(layers, list)
    in_layers = {m.strip() for layer in layers for m in layer.split("|")}
    top = {f"wbc.{p.stem}" for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__")}
    top |= {f"wbc.{p.parent.name}" for p in PACKAGE.glob("*/__init__.py")}
    assert not top - in_layers, f"modules on no layer: {sorted(top - in_layers)}"
