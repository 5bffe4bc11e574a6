"""The example smear fields shipped inside the package, so the quick start needs nothing but the clone.

Six BCCD test-split fields (MIT licence, ``LICENSE-BCCD`` beside them) live in ``wbc/example_fields/``;
:func:`copy_examples` puts them where ``wbc analyze`` looks by default (``data/raw_images/``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from wbc.errors import WbcError
from wbc.io import atomic_write_bytes
from wbc.paths import PACKAGE_DIR

EXAMPLES_DIR: Path = PACKAGE_DIR / "example_fields"
LICENCE_NAME: str = "LICENSE-BCCD"


def example_fields() -> list[Path]:
    """The shipped example fields, sorted by name."""
    return sorted(EXAMPLES_DIR.glob("*.jpg"))


def copy_examples(output: str | os.PathLike[str], n: int | None = None,
                  kept: dict[Path, str] | None = None) -> list[Path]:
    """Copy the first ``n`` (default: all) example fields and their licence into ``output``.

    Each file is written whole or not at all (:func:`wbc.io.atomic_write_bytes`). A file already there is kept when
    it holds the shipped bytes, copied again when it holds their beginning only (a copy cut short by a full disk
    before wbc 0.36.0, which wrote in place: every later run kept the truncated field), and otherwise kept as a
    user's own file, never overwritten; one that cannot be read to compare (another user's in a shared folder) is
    kept unread, as before wbc 0.36.0 (in its first cut, the copy stopped there). Returns the paths in ``output`` of
    the fields that hold the shipped ones (so not a user's own file of that name); ``kept``, where given, gets each
    field kept otherwise and why. Raises :class:`WbcError` when the package has no examples or ``output`` cannot be
    written.
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
            dst, shipped = out / src.name, src.read_bytes()
            state, why = _state(dst, shipped)
            if state == "missing":
                atomic_write_bytes(dst, shipped)
            if src.suffix == ".jpg" and state != "own":
                copied.append(dst)
            elif src.suffix == ".jpg" and kept is not None:
                kept[dst] = why
    except OSError as exc:
        raise WbcError(f"{out}: cannot write the examples there ({exc.strerror or exc})") from None
    return copied


def _state(dst: Path, shipped: bytes) -> tuple[Literal["same", "missing", "own"], str]:
    """``"same"``: ``dst`` holds the ``shipped`` bytes; ``"missing"``: it is not there, or holds their beginning only
    (empty included: a copy cut short); ``"own"``: anything else there (another file, a folder, a broken link, a
    file that cannot be read), with why it is kept."""
    own = "your own file (not the shipped example field)"
    if not (dst.exists() or dst.is_symlink()):
        return "missing", ""
    if not dst.is_file():
        return "own", own
    try:
        there = dst.read_bytes()
    except OSError as exc:  # not compared: kept, never overwritten
        return "own", f"cannot be read to compare with the shipped field ({exc.strerror or exc})"
    if there == shipped:
        return "same", ""
    return ("missing", "") if len(there) < len(shipped) and shipped.startswith(there) else ("own", own)
