"""scripts/: bad input gets one line and a non-zero exit, never a traceback; a fit never half-writes a model."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from wbc.io import write_image
from wbc.paths import DEFAULT_MODEL
from wbc.synthetic import synthetic_cell

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def run_script(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPTS / name), *args], capture_output=True, text=True, timeout=300)


def assert_one_line_error(r: subprocess.CompletedProcess[str], *words: str) -> None:
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("error: ") and all(w in r.stderr for w in words), r.stderr


def test_fit_cytoplasm_colours_refuses_rather_than_drop_a_class(tmp_path: Path) -> None:
    """Too few cells of a class measured: the model keeps its earlier statistics of every class (dropping the
    lymphocyte's or erythroblast's would turn the cytoplasm weighing off), and the script says which class."""
    model = tmp_path / "model.onnx"
    shutil.copyfile(DEFAULT_MODEL, model)
    shutil.copyfile(DEFAULT_MODEL.with_suffix(".json"), model.with_suffix(".json"))
    before = model.read_bytes(), model.with_suffix(".json").read_bytes()
    rows = ["path,label,split"]
    for i in range(3):
        write_image(tmp_path / f"lym{i}.png", synthetic_cell("lymphocyte", size=96, seed=i))
        rows.append(f"lym{i}.png,lymphocyte,train")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    r = run_script("fit_cytoplasm_colours.py", "--model", str(model), "--manifest", str(tmp_path / "manifest.csv"),
                   "--data", str(tmp_path))
    assert_one_line_error(r, "lymphocyte", "erythroblast", "left as it was")
    assert (model.read_bytes(), model.with_suffix(".json").read_bytes()) == before


def test_fit_cytoplasm_colours_names_a_missing_model_or_manifest(tmp_path: Path) -> None:
    assert_one_line_error(run_script("fit_cytoplasm_colours.py", "--model", str(tmp_path / "none.onnx")), "none.onnx")
    r = run_script("fit_cytoplasm_colours.py", "--model", str(DEFAULT_MODEL), "--manifest", str(tmp_path / "m.csv"))
    assert_one_line_error(r, "m.csv")


def test_export_partial_run_names_what_the_run_folder_lacks(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "manifest.csv").write_text("path,label,split\n")
    r = run_script("export_partial_run.py", str(tmp_path), "--like", str(DEFAULT_MODEL), "--output",
                   str(tmp_path / "m.onnx"))
    assert_one_line_error(r, "best.pt")
