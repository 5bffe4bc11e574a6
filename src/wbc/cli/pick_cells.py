"""``wbc pick-cells``: which of a lab's cell images to label first for ``wbc adapt``."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Annotated

import typer

from wbc.cli._app import app
from wbc.cli._common import ModelOpt, ThreadsOpt, note_foreign_images, say, warn_skipped
from wbc.errors import WbcError


def refuse_filled_in(output: Path) -> None:
    """Refuse to write over a label file that has been filled in: the CSV this command writes is the one a
    hematologist spends time labelling, and a second run (say with a larger ``--n``) replaced it with empty labels.
    Any row with a field filled in beyond its first (the path) counts, whatever the column is called and whichever
    separator a spreadsheet saved it with (before wbc 0.32.0 a file saved with ``;``, or with a ``Label`` column,
    counted no label and was emptied)."""
    import io

    from wbc.data import sniff_delimiter

    if not output.is_file():
        return
    try:
        with output.open(newline="", encoding="utf-8-sig", errors="replace") as fh:
            text = fh.read()
        rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=sniff_delimiter(text)))
    except (OSError, csv.Error) as exc:
        raise WbcError(f"{output}: cannot read the file to be replaced ({exc}); give another --output") from None
    body = rows[1:] if rows and rows[0] and rows[0][0].strip().lower() == "path" else rows  # a header, or none
    labelled = sum(1 for row in body if any(cell.strip() for cell in row[1:]))
    if labelled:
        raise WbcError(f"{output}: already holds {labelled} labels; give another --output (or delete the file)")


@app.command("pick-cells")
def pick_cells(
    data: Annotated[Path, typer.Argument(help="A folder of the lab's cell images (no labels needed).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="CSV to write: path,label with the label "
                                         "column empty, for you to fill in and give to `wbc adapt --data`.")],
    n: Annotated[int, typer.Option("--n", min=1, help="How many cells to label.")] = 50,
    model: ModelOpt = None,
    rule: Annotated[str, typer.Option(help="typical: one cell of each of n kinds the model sees in the folder "
                                      "(k-means on its embeddings), so rare kinds are labelled too; balanced: "
                                      "about as many of each class the model names; random.")] = "typical",
    seed: Annotated[int, typer.Option(help="Seed for the sample of a large folder and the clustering.")] = 0,
    max_cells: Annotated[int, typer.Option(min=0, help="Look at most at this many of the folder's images, a "
                                           "seeded random sample of a larger folder (0: every one).")] = 2000,
    threads: ThreadsOpt = 2,
    report: Annotated[Path | None, typer.Option(help="Also write what was chosen and how as JSON.")] = None,
) -> None:
    """Choose which of a lab's cells to label for `wbc adapt`: cells unlike each other teach more than a random draw."""
    from wbc.adapt_select import pick_cells as pick
    from wbc.io import atomic_write_csv, atomic_write_text, check_output_file

    for path in (output, report):  # before any work: a bad path fails at once
        if path is not None:
            check_output_file(path)
    if report is not None and report.resolve() == output.resolve():  # written after it, the JSON replaced the CSV
        raise WbcError(f"{report}: --report would overwrite --output (the CSV to label): choose another name")
    refuse_filled_in(output)
    note_foreign_images([data])
    res = pick(model, data, n=n, rule=rule, seed=seed, threads=threads, max_cells=max_cells)
    warn_skipped(res.skipped)
    atomic_write_csv(output, ("path", "label"), [(p, "") for p in res.paths])
    if report:
        atomic_write_text(report, json.dumps(res.to_dict(), indent=2) + "\n")
    sample = f", a seeded sample of the folder's {res.n_files}" if res.n_sampled < res.n_files else ""
    copies = f" ({res.n_copies} copies of other images left out)" if res.n_copies else ""
    say(f"chose {len(res.paths)} of {res.n_read} cells{sample}{copies} by rule {res.rule} in {res.seconds:.0f} s -> "
        f"{output}")
    say(f"next: fill in its label column (neutrophil, lymphocyte, ...; rows left empty are skipped), then "
        f"`wbc adapt --data {output} --output my_lab.onnx`")
