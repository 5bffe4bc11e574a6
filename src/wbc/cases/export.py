"""Export reviewed cells as ``<class>/<image>`` crops plus ``manifest.csv``: the input ``wbc adapt --data`` takes.

Only signed-off cases by default, only cells with a class (not ``not_wbc`` / ``unidentifiable``), and only cells
a person reviewed (confirmed or changed): a cell nobody opened carries the model's own call, accepted at sign-off,
and training on it teaches the model its own answers (and inflates ``wbc adapt``'s "before" accuracy).
``include_accepted`` adds those cells of signed-off cases too. Each row says where its label came from
(``label_source``: ``reviewed``, or ``accepted_at_sign_off`` with an empty ``reviewer``). A cell of a field in several
exported cases (the same file; the cell matched by box overlap) is written once, and left out where reviewers labelled
it two ways, "not a WBC" and a call ``changed_only`` drops included (said in the summary).

The folder is written beside the target and swapped in whole, so an interrupted export never leaves a half-written
folder; a folder from an earlier export is replaced, any other non-empty folder is refused, and so is an earlier
export's folder that holds anything the export did not write (a user's file, the case store itself; a file
browser's ``.DS_Store``, ``Thumbs.db`` and the like are removed with it). Through a
symbolic link, the folder it points to is the target (the link stays).
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import URL

from wbc.cases.store import SPECIAL_LABELS, CaseError, CaseStore, safe_stem
from wbc.data import ACCEPTED_AT_SIGN_OFF, MANIFEST_COLUMNS
from wbc.evaluate.smears import SAME_CELL_IOU, box_iou
from wbc.formats import neutralise
from wbc.io import output_target

#: Marks a folder written by :func:`export_cases` (so a re-export may replace it).
MARKER = ".wbc-cases-export"
#: ``model_label`` and ``model_id``: the call `wbc analyze` made and the model that made it (since wbc 0.34.0), which
#: `wbc adapt` scores as "before" (:func:`wbc.adapt.recorded_calls`): the crops keep the field's raw colours, and the
#: original model scored on them is not the model the lab used.
#: ``store``: the case store the cells came from (a SQLite store's file name; another's URL with only its driver, host,
#: port and database: no user, password or query, :func:`store_place`),
#: which `wbc adapt` records in the adapted model with the cases and the manifest's SHA-1 (since wbc 0.37.0).
EXTRA_COLUMNS = ("case", "case_id", "cell_id", "model_label", "model_id", "changed", "label_source", "reviewer",
                 "signed_by", "store")
#: ``label_source``: a person reviewed the cell (confirmed or changed its call; ``reviewer`` names them) ...
REVIEWED = "reviewed"
#: ... or nobody opened it and the model's call was accepted when the case was signed off (``include_accepted``).
ACCEPTED = ACCEPTED_AT_SIGN_OFF


@dataclass
class ExportSummary:
    output: str
    n_cells: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    cases: list[str] = field(default_factory=list)
    skipped_open: list[str] = field(default_factory=list)  # open cases left out (not signed off)
    n_excluded: int = 0  # not_wbc / unidentifiable cells left out
    n_unreviewed: int = 0  # cells nobody reviewed left out (the model's calls; include_accepted takes signed ones)
    n_accepted: int = 0  # of n_cells: the model's calls accepted at sign-off (include_accepted)
    # fields in more than one exported case (the same file's SHA-1), each named with its cases: their cells written once
    repeated: list[str] = field(default_factory=list)
    # cells of such fields labelled two ways (by reviewers; a reviewer's call outranks one accepted at sign-off): left
    # out, each named with its labels
    conflicts: list[str] = field(default_factory=list)


def _written_by_export(out: Path) -> set[str]:
    """The paths (relative, ``/``-separated) an earlier export in ``out`` wrote: its marker, its manifest, the crops
    the manifest lists and their class folders; nothing else in the folder is the export's to remove."""
    ours = {MARKER, "manifest.csv"}
    try:
        with (out / "manifest.csv").open(encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f):
                rel = (row.get("path") or "").strip()
                parts = rel.split("/")
                ours.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    except (OSError, UnicodeDecodeError, csv.Error):
        pass  # no readable manifest: only the marker and the manifest itself are the export's
    return ours


#: Files a file browser leaves in a folder someone opened (macOS Finder, its AppleDouble ``._*`` files on other disks,
#: Windows Explorer, KDE), compared case-folded: no user's data, removed with an earlier export (since wbc 0.35.0).
OS_FILES = frozenset({".ds_store", "thumbs.db", "desktop.ini", ".directory"})


def _os_file(name: str) -> bool:
    """Whether a file named ``name`` is a file browser's (:data:`OS_FILES`), which a re-export may remove."""
    return name.casefold() in OS_FILES or name.startswith("._")


def _check_target(out: Path) -> None:
    """Refuse a target whose replacement would remove files the export did not write. A marked earlier export is
    replaced whole (renamed aside, then removed): before wbc 0.35.0 whatever else was in it (a user's notes, the case
    store itself) went with it. A file browser's own files (:data:`OS_FILES`) are no user's: a lab scientist who
    looked at the crops in Finder or Explorer left one there, and the re-export was refused over a file they never
    made."""
    if out.exists() and not out.is_dir():
        raise CaseError(f"{out}: exists and is not a folder")
    if out.is_dir() and not (out / MARKER).is_file() and any(
            not (p.is_file() and _os_file(p.name)) for p in out.iterdir()):
        raise CaseError(f"{out}: folder is not empty and was not written by `wbc cases export`; "
                        "choose a new folder")
    if not out.is_dir():
        return
    ours = _written_by_export(out)
    for root, dirs, files in os.walk(out):  # a link is not followed: it is removed, never what it points to
        here = Path(root).relative_to(out)
        dirs.sort()
        for name in [*sorted(n for n in files if not _os_file(n)), *dirs]:
            rel = (here / name).as_posix()
            if rel not in ours:
                raise CaseError(f"{out}: holds {rel}, which `wbc cases export` did not write; move it out or choose "
                                "a new folder (a re-export replaces the folder whole)")


def export_cases(
    store: CaseStore, output: str | os.PathLike[str], cases: Sequence[int | str] = (),
    include_open: bool = False, changed_only: bool = False, include_accepted: bool = False,
) -> ExportSummary:
    """Write the reviewed cells of ``cases`` (default: every case) to ``output``; see the module docstring."""
    out = Path(os.path.abspath(output))  # "." has no name to write the folder beside
    if Path.cwd() == out.resolve() or out.resolve() in Path.cwd().parents:
        raise CaseError(f"{output}: is the current folder or holds it; write the export to a folder other than the "
                        "current one (the export is swapped in whole, which would leave the shell in a removed folder)")
    summary = ExportSummary(output=str(out))
    # through a link, the folder it points to is replaced, never the link (before wbc 0.33.0 the link was renamed
    # aside and a folder put in its place: the shared folder kept the earlier export)
    out = output_target(out)[0]
    db = store.engine.url.database if store.engine.url.get_backend_name() == "sqlite" else None
    if db and db != ":memory:" and Path(db).resolve().is_relative_to(out.resolve()):
        raise CaseError(f"{output}: holds the case store {db}; export to another folder (re-exporting replaces the "
                        "folder whole, and the store with it)")
    _check_target(out)
    # each case once, however often it is named (by id and by name too): a cell twice would be learnt twice
    ids = list(dict.fromkeys(store.case_id(c) for c in cases)) if cases else [c.id for c in store.list_cases()]
    where = store_place(store)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        # every call of every exported case, its filters left for later: the same fields made into two cases (on the
        # command line and on the review page) gave each cell twice, under two labels where the reviewers differed
        # (before wbc 0.36.0), and a call the filters drop (not a WBC, unchanged under --changed-only) still differs
        calls: list[_Call] = []
        for cid in ids:
            doc = store.case_document(cid)
            if not doc["signed_by"] and not include_open:
                summary.skipped_open.append(doc["name"])
                continue
            crops = store.crops(cid)
            summary.cases.append(doc["name"])
            fields = {f["id"]: f for f in doc["fields"]}
            for cell in doc["cells"]:
                label = cell["label"]
                if cell["reviewed"]:
                    source, reviewer = REVIEWED, cell["reviewed_by"] or ""
                elif include_accepted and doc["signed_by"]:
                    source, reviewer = ACCEPTED, ""
                else:
                    source, reviewer = "", ""
                f = fields[cell["field_id"]]
                row: list[object] | None = None
                if source and label not in SPECIAL_LABELS and (cell["changed"] or not changed_only):
                    rel = f"{safe_stem(label)}/case{cid}_f{cell['field']}_c{cell['cell_no']}_{cell['id']}.png"
                    (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                    (tmp / rel).write_bytes(crops[cell["id"]])
                    row = [rel, label, "", -1, "", doc["name"], cid, cell["id"], cell["model_label"],
                           doc.get("model_id") or "", int(cell["changed"]), source, reviewer, doc["signed_by"] or "",
                           where]
                calls.append(_Call(
                    label, source, reviewer,
                    f.get("sha1") or "crop:" + hashlib.sha1(crops[cell["id"]]).hexdigest(), f["id"],
                    tuple(cell["box"]), (f["image"], f["position"], doc["name"]), row))
        rows = _once(calls, summary, tmp, changed_only)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow([*MANIFEST_COLUMNS, *EXTRA_COLUMNS])
        # the extra columns hold people's text (case name, reviewer): formula-safe for a spreadsheet; the manifest's
        # own columns stay as read_manifest reads them (a path and a class name, written by wbc)
        w.writerows([*r[:len(MANIFEST_COLUMNS)], *map(neutralise, r[len(MANIFEST_COLUMNS):])] for r in rows)
        (tmp / "manifest.csv").write_text(buf.getvalue(), encoding="utf-8")
        (tmp / MARKER).write_text("written by wbc cases export\n", encoding="utf-8")
        os.chmod(tmp, 0o755)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary.n_cells = len(rows)
    summary.n_accepted = sum(1 for r in rows if r[len(MANIFEST_COLUMNS) + EXTRA_COLUMNS.index("label_source")]
                             == ACCEPTED)
    summary.counts = dict(Counter(str(r[1]) for r in rows))
    return summary


def store_place(store: CaseStore) -> str:
    """Where ``store`` is, as an export records it (the ``store`` column, which `wbc adapt` copies into the model it
    shares): a SQLite store's file name alone (no folder: a user's home path is not the export's to pass on), else
    its URL rebuilt from the driver, host, port and database alone, so that no user name, password or query parameter
    (``?user=``, ``?password=``, ``sslkey=``) goes with it. Before wbc 0.37.0's release the file's absolute path was
    recorded, and the URL kept its user name and its query, a password given there included."""
    u = store.engine.url
    if u.get_backend_name() == "sqlite":
        return Path(u.database).name if u.database and u.database != ":memory:" else "sqlite (in memory)"
    return URL.create(u.drivername, host=u.host, port=u.port, database=u.database).render_as_string()


@dataclass
class _Call:
    """One cell of an exported case as :func:`_once` compares it with the same cell in other cases."""

    label: str  # the reviewer's call, else the model's
    source: str  # REVIEWED, ACCEPTED, or "": nobody reviewed it and it is not exported
    reviewer: str
    file: str  # its field's file SHA-1, or "crop:" and its crop's SHA-1 for a field stored without one
    field_id: int
    box: tuple[int, ...]
    origin: tuple[str, int, str]  # its field's file name and position, and its case's name
    row: list[object] | None  # its manifest row, its crop written, when it passes the filters on its own


def _same_cells(calls: Sequence[_Call]) -> list[list[int]]:
    """``calls`` (indices) in groups of one cell each: the cells of one file's fields in different cases, paired one
    to one by box overlap (IoU >= :data:`wbc.evaluate.smears.SAME_CELL_IOU`, the closest first). The same file
    analysed twice boxes a cell a few pixels apart when the segmentation's settings differ (`wbc cases create
    --pixel-size` against the server's); before wbc 0.36.0 cells were matched by their exact box, so such a cell was
    exported twice, under both labels. A field stored without its file's SHA-1 is matched by its crop's."""
    parent = list(range(len(calls)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    by_file: dict[str, dict[int, list[int]]] = {}
    for i, c in enumerate(calls):
        by_file.setdefault(c.file, {}).setdefault(c.field_id, []).append(i)
    for file, fields in by_file.items():
        if file.startswith("crop:"):  # the same crop: the same cell
            first, *rest = [i for idx in fields.values() for i in idx]
            for i in rest:
                parent[root(i)] = root(first)
            continue
        for a, b in itertools.combinations(fields.values(), 2):  # a field is in a case once (by its SHA-1)
            pairs = sorted((-box_iou(calls[i].box, calls[j].box), i, j) for i in a for j in b)
            paired: set[int] = set()
            for neg, i, j in pairs:
                if -neg < SAME_CELL_IOU:
                    break
                if i not in paired and j not in paired:
                    paired |= {i, j}
                    parent[root(j)] = root(i)
    groups: dict[int, list[int]] = {}
    for i in range(len(calls)):
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())


def _once(calls: Sequence[_Call], summary: ExportSummary, tmp: Path, changed_only: bool) -> list[list[object]]:
    """The manifest rows of ``calls`` with each cell once (:func:`_same_cells`), the crops of the rows left out removed
    from ``tmp``. A cell's calls in several cases are compared before any filter: a reviewer's calls, else those
    accepted at sign-off; calls that differ keep none, since `wbc adapt` would learn both labels, and a reviewer's "not
    a WBC" or a call `--changed-only` drops differs as much as another class (before wbc 0.36.0 those were filtered
    out first, and the other case's label was exported without a word). A cell agreed on is written once, if a row of
    it passes the filters. Each field in several cases is said in ``summary.repeated``, each cell left out so in
    ``summary.conflicts``; the cells left out as not a WBC or nobody's review are counted once each."""
    keep: list[int] = []
    repeated: dict[tuple[tuple[str, int, str], ...], list[int]] = {}  # the field's places -> [cells once, left out]
    for idx in _same_cells(calls):
        pool = [i for i in idx if calls[i].source == REVIEWED] or [i for i in idx if calls[i].source == ACCEPTED]
        if not pool:
            if not changed_only:  # nobody changed it: --changed-only leaves it out anyway
                summary.n_unreviewed += 1
            continue
        places = tuple(dict.fromkeys(calls[i].origin for i in idx))
        first = calls[pool[0]]
        if len({calls[i].label for i in pool}) > 1:
            repeated.setdefault(places, [0, 0])[1] += 1
            labels = ", ".join(f"{c.label} in case {c.origin[2]!r}" + (f" (by {c.reviewer})" if c.reviewer else "")
                             for c in (calls[i] for i in pool))
            summary.conflicts.append(f"{first.origin[0]}, the cell at {' '.join(map(str, first.box))}: {labels}: "
                                     "labelled two ways, left out")
            continue
        if first.label in SPECIAL_LABELS:
            summary.n_excluded += 1
            continue
        i = next((i for i in pool if calls[i].row is not None), None)  # --changed-only: a reviewer who changed it
        if i is not None:
            keep.append(i)
            if len(places) > 1:
                repeated.setdefault(places, [0, 0])[0] += 1
    for places, (once, two_ways) in repeated.items():
        if len({image for image, _, _ in places}) == 1:
            which = f"{places[0][0]} is " + " and ".join(f"field {pos} of case {case!r}" for _, pos, case in places)
        else:
            which = " and ".join(f"{image} (field {pos} of case {case!r})" for image, pos, case in places) + \
                " are the same file"
        said = ([f"its {once} cell(s) exported from each case are written once"] if once else []) + (
            [f"{two_ways} labelled two ways are left out"] if two_ways else [])
        summary.repeated.append(f"{which}: {'; '.join(said)}")
    kept = set(keep)
    for i, c in enumerate(calls):
        if c.row is not None and i not in kept:
            (tmp / str(c.row[0])).unlink()
    for d in tmp.iterdir():  # a class whose every crop was left out
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()
    return [c.row for i, c in enumerate(calls) if i in kept and c.row is not None]
