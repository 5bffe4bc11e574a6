"""Shared fixtures: the real data root (tests needing it skip with a reason) and synthetic data."""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from wbc.paths import data_root

os.environ.setdefault(
    "GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=4294967295:glibc.malloc.trim_threshold=4294967295"
)
#: Starlette's TestClient sends ``Host: testserver``, which ``wbc serve`` does not answer (wbc.serve.settings.
#: LOOPBACK_HOSTS); the apps the tests build answer it as well, unless a test sets its own allowed_hosts. Only it: the
#: loopback names are the settings' own (listing them here hid that the variable replaced them, before wbc 0.33.0).
os.environ.setdefault("WBC_ALLOWED_HOSTS", "testserver")


@pytest.fixture(scope="session")
def real_data() -> Path:
    root = data_root()
    if not (root / "pbc").is_dir():
        pytest.skip(f"real data not found at {root} (set WBC_DATA_DIR); CI always has it")
    return root


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from wbc.synthetic import make_dataset

    return make_dataset(tmp_path_factory.mktemp("synth") / "cells", n_per_class=16, size=72)


def importable(*modules: str) -> bool:
    """Whether every one of ``modules`` imports: is the optional extra a test needs installed?"""
    try:
        for name in modules:
            importlib.import_module(name)
    except ImportError:
        return False
    return True


def torch_available() -> bool:
    return importable("torch")


needs_torch = pytest.mark.skipif(not torch_available(), reason="needs the train extra (torch)")


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """The system chromium, headless, driven by Playwright (which never downloads a browser here); one a test
    module, closed after it. Skips with a reason when Playwright is missing; see tests/browser.py."""
    os.environ["PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD"] = "1"
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (Python package) not installed")
    from browser import CHROMIUM, CHROMIUM_ARGS

    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()
