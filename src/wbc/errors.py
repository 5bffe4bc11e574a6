"""Exceptions that carry a message meant for the user (the CLI prints them without a traceback)."""

from __future__ import annotations


class WbcError(Exception):
    """A problem the user can fix: bad file, bad config, missing model. The message names the culprit."""


class ImageReadError(WbcError):
    """An image file that cannot be read or converted to 8-bit RGB."""


class ImageTooLargeError(ImageReadError):
    """An image with more pixels than the caller's limit (refused from its header, before decoding)."""


class ConfigError(WbcError):
    """A bad configuration file or option."""


class ModelError(WbcError):
    """A missing or malformed model file."""


def checked_whole(value: object, what: str, low: int, high: int | None = None, meaning: str = "",
                  error: type[WbcError] = WbcError) -> int:
    """``value`` as an int if it is a whole number from ``low`` to ``high``, else a one-line ``error`` naming ``what``
    (the keyword, which is also the command line's flag): a wrong argument from Python (``"2"``, 2.7, 0) failed with
    a TypeError or ValueError deep inside, or was silently truncated by ``int()``.

    >>> checked_whole(2.0, "threads", 1)
    2
    >>> checked_whole(2.7, "tta", 1, 8, "the flips/rotations to average")
    Traceback (most recent call last):
    wbc.errors.WbcError: tta 2.7: must be a whole number between 1 and 8 (the flips/rotations to average)
    """
    import numbers

    if ((isinstance(value, numbers.Integral) and not isinstance(value, bool))  # numpy's integers too
            or (isinstance(value, float) and value.is_integer())):
        n = int(value)
        if low <= n and (high is None or n <= high):
            return n
    span = f"between {low} and {high}" if high is not None else f"at least {low}"
    raise error(f"{what} {value!r}: must be a whole number {span}" + (f" ({meaning})" if meaning else ""))
