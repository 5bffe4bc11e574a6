"""``wbc cases``: the case store from the command line (list, show, cells, relabel, sign-off, create, report, export
for ``wbc adapt``).

The library is :mod:`wbc.cases`; this module only parses options and prints. SQLAlchemy is imported inside
the commands, so ``wbc --help`` stays fast.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path
from typing import Annotated, Any

import typer

from wbc.cli._app import app, console
from wbc.cli._common import (
    ClassesOpt,
    ColourCalibrationOpt,
    ModelOpt,
    PixelSizeOpt,
    SegmenterModelOpt,
    SegmenterOpt,
    ThreadsOpt,
    TtaOpt,
    say,
    warn,
)
from wbc.errors import WbcError

#: Where the store is when --store is not given: next to the results of ``wbc analyze`` (its default output).
DEFAULT_STORE = Path("results") / "cases.sqlite"

StoreOpt = Annotated[str | None, typer.Option(
    "--store", help="Case store: a SQLAlchemy URL (postgresql+psycopg://user@host/db, sqlite:///file) or a "
    f"file or folder for SQLite (default: {DEFAULT_STORE}).")]
#: The audit trail's ``client`` of a change or sign-off made by ``wbc cases relabel`` / ``sign-off`` (the server
#: records the API key it came through, Python callers "local"; the store keeps 60 characters).
CLI_CLIENT = "command line"
UserOpt = Annotated[str, typer.Option(
    "--user", help="Who reviews or signs off (recorded in the audit trail); required.", show_default=False)]
#: How a case is named on the command line (the store's rule, :meth:`wbc.cases.CaseStore.case_id`).
CASE_HELP = ("Case name or id; #ID for the id alone. Digits that name one case and are the id of another are "
             "refused: write #ID. Digits with a leading zero (0042) are a name only.")
CaseArg = Annotated[str, typer.Argument(help=CASE_HELP, show_default=False)]

cases_app = typer.Typer(help="Reviewed cases: list, show, create; review one without a server (cells, relabel, "
                        "sign-off); report; export the corrections for wbc adapt.", no_args_is_help=True)
app.add_typer(cases_app, name="cases")


def store_url(store: str | os.PathLike[str] | None) -> str:
    """The SQLAlchemy URL for ``--store`` (a URL as it is; a folder or file path -> SQLite)."""
    from wbc.cases.store import store_url as url

    return url(store if store is not None else DEFAULT_STORE)


def open_store(store: str | None, must_exist: bool = True) -> Any:
    """Open the store; for reading, a SQLite file that is not there, or a database without wbc's tables, is an error
    (not a new empty store written into it)."""
    from sqlalchemy.engine import make_url

    from wbc.cases import CaseStore

    url = store_url(store)
    if must_exist and url.startswith("sqlite:///"):
        path = Path(make_url(url).database or "")  # unquoted: the file the store opens ("run%201" stays that)
        if not path.is_file():
            raise WbcError(f"{path}: no case store here (create cases with `wbc serve` or `wbc cases create`, "
                           "or pass --store)")
    return CaseStore(url, create=not must_exist)


@cases_app.command("list")
def list_cases(store: StoreOpt = None,
               as_json: Annotated[bool, typer.Option("--json", help="Print JSON to stdout.")] = False) -> None:
    """List every case: fields, cells, cells changed by review, status."""
    s = open_store(store)
    rows = s.list_cases()
    if as_json:
        print(json.dumps([r.to_dict() for r in rows], indent=2))
        return
    if not rows:
        say(f"no cases in {s.display_url}")
        return
    from rich.table import Table
    from rich.text import Text  # user text as Text: never read as markup

    t = Table(title=f"cases in {s.display_url}", title_justify="left")
    for col, just in (("id", "right"), ("name", "left"), ("fields", "right"), ("cells", "right"),
                      ("changed", "right"), ("status", "left"), ("signed", "left")):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    t.title = Text(f"cases in {s.display_url}")
    for r in rows:
        t.add_row(str(r.id), Text(r.name), str(r.n_fields), str(r.n_cells), str(r.n_changed), r.status,
                  Text(f"{r.signed_by} {r.signed_at}" if r.signed_by else ""))
    console.print(t)


@cases_app.command("show")
def show_case(case: CaseArg, store: StoreOpt = None,
              as_json: Annotated[bool, typer.Option("--json", help="Print the case as JSON to stdout.")] = False
              ) -> None:
    """One case: who analysed and signed it, the reviewed differential beside the model's, the corrections."""
    s = open_store(store)
    doc = s.case_document(case)
    if as_json:
        print(json.dumps(doc, indent=2, ensure_ascii=False))
        return
    say(f"case {doc['id']}: {doc['name']} ({doc['status']})")
    from wbc.cases.report import settings_line

    say(f"  analysed {doc['created_at']}{' by ' + doc['created_by'] if doc['created_by'] else ''}; "
        f"model {doc['model_id']}; {settings_line(doc)}")
    if doc["signed_by"]:
        say(f"  {_signed(doc)}")
    say(f"  {len(doc['fields'])} field(s), {doc['n_cells']} cell(s): {doc['n_flagged']} flagged by the model, "
        f"{doc['n_reviewed']} reviewed, {doc['n_changed']} changed")
    _say_differential(doc)
    for c in doc["corrections"]:
        say(f"  {c['at']}  cell {c['cell_id']}: {c['old_label']} -> {c['new_label']} by {c['user']}")
    if not doc["signed_by"]:  # the number sign-off's --corrections-seen takes: every row above, confirmations included
        say(f"  {corrections_line(doc['corrections'])}: sign off with --corrections-seen {len(doc['corrections'])}")


def corrections_line(corrections: list[dict[str, Any]]) -> str:
    """How many corrections a case has, as ``sign-off --corrections-seen`` counts them: every row of the audit trail,
    a confirmation (the same label) as much as a change (before wbc 0.37.0 `show` printed only the changed cells,
    and a signer who gave that number was refused as if the case had changed since).

    >>> corrections_line([{"old_label": "ig", "new_label": "ig"}, {"old_label": "ig", "new_label": "monocyte"}])
    '2 correction(s) (1 change(s), 1 confirmation(s))'
    """
    same = sum(c["old_label"] == c["new_label"] for c in corrections)
    return f"{len(corrections)} correction(s) ({len(corrections) - same} change(s), {same} confirmation(s))"


def _signed(doc: dict[str, Any]) -> str:
    """Who signed a signed-off case off, when, and where its numbers come from (``show`` and ``sign-off`` say it)."""
    from wbc.cases.report import numbers_line

    return f"signed off by {doc['signed_by']} on {doc['signed_at']}; numbers {numbers_line(doc)}"


def _say_differential(doc: dict[str, Any]) -> None:
    """The reviewed differential beside the model's counts, as ``show`` prints it; ``doc``: a case document or
    :meth:`wbc.cases.CaseStore.tallies` (``relabel`` and ``sign-off`` print the case's new one the same way)."""
    model = {r["class"]: r["count"] for r in doc["model_differential"]["rows"]}
    from wbc.labels import PER_100_WBC

    # the rate rows the case has (no platelet row since wbc 0.30.0): a header naming absent rows misleads
    per_100 = [f"{c}s" for c in PER_100_WBC if any(r["class"] == c for r in doc["differential"]["rows"])]
    rates = f", {' and '.join(per_100)} per 100 WBCs (/100 WBC), outside the total" if per_100 else ""
    say(f"  {doc['differential']['total']} WBCs counted; % of the WBCs{rates}")
    say(f"  {'class':<15}{'count':>6}  {'rate':<16}{'95 % CI':<16}{'model':>6}")
    for r in doc["differential"]["rows"]:
        if r["count"] or model[r["class"]]:
            say(f"  {r['class']:<15}{r['count']:>6}{_rate(r)}{model[r['class']]:>6}")
    for lab, n in doc["differential"]["excluded"].items():
        if n:
            say(f"  {lab:<15}{n:>6}  (not counted)")


def _rate(row: dict[str, Any]) -> str:
    """A differential row's rate and interval for ``wbc cases show``, each with its unit: a bare 50.0 for NRBCs per
    100 WBCs under a "%" heading read as half of the WBCs. With no WBC counted nothing has a value (a WBC class read
    "0.0 % 0.0-100.0" before wbc 0.33.0): the case report's rule, :func:`wbc.cases.report.no_wbc`."""
    from wbc.cases.report import no_wbc
    from wbc.counts import NO_WBC_RATE, fixed

    if no_wbc(row):
        return f"  {NO_WBC_RATE if row['count'] else '':<32}"
    unit = " /100 WBC" if row.get("unit") == "per 100 WBC" else " %"
    return f"  {fixed(row['percent']):>5}{unit:<9}  {fixed(row['ci95_low'])}-{fixed(row['ci95_high'])}".ljust(34)


@cases_app.command("cells")
def cells(case: CaseArg, store: StoreOpt = None,
          flagged: Annotated[bool, typer.Option(
              "--flagged", help="Only the cells the model flagged that nobody has reviewed yet: the work list.")
              ] = False,
          as_json: Annotated[bool, typer.Option(
              "--json", help="Print the cells as JSON to stdout (as `show --json` gives them).")] = False) -> None:
    """A case's cells, one row each: its field, box, the model's call and why it flagged it, the reviewer's call.

    The cell ids are what `wbc cases relabel` takes."""
    from wbc.formats import confidence_text

    s = open_store(store)
    doc = s.case_document(case)
    rows = [c for c in doc["cells"] if not flagged or (c["model_review"] and not c["reviewed"])]
    if as_json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    if not rows:
        say(f"case {doc['id']}: {doc['name']}: " + (f"no cell left to review: the {doc['n_flagged']} flagged by the "
                                                     "model are reviewed" if flagged else "no cells"))
        return
    what = "cell(s) flagged by the model, not reviewed yet" if flagged else "cells"
    from rich import box
    from rich.table import Table
    from rich.text import Text  # user text as Text: never read as markup

    fields = {f["id"]: f for f in doc["fields"]}
    t = Table(title=Text(f"case {doc['id']}: {doc['name']}: {len(rows)} of {doc['n_cells']} {what}"),
              title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, padding=0)
    # the calls never wrap; an 80-column terminal wraps the field's name, the box, the reasons, the reviewer's name
    for col, just, min_w in (("id", "right", 0), ("field", "left", 9), ("cell", "right", 0), ("box", "left", 7),
                             ("model", "left", 0), ("conf", "right", 0), ("flagged", "left", 0),
                             ("reasons", "left", 10), ("reviewer", "left", 0), ("by", "left", 6)):
        t.add_column(col, justify=just, no_wrap=not min_w, min_width=min_w or None,  # type: ignore[arg-type]
                     max_width=24 if col == "reasons" else None, overflow="fold")
    threshold = float(doc["review_threshold"] or 0.0)
    for c in rows:
        f = fields[c["field_id"]]
        # each reason to its first comma ("confidence 0.62, below the review threshold 0.90"): --json has them whole
        reasons = "; ".join(re.split(r"[,:;]", r)[0] for r in c["model_reasons"])
        t.add_row(str(c["id"]), Text(f"{f['position']} {f['image']}"), str(c["cell_no"]),
                  " ".join(map(str, c["box"])), c["model_label"], confidence_text(c["model_confidence"], threshold),
                  "yes" if c["model_review"] else "no", Text(reasons), c["label"] if c["reviewed"] else "",
                  Text(c["reviewed_by"] or ""))
    console.print(t)


def case_label(label: str, labels: list[str]) -> str:
    """LABEL as the case names it: one of its ``labels`` as typed; another spelling of a class
    (:func:`wbc.labels.canonical_label`: "Neutrophils", "eo", "NRBC") or of not_wbc / unidentifiable ("Not WBC") when
    that names one of them; anything else as typed, for the store to refuse naming the case's labels.

    >>> case_label("Neutrophils", ["neutrophil", "not_wbc"]), case_label("Not WBC", ["neutrophil", "not_wbc"])
    ('neutrophil', 'not_wbc')
    >>> case_label("NRBC", ["neutrophil", "not_wbc"])
    'NRBC'
    """
    from wbc.labels import canonical_label

    if label in labels:
        return label
    special = "_".join(label.lower().replace("-", " ").replace("_", " ").split())
    mapped = special if special in labels else canonical_label(label)
    return mapped if mapped in labels else label


@cases_app.command("relabel")
def relabel(
    case: CaseArg,
    cell: Annotated[int, typer.Argument(help="The cell's id (`wbc cases cells CASE`).", show_default=False)],
    label: Annotated[str, typer.Argument(help="A class of the case (its spellings as wbc reads datasets: "
                                         "\"Neutrophils\", \"eo\"), not_wbc or unidentifiable; the cell's own call "
                                         "confirms it.", show_default=False)],
    user: UserOpt = "",
    note: Annotated[str, typer.Option("--note", help="Why, kept in the audit trail.")] = "",
    expected: Annotated[str | None, typer.Option(
        "--expected", help="The call you saw the cell with: if it holds another one now (a colleague relabelled it "
        "since), nothing is saved.")] = None,
    store: StoreOpt = None,
) -> None:
    """Set the reviewer's call for one cell (as the review page does), then print the case's new differential.

    The audit trail records --user and the client "command line". A signed-off case is read-only."""
    s = open_store(store)
    before = s.case_document(case)
    labels, cid = before["labels"], before["id"]  # the id from here on: the case whose labels were read
    new = s.reclassify(cid, cell, case_label(label, labels), user, note, CLI_CLIENT,
                       None if expected is None else case_label(expected, labels))
    doc = s.case_document(cid)
    # the call replaced, as the store read it under the case's lock: the cell's last correction in a re-read case is a
    # colleague's when one relabelled it meanwhile (the page beside the command line), never to be printed as ours
    old = new["old_label"]
    done = "confirmed" if old == new["label"] else "changed"
    say(f"case {doc['id']}: {doc['name']}: cell {new['id']} {old} -> {new['label']} by {new['reviewed_by']} "
        f"({done}; the model's call {new['model_label']}); {doc['n_reviewed']} of {doc['n_cells']} cell(s) reviewed")
    now = next(c for c in doc["cells"] if c["id"] == new["id"])
    if now["label"] != new["label"]:  # the differential below counts the colleague's call: say whose
        say(f"  cell {new['id']} since relabelled {now['label']} by {now['reviewed_by']}; the differential counts that")
    _say_differential(doc)


@cases_app.command("sign-off")
def sign_off(
    case: CaseArg,
    user: UserOpt = "",
    corrections_seen: Annotated[int | None, typer.Option(
        "--corrections-seen", min=0, help="How many corrections you checked, confirmations included (`wbc cases "
        "show` prints the number to give): if the case has another number now (a colleague relabelled a cell "
        "since), it is not signed off, and you are told to show it again, not which number to give.")] = None,
    store: StoreOpt = None,
) -> None:
    """Sign the case off (as the review page does): its differential is kept as signed and the case is read-only.

    The cells nobody reviewed keep the model's calls. The audit trail records --user and the client "command line"."""
    from wbc.cases.store import CaseChangedError

    s = open_store(store)
    try:
        doc = s.sign_off(case, user, CLI_CLIENT, corrections_seen)
    except CaseChangedError as exc:  # the store's words name no command (the review page's user reads them too)
        shown = f"`wbc cases show {shlex.quote(case)}`"
        raise CaseChangedError(f"{exc} ({shown} prints it, and the number to give, on its last line)") from None
    say(f"case {doc['id']}: {doc['name']}: {_signed(doc)}")
    unseen = sum(c["model_review"] and not c["reviewed"] for c in doc["cells"])
    say(f"  {doc['n_cells']} cell(s): {doc['n_reviewed']} reviewed, {doc['n_changed']} changed"
        + (f"; {unseen} flagged by the model and not reviewed: the model's calls stand" if unseen else ""))
    _say_differential(doc)


@cases_app.command("create")
def create_case(
    name: Annotated[str, typer.Argument(help="Name of the new case (sample or accession number).")],
    paths: Annotated[list[Path], typer.Argument(help="Smear fields (images or folders).", show_default=False)],
    store: StoreOpt = None,
    model: ModelOpt = None,
    segmenter: SegmenterOpt = "auto",
    segmenter_model: SegmenterModelOpt = None,
    user: Annotated[str, typer.Option(help="Who creates the case.")] = "",
    threads: ThreadsOpt = 2,
    pixel_size: PixelSizeOpt = None,
    classes: ClassesOpt = None,
    tta: TtaOpt = None,
    colour_calibration: ColourCalibrationOpt = True,
) -> None:
    """Analyse smear fields as one new case, for review in the web page (`wbc serve`, /review).

    The analysis options are `wbc analyze`'s: the case gives the cells and counts that `wbc analyze` with the same
    options gives, and records the options (its report names them).

    A file whose content is already in the case (named twice, a folder and a file in it, a copy under another
    name) is skipped with a warning: each image is counted once. The annotated PNGs an earlier `wbc analyze` wrote
    in the folders are left out and said, as `wbc analyze` leaves them out. Files left out of the folders (other
    formats, links to missing files) are named; every field that cannot be analysed is named, and then no case is
    created."""
    from wbc.analyze import analyze_bytes
    from wbc.batch import ModelSpec, drop_annotated_fields
    from wbc.cases.store import clean_name, create_case_from_fields, file_digest, prepare_field
    from wbc.cli._common import note_foreign_images
    from wbc.cli.analyze import note_earlier_outputs
    from wbc.io import iter_image_paths, no_images_message, read_bytes
    from wbc.smear_look import NOT_A_SMEAR_WARNING

    n = clean_name(name)  # a name the store refuses fails before any field is read (it failed after all were analysed)
    found = list(iter_image_paths(paths))
    # wbc analyze's rule: an earlier run's annotated PNGs (slide/results/) are no fields; before wbc 0.36.0 a case
    # counted each field twice, its drawing's labels adding "cells"
    files, earlier = drop_annotated_fields(paths, found)
    note_foreign_images(paths)  # as wbc analyze: a phone's HEIC, a link to a missing file were dropped in silence
    if not files:
        if earlier:
            raise WbcError(f"every image found ({len(found)}) is in an output folder of wbc ({', '.join(earlier)}): "
                           "annotated results, not smear fields")
        raise WbcError(no_images_message(paths))
    note_earlier_outputs(earlier)
    seen: dict[str, Path] = {}
    unique = []
    for p in files:
        digest = file_digest(read_bytes(p))
        if digest in seen:
            warn(f"{p}: the same image as {seen[digest]} (identical file content, SHA-1 {digest[:12]}); "
                 "counted once", "skipped")
            continue
        seen[digest] = p
        unique.append((p, digest))
    s = open_store(store, must_exist=False)
    if s.name_taken(n):
        raise WbcError(f"a case named {n!r} already exists in {s.display_url}; choose another name")
    # as wbc analyze builds them (before wbc 0.36.0 none of its analysis options could be given here)
    clf, seg = ModelSpec(str(model) if model else None, segmenter, str(segmenter_model) if segmenter_model else None,
                         threads, pixel_size=pixel_size, classes=classes, tta=tta,
                         colour_calibration=colour_calibration).load()
    fields, failed = [], []
    for p, digest in unique:  # read again, not kept from the digests: many fields' bytes need not sit in memory
        try:  # a TIFF's pages: said in warnings
            rgb, res = analyze_bytes(read_bytes(p), p.name, clf, seg, source=str(p))
        except WbcError as exc:  # each named by its path (two days' field1.jpg), and the next fields still tried
            msg = str(exc)
            failed.append(msg if msg.startswith(f"{p}:") else f"{p}: {msg.removeprefix(f'{p.name}: ')}")
            continue
        for w in res.warnings:  # since wbc 0.31.0 a photograph among the fields is named, as `wbc analyze` names it
            if w.startswith(NOT_A_SMEAR_WARNING):
                warn(f"{p}: {w}")
        if not failed:  # no case will be made once one field failed: its crops need not be kept
            fields.append(prepare_field(p.name, rgb, res, clf, digest))
    if failed:
        for msg in failed[:-1]:
            warn(msg, "unreadable:")
        raise WbcError(f"{failed[-1]}; {len(failed)} of {len(unique)} field(s) could not be analysed: no case was "
                       "created")
    seg_id = str(getattr(seg, "model_id", "") or getattr(seg, "name", ""))
    cid = create_case_from_fields(s, name, fields, clf, segmenter_id=seg_id, created_by=user, segmenter=seg)
    doc = s.case_document(cid)
    from wbc.cases.report import settings_line

    say(f"case {cid}: {doc['name']}: {len(fields)} field(s), {doc['n_cells']} cell(s), "
        f"{doc['n_flagged']} flagged -> {s.display_url}")
    say(f"  {settings_line(doc)}")
    warn_pooled([c.prediction for f in fields for c in f.result.cells if c.prediction is not None], clf)


def warn_pooled(preds: list[Any], classifier: Any) -> None:
    """What `wbc analyze` says over its fields' cells, said over a new case's: the cells the model takes for a class
    the differential does not count, and those unlike its training data (with the advice to adapt the model when
    they are many). Before wbc 0.36.0 these were in the case alone, never on the terminal."""
    from wbc.classify import outside_note
    from wbc.ood import adapted_without_labels, advice_for, ood_sentence, too_many_ood

    if outside := outside_note(preds):
        warn(outside)
    k, n = sum(bool(p.ood) for p in preds), len(preds)
    if ood := ood_sentence(k, n, adapted_without_labels(classifier)):
        warn(f"{ood}; {advice_for(classifier)}" if too_many_ood(k, n) else ood)


@cases_app.command("report")
def report(
    case: CaseArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="report.html (printable page) or report.pdf.")],
    store: StoreOpt = None,
) -> None:
    """Write the case report: differential with intervals, reviewer vs model, flagged cells, plain words."""
    from wbc.cases.report import render_html, render_pdf
    from wbc.io import atomic_write_bytes, atomic_write_text, check_output_file

    suffix = output.suffix.lower()
    if suffix not in (".html", ".htm", ".pdf"):
        raise WbcError(f"{output}: --output must end in .html or .pdf")
    check_output_file(output)  # a bad path fails at once, in one line
    s = open_store(store)
    if suffix == ".pdf":
        said: list[str] = []  # characters no font draws: said, not left as boxes unsaid (since wbc 0.35.0)
        atomic_write_bytes(output, render_pdf(s, case, said))
        for w in said:
            warn(f"{output}: {w}")
    else:
        atomic_write_text(output, render_html(s, case))
    if not s.case_document(case)["signed_by"]:
        warn("the case is not signed off: the report is marked DRAFT")
    say(f"report -> {output}")


@cases_app.command("export")
def export(
    output: Annotated[Path, typer.Argument(help="Folder to write <class>/<image> crops and manifest.csv to.")],
    case: Annotated[list[str] | None, typer.Option("--case", help=f"Only this case; repeatable. {CASE_HELP}")
                    ] = None,
    store: StoreOpt = None,
    include_open: Annotated[bool, typer.Option("--include-open", help="Also cases not signed off yet.")] = False,
    changed_only: Annotated[bool, typer.Option("--changed-only", help="Only cells the reviewer changed.")] = False,
    include_accepted: Annotated[bool, typer.Option(
        "--include-accepted", help="Also the cells nobody opened in signed-off cases: the model's calls accepted at "
        "sign-off (label_source accepted_at_sign_off in manifest.csv).")] = False,
) -> None:
    """Export reviewed cells as training data: `wbc adapt --data OUTPUT` (or OUTPUT/manifest.csv) takes it as it is.

    Only cells a person reviewed (confirmed or changed) by default; manifest.csv says each label's source."""
    from wbc.cases.export import export_cases
    from wbc.io import check_output_file

    if output.exists() and not output.is_dir():
        raise WbcError(f"{output}: exists and is not a folder")
    check_output_file(output.parent / f"{output.name}.export")  # its folder writable: a bad path fails at once
    s = open_store(store)
    res = export_cases(s, output, cases=list(case or []), include_open=include_open, changed_only=changed_only,
                       include_accepted=include_accepted)
    for name in res.skipped_open:
        warn(f"case {name!r} is not signed off: left out (--include-open takes it)", prefix="skipped")
    counts = ", ".join(f"{k} {v}" for k, v in sorted(res.counts.items()))
    accepted = f", {res.n_accepted} of them the model's calls accepted at sign-off" if res.n_accepted else ""
    say(f"{res.n_cells} cell(s){accepted} from {len(res.cases)} case(s) -> {output}/ ({counts or 'none'}); "
        f"{res.n_excluded} not-a-WBC / unidentifiable cell(s) left out")
    from wbc.cli._common import SKIPPED_SHOWN, warn_skipped

    for line in res.repeated[:SKIPPED_SHOWN]:  # the same fields in two cases (the command line's and the page's)
        warn(line, prefix="note:")
    if len(res.repeated) > SKIPPED_SHOWN:
        warn(f"{len(res.repeated) - SKIPPED_SHOWN} more field(s) in more than one case: their cells written once",
             prefix="note:")
    warn_skipped(res.conflicts)
    if res.n_unreviewed:
        warn(f"{res.n_unreviewed} cell(s) nobody reviewed left out: their labels are the model's own calls "
             "(--include-accepted takes those of signed-off cases)", prefix="note:")
    from wbc.adapt import MIN_LABELLED_CELLS

    if res.n_cells >= MIN_LABELLED_CELLS:
        say(f"next: wbc adapt --data {output} --output my_lab.onnx")
    else:  # wbc adapt would refuse: say what makes it run instead
        more = "" if include_accepted else " (or add --include-accepted: the calls accepted at sign-off too)"
        say(f"wbc adapt needs at least {MIN_LABELLED_CELLS} labelled cells: review at least "
            f"{MIN_LABELLED_CELLS - res.n_cells} more{more}, then export again")
