"""Where things live: the data root, the shipped default model, the default input folder."""

from __future__ import annotations

import os
import sys
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


def checkpoint_file(path: str | os.PathLike[str]) -> Path:
    """The checkpoint a run folder stands for (its ``ensemble.pt``, else its ``best.pt``; the folder itself when it
    holds neither), or ``path`` itself: what :func:`wbc.train.export.load_checkpoint` reads. Here, without torch, so
    `wbc export-weights` compares its output with it before torch is loaded."""
    p = Path(path)
    if p.is_dir():
        return next((p / n for n in ("ensemble.pt", "best.pt") if (p / n).is_file()), p)
    return p


def python_m_wbc() -> list[str]:
    """The argv that runs this wbc as ``python -m wbc`` in a child (the allocator re-exec, serve-bench's server).

    ``-P`` (Python 3.11+): ``python -m`` otherwise puts the working directory first on ``sys.path``, so a ``wbc.py``
    or ``wbc/`` in the folder where the command was typed (a data folder on a lab's shared drive) ran instead of wbc
    (before wbc 0.34.0). It is left out only when this wbc itself was imported from the working directory
    (``python -m wbc`` typed in a checkout's ``src/``), so that the child runs the same wbc as the parent.
    """
    from_cwd = PACKAGE_DIR.parent == Path.cwd().resolve()
    return [sys.executable, *([] if from_cwd else ["-P"]), "-m", "wbc"]
