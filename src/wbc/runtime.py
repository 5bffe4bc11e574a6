"""The one place an ONNX Runtime session is set up (classifier, segmenters, detector, export checks).

CPU only, ``threads`` intra-op threads, one inter-op thread, warnings silenced, and an unreadable file turned
into a one-line :class:`~wbc.errors.ModelError` naming it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from wbc.errors import ModelError

if TYPE_CHECKING:
    import onnxruntime as ort


def ort_session(source: str | os.PathLike[str] | bytes, threads: int = 1, *, spin: bool = True) -> ort.InferenceSession:
    """An ONNX Runtime CPU session for the model file (or serialised model bytes) ``source``.

    ``spin``: let idle intra-op threads busy-wait between runs (ONNX Runtime's default). The classifier turns it
    off: its decoding threads need those cores (`wbc classify` ran 1.35x faster end to end on 2 cores without
    spinning, benchmarks/classify_speed.py).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, threads)
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


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which containers and ``taskset`` narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)
