"""``wbc evaluate --compare A B``: two models on the same cells, compared as a pair.

Each cell is scored by both models, so the right test is a paired one: McNemar's exact test on the cells
where exactly one model is right, and an interval for the difference in accuracy from the same exact binomial,
so the two cannot contradict each other (:func:`wbc.evaluate.metrics.paired_accuracy_difference`).
Writes ``comparison.json``, ``comparison.csv`` (both models' answers per cell) and ``comparison.html``.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from wbc.errors import WbcError
from wbc.evaluate import (
    EvalData,
    adapted_on,
    caution_for,
    classify_samples,
    recorded_calls_score,
    recorded_calls_text,
    root_hint,
)
from wbc.io import atomic_write_csv, atomic_write_json, atomic_write_text, check_output_file

if TYPE_CHECKING:
    from wbc.model import Classifier


def _names(a: Classifier, b: Classifier) -> tuple[str, str]:
    na, nb = a.model_id, b.model_id
    if na == nb:
        na, nb = f"{na} ({a.path})", f"{nb} ({b.path})"
    return na, nb


def left_out_text(result: dict[str, Any]) -> str:
    """The page's sentence on the images that are not part of the comparison ("" when every one is).

    >>> left_out_text({"n_images": 45, "unreadable": [["a", "a: empty"], ["b", "b: cut"]], "not_scored": {"x": 1}})
    'Of the 45 images given, 2 could not be read (listed below) and 1 has a label that the two models do not both \
answer among (x 1); they are not part of this comparison.'
    """
    parts = []
    if k := len(result["unreadable"]):
        parts.append(f"{k:,} could not be read (listed below)")
    if m := sum(result["not_scored"].values()):
        labels = ", ".join(f"{lab} {n:,}" for lab, n in result["not_scored"].items())
        parts.append(f"{m:,} {'has a label' if m == 1 else 'have labels'} that the two models do not both answer "
                     f"among ({labels})")
    if not parts:
        return ""
    return f"Of the {result['n_images']:,} images given, {' and '.join(parts)}; they are not part of this comparison."


def inflated_text(caution: dict[str, str | None]) -> str:
    """Whose training cells may be behind the difference, for the verdict ("" when neither model is cautioned).

    >>> inflated_text({"a": None, "b": "Caution: ..."}), inflated_text({"a": None, "b": None})
    ('model B', '')
    """
    which = [f"model {k.upper()}" for k, text in caution.items() if text]
    return " or ".join(which)


def unread_message(data: EvalData, classes: list[str], unreadable: dict[str, str], read: bool) -> str:
    """Why no cell could be compared when the data hold labelled cells, as `wbc evaluate` says it: none of the images
    could be read (``read`` False), or none labelled with a class to score, naming the first problem. Before wbc
    0.35.0 `--compare` said no cell had a label both models answer, sending the user after the labels.

    >>> from wbc.data import Sample
    >>> d = EvalData([Sample(Path("n/a.jpg"), "neutrophil"), Sample(Path("m/b.jpg"), "macrophage")], Path("set"))
    >>> unread_message(d, ["neutrophil"], {"n/a.jpg": "n/a.jpg: empty"}, read=True)
    'set: none of the images labelled with a class to score could be read (first problem: n/a.jpg: empty)'
    """
    if not read:
        first = next(iter(unreadable.values()), "unknown")
        return (f"{data.source}: none of the {len(data.samples)} images could be read (first problem: {first})"
                f"{root_hint(data)}")
    to_score = {str(s.path) for s in data.samples if s.label in classes}
    first = next((msg for path, msg in unreadable.items() if path in to_score), "unknown")
    return f"{data.source}: none of the images labelled with a class to score could be read (first problem: {first})"


def compare(
    data: EvalData,
    clf_a: Classifier,
    clf_b: Classifier,
    output: str | os.PathLike[str],
    *,
    batch_size: int = 64,
    workers: int = 2,
    reframe: bool = True,
    root: Path | None = None,
) -> dict[str, Any]:
    """Score both classifiers on ``data`` and compare them on the cells both can read and label.

    Each answers as ``wbc classify`` would (its ``--classes`` label set, TTA, and ``reframe``), so only the cells
    labelled with a class both answer among are scored, over those classes: a cell neither can name right would
    only add the same error to both. What is left out is said (``unreadable`` with the reason, ``not_scored`` by
    label, ``skipped``), in ``comparison.json`` and on the page, as ``wbc evaluate`` says it (before wbc 0.31.0 only
    the unreadable files' paths were in ``comparison.json``). Each model's caution (``caution``: ``a``, ``b``), as
    `wbc evaluate` gives it, is written and shown beside the verdict: cells that trained or calibrated one of them make
    its lead no evidence of a better model (since wbc 0.36.0). For a `wbc cases export`, ``recorded_calls`` says how
    often the calls `wbc analyze` recorded for the compared cells were right (:func:`wbc.evaluate.recorded_calls_score`:
    the original model read the crops here without its fields' colour calibration, and loses to an adapted model that
    made the same calls in use; since wbc 0.37.0). ``root``: the root the manifest's rows were read under, as
    :func:`wbc.evaluate.load_eval_data` took it."""
    from sklearn.metrics import accuracy_score, f1_score, recall_score

    from wbc.evaluate.metrics import mcnemar, paired_accuracy_difference, present_labels
    from wbc.evaluate.report import _plt, display_name, fig_to_data_uri, pct, render

    out_dir = check_output_file(Path(output) / "comparison.json").parent  # a one-line error before any work
    # the classes each answers among (--classes, Classifier.with_classes; default all of its own)
    answered_b = list(clf_b.label_set) or list(clf_b.classes)
    classes = [c for c in (list(clf_a.label_set) or list(clf_a.classes)) if c in answered_b]
    if not any(s.label in classes for s in data.samples):  # known before any image is read (since wbc 0.35.0)
        raise WbcError(f"{data.source}: no cell has a label that both models answer among ({', '.join(classes)})")
    sa = classify_samples(data.samples, clf_a, batch_size, workers, reframe=reframe)
    sb = classify_samples(data.samples, clf_b, batch_size, workers, reframe=reframe)
    pos_b = {str(s.path): i for i, s in enumerate(sb.samples)}
    rows = []  # (index in a, index in b)
    not_scored: Counter[str] = Counter()  # read by both, labelled outside the classes both answer among
    for i, s in enumerate(sa.samples):
        j = pos_b.get(str(s.path))
        if j is not None and s.label in classes:
            rows.append((i, j))
        elif j is not None:
            not_scored[s.label] += 1
    unreadable: dict[str, str] = {}  # path -> the first reason either model gave
    for path, msg in [*sa.errors, *sb.errors]:
        unreadable.setdefault(path, msg)
    if not rows:  # a cell labelled with a class is known (above): every one failed in one model or both
        raise WbcError(unread_message(data, classes, unreadable, read=bool(not_scored)))
    ia = np.array([r[0] for r in rows])
    ib = np.array([r[1] for r in rows])
    truth = [sa.samples[i].label for i in ia]
    pred_a = [sa.predictions[i].label for i in ia]
    pred_b = [sb.predictions[j].label for j in ib]
    ok_a = np.array([p == t for p, t in zip(pred_a, truth, strict=True)])
    ok_b = np.array([p == t for p, t in zip(pred_b, truth, strict=True)])
    name_a, name_b = _names(clf_a, clf_b)

    def summary(pred: list[str]) -> dict[str, Any]:
        y = np.array([classes.index(t) for t in truth])
        p = np.array([classes.index(x) if x in classes else -1 for x in pred])
        labels = present_labels(y, len(classes))
        rec = recall_score(y, p, labels=labels, average=None, zero_division=0)
        return {
            "accuracy": float(accuracy_score(y, p)),
            "macro_f1": float(f1_score(y, p, labels=labels, average="macro", zero_division=0)),
            "recall": {classes[k]: float(r) for k, r in zip(labels, rec, strict=True)},
        }

    result: dict[str, Any] = {
        "data": str(data.source),
        "split": data.split,
        "classes": classes,
        "n": len(rows),
        "model_a": {"id": name_a, "path": str(clf_a.path), **summary(pred_a)},
        "model_b": {"id": name_b, "path": str(clf_b.path), **summary(pred_b)},
        "mcnemar": mcnemar(ok_a, ok_b),
        "accuracy_difference": paired_accuracy_difference(ok_a, ok_b),
        "n_images": len(data.samples),
        "unreadable": [[path, msg] for path, msg in sorted(unreadable.items())],
        "not_scored": dict(sorted(not_scored.items())),
        "skipped": [list(e) for e in data.skipped],
        "repeated": [list(e) for e in data.repeated],
        # each model's caution, as `wbc evaluate` gives it alone (None: a run's own model on its own test rows)
        "caution": {"a": caution_for(data, clf_a) or None, "b": caution_for(data, clf_b) or None},
        # the SHA-1 of the manifest scored, for a model `wbc adapt` adapted on it ("" else: wbc.evaluate.adapted_on)
        "adapted_on": {"a": adapted_on(data, clf_a), "b": adapted_on(data, clf_b)},
        # a `wbc cases export`: how the lab's cells were answered in use (since wbc 0.37.0)
        "recorded_calls": recorded_calls_score(data, [sa.samples[i] for i in ia], root),
    }

    # the page (templates/compare.html): words first, then a table and one figure
    plt = _plt()
    mc, diff = result["mcnemar"], result["accuracy_difference"]
    ra, rb = result["model_a"], result["model_b"]
    shown = [c for c in classes if c in ra["recall"]]
    y = np.arange(len(shown))
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(shown) + 1.2))
    ax.barh(y - 0.2, [ra["recall"][c] for c in shown], 0.38, color="#0072B2", label=f"A: {name_a}")
    ax.barh(y + 0.2, [rb["recall"][c] for c in shown], 0.38, color="#E69F00", label=f"B: {name_b}")
    ax.set_yticks(y, shown)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("Sensitivity (share of the class found)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), frameon=False)
    fig.tight_layout()
    page = render(
        "compare.html",
        title="Model comparison",
        data=str(data.source),
        split=data.split or "",
        n_cells=f"{len(rows):,}",
        name_a=name_a,
        name_b=name_b,
        a={"accuracy": pct(ra["accuracy"]), "macro_f1": f"{ra['macro_f1']:.3f}"},
        b={"accuracy": pct(rb["accuracy"]), "macro_f1": f"{rb['macro_f1']:.3f}"},
        only_a=f"{mc['only_a_correct']:,}",
        only_b=f"{mc['only_b_correct']:,}",
        diff=f"{100 * diff['difference']:+.1f}",
        diff_lo=f"{100 * diff['ci'][0]:+.1f}",
        diff_hi=f"{100 * diff['ci'][1]:+.1f}",
        significant=mc["p_value"] < 0.05,
        p_value=f"{mc['p_value']:.3g}",
        method=mc["method"].replace("_", " "),
        statistic=f"{mc['statistic']:.2f}",
        both_correct=f"{mc['both_correct']:,}",
        both_wrong=f"{mc['both_wrong']:,}",
        per_class=[
            {"name": display_name(c), "a": pct(ra["recall"][c]), "b": pct(rb["recall"][c])} for c in shown
        ],
        figure=fig_to_data_uri(fig),
        left_out=left_out_text(result),
        cautions=[(k.upper(), text) for k, text in result["caution"].items() if text]
        + ([("The cells' recorded calls", recorded_calls_text(result["recorded_calls"],
                                                               any(result["adapted_on"].values())))]
           if result["recorded_calls"] else []),
        inflated=inflated_text(result["caution"]),
        unreadable=[msg for _, msg in result["unreadable"][:50]],
        unreadable_more=len(result["unreadable"]) - 50,
    )
    # the files only once the page is built, comparison.json last, so a run stopped or failed while drawing leaves an
    # earlier run's files as they were (before wbc 0.35.0 comparison.json and .csv came first)
    atomic_write_csv(
        out_dir / "comparison.csv",
        ["path", "true_label", "label_a", "confidence_a", "label_b", "confidence_b"],
        [
            (
                str(sa.samples[i].path),
                t,
                sa.predictions[i].label,
                f"{sa.predictions[i].confidence:.4f}",
                sb.predictions[j].label,
                f"{sb.predictions[j].confidence:.4f}",
            )
            for (i, j), t in zip(rows, truth, strict=True)
        ],
    )
    atomic_write_text(out_dir / "comparison.html", page)
    atomic_write_json(out_dir / "comparison.json", result)
    return result
