"""Latency of a live ``wbc serve``: ``python -m wbc.serve.bench [--model M] [--segmenter S]``.

Starts ``wbc serve`` on a free localhost port in a subprocess, then measures, on the real data
(``wbc.paths.data_root``): ``/analyze?annotated=true`` on BCCD fields, ``/classify`` on a batch of PBC
cells, and ``/health`` while four clients keep ``/analyze`` busy (is the server still responsive?).
Needs httpx (the ``test`` extra). Prints one line per measurement.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

from wbc.paths import data_root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: Sequence[str] | None = None) -> int:
    import httpx

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--segmenter", default="auto")
    ap.add_argument("--data", default=None)
    ap.add_argument("--fields", type=int, default=10)
    ap.add_argument("--cells", type=int, default=100)
    args = ap.parse_args(argv)
    root = data_root(args.data)
    fields = sorted((root / "bccd" / "JPEGImages").glob("*.jpg"))[: args.fields]
    cells = sorted((root / "pbc").glob("*/*.jpg"))
    cells = cells[:: max(1, len(cells) // args.cells)][: args.cells]
    if not fields or not cells:
        print(f"no BCCD/PBC images under {root}", file=sys.stderr)
        return 1
    port = _free_port()
    cmd = [sys.executable, "-m", "wbc", "serve", "--port", str(port), "--segmenter", args.segmenter]
    if args.model:
        cmd += ["--model", args.model]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                meta = httpx.get(base + "/health").json()
                break
            except httpx.TransportError:
                if proc.poll() is not None:
                    print("wbc serve exited; run it by hand to see why", file=sys.stderr)
                    return 1
                time.sleep(0.1)
        print(f"model {meta['model_id']}, segmenter {meta['segmenter']['name']}")
        with httpx.Client(timeout=300) as c:
            t = []
            for p in fields:
                t0 = time.perf_counter()
                r = c.post(base + "/analyze?annotated=true",
                           files={"file": (p.name, p.read_bytes(), "image/jpeg")})
                t.append(time.perf_counter() - t0)
                r.raise_for_status()
            print(f"/analyze?annotated=true, {len(fields)} BCCD fields 640x480: "
                  f"median {1000 * statistics.median(t):.0f} ms, max {1000 * max(t):.0f} ms")
            files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in cells]
            t0 = time.perf_counter()
            r = c.post(base + "/classify", files=files)
            dt = time.perf_counter() - t0
            r.raise_for_status()
            print(f"/classify, {len(files)} PBC cells in one request: {dt:.2f} s "
                  f"({1000 * dt / len(files):.1f} ms/cell)")
        stop = threading.Event()
        data = fields[0].read_bytes()

        def load() -> None:
            with httpx.Client(timeout=300) as c:
                while not stop.is_set():
                    c.post(base + "/analyze?annotated=true", files={"file": ("f.jpg", data, "image/jpeg")})

        workers = [threading.Thread(target=load) for _ in range(4)]
        for w in workers:
            w.start()
        time.sleep(1.0)
        lat = []
        with httpx.Client(timeout=60) as c:
            for _ in range(20):
                t0 = time.perf_counter()
                c.get(base + "/health").raise_for_status()
                lat.append(time.perf_counter() - t0)
                time.sleep(0.1)
        stop.set()
        for w in workers:
            w.join()
        print(f"/health while 4 clients keep /analyze busy: median {1000 * statistics.median(lat):.0f} ms, "
              f"max {1000 * max(lat):.0f} ms")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

