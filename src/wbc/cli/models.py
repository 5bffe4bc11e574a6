"""``wbc models``: the registered network architectures."""

from __future__ import annotations

import typer

from wbc.cli._app import app
from wbc.errors import WbcError


@app.command("models")
def list_models_cmd() -> None:
    """List the registered network architectures and their parameter counts (with an 8-class head)."""
    try:  # the registry builds torch networks: an install without the train extra gets one line, as `wbc export`
        from wbc.train.models import list_models, parameter_count
    except ImportError as exc:
        raise WbcError(f"wbc models needs the train extra: pip install -e '.[train]' ({exc})") from None

    for name, desc in list_models().items():  # counted on the network, never typed (a typed count drifted)
        typer.echo(f"{name:<20}{parameter_count(name) / 1e6:5.2f}M parameters  {desc}")
