"""How every benchmark script ends: :func:`run` calls its ``main`` and turns bad input into one line.

A benchmark is run by people who reproduce a number from the docs; a data root that is not there or a manifest that
names a missing file should say so in one line (as every ``wbc`` command does), not in a traceback.
"""

from __future__ import annotations

from collections.abc import Callable


def run(main: Callable[[], int | None]) -> None:
    """Exit with ``main()``'s status; a :class:`wbc.errors.WbcError` (bad input) exits 1 with ``error: <message>``.

    >>> def fails() -> int:
    ...     from wbc.errors import WbcError
    ...     raise WbcError("/data/pbc: not found")
    >>> try:
    ...     run(fails)
    ... except SystemExit as e:
    ...     print(e.code)
    error: /data/pbc: not found
    """
    from wbc.errors import WbcError

    try:
        status = main()
    except WbcError as e:
        raise SystemExit(f"error: {e}") from None
    raise SystemExit(status)
