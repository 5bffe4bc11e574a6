"""The one place an ONNX Runtime session is set up (classifier, segmenters, detector, export checks).

CPU only, ``threads`` intra-op threads, one inter-op thread, warnings silenced, and an unreadable file turned
into a one-line :class:`~wbc.errors.ModelError` naming it. :class:`SessionGroup`: one single-thread session per
core, a batch's rows shared among them, for the classifier's large batches. :func:`one_blas_thread`: NumPy's
matrix products on one thread while the network runs. :func:`die_with_parent`: a child process that ends with the
one that started it (Linux); :func:`raise_exit`: a stopping signal as SystemExit, through the clean-ups.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from wbc.errors import ModelError, checked_whole

if TYPE_CHECKING:
    import onnxruntime as ort
    from threadpoolctl import ThreadpoolController

#: What ``threads`` means in its error message (``load_model(threads=...)``, ``--threads``).
THREADS_MEANING = "the cores a network runs on; 0 is taken as 1"


def ort_session(source: str | os.PathLike[str] | bytes, threads: int = 1, *, spin: bool = True) -> ort.InferenceSession:
    """An ONNX Runtime CPU session for the model file (or serialised model bytes) ``source``.

    ``spin``: let idle intra-op threads busy-wait between runs (ONNX Runtime's default). The classifier turns it
    off: its decoding threads need those cores (`wbc classify` ran 1.35x faster end to end on 2 cores without
    spinning, benchmarks/classify_speed.py).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, checked_whole(threads, "threads", 0, meaning=THREADS_MEANING))
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    model = source if isinstance(source, bytes) else str(Path(source))
    try:
        return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors
        name = "the model bytes" if isinstance(source, bytes) else str(source)
        raise ModelError(f"{name}: not a valid ONNX model ({str(exc).splitlines()[0][:200]})") from None


#: A batch is shared among a :class:`SessionGroup`'s sessions from this many rows per session; a smaller one runs as
#: one call on all of its cores.
SPLIT_MIN_ROWS = 4
#: Each single-thread session runs its share of a batch this many rows at a time (0: all at once). A few rows'
#: activations stay in the core's cache where 64 rows' do not: one single-thread session, the shipped network, 8 rows
#: a call 464-472 against 410-412 cells/s for 64 (CPU time, a quiet 2-core machine); `wbc classify` end to end on 1,000
#: PBC files, 2 cores, the two alternated three times in one run: 385-391 against 361-366 cells/s, 4.70 against 5.13
#: CPU ms a cell, the same answers to the last bit (since wbc 0.30.0; ``benchmarks/classify_speed.py`` times both,
#: ``unchunked``).
CHUNK_ROWS = 8


class SessionGroup:
    """``threads`` single-thread sessions of one model; :meth:`run` shares a batch's rows among them, in parallel.

    Why not one session with ``threads`` intra-op threads: each of its operators waits for its slowest thread, so
    while `wbc classify`'s decoding threads hold a core, the whole network waits. Independent single-thread calls
    let the cores stay busy: 2,000 PBC files on 2 cores, 369.2 against 352.8 cells/s end to end in one run, the
    network alone 749 against 738 (`benchmarks/classify_speed.py`, ``end_to_end_one_session_cells_per_s``). The
    answers are the same: every row is computed by the same graph either way. A batch of fewer than
    :data:`SPLIT_MIN_ROWS` rows a session (a smear field's few cells) runs as one call on all the cores instead, which
    answers it sooner.

    >>> from wbc.paths import DEFAULT_MODEL
    >>> group = SessionGroup(DEFAULT_MODEL, threads=2)
    >>> x = np.zeros((3, 3, 160, 160), np.float32)
    >>> [a.shape for a in group.run(["logits"], x)], len(group.sessions)
    ([(3, 8)], 2)
    """

    def __init__(self, source: str | os.PathLike[str] | bytes, threads: int = 2) -> None:
        threads = checked_whole(threads, "threads", 0, meaning=THREADS_MEANING)  # "2" failed in max()
        self.sessions = [ort_session(source, 1, spin=False) for _ in range(max(1, threads))]
        self.input_name = self.sessions[0].get_inputs()[0].name
        self._pool = ThreadPoolExecutor(len(self.sessions) - 1) if len(self.sessions) > 1 else None
        # a smear field's few cells: one call on every core answers sooner than a row or two per session
        self._joint = ort_session(source, len(self.sessions), spin=False) if len(self.sessions) > 1 else None

    def run(self, names: Sequence[str], x: np.ndarray) -> list[np.ndarray]:
        """The outputs ``names`` for the input batch ``x``, as ``session.run(names, {input: x})`` gives them."""
        feed = list(names)
        if self._pool is None or self._joint is None:  # one core
            return list(self.sessions[0].run(feed, {self.input_name: x}))
        if len(x) < SPLIT_MIN_ROWS * len(self.sessions):
            return list(self._joint.run(feed, {self.input_name: x}))
        parts = np.array_split(x, len(self.sessions))
        futures = [self._pool.submit(self._run_chunked, s, feed, part)
                   for s, part in zip(self.sessions[1:], parts[1:], strict=True)]
        first = self._run_chunked(self.sessions[0], feed, parts[0])  # this thread takes a share too
        return _joined([first] + [f.result() for f in futures])

    def _run_chunked(self, session: ort.InferenceSession, feed: list[str], x: np.ndarray) -> list[np.ndarray]:
        """``session``'s outputs ``feed`` for ``x``, run :data:`CHUNK_ROWS` rows at a time."""
        step = CHUNK_ROWS or len(x)
        if len(x) <= step:
            return list(session.run(feed, {self.input_name: x}))
        return _joined([session.run(feed, {self.input_name: x[i : i + step]}) for i in range(0, len(x), step)])


def _joined(parts: Sequence[Sequence[np.ndarray]]) -> list[np.ndarray]:
    """Each output of several runs over consecutive row blocks, joined back into one in row order."""
    return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]


@functools.lru_cache(maxsize=1)
def _blas_controller(modules: int) -> ThreadpoolController:
    """The loaded BLAS libraries, found again (2 ms) only when ``modules`` (``len(sys.modules)``) says that something
    was imported since, which may have loaded one (SciPy's own OpenBLAS comes with its first use)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


#: :func:`one_blas_thread`'s blocks under way (in any thread) and the limit their first one set.
_BLAS_LOCK = threading.Lock()
_blas_blocks = 0
_blas_limiter: Any = None


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """NumPy's and SciPy's BLAS on one thread inside the block; also a decorator.

    Why: after a product large enough to share, OpenBLAS's worker threads busy-wait for the next one for a while.
    The out-of-distribution check's products each batch (its embeddings times a PCA basis) thus kept a core's worker
    spinning while ONNX Runtime and the decoding threads needed it: 0.8 core-ms a PBC cell, the network's own cost
    being about 3; on one thread the products take about 0.05 ms a cell longer (`wbc classify` end to end on 2 cores
    359.9 -> 393.6 cells/s in one run, ``benchmarks/results/classify_speed_one_blas_thread.json``). The limit is the
    process's (BLAS has no per-thread setting; 0.02 ms to set): the first of overlapping blocks (``wbc serve``'s
    concurrent requests) sets it and the last to end undoes it (each block restoring the setting it had found left
    BLAS on one thread for good after two overlapped); a library first loaded inside a block is held from the next.

    >>> import numpy as np
    >>> with one_blas_thread():
    ...     (np.ones((64, 1280)) @ np.ones((1280, 32))).shape
    (64, 32)
    """
    global _blas_blocks, _blas_limiter
    with _BLAS_LOCK:
        if not _blas_blocks:
            _blas_limiter = _blas_controller(len(sys.modules)).limit(limits=1, user_api="blas")
            _release_blas_control()
        _blas_blocks += 1
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _blas_blocks -= 1
            if not _blas_blocks and _blas_limiter is not None:
                _blas_limiter.restore_original_limits()
                _release_blas_control()
                _blas_limiter = None


def _release_blas_control() -> None:
    """Let any thread set OpenBLAS's limit next: threadpoolctl 3.8 lets only the thread that set a process-wide pool's
    limit change it again until released, and the last of overlapping blocks may end in another thread."""
    import threadpoolctl

    release = getattr(getattr(threadpoolctl, "OpenBLASController", None), "clear_controlling_thread", None)
    if release is not None:  # threadpoolctl < 3.8: any thread may set it
        release()


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which containers and ``taskset`` narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def die_with_parent() -> Callable[[], None] | None:
    """On Linux, a function that, called in a child process (:class:`subprocess.Popen`'s ``preexec_fn``, or first
    thing in a ``multiprocessing`` child), has it sent SIGTERM when its parent dies, even by SIGKILL, which no handler
    sees (``prctl(PR_SET_PDEATHSIG)``). The C function is looked up here, before a fork: the child only calls it. None
    elsewhere (and where libc has no ``prctl``)."""
    if sys.platform != "linux":
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig, sigterm = 1, int(signal.SIGTERM)

    def call() -> None:
        prctl(pr_set_pdeathsig, sigterm, 0, 0, 0)

    return call


def raise_exit(signum: int, _frame: object) -> None:
    """A signal handler: SIGTERM or SIGHUP as SystemExit (status 128 + the signal, as the shell reports a process the
    signal ended), so that ``finally`` blocks and ``atexit`` clean-ups run, as on Ctrl-C."""
    raise SystemExit(128 + signum)
