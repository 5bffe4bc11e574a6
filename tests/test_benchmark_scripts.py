"""The benchmark scripts as the docs run them: ``python benchmarks/<script>.py ...`` from the repository root."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_every_benchmark_script_ends_through_the_one_runner() -> None:
    """Each script's ``__main__`` block hands ``main`` to ``_run.run``, so bad input is one line in all of them."""
    scripts = sorted(p for p in BENCHMARKS.glob("[a-z]*.py"))
    assert len(scripts) > 20
    ends = {p.name: p.read_text().split('if __name__ == "__main__":')[-1] for p in scripts}
    missing = [name for name, end in ends.items() if "from _run import run" not in end]
    assert missing == []


@pytest.mark.parametrize("script", ["shift_suite.py"])
def test_a_missing_data_root_is_one_line_not_a_traceback(script: str, tmp_path: Path) -> None:
    """A data root that is not there (a typo in ``--data``) is named in one ``error:`` line with exit status 1."""
    r = subprocess.run([sys.executable, str(BENCHMARKS / script), "--data", str(tmp_path / "no_such_root"),
                        "--output", str(tmp_path / "out.json")], capture_output=True, text=True, timeout=300,
                       cwd=BENCHMARKS.parent)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "no_such_root" in lines[0]
    assert not (tmp_path / "out.json").exists()


def test_a_missing_cell_file_is_named_once(tmp_path: Path) -> None:
    """benchmarks/two_cells.py put the path before a message that starts with it: "error: X.jpg: X.jpg: no such
    file"."""
    r = subprocess.run([sys.executable, str(BENCHMARKS / "two_cells.py"), "--pairs", "2", "--output",
                        str(tmp_path / "out.json")], capture_output=True, text=True, timeout=300,
                       cwd=BENCHMARKS.parent, env={**os.environ, "WBC_DATA_DIR": str(tmp_path / "no_root")})
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path / 'no_root'}"), r.stderr
    assert lines[0].count(str(tmp_path / "no_root")) == 1 and lines[0].endswith(": no such file"), r.stderr


def _one_field_bccd(root: Path, split: str = "val") -> tuple[int, int, tuple[int, int, int, int]]:
    """A data root with one synthetic BCCD field (one WBC, labelled neutrophil) in ``split``: its size and box."""
    from wbc.io import write_image
    from wbc.synthetic import synthetic_smear

    rgb, [box], _, _ = synthetic_smear(n_wbc=1, seed=0)
    bccd = root / "bccd"
    for d in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (bccd / d).mkdir(parents=True)
    write_image(bccd / "JPEGImages" / "BloodImage_00001.jpg", rgb)
    x0, y0, x1, y1 = box
    (bccd / "Annotations" / "BloodImage_00001.xml").write_text(
        f"<annotation><object><name>WBC</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1 - 1}</xmax>"
        f"<ymax>{y1 - 1}</ymax></bndbox></object></annotation>")
    (bccd / "ImageSets" / "Main" / f"{split}.txt").write_text("BloodImage_00001\n")
    (bccd / "single_wbc_labels.csv").write_text("image,label\nBloodImage_00001,neutrophil\n")
    return rgb.shape[0], rgb.shape[1], box


def test_canvas_rows_score_the_boxes_moved_with_the_pasted_field(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """canvas_smears.py's load hooks took two arguments where ``evaluate_smears`` passes ``load_bccd`` three: every
    run ended in a TypeError, and the third (``errors``, an empty list) landed on ``moved``, so a hook patched to take
    it scored the pasted field against boxes left where they were. A field found as well on its canvas as alone
    scores the same in both rows (the detector and classifier that ship, on one synthetic field)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import canvas_smears

    _one_field_bccd(tmp_path / "data")
    out = tmp_path / "canvas.json"
    assert canvas_smears.main(["--data", str(tmp_path / "data"), "--splits", "val", "--colours", "white",
                               "--output", str(out)]) == 0
    import json

    alone, pasted = json.loads(out.read_text())["rows"]
    assert (alone["field"], pasted["field"]) == ("as it is", "white")
    assert alone["detection_f1"] == 1.0 and (alone["missed"], alone["false"]) == (0, 0)
    assert {k: v for k, v in pasted.items() if k != "field"} == {k: v for k, v in alone.items() if k != "field"}



def _bench_module(name: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``benchmarks/<name>.py`` imported as the scripts import it (the folder first on ``sys.path``)."""
    import importlib

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module(name)


def test_the_runner_makes_bad_input_one_line_and_keeps_a_bugs_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    """``_run.run`` caught only WbcError: a data root without the file a script opens (FileNotFoundError) or a
    ``wbc`` command that failed (CalledProcessError) ended in a traceback. Any other exception keeps it: a ValueError
    is a check the script lacks or a bug, not to be shown as the user's mistake."""
    from wbc.errors import WbcError

    run = _bench_module("_run", monkeypatch).run

    def raises(exc: BaseException) -> Any:
        def main() -> int:
            raise exc
        return main

    cases = {
        WbcError("/data/pbc: not found"): "error: /data/pbc: not found",
        FileNotFoundError(2, "No such file or directory", "/d/bccd/single_wbc_labels.csv"):
            "error: /d/bccd/single_wbc_labels.csv: No such file or directory",
        PermissionError(13, "Permission denied", "/out/r.json"): "error: /out/r.json: Permission denied",
        subprocess.CalledProcessError(1, [sys.executable, "-m", "wbc", "train", "--output", "runs/a b"]):
            f"error: {sys.executable} -m wbc train --output 'runs/a b' failed (exit status 1)",
    }
    for exc, line in cases.items():
        with pytest.raises(SystemExit) as e:
            run(raises(exc))
        assert e.value.code == line
    for exc in (ValueError("need at least one array to concatenate"), ZeroDivisionError("float division by zero"),
                TypeError("f() takes 2 positional arguments but 3 were given")):
        with pytest.raises(type(exc)):
            run(raises(exc))
    with pytest.raises(SystemExit) as e:
        run(lambda: 3)
    assert e.value.code == 3


def test_results_are_written_through_the_one_atomic_helper() -> None:
    """``Path.write_text(json.dumps(...))`` truncated a committed results file when a rerun failed while writing
    (disk full) and wrote bare NaN; ``wbc.io.atomic_write_json`` replaces the file whole and writes NaN as null."""
    writes = [f"{p.name}:{n}" for p in sorted(BENCHMARKS.glob("*.py"))
              for n, line in enumerate(p.read_text().splitlines(), 1)
              if "write_text(" in line and "json.dumps(" in line]
    assert writes == []


def test_every_script_exit_message_is_an_error_line() -> None:
    """A message a script exits with starts with ``error:``, as the runner's do (non_smear.py, photo_check.py,
    smear_calibration.py and weight_average.py printed theirs without it)."""
    import re

    bare = [f"{p.name}:{n}" for p in sorted(BENCHMARKS.glob("*.py"))
            for n, line in enumerate(p.read_text().splitlines(), 1)
            if re.search(r"SystemExit\(f?[\"']", line) and not re.search(r"SystemExit\(f?[\"']error: ", line)]
    assert bare == []


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True, check=True).stdout.strip()


def test_provenance_names_the_commit_of_the_wbc_that_ran(tmp_path: Path) -> None:
    """With ``PYTHONPATH`` set to another checkout's ``src`` (the docs' runs of a previous release's code) the
    benchmarks' own commit was recorded as the measured code's. A copy of a ``src`` that is no checkout records none."""
    other = tmp_path / "other"
    (other / "src" / "wbc").mkdir(parents=True)
    (other / "src" / "wbc" / "__init__.py").write_text('__version__ = "0.1.0"\n')
    _git(tmp_path, "init", "-q", str(other))
    _git(other, "add", "src")
    _git(other, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "old release")
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); from _provenance import provenance; "
            "print(json.dumps(provenance('stain_same_lab.py', [])))")

    def prov(src: Path) -> dict[str, Any]:
        import json

        r = subprocess.run([sys.executable, "-c", code, str(BENCHMARKS)], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONPATH": str(src)})
        return json.loads(r.stdout)

    p = prov(other / "src")
    assert p["wbc_version"] == "0.1.0" and p["wbc_path"] == str((other / "src").resolve())
    assert p["git_commit"] == _git(other, "rev-parse", "HEAD") and p["git_dirty"] is False
    assert p["benchmarks_checkout"] is False
    ours = subprocess.run(["git", "-C", str(BENCHMARKS), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert p["benchmarks_commit"] == (ours.stdout.strip() if ours.returncode == 0 else None)
    copy = tmp_path / "copy" / "wbc"
    copy.mkdir(parents=True)
    (copy / "__init__.py").write_text('__version__ = "0.1.0"\n')
    p = prov(copy.parent)
    assert (p["git_commit"], p["git_dirty"], p["benchmarks_checkout"]) == (None, None, False)


class _Parsed(BaseException):
    """Raised in place of running a script once its arguments parsed (a BaseException: no runner catches it)."""


def _doc_commands() -> list[tuple[str, int, str]]:
    """Every ``python benchmarks/<script>.py ...`` command that README.md and docs/*.md quote, as (file, line,
    command): an inline code span up to its closing backtick (it may cross lines), a fenced line with its ``\\``
    continuations, without a trailing ``# comment``."""
    import re

    out = []
    root = BENCHMARKS.parent
    for f in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        text = f.read_text()
        lines = text.splitlines()
        fenced, inside = set(), False
        for i, line in enumerate(lines):
            if line.strip().startswith("```"):
                inside = not inside
            elif inside:
                fenced.add(i)
        for m in re.finditer(r"python\s+benchmarks/\w+\.py", text):  # a span may break the line after python
            n = text.count("\n", 0, m.start())
            if n in fenced:
                cmd = text[m.start() : text.find("\n", m.start())]
                while cmd.rstrip().endswith("\\") and n + 1 < len(lines):
                    n += 1
                    cmd = cmd.rstrip()[:-1] + " " + lines[n].strip()
                cmd = re.split(r"\s+#", cmd)[0]
            else:
                cmd = text[m.start() : text.find("`", m.end())]
            out.append((f.name, text.count("\n", 0, m.start()) + 1, " ".join(cmd.split())))
    return out


def test_every_documented_benchmark_command_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each command the docs quote is accepted by its script's own options (three lacked the required ``--output``:
    README's BCCD figures, two in docs/smear_analysis.md). Commands with a placeholder (``...``, ``$X``, ``<...>``,
    ``[...]``, a bare capital letter) are left out; shell operators end a command."""
    import argparse
    import contextlib
    import io
    import re
    import runpy
    import shlex

    real_parse = argparse.ArgumentParser.parse_known_args

    def parse_known_args(self: argparse.ArgumentParser, *a: object, **k: object) -> object:
        real_parse(self, *a, **k)  # argparse's own error: SystemExit(2)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", parse_known_args)
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    commands = _doc_commands()
    assert len(commands) > 100
    checked, failed = 0, []
    for name, line, cmd in commands:
        tokens = shlex.split(cmd)
        if any(re.search(r"\.\.\.|…|\$|<|\[", t) or re.fullmatch(r"[A-Z]", t) for t in tokens):
            continue
        args = list(itertools.takewhile(lambda t: t not in {"&&", ";", "|", ">", "2>&1"}, tokens[2:]))
        script = BENCHMARKS / Path(tokens[1]).name
        monkeypatch.setattr(sys, "argv", [str(script), *args])
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                runpy.run_path(str(script), run_name="__main__")
        except _Parsed:
            checked += 1
            continue
        except SystemExit:
            pass
        failed.append(f"{name}:{line}: {cmd} -> {err.getvalue().strip().splitlines()[-1:]}")
    assert failed == []
    assert checked > 100
