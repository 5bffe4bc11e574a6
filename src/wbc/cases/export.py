"""Export reviewed cells as ``<class>/<image>`` crops plus ``manifest.csv``: the input ``wbc adapt --data`` takes.

Only signed-off cases by default, only cells with a class (not ``not_wbc`` / ``unidentifiable``), and only cells
a person reviewed (confirmed or changed): a cell nobody opened carries the model's own call, accepted at sign-off,
and training on it teaches the model its own answers (and inflates ``wbc adapt``'s "before" accuracy).
``include_accepted`` adds those cells of signed-off cases too. Each row says where its label came from
(``label_source``: ``reviewed``, or ``accepted_at_sign_off`` with an empty ``reviewer``). A cell of a field in several
exported cases is written once, and left out where reviewers labelled it two ways (said in the summary).

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
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from wbc.cases.store import SPECIAL_LABELS, CaseError, CaseStore, safe_stem
from wbc.data import MANIFEST_COLUMNS
from wbc.formats import neutralise
from wbc.io import output_target

#: Marks a folder written by :func:`export_cases` (so a re-export may replace it).
MARKER = ".wbc-cases-export"
#: ``model_label`` and ``model_id``: the call `wbc analyze` made and the model that made it (since wbc 0.34.0), which
#: `wbc adapt` scores as "before" (:func:`wbc.adapt.recorded_calls`): the crops keep the field's raw colours, and the
#: original model scored on them is not the model the lab used.
EXTRA_COLUMNS = ("case", "case_id", "cell_id", "model_label", "model_id", "changed", "label_source", "reviewer",
                 "signed_by")
#: ``label_source``: a person reviewed the cell (confirmed or changed its call; ``reviewer`` names them) ...
REVIEWED = "reviewed"
#: ... or nobody opened it and the model's call was accepted when the case was signed off (``include_accepted``).
ACCEPTED = "accepted_at_sign_off"


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
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        rows: list[list[object]] = []
        # each cell by its field's file and box: the same fields made into two cases (on the command line and on the
        # review page) gave each cell twice, under two labels where the reviewers differed (before wbc 0.36.0)
        keys: list[tuple[str, ...]] = []
        origins: list[tuple[str, int, str, str]] = []
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
                if label in SPECIAL_LABELS:
                    summary.n_excluded += 1
                    continue
                if changed_only and not cell["changed"]:
                    continue
                if cell["reviewed"]:
                    source, reviewer = REVIEWED, cell["reviewed_by"] or ""
                elif include_accepted and doc["signed_by"]:
                    source, reviewer = ACCEPTED, ""
                else:
                    summary.n_unreviewed += 1
                    continue
                rel = f"{safe_stem(label)}/case{cid}_f{cell['field']}_c{cell['cell_no']}_{cell['id']}.png"
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                (tmp / rel).write_bytes(crops[cell["id"]])
                rows.append([rel, label, "", -1, "", doc["name"], cid, cell["id"], cell["model_label"],
                             doc.get("model_id") or "", int(cell["changed"]), source, reviewer, doc["signed_by"] or ""])
                f = fields[cell["field_id"]]
                keys.append((f["sha1"], *map(str, cell["box"])) if f.get("sha1")
                            else ("crop", hashlib.sha1(crops[cell["id"]]).hexdigest()))
                origins.append((f["image"], f["position"], doc["name"], " ".join(map(str, cell["box"]))))
        rows = _once(rows, keys, origins, summary, tmp)
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


def _once(rows: list[list[object]], keys: list[tuple[str, ...]], origins: list[tuple[str, int, str, str]],
          summary: ExportSummary, tmp: Path) -> list[list[object]]:
    """``rows`` with each cell once (``keys``: its field's SHA-1 and box, or its crop's SHA-1; ``origins``: its field's
    file name, position, case and the cell's box), the crops of the rows left out removed from ``tmp``. A cell in
    several cases keeps one row, a reviewer's over one accepted at sign-off; one labelled two ways keeps none: `wbc
    adapt` would learn both labels (it names the pair, but counted both in "adapted on N cells" and its accuracy).
    Each field in several cases is said in ``summary.repeated``, each cell left out so in ``summary.conflicts``."""
    source = len(MANIFEST_COLUMNS) + EXTRA_COLUMNS.index("label_source")
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    keep: set[int] = set()
    repeated: dict[tuple[tuple[str, int, str], ...], list[int]] = {}  # the field's places -> [cells once, left out]
    for idx in groups.values():
        if len(idx) == 1:
            keep.add(idx[0])
            continue
        places = tuple(dict.fromkeys(origins[i][:3] for i in idx))
        tally = repeated.setdefault(places, [0, 0])
        pool = [i for i in idx if rows[i][source] == REVIEWED] or idx
        if len({rows[i][1] for i in pool}) == 1:
            keep.add(pool[0])
            tally[0] += 1
            continue
        tally[1] += 1
        calls = ", ".join(f"{rows[i][1]} in case {origins[i][2]!r}"
                          + (f" (by {rows[i][source + 1]})" if rows[i][source + 1] else "") for i in pool)
        summary.conflicts.append(f"{origins[idx[0]][0]}, the cell at {origins[idx[0]][3]}: {calls}: labelled two "
                                 "ways, left out")
    for places, (once, two_ways) in repeated.items():
        if len({image for image, _, _ in places}) == 1:
            which = f"{places[0][0]} is " + " and ".join(f"field {pos} of case {case!r}" for _, pos, case in places)
        else:
            which = " and ".join(f"{image} (field {pos} of case {case!r})" for image, pos, case in places) + \
                " are the same file"
        said = ([f"its {once} cell(s) exported from each case are written once"] if once else []) + (
            [f"{two_ways} labelled two ways are left out"] if two_ways else [])
        summary.repeated.append(f"{which}: {'; '.join(said)}")
    for i, r in enumerate(rows):
        if i not in keep:
            (tmp / str(r[0])).unlink()
    for d in tmp.iterdir():  # a class whose every crop was left out
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()
    return [r for i, r in enumerate(rows) if i in keep]
