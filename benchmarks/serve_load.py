"""Load and abuse test of a live ``wbc serve`` on loopback, with API keys on (issue #15's targets).

1. ``--clients`` clients (default 8), each with its own API key, post the shipped example fields to
   ``/analyze`` back to back for ``--duration`` seconds (default 60): requests, fields/s, latency
   percentiles, errors (anything but 200), and the server's memory.
2. ``--bombs`` (default 16) concurrent uploads of a 30000x30000 RGB PNG (2.6 MB on the wire, 2.7 GB
   decoded): every answer's status, the server's peak memory, and whether it still answers ``/health``
   and ``/analyze`` afterwards.

The server is ``wbc serve`` in a subprocess (:func:`wbc.serve.bench.running_server`), so its memory is
measured alone: resident set sampled every 20 ms from ``/proc/PID/status`` (VmRSS) and its lifetime peak
(VmHWM, model loading included). Writes JSON (default ``benchmarks/results/serve_load.json``)::

    nice -n 10 python benchmarks/serve_load.py
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from wbc.examples import example_fields
from wbc.io import atomic_write_json
from wbc.serve.bench import running_server
from wbc.synthetic import png_bomb

TARGETS = {"load_errors": 0, "load_p95_ms_max": 300.0, "bomb_peak_rss_mb_max": 1024.0}

ROOT = Path(__file__).resolve().parents[1]  # the repository: relative defaults are resolved against it


def proc_status_mb(pid: int, field: str) -> float:
    """VmRSS / VmHWM of a process, in MiB (Linux)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


class MemorySampler:
    """Samples a process's resident set every ``interval`` seconds in a thread; ``peak`` in MiB."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid, self.interval, self.peak = pid, interval, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, proc_status_mb(self.pid, "VmRSS"))
            except OSError:
                return
            time.sleep(self.interval)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def load_phase(base: str, keys: list[str], fields: list[Path], duration: float) -> dict[str, Any]:
    """``len(keys)`` clients posting fields to /analyze for ``duration`` seconds."""
    import httpx

    payloads = [(p.name, p.read_bytes()) for p in fields]
    lat: list[list[float]] = [[] for _ in keys]
    errors: list[list[str]] = [[] for _ in keys]
    start = threading.Barrier(len(keys) + 1)
    stop_at = [0.0]

    def client(i: int) -> None:
        with httpx.Client(timeout=60, headers={"X-API-Key": keys[i]}) as c:
            start.wait()
            k = i
            while time.perf_counter() < stop_at[0]:
                name, data = payloads[k % len(payloads)]
                k += 1
                t0 = time.perf_counter()
                try:
                    r = c.post(base + "/analyze", files={"file": (name, data, "image/jpeg")})
                    if r.status_code != 200:
                        errors[i].append(f"{r.status_code} {r.text[:120]}")
                except httpx.HTTPError as exc:
                    errors[i].append(f"{exc.__class__.__name__}: {exc}")
                lat[i].append(time.perf_counter() - t0)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(keys))]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + duration
    t0 = time.perf_counter()
    start.wait()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    all_lat = [x for per in lat for x in per]
    all_err = [e for per in errors for e in per]
    return {
        "clients": len(keys), "seconds": round(wall, 1), "requests": len(all_lat), "errors": len(all_err),
        "error_examples": sorted(set(all_err))[:5],
        "fields_per_s": round(len(all_lat) / wall, 1),
        "latency_ms": {"p50": round(1000 * statistics.median(all_lat), 1),
                       "p95": round(1000 * percentile(all_lat, 95), 1),
                       "p99": round(1000 * percentile(all_lat, 99), 1),
                       "max": round(1000 * max(all_lat), 1)},
        "requests_per_client": [len(x) for x in lat],
    }


def baseline_phase(base: str, key: str, fields: list[Path], n: int = 12) -> dict[str, Any]:
    """One client, one request at a time: the server's own time per field on this machine right now, so
    that the load phase's latency can be read as queueing (8 clients, 1 worker: about 8x this)."""
    import httpx

    lat = []
    with httpx.Client(timeout=60, headers={"X-API-Key": key}) as c:
        for i in range(n):
            p = fields[i % len(fields)]
            t0 = time.perf_counter()
            c.post(base + "/analyze", files={"file": (p.name, p.read_bytes(), "image/jpeg")}).raise_for_status()
            lat.append(time.perf_counter() - t0)
    return {"requests": n, "latency_ms": {"p50": round(1000 * statistics.median(lat), 1),
                                          "max": round(1000 * max(lat), 1)}}


def bomb_phase(base: str, key: str, n: int, field: Path) -> dict[str, Any]:
    """``n`` concurrent 30000x30000 PNG uploads, then is the server still there?"""
    import httpx

    bomb = png_bomb(30000, 30000, rgb=True)
    codes: list[int | str] = []
    details: list[str] = []
    lock = threading.Lock()
    gate = threading.Barrier(n)

    def upload() -> None:
        with httpx.Client(timeout=120, headers={"X-API-Key": key}) as c:
            gate.wait()
            try:
                r = c.post(base + "/analyze", files={"file": ("bomb.png", bomb, "image/png")})
                code, detail = r.status_code, r.json().get("detail", "")
            except httpx.HTTPError as exc:
                code, detail = exc.__class__.__name__, str(exc)
            with lock:
                codes.append(code)
                details.append(detail)

    threads = [threading.Thread(target=upload) for _ in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    with httpx.Client(timeout=60, headers={"X-API-Key": key}) as c:
        health = c.get(base + "/health").status_code
        after = c.post(base + "/analyze", files={"file": (field.name, field.read_bytes(), "image/jpeg")}).status_code
    return {"uploads": n, "upload_mb": round(len(bomb) / 2**20, 2), "pixels": "30000x30000 RGB",
            "status_codes": {str(k): codes.count(k) for k in sorted(set(codes), key=str)},
            "all_refused": all(c == 413 for c in codes), "detail_example": details[0] if details else "",
            "seconds": round(seconds, 2), "health_after": health, "analyze_after": after}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--bombs", type=int, default=16)
    ap.add_argument("--workers", type=int, default=None, help="wbc serve --workers (default: the server's)")
    ap.add_argument("--threads", type=int, default=None, help="wbc serve --threads (default: the server's)")
    ap.add_argument("--segmenter", default="auto")
    ap.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/serve_load.json")
    args = ap.parse_args(argv)

    from _provenance import provenance

    fields = example_fields()
    keys = [secrets.token_urlsafe(24) for _ in range(args.clients + 1)]
    env = dict(os.environ, WBC_API_KEYS=",".join(keys))
    server_args = ["--segmenter", args.segmenter]
    for flag, value in (("--workers", args.workers), ("--threads", args.threads)):
        if value is not None:
            server_args += [flag, str(value)]
    load_before = os.getloadavg()
    out: dict[str, Any] = {
        "command": "python benchmarks/serve_load.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "nice": os.nice(0),
        "server": f"wbc serve {' '.join(server_args)} (WBC_API_KEYS: {len(keys)} keys, one per client)",
        "fields": [p.name for p in fields],
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "load_avg_before": [round(x, 2) for x in load_before]},
        "targets": TARGETS,
        "provenance": provenance(__file__, argv),
    }
    with running_server(server_args, env=env) as (base, proc):
        import httpx

        out["health"] = httpx.get(base + "/health", timeout=10).json().get("security")
        out["unauthenticated_status"] = httpx.post(base + "/analyze", timeout=10).status_code
        out["rss_mb_idle"] = round(proc_status_mb(proc.pid, "VmRSS"), 1)
        out["baseline_one_client"] = baseline_phase(base, keys[0], fields)
        with MemorySampler(proc.pid) as mem:
            out["load"] = load_phase(base, keys[: args.clients], fields, args.duration)
        out["load"]["server_peak_rss_mb"] = round(mem.peak, 1)
        out["rss_mb_after_load"] = round(proc_status_mb(proc.pid, "VmRSS"), 1)
        with MemorySampler(proc.pid) as mem:
            out["bombs"] = bomb_phase(base, keys[-1], args.bombs, fields[0])
        out["bombs"]["server_peak_rss_mb"] = round(mem.peak, 1)
        out["server_lifetime_peak_rss_mb"] = round(proc_status_mb(proc.pid, "VmHWM"), 1)
    out["machine"]["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    ld, bm = out["load"], out["bombs"]
    out["passed"] = {
        "load_errors": ld["errors"] == TARGETS["load_errors"],
        "load_p95": ld["latency_ms"]["p95"] <= TARGETS["load_p95_ms_max"],
        "bombs_refused": bm["all_refused"],
        "bomb_peak_rss": out["server_lifetime_peak_rss_mb"] < TARGETS["bomb_peak_rss_mb_max"],
        "still_answers": bm["health_after"] == 200 and bm["analyze_after"] == 200,
    }
    atomic_write_json(args.output, out)
    print(f"one client: p50 {out['baseline_one_client']['latency_ms']['p50']} ms per field; "
          f"load average {out['machine']['load_avg_before']} on {os.cpu_count()} cores")
    print(f"load: {ld['clients']} clients {ld['seconds']} s, {ld['requests']} requests, {ld['fields_per_s']} "
          f"fields/s, p50 {ld['latency_ms']['p50']} ms, p95 {ld['latency_ms']['p95']} ms, {ld['errors']} errors")
    print(f"bombs: {bm['uploads']} x {bm['pixels']} ({bm['upload_mb']} MB): {bm['status_codes']}, server peak "
          f"{bm['server_peak_rss_mb']} MB (lifetime {out['server_lifetime_peak_rss_mb']} MB), "
          f"/health after {bm['health_after']}")
    print(f"passed: {out['passed']} -> {args.output}")
    return 0 if all(out["passed"].values()) else 1


if __name__ == "__main__":
    from _run import run

    run(main)
