"""``wbc evaluate``: score a classifier on labelled cells and write metrics.json, predictions.csv and
report.html.

The pieces: :mod:`wbc.evaluate.metrics` (pure functions over arrays), :mod:`wbc.evaluate.report` (the
HTML), :mod:`wbc.evaluate.gradcam` (overlays) and :mod:`wbc.evaluate.compare` (two models, one data
set). Predictions come from :func:`wbc.classify.classify_paths`, so the accuracy here is exactly the
accuracy of ``wbc classify`` on the same files. This module imports only light dependencies at import
time (scikit-learn and matplotlib are loaded when an evaluation runs); nothing here imports torch.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from wbc.data import Sample, load_dataset, manifest_hash, read_manifest, scan_folder, split_hash
from wbc.errors import WbcError
from wbc.io import atomic_write_json, atomic_write_text, check_output_file, file_sha1, files_under, is_image_file
from wbc.labels import canonical_label
from wbc.paths import data_root as default_data_root

if TYPE_CHECKING:
    from wbc.model import Classifier

__all__ = [
    "EvalData",
    "adapted_on",
    "caution_for",
    "dedupe_rows",
    "evaluate",
    "in_sample_note",
    "is_own_run",
    "is_run_manifest",
    "load_eval_data",
    "load_fold_metrics",
    "provenance",
    "recorded_calls_score",
    "recorded_calls_text",
    "repeated_note",
    "resolve_model_path",
]

#: Images shown per gallery, and Grad-CAM cells per class, in the report.
GALLERY_SIZE = 12
CAMS_PER_CLASS = 3
THUMB = 128


@dataclass
class EvalData:
    """The labelled images to evaluate and how they were found."""

    samples: list[Sample]  # label: canonical name when known, else the label as written (after --map)
    source: Path
    split: str | None = None  # manifest split used; None for a folder or "all"
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): non-images etc.
    is_manifest: bool = False
    repeated: list[tuple[str, str]] = field(default_factory=list)  # (path, what): manifest rows naming a file again

    @property
    def description(self) -> str:
        if self.is_manifest:
            return f"the {self.split} split of {self.source.name}" if self.split else f"{self.source.name}"
        return f"the folder {self.source.name}"


def in_sample_note(splits: Mapping[str, int], cross_validation: bool = False, shipped: bool = False) -> str:
    """What a run's manifest rows of ``splits`` (split: rows) did for the run's model, or "" for test rows only.

    Its train rows fitted the network, its val rows chose the best epoch and fitted the temperature and the review
    threshold (:func:`wbc.calibration.calibrate`), or in a cross-validation run trained the other folds' members:
    scored with that model, neither is held out (the terminal, ``metrics.json``'s ``caution`` and the report say so;
    before wbc 0.31.0 only ``--split train`` had a terminal note). ``shipped``: scored with the shipped model, whose
    temperature and review threshold were fitted on the val rows of the PBC split (``runs/default/manifest.csv``, the
    split of every run in docs/model_card.md), which the val rows' note then says.

    >>> in_sample_note({"train": 3, "val": 1}), in_sample_note({"test": 5})
    ("3 train rows trained the run's model; 1 val row chose the run's model's epoch and fitted its temperature and \
review threshold", '')
    """
    parts = []
    if n := splits.get("train", 0):
        parts.append(f"{n:,} train row{'s' * (n != 1)} trained the run's model")
    if n := splits.get("val", 0):
        parts.append(f"{n:,} val row{'s' * (n != 1)} "
                     + ("trained the run's cross-validation members" if cross_validation
                        else "chose the run's model's epoch and fitted its temperature and review threshold")
                     + (", and the shipped model's too if this is the PBC split (runs/default/manifest.csv)"
                        if shipped else ""))
    return "; ".join(parts)


def resolve_data_path(data: str | os.PathLike[str], root: Path | None = None) -> Path:
    """``data`` as given, else under the data root (``pbc`` -> ``<root>/pbc``); a run folder with a
    ``manifest.csv`` means that manifest: one with its ``model.onnx``, or one without (``runs/default`` in a checkout,
    where the model file is not committed) whose sub-folders hold no images, so it cannot be a class-per-folder set
    (before wbc 0.31.0 that was read as one: "no images in class folders")."""
    p = Path(data).expanduser()
    if not p.exists():
        alt = (root or default_data_root()) / p
        if p.is_absolute() or not alt.exists():
            where = "" if p.is_absolute() else f" (nor {alt})"
            raise WbcError(f"{p}: no such folder or manifest{where}")
        p = alt
    if p.is_dir() and (p / "manifest.csv").is_file() and ((p / "model.onnx").is_file() or not _has_class_images(p)):
        return p / "manifest.csv"
    return p


def _has_class_images(folder: Path) -> bool:
    """Whether any sub-folder of ``folder`` holds an image file directly (a class-per-folder set does)."""
    return any(d.is_dir() and not d.name.startswith(".") and any(is_image_file(f) for f in d.iterdir())
               for d in folder.iterdir())


def dedupe_rows(samples: Sequence[Sample]) -> tuple[list[Sample], list[tuple[str, str]]]:
    """A manifest's rows with each file once, and what was left out as (path, what).

    A file listed again with the same label is scored once (its first row); one listed with different labels is not
    scored at all, since neither label can be trusted over the other. Before wbc 0.31.0 every row was scored as a
    cell of its own, silently: a file listed three times counted three times and narrowed every interval.
    """
    keys = [Path(s.path).resolve() for s in samples]
    groups: dict[Path, list[Sample]] = {}
    for k, s in zip(keys, samples, strict=True):
        groups.setdefault(k, []).append(s)
    kept: list[Sample] = []
    repeated: list[tuple[str, str]] = []
    for k, s in zip(keys, samples, strict=True):
        group = groups[k]
        labels = sorted({g.label for g in group})
        first = s is group[0]
        if len(labels) > 1:
            if first:
                repeated.append((str(s.path), f"listed {len(group)} times with different labels ({', '.join(labels)}): "
                                              "not scored"))
        elif first:
            kept.append(s)
        else:
            repeated.append((str(s.path), "listed again with the same label: scored once"))
    return kept, repeated


def repeated_note(repeated: Sequence[Sequence[str]]) -> str:
    """How many manifest rows named a file again (scored once) or files with different labels (not scored); "" for
    none.

    >>> repeated_note([["a.jpg", "listed again with the same label: scored once"],
    ...                ["b.jpg", "listed 2 times with different labels (ig, monocyte): not scored"]])
    'The manifest has 1 row naming a file already listed, with the same label (scored once), and 1 file listed with \
different labels (not scored)'
    """
    again = sum(why.startswith("listed again") for _, why in repeated)
    clash = len(repeated) - again
    parts = []
    if again:
        rows = f"{again:,} row{'s' * (again != 1)}"
        parts.append(f"{rows} naming a file already listed, with the same label (scored once)")
    if clash:
        parts.append(f"{clash:,} file{'s' * (clash != 1)} listed with different labels (not scored)")
    return f"The manifest has {', and '.join(parts)}" if parts else ""


def root_hint(ed: EvalData) -> str:
    """What to check when none of a manifest's images could be read: the data root its relative paths are under, as
    `wbc quantize` and `wbc ood fit` say (before wbc 0.36.0 `wbc evaluate` named a path under the wrong root alone).
    A run's manifest is relative to its run's root; any other (a `wbc cases export`'s) to its own folder first, where
    `wbc evaluate` looks before the data root (before wbc 0.37.0 the hint named "its run's" root for every manifest)."""
    if not ed.is_manifest:
        return ""
    if is_run_manifest(ed.source):
        return "; check --data-root (the root the manifest's paths are relative to: its run's)"
    return (f"; a relative path is read beside the manifest ({ed.source.parent}), else under the data root: check "
            "the paths, or --data-root")


def _relabel(label: str, mapping: dict[str, str] | None) -> str:
    """The canonical class name when ``label`` is a known spelling, else the label as mapped/written."""
    return canonical_label(label, mapping) or (mapping or {}).get(label, label)


def load_eval_data(
    data: str | os.PathLike[str],
    split: str | None = "test",
    mapping: dict[str, str] | None = None,
    root: Path | None = None,
) -> EvalData:
    """Labelled samples from a class-per-folder directory or a split manifest (``path,label,split,...``).

    Folders and labels the model may not know are kept (with their label) so that they can be counted
    and reported instead of silently dropped. ``split`` applies to manifests; ``"all"`` or None keeps
    every row. A folder has no splits: every image in it is scored, with the default ``"test"`` or ``"all"``, and
    another split is refused in one line rather than ignored (before wbc 0.35.0 ``--split val`` on a folder scored
    every image without a word). So has a manifest whose every row's split is empty (a `wbc cases export`, a lab's
    own ``path,label`` list): it is not a run's split, and its rows are scored as a folder's images are (before wbc
    0.37.0 the default ``test`` refused it: "no rows in split 'test'").

    A manifest's relative paths are read as :func:`wbc.data.read_manifest` reads them: beside the manifest first
    (`wbc cases export` writes its crops there, and `wbc adapt` reads them so) unless ``root`` is given, else under
    ``root`` or the default data root.
    """
    p = resolve_data_path(data, root)
    if p.is_file():
        if p.suffix.lower() != ".csv":
            raise WbcError(f"{p}: DATA must be a class-per-folder directory or a manifest .csv")
        rows = read_manifest(p, root=root)
        if not rows:
            raise WbcError(f"{p}: manifest has no rows")
        want = None if split in (None, "", "all") else split
        if not any(r.split for r in rows):  # no splits (a `wbc cases export`): every row, as a folder's images
            if want not in (None, "test"):
                raise WbcError(f"{p}: --split {want} names rows of a run's manifest, and this one has no splits (its "
                               "split column is empty or missing, as in a `wbc cases export`): every row is scored, "
                               "leave --split out")
            want = None
        if want is not None:
            splits = sorted({r.split for r in rows})
            rows = [r for r in rows if r.split == want]
            if not rows:  # a run's own rows trained or calibrated its model: said before --split all is offered
                held = ("; none of them is held out from the run's model, which they trained or calibrated, so "
                        "--split all scores them as such" if is_run_manifest(p) and splits else
                        "; use --split all for every row")
                raise WbcError(f"{p}: no rows in split {want!r} (splits here: {', '.join(splits) or 'none'}{held})")
        samples, repeated = dedupe_rows(
            [Sample(r.path, _relabel(r.label, mapping), r.split, r.fold, r.sha1) for r in rows])
        if not samples:
            raise WbcError(f"{p}: every file is listed with different labels ({repeated[0][0]}: {repeated[0][1]})")
        return EvalData(samples, p, want, [], is_manifest=True, repeated=repeated)
    if split not in (None, "", "all", "test"):
        raise WbcError(f"{p}: --split {split} names rows of a manifest, and a class-per-folder set has no splits "
                       "(every image in it is scored: leave --split out)")
    try:
        scan = scan_folder(p, mapping)
        samples = list(scan.samples)
        skipped: list[tuple[str, str]] = []
        unknown_dirs: list[tuple[str, str]] = []
        for path, reason in scan.skipped:
            (unknown_dirs if reason == "unknown class folder" else skipped).append((path, reason))
    except WbcError:
        samples, skipped = [], []
        unknown_dirs = [
            (str(d), "") for d in sorted(p.iterdir()) if d.is_dir() and not d.name.startswith(".")
        ]
    # images in folders whose name is not a known class: kept with the folder name as their label
    for folder, _ in unknown_dirs:
        d = Path(folder)
        label = (mapping or {}).get(d.name, d.name)
        samples += [Sample(f, label) for f in files_under(d) if is_image_file(f)]
    if not samples:
        raise WbcError(f"{p}: no images in class folders (expected {p}/<class>/<image>)")
    return EvalData(samples, p, None, skipped)


def resolve_model_path(model: str | os.PathLike[str] | None) -> Path | None:
    """A model file, or the ``model.onnx`` of a run folder; None means the shipped default."""
    if model is None:
        return None
    p = Path(model).expanduser()
    if p.is_dir():
        if (p / "model.onnx").is_file():
            return p / "model.onnx"
        found = sorted(p.glob("*.onnx"))
        if len(found) == 1:
            return found[0]
        raise WbcError(
            f"{p}: no model.onnx in this folder"
            if not found
            else f"{p}: several .onnx files here; name one with --model"
        )
    if not p.is_file():
        raise WbcError(f"{p}: model file not found")
    return p


def default_model_for(data_path: Path) -> Path | None:
    """The run's own model when DATA is a run's manifest (``RUN/manifest.csv`` next to ``RUN/model.onnx``)."""
    if (
        data_path.is_file()
        and data_path.name == "manifest.csv"
        and (data_path.parent / "model.onnx").is_file()
    ):
        return data_path.parent / "model.onnx"
    return None


#: Training options that say where a run ran, not what it trained (``wbc.train.loop.MACHINE_OPTIONS``): a resumed run
#: may change them.
_MACHINE_OPTIONS = frozenset({"device", "threads", "num_workers", "data_root"})


def is_run_manifest(path: Path) -> bool:
    """Whether ``path`` is a training run's manifest: ``manifest.csv`` beside the ``config.json`` `wbc train` writes
    (``runs/default`` in a checkout, whose model file is not committed) or beside the run's ``model.onnx``."""
    return path.name == "manifest.csv" and any((path.parent / f).is_file() for f in ("config.json", "model.onnx"))


def is_own_run(manifest: Path, classifier: Classifier) -> bool:
    """Whether ``manifest`` is shown to be the split of the run that trained ``classifier``, which alone makes its test
    rows held out from this model.

    Shown by the run's own files, not assumed from a model file placed beside a CSV: ``manifest`` is the
    ``manifest.csv`` of the model file's folder; the model was not adapted since (`wbc adapt` fine-tunes on a lab's
    cells, whatever split their rows name); and the folder's ``config.json`` holds the model's training options (a run
    `wbc train` wrote; machine options aside), or, in a folder without one (`wbc ensemble`), the checkpoint
    (``best.pt``, ``ensemble.pt``) it was exported from is there. Before wbc 0.33.0 any model file beside any CSV
    counted, so a model fine-tuned on a lab's ``labelled.csv`` was said never to have seen its rows.

    A model that records its run's split (``extra["split_hash"]``, :func:`wbc.data.split_hash`; models trained since wbc
    0.33.0 and the shipped one) is judged by that alone: the manifest's every row, label and split must be the ones it
    was trained with, wherever either file is. So the shipped model and ``runs/default/manifest.csv`` are known to be
    one run's, and its test rows held out.
    """
    info = classifier.info
    trained = info.extra.get("config")
    if info.head or "adapt" in info.extra or not isinstance(trained, dict):
        return False
    recorded = info.extra.get("split_hash")
    if isinstance(recorded, str) and recorded:
        try:
            return recorded == split_hash(load_dataset(manifest).samples)
        except (OSError, ValueError, WbcError):
            return False
    run = manifest.resolve().parent
    if manifest.name != "manifest.csv" or Path(classifier.path).resolve().parent != run:
        return False
    if (run / "config.json").is_file():
        try:
            saved = json.loads((run / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False

        def options(cfg: Mapping[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in cfg.items() if k != "extra" and k not in _MACHINE_OPTIONS}

        return isinstance(saved, dict) and options(saved) == options(trained)
    return any((run / name).is_file() for name in ("best.pt", "ensemble.pt"))


def adapted_on(ed: EvalData, classifier: Classifier) -> str:
    """The SHA-1 of ``ed``'s manifest (a CSV, or a folder's ``manifest.csv``: a `wbc cases export`) when `wbc adapt`
    adapted ``classifier`` on that very manifest (``extra["adapt"]["settings"]["export"]["manifest_sha1"]``, recorded
    since wbc 0.37.0), else "": every one of its cells then trained the model (both methods fit the exported model on
    all cells), and its score is in-sample. Before wbc 0.37.0's release such a score got the caution of any other
    manifest, and the note invited comparing it with the recorded calls."""
    adapt = classifier.info.extra.get("adapt")
    settings = adapt.get("settings") if isinstance(adapt, dict) else None
    export = settings.get("export") if isinstance(settings, dict) else None
    learnt = export.get("manifest_sha1") if isinstance(export, dict) else None
    if not isinstance(learnt, str) or not learnt:
        return ""
    csv_path = ed.source if ed.source.suffix.lower() == ".csv" else ed.source / "manifest.csv"
    try:
        return learnt if csv_path.is_file() and file_sha1(csv_path) == learnt else ""
    except OSError:
        return ""


def provenance(ed: EvalData, classifier: Classifier) -> dict[str, Any]:
    """What ``ed``'s cells may have done for ``classifier``, as ``metrics.json`` records it and
    :func:`wbc.evaluate.report.caution_text` reads it: a folder's cells may have trained it, a run's own test rows are
    held out from it (:func:`is_own_run`), its train and val rows trained and calibrated it, and the cells of the
    export it was adapted on trained it (``adapted_on``, :func:`adapted_on`)."""
    own_run = ed.is_manifest and is_own_run(ed.source, classifier)
    row_splits = dict(sorted(Counter(s.split for s in ed.samples).items())) if ed.is_manifest else {}
    adapted = adapted_on(ed, classifier)
    return {
        "model_path": str(classifier.path),
        "data_kind": "manifest" if ed.is_manifest else "folder",
        # the run's own split (is_own_run): only then are its test rows known to be held out from this model's training
        "own_run": own_run,
        "split": ed.split,
        "row_splits": row_splits,  # manifest rows evaluated, by their split
        "held_out": own_run and set(row_splits) == {"test"},
        # what the run's own train/val rows did for this model ("" when none is scored)
        "in_sample": (in_sample_note(row_splits, any(s.fold >= 0 for s in ed.samples)) if own_run else
                      f"the model was adapted (`wbc adapt`) on these very cells (manifest SHA-1 {adapted[:12]})"
                      if adapted else ""),
        # the SHA-1 of the manifest the model was adapted on, when it is the one scored ("" else)
        "adapted_on": adapted,
    }


def recorded_calls_score(ed: EvalData, samples: Sequence[Sample], root: Path | None = None) -> dict[str, Any] | None:
    """How often the calls `wbc analyze` recorded for ``samples`` were right, when ``ed`` is a `wbc cases export` (its
    ``model_label`` column, as `wbc adapt` scores its "before" on an export, :func:`wbc.data.recorded_calls`); None for
    any other data, or cells without a recorded call.

    Those calls were made in the cells' fields, each field's colours calibrated on its red cells and its cytoplasm
    colours weighed; the exported crops keep the field's raw colours, so a model scored on them here (the shipped one
    above all) is not scored as the lab's cells were answered. On 23 reviewed BCCD train-field cells the shipped
    model's recorded calls were 82.6 % right, the same model on their crops 60.9 %, and 73.9 % with each crop mapped
    from its field's recorded colours and answered as `wbc analyze` answers (platelet left out, four views): the rest
    is the field's cytoplasm evidence (lymphocyte against erythroblast), which a crop cannot give. `wbc adapt` scores
    its "before" on these calls (since wbc 0.34.0); `wbc evaluate` showed only the crops' score before wbc 0.37.0, and
    an adapted model looked 27 points better than the shipped one where both made the same calls in use.

    ``n``, ``right``, ``accuracy`` and ``ci`` count only the cells a person reviewed: a cell whose label is the model's
    own call accepted at sign-off (``label_source`` ``accepted_at_sign_off``, `wbc cases export --include-accepted`)
    is right by construction, so it is counted apart (``accepted``; ``n_cells``, every cell scored). ``all_changed``:
    every reviewed cell's call was changed by its reviewer (as `wbc cases export --changed-only` exports only), so the
    recorded calls are wrong on each by that choice of cells. Before wbc 0.37.0's release the accepted calls counted as
    right and a changed-only export read "right 0 %", each called how the lab's cells were answered."""
    from wbc.counts import clopper_pearson
    from wbc.data import ACCEPTED_AT_SIGN_OFF, recorded_calls

    if not samples:
        return None
    calls = recorded_calls(ed.source, [s.path for s in samples], root if ed.is_manifest else None)
    if calls is None:
        return None
    sources = calls.label_sources or [""] * len(samples)
    hits = [c == s.label for c, s, src in zip(calls.labels, samples, sources, strict=True)
            if src != ACCEPTED_AT_SIGN_OFF]
    right, n = sum(hits), len(hits)
    ci = list(clopper_pearson(right, n)) if n else None
    return {"n": n, "right": right, "accuracy": right / n if n else None, "ci": ci,
            "accepted": len(samples) - n, "n_cells": len(samples), "all_changed": bool(n) and right == 0,
            "by_model": calls.by_model(),
            "from": "the calls `wbc analyze` recorded in the cases (manifest.csv's model_label), made in the fields "
                    "with their colours calibrated; the cells a person reviewed only (label_source reviewed)"}


def recorded_calls_text(recorded: Mapping[str, Any], adapted_here: bool = False) -> str:
    """The sentence `wbc evaluate` and its report give for an export's recorded calls (:func:`recorded_calls_score`),
    for the cells exported: the score over the reviewed cells, the accepted calls counted apart, and no comparison
    advised where the cells were chosen as changed, or where a model scored was adapted on them (``adapted_here``).

    >>> recorded_calls_text({"n": 15, "right": 13, "accuracy": 13 / 15, "by_model": {"m1": 15}})[:80]
    'The calls `wbc analyze` recorded for these cells (by m1) were right 13 of the 15'
    """
    models = [m for m in recorded["by_model"] if m]
    by = (f" (by {models[0]})" if len(recorded["by_model"]) == 1 and models else
          " (by " + ", ".join(f"{m or 'a model not recorded'}: {k}" for m, k in recorded["by_model"].items()) + ")")
    n, accepted = recorded["n"], recorded.get("accepted", 0)
    apart = (f"{accepted} cell(s) are the model's own calls accepted at sign-off unopened (`wbc cases export "
             "--include-accepted`), the label by construction, so they are left out of the recorded calls' score")
    if not n:
        return f"No cell here was reviewed: {apart}, which has no cell to count."
    text = (f"The calls `wbc analyze` recorded for these cells{by} were right {recorded['right']} of the {n} a person "
            f"reviewed ({100 * recorded['accuracy']:.1f} %)" + (f"; the other {apart}" if accepted else "") + ". ")
    if recorded.get("all_changed"):
        return text + ("Every one of those was changed by its reviewer (as `wbc cases export --changed-only` exports "
                       "only), so the recorded calls are wrong on each by that choice of cells: this is no measure of "
                       "how the lab's cells were answered, and no bar for another model; an export of every reviewed "
                       "cell gives one.")
    text += ("That is how these exported cells were answered in use, in their fields with each field's colours "
             "calibrated on its red cells; the export holds the cells chosen for it (the reviewed ones by default), "
             "not every cell of the cases. A model scored here reads the exported crops in their fields' raw colours, "
             "without that calibration or the field's cytoplasm evidence, so a model that `wbc analyze` runs with "
             "calibration (the shipped one) is not scored here as it answered in use, and mostly scores lower")
    if adapted_here:
        return text + (". A model adapted on these very cells is scored on what it learnt: no comparison of it "
                       "with the recorded calls says how it answers other cells (its held-out check does, or cells of "
                       "other cases).")
    return text + (": compare an adapted model with the recorded calls, not with the original model's score on the "
                   "crops.")


def caution_for(ed: EvalData, classifier: Classifier) -> str:
    """Why ``classifier``'s numbers on ``ed`` may be too optimistic ("" for a run's own model on its own test rows):
    the caution `wbc evaluate` writes, for each model `wbc evaluate --compare` scores (since wbc 0.36.0: before, a
    comparison said nothing of cells that trained one of the models, and called its gain unlikely to be chance)."""
    from wbc.evaluate.report import caution_text

    return caution_text(provenance(ed, classifier))


def load_fold_metrics(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Per-fold validation metrics of a cross-validation run (``RUN/fold_K/val_metrics.json``).

    A fold without ``val_metrics.json`` falls back to the last row of its ``metrics.csv`` (numeric
    columns only). Folds are returned in numeric order; an ordinary run gives an empty list.
    """
    import csv

    run = Path(run_dir)
    folds = [d for d in run.glob("fold_*") if d.is_dir() and d.name[5:].isdigit()]
    out = []
    for d in sorted(folds, key=lambda d: int(d.name[5:])):
        if (d / "val_metrics.json").is_file():
            try:
                out.append(json.loads((d / "val_metrics.json").read_text()))
            except json.JSONDecodeError as exc:
                raise WbcError(f"{d / 'val_metrics.json'}: not valid JSON ({exc.msg})") from None
        elif (d / "metrics.csv").is_file():
            with (d / "metrics.csv").open(newline="") as fh:
                rows = list(csv.DictReader(fh))
            if rows:
                out.append(
                    {k: _float_or_none(v) for k, v in rows[-1].items() if _float_or_none(v) is not None}
                )
    return out


def _float_or_none(v: object) -> float | None:
    try:
        return float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


@dataclass
class Scored:
    """Classifier output aligned with the samples it came from."""

    samples: list[Sample]  # readable samples, in prediction order
    predictions: list[Any]  # wbc.types.Prediction
    logits: np.ndarray  # (N, C) raw
    errors: list[tuple[str, str]]


def classify_samples(
    samples: Sequence[Sample],
    classifier: Classifier,
    batch_size: int = 64,
    workers: int = 2,
    progress: Callable[[int], None] | None = None,
    reframe: bool = True,
) -> Scored:
    """Run ``wbc classify``'s code on the samples and line the results up with them (``reframe`` as there)."""
    from wbc.classify import classify_paths

    res = classify_paths(
        [s.path for s in samples], classifier, batch_size=batch_size, workers=workers, progress=progress,
        reframe=reframe,
    )
    failed = Counter(p for p, _ in res.errors)
    kept = []
    for s in samples:
        key = str(s.path)
        if failed[key]:
            failed[key] -= 1
            continue
        kept.append(s)
    if len(kept) != len(res.predictions):  # cannot happen unless classify_paths changes its contract
        raise RuntimeError("predictions do not line up with the input files")
    return Scored(kept, res.predictions, res.logits, res.errors)


def _thumb(path: Path, size: int = THUMB) -> np.ndarray | None:
    from wbc.errors import ImageReadError
    from wbc.io import read_image
    from wbc.preprocess import resize_square

    try:
        return resize_square(read_image(path, min_size=size), size)
    except ImageReadError:
        return None


def pick_galleries(
    y_true: np.ndarray, y_prob: np.ndarray, k: int = GALLERY_SIZE
) -> tuple[list[int], list[int]]:
    """Indices of the most confident mistakes and of the least confident correct calls."""
    conf = y_prob.max(axis=1)
    pred = y_prob.argmax(axis=1)
    wrong = np.nonzero(pred != y_true)[0]
    right = np.nonzero(pred == y_true)[0]
    mistakes = wrong[np.argsort(-conf[wrong], kind="stable")][:k]
    unsure = right[np.argsort(conf[right], kind="stable")][:k]
    return mistakes.tolist(), unsure.tolist()


def pick_gradcam_cells(
    y_true: np.ndarray, y_prob: np.ndarray, n_classes: int, per_class: int
) -> dict[int, list[int]]:
    """For each class with cells, ``per_class`` of them spread over the range of the model's confidence
    (most confident first), so the overlays show typical and borderline cases alike."""
    conf = y_prob.max(axis=1)
    out = {}
    for k in range(n_classes):
        idx = np.nonzero(y_true == k)[0]
        if not len(idx):
            continue
        idx = idx[np.argsort(-conf[idx], kind="stable")]
        pos = np.unique(np.linspace(0, len(idx) - 1, min(per_class, len(idx))).round().astype(int))
        out[k] = idx[pos].tolist()
    return out


def view_averaged_cams(classifier: Classifier, cells: np.ndarray, views: int = 1) -> np.ndarray:
    """The class activation maps (N, C, h, w) of ``cells`` averaged over the first ``views`` flips/rotations, each
    turned back onto the cell as it is: the maps of the answer :func:`wbc.classify.run_views` averages (for a
    network ending in global average pooling and one linear layer, the maps' spatial means are its logits)."""
    from wbc.preprocess import dihedral_view

    cams = []
    for k in range(max(1, views)):
        cam = classifier.run(dihedral_view(cells, k) if k else cells, want=("cam",))["cam"]
        cam = np.rot90(cam, -(k % 4), axes=(2, 3))  # dihedral_view flips, then turns: undone in reverse
        cams.append(cam[:, :, :, ::-1] if k >= 4 else cam)
    return np.mean(cams, axis=0)


def build_gradcam(
    classifier: Classifier,
    samples: Sequence[Sample],
    y_true: np.ndarray,
    y_prob: np.ndarray,
    per_class: int = CAMS_PER_CLASS,
    answered: Sequence[str] | None = None,
    reframe: bool = True,
) -> tuple[dict[str, list[Any]], str]:
    """Grad-CAM thumbnails per class (for the class the model chose), or an empty dict and why. ``answered``: the
    classes ``y_true`` and ``y_prob``'s columns index (``--classes``; default the model's).

    Each cell is read as ``wbc classify`` read it for its answer (:func:`wbc.classify.read_cell`, re-framed when
    ``reframe``) and its maps averaged over the views ``--tta`` averages, so the overlay explains the input that was
    answered (a plain resize of the file is another input, which the network can answer otherwise)."""
    from wbc.classify import read_cell, tta_views_of
    from wbc.errors import ImageReadError
    from wbc.evaluate.gradcam import cam_heatmap, overlay_heatmap
    from wbc.evaluate.report import Thumb
    from wbc.preprocess import centre_crop, resize_square
    from wbc.reframe import framing_stats_of

    if "cam" not in classifier.outputs:
        return {}, ("This model has no class-activation maps for its answers (none in the file, or a head refitted "
                    "by wbc adapt that the file's maps predate), so no Grad-CAM overlays can be drawn.")
    classes = list(answered or classifier.classes)
    picks = pick_gradcam_cells(y_true, y_prob, len(classes), per_class)
    out: dict[str, list[Any]] = {}
    size = classifier.info.input_size
    framing = framing_stats_of(classifier) if reframe else False
    views = tta_views_of(classifier)
    for k, idx in picks.items():
        shown, cells, keep = [], [], []
        for i in idx:
            try:
                cell = read_cell(samples[i].path, size, framing)
            except ImageReadError:  # gone or changed since it was classified
                continue
            # show what the network sees (a centre-crop model sees only the cell's centre)
            shown.append(resize_square(centre_crop(cell[None], classifier.info.centre_crop)[0], THUMB))
            cells.append(cell)
            keep.append(i)
        if not keep:
            continue
        cams = view_averaged_cams(classifier, np.stack(cells), views)
        thumbs = []
        for rgb, cam, i in zip(shown, cams, keep, strict=True):
            p = int(y_prob[i].argmax())
            heat = cam_heatmap(cam[classifier.classes.index(classes[p])], rgb.shape[:2],
                               input_size=classifier.info.network_size)
            thumbs.append(
                Thumb(
                    rgb,
                    classes[k],
                    classes[p],
                    float(y_prob[i, p]),
                    str(samples[i].path),
                    overlay_heatmap(rgb, heat),
                )
            )
        out[classes[k]] = thumbs
    return out, ""


def evaluate(
    data: str | os.PathLike[str] | EvalData,
    classifier: Classifier,
    output: str | os.PathLike[str],
    *,
    split: str | None = "test",
    mapping: dict[str, str] | None = None,
    root: Path | None = None,
    batch_size: int = 64,
    workers: int = 2,
    n_boot: int = 1000,
    seed: int = 0,
    refit_temperature: bool = False,
    run_dir: str | os.PathLike[str] | None = None,
    gallery_size: int = GALLERY_SIZE,
    cams_per_class: int = CAMS_PER_CLASS,
    progress: Callable[[int], None] | None = None,
    reframe: bool = True,
) -> dict[str, Any]:
    """Evaluate ``classifier`` on labelled ``data``; write ``metrics.json``, ``predictions.csv`` and
    ``report.html`` into ``output``; return the metrics.

    Cells whose label the model does not know, or that is not among the classes it answers among (``--classes``,
    :meth:`wbc.model.Classifier.with_classes`), are classified, listed in predictions.csv and counted in
    ``unknown_labels``, but not scored. Unreadable files are listed in ``unreadable``.
    ``refit_temperature``: when DATA is a manifest with a ``val`` split, also fit a temperature on it
    and report the ECE with that one. ``run_dir``: a cross-validation run whose per-fold validation
    metrics are summarised (mean ± sd) in the report. ``reframe``: as ``wbc classify`` (default on).
    """
    from wbc import __version__
    from wbc.evaluate.metrics import classification_metrics, fold_summary
    from wbc.evaluate.report import ReportInputs, Thumb, build_report, caution_text
    from wbc.formats import write_predictions_csv

    t0 = time.perf_counter()
    out_dir = check_output_file(Path(output) / "metrics.json").parent  # a one-line error before any work
    ed = data if isinstance(data, EvalData) else load_eval_data(data, split, mapping, root)
    classes = classifier.classes
    chosen = tuple(getattr(classifier, "label_set", ()))
    answered = list(chosen) if chosen else list(classes)  # the classes answers are among (--classes): those scored
    # labels are known before any image is read: data with none to score is refused before classifying it all
    # (before wbc 0.35.0 every image was classified first, then the run refused with nothing written)
    if not any(s.label in answered for s in ed.samples):
        labels = sorted({s.label for s in ed.samples})
        raise WbcError(
            f"{ed.source}: none of the labels in the data ({', '.join(labels)}) is a class "
            f"{'chosen with --classes' if chosen else 'of the model'} ({', '.join(answered)}); "
            "use --map OLD=NEW to rename"
        )
    scored = classify_samples(ed.samples, classifier, batch_size, workers, progress, reframe)
    t_classify = time.perf_counter() - t0

    if not scored.samples:
        raise WbcError(
            f"{ed.source}: none of the {len(ed.samples)} images could be read "
            f"(first problem: {scored.errors[0][1] if scored.errors else 'unknown'}){root_hint(ed)}"
        )
    known = np.array([s.label in answered for s in scored.samples], bool)
    if not known.any():  # every file with a label to score was unreadable
        to_score = {str(s.path) for s in ed.samples if s.label in answered}
        first = next((msg for path, msg in scored.errors if path in to_score), "unknown")
        raise WbcError(
            f"{ed.source}: none of the images labelled with a class to score could be read (first problem: {first})"
        )
    ks = [s for s, k in zip(scored.samples, known, strict=True) if k]
    y_true = np.array([answered.index(s.label) for s in ks], np.int64)
    # a cell labelled outside the chosen classes cannot be answered right: it is listed, not scored. The chosen
    # classes' logits give the raw and temperature-only ECE; the stated probabilities (y_prob) the chart and the rest
    logits = scored.logits[known][:, [classes.index(c) for c in answered]].astype(np.float32)
    temperature = float(classifier.info.temperature)
    # scored as wbc classify answers: over the chosen label set only (--classes), with the evidence it weighs
    # besides the network (wbc.classify.predict_cells' ``adjust``); the logits serve the calibration measures
    y_prob = np.array([[p.probabilities[c] for c in answered]
                       for p, k in zip(scored.predictions, known, strict=True) if k], np.float32)

    metrics: dict[str, Any] = {
        "model_id": classifier.model_id,
        "classes_chosen": list(chosen),
        "data": str(ed.source.resolve()),
        "data_description": ed.description,
        **provenance(ed, classifier),
        "manifest_hash": manifest_hash(ed.samples),
        "wbc_version": __version__,
        "created": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    metrics.update(
        classification_metrics(
            y_true,
            y_prob,
            answered,
            logits=logits,
            temperature=temperature,
            review_threshold=float(classifier.info.review_threshold),
            n_boot=n_boot,
            seed=seed,
            # the flag wbc classify gives (predictions.csv's review column), every reason counted
            review=np.array([p.review for p, k in zip(scored.predictions, known, strict=True) if k], bool),
        )
    )
    unknown = Counter(s.label for s, k in zip(scored.samples, known, strict=True) if not k)
    called: dict[str, Counter[str]] = {}
    for s, p, k in zip(scored.samples, scored.predictions, known, strict=True):
        if not k:
            called.setdefault(s.label, Counter())[p.label] += 1
    metrics["unknown_labels"] = {
        "count": int(sum(unknown.values())),
        "labels": dict(sorted(unknown.items())),
        "called": {lab: dict(c.most_common()) for lab, c in sorted(called.items())},
    }
    # a `wbc cases export`: how the lab's cells were answered in use, beside the crops' score (since wbc 0.37.0)
    metrics["recorded_calls"] = recorded_calls_score(ed, ks, root)
    metrics["unreadable"] = [list(e) for e in scored.errors]
    metrics["skipped"] = [list(e) for e in ed.skipped]
    metrics["repeated"] = [list(e) for e in ed.repeated]
    if refit_temperature:
        metrics["ece"]["refit"] = _refit_on_val(
            ed, classifier, mapping, root, batch_size, workers, logits, y_true, reframe
        )

    folds = None
    run = Path(run_dir) if run_dir else classifier.path.parent
    fold_metrics = load_fold_metrics(run)
    if len(fold_metrics) >= 2:
        folds = fold_summary(fold_metrics)
        metrics["cross_validation"] = {"run": str(run), "folds": len(fold_metrics), "summary": folds}

    t1 = time.perf_counter()
    mistakes, unsure = pick_galleries(y_true, y_prob, gallery_size)

    def thumbs(idx: list[int]) -> list[Thumb]:
        out = []
        for i in idx:
            img = _thumb(ks[i].path)
            if img is not None:
                p = int(y_prob[i].argmax())
                out.append(Thumb(img, answered[y_true[i]], answered[p], float(y_prob[i, p]), str(ks[i].path)))
        return out

    cams, cam_note = (
        build_gradcam(classifier, ks, y_true, y_prob, cams_per_class, answered, reframe) if cams_per_class
        else ({}, "")
    )
    inputs = ReportInputs(
        y_true=y_true,
        y_prob=y_prob,
        logits=logits,
        confident_mistakes=thumbs(mistakes),
        unsure_correct=thumbs(unsure),
        gradcam=cams,
        gradcam_note=cam_note,
        folds=folds,
    )
    metrics["caution"] = caution_text(metrics) or None
    html_text = build_report(metrics, inputs)
    metrics["timing_seconds"] = {
        "classify": round(t_classify, 2),
        "report": round(time.perf_counter() - t1, 2),
    }
    # every file is written only now, once all is built, so a run stopped or failed while the report was built
    # leaves an earlier run's files as they were (before wbc 0.35.0 predictions.csv came first and could sit beside
    # another run's metrics.json); metrics.json last. predictions.csv: every readable cell, with its label as given
    # and whether it was scored
    correct = [
        ("" if not k else str(p.label == s.label).lower())
        for s, p, k in zip(scored.samples, scored.predictions, known, strict=True)
    ]
    write_predictions_csv(
        out_dir / "predictions.csv",
        scored.predictions,
        classes,
        extra={"true_label": [s.label for s in scored.samples], "correct": correct},
    )
    atomic_write_text(out_dir / "report.html", html_text)
    atomic_write_json(out_dir / "metrics.json", metrics)
    return metrics


def _refit_on_val(
    ed: EvalData,
    classifier: Classifier,
    mapping: dict[str, str] | None,
    root: Path | None,
    batch_size: int,
    workers: int,
    logits: np.ndarray,
    y_true: np.ndarray,
    reframe: bool = True,
) -> dict[str, Any] | None:
    """Temperature refitted on the manifest's ``val`` split, and the ECE it gives on the evaluated cells.

    Fitted as the rest is measured: on the val cells of the classes answered among (``--classes``), their logits
    only, read as ``reframe`` says; ``logits`` and ``y_true`` are the evaluated cells' over those classes."""
    from wbc.calibration import expected_calibration_error, fit_temperature
    from wbc.model import softmax

    if not ed.is_manifest or ed.split == "val":
        return None
    try:
        val = load_eval_data(ed.source, "val", mapping, root)
    except WbcError:
        return None
    classes = classifier.classes
    answered = list(getattr(classifier, "label_set", ())) or list(classes)
    vs = [s for s in val.samples if s.label in answered]
    if not vs:
        return None
    sc = classify_samples(vs, classifier, batch_size, workers, reframe=reframe)
    if not sc.samples:
        return None
    yv = np.array([answered.index(s.label) for s in sc.samples])
    t = fit_temperature(sc.logits[:, [classes.index(c) for c in answered]], yv)
    return {
        "temperature": t,
        "ece": expected_calibration_error(softmax(logits, t), y_true),
        "fitted_on": f"the val split of {ed.source.name} ({len(yv)} cells)",
    }
