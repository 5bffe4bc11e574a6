"""HTTP API and web page for wbc (``wbc serve``).

:func:`create_app` (in :mod:`wbc.serve.app`) builds the FastAPI application; ``wbc serve``
(:mod:`wbc.cli.serve`) runs it with uvicorn. Importing this package stays light:
FastAPI is only imported when the app is built.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def create_app(*args: Any, **kwargs: Any) -> Any:
    """Build the FastAPI app; see :func:`wbc.serve.app.create_app`."""
    from wbc.serve.app import create_app as _create

    return _create(*args, **kwargs)
