"""Resumable, atomic batch analysis of smear fields: the parts every engine shares, and the local engine.

A batch over a folder is a list of :class:`Job` (one input file, one output stem). Each field's results are
committed in a fixed order, each file by an atomic rename: the annotated PNG first, then the JSON. The JSON
is therefore the commit marker: a field whose JSON exists (and names the same image, with the same content: its
SHA-1, classifier and segmenter) is complete, and a run that starts again skips it. ``cells.csv``,
``differential.csv`` and ``errors.csv`` are rebuilt at the end from the JSON documents of this run's inputs, so a
run killed at any moment (SIGTERM, SIGKILL, Ctrl-C) and started again loses nothing and redoes at most the fields
that were in flight, and a re-used output folder never keeps a stale ``cells.csv``: a run removes the pooled files
(:data:`POOLED_FILES`) just before its first commit (:func:`committed`), so one stopped part-way leaves none that
disagrees with the JSON, and one that stops before it (a Ray head not reached) keeps the last run's. A file whose bytes
an earlier input already has (a copy under another name) is left out of the run, so that no field is counted twice; so
is an annotated PNG wbc wrote (:func:`is_annotated_field`), which is no field; an image of the user's own is never
written over (:func:`check_overwrites`).

The Ray engine (:mod:`wbc.distributed`) runs :func:`analyze_job` in an actor pool and commits on the driver
with :func:`commit`; the local engine (:func:`run_local`) does both in one process.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import itertools
import json
import os
import re
import struct
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2

from wbc.errors import WbcError
from wbc.formats import (
    json_text,
    result_to_dict,
    write_cells_csv,
    write_copies_csv,
    write_differential_csv,
    write_errors_csv,
)
from wbc.io import (
    atomic_write_bytes,
    file_sha1,
    iter_image_paths,
    left_out_under,
    no_images_message,
    read_bytes,
)
from wbc.ood import REASONS as OOD_REASONS
from wbc.protocols import ClassifierLike, SegmenterLike

#: Pieces of the temporary names that :func:`wbc.io.atomic_write_bytes` gives files before their rename.
_TEMP_MARKERS: tuple[str, ...] = (".json.", ".png.", ".csv.")

#: The PNG text chunk (keyword ``Software``) right after the header of every annotated field wbc writes (since wbc
#: 0.32.0): it tells wbc's own PNG from a user's, also without its JSON (a run killed between the two renames).
ANNOTATED_TAG = b"Software\x00wbc annotated field"

#: Where a PNG's first chunk after IHDR starts (8-byte signature, IHDR's 13 bytes with length, type and CRC).
_AFTER_IHDR = 33

#: The files a run pools over its fields: removed before it commits a field, written again at its end.
POOLED_FILES: tuple[str, ...] = ("cells.csv", "differential.csv", "errors.csv", "copies.csv", "report.html")


@dataclass(frozen=True)
class Job:
    """One input field and the stem of its outputs (``<stem>.json``, ``<stem>.png``); ``sha1``: its file's content
    (:func:`content_sha1`) when known."""

    path: str
    stem: str
    sha1: str = ""


@dataclass(frozen=True)
class ModelSpec:
    """What it takes to build the models in another process (a Ray actor): files and names, not sessions."""

    model: str | None = None
    segmenter: str = "auto"
    segmenter_model: str | None = None
    threads: int = 1
    pixel_size: float | None = None  # micrometres per pixel; overrides the segmenter's measured scale
    classes: str | None = None  # the chosen label set (--classes; wbc.labels.parse_class_set)
    tta: int | None = None  # flips/rotations averaged per cell (--tta; None: wbc.model.Classifier.tta_views)
    colour_calibration: bool = True  # smear fields' colours calibrated on their red cells (--no-colour-calibration)

    def load(self) -> tuple[Any, Any]:
        """(classifier, segmenter), each an ONNX Runtime session with ``threads`` threads; a label set without a class
        a smear cell can be is refused (:func:`wbc.analyze.checked_smear_label_set`) before the segmenter loads."""
        from wbc.analyze import checked_smear_label_set
        from wbc.segment import get_segmenter

        classifier = self.load_classifier()
        checked_smear_label_set(classifier)
        return classifier, get_segmenter(self.segmenter, self.segmenter_model, threads=self.threads,
                                         pixel_size=self.pixel_size)

    def load_classifier(self) -> Any:
        """The classifier alone, with this spec's label set, views and colour calibration (every engine's)."""
        from wbc.model import load_model

        return (load_model(self.model, threads=self.threads).with_classes(self.classes).with_tta(self.tta)
                .with_colour_calibration(self.colour_calibration))


@dataclass
class FieldOutput:
    """One analysed field, ready to commit: the JSON text and PNG bytes, or the error message."""

    job: Job
    json_text: str = ""
    png: bytes | None = None
    error: str = ""
    seconds_analysis: float = 0.0
    seconds_render: float = 0.0


#: What :class:`AnalyzeSummary` keeps of each field's JSON document (the cells stay in the files).
SUMMARY_KEYS: tuple[str, ...] = ("image", "width", "height", "model_id", "segmenter", "counts", "n_cells", "warnings",
                                  "wbc_version")


@dataclass
class AnalyzeSummary:
    """What a batch did. ``docs``: the :data:`SUMMARY_KEYS` of the JSON document of every input with results
    (this run's and those a previous run finished), in input order; ``analyzed``: how many fields this run
    analysed, ``skipped``: how many it found complete."""

    docs: list[dict[str, Any]] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    model_id: str = ""
    segmenter_id: str = ""
    analyzed: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)
    skipped: int = 0
    seconds_analysis: float = 0.0
    seconds_render: float = 0.0
    stems: dict[str, str] = field(default_factory=dict)  # each field's image, as in ``docs``: its output stem
    copies: list[tuple[str, str]] = field(default_factory=list)  # (file left out, the input with the same bytes)
    earlier_outputs: dict[str, int] = field(default_factory=dict)  # images left out, by earlier output folder
    # (output stem, the other image whose results it held, this run's input): results this run replaced or removed
    replaced: list[tuple[str, str, str]] = field(default_factory=list)
    # over every field's classified cells (as ``docs``): how many, how many flagged for review, how many of those
    # unlike the training cells (the run's own out-of-distribution sentence, :func:`wbc.ood.ood_sentence`)
    n_classified: int = 0
    n_review: int = 0
    n_ood: int = 0
    # how many of those are most likely a class the label set left out, by class (:func:`wbc.classify.outside_sentence`)
    outside: dict[str, int] = field(default_factory=dict)
    # those of them left out because a smear's differential does not count them, no --classes having left them out
    outside_smear: set[str] = field(default_factory=set)
    # fields an earlier run had finished that this one analysed again, by why (:func:`redo_reason`)
    redone: dict[str, int] = field(default_factory=dict)


#: The most bytes of an output stem: ``<stem>.json`` stays within :data:`wbc.io.NAME_MAX`.
MAX_STEM_BYTES = 250


def capped(name: str, path: Path) -> str:
    """``name``, or where it is over :data:`MAX_STEM_BYTES` bytes its start and 8 hex digits of the SHA-1 of ``path``
    made absolute: a legal image name of 252-255 bytes (or a long folder's name before it) would give an output name
    no disk takes. Absolute (:func:`os.path.abspath`, links kept), so a resume with the folder spelled otherwise
    (``.``, ``/data/slide1``, ``slide1``) finds the same name.

    >>> len(capped("m" * 300, Path("m.jpg"))), capped("x", Path("x.jpg"))
    (250, 'x')
    """
    if len(os.fsencode(name)) <= MAX_STEM_BYTES:
        return name
    tag = "-" + hashlib.sha1(os.fsencode(os.path.abspath(path))).hexdigest()[:8]
    while len(os.fsencode(name + tag)) > MAX_STEM_BYTES:
        name = name[:-1]
    return name + tag


def unique_stems(paths: Sequence[Path]) -> list[str]:
    """Output names per input: the stem; when taken, the parent folder's name (of the path made absolute, so ``x.jpg``
    under an input ``.`` is ``slide1_x`` as under ``slide1``; before wbc 0.35.0 it was ``_x``) and the stem; then the
    stem and a number. Every name is checked against every name handed out, ignoring case (a case-insensitive disk
    would otherwise write two fields to one file), and is at most :data:`MAX_STEM_BYTES` long (:func:`capped`).

    >>> unique_stems([Path("a/x.jpg"), Path("a/x_2.jpg"), Path("b/x.jpg"), Path("c/b/x.jpg"), Path("d/X.png")])
    ['x', 'x_2', 'b_x', 'x_3', 'd_X']
    """
    used: set[str] = set()
    out = []
    for p in paths:
        parent = Path(os.path.abspath(p)).parent.name
        candidates = itertools.chain((p.stem, f"{parent}_{p.stem}"),
                                     (f"{p.stem}_{k}" for k in itertools.count(2)))
        stem = next(c for c in (capped(c, p) for c in candidates) if c.casefold() not in used)
        used.add(stem.casefold())
        out.append(stem)
    return out


def plan_jobs(inputs: Iterable[str | os.PathLike[str]], output: str | os.PathLike[str] | None = None) -> list[Job]:
    """The jobs of :func:`plan_run`, without the count of the images it left out."""
    return plan_run(inputs, output)[0]


def plan_run(inputs: Iterable[str | os.PathLike[str]], output: str | os.PathLike[str] | None = None
             ) -> tuple[list[Job], dict[str, int]]:
    """Every image under ``inputs`` (sorted, stable), each file once however often the inputs name it, with its
    output stem; and how many annotated PNGs of wbc it left out in each folder (:func:`is_annotated_field`; a file
    named in ``inputs`` is never left out so). ``output``: the run's output folder, whose own files (the annotated
    PNGs an earlier run wrote there, when it lies inside an input folder) are never taken for fields; images in
    folders below it are."""
    inputs = list(inputs)
    out = Path(output).resolve() if output is not None else None
    seen: set[Path] = set()
    found, ours = [], 0
    for p in iter_image_paths(inputs):
        real = p.resolve()
        if real in seen:
            continue
        seen.add(real)
        if out is not None and real.parent == out:
            ours += 1
            continue
        found.append(p)
    paths, earlier = drop_annotated_fields(inputs, found)
    if not paths:
        if ours and not earlier:
            raise WbcError(f"every image found ({ours}) is in the output folder {output}: give another --output")
        if earlier:
            folders = ", ".join(([str(output)] if ours else []) + list(earlier))
            raise WbcError(f"every image found ({ours + sum(earlier.values())}) is in an output folder of wbc "
                           f"({folders}): annotated results, not smear fields")
        raise WbcError(no_images_message(inputs))
    return [Job(str(p), s) for p, s in zip(paths, unique_stems(paths), strict=True)], earlier


def drop_annotated_fields(inputs: Iterable[str | os.PathLike[str]], paths: Iterable[Path]
                          ) -> tuple[list[Path], dict[str, int]]:
    """``paths`` (images found under ``inputs``) without the annotated PNGs of wbc among them
    (:func:`is_annotated_field`), and how many it left out in each folder. A file ``inputs`` name is kept: asked for
    by name, it is analysed. The one rule of every command that takes smear fields from folders (`wbc analyze`, `wbc
    cases create`), so that none counts an earlier run's drawings of the fields as fields."""
    named = {Path(i).resolve() for i in inputs if Path(i).is_file()}
    kept: list[Path] = []
    earlier: dict[str, int] = {}
    for p in paths:
        if p.resolve() not in named and is_annotated_field(p.resolve()):
            earlier[str(p.parent)] = earlier.get(str(p.parent), 0) + 1
        else:
            kept.append(p)
    return kept, earlier


def is_annotated_field(path: Path) -> bool:
    """Whether the image at ``path`` is an annotated field wbc wrote, not a field: a PNG carrying
    :data:`ANNOTATED_TAG`, or (one a wbc before 0.32.0 wrote) a PNG beside a field's JSON document that names another
    image. Only these, never the user's own fields beside them: before wbc 0.32.0 a second run over a data folder
    counted the first run's annotated PNGs (``results/``) as fields."""
    if path.suffix.lower() != ".png":
        return False  # wbc writes no other image
    if has_annotated_tag(path):
        return True
    try:
        doc = json.loads(path.with_suffix(".json").read_text(encoding="utf-8", errors="surrogateescape"))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and {"image", "counts", "cells"} <= doc.keys() and not same_file(doc["image"], path)


def tag_annotated(png: bytes) -> bytes:
    """``png`` (OpenCV's encoding) with :data:`ANNOTATED_TAG` as a tEXt chunk right after its header."""
    chunk = b"tEXt" + ANNOTATED_TAG
    return (png[:_AFTER_IHDR] + struct.pack(">I", len(ANNOTATED_TAG)) + chunk + struct.pack(">I", zlib.crc32(chunk))
            + png[_AFTER_IHDR:])


#: What :func:`tag_annotated` puts right after a PNG's header: the chunk's length, its type and the tag.
_TAG_CHUNK = struct.pack(">I", len(ANNOTATED_TAG)) + b"tEXt" + ANNOTATED_TAG


def has_annotated_tag(path: Path) -> bool:
    """Whether the PNG at ``path`` carries :data:`ANNOTATED_TAG` where :func:`tag_annotated` puts it (a short read)."""
    try:
        with open(path, "rb") as f:
            head = f.read(_AFTER_IHDR + len(_TAG_CHUNK))
    except OSError:
        return False
    return is_tagged_png(head)


def is_tagged_png(data: bytes) -> bool:
    """Whether ``data`` (a file's bytes, or its first ones) is a PNG wbc tagged as an annotated field
    (:func:`tag_annotated`): how an upload, which has no path nor JSON beside it, is told from a smear field."""
    return data[:8] == b"\x89PNG\r\n\x1a\n" and data[_AFTER_IHDR:_AFTER_IHDR + len(_TAG_CHUNK)] == _TAG_CHUNK


def check_overwrites(out: Path, todo: Sequence[Job], inputs: Sequence[Job], draw: bool) -> None:
    """Refuse, before any work, a run that would write over (or, without ``draw``, remove) a ``<stem>.png`` in
    --output that is one of its ``inputs`` or no annotated field of wbc (:func:`is_annotated_field`): a field of the
    user's own. Before wbc 0.32.0 `wbc analyze slide/more -o slide` replaced ``slide/field.png`` by the annotated copy
    of ``slide/more/field.png`` without a word."""
    named = {Path(j.path).resolve() for j in inputs}
    for j in todo:
        png = out / f"{j.stem}.png"
        if not png.is_file():
            continue
        fate = (f"overwritten by the annotated copy of {j.path}" if draw
                else f"removed by this run's results of {j.path}")
        if png.resolve() in named:
            raise WbcError(f"{png}: an input of this run would be {fate}; give another --output")
        if not is_annotated_field(png):
            raise WbcError(f"{png}: an image wbc did not write (no wbc results beside it) would be {fate}; give "
                           "another --output")


def same_file(a: Any, b: Path) -> bool:
    """Whether ``a`` (a path as a JSON document gives it) is the file ``b``; False when either cannot be read."""
    try:
        return os.path.samefile(str(a), b)
    except (OSError, ValueError):
        return False


def content_sha1(path: str | os.PathLike[str]) -> str:
    """:func:`wbc.io.file_sha1`, or "" when the file cannot be read: its analysis will say why."""
    try:
        return file_sha1(path)
    except OSError:
        return ""


def kept_of_copies(paths: Sequence[str]) -> str:
    """Which of ``paths`` (files of the same bytes, in input order) a run keeps: among those in the first one's folder
    (one folder's listing), the shortest name, then the first in sort order; so a browser's second download ``cell
    (1).jpg``, sorted before ``cell.jpg``, is the copy (before wbc 0.35.0 it was kept, its original called the copy).
    Copies in other folders (a cell exported into two) give way to the first in input order.

    >>> kept_of_copies(["a/cell (1).jpg", "a/cell.jpg", "b/c.jpg"])
    'a/cell.jpg'
    >>> kept_of_copies(["b/zz.jpg", "a/c.jpg"])
    'b/zz.jpg'
    """
    folder = os.path.dirname(paths[0])
    return min((p for p in paths if os.path.dirname(p) == folder),
               key=lambda p: (len(os.path.basename(p)), os.path.basename(p)))


def copies_among(keys: Sequence[str], paths: Sequence[str]) -> dict[int, int]:
    """Index of each of ``paths`` left out as a copy -> index of the one kept (:func:`kept_of_copies`), the files
    of one non-empty ``keys`` entry (a SHA-1) being copies; "" is no key (a file that could not be read)."""
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        if key:
            groups.setdefault(key, []).append(i)
    left_out: dict[int, int] = {}
    for members in groups.values():
        if len(members) > 1:
            kept = kept_of_copies([paths[i] for i in members])
            keep = next(i for i in members if paths[i] == kept)
            left_out.update((i, keep) for i in members if i != keep)
    return left_out


def copies_of_files(paths: Sequence[str | os.PathLike[str]]) -> dict[int, int]:
    """:func:`copies_among` for files: index of each of ``paths`` whose bytes another has -> index of the one kept
    (:func:`kept_of_copies`), as `wbc classify` and ``POST /classify`` leave them out. Only files of a size another
    file has are hashed: a cell's bytes are read once more at most; a file that cannot be read is no copy."""
    from collections import Counter

    sizes: list[int] = []
    for p in paths:
        try:
            sizes.append(os.stat(p).st_size)
        except OSError:  # its reading will say why
            sizes.append(-1)
    shared = {n for n, k in Counter(sizes).items() if k > 1 and n >= 0}
    return copies_among([content_sha1(p) if n in shared else "" for p, n in zip(paths, sizes, strict=True)],
                        [os.fspath(p) for p in paths])


def without_copies(jobs: Sequence[Job]) -> tuple[list[Job], list[tuple[str, str]]]:
    """Each job with its file's SHA-1, without the files whose bytes another job's file has (the same image under
    another name: a copy in a sub-folder, a file chosen twice), and those copies as (copy, the file kept); which one
    is kept: :func:`kept_of_copies`, as `wbc classify` keeps it."""
    sha1s = [content_sha1(job.path) for job in jobs]
    left_out = copies_among(sha1s, [job.path for job in jobs])
    kept = [Job(job.path, job.stem, sha1) for i, (job, sha1) in enumerate(zip(jobs, sha1s, strict=True))
            if i not in left_out]
    return kept, [(jobs[i].path, jobs[k].path) for i, k in sorted(left_out.items())]


def prepare_output(output: str | os.PathLike[str]) -> Path:
    """The output folder, created and checked before any work; temporary files of a killed run removed."""
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise WbcError(f"{out}: exists and is not a folder; choose another --output")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".wbc-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise WbcError(f"{out}: cannot write there ({exc.strerror or exc})") from None
    for p in out.iterdir():  # left by a run killed between writing a temporary file and renaming it
        if p.name.startswith(".") and any(m in p.name for m in _TEMP_MARKERS) and p.is_file():
            p.unlink(missing_ok=True)
    return out


def drop_pooled(out: Path) -> None:
    """Remove the pooled files an earlier run left in ``out`` (:data:`POOLED_FILES`): written again at this run's end,
    so a run stopped part-way leaves no pooled summary that disagrees with the fields' JSON (before wbc 0.32.0 the
    last run's stayed, counting the fields as they were)."""
    for name in POOLED_FILES:
        with writing(out / name):
            (out / name).unlink(missing_ok=True)


def committed(out: Path, results: Iterable[FieldOutput]) -> Iterator[FieldOutput]:
    """Commit each of ``results`` (:func:`commit`) as it comes, and yield it: every engine's one way to write fields.
    The pooled files go (:func:`drop_pooled`) only just before the first field is written, so a run that stops before
    it (a mistyped --ray-address, Ctrl-C during the first field) keeps the last run's, which still match the JSON."""
    first = True
    for result in results:
        if first:
            drop_pooled(out)
            first = False
        yield commit(out, result)


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """An :class:`OSError` writing ``path`` mid-run (a full disk, a folder turned read-only) as one line naming it:
    the fields committed before stay, so the same command finishes the run. Before wbc 0.32.0 a traceback."""
    try:
        yield
    except OSError as exc:
        raise WbcError(f"{path}: cannot write ({exc.strerror or exc}); the fields written before it are kept: make "
                       "room and run the same command again to finish") from None


def read_doc(out: Path, job: Job) -> dict[str, Any] | None:
    """The committed JSON document of ``job``, or None when there is none (or it cannot be parsed)."""
    doc = stored_doc(out, job)
    return doc if doc is not None and doc.get("image") == job.path else None


def stored_doc(out: Path, job: Job) -> dict[str, Any] | None:
    """The JSON document at ``job``'s output name, whatever image it names; None when there is none (or it cannot be
    parsed)."""
    try:
        doc = json.loads((out / f"{job.stem}.json").read_text(encoding="utf-8", errors="surrogateescape"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def run_settings(classifier: ClassifierLike | None, segmenter: SegmenterLike | None) -> dict[str, Any]:
    """What besides the models decides a field's answers: the label set (``--classes``; empty: every class), the
    views averaged per cell (``--tta``), the colour calibration (``--no-colour-calibration``) and the pixel size
    (``--pixel-size``). Stored in each field's JSON, so that a run resumed with other settings redoes the fields
    instead of keeping answers it would not give. The wbc version is none of them: a run resumed after an upgrade
    keeps the fields done (each JSON's ``wbc_version`` says which wbc answered; `wbc analyze` says how many)."""
    from wbc.classify import tta_views_of

    target = getattr(classifier, "red_cell_target", None)
    return {"classes": list(getattr(classifier, "label_set", ()) or ()),
            "tta": tta_views_of(classifier, smear=True) if classifier is not None else None,
            # whether fields are calibrated, not whether it was asked for: a model without the training colours, or
            # an adapted one, is never calibrated
            "colour_calibration": (target() is not None if callable(target)
                                   else bool(getattr(classifier, "colour_calibration", True))),
            "pixel_size": getattr(segmenter, "pixel_size", None),
            "model_sha1": model_file_sha1(getattr(classifier, "path", None)),
            # since wbc 0.35.0, for a segmenter with a file (the classical one has none): a detector retrained under
            # its id (same seed, same best iteration) left the old one's cells in a resumed run
            **({"segmenter_sha1": sha1} if (sha1 := model_file_sha1(getattr(segmenter, "path", None))) else {})}


def classify_settings(classifier: ClassifierLike, reframe: bool) -> dict[str, Any]:
    """What besides the model file decides a single cell's answer, as ``POST /classify`` records it
    (:func:`run_settings` for single cells): the label set (``classes``; empty: every class), the views averaged per
    cell (``tta``: the classifier's own, or the request's), whether the cells one view is unsure of were answered again
    by more (``tta_unsure``: :func:`wbc.classify.tta_unsure_of`; null: not), whether cells are re-framed
    (``reframe``), and the model file's SHA-1."""
    from wbc.classify import tta_unsure_of, tta_views_of

    return {"classes": list(getattr(classifier, "label_set", ()) or ()), "tta": tta_views_of(classifier),
            "tta_unsure": tta_unsure_of(classifier), "reframe": bool(reframe),
            "model_sha1": model_file_sha1(getattr(classifier, "path", None))}


def stamped(doc: dict[str, Any], data: bytes) -> dict[str, Any]:
    """``doc`` (a field's JSON document) with the SHA-1 of the bytes analysed (``sha1``: a file replaced under its
    name is redone) and the wbc version that answered (``wbc_version``: a run resumed after an upgrade keeps, and
    names, them), last: `wbc analyze`'s ``<stem>.json`` and, since wbc 0.37.0, ``POST /analyze``'s body alike."""
    from wbc import __version__

    doc["sha1"] = hashlib.sha1(data).hexdigest()
    doc["wbc_version"] = __version__
    return doc


def model_file_sha1(path: str | os.PathLike[str] | None) -> str | None:
    """The SHA-1 of a model file (None without one): `wbc ood fit` and `wbc quantize` rewrite a model under its id, and
    a resumed run kept the answers of the model before (no OOD flags, no colour calibration)."""
    if path is None or not Path(path).is_file():
        return None
    st = Path(path).stat()
    return _sha1_of(str(Path(path).resolve()), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=8)
def _sha1_of(path: str, mtime_ns: int, size: int) -> str:  # once a run, not once a field
    return content_sha1(path)


def is_complete(out: Path, job: Job, model_id: str, segmenter_id: str, draw: bool,
                settings: Mapping[str, Any] | None = None) -> bool:
    """Whether ``job`` has results of its file as it is now (the SHA-1 of its bytes: a camera re-uses names), from
    these models and ``settings`` (:func:`run_settings`; None: not compared), and its PNG when drawing: a resumed
    run skips it. The image may be named otherwise (``/data/slide1/x.jpg`` for ``slide1/x.jpg``): its bytes decide."""
    return redo_reason(stored_doc(out, job), out, job, model_id, segmenter_id, draw, settings) is None


def redo_reason(doc: Mapping[str, Any] | None, out: Path, job: Job, model_id: str, segmenter_id: str, draw: bool,
                settings: Mapping[str, Any] | None = None) -> str | None:
    """Why ``job`` must be analysed although ``doc`` (its output name's JSON) holds results: None when they are
    complete (:func:`is_complete`), "" when they are of no earlier run of this file (none, another image: nothing
    to say, or :func:`other_images` says it), else a few words for the terminal (:func:`redone_note`)."""
    if doc is None or not doc.get("sha1"):
        return ""
    if doc.get("sha1") != (job.sha1 or content_sha1(job.path)):
        same = doc.get("image") == job.path or same_file(doc.get("image"), Path(job.path))
        return "the file changed" if same else ""
    if doc.get("model_id") != model_id:
        return "another classifier"
    if doc.get("segmenter") != segmenter_id:
        return "another segmenter"
    if settings is not None and doc.get("settings") != dict(settings):
        return settings_change(doc.get("settings"), settings)
    return None if not draw or (out / f"{job.stem}.png").is_file() else "no annotated image"


def settings_change(old: Any, new: Mapping[str, Any]) -> str:
    """What differs between a document's ``settings`` (``old``; none before wbc 0.27.0) and this run's, in words.

    >>> settings_change({"tta": 8, "classes": []}, {"tta": 2, "classes": []})
    'other settings: tta 8 -> 2'
    >>> settings_change({"model_sha1": "a"}, {"model_sha1": "b", "segmenter_sha1": "c"})
    "the classifier file changed, the segmenter file's SHA-1 not recorded (an older wbc)"
    """
    if not isinstance(old, Mapping):
        return "settings not recorded"
    files = {"model_sha1": "the classifier file", "segmenter_sha1": "the segmenter file"}
    keys = [k for k in dict.fromkeys([*new, *old]) if old.get(k) != new.get(k)]
    said = [files[k] + (" changed" if k in old else "'s SHA-1 not recorded (an older wbc)") for k in keys if k in files]
    other = [f"{k} {_shown(old.get(k))} -> {_shown(new.get(k))}" for k in keys if k not in files]
    return ", ".join(said + ([f"other settings: {', '.join(other)}"] if other else []))


def _shown(value: Any) -> str:
    return (",".join(map(str, value)) or "all") if isinstance(value, list) else str(value)


def pending_jobs(out: Path, jobs: Sequence[Job], model_id: str, segmenter_id: str, draw: bool,
                 overwrite: bool, settings: Mapping[str, Any] | None = None,
                 redone: dict[str, int] | None = None) -> list[Job]:
    """The jobs a run must do: all with ``overwrite``, else those without complete results (:func:`is_complete`).
    ``redone``: counts, by :func:`redo_reason`, the jobs an earlier run had finished that are done again, so the
    terminal says why (before wbc 0.35.0 a resume with another --tta redid every field without a word). The
    results kept are brought up to this run (:func:`bring_up_to_date`)."""
    if overwrite:
        return list(jobs)
    todo = []
    for j in jobs:
        doc = stored_doc(out, j)
        reason = redo_reason(doc, out, j, model_id, segmenter_id, draw, settings)
        if reason is None and doc is not None:
            bring_up_to_date(out, j, doc)
            continue
        todo.append(j)
        if reason and redone is not None:
            redone[reason] = redone.get(reason, 0) + 1
    return todo


def bring_up_to_date(out: Path, job: Job, doc: dict[str, Any]) -> None:
    """Rewrite (atomically) a kept field's JSON so the pooled files and report.html read as a fresh run: the image
    named as this run names it (before wbc 0.35.0 a resume with the folder spelled otherwise, ``/data/slide1`` for
    ``slide1``, redid every field), and the platelet wording of a wbc before 0.33.0 (:func:`upgrade_outside`)."""
    new = upgrade_outside({**doc, "image": job.path})
    if new != doc:
        path = out / f"{job.stem}.json"
        with writing(path):
            atomic_write_bytes(path, json_text(new).encode("utf-8", "surrogateescape"))


#: A field's warning of a wbc before 0.33.0 that no --classes was behind: its platelets were "outside the chosen ones".
_OLD_OUTSIDE = re.compile(r"(\d+) of (\d+) cells are most likely a class outside the chosen ones \(([^)]*)\): each is "
                          r"counted in the chosen class shown and flagged for review")


def upgrade_outside(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with a wbc before 0.33.0's wording for a run without ``--classes`` (``settings.classes`` empty) in
    today's: a cell the model takes for a platelet is outside the classes counted on smears
    (:data:`wbc.classify.OUTSIDE_SMEAR`), not "outside the chosen classes", and the field's warning says so, as
    a fresh run's would. Before wbc 0.35.0 a resumed run told the user of a label set that was never chosen."""
    from wbc.classify import OUTSIDE_CHOSEN, OUTSIDE_SMEAR, outside_of, outside_sentence

    settings = doc.get("settings")
    if not isinstance(settings, Mapping) or settings.get("classes") != []:
        return doc

    def reason(r: Any) -> Any:
        got = outside_of(r) if isinstance(r, str) else None
        return r[: -len(OUTSIDE_CHOSEN)] + OUTSIDE_SMEAR if got and got[1] else r

    def warning(w: Any) -> Any:
        if not isinstance(w, str) or not (m := _OLD_OUTSIDE.fullmatch(w)):
            return w
        counts = {c: int(k) for c, _, k in (part.rpartition(" ") for part in m[3].split(", "))}
        return outside_sentence(counts, int(m[2]), counts) or w

    cells = [{**c, "review_reasons": [reason(r) for r in c["review_reasons"]]}
             if isinstance(c, dict) and isinstance(c.get("review_reasons"), list) else c
             for c in doc.get("cells") or []]
    warnings = [warning(w) for w in doc.get("warnings") or []]
    return {**doc, **({"cells": cells} if "cells" in doc else {}),
            **({"warnings": warnings} if "warnings" in doc else {})}


def redone_note(redone: Mapping[str, int]) -> str | None:
    """The terminal's line on the fields an earlier run had finished that a run analysed again, and why
    (:attr:`AnalyzeSummary.redone`); None when none.

    >>> redone_note({"other settings: tta 8 -> 2": 6})
    '6 field(s) done by an earlier run were analysed again (6: other settings: tta 8 -> 2)'
    """
    if not redone:
        return None
    why = "; ".join(f"{k}: {why}" for why, k in sorted(redone.items(), key=lambda kv: -kv[1]))
    return f"{sum(redone.values())} field(s) done by an earlier run were analysed again ({why})"


def other_images(out: Path, todo: Sequence[Job]) -> list[tuple[str, str, str]]:
    """(stem, image, job's path) for each job of ``todo`` whose ``<stem>.json`` holds the results of another image (a
    file of the same name from another slide, which commit replaces or removes): another path, neither the same
    file nor the same bytes (a folder moved or named otherwise is no other image)."""
    found = []
    for j in todo:
        try:
            doc = json.loads((out / f"{j.stem}.json").read_text(encoding="utf-8", errors="surrogateescape"))
        except (OSError, ValueError):
            continue
        image = doc.get("image") if isinstance(doc, dict) else None
        if (image and image != j.path and not same_file(image, Path(j.path))
                and doc.get("sha1") != (j.sha1 or content_sha1(j.path))):
            found.append((j.stem, str(image), j.path))
    return found


def segmenter_id_of(segmenter: SegmenterLike | None) -> str:
    return getattr(segmenter, "model_id", getattr(segmenter, "name", ""))


def analyze_job(job: Job, classifier: ClassifierLike | None, segmenter: SegmenterLike, draw: bool,
                data: bytes | None = None) -> FieldOutput:
    """Analyse one field into its output bytes (``data``: the file's bytes when already read). A file that
    cannot be read or analysed gives an error, never an exception, so one bad file does not stop a batch (every engine
    runs this: the Ray actors too, :class:`wbc.distributed.FieldAnalyzer`). Before wbc 0.29.0 an error of a type not
    foreseen (ONNX Runtime's, out of memory on one large field) ended the run with a traceback."""
    from wbc.analyze import analyze_bytes, smear_label_set

    classes = smear_label_set(classifier) if classifier is not None else []  # the counts' and the legend's rows
    try:
        from wbc.analyze import MAX_ANALYZE_PIXELS  # refused from the header, before decoding

        limit = MAX_ANALYZE_PIXELS
        data = read_bytes(job.path) if data is None else data
        t0 = time.perf_counter()
        rgb, res = analyze_bytes(data, job.path, classifier, segmenter, max_pixels=limit)  # a multi-field TIFF said
        doc = stamped(result_to_dict(res, classes, segmenter_id_of(segmenter), run_settings(classifier, segmenter)),
                      data)
        text = json_text(doc)
        t1 = time.perf_counter()
        png = None
        if draw:
            from wbc.render import render

            threshold = float(classifier.info.review_threshold) if classifier is not None else 0.0
            palette = classifier.classes if classifier is not None else ()  # colours as GET /model's, any label set
            ok, enc = cv2.imencode(".png", render(rgb, res, classes, threshold, palette)[:, :, ::-1].copy())
            if not ok:
                raise WbcError(f"{job.path}: cannot encode the annotated image")
            png = tag_annotated(enc.tobytes())  # known for wbc's own, also without its JSON (check_overwrites)
        return FieldOutput(job, text, png, seconds_analysis=t1 - t0, seconds_render=time.perf_counter() - t1)
    except WbcError as exc:
        return FieldOutput(job, error=str(exc))
    except Exception as exc:  # a malformed image, or ONNX Runtime's own errors (out of memory): never the whole batch
        return FieldOutput(job, error=f"{job.path}: analysis failed ({exc.__class__.__name__}: {one_line(exc)})")


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, at most ``limit`` characters (ONNX Runtime's run several lines long).

    >>> one_line(RuntimeError("[ONNXRuntimeError] : 6 : Failed to allocate\\nstack trace"))
    '[ONNXRuntimeError] : 6 : Failed to allocate'
    """
    text = " ".join(str(exc).split("\n")[0].split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


#: Errors of a name the output folder's disk refuses (too long for it, characters it cannot hold): one field's.
_NAME_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.EILSEQ})


def commit(out: Path, result: FieldOutput) -> FieldOutput:
    """Write one field's outputs: PNG, then JSON (the commit marker), each atomically, and return ``result``. A
    failed field's old outputs are removed, so that the pooled CSVs never count results of a file that now fails. A
    write that fails (a full disk) is one line naming the file (:func:`writing`); a name the disk refuses is this
    field's error (returned), not the run's: before wbc 0.35.0 it ended the run, and running it again failed again."""
    json_path, png_path = out / f"{result.job.stem}.json", out / f"{result.job.stem}.png"
    steps: list[tuple[Path, bytes | None]] = (
        [(json_path, None), (png_path, None)] if result.error  # removed: None
        # not drawn: an earlier run's PNG would show other answers than this JSON; a name's own bytes in the JSON
        else [(png_path, result.png), (json_path, result.json_text.encode("utf-8", "surrogateescape"))])
    for path, data in steps:
        with writing(path):
            try:
                if data is None:
                    path.unlink(missing_ok=True)
                else:
                    atomic_write_bytes(path, data)
            except OSError as exc:
                if exc.errno not in _NAME_ERRNOS:
                    raise
                if result.error:
                    continue  # a name the disk refuses holds no old outputs
                with suppress(OSError):
                    png_path.unlink(missing_ok=True)  # written before its JSON was refused
                return replace(result, json_text="", png=None, error=(
                    f"{result.job.path}: its results cannot be written as {path} ({exc.strerror or exc}); rename "
                    "the image"))
    return result


def tally(summary: AnalyzeSummary, result: FieldOutput) -> None:
    if result.error:
        summary.errors.append((result.job.path, result.error))
    else:
        summary.analyzed += 1
        summary.seconds_analysis += result.seconds_analysis
        summary.seconds_render += result.seconds_render


def cell_is_ood(cell: Mapping[str, Any]) -> bool:
    """Whether a field document's cell was flagged unlike the training cells: its ``ood``, or for a document an
    earlier run wrote (before wbc 0.30.0, without one) its out-of-distribution review reason.

    >>> old = {"review_reasons": ["colours unlike the training images (OOD score 2.3)"]}
    >>> cell_is_ood({"ood": False}), cell_is_ood(old)
    (False, True)
    """
    if "ood" in cell:
        return bool(cell["ood"])
    return any(str(r).startswith(tuple(OOD_REASONS.values())) for r in cell.get("review_reasons") or [])


def finish(out: Path, jobs: Sequence[Job], classes: Sequence[str], summary: AnalyzeSummary,
           columns: Sequence[str] | None = None, left_out: Sequence[tuple[str, str]] = ()) -> AnalyzeSummary:
    """Rebuild ``cells.csv``, ``differential.csv`` and ``errors.csv`` from the committed JSON documents: the
    differential's rows are ``classes`` (those answered, :func:`wbc.analyze.smear_label_set`), ``cells.csv`` has a
    probability column for each of ``columns`` (default ``classes``; the model's classes). ``left_out``: what the
    input folders' listing skipped (:func:`left_out_errors`), listed in ``summary.errors`` and errors.csv after the
    fields that failed. An earlier run's ``report.html`` is removed (`wbc analyze` writes it again after this): a run
    with nothing left to do removes no pooled file before (:func:`committed`), and its inputs may be fewer."""
    from wbc.classify import outside_of

    with writing(out / "report.html"):
        (out / "report.html").unlink(missing_ok=True)

    summary.errors, summary.copies = with_failed_copies(summary.errors, summary.copies)
    summary.errors += left_out
    failed = {p for p, _ in summary.errors}
    summary.docs, summary.classes, summary.stems, summary.outside = [], list(classes), {}, {}
    summary.outside_smear = set()
    summary.n_classified = summary.n_review = summary.n_ood = 0

    def docs() -> Iterator[dict[str, Any]]:  # streamed: a million fields' documents never sit in memory at once
        for j in jobs:
            if j.path not in failed and (d := read_doc(out, j)) is not None:
                summary.docs.append({k: d.get(k) for k in SUMMARY_KEYS})
                summary.stems[str(d.get("image"))] = j.stem
                for c in d.get("cells") or []:
                    if c.get("label") is not None:
                        summary.n_classified += 1
                        summary.n_review += bool(c.get("review"))
                        summary.n_ood += cell_is_ood(c)
                        for other, chosen in filter(None, map(outside_of, c.get("review_reasons") or [])):
                            summary.outside[other] = summary.outside.get(other, 0) + 1
                            if not chosen:
                                summary.outside_smear.add(other)
                yield d

    with writing(out / "cells.csv"):
        write_cells_csv(out / "cells.csv", docs(), classes if columns is None else columns)
    with writing(out / "differential.csv"):
        if classes:
            write_differential_csv(out / "differential.csv", summary.docs, classes)
        else:
            (out / "differential.csv").unlink(missing_ok=True)
    with writing(out / "errors.csv"):
        write_errors_csv(out / "errors.csv", summary.errors)
    with writing(out / "copies.csv"):  # every copy left out, named (since wbc 0.35.0: past ten, nowhere before)
        if summary.copies:
            write_copies_csv(out / "copies.csv", summary.copies)
        else:
            (out / "copies.csv").unlink(missing_ok=True)
    return summary


def with_failed_copies(errors: Sequence[tuple[str, str]], copies: Sequence[tuple[str, str]]
                       ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(``errors`` with each copy of a failed file listed after it, with the same problem; the other ``copies``).
    Several empty files (an interrupted transfer) have the same bytes: before wbc 0.32.0 all but the first were
    called copies "analysed and counted once", and missing from errors.csv."""
    failed = dict(errors)
    of: dict[str, list[str]] = {}
    kept = []
    for copy, original in copies:
        if original in failed:
            of.setdefault(original, []).append(copy)
        else:
            kept.append((copy, original))
    listed = []
    for path, message in errors:
        listed.append((path, message))
        listed += [(c, c + message[len(path):] if message.startswith(path) else f"{c}: {message}")
                   for c in of.get(path, ())]
    return listed, kept


def left_out_errors(inputs: Iterable[str | os.PathLike[str]]) -> list[tuple[str, str]]:
    """What the folders among ``inputs`` hold that a run leaves out (:func:`wbc.io.left_out_under`: a subfolder it may
    not list, a link named as an image whose file is missing) as ``(path, message)``, as a run lists the files it
    could not read: since wbc 0.35.0 each is in errors.csv (`wbc analyze`) or ``<stem>.errors.csv`` (`wbc classify`);
    before, only the first ten were named, on the terminal alone. Each once (its folder's real path and its name),
    as the run takes each file once: before wbc 0.35.0 overlapping inputs (``day1 day1/sub``) listed a link or folder
    under both twice in the errors file and counted it twice among the files that could not be read.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> (d / "sub").mkdir(); (d / "sub" / "x: 1.png").symlink_to(d / "gone.png")
    >>> [(Path(p).name, m.startswith(p + ": link to a missing file")) for p, m in left_out_errors([d, d / "sub"])]
    [('x: 1.png', True)]
    """
    pairs: dict[str, tuple[str, str]] = {}
    for message in left_out_under(inputs):
        # "<path>: <reason> (<details>)": the path is cut before the reason, as a path may hold ": " itself
        cut = max(message.rfind(": cannot list the folder ("), message.rfind(": link to a missing file ("))
        path = message[:cut] if cut > 0 else message.split(": ", 1)[0]
        key = os.path.join(os.path.realpath(os.path.dirname(path) or "."), os.path.basename(path))
        pairs.setdefault(key, (path, message))
    return list(pairs.values())


def run_local(
    inputs: Iterable[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    classifier: ClassifierLike | None,
    segmenter: SegmenterLike,
    draw: bool = True,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> AnalyzeSummary:
    """The local engine: analyse the pending fields one by one in this process, then rebuild the CSVs. A label set
    without a class a smear cell can be is refused before the output folder is made (since wbc 0.36.0)."""
    from wbc.analyze import checked_smear_label_set

    if classifier is not None:
        checked_smear_label_set(classifier)
    inputs = list(inputs)  # walked twice: for the fields and for what the listing left out
    out = prepare_output(output)
    planned, earlier = plan_run(inputs, out)
    jobs, copies = without_copies(planned)
    model_id = getattr(classifier, "model_id", "") if classifier is not None else ""
    redone: dict[str, int] = {}
    todo = pending_jobs(out, jobs, model_id, segmenter_id_of(segmenter), draw, overwrite,
                        run_settings(classifier, segmenter), redone)
    check_overwrites(out, todo, planned, draw)
    summary = AnalyzeSummary(skipped=len(jobs) - len(todo), model_id=model_id, segmenter_id=segmenter_id_of(segmenter),
                             copies=copies, earlier_outputs=earlier, replaced=other_images(out, todo), redone=redone)
    if progress:
        progress(summary.skipped, len(jobs))
    for i, result in enumerate(committed(out, (analyze_job(job, classifier, segmenter, draw) for job in todo))):
        tally(summary, result)
        if progress:
            progress(summary.skipped + i + 1, len(jobs))
    classes, columns = answered_and_columns(classifier)
    return finish(out, jobs, classes, summary, columns, left_out_errors(inputs))


def answered_and_columns(classifier: ClassifierLike | None) -> tuple[list[str], list[str]]:
    """A run's differential rows (:func:`wbc.analyze.smear_label_set`) and ``cells.csv``'s probability columns (every
    class of the model, as before wbc 0.30.0), for :func:`finish`."""
    from wbc.analyze import smear_label_set

    if classifier is None:
        return [], []
    return smear_label_set(classifier), list(classifier.classes)


#: ``wbc analyze``'s local engine under the name the Python API has always used.
analyze_paths = run_local
