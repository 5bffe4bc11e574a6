"""The validation measures a candidate classifier is compared on before it may replace the shipped one.

Runs the command-line tools a user would (``wbc evaluate``, ``wbc adapt --no-labels``, ``wbc evaluate-smears``),
so each number is reproducible by hand, and reads no test split: PBC validation cells (8 classes); BCCD's train/val
cells as single-cell images (``--tight``) and as boxed smear crops, five-part, as they come and after
``wbc adapt --no-labels`` on them (with ``--classes 5part``, and without it as issue 13's new user runs it:
``*_all_classes``); BCCD's validation cells adapted on its train cells; BCCD's validation and train
smears through the detector (every class). Write the BCCD folders first:

    for s in train val trainval; do python benchmarks/bccd_cells.py --tight --split $s --n 0 \\
        --output /tmp/bccd_tight_$s; done
    python benchmarks/bccd_cells.py --split trainval --n 0 --output /tmp/bccd_trainval
    python benchmarks/candidate_measures.py --model runs/tta_teacher/model_int8.onnx \\
        --output benchmarks/results/candidate_tta_teacher.json

The model needs its OOD statistics and colour reference (``wbc ood fit``), as ``wbc adapt --no-labels`` and the
smear calibration read them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository: relative defaults are resolved against it


def wbc(*args: str) -> None:
    """Run ``wbc ARGS`` (the installed CLI of this interpreter); a failure ends the benchmark naming the command."""
    cmd = [sys.executable, "-P", "-m", "wbc", *args]  # -P: never a wbc.py in the working directory
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise SystemExit(f"error: {' '.join(cmd[3:])}: {last}")


def accuracy(folder: Path, key: str = "accuracy") -> float:
    metrics = json.loads((folder / "metrics.json").read_text())
    return float(metrics["subtype"]["accuracy"] if key == "subtype" else metrics[key])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="candidate ONNX (int8, OOD-fitted)")
    ap.add_argument("--manifest", type=Path, default=ROOT / "runs/default/manifest.csv")
    ap.add_argument("--tight", default="/tmp/bccd_tight_{split}", help="BCCD single-cell folders ({split})")
    ap.add_argument("--boxed", type=Path, default=Path("/tmp/bccd_trainval"), help="BCCD boxed train/val folder")
    ap.add_argument("--output", type=Path, required=True, help="JSON to write")
    args = ap.parse_args(argv)

    from _provenance import provenance

    from wbc.io import atomic_write_json

    m = str(args.model)
    tight = {s: args.tight.format(split=s) for s in ("train", "val", "trainval")}
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        wbc("evaluate", str(args.manifest), "--split", "val", "--model", m, "--output", str(t / "pbc"))
        out["pbc_val"] = accuracy(t / "pbc")
        for name, data in (("tight_trainval", tight["trainval"]), ("tight_val", tight["val"]),
                           ("boxed_trainval", str(args.boxed))):
            wbc("evaluate", data, "--model", m, "--classes", "5part", "--output", str(t / name))
            out[f"{name}_as_is"] = accuracy(t / name)
        for name, fit, score in (("tight_trainval", tight["trainval"], tight["trainval"]),
                                 ("tight_val_on_train", tight["train"], tight["val"]),
                                 ("boxed_trainval", str(args.boxed), str(args.boxed))):
            # adapted for the five-part answer, and over every class as issue 13's new user does (answered five-part)
            for suffix, chosen in (("", ["--classes", "5part"]), ("_all_classes", [])):
                lab = t / f"{name}{suffix}.onnx"
                wbc("adapt", "--no-labels", "--model", m, "--data", fit, *chosen, "--output", str(lab))
                scored = t / f"{name}{suffix}_a"
                wbc("evaluate", score, "--model", str(lab), "--classes", "5part", "--output", str(scored))
                out[f"{name}_adapted{suffix}"] = accuracy(scored)
        for split in ("val", "train"):
            wbc("evaluate-smears", "--split", split, "--model", m, "--output", str(t / f"smears_{split}"))
            out[f"bccd_smears_{split}"] = accuracy(t / f"smears_{split}", "subtype")
    for k, v in out.items():
        print(f"{k:>40}: {v:.4f}")
    doc = {"model": m, "measures": out, "provenance": provenance(__file__, argv, m)}
    atomic_write_json(args.output, doc)
    return 0


if __name__ == "__main__":
    from _run import run

    run(main)
