"""Write and execute the two front-end notebooks (thin calls into the wbc package).

    python scripts/build_notebooks.py [classification] [detection]   # writes notebooks/*.ipynb with outputs

A notebook whose cells could not do their work (no PBC data, images not read, an evaluation that failed, a cell
that raised) is not written: the committed copy is kept, and the script exits non-zero with one ``error:`` line
for each notebook refused.

The notebooks hold no logic of their own: each cell calls the package, as the CLI and the HTTP API do.
The detection notebook reads ``data/raw_images/`` as `wbc analyze` does; the committed copy is executed on the
example fields shipped with wbc alone (copied into a scratch ``data/raw_images/``), whatever the builder's own
``data/raw_images/`` holds, so that its outputs never show a lab's smears and come out the same on every clone.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1]

CLASSIFICATION = [
    new_markdown_cell(
        "# WBC classification\n\nClassify single-cell images with the model shipped in wbc, then evaluate it on "
        "the held-out test split of its training run. Everything here is a call into the `wbc` package; the "
        "same steps are `wbc classify` and `wbc evaluate` on the command line."
    ),
    new_code_cell(
        "import wbc\nfrom wbc.counts import fixed\nfrom wbc.formats import confidence_text, threshold_text\n"
        "from wbc.paths import data_root\n\n"
        "clf = wbc.load_model()\nthreshold = clf.info.review_threshold\n"
        "print(clf.model_id)\nprint('classes:', ', '.join(clf.classes))\n"
        "print(f'input {clf.info.input_size}px, temperature {fixed(clf.info.temperature, 2)}, '\n"
        "      f'review below confidence {threshold_text(threshold)}')"
    ),
    new_markdown_cell(
        "## Classify cells\nFour cells of each class from the **test split** of the model's training run "
        "(`runs/default/manifest.csv`; the images are the PBC data's, `../shared/data/pbc`): cells held out from "
        "training and from every choice made in it, the split the evaluation below scores.\n\n"
        "The cells shown below are images of the PBC data set, licensed CC BY 4.0 "
        "(https://creativecommons.org/licenses/by/4.0/), shown smaller with wbc's answer above each: Acevedo A, "
        "Merino A, Alférez S, Molina Á, Boldú L, Rodellar J (2020), A dataset of microscopic peripheral blood cell "
        "images for development of automatic recognition systems, Data in Brief 30:105474, "
        "doi:10.1016/j.dib.2020.105474 (data: Mendeley Data, doi:10.17632/snkd93bnjr.1)."
    ),
    new_code_cell(
        "from pathlib import Path\nfrom wbc.data import read_manifest\nfrom wbc.paths import PACKAGE_DIR\n\n"
        "# the repository: the working folder or one above it (Jupyter starts in notebooks/), else the one wbc is in\n"
        "manifest = Path('runs/default/manifest.csv')\n"
        "places = [Path.cwd(), *Path.cwd().parents, PACKAGE_DIR.parents[1]]\n"
        "root = next((d for d in places if (d / manifest).is_file()), None)\n"
        "test = read_manifest(root / manifest, 'test') if root else []\n"
        "if root is None:\n"
        "    print(f'no run folder here ({manifest} not found): train one with '\n"
        "          '`wbc train --config configs/default.toml --output runs/default --overwrite`')\n"
        "files = [s.path for c in clf.classes for s in [s for s in test if s.label == c][:4]]\n"
        "res = wbc.classify_images(files, clf)\n"
        "if res.errors:\n"
        "    print(f'{len(res.errors)} of {len(files)} cells not read (PBC data looked for in {data_root()}); '\n"
        "          f'first: {res.errors[0][1]}')\n"
        "for p in res.predictions[:8]:\n"
        "    print(f'{p.path.split(\"/\")[-2]:>13} -> {p.label:<13} {confidence_text(p.confidence, threshold, 3)}'\n"
        "          f'  review={p.review}')\n"
        "print(dict(res.counts()))\n"
        "flagged = [p for p in res.predictions if p.review]\n"
        "print(f'flagged for review: {len(flagged)} of {len(res.predictions)}')\n"
        "for p in flagged:  # why, as the review_reasons column of `wbc classify`\n"
        "    print(f'{p.path.split(\"/\")[-2]:>13} -> {p.label:<13} {\"; \".join(p.reasons)}')"
    ),
    new_code_cell(
        "import matplotlib.pyplot as plt\nfrom wbc.io import read_image\n\n"
        "fig, axes = plt.subplots(2, 8, figsize=(16, 4.4))\n"
        "for ax, p in zip(axes.flat, res.predictions[::2]):\n"
        "    ax.imshow(read_image(p.path)); ax.axis('off')\n"
        "    flag = ' ?' if p.review else ''  # '?', in red: flagged for review, as on wbc's annotated images\n"
        "    ax.set_title(f'{p.label}\\n{confidence_text(p.confidence, threshold)}{flag}', fontsize=9,\n"
        "                 color='C3' if p.review else 'black')\n"
        "plt.tight_layout()"
    ),
    new_markdown_cell(
        "## Evaluate on the test split\nThe run's manifest pins which images were held out; `wbc evaluate` "
        "writes `metrics.json`, `predictions.csv` and a self-contained `report.html`."
    ),
    new_code_cell(
        "import json, os, subprocess, sys\n\n"
        "if root:  # the model loaded above, never a run's own model.onnx\n"
        "    report = root / 'out' / 'notebook_eval'\n"
        "    env = {k: v for k, v in os.environ.items() if k != 'FORCE_COLOR'}  # plain text, not a terminal's\n"
        "    out = subprocess.run([sys.executable, '-m', 'wbc', 'evaluate', str(root / manifest), '--split', 'test',\n"
        "                          '--model', str(clf.path), '--output', str(report)],\n"
        "                         capture_output=True, text=True, env=env)\n"
        "    if out.returncode:  # the error, and no metrics (those in out/ are an earlier run's)\n"
        "        print(out.stderr.strip().splitlines()[-1])\n"
        "    else:\n"
        "        print('report:', os.path.relpath(report / 'report.html'))\n"
        "        m = json.loads((report / 'metrics.json').read_text())\n"
        "        print(f\"accuracy {fixed(m['accuracy'], 4)}  macro-F1 {fixed(m['macro_f1'], 4)}  n={m['n']}\")\n"
        "else:\n"
        "    print('no run folder here: nothing to evaluate')"
    ),
]

DETECTION = [
    new_markdown_cell(
        "# WBC detection and classification in smear images\n\nFind every white blood cell in whole smear "
        "fields, outline nucleus and cytoplasm, classify each cell and count the differential. The same chain "
        "runs behind `wbc analyze` and the HTTP API."
    ),
    new_code_cell(
        "from pathlib import Path\nimport wbc\n"
        "from wbc.analyze import smear_label_set\n"
        "from wbc.examples import example_fields\nfrom wbc.io import iter_image_paths, read_image\n\n"
        "clf = wbc.load_model()\nseg = wbc.load_segmenter('auto')\n"
        "answered = smear_label_set(clf)  # the classes a smear cell is answered among: the model's, less platelets\n"
        "threshold = clf.info.review_threshold\n"
        "folder = Path('../data/raw_images')\n"
        "images = list(iter_image_paths([folder])) if folder.is_dir() else []\n"
        "if not images:  # nothing in data/raw_images/ yet: the example fields shipped with wbc\n"
        "    images = example_fields()\n"
        "images = images[:4]\n"
        "print(len(images), 'images;', 'segmenter:', seg.name)"
    ),
    new_code_cell(
        "from wbc.formats import confidence_text\n\n"
        "errors = []  # (path, message) of each field that cannot be analysed; the others are still answered\n"
        "results = wbc.analyze_images(images, clf, seg, errors=errors)\n"
        "for r in results:  # '?': flagged for review, as on the annotated images\n"
        "    print(r.image, [(c.prediction.label, confidence_text(c.prediction.confidence, threshold)\n"
        "                     + (' ?' if c.prediction.review else '')) for c in r.cells])\n"
        "    for w in r.warnings:\n"
        "        print('  warning:', w)\n"
        "for path, message in errors:\n"
        "    print('not analysed:', message)"
    ),
    new_code_cell(
        "import matplotlib.pyplot as plt\nfrom wbc.render import render\n\n"
        "failed = {path for path, _ in errors}\n"
        "analysed = [p for p in images if str(p) not in failed]  # the fields of `results`, in order\n"
        "if results:\n"
        "    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), squeeze=False)\n"
        "    for ax, p, r in zip(axes[0], analysed, results):  # legends: the classes answered, and '? review'\n"
        "        ax.imshow(render(read_image(p), r, answered, threshold)); ax.set_title(p.name); ax.axis('off')\n"
        "    plt.tight_layout()"
    ),
    new_markdown_cell(
        "## Differential with 95% Clopper-Pearson intervals\n\nThe differential `wbc analyze` writes "
        "(`wbc.counts.differential_rows` over the classes answered, `wbc.analyze.smear_label_set`): shares of the "
        "WBCs; erythroblasts (NRBCs) per 100 WBCs, outside the WBC total. There is no platelet row: a smear's "
        "differential counts no platelets. A detection the model takes for a platelet (a giant platelet, a clump) is "
        "counted in the class shown and flagged for review, its reason naming platelet."
    ),
    new_code_cell(
        "from wbc.counts import NO_WBC_RATE, differential_rows, fixed, pooled_counts, wbc_total\n"
        "from wbc.formats import differential_unit\n\n"
        "counts = pooled_counts(results, answered)\n"
        "# 4 decimals, then one rounding (wbc.counts.fixed), as report.html and the console of `wbc analyze` round\n"
        "for _, c, k, n, p, lo, hi in differential_rows(counts, answered, '', digits=4):\n"
        "    if k and p is None:\n"
        "        print(f'{c:<13}{k:>4}  {NO_WBC_RATE}')\n"
        "    elif k:\n"
        "        unit = '%' if differential_unit(c) == 'percent' else ' per 100 WBCs'\n"
        "        print(f'{c:<13}{k:>4}  {fixed(p):>5}{unit}  [{fixed(lo)}, {fixed(hi)}]')\n"
        "print(wbc_total(counts, answered), 'WBCs counted')\n"
        "print('flagged for review:', sum(c.prediction.review for r in results for c in r.cells))"
    ),
]


def execute(cells: list, cwd: Path) -> nbformat.NotebookNode:
    """The notebook of ``cells``, executed with ``cwd`` as its working folder (raises on a failing cell)."""
    nb = new_notebook(
        cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    )
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


#: What a cell prints when it could not do its work (data absent, images not read, an evaluation that failed):
#: a notebook showing one is never written over the committed copy.
FAILED_LINES = (" cells not read ", "error:", "not analysed:", "no run folder here")


class NotWritten(Exception):
    """A notebook the builder refused to write; the message is the one line the script exits with."""


def build(name: str, cells: list, cwd: Path = ROOT / "notebooks") -> Path:
    """Execute ``cells`` and write them as ``notebooks/NAME``, atomically, only if every cell did its work.

    Raises :class:`NotWritten` (the committed notebook untouched) otherwise: a contributor without the data would
    otherwise commit a showcase of "not read" lines.
    """
    path = ROOT / "notebooks" / name
    shown = path.relative_to(ROOT)
    try:
        nb = execute(cells, cwd)
    except CellExecutionError as exc:
        first_line = (exc.evalue or "").strip().split("\n")[0]
        raise NotWritten(f"error: {shown} not written (the committed copy kept): a cell raised {exc.ename}: "
                         f"{first_line}") from None
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    failed = [line.strip() for line in text.splitlines() if any(f in line for f in FAILED_LINES)]
    if failed:
        raise NotWritten(f"error: {shown} not written (the committed copy kept): {failed[0]}")
    tmp = path.with_name(f".{name}.tmp")
    nbformat.write(nb, tmp)
    tmp.replace(path)  # never a half-written notebook
    return path


def build_detection() -> Path:
    """The detection notebook run on the shipped example fields alone, in a scratch ``data/raw_images/``."""
    from wbc.examples import copy_examples

    with tempfile.TemporaryDirectory() as tmp:
        copy_examples(Path(tmp) / "data" / "raw_images")
        (Path(tmp) / "notebooks").mkdir()
        return build("WBC_detection_and_classification.ipynb", DETECTION, Path(tmp) / "notebooks")


BUILDERS = {
    "classification": lambda: build("WBC_Classification.ipynb", CLASSIFICATION),
    "detection": build_detection,
}

if __name__ == "__main__":
    which = sys.argv[1:] or list(BUILDERS)
    unknown = [w for w in which if w not in BUILDERS]
    if unknown:
        sys.exit(f"error: no notebook called {unknown[0]!r}; choose from {', '.join(BUILDERS)}")
    refused: list[str] = []
    for w in BUILDERS:  # each asked for, even after one refused: the detection notebook needs no data
        if w in which:
            try:
                print(BUILDERS[w]())
            except NotWritten as exc:
                refused.append(str(exc))
    if refused:
        sys.exit("\n".join(refused))
