"""``wbc models``: the registered network architectures."""

from __future__ import annotations

import typer

from wbc.cli._app import app


@app.command("models")
def list_models_cmd() -> None:
    """List the registered network architectures."""
    from wbc.train.models import list_models

    for name, desc in list_models().items():
        typer.echo(f"{name:<20}{desc}")
