"""How every benchmark script ends: :func:`run` calls its ``main`` and turns bad input into one line.

A benchmark is run by people who reproduce a number from the docs; a data root that is not there or a manifest that
names a missing file should say so in one line (as every ``wbc`` command does), not in a traceback.

The rule: an exception is bad input, one ``error:`` line and exit status 1, when its type says so whatever the
message, and only then:

* :class:`wbc.errors.WbcError`: raised for the user (the message names the file and the problem);
* :class:`OSError`: a file or folder that is not there or cannot be read or written (``error: <file>: <reason>``),
  e.g. a data root without the file a script opens directly;
* :class:`subprocess.CalledProcessError`: a ``wbc`` command the script ran failed; it printed its own ``error:``
  line above, and the script's names the command.

Every other exception (``ValueError``, ``TypeError``, ``ZeroDivisionError``, ...) keeps its traceback: from input
it is a check the script lacks (add one that raises ``WbcError``), otherwise a bug, and a bug is not hidden behind a
line that reads like the user's mistake.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Callable


def error_line(exc: BaseException) -> str | None:
    """The one ``error:`` line for ``exc`` when it is bad input by the module's rule, else None (a traceback).

    >>> error_line(FileNotFoundError(2, "No such file or directory", "/data/bccd/single_wbc_labels.csv"))
    'error: /data/bccd/single_wbc_labels.csv: No such file or directory'
    >>> error_line(subprocess.CalledProcessError(1, ["python", "-m", "wbc", "train", "--config", "a b.toml"]))
    "error: python -m wbc train --config 'a b.toml' failed (exit status 1)"
    >>> error_line(ValueError("need at least one array to concatenate")) is None
    True
    >>> error_line(TimeoutError())
    'error: TimeoutError'
    """
    from wbc.errors import WbcError

    if isinstance(exc, WbcError):
        return f"error: {exc}"
    if isinstance(exc, subprocess.CalledProcessError):
        cmd = exc.cmd if isinstance(exc.cmd, str) else shlex.join(str(c) for c in exc.cmd)
        return f"error: {cmd} failed (exit status {exc.returncode})"
    if isinstance(exc, OSError) and not isinstance(exc, BrokenPipeError):  # a closed pipe: not bad input
        where = ": ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
        what = exc.strerror or str(exc) or type(exc).__name__  # TimeoutError() has no message
        return f"error: {where}: {what}" if where else f"error: {what}"
    return None


def run(main: Callable[[], int | None]) -> None:
    """Exit with ``main()``'s status; bad input (the module's rule) exits 1 with one ``error: <message>`` line.

    >>> def fails() -> int:
    ...     from wbc.errors import WbcError
    ...     raise WbcError("/data/pbc: not found")
    >>> try:
    ...     run(fails)
    ... except SystemExit as e:
    ...     print(e.code)
    error: /data/pbc: not found
    """
    try:
        status = main()
    except Exception as e:
        line = error_line(e)
        if line is None:
            raise
        raise SystemExit(line) from None
    raise SystemExit(status)
