"""`wbc serve-bench` and :func:`wbc.serve.bench.running_server`: its output checked before the bench, why its server did
not start, and a server that never outlives the bench (see also tests/test_serve.py's serve-bench tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wbc.errors import WbcError

pytest.importorskip("fastapi")
pytest.importorskip("httpx")


def test_serve_bench_checks_its_output_before_starting_a_server(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """`wbc serve-bench -o FOLDER` (or a path under a file) ran the whole bench, then ended in an IsADirectoryError /
    FileExistsError traceback with the JSON unwritten (before wbc 0.36.0); other commands check --output first."""
    from typer.testing import CliRunner

    import wbc.serve.bench as bench
    from wbc.cli import app as cli

    root = tmp_path / "data"
    (root / "bccd" / "JPEGImages").mkdir(parents=True)
    (root / "bccd" / "JPEGImages" / "f.jpg").write_bytes(b"x")
    (root / "pbc" / "neutrophil").mkdir(parents=True)
    (root / "pbc" / "neutrophil" / "c.jpg").write_bytes(b"x")
    monkeypatch.setattr(bench, "measure_latency", lambda *a, **k: pytest.fail("the bench ran"))
    (tmp_path / "afile").write_text("x")
    for output, problem in ((tmp_path, "is a folder"), (tmp_path / "afile" / "x.json", "is a file, not a folder")):
        r = CliRunner().invoke(cli, ["serve-bench", "--data-root", str(root), "-o", str(output)])
        assert isinstance(r.exception, WbcError) and str(r.exception).startswith(str(output)), (output, r.exception)
        assert problem in str(r.exception)


def test_serve_bench_says_why_its_server_did_not_start(tmp_path: Path) -> None:
    """A mistyped --model: `wbc serve` says "model file not found", but serve-bench threw its stderr away and said
    "wbc serve exited at start; run it by hand to see why" (before wbc 0.36.0)."""
    import wbc.serve.bench as bench

    with pytest.raises(WbcError) as exc, bench.running_server(["--model", str(tmp_path / "nope.onnx")]):
        pass
    assert str(exc.value) == f"wbc serve exited at start: {tmp_path / 'nope.onnx'}: model file not found"


def test_a_server_that_exits_at_start_without_an_error_line_is_quoted_by_its_last_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash (a traceback, no `error:` line) is named by its last line; a server that said nothing, by its status."""
    import wbc.serve.bench as bench

    for script, said in (("import sys; sys.stderr.write('Traceback ...\\nImportError: no module x\\n'); sys.exit(1)",
                          "wbc serve exited at start: ImportError: no module x"),
                         ("import sys; sys.exit(3)", "wbc serve exited at start: exit status 3, nothing said")):
        monkeypatch.setattr(bench, "python_m_wbc", lambda script=script: [sys.executable, "-c", script])
        with pytest.raises(WbcError) as exc, bench.running_server():
            pass
        assert str(exc.value).startswith(said), exc.value


def _server_of_a_killed_bench(tmp_path: Path, sig: signal.Signals) -> tuple[int, int | None, list[Path]]:
    """Start ``running_server`` in a child Python (its temporary folder under ``tmp_path``), end that child with
    ``sig``; return the server's pid, the child's exit status and the temporary folders left."""
    child = ("import sys, time, wbc.serve.bench as b\n"
             "with b.running_server(['--segmenter', 'classical']) as (base, proc):\n"
             "    print(proc.pid, flush=True); time.sleep(600)\n")
    p = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True,
                         env=dict(os.environ, TMPDIR=str(tmp_path)))
    assert p.stdout is not None
    line = p.stdout.readline()
    if not line:
        p.wait(timeout=60)
        pytest.fail(f"the bench's server did not start (exit status {p.returncode})")
    server = int(line)
    p.send_signal(sig)
    status = p.wait(timeout=60)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _running(server):
        time.sleep(0.2)
    return server, status, sorted(tmp_path.glob("wbc_serve_bench_*"))


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, ended but not yet reaped by init, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(sys.platform != "linux", reason="signals, prctl and /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_serve_bench_ended_by_a_signal_stops_its_server(tmp_path: Path, sig: signal.Signals) -> None:
    """serve-bench ended by SIGTERM (a scheduler, `kill`, a parent's timeout) or SIGKILL left its `wbc serve` running
    for ever, re-parented to init, holding its port, its models and a temporary case store (before wbc 0.36.0). Now
    SIGTERM runs the bench's clean-up (server stopped, temporary folder removed, exit status 143), and on Linux the
    server is sent SIGTERM when the bench dies by any signal (the temporary folder then stays: nothing is left to
    remove it)."""
    server, status, left = _server_of_a_killed_bench(tmp_path, sig)
    try:
        assert not _running(server), f"wbc serve {server} still runs after serve-bench ended"
        if sig == signal.SIGTERM:
            assert status == 128 + signal.SIGTERM and not left, (status, left)
    finally:
        if _running(server):
            os.kill(server, signal.SIGKILL)
