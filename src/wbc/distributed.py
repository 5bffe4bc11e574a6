"""The Ray engine: ``wbc analyze --engine ray`` and ``wbc classify --engine ray`` on a Ray cluster.

A Ray Data pipeline: the input list -> read the file bytes -> decode, segment, classify (and draw) in an
actor pool (:meth:`ray.data.Dataset.map_batches` with a class: each actor builds one ONNX Runtime session per
model, with ``threads`` threads, once) -> results stream back to the driver, which commits them with the
same code and the same bytes as the local engine (:mod:`wbc.batch`). Workers therefore need to read the
inputs (a shared file system, or one machine) but never the output folder. Without ``address`` a local Ray
runtime is started; ``"auto"`` or ``host:port`` joins a running cluster (``ray start --head``).

Ray is an optional dependency (the ``distributed`` extra) and is imported only here, inside functions.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wbc.batch import (
    AnalyzeSummary,
    FieldOutput,
    Job,
    ModelSpec,
    analyze_job,
    commit,
    finish,
    pending_jobs,
    plan_jobs,
    prepare_output,
    run_settings,
    segmenter_id_of,
    tally,
    without_copies,
)
from wbc.classify import ClassifyResult
from wbc.errors import WbcError
from wbc.types import Prediction

MISSING_RAY = "--engine ray needs Ray: pip install 'wbc[distributed]' (the distributed extra)"


def import_ray() -> Any:
    """``ray``, or a one-line error naming the extra that installs it."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise WbcError(MISSING_RAY) from None
    return ray


def connect(address: str | None = None, num_cpus: int | None = None) -> Any:
    """Join the cluster at ``address`` (``"auto"``: the one ``ray start`` runs here), or start a local Ray
    runtime when ``address`` is None. Returns the ``ray`` module. A driver already connected stays so."""
    ray = import_ray()
    if not ray.is_initialized():
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")  # C++ notices about Ray Data's own actors
        kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                                  "log_to_driver": False, "configure_logging": True}
        if address is None:
            kwargs["num_cpus"] = num_cpus or os.cpu_count() or 1
        for attempt in range(3):  # Ray gives a new local node 30 s to start: too few on a loaded machine
            try:
                ray.init(address=address, **kwargs)
                break
            except ConnectionError as exc:
                raise WbcError(f"cannot join the Ray cluster at {address}: {exc}") from None
            except Exception as exc:
                if "timed out during startup" not in str(exc) or attempt == 2:
                    raise WbcError(f"the Ray runtime did not start: {exc}") from None
                ray.shutdown()
    for name in ("ray", "ray.data"):  # Ray Data logs every execution plan (and that wbc hides its progress bars)
        logging.getLogger(name).setLevel(logging.ERROR)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # wbc shows its own progress
    return ray


def read_bytes(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Pipeline stage: the encoded bytes of each input file (None when unreadable: the analyser reports why)."""
    data: list[bytes | None] = []
    for p in batch["path"]:
        try:
            data.append(Path(p).read_bytes())
        except OSError:
            data.append(None)
    return {**batch, "data": np.array(data, dtype=object)}


class FieldAnalyzer:
    """Actor: one classifier and one segmenter session, kept for the life of the actor."""

    def __init__(self, spec: ModelSpec, draw: bool) -> None:
        self.classifier, self.segmenter = spec.load()
        self.draw = draw

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = [analyze_job(Job(str(p), str(s)), self.classifier, self.segmenter, self.draw,
                            data=None if d is None else bytes(d))
                for p, s, d in zip(batch["path"], batch["stem"], batch["data"], strict=True)]
        return {
            "path": np.array([o.job.path for o in outs], dtype=object),
            "stem": np.array([o.job.stem for o in outs], dtype=object),
            "json": np.array([o.json_text for o in outs], dtype=object),
            "png": np.array([o.png if o.png is not None else b"" for o in outs], dtype=object),
            "error": np.array([o.error for o in outs], dtype=object),
            "t_analysis": np.array([o.seconds_analysis for o in outs]),
            "t_render": np.array([o.seconds_render for o in outs]),
        }


def bind(cls: type[Any], **kwargs: Any) -> type[Any]:
    """``cls`` with its constructor arguments built in. Ray Data ships a class by value, so the actors get the
    arguments with the class, not as objects in the object store (which restartable actors warn about)."""

    def __init__(self: Any) -> None:
        cls.__init__(self, **kwargs)

    return type(cls.__name__, (cls,), {"__init__": __init__})


def _field_output(row: dict[str, Any], draw: bool) -> FieldOutput:
    return FieldOutput(Job(str(row["path"]), str(row["stem"])), str(row["json"]),
                       bytes(row["png"]) if draw and not row["error"] else None, str(row["error"]),
                       float(row["t_analysis"]), float(row["t_render"]))


def analyze_paths_ray(
    inputs: Iterable[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    spec: ModelSpec,
    draw: bool = True,
    overwrite: bool = False,
    actors: int = 2,
    address: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> AnalyzeSummary:
    """``wbc analyze --engine ray``: the same outputs as :func:`wbc.batch.run_local`, from an actor pool.

    ``actors``: how many actors (each with ``spec.threads`` CPUs and ONNX Runtime threads).
    """
    ray = connect(address, num_cpus=None)
    out = prepare_output(output)
    jobs, copies = without_copies(plan_jobs(inputs, out))
    classifier, segmenter = spec.load()  # the driver checks the models once, and learns their ids
    seg_id = segmenter_id_of(segmenter)
    todo = pending_jobs(out, jobs, classifier.model_id, seg_id, draw, overwrite, run_settings(classifier, segmenter))
    summary = AnalyzeSummary(skipped=len(jobs) - len(todo), model_id=classifier.model_id, segmenter_id=seg_id,
                             copies=copies)
    if progress:
        progress(summary.skipped, len(jobs))
    if todo:
        ds = (ray.data.from_items([{"path": j.path, "stem": j.stem} for j in todo],
                                  override_num_blocks=min(len(todo), 64 * actors))
              .map_batches(read_bytes, batch_size=1, num_cpus=spec.threads)
              .map_batches(bind(FieldAnalyzer, spec=spec, draw=draw), batch_size=1,
                           compute=ray.data.ActorPoolStrategy(size=min(actors, len(todo))), num_cpus=spec.threads))
        for i, row in enumerate(ds.iter_rows()):
            result = _field_output(row, draw)
            commit(out, result)
            tally(summary, result)
            if progress:
                progress(summary.skipped + i + 1, len(jobs))
    order = {j.path: i for i, j in enumerate(jobs)}
    summary.errors.sort(key=lambda e: order[e[0]])
    return finish(out, jobs, list(classifier.classes), summary)


# --------------------------------------------------------------------------- wbc classify --engine ray


class CellClassifier:
    """Actor: one classifier session; decodes and classifies a batch of single-cell images exactly as
    :func:`wbc.classify.classify_paths` does (it is that function, on this actor's share of the files)."""

    def __init__(self, spec: ModelSpec, options: dict[str, Any]) -> None:
        # the spec's classifier as the driver's: its label set, views and colour calibration (load_classifier)
        self.classifier = spec.load_classifier()
        self.options = options

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from wbc.classify import classify_paths

        paths = [str(p) for p in batch["path"]]
        res = classify_paths(paths, self.classifier, batch_size=len(paths), workers=1, **self.options)
        by_path = {p.path: p for p in res.predictions}
        errors = dict(res.errors)
        return {"path": batch["path"],
                "prediction": np.array([by_path.get(p) for p in paths], dtype=object),
                "error": np.array([errors.get(p, "") for p in paths], dtype=object)}


def classify_paths_ray(
    paths: Sequence[str | os.PathLike[str]],
    spec: ModelSpec,
    batch_size: int = 128,
    actors: int = 2,
    address: str | None = None,
    progress: Callable[[int], None] | None = None,
    **options: Any,
) -> ClassifyResult:
    """``wbc classify --engine ray``: predictions in input order and (path, error) per file that failed, as
    :func:`wbc.classify.classify_paths` gives them (logits are not gathered from the actors);
    ``options`` are that function's (``reframe``, ``classes``)."""
    ray = connect(address)
    names = [str(Path(p)) for p in paths]
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    n_blocks = max(1, min(-(-len(names) // batch_size), 64 * actors))
    ds = (ray.data.from_items([{"path": p} for p in names], override_num_blocks=n_blocks)
          .map_batches(bind(CellClassifier, spec=spec, options=options), batch_size=batch_size,
                       compute=ray.data.ActorPoolStrategy(size=min(actors, n_blocks)), num_cpus=spec.threads))
    preds: list[Prediction] = []
    errors: list[tuple[str, str]] = []
    for i, row in enumerate(ds.iter_rows()):
        if row["error"]:
            errors.append((str(row["path"]), str(row["error"])))
        else:
            preds.append(row["prediction"])
        if progress:
            progress(i + 1)
    return ClassifyResult(predictions=preds, logits=np.zeros((0, 0), np.float32), errors=errors)
