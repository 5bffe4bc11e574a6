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
