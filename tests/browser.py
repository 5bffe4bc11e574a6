"""Shared parts of the real-browser tests: the system chromium (launched by path through the ``chromium``
fixture in conftest.py), the marks that skip a module with a reason when it is missing, a live uvicorn server
on loopback, and a page watched for script errors and for requests that leave the server."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path(os.environ.get("WBC_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]

#: A browser test module's ``pytestmark``: skipped with a reason when chromium or Playwright is missing.
BROWSER_MARKS = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.is_file() and not shutil.which(str(CHROMIUM)),
                       reason=f"{CHROMIUM} not found (apt-get install chromium)"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None,
                       reason="playwright (Python package) not installed"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def live_server(app: Any) -> Iterator[str]:
    """Serve the ASGI ``app`` with uvicorn on a free loopback port in a thread; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def watch(page: Any, only: str | None = None) -> list[str]:
    """The page's uncaught script errors, as they happen; with ``only`` (a base URL), any request elsewhere
    is aborted, so a page that needs the network (it must work offline) fails its test."""
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    if only is not None:
        page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(only) else route.abort())
    return errors
