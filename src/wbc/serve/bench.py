"""Latency of a live ``wbc serve`` (``wbc serve-bench``): starts the server on a free loopback port in a
subprocess, then measures ``/analyze?annotated=true`` on smear fields, ``/classify`` on a batch of cells, and
``/health`` while four clients keep ``/analyze`` busy (is the server still responsive?). Needs httpx (the
``test`` extra). The server has a case store of its own, in a temporary folder, and no API keys, whatever the
environment says: the bench is its only client.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from wbc.errors import WbcError
from wbc.paths import python_m_wbc
from wbc.runtime import die_with_parent, raise_exit

#: The environment's API keys (wbc.serve.settings), which the server serve-bench starts must not inherit.
KEY_VARIABLES: tuple[str, ...] = ("WBC_API_KEYS", "WBC_API_KEY_FILE")


def _require_httpx() -> None:
    """A one-line error naming the extra that installs httpx when it is missing: it is in the ``test`` extra only,
    and before wbc 0.34.0 ``wbc serve-bench`` on the base install ended in a 39-line traceback."""
    try:
        import httpx  # noqa: F401
    except ImportError as exc:
        raise WbcError(f"wbc serve-bench needs httpx, the test extra: pip install -e '.[test]' ({exc})") from None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_server(args: Sequence[str] = (), env: dict[str, str] | None = None,
                   timeout: float = 60.0) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``wbc serve ARGS`` in a subprocess on a free port; yields (base URL, process) once /health answers.

    Without ``--store`` in ``args`` the server's case store is a temporary one, removed afterwards: ``wbc serve``'s
    default, ``results/cases.sqlite`` in the working directory, may be a lab's real store. ``env``: the server's
    environment (default: this one's). Its stderr goes to a log in that temporary folder, quoted when it exits at
    start. The server is stopped on leaving, also when this process is ended by SIGTERM or SIGHUP (from the main
    thread) and, on Linux, when it dies by any signal.
    """
    _require_httpx()
    import httpx

    port = free_port()
    with _exit_on_termination(), tempfile.TemporaryDirectory(prefix="wbc_serve_bench_") as tmp:
        store = [] if "--store" in args else ["--store", str(Path(tmp) / "cases.sqlite")]
        cmd = [*python_m_wbc(), "serve", "--port", str(port), *store, *args]
        log = Path(tmp) / "serve.log"
        with log.open("wb") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, preexec_fn=die_with_parent())
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    httpx.get(base + "/health", timeout=5)
                    break
                except httpx.TransportError:
                    if (status := proc.poll()) is not None:
                        raise WbcError(f"wbc serve exited at start: {_said(log, status)}") from None
                    if time.monotonic() > deadline:
                        raise WbcError(f"wbc serve did not answer within {timeout:.0f} s") from None
                    time.sleep(0.1)
            yield base, proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _said(log: Path, status: int | None) -> str:
    """Why a server that exited at start did: its last ``error:`` line (``wbc serve``'s one-line refusal, naming the
    file and the problem), else the last line it wrote (a traceback's exception). Before wbc 0.36.0 its stderr was
    thrown away and serve-bench said only "run it by hand to see why"."""
    try:
        text = re.sub(r"\x1b\[[0-9;]*m", "", log.read_text(encoding="utf-8", errors="replace"))  # colours, if forced
    except OSError:
        text = ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln.removeprefix("error:").strip() for ln in lines if ln.startswith("error:")]
    return errors[-1] if errors else lines[-1] if lines else f"exit status {status}, nothing said; run it by hand"


@contextmanager
def _exit_on_termination() -> Iterator[None]:
    """While a server runs: SIGTERM (a scheduler, ``kill``, a parent's timeout) and SIGHUP (the terminal closed) end
    this process through its clean-ups, as Ctrl-C does, instead of at once. Before wbc 0.36.0 they left ``wbc serve``
    running for ever, holding its port, its models and a temporary case store. Only from the main thread (Python
    runs handlers there alone), and only where the signal's action is the default: a caller's own handler, or a
    ``nohup``'s ignored SIGHUP, is left as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    kept = {}
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None and signal.getsignal(sig) is signal.SIG_DFL:
            kept[sig] = signal.signal(sig, raise_exit)
    try:
        yield
    finally:
        for sig, handler in kept.items():
            signal.signal(sig, handler)


def measure_latency(fields: Sequence[Path], cells: Sequence[Path], server_args: Sequence[str] = (),
                    busy_clients: int = 4) -> dict[str, Any]:
    """Latencies (ms) of /analyze, /classify and /health-under-load on a fresh server; see the module doc.

    The server gets this environment without its API keys (:data:`KEY_VARIABLES`; the bench sends none), and a
    temporary case store (:func:`running_server`). An error answer becomes a :class:`WbcError` naming it.
    """
    _require_httpx()
    import httpx

    if not fields or not cells:
        raise WbcError("serve-bench needs smear fields and cell images")
    env = {k: v for k, v in os.environ.items() if k not in KEY_VARIABLES}
    with running_server(server_args, env=env) as (base, _proc):
        try:
            return _measure(base, fields, cells, busy_clients)
        except httpx.HTTPStatusError as exc:
            raise WbcError(f"serve-bench: wbc serve answered {exc.response.status_code} to {exc.request.method} "
                           f"{exc.request.url.path}: {exc.response.text[:200]}") from None
        except httpx.HTTPError as exc:
            raise WbcError(f"serve-bench: no answer from wbc serve ({exc.__class__.__name__}: {exc})") from None


def _measure(base: str, fields: Sequence[Path], cells: Sequence[Path], busy_clients: int) -> dict[str, Any]:
    """The measurements of :func:`measure_latency` against the server at ``base``."""
    import httpx

    out: dict[str, Any] = {}
    with httpx.Client(timeout=300) as c:
        meta = c.get(base + "/health").json()
        out["model_id"], out["segmenter"] = meta["model_id"], meta["segmenter"]["name"]
        t = []
        for p in fields:
            t0 = time.perf_counter()
            c.post(base + "/analyze?annotated=true",
                   files={"file": (p.name, p.read_bytes(), "image/jpeg")}).raise_for_status()
            t.append(time.perf_counter() - t0)
        out["analyze_ms"] = {"n": len(t), "median": 1000 * statistics.median(t), "max": 1000 * max(t)}
        files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in cells]
        t0 = time.perf_counter()
        c.post(base + "/classify", files=files).raise_for_status()
        dt = time.perf_counter() - t0
        out["classify"] = {"n": len(files), "seconds": dt, "ms_per_cell": 1000 * dt / len(files)}
    stop = threading.Event()
    data = fields[0].read_bytes()

    def load() -> None:
        with httpx.Client(timeout=300) as c:
            while not stop.is_set():
                c.post(base + "/analyze?annotated=true", files={"file": ("f.jpg", data, "image/jpeg")})

    workers = [threading.Thread(target=load) for _ in range(busy_clients)]
    for w in workers:
        w.start()
    time.sleep(1.0)
    lat = []
    try:
        with httpx.Client(timeout=60) as c:
            for _ in range(20):
                t0 = time.perf_counter()
                c.get(base + "/health").raise_for_status()
                lat.append(time.perf_counter() - t0)
                time.sleep(0.1)
    finally:
        stop.set()
        for w in workers:
            w.join()
    out["health_under_load_ms"] = {"clients": busy_clients, "median": 1000 * statistics.median(lat),
                                   "max": 1000 * max(lat)}
    return out
