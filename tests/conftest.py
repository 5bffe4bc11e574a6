"""Shared fixtures: the real data root (tests needing it skip with a reason) and synthetic data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from wbc.paths import data_root

os.environ.setdefault(
    "GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=4294967295:glibc.malloc.trim_threshold=4294967295"
)


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


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


needs_torch = pytest.mark.skipif(not torch_available(), reason="needs the train extra (torch)")
