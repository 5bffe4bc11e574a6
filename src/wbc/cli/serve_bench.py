"""``wbc serve-bench``: latency of a live ``wbc serve`` on the real data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from wbc.cli._app import app
from wbc.cli._common import DataRootOpt, ModelOpt, SegmenterOpt, say
from wbc.errors import WbcError


@app.command("serve-bench")
def serve_bench(
    model: ModelOpt = None,
    segmenter: SegmenterOpt = "auto",
    data_root: DataRootOpt = None,
    fields: Annotated[int, typer.Option(min=1, help="BCCD fields for /analyze.")] = 10,
    cells: Annotated[int, typer.Option(min=1, help="PBC cells for one /classify request (at most 500).")] = 100,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Also write the numbers as JSON.")] = None,
) -> None:
    """Start `wbc serve` on a free loopback port and time /analyze, /classify and /health under load."""
    from wbc.io import atomic_write_text, check_output_file
    from wbc.paths import data_root as resolve_root
    from wbc.serve.app import DEFAULT_MAX_FILES
    from wbc.serve.bench import measure_latency

    if cells > DEFAULT_MAX_FILES:  # before a server starts: it would answer 413 (before wbc 0.33.0, after starting)
        raise WbcError(f"--cells {cells}: one /classify request takes at most {DEFAULT_MAX_FILES} files")
    if output is not None:  # before a server starts (before wbc 0.36.0 a folder was a traceback after the bench)
        check_output_file(output)

    root = resolve_root(data_root)
    field_files = sorted((root / "bccd" / "JPEGImages").glob("*.jpg"))[:fields]
    cell_files = sorted((root / "pbc").glob("*/*.jpg"))
    cell_files = cell_files[:: max(1, len(cell_files) // cells)][:cells]
    if not field_files or not cell_files:
        raise WbcError(f"{root}: no BCCD fields or PBC cells (set --data-root or WBC_DATA_DIR)")
    args = ["--segmenter", segmenter, *(["--model", str(model)] if model else [])]
    r = measure_latency(field_files, cell_files, args)
    say(f"model {r['model_id']}, segmenter {r['segmenter']}")
    a, c, h = r["analyze_ms"], r["classify"], r["health_under_load_ms"]
    say(f"/analyze?annotated=true, {a['n']} BCCD fields 640x480: median {a['median']:.0f} ms, max {a['max']:.0f} ms")
    say(f"/classify, {c['n']} PBC cells in one request: {c['seconds']:.2f} s ({c['ms_per_cell']:.1f} ms/cell)")
    say(f"/health while {h['clients']} clients keep /analyze busy: median {h['median']:.0f} ms, "
        f"max {h['max']:.0f} ms")
    if output:
        atomic_write_text(output, json.dumps(r, indent=2) + "\n")
