"""Where things live: the data root, the shipped default model, the default input folder."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_MODEL = PACKAGE_DIR / "models" / "default" / "wbc_classifier.onnx"
DEFAULT_SEGMENTER = PACKAGE_DIR / "models" / "default" / "wbc_segmenter.onnx"
DEFAULT_DETECTOR = PACKAGE_DIR / "models" / "default" / "wbc_detector.onnx"
DEFAULT_INPUT_DIR = Path("data") / "raw_images"
DATA_ENV = "WBC_DATA_DIR"


def data_root(override: str | os.PathLike[str] | None = None) -> Path:
    """The data root: ``override`` (a ``--data-root`` option), else ``$WBC_DATA_DIR``, else ``../shared/data``.

    ``../shared/data`` is looked up from the working directory first, then from the repository that
    holds this package, so that commands work from the repo root and from its subfolders.
    """
    if override:
        return Path(override).expanduser()
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    candidates = [Path.cwd() / ".." / "shared" / "data"]
    candidates += [p / ".." / "shared" / "data" for p in PACKAGE_DIR.parents[:3]]
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    return candidates[0]
