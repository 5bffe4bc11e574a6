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

import dataclasses
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wbc.batch import (
    AnalyzeSummary,
    FieldOutput,
    Job,
    ModelSpec,
    analyze_job,
    answered_and_columns,
    check_overwrites,
    committed,
    finish,
    left_out_errors,
    one_line,
    other_images,
    pending_jobs,
    plan_run,
    prepare_output,
    run_settings,
    segmenter_id_of,
    tally,
    without_copies,
)
from wbc.classify import ClassifyResult
from wbc.errors import ImageReadError, WbcError
from wbc.io import read_bytes as read_file
from wbc.runtime import raise_exit
from wbc.types import Prediction

MISSING_RAY = "--engine ray needs Ray, the distributed extra: pip install -e '.[distributed]' in wbc's checkout"


def import_ray() -> Any:
    """``ray``, or a one-line error naming the extra that installs it."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise WbcError(MISSING_RAY) from None
    return ray


#: The HTTP/2 client preface and an empty SETTINGS frame: a gRPC server (Ray's GCS, the Ray Client server) answers
#: with a SETTINGS frame of its own; a web server, Redis or SSH answers otherwise or not at all.
HTTP2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def speaks_grpc(sock: socket.socket) -> bool:
    """Whether the server on ``sock`` answers the HTTP/2 preface with a SETTINGS frame (a frame header of 9 bytes,
    type 4), as every gRPC server does at once; False on any other answer, a close or silence (the socket's
    timeout)."""
    try:
        sock.sendall(HTTP2_HELLO)
        head = b""
        while len(head) < 9 and (chunk := sock.recv(9 - len(head))):
            head += chunk
    except OSError:
        return False
    return len(head) == 9 and head[3] == 0x04


def check_address(address: str | None) -> None:
    """A one-line error, within seconds, when nothing listens at ``host:port`` (or ``ray://host:port``), or when what
    listens there does not speak gRPC (the dashboard's 8265, any web server): Ray itself retries such an address for
    minutes (nothing there: about 14), printing C++ warnings and deaf to SIGTERM. ``None``, ``"auto"`` and
    ``"local"`` are Ray's own to resolve (``"auto"`` with no cluster already fails in one line). A cluster with
    ``RAY_USE_TLS`` speaks TLS first: only the connection is checked there."""
    if address is None or address in ("auto", "local"):
        return
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise WbcError(f"--ray-address {address}: give HOST:PORT (the head's port, 6379 unless `ray start --head "
                       "--port` chose another), ray://HOST:PORT or auto")
    try:
        sock = socket.create_connection((host.strip("[]"), int(port)), timeout=10)
    except OSError as exc:
        why = exc.strerror or exc.__class__.__name__
        raise WbcError(f"cannot join the Ray cluster at {address}: nothing answers there ({why}); "
                       f"is `ray start --head` running on {host}?") from None
    with sock:
        if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true") or speaks_grpc(sock):
            return
    raise WbcError(f"--ray-address {address}: something answers there but it is not a Ray cluster (give the head's "
                   "port, 6379 unless `ray start --head --port` chose another, or Ray Client's 10001 with ray://; "
                   "not the dashboard's 8265)")


def connect(address: str | None = None, num_cpus: int | None = None) -> Any:
    """Join the cluster at ``address`` (``"auto"``: the one ``ray start`` runs here), or start a local Ray
    runtime when ``address`` is None, also where Ray would find a cluster itself (``RAY_ADDRESS``, the file a
    ``ray start`` here leaves): before wbc 0.32.0 Ray then refused ``num_cpus`` and the run stopped. Returns the
    ``ray`` module. A driver already connected stays so. The SIGTERM handler in place before (in the main thread) is
    the one after, Python's default made :func:`wbc.runtime.raise_exit` (status 143, no C++ stack dump): ray.init
    replaced a caller's own before wbc 0.37.0."""
    check_address(address)
    ray = import_ray()
    if not ray.is_initialized():
        # C++ error lines about Ray Data's own actors ending (core_worker.cc: "Actor with class name ... has been
        # killed") at every run's end; the price is Ray's one line saying it read this variable
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
        # ERROR, not WARNING: Ray's token-authentication notice on every run is none of the user's business
        kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.ERROR,
                                  "log_to_driver": False, "configure_logging": True}
        if address is None:
            kwargs["num_cpus"] = num_cpus or os.cpu_count() or 1
        # ray.init replaces the SIGTERM handler in place (abseil's C-level failure handler, then Ray's own Python one):
        # the one before it is put back after, the caller's own (a job runner's graceful stop) as it was, Python's
        # default as raise_exit (below); in a thread other than the main one Python can set none, and none is saved
        main = threading.current_thread() is threading.main_thread()
        before = signal.getsignal(signal.SIGTERM) if main else None
        for attempt in range(3):  # Ray gives a new local node 30 s to start: too few on a loaded machine
            try:
                ray.init(address=address or "local", **kwargs)  # "local": never a cluster Ray finds by itself
                break
            except ConnectionError as exc:
                raise WbcError(f"cannot join the Ray cluster at {address}: {exc}") from None
            except Exception as exc:
                if "timed out during startup" not in str(exc) or attempt == 2:
                    raise WbcError(f"the Ray runtime did not start: {exc}") from None
                ray.shutdown()
        if before is signal.SIG_DFL:
            # before wbc 0.37.0 a SIGTERM (a scheduler, `kill`) printed abseil's C++ stack dump and exited 134, as a
            # crash; now it ends the run as Ctrl-C does (Ray shut down at exit, the fields written kept), with status
            # 143 and no word, as the local engine
            signal.signal(signal.SIGTERM, raise_exit)
        elif before is not None:  # the caller's own handler (or SIG_IGN): replaced by Ray's until wbc 0.37.0
            signal.signal(signal.SIGTERM, before)
    for name in ("ray", "ray.data"):  # Ray Data logs every execution plan (and that wbc hides its progress bars)
        logging.getLogger(name).setLevel(logging.ERROR)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # wbc shows its own progress
    return ray


def check_threads(ray: Any, threads: int) -> None:
    """Refuse ``--threads`` above every node's CPU count: an actor asking for more CPUs than any node has is never
    scheduled, and Ray Data waits for ever without a word."""
    cpus = max((int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n["Alive"]), default=0)
    if threads > cpus:
        raise WbcError(f"--threads {threads}: no Ray node has {threads} CPUs (largest: {cpus}); "
                       f"use --threads {max(cpus, 1)} or fewer")


def _named(message: str, file: str, name: str) -> str:
    """``message`` about the absolute ``file`` an actor read, told with the ``name`` the user gave, as the local
    engine tells it."""
    return name + message[len(file):] if message.startswith(file) else message


def read_bytes(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Pipeline stage: the encoded bytes of each input file, read by its absolute path (``file``: actors run in
    the folder ``ray start`` ran in, not the driver's), or why it cannot be read, in the local engine's words.
    Never None: Ray Data turns a column of None into NaN, which read as 4 bytes of a corrupt image."""
    data: list[bytes] = []
    errors: list[str] = []
    for p, f in zip(batch["path"], batch["file"], strict=True):
        try:
            data.append(read_file(str(f)))
            errors.append("")
        except ImageReadError as exc:
            data.append(b"")
            errors.append(_named(str(exc), str(Path(f)), str(Path(p))))
    return {**batch, "data": np.array(data, dtype=object), "read_error": np.array(errors, dtype=object)}


class FieldAnalyzer:
    """Actor: one classifier and one segmenter session, kept for the life of the actor."""

    def __init__(self, spec: ModelSpec, draw: bool) -> None:
        self.classifier, self.segmenter = spec.load()
        self.draw = draw

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = [FieldOutput(Job(str(p), str(s)), error=str(e)) if e else
                analyze_job(Job(str(p), str(s)), self.classifier, self.segmenter, self.draw, data=bytes(d))
                for p, s, d, e in zip(batch["path"], batch["stem"], batch["data"], batch["read_error"], strict=True)]
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


def absolute(spec: ModelSpec) -> ModelSpec:
    """``spec`` with its model files absolute: the actors do not run in the driver's folder."""
    return dataclasses.replace(spec, **{k: os.path.abspath(v) for k in ("model", "segmenter_model")
                                        if (v := getattr(spec, k))})


def rows(ds: Any) -> Iterator[dict[str, Any]]:
    """``ds``'s rows; a failure inside Ray (a model missing on one worker machine) as one line naming its root
    cause, not hundreds of lines of Ray tracebacks."""
    try:
        yield from ds.iter_rows()
    except WbcError:
        raise
    except Exception as exc:
        cause: BaseException | None = exc
        for _ in range(10):  # Ray wraps the actor's own error (RayTaskError.cause, __cause__) a few times over
            if cause is None or isinstance(cause, WbcError):
                break
            cause = getattr(cause, "cause", None) or cause.__cause__
        if isinstance(cause, WbcError):
            raise WbcError(str(cause)) from None
        raise WbcError(f"the Ray run failed: {one_line(exc)}") from None


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
    on_classifier: Callable[[Any], None] | None = None,
) -> AnalyzeSummary:
    """``wbc analyze --engine ray``: the same outputs as :func:`wbc.batch.run_local`, from an actor pool.

    ``actors``: how many actors (each with ``spec.threads`` CPUs and ONNX Runtime threads). ``on_classifier``:
    called with the driver's classifier once loaded (the CLI's note on a model without OOD statistics).
    The output folder, the inputs and the models are checked before Ray starts (seconds, on a loaded machine
    tens of them), and Ray does not start at all when every field is done.
    """
    inputs = list(inputs)  # walked twice: for the fields and for what the listing left out
    out = prepare_output(output)
    planned, earlier = plan_run(inputs, out)
    jobs, copies = without_copies(planned)
    classifier, segmenter = spec.load()  # the driver checks the models once, and learns their ids
    if on_classifier:
        on_classifier(classifier)
    seg_id = segmenter_id_of(segmenter)
    redone: dict[str, int] = {}
    todo = pending_jobs(out, jobs, classifier.model_id, seg_id, draw, overwrite, run_settings(classifier, segmenter),
                        redone)
    check_overwrites(out, todo, planned, draw)
    summary = AnalyzeSummary(skipped=len(jobs) - len(todo), model_id=classifier.model_id, segmenter_id=seg_id,
                             copies=copies, earlier_outputs=earlier, replaced=other_images(out, todo), redone=redone)
    if progress:
        progress(summary.skipped, len(jobs))
    if todo:
        ray = connect(address, num_cpus=None)
        check_threads(ray, spec.threads)
        spec = absolute(spec)  # the actors run in the folder `ray start` ran in, not the driver's
        ds = (ray.data.from_items([{"path": j.path, "stem": j.stem, "file": os.path.abspath(j.path)} for j in todo],
                                  override_num_blocks=min(len(todo), 64 * actors))
              .map_batches(read_bytes, batch_size=1, num_cpus=spec.threads)
              .map_batches(bind(FieldAnalyzer, spec=spec, draw=draw), batch_size=1,
                           compute=ray.data.ActorPoolStrategy(size=min(actors, len(todo))), num_cpus=spec.threads))
        # the last run's pooled files go only now, before the first field is written (wbc.batch.committed)
        for i, result in enumerate(committed(out, (_field_output(row, draw) for row in rows(ds)))):
            tally(summary, result)
            if progress:
                progress(summary.skipped + i + 1, len(jobs))
    order = {j.path: i for i, j in enumerate(jobs)}
    summary.errors.sort(key=lambda e: order[e[0]])
    classes, columns = answered_and_columns(classifier)  # the differential's rows, cells.csv's probability columns
    return finish(out, jobs, classes, summary, columns, left_out_errors(inputs))


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

        names = [str(p) for p in batch["path"]]
        files = [str(f) for f in batch["file"]] if "file" in batch else names  # absolute: see classify_paths_ray
        res = classify_paths(files, self.classifier, batch_size=max(1, len(files)), workers=1, **self.options)
        by_file = {p.path: p for p in res.predictions}
        errors = dict(res.errors)
        pairs = list(zip(files, names, strict=True))
        preds = [dataclasses.replace(by_file[f], path=n) if f in by_file else None for f, n in pairs]
        return {"path": batch["path"], "prediction": np.array(preds, dtype=object),
                "error": np.array([_named(errors[f], f, n) if f in errors else "" for f, n in pairs], dtype=object)}


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
    spec = absolute(spec)
    ray = connect(address)
    check_threads(ray, spec.threads)
    names = [str(Path(p)) for p in paths]
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    n_blocks = max(1, min(-(-len(names) // batch_size), 64 * actors))
    # the actors run in the folder `ray start` ran in: they read absolute paths, and answer with the given names
    ds = (ray.data.from_items([{"path": p, "file": os.path.abspath(p)} for p in names], override_num_blocks=n_blocks)
          .map_batches(bind(CellClassifier, spec=spec, options=options), batch_size=batch_size,
                       compute=ray.data.ActorPoolStrategy(size=min(actors, n_blocks)), num_cpus=spec.threads))
    preds: list[Prediction] = []
    errors: list[tuple[str, str]] = []
    for i, row in enumerate(rows(ds)):
        if row["error"]:
            errors.append((str(row["path"]), str(row["error"])))
        else:
            preds.append(row["prediction"])
        if progress:
            progress(i + 1)
    return ClassifyResult(predictions=preds, logits=np.zeros((0, 0), np.float32), errors=errors)
