"""Class-per-folder datasets, reproducible stratified splits, and split manifests (no torch here).

A *manifest* is a CSV with columns ``path,label,split,fold,sha1``. It pins exactly which file went
where, so every evaluation of a run can be repeated. Paths under the data root are stored relative to
it, so a manifest made on one machine works on another with a different ``WBC_DATA_DIR``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from wbc.errors import WbcError
from wbc.io import atomic_write_csv, file_sha1, files_under, is_image_file
from wbc.labels import canonical_label
from wbc.paths import data_root

T = TypeVar("T")

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ("path", "label", "split", "fold", "sha1")

#: :func:`scan_folder`'s reason for a folder whose name is no class (:func:`wbc.labels.canonical_label`).
UNKNOWN_FOLDER = "unknown class folder"


@dataclass(frozen=True)
class Sample:
    """One labelled image. ``fold`` is -1 outside cross-validation."""

    path: Path
    label: str
    split: str = ""
    fold: int = -1
    sha1: str = ""


@dataclass
class ScanResult:
    samples: list[Sample]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def counts(self) -> Counter[str]:
        return Counter(s.label for s in self.samples)


def scan_folder(
    root: str | os.PathLike[str],
    mapping: dict[str, str] | None = None,
    classes: Sequence[str] | None = None,
) -> ScanResult:
    """List the images of a class-per-folder dataset under ``root``.

    Folder names are mapped to canonical classes (``NEUTROPHIL`` -> ``neutrophil``). Unknown folders,
    non-image files, empty class folders, links to missing images and subfolders that cannot be listed are reported
    in ``skipped`` instead of failing, so one stray file never stops a training run. ``classes`` restricts the
    result to those classes.
    """
    root = Path(root)
    if not root.is_dir():
        raise WbcError(f"{root}: dataset folder not found")
    samples: list[Sample] = []
    skipped: list[tuple[str, str]] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        label = canonical_label(folder.name, mapping)
        if label is None:
            skipped.append((str(folder), UNKNOWN_FOLDER))
            continue
        if classes is not None and label not in classes:
            skipped.append((str(folder), f"class {label!r} not used"))
            continue
        left_out: list[str] = []  # a link to a missing image, a subfolder it may not list: dropped in silence before
        files = files_under(folder, left_out)  # wbc 0.35.0
        skipped += [(path, reason) for path, _, reason in (line.partition(": ") for line in left_out)]
        images = [p for p in files if is_image_file(p)]
        skipped += [(str(p), "not an image file") for p in files if not is_image_file(p)]
        if not images:
            skipped.append((str(folder), "empty class folder"))
        samples += [Sample(p, label) for p in images]
    if not samples:
        raise WbcError(f"{root}: no images in class folders (expected {root}/<class>/<image>)")
    return ScanResult(samples, skipped)


def _group_by_content(samples: Sequence[Sample]) -> list[list[int]]:
    """Indices grouped by identical file content, so duplicates land in the same split."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        groups[s.sha1 or file_sha1(s.path)].append(i)
    return list(groups.values())


def stratified_split(
    samples: Sequence[Sample],
    fractions: tuple[float, float, float] = (0.70, 0.15, 0.15),
    seed: int = 0,
    folds: int = 0,
) -> list[Sample]:
    """Assign ``train``/``val``/``test`` per class, deterministically for a seed.

    Exact duplicates (same SHA-1) are kept together. With ``folds`` = K > 1, the non-test part
    (train + val) is also cut into K stratified folds (``fold`` column) for cross-validation.
    """
    if abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise WbcError(f"split fractions {fractions} must be non-negative and sum to 1")
    with_hash = [s if s.sha1 else Sample(s.path, s.label, sha1=file_sha1(s.path)) for s in samples]
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[list[int]]] = defaultdict(list)
    for group in _group_by_content(with_hash):
        by_label[with_hash[group[0]].label].append(group)
    out: list[Sample | None] = [None] * len(with_hash)
    fold_i = 0  # carried from class to class: restarted at 0 for each, every class's remainder went to the first folds
    for label in sorted(by_label):
        groups = by_label[label]
        order = rng.permutation(len(groups))
        n = sum(len(g) for g in groups)
        n_test = round(n * fractions[2])
        n_val = round(n * fractions[1])
        taken = 0
        for gi in order:
            split = "test" if taken < n_test else "val" if taken < n_test + n_val else "train"
            fold = -1
            if folds > 1 and split != "test":
                fold = fold_i % folds
                fold_i += 1
            for i in groups[gi]:
                s = with_hash[i]
                out[i] = Sample(s.path, s.label, split, fold, s.sha1)
            taken += len(groups[gi])
    return [s for s in out if s is not None]


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


def write_manifest(path: str | os.PathLike[str], samples: Sequence[Sample], root: Path | None = None) -> None:
    root = root or data_root()
    rows = [(_relative(s.path, root), s.label, s.split, s.fold, s.sha1) for s in samples]
    atomic_write_csv(path, MANIFEST_COLUMNS, rows)


#: The separators a manifest may use: a spreadsheet in a comma-decimal locale (German, French, Dutch, ...) saves
#: "CSV" with ``;``.
DELIMITERS = (",", ";", "\t")


def sniff_delimiter(text: str) -> str:
    """The separator of a CSV ``text``: of :data:`DELIMITERS`, the one that cuts its first line into the most fields
    (a comma when none does).

    >>> sniff_delimiter("path;label\\r\\na.png;neutrophil"), sniff_delimiter("path,label\\n"), sniff_delimiter("path")
    (';', ',', ',')
    """
    header = text.split("\n", 1)[0]
    return max(DELIMITERS, key=lambda d: (header.count(d), d == ","))


def read_manifest(
    path: str | os.PathLike[str], split: str | None = None, root: Path | None = None
) -> list[Sample]:
    """Read a manifest (:func:`read_manifest_rows`, the samples alone)."""
    return [s for s, _ in read_manifest_rows(path, split, root)]


def read_manifest_rows(
    path: str | os.PathLike[str], split: str | None = None, root: Path | None = None
) -> list[tuple[Sample, dict[str, str]]]:
    """Each row of a manifest as its sample and all its cells, by column (wbc's columns by wbc's names, the others as
    written, stripped: ``model_label``, ``case`` of a `wbc cases export`).

    Read a manifest, resolving relative paths against the data root (``root`` or the default); without
    ``root``, a relative path that names a file beside the manifest (``wbc cases export``) is taken from there.
    Saved by a spreadsheet, a manifest may be separated by ``;`` (:func:`sniff_delimiter`) and spell its columns
    ``Path``, ``Label``: since wbc 0.32.0 read as well (before, "missing column(s)"); ``Split``, ``Fold`` and ``SHA1``
    too since wbc 0.36.0, where their values are wbc's (:func:`manifest_columns`), and split values in any case and
    in a spreadsheet's spelling (``Test``, ``Validation``: :func:`split_name`)."""
    p = Path(path)
    explicit_root = root
    root = root or data_root()
    try:  # utf-8-sig: a spreadsheet's "CSV UTF-8" begins with a byte-order mark
        with p.open(newline="", encoding="utf-8-sig") as fh:
            text = fh.read()
            reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=sniff_delimiter(text))
            rows = list(reader)
            names = manifest_columns(reader.fieldnames or [], rows, str(p))
            missing = {"path", "label"} - set(names.values())
            if missing:
                raise WbcError(f"{p}: not a manifest, missing column(s) {sorted(missing)}")
    except FileNotFoundError:
        raise WbcError(f"{p}: manifest not found") from None
    except IsADirectoryError:
        raise WbcError(f"{p}: is a folder, not a manifest CSV") from None
    except UnicodeDecodeError:
        raise WbcError(f"{p}: not a UTF-8 text file (a spreadsheet saves one as \"CSV UTF-8\")") from None
    except csv.Error as exc:
        raise WbcError(f"{p}: not a readable CSV ({exc})") from None
    out = []
    for line, r in enumerate(rows, start=2):  # line 1: the header
        # a row cut short by an editor has None in its missing cells: read as empty ones (an unlabelled row)
        cells = {names.get(k, k): v or "" for k, v in r.items() if k is not None}
        if not any(v.strip() for v in cells.values()):  # ",,,": a spreadsheet's trailing empty row
            continue
        if (part := split_name(cells.get("split", ""))) is not None:  # "Test", " Validation": wbc's test, val
            cells["split"] = part
        if split and cells.get("split", "") != split:
            continue
        if not cells["path"].strip():
            raise WbcError(f"{p}: row {line}: no path")
        fp = Path(cells["path"])
        if not fp.is_absolute():
            beside = p.parent / fp
            fp = beside if explicit_root is None and beside.is_file() else root / fp
        fold = _fold(cells.get("fold", ""), f"{p}: row {line}")
        out.append((Sample(fp, cells["label"], cells.get("split", ""), fold, cells.get("sha1", "").strip().lower()),
                    {k: v.strip() for k, v in cells.items()}))
    return out


#: The ``label_source`` of a `wbc cases export` row whose label is the model's own call, accepted when the case was
#: signed off without anyone opening the cell (``wbc cases export --include-accepted``; ``wbc.cases.export.ACCEPTED``).
ACCEPTED_AT_SIGN_OFF = "accepted_at_sign_off"


@dataclass
class RecordedCalls:
    """The calls the model made on labelled cells when `wbc analyze` answered them (a `wbc cases export`'s
    ``model_label``), one per cell, and the model that made each (``model_ids``; ``""`` where the export does not
    say)."""

    labels: list[str]
    model_ids: list[str]
    # where the labels came from, for the adapted model's metadata (:meth:`provenance`): the manifest's SHA-1, and per
    # labelled cell its case (name, id), case store and ``label_source``
    manifest: str = ""
    manifest_sha1: str = ""
    cases: list[tuple[str, str]] = field(default_factory=list)
    stores: list[str] = field(default_factory=list)
    label_sources: list[str] = field(default_factory=list)

    def provenance(self) -> dict[str, Any]:
        """What an adapted model records of the export it learnt from (``extra["adapt"]["settings"]["export"]``):
        the manifest and its SHA-1 (an export is replaced whole by the next one into its folder), the cases (name,
        id and cells), the case stores, how many labels came from each ``label_source`` (``reviewed``, or the
        model's own calls ``accepted_at_sign_off``) and how many calls each model made."""
        cases = Counter(self.cases)
        return {"manifest": self.manifest, "manifest_sha1": self.manifest_sha1,
                "cases": [{"name": name, "id": cid, "cells": n} for (name, cid), n in cases.items()],
                "stores": sorted({s for s in self.stores if s}),
                "label_sources": dict(Counter(self.label_sources).most_common()),
                "models": self.by_model()}

    @property
    def model_id(self) -> str:
        """The one model that made every call, or ``""`` (several, or not said)."""
        ids = set(self.model_ids)
        return ids.pop() if len(ids) == 1 else ""

    def by_model(self) -> dict[str, int]:
        """How many of the calls each model made, most first (``""``: not said)."""
        return dict(Counter(self.model_ids).most_common())


def recorded_calls(manifest: str | os.PathLike[str], files: Sequence[str | os.PathLike[str]],
                   root: Path | None = None) -> RecordedCalls | None:
    """The calls recorded for ``files`` in ``manifest`` (the CSV, or a folder's ``manifest.csv``: what `wbc cases
    export` writes), read as :func:`read_manifest_rows` reads it (its paths beside it first), when it has a
    ``model_label`` for every one of them; else None (no such manifest or column, an unreadable one, a file not in it).

    `wbc analyze` named those cells in their fields: each field's colours calibrated on its red cells, the field's
    cytoplasm colours weighed between lymphocyte and erythroblast, over at least four views, platelet never answered.
    The exported crops keep the field's raw colours, and a model scored on them is not scored as the lab's cells were
    answered (`wbc adapt`'s "before", `wbc evaluate` on an export: docs/review.md)."""
    p = Path(manifest)
    csv_path = p if p.suffix.lower() == ".csv" else p / "manifest.csv"
    if not csv_path.is_file():
        return None
    try:
        rows = read_manifest_rows(csv_path, root=root)
    except (WbcError, OSError):
        return None
    calls = {os.path.realpath(s.path): cells for s, cells in rows if cells.get("model_label")}
    got = [calls.get(os.path.realpath(f)) for f in files]
    if not got or any(g is None for g in got):
        return None
    cells = [g for g in got if g is not None]
    try:
        sha1 = file_sha1(csv_path)
    except OSError:
        sha1 = ""
    return RecordedCalls([c["model_label"] for c in cells], [c.get("model_id", "") for c in cells],
                         str(csv_path.resolve()), sha1, [(c.get("case", ""), c.get("case_id", "")) for c in cells],
                         [c.get("store", "") for c in cells], [c.get("label_source", "") for c in cells])


#: The splits a manifest row may name (empty: not split yet, dealt into train and val by `wbc train`).
SPLITS = ("train", "val", "test", "")


#: A spreadsheet's spellings of wbc's splits (any case), read as wbc's: a lab's ``Train,Validation,Test`` column.
SPLIT_ALIASES = {"training": "train", "validation": "val", "valid": "val", "testing": "test"}


def split_name(value: str) -> str | None:
    """The split (of :data:`SPLITS`) a manifest's split cell names, in any case or spelling of
    :data:`SPLIT_ALIASES`; None for another value (a lab's own ``A``).

    >>> split_name(" Validation "), split_name("TEST"), split_name(""), split_name("A")
    ('val', 'test', '', None)
    """
    value = value.strip().lower()
    value = SPLIT_ALIASES.get(value, value)
    return value if value in SPLITS else None


def manifest_columns(fieldnames: Sequence[str], rows: Sequence[dict[str | None, str | None]],
                     where: str = "manifest") -> dict[str, str]:
    """A manifest's column names as wbc reads them (header -> ``path``, ``label``, ...; others as written).

    ``Path`` and ``Label`` in any case or with spaces are wbc's. So spelt, ``Split``, ``Fold`` and ``SHA1`` are wbc's
    only where their values are: a lab's own "Split" (``A``, ``B``) or "Fold" column stays its own (4cba6eb), while a
    spreadsheet's ``Path,Label,Split`` manifest keeps its test rows held out (before wbc 0.36.0 its ``Split`` column
    was not read, and `wbc train` dealt the test rows into train and val without a word).

    - ``Split``: wbc's where every value names a split (:func:`split_name`: ``Test``, ``Validation``, or empty); the
      lab's own where none does; refused (a :class:`WbcError` naming ``where``, the row and the value) where some do
      and some do not: dropped, the column's test rows would be trained on without a word.
    - ``Fold``: wbc's where every value is a whole number or empty, and the manifest has wbc's ``sha1`` column too, as
      every manifest wbc writes does: a lab's own cross-validation folds (``Path,Label,Split,Fold``) are not taken for
      the members of a wbc run (`wbc evaluate` said its val rows trained them).
    - ``SHA1``: wbc's where every value is 40 hex digits or empty.

    >>> manifest_columns(["Path", "Label", " Split", "Fold"], [{" Split": "Test", "Fold": "1"}])
    {'Path': 'path', 'Label': 'label', ' Split': 'split'}
    >>> manifest_columns(["Path", "Label", "Split", "Fold", "SHA1"], [{"Split": "Train", "Fold": "1", "SHA1": ""}])
    {'Path': 'path', 'Label': 'label', 'Split': 'split', 'Fold': 'fold', 'SHA1': 'sha1'}
    """
    def fits(key: str, value: str) -> bool:
        value = value.strip()
        if key == "sha1":
            return not value or (len(value) == 40 and all(c in "0123456789abcdefABCDEF" for c in value))
        try:
            return not value or float(value).is_integer()
        except ValueError:
            return False

    out: dict[str, str] = {}
    for name in fieldnames:
        key = name.strip().lower()
        if key in ("path", "label"):
            out[name] = key
        elif key == "split" and key not in fieldnames:
            values = [(line, r.get(name) or "") for line, r in enumerate(rows, start=2)]  # line 1: the header
            other = next(((line, v) for line, v in values if split_name(v) is None), None)
            if other is None:
                out[name] = key
            elif any(split_name(v) for _, v in values):
                line, value = other
                raise WbcError(f"{where}: row {line}: {name.strip()} {value.strip()!r} is not a split, though other "
                               "rows name splits; a row's split is train, val or test (or Training, Validation, Valid, "
                               "Testing; any case) or empty")
        elif key in ("fold", "sha1") and key not in fieldnames and all(fits(key, r.get(name) or "") for r in rows):
            out[name] = key
    if "sha1" not in out.values() and "sha1" not in fieldnames:  # no wbc manifest: a lab's own folds
        out = {name: key for name, key in out.items() if key != "fold"}
    return out


def recorded_data_root(manifest: str | os.PathLike[str]) -> Path | None:
    """The data root a run's ``manifest.csv`` is relative to, as the run recorded it (``config.json``'s ``data_root``,
    since wbc 0.36.0); None for any other file, or a run that recorded none."""
    import json

    p = Path(manifest)
    if p.name != "manifest.csv":
        return None
    try:
        saved = json.loads((p.parent / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    root = saved.get("data_root") if isinstance(saved, dict) else None
    return Path(root) if isinstance(root, str) and root else None


def manifest_data_root(manifest: str | os.PathLike[str], given: str | os.PathLike[str] | None = None
                       ) -> tuple[Path, str]:
    """(the data root to read ``manifest``'s relative paths under, a note saying so or "").

    ``given`` (``--data-root``) when set; else the default root, unless the manifest's images are missing there and
    found under the root its run was trained with (:func:`recorded_data_root`), which is then taken and said: a run
    trained with ``--data-root`` was read back under ``$WBC_DATA_DIR`` by every later command, and none of its images
    was found (before wbc 0.36.0)."""
    root = data_root(given)
    recorded = None if given else recorded_data_root(manifest)
    if recorded is None or recorded.resolve() == root.resolve():
        return root, ""
    try:
        pairs = [(a.path, b.path) for a, b in zip(read_manifest(manifest, root=root),
                                                   read_manifest(manifest, root=recorded), strict=True)
                 if a.path != b.path][:20]  # the relative rows, under each root
    except WbcError:
        return root, ""
    if not pairs or any(a.exists() for a, _ in pairs) or not any(b.exists() for _, b in pairs):
        return root, ""
    return recorded, (f"{manifest}: its images are not under the data root {root}; reading them under {recorded}, "
                      "the root its run was trained with (--data-root names another)")


def _fold(text: str, where: str) -> int:
    """A manifest's ``fold`` cell: empty is -1 (no cross-validation); ``1.0``, as a spreadsheet writes 1, is 1.

    >>> _fold("", "m.csv: row 2"), _fold("1.0", "m.csv: row 2"), _fold("3", "m.csv: row 2")
    (-1, 1, 3)
    """
    try:
        value = float(text or -1)
    except ValueError:
        raise WbcError(f"{where}: fold {text!r} is not a number") from None
    if not value.is_integer():
        raise WbcError(f"{where}: fold {text!r} is not a whole number")
    return int(value)


def sample_paths(paths: list[T], max_cells: int, seed: int = 0) -> list[T]:
    """``paths`` when there are at most ``max_cells`` (or ``max_cells`` is 0), else a random ``max_cells`` of them
    drawn with ``seed``, in their own order: the same folder always gives the same sample.

    >>> sample_paths(list(range(10)), 4)
    [2, 4, 5, 7]
    >>> sample_paths(list(range(10)), 0) == sample_paths(list(range(10)), 10) == list(range(10))
    True
    """
    if max_cells <= 0 or len(paths) <= max_cells:
        return list(paths)
    keep = np.sort(np.random.default_rng(seed).choice(len(paths), max_cells, replace=False))
    return [paths[int(i)] for i in keep]


def cap_per_class(samples: Sequence[Sample], max_per_class: int, seed: int = 0) -> list[Sample]:
    """Up to ``max_per_class`` random samples of every label (all if <= 0), reproducible for a seed and
    in input order within each label, so that fitting statistics on a subset costs bounded time."""
    if max_per_class <= 0:
        return list(samples)
    rng = np.random.default_rng(seed)
    out: list[Sample] = []
    for label in sorted({s.label for s in samples}):
        group = [s for s in samples if s.label == label]
        out += [group[i] for i in sorted(rng.permutation(len(group))[:max_per_class])]
    return out


def manifest_hash(samples: Sequence[Sample]) -> str:
    """A short hash of which files (by content when known) carry which labels."""
    h = hashlib.sha256()
    for s in sorted(samples, key=lambda s: (s.sha1 or str(s.path), s.label)):
        h.update(f"{s.sha1 or s.path.name}\t{s.label}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:16]


def split_hash(samples: Sequence[Sample]) -> str:
    """A short hash of which files (by content when known) carry which labels in which split: what a model records of
    the manifest it was trained on (``extra["split_hash"]``, since wbc 0.33.0), so that `wbc evaluate` can tell the
    run's own split, and so its held-out test rows, wherever the manifest or the model file is.

    >>> from dataclasses import replace
    >>> a = [Sample(Path("x.jpg"), "neutrophil", "train", sha1="ab"), Sample(Path("y.jpg"), "lymphocyte", "test")]
    >>> split_hash(a) == split_hash(a[::-1]), split_hash(a) == split_hash([a[0], replace(a[1], split="train")])
    (True, False)
    """
    h = hashlib.sha256()
    for key in sorted(f"{s.sha1 or s.path.name}\t{s.label}\t{s.split}" for s in samples):
        h.update(f"{key}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:16]


def load_dataset(
    source: str | os.PathLike[str],
    split: str | None = None,
    mapping: dict[str, str] | None = None,
) -> ScanResult:
    """A class-per-folder directory or a manifest CSV, as samples (one entry point for every command). Labels are
    read in any known spelling (``Neutrophils``, ``EOSINOPHIL``: :func:`wbc.labels.canonical_label`), a manifest's
    as a folder's; unknown ones are kept as written."""
    p = Path(source)
    if p.is_file() and p.suffix.lower() == ".csv":
        samples = [Sample(s.path, canonical_label(s.label, mapping) or s.label, s.split, s.fold, s.sha1)
                   for s in read_manifest(p, split=split)]
        return ScanResult(samples)
    return scan_folder(p, mapping)
