"""``wbc serve``: run the HTTP API and web page with uvicorn; the app is :func:`wbc.serve.app.create_app`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from wbc.cli._app import app, console
from wbc.cli._common import ClassesOpt, ModelOpt, SegmenterModelOpt, SegmenterOpt, warn
from wbc.cli.cases import StoreOpt, store_url
from wbc.errors import WbcError


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on. Anything but 127.0.0.1, ::1 or localhost "
                                      "(e.g. 0.0.0.0: every interface) needs API keys.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    model: ModelOpt = None,
    segmenter: SegmenterOpt = "auto",
    segmenter_model: SegmenterModelOpt = None,
    max_upload_mb: Annotated[float, typer.Option(min=0.01, help="Largest request body (all files) in MiB.")
                             ] = 25.0,
    threads: Annotated[int, typer.Option(min=1, help="CPU threads per inference call.")] = 1,
    workers: Annotated[int | None, typer.Option(
        min=1, help="Inference calls allowed to run at once (default: one per THREADS cores, at most 8).")
    ] = None,
    max_queue: Annotated[int, typer.Option(
        min=0, help="Requests allowed to wait for an inference call; one more is answered 503 busy.")] = 32,
    api_key_file: Annotated[Path | None, typer.Option(
        "--api-key-file", help="File of API keys, one per line (adds to $WBC_API_KEYS, comma-separated). "
        "With keys, every route but /health needs X-API-Key or Authorization: Bearer.")] = None,
    allowed_host: Annotated[list[str] | None, typer.Option(
        "--allowed-host", help="A host name or address clients use to reach the server (Host header), "
        "repeatable; loopback names, the --host address and this machine's name are always allowed.")] = None,
    allowed_origin: Annotated[list[str] | None, typer.Option(
        "--allowed-origin", help="Another site's origin (https://lims.example.org) whose pages may post "
        "here, repeatable.")] = None,
    rate_limit: Annotated[int | None, typer.Option(
        "--rate-limit", min=0, help="Requests per minute per API key (0: none; default 1200).")] = None,
    classes: ClassesOpt = None,
    store: StoreOpt = None,
) -> None:
    """Serve the HTTP API (/classify, /analyze, /health, /model) and the web page at http://HOST:PORT/."""
    try:
        import uvicorn
    except ImportError as exc:  # pragma: no cover - uvicorn is a core dependency
        raise WbcError(f"wbc serve needs uvicorn: pip install uvicorn ({exc})") from None
    from wbc.serve.app import create_app
    from wbc.serve.security import check_binding
    from wbc.serve.settings import load_settings, served_hosts

    base = load_settings(api_key_file=api_key_file, rate_limit_per_minute=rate_limit)
    settings = base.model_copy(update={
        "allowed_hosts": served_hosts(base.allowed_hosts, host, allowed_host or []),
        "allowed_origins": [*base.allowed_origins, *(allowed_origin or [])]})
    check_binding(host, bool(settings.all_keys()))  # before the models load: fail fast
    check_port(host, port)
    web = create_app(model_path=model, segmenter_method=segmenter, segmenter_path=segmenter_model,
                     max_upload_mb=max_upload_mb, threads=threads, max_concurrent=workers, max_queue=max_queue,
                     settings=settings,
                     store=None,  # the case store is opened below, once the models loaded (a bad model makes none)
                     classes=classes)  # the server's default label set; a request's `classes` field overrides it
    # the case store behind /review (wbc.cases): the routes read app.state.case_store (None: they answer 503)
    web.state.case_store = cases = open_cases(store)
    meta = web.state.metadata
    shown = f"[{host}]" if ":" in host else host
    console.print(f"wbc serve: model {meta['model_id']}, segmenter {meta['segmenter']['name']}, "
                  f"uploads up to {max_upload_mb:g} MiB", highlight=False)
    console.print(f"  web page  http://{shown}:{port}/\n  API       http://{shown}:{port}/openapi.json",
                  highlight=False)
    from rich.markup import escape

    console.print(f"  cases     {escape(cases.display_url)} (review and sign-off at /review)" if cases else
                  "  cases     none (/review and /cases answer 503; pass --store)", highlight=False)
    n_keys = len(settings.all_keys())
    console.print(f"  security  {n_keys} API key(s)" if n_keys else
                  "  security  no API keys: open to every program on this machine (set WBC_API_KEYS)",
                  highlight=False)
    if n_keys and host.strip("[]") not in {"127.0.0.1", "::1", "localhost"}:
        console.print("[yellow]note:[/] keys travel in clear text over plain HTTP; beyond a trusted network put "
                      "the server behind a reverse proxy with TLS.", highlight=False)
    try:
        uvicorn.run(web, host=host, port=port, log_level="info", access_log=True)
    except OSError as exc:  # port in use, address not available
        raise WbcError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    except SystemExit as exc:  # uvicorn's own exit when it could not start (taken while the models loaded): logged
        if exc.code == 3:  # uvicorn's STARTUP_FAILURE
            raise WbcError(f"cannot listen on {host}:{port} (uvicorn's message above)") from None
        raise


def check_port(host: str, port: int) -> None:
    """Raise a one-line :class:`WbcError` when ``host:port`` cannot be listened on (in use, no such address), by
    binding it as uvicorn will, before the models load: uvicorn logs the error itself and exits with code 3, which
    the ``except OSError`` around it never saw (before wbc 0.33.0)."""
    import socket

    try:
        addresses = socket.getaddrinfo(host.strip("[]") or None, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
        for family, kind, proto, _name, address in addresses:
            with socket.socket(family, kind, proto) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's server does
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
    except OSError as exc:
        raise WbcError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def open_cases(store: str | None) -> Any:
    """The case store behind /review. The default one (``results/cases.sqlite`` of the working folder) that cannot be
    made or opened there (a read-only checkout, where a user wants only /classify) is said in one line and the server
    runs without cases; it was a traceback before wbc 0.31.0. A ``--store`` named that fails is an error."""
    from wbc.cases.store import CaseError, CaseStore

    try:
        return CaseStore(store_url(store))
    except CaseError as exc:
        if store is not None:
            raise
        warn(f"{exc}; serving without cases (/review and /cases answer 503): pass --store to keep them elsewhere")
        return None
