"""Cells per second of the default classifier: ONNX Runtime vs eager PyTorch vs a ResNet-50 baseline.

All in one run, on the same number of threads (default 2), so the ratios are comparable even on a noisy
shared machine. The shipped model is int8 (``wbc quantize``); ``--float-model`` also times the float model
it was quantised from, and the eager PyTorch figure is for the float network of the same architecture.
Also measures the end-to-end `wbc classify` path (JPEG decoding included) on ``--files`` real PBC images (re-framing
on, the default; on without the second framing of cells small in their frame; off; on, with the network as one
multi-threaded session instead of one single-thread session per core; on, with NumPy's BLAS left free to use every
core as before wbc 0.18.0, see ``wbc.runtime.one_blas_thread``; on, with each session given its whole share of a batch
at once as before wbc 0.30.0, see ``wbc.runtime.CHUNK_ROWS``), and the import time of the analysis path (which must
not import torch). A data root without PBC images is one ``error:`` line before anything is timed (since wbc 0.34.0;
before, the run left the end-to-end figures out without a word); ``--files 0`` times the network alone.

    python benchmarks/classify_speed.py --threads 2 --float-model runs/default/model.onnx \
        --output benchmarks/results/classify_speed.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

GLIBC_FIX = "glibc.malloc.mmap_threshold=4294967295:glibc.malloc.trim_threshold=4294967295"

ROOT = Path(__file__).resolve().parents[1]  # the repository: relative defaults are resolved against it


def rate(fn, n_items: int, min_seconds: float = 3.0) -> float:
    fn()  # warm-up
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_seconds:
        fn()
        done += n_items
    return done / (time.perf_counter() - t0)


class _JointSession:
    """One session with ``threads`` intra-op threads, in :class:`wbc.runtime.SessionGroup`'s place."""

    def __init__(self, path: Path, threads: int) -> None:
        from wbc.runtime import ort_session

        self.session = ort_session(path, threads, spin=False)
        self.input_name = self.session.get_inputs()[0].name

    def run(self, names: list[str], x: np.ndarray) -> list[np.ndarray]:
        return list(self.session.run(list(names), {self.input_name: x}))


@contextlib.contextmanager
def unchunked():
    """Each single-thread session given its whole share of a batch in one call (wbc 0.29.0 and earlier), not
    ``wbc.runtime.CHUNK_ROWS`` rows at a time."""
    import wbc.runtime

    held = wbc.runtime.CHUNK_ROWS
    wbc.runtime.CHUNK_ROWS = 0
    try:
        yield
    finally:
        wbc.runtime.CHUNK_ROWS = held


@contextlib.contextmanager
def blas_free():
    """`wbc classify` with NumPy's BLAS free to use every core while the network runs (wbc 0.17.0 and earlier)."""
    import wbc.classify

    held = wbc.classify.predict_cells
    wbc.classify.predict_cells = held.__wrapped__  # without its one_blas_thread decorator
    try:
        yield
    finally:
        wbc.classify.predict_cells = held


def import_time() -> dict:
    code = ("import time, sys; t = time.perf_counter(); import wbc.classify, wbc.model, wbc.cli; "
            "print(time.perf_counter() - t, 'torch' in sys.modules)")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
            for _ in range(3)]
    return {"seconds_median": float(np.median([float(r[0]) for r in runs])), "imports_torch": runs[0][1] == "True"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="ONNX model (default: the shipped one)")
    ap.add_argument("--float-model", default=None,
                    help="the float ONNX model the (int8) --model was quantised from, timed for comparison")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--seconds", type=float, default=5.0, help="seconds for each network timing")
    ap.add_argument("--files", type=int, default=2000,
                    help="PBC files (every 5th) for the end-to-end timings, each classified 13 times (0: none)")
    ap.add_argument("--output", default=ROOT / "benchmarks/results/classify_speed.json")
    args = ap.parse_args()
    if args.files < 0:
        raise SystemExit(f"error: --files {args.files}: must be 0 or more")
    if os.environ.get("GLIBC_TUNABLES") != GLIBC_FIX and sys.platform == "linux":
        os.execve(sys.executable, [sys.executable, *sys.argv], dict(os.environ, GLIBC_TUNABLES=GLIBC_FIX))

    import torch
    from _provenance import provenance

    from wbc.classify import classify_paths
    from wbc.errors import WbcError
    from wbc.io import atomic_write_json, iter_image_paths
    from wbc.model import load_model
    from wbc.paths import data_root
    from wbc.reframe import framing_stats_of
    from wbc.train.models import create_model

    pbc = data_root() / "pbc"
    files = list(iter_image_paths([pbc]))[::5][: args.files] if args.files and pbc.is_dir() else []
    if args.files and not files:  # checked first: the end-to-end figure is the one the docs quote (cells/s)
        raise WbcError(f"{pbc}: no PBC images for the end-to-end timings (--files 0 times the network alone)")
    torch.set_num_threads(args.threads)
    clf = load_model(args.model, threads=args.threads)
    s = clf.info.input_size
    cells = np.random.default_rng(0).integers(0, 255, (args.batch, s, s, 3), dtype=np.uint8)
    res: dict = {"model": clf.model_id, "input_size": s, "threads": args.threads, "batch": args.batch,
                 "machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                 "provenance": provenance(__file__, model_id=clf.model_id)}

    def save() -> None:  # after each stage: a long or interrupted run keeps what it measured
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.output, res)

    res["quantization"] = clf.info.extra.get("quantization", {}).get("method", "none (float32)")
    res["onnxruntime_cells_per_s"] = rate(lambda: clf.run(cells), args.batch, args.seconds)
    with unchunked():
        res["onnxruntime_unchunked_cells_per_s"] = rate(lambda: clf.run(cells), args.batch, args.seconds)
    joint = copy.copy(clf)  # the network as one session with --threads intra-op threads (wbc 0.16.0 and earlier)
    joint.sessions = _JointSession(clf.path, args.threads)
    res["onnxruntime_one_session_cells_per_s"] = rate(lambda: joint.run(cells), args.batch, args.seconds)
    if args.float_model:
        ref = load_model(args.float_model, threads=args.threads)
        res["onnxruntime_float_model"] = ref.model_id
        res["onnxruntime_float_cells_per_s"] = rate(lambda: ref.run(cells), args.batch, args.seconds)
        res["speedup_vs_float_onnxruntime"] = res["onnxruntime_cells_per_s"] / res["onnxruntime_float_cells_per_s"]

    net = create_model(clf.info.architecture, len(clf.classes), pretrained=False).eval()
    x = torch.from_numpy(clf.network_input(cells))
    with torch.inference_mode():
        res["pytorch_eager_cells_per_s"] = rate(lambda: net(x), args.batch, args.seconds)
        import timm

        r50 = timm.create_model("resnet50", pretrained=False, num_classes=len(clf.classes)).eval()
        x224 = torch.randn(args.batch // 2, 3, 224, 224)
        res["resnet50_224_eager_cells_per_s"] = rate(lambda: r50(x224), args.batch // 2, args.seconds)
    res["speedup_vs_resnet50"] = res["onnxruntime_cells_per_s"] / res["resnet50_224_eager_cells_per_s"]
    res["speedup_vs_eager_same_model"] = res["onnxruntime_cells_per_s"] / res["pytorch_eager_cells_per_s"]
    save()

    if files:
        res["end_to_end_files"] = len(files)
        # re-framing (the default, with the cells one view is unsure of re-run over four rotations), the same with
        # --tta 1 (one view for every cell), re-framing without the second framing of cells small in their frame,
        # and --no-reframe, alternated twice so machine load hits all alike
        one = copy.copy(clf)
        one.info = dataclasses.replace(clf.info, extra={**clf.info.extra, "reframe": {
            k: v for k, v in dataclasses.asdict(framing_stats_of(clf)).items() if k != "grey"}})
        # and the network as one multi-threaded session instead of one single-thread session per core
        runs = (("end_to_end_cells_per_s", clf, True), ("end_to_end_tta1_cells_per_s", clf.with_tta(1), True),
                ("end_to_end_one_framing_cells_per_s", one, True),
                ("end_to_end_no_reframe_cells_per_s", clf, False),
                ("end_to_end_one_session_cells_per_s", joint, True),
                ("end_to_end_blas_free_cells_per_s", clf, True),
                ("end_to_end_unchunked_cells_per_s", clf, True))
        # and the CPU time of all threads per cell, which a busy machine inflates less than the wall clock
        cpu = res.setdefault("end_to_end_cpu_ms_per_cell", {})
        for rep in range(2):
            for key, model, reframe in runs:
                t0, c0 = time.perf_counter(), time.process_time()
                held = {"end_to_end_blas_free_cells_per_s": blas_free, "end_to_end_unchunked_cells_per_s": unchunked}
                with held.get(key, contextlib.nullcontext)():
                    out = classify_paths(files, model, batch_size=args.batch, workers=args.threads, reframe=reframe)
                r = len(out.predictions) / (time.perf_counter() - t0)
                c = (time.process_time() - c0) * 1000 / len(out.predictions)
                res[key] = max(r, res.get(key, 0.0)) if rep else r
                name = key.removesuffix("_cells_per_s").removeprefix("end_to_end").lstrip("_") or "default"
                cpu[name] = min(c, cpu.get(name, c))
            save()
        # --tta 4 (what `wbc adapt --no-labels` stores): four network passes per cell
        t0 = time.perf_counter()
        out = classify_paths(files, clf.with_tta(4), batch_size=args.batch, workers=args.threads)
        res["end_to_end_tta4_cells_per_s"] = len(out.predictions) / (time.perf_counter() - t0)
        save()
    res["import"] = import_time()
    save()
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    from _run import run

    run(main)
