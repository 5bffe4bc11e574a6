"""The example smear fields shipped inside the package, so the quick start needs nothing but the clone.

Six BCCD test-split fields (MIT licence, ``LICENSE-BCCD`` beside them) live in ``wbc/example_fields/``;
:func:`copy_examples` puts them where ``wbc analyze`` looks by default (``data/raw_images/``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from wbc.errors import WbcError
from wbc.paths import PACKAGE_DIR

EXAMPLES_DIR: Path = PACKAGE_DIR / "example_fields"
LICENCE_NAME: str = "LICENSE-BCCD"


def example_fields() -> list[Path]:
    """The shipped example fields, sorted by name."""
    return sorted(EXAMPLES_DIR.glob("*.jpg"))


def copy_examples(output: str | os.PathLike[str], n: int | None = None) -> list[Path]:
    """Copy the first ``n`` (default: all) example fields and their licence into ``output``.

    Files already there are kept (a user's edits are never overwritten). Returns the fields' paths in
    ``output``. Raises :class:`WbcError` when the package has no examples or ``output`` cannot be written.
    """
    fields = example_fields()
    if not fields:
        raise WbcError(f"{EXAMPLES_DIR}: no example fields in this installation of wbc")
    if n is not None and n < 1:
        raise WbcError(f"n must be at least 1, got {n}")
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise WbcError(f"{out}: exists and is not a folder")
    copied = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        for src in [*fields[:n], EXAMPLES_DIR / LICENCE_NAME]:
            dst = out / src.name
            if not dst.exists():
                shutil.copyfile(src, dst)
            if src.suffix == ".jpg":
                copied.append(dst)
    except OSError as exc:
        raise WbcError(f"{out}: cannot write the examples there ({exc.strerror or exc})") from None
    return copied
