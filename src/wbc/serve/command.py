"""``wbc serve``: run the HTTP API and web page with uvicorn (registered in :mod:`wbc.cli`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wbc.errors import WbcError

LOOPBACK: frozenset[str] = frozenset({"127.0.0.1", "localhost", "::1"})


def serve_command(
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface; no "
                                      "authentication, so only on a trusted network).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    model: Annotated[Path | None, typer.Option("--model", "-m", help="Classifier ONNX (default: shipped).")
                     ] = None,
    segmenter: Annotated[str, typer.Option(help="auto | classical | learned")] = "auto",
    segmenter_model: Annotated[Path | None, typer.Option(help="Learned segmenter ONNX.")] = None,
    max_upload_mb: Annotated[float, typer.Option(min=0.01, help="Largest request body (all files) in MiB.")
                             ] = 25.0,
    threads: Annotated[int, typer.Option(min=1, help="CPU threads per inference call.")] = 2,
    workers: Annotated[int, typer.Option(min=1, help="Inference calls allowed to run at once.")] = 1,
) -> None:
    """Serve the HTTP API (/classify, /analyze, /health, /model) and the web page at http://HOST:PORT/."""
    from rich.console import Console

    try:
        import uvicorn
    except ImportError as exc:  # pragma: no cover - uvicorn is a core dependency
        raise WbcError(f"wbc serve needs uvicorn: pip install uvicorn ({exc})") from None
    from wbc.serve.app import create_app

    console = Console(stderr=True)
    app = create_app(model_path=model, segmenter_method=segmenter, segmenter_path=segmenter_model,
                     max_upload_mb=max_upload_mb, threads=threads, max_concurrent=workers)
    meta = app.state.metadata
    shown = f"[{host}]" if ":" in host else host
    console.print(f"wbc serve: model {meta['model_id']}, segmenter {meta['segmenter']['name']}, "
                  f"uploads up to {max_upload_mb:g} MiB", highlight=False)
    console.print(f"  web page  http://{shown}:{port}/\n  API       http://{shown}:{port}/openapi.json",
                  highlight=False)
    if host not in LOOPBACK:
        console.print("[yellow]warning:[/] listening beyond this machine; the API has no authentication. "
                      "Put it behind a reverse proxy with TLS and access control.", highlight=False)
    try:
        uvicorn.run(app, host=host, port=port, log_level="info", access_log=True)
    except OSError as exc:  # port in use, address not available
        raise WbcError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
