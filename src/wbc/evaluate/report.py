"""The evaluation report: one self-contained HTML file a hematologist can read and an engineer can trust.

It opens with a paragraph in plain words (how many cells, how often right, where it goes wrong), then
the evidence: tables with confidence intervals, confusion matrices, per-class bars, ROC curves, a
reliability diagram, a coverage-accuracy curve, the most telling mistakes, and Grad-CAM overlays.
Figures are drawn with matplotlib (Agg) and embedded as base64 PNG; thumbnails as base64 JPEG; there
is no script and no external resource, so the file works offline and can be mailed around.
"""

from __future__ import annotations

import base64
import functools
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import jinja2
import numpy as np
from markupsafe import Markup

from wbc.evaluate import in_sample_note, recorded_calls_text, repeated_note
from wbc.formats import confidence_text, threshold_text
from wbc.paths import DEFAULT_MODEL

#: Plural display names of the canonical classes (others are shown as they are).
DISPLAY_NAMES: dict[str, str] = {
    "basophil": "basophils",
    "eosinophil": "eosinophils",
    "erythroblast": "erythroblasts",
    "ig": "immature granulocytes (IG)",
    "lymphocyte": "lymphocytes",
    "monocyte": "monocytes",
    "neutrophil": "neutrophils",
    "platelet": "platelets",
}

#: Reliability-diagram bins with fewer cells than this are not drawn (they still count in the ECE).
MIN_BIN_CELLS = 5

# Colour-blind-safe palette (Okabe-Ito) for per-class lines.
PALETTE = [
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#CC79A7",
    "#56B4E9",
    "#D55E00",
    "#F0E442",
    "#000000",
    "#999999",
    "#882255",
]


@dataclass
class Thumb:
    """One picture in a gallery: the image and what to print under it."""

    rgb: np.ndarray  # uint8 RGB
    true: str
    predicted: str
    probability: float
    path: str = ""
    overlay: np.ndarray | None = None  # Grad-CAM overlay of the same cell, when shown side by side


@dataclass
class ReportInputs:
    """Everything the report shows beyond ``metrics``."""

    y_true: np.ndarray  # (N,) class indices of the scored cells
    y_prob: np.ndarray  # (N, C) calibrated probabilities
    logits: np.ndarray | None = None  # (N, C) raw, for the before-calibration reliability diagram
    confident_mistakes: list[Thumb] = field(default_factory=list)
    unsure_correct: list[Thumb] = field(default_factory=list)
    gradcam: dict[str, list[Thumb]] = field(default_factory=dict)  # class -> cells with overlays
    gradcam_note: str = ""
    folds: dict[str, dict[str, Any]] | None = None  # fold_summary() of a cross-validation run
    title: str = "Classifier evaluation"


# --- words --------------------------------------------------------------------------------------


def display_name(label: str) -> str:
    return DISPLAY_NAMES.get(label, label)


def pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f}%"


def share_text(x: float, other: float = 0.0) -> str:
    """A share in percent with the digits that tell it from ``other`` (and never 100 % below 1): a class recognised
    in 299 of 300 cells is "99.7%", not the best class's "100%" (:func:`wbc.formats.confidence_text`; before wbc
    0.33.0 both read "100%").

    >>> share_text(299 / 300, 1.0), share_text(1.0), share_text(0.5, 1.0), share_text(0.996, 0.9863)
    ('99.7%', '100%', '50%', '99.6%')
    """
    return confidence_text(x, other, 0, 100) + "%"


def pct_ci(ci: Sequence[float] | None, digits: int = 1) -> str:
    """An interval in percent; never one of zero width, which would read as certainty (``n/a`` instead)."""
    return "n/a" if not ci or ci[1] <= ci[0] else f"{100 * ci[0]:.{digits}f}–{100 * ci[1]:.{digits}f}%"


def weakest_classes(metrics: Mapping[str, Any], k: int = 2) -> list[tuple[str, float]]:
    """The ``k`` classes (with cells in the data) that the model finds least often, lowest recall first: only
    classes found less often than the best one (a class at 100 % is nobody's weakest).

    >>> weakest_classes({"per_class": {"a": {"recall": 0.5}, "b": {"recall": 1.0}, "c": {"recall": 1.0}}})
    [('a', 0.5)]
    """
    rec = [(c, m["recall"]) for c, m in metrics["per_class"].items() if m["recall"] is not None]
    rec.sort(key=lambda t: (t[1], t[0]))
    best = max((r for _, r in rec), default=0.0)
    return [t for t in rec if t[1] < best][:k]


def main_confusion(metrics: Mapping[str, Any], label: str) -> tuple[str, int] | None:
    """What cells of class ``label`` are most often called instead, and how many."""
    classes = metrics["confusion_matrix"]["classes"]
    row = np.array(metrics["confusion_matrix"]["matrix"][classes.index(label)])
    row[classes.index(label)] = 0
    if row.sum() == 0:
        return None
    j = int(row.argmax())
    return classes[j], int(row[j])


def summary_paragraphs(metrics: Mapping[str, Any]) -> list[Markup]:
    """The opening of the report in plain words, with <b> for the key numbers.

    Markup whose ``format`` escapes every inserted value, so user text (model id, data, labels) stays text.
    """
    M = Markup
    n = metrics["n"]
    ci = metrics["ci"]
    paras = []
    first = M(
        "The model <b>{}</b> was tested on <b>{} cells</b> from {} whose type had been set by experts. "
        "It named <b>{}</b> of them correctly (95% confidence interval {})."
    ).format(
        metrics.get("model_id", ""),
        f"{n:,}",
        metrics.get("data_description", "the evaluation data"),
        pct(metrics["accuracy"]),
        pct_ci(ci["accuracy"]),
    )
    weak = weakest_classes(metrics)
    if weak:
        best = max(
            ((c, m["recall"]) for c, m in metrics["per_class"].items() if m["recall"] is not None),
            key=lambda t: (t[1], t[0]),
        )
        parts = []
        for c, r in weak:  # with the digits that tell it from the best class's share
            conf = main_confusion(metrics, c)
            s = M("<b>{}</b> (it recognised {} of them").format(display_name(c), share_text(r, best[1]))
            if conf:
                s += M("; most often mistaken for {}, {} cells)").format(display_name(conf[0]), f"{conf[1]:,}")
            else:
                s += ")"
            parts.append(s)
        first += M(" It was weakest on {}, and best on {} ({}).").format(
            M(" and ").join(parts), display_name(best[0]), share_text(best[1])
        )
    if metrics.get("split") == "test" and metrics.get("own_run"):  # another run's split says nothing of this model
        first += " These test cells were set aside before training, so the model had never seen them."
    paras.append(first)
    sel = metrics["selective"]
    if sel.get("accepted_fraction") is not None and sel["review_threshold"] >= 1.0:
        paras.append(M("This model flags every cell for human review: the labelled cells it was checked on do not "
                       "show its review target (wbc adapt on a few cells; label more, or choose a target they show "
                       "with --review-target)."))
    elif sel.get("flagged_any") is not None and (sel["flagged_any"] or sel["review_threshold"] > 0):
        paras.append(review_paragraph(sel, n))
    elif sel.get("accepted_fraction") is not None and sel["review_threshold"] > 0:
        flagged = sel["flagged"]
        acc_ok = sel["accepted_accuracy"]
        threshold = threshold_text(sel["review_threshold"])
        paras.append(
            M(
                "wbc flags a cell for human review when the model's confidence is below {}. Here that flagged "
                "<b>{} cells ({})</b>; on the other {} cells it was right <b>{}</b> of the time."
            ).format(threshold, f"{flagged:,}", pct(1 - sel["accepted_fraction"], 0), f"{n - flagged:,}", pct(acc_ok))
            if acc_ok is not None
            else M("wbc flags a cell for review when the model's confidence is below {}; here every cell was flagged.")
            .format(threshold)
        )
    ece = metrics["ece"]
    if ece.get("calibrated") is not None:
        s = M(
            "When the model states a confidence, the share of cells it gets right differs from that confidence "
            "by <b>{} percentage points</b> on average (expected calibration error of the confidence as stated"
        ).format(f"{100 * ece['calibrated']:.1f}")
        s += f"; {100 * ece['raw']:.1f} for the raw scores)." if ece.get("raw") is not None else ")."
        paras.append(s)
    unknown = metrics.get("unknown_labels") or {}
    if unknown.get("count"):
        labels = ", ".join(f"{k} ({v:,})" for k, v in unknown["labels"].items())
        paras.append(
            M(
                "{} cells had labels {} ({}); they are not part of the scores above. "
                "What the model called them is listed at the end."
            ).format(f"{unknown['count']:,}", "outside the classes chosen to answer among" if
                     metrics.get("classes_chosen") else "the model does not know", labels)
        )
    if caution := caution_text(metrics):
        paras.append(M("{}").format(caution))
    if note := repeated_note(metrics.get("repeated") or []):
        paras.append(M("{} (listed in metrics.json).").format(note))
    if metrics.get("unreadable"):
        paras.append(
            M("{} image file(s) could not be read and were left out (listed at the end).").format(
                f"{len(metrics['unreadable']):,}"
            )
        )
    return paras


def review_paragraph(sel: Mapping[str, Any], n: int) -> Markup:
    """What ``wbc classify``'s review flag did on these cells, every reason counted as ``predictions.csv``'s
    ``review`` column counts it (before wbc 0.31.0 the confidence threshold's flags alone), and how often the calls
    a lab would sign off without looking were right."""
    M = Markup
    threshold = threshold_text(sel["review_threshold"])
    flagged, other = sel["flagged_any"], sel["flagged_other"]
    if sel["review_threshold"] > 0:
        s = M("wbc flags a cell for human review, as wbc classify does, when the model's confidence is below {} or "
              "for another reason (colours unlike the training images, another cell in view, ...: predictions.csv's "
              "review_reasons column says which).").format(threshold)
    else:
        s = M("wbc flags a cell for human review, as wbc classify does, for reasons such as colours unlike the "
              "training images or another cell in view (predictions.csv's review_reasons column says which).")
    s += M(" Here it flagged <b>{} cell{} ({})</b>").format(f"{flagged:,}", "s" * (flagged != 1),
                                                           pct(flagged / n if n else None, 0))
    if flagged and sel["review_threshold"] > 0:
        s += M(": {} below the threshold and {} for another reason").format(f"{flagged - other:,}", f"{other:,}")
    if sel["accepted_any_accuracy"] is None:
        return s + M(", every cell.")
    return s + M("; on the other {} cells it was right <b>{}</b> of the time.").format(
        f"{n - flagged:,}", pct(sel["accepted_any_accuracy"]))


def caution_text(metrics: Mapping[str, Any]) -> str:
    """Why the numbers may be too optimistic, as plain text ("" for a run's own model on its own test rows): the
    report's caution paragraph and ``metrics.json``'s ``caution``.

    A folder and another run's manifest may hold the model's training images; a run's own train and val rows
    certainly trained or calibrated it (before wbc 0.31.0 the report had no caution for those). A manifest not shown to
    be the model's own run's is worded as such: nothing says whose it is (before wbc 0.33.0 "not made by the run that
    trained this model", and its "test rows" whatever split was scored). For a `wbc cases export`, the recorded calls'
    score and why a model scored on the crops is not scored as the lab's cells were answered follow
    (:func:`wbc.evaluate.recorded_calls_text`; since wbc 0.37.0).
    """
    text = _caution_text(metrics)
    if recorded := metrics.get("recorded_calls"):  # a `wbc cases export` (since wbc 0.37.0)
        return f"{text} {recorded_calls_text(recorded, bool(metrics.get('adapted_on')))}".strip()
    return text


def _caution_text(metrics: Mapping[str, Any]) -> str:
    """:func:`caution_text` of the data's provenance alone."""
    if metrics.get("adapted_on"):  # the export `wbc adapt` learnt from (wbc.evaluate.adapted_on; 0.37.0)
        return ("Caution: this model was adapted (`wbc adapt`) on these very cells: the manifest scored is the one it "
                f"learnt from (SHA-1 {str(metrics['adapted_on'])[:12]}), and every one of its cells trained it, so "
                "the numbers above are in-sample and too optimistic. Its held-out check (`wbc adapt`'s output, the "
                "model's metrics) estimates how it answers other cells; so do cells of other cases.")
    if metrics.get("data_kind") == "folder":
        return ("Caution: if any of these images were used to train the model, the numbers above are too optimistic. "
                "Evaluate on a run's manifest (its test split) for an unbiased estimate.")
    if metrics.get("data_kind") != "manifest":
        return ""
    if not metrics.get("own_run") and set(metrics.get("row_splits") or ()) == {""}:  # no split: no run's
        return ("Caution: this manifest names no splits (a lab's list of cells or a `wbc cases export`, not a "
                "training run's split), and nothing shows whether its cells trained or calibrated this model; if any "
                "did, the numbers above are too optimistic.")
    if not metrics.get("own_run"):
        return ("Caution: nothing shows that this split was made by the run that trained this model (it may be another "
                f"run's, or a lab's own), so {_foreign_rows(metrics)}; if any of these images were used to train or "
                "calibrate this model, the numbers above are too optimistic.")
    if "in_sample" in metrics:
        note = metrics["in_sample"]
    elif metrics.get("split"):
        note = in_sample_note({metrics["split"]: metrics["n"]})
    else:  # every row of the run's manifest
        note = "every split of the run was scored, the rows that trained and calibrated the model included"
    if not note:
        return ""
    return (f"Caution: these cells come from the manifest of the run that trained this model and are not held out "
            f"from it ({note}). The numbers above are too optimistic, the calibration error and the review figures "
            "most of all; the run's test split (--split test) gives the held-out estimate.")


def _foreign_rows(metrics: Mapping[str, Any]) -> str:
    """What the rows scored from a manifest not shown to be this model's run's (:func:`wbc.evaluate.is_own_run`) did
    or are known to be held out from: its test rows are held out for the run's model, its train and val rows for no
    model of that run (before wbc 0.33.0 the caution spoke of "its test rows" whatever was scored)."""
    splits = set(metrics.get("row_splits") or ()) or ({metrics["split"]} if metrics.get("split") else set())
    did = [w for s, w in (("train", "its train rows trained"), ("val", "its val rows chose and calibrated"))
           if s in splits]
    if did:
        shipped = "val" in splits and Path(str(metrics.get("model_path", ""))).resolve() == DEFAULT_MODEL.resolve()
        return (" and ".join(did) + " that run's model"
                + (", and calibrated the shipped model too if this is the PBC split (runs/default/manifest.csv)"
                   if shipped else ""))
    if splits == {"test"}:
        return "its test rows are held out only for the model that run trained"
    return "the rows scored are held out, if at all, only for the model that run trained"


# --- pictures -----------------------------------------------------------------------------------


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "font.size": 10,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "figure.dpi": 100,
            "savefig.bbox": "tight",
        }
    )
    return plt


def fig_to_data_uri(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    _plt().close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def image_to_data_uri(rgb: np.ndarray, quality: int = 88) -> str:
    ok, enc = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("cannot encode thumbnail")
    return "data:image/jpeg;base64," + base64.b64encode(enc.tobytes()).decode("ascii")


def _short(labels: Sequence[str]) -> list[str]:
    return ["IG" if c == "ig" else c for c in labels]


def plot_confusion(metrics: Mapping[str, Any]) -> str:
    """Counts and row-normalised confusion matrices side by side."""
    plt = _plt()
    classes = metrics["confusion_matrix"]["classes"]
    cm = np.array(metrics["confusion_matrix"]["matrix"], float)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    k = len(classes)
    size = max(4.2, 0.55 * k + 1.6)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1.2, size))
    for ax, mat, title, fmt in (
        (axes[0], cm, "Number of cells", "count"),
        (axes[1], norm, "Share of each true class (row %)", "pct"),
    ):
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        for i in range(k):
            for j in range(k):
                v = mat[i, j]
                if fmt == "count":
                    txt = f"{int(v)}" if v else "·"
                else:
                    txt = f"{100 * v:.0f}" if v >= 0.005 else ("·" if v == 0 else "<1")
                ax.text(
                    j,
                    i,
                    txt,
                    ha="center",
                    va="center",
                    fontsize=8 if k > 6 else 10,
                    color="white" if norm[i, j] > 0.55 else "#222",
                )
        ax.set_xticks(range(k), _short(classes), rotation=40, ha="right")
        ax.set_yticks(range(k), _short(classes))
        ax.set_xlabel("Model's answer")
        ax.set_ylabel("Expert label")
        ax.set_title(title)
        for s in ax.spines.values():
            s.set_visible(False)
    fig.tight_layout()
    return fig_to_data_uri(fig)


def plot_per_class(metrics: Mapping[str, Any]) -> str:
    """Horizontal bars: recall (sensitivity) and precision per class with their exact 95% intervals."""
    plt = _plt()
    classes = [c for c, m in metrics["per_class"].items() if m["support"] or m["predicted"]]
    ci = metrics["ci"]
    y = np.arange(len(classes))
    fig, ax = plt.subplots(figsize=(8.5, 0.55 * len(classes) + 1.4))
    for off, key, colour, name in (
        (-0.2, "recall", "#0072B2", "Sensitivity (recall): share of the class found"),
        (0.2, "precision", "#E69F00", "Precision: share of the model's calls that are right"),
    ):
        vals = np.array(
            [
                metrics["per_class"][c][key] if metrics["per_class"][c][key] is not None else np.nan
                for c in classes
            ],
            float,
        )
        lo = np.array([ci[key][c][0] if ci[key].get(c) else np.nan for c in classes])
        hi = np.array([ci[key][c][1] if ci[key].get(c) else np.nan for c in classes])
        err = np.vstack([np.clip(vals - lo, 0, None), np.clip(hi - vals, 0, None)])
        ax.barh(y + off, np.nan_to_num(vals), height=0.38, color=colour, label=name)
        ax.errorbar(vals, y + off, xerr=np.nan_to_num(err), fmt="none", ecolor="#333", capsize=3, lw=1)
    ax.set_yticks(y, _short(classes))
    ax.invert_yaxis()
    ax.set_xlim(0, 1.0)
    ax.set_xticks(np.linspace(0, 1, 6), [f"{int(v * 100)}%" for v in np.linspace(0, 1, 6)])
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=1, frameon=False)
    ax.set_title("Per class, with 95% confidence intervals")
    fig.tight_layout()
    return fig_to_data_uri(fig)


def plot_roc(metrics: Mapping[str, Any], y_true: np.ndarray, y_prob: np.ndarray) -> str:
    from wbc.evaluate.metrics import roc_curves

    plt = _plt()
    classes = metrics["classes"]
    fig, ax = plt.subplots(figsize=(6.2, 5.4))
    for k, (c, (fpr, tpr)) in enumerate(roc_curves(y_true, y_prob, classes).items()):
        auc = metrics["roc_auc"]["per_class"][c]
        ax.plot(
            fpr,
            tpr,
            color=PALETTE[classes.index(c) % len(PALETTE)],
            lw=1.6,
            label=f"{_short([c])[0]}  (AUC {auc:.3f})",
            zorder=3 + k,
        )
    ax.plot([0, 1], [0, 1], ls="--", color="#999", lw=1, label="chance")
    ax.set_xlabel("False alarms: share of other cells called this class")
    ax.set_ylabel("Share of this class found")
    ax.set_xlim(-0.01, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(loc="lower right", fontsize=8.5, frameon=False)
    macro = metrics["roc_auc"]["macro"]
    ax.set_title(
        f"ROC curves, one class against the rest (macro AUC {macro:.3f})"
        if macro is not None
        else "ROC curves"
    )
    fig.tight_layout()
    return fig_to_data_uri(fig)


def plot_reliability(metrics: Mapping[str, Any], inputs: ReportInputs) -> str:
    """Reliability diagrams of the raw scores (T = 1) and of the confidence as stated (``metrics["reliability"]``,
    titled with ``ece.calibrated``, its ECE), with confidence histograms."""
    from wbc.evaluate.metrics import reliability_bins
    from wbc.model import softmax

    plt = _plt()
    panels = []
    ece = metrics["ece"]
    if inputs.logits is not None:
        panels.append(
            (
                "Raw scores (T = 1)",
                reliability_bins(softmax(inputs.logits, 1.0), inputs.y_true),
                ece.get("raw"),
            )
        )
        panels.append(
            (f"As stated (T = {ece['temperature']:.2f})", metrics["reliability"], ece["calibrated"])
        )
    else:
        panels.append(("Model confidence", metrics["reliability"], ece["calibrated"]))
    fig, axes = plt.subplots(
        2,
        len(panels),
        figsize=(4.6 * len(panels) + 0.6, 5.6),
        gridspec_kw={"height_ratios": [3, 1]},
        squeeze=False,
    )
    for col, (title, rb, e) in enumerate(panels):
        ax, hx = axes[0, col], axes[1, col]
        edges = np.array(rb["edges"])
        centers = (edges[:-1] + edges[1:]) / 2
        width = edges[1] - edges[0]
        acc = np.array([np.nan if v is None else v for v in rb["accuracy"]])
        conf = np.array([np.nan if v is None else v for v in rb["confidence"]])
        sparse = np.array(rb["count"]) < MIN_BIN_CELLS  # a bin of 1-4 cells is noise; not drawn
        acc0, conf0 = np.where(sparse, 0, np.nan_to_num(acc)), np.where(sparse, 0, np.nan_to_num(conf))
        low = np.minimum(acc0, conf0)
        w = width * 0.92
        ax.bar(centers, low, width=w, color="#0072B2", label="share correct")
        ax.bar(
            centers,
            np.clip(acc0 - conf0, 0, None),
            bottom=low,
            width=w,
            color="#9ecae1",
            label="right more often than stated",
        )
        ax.bar(
            centers,
            np.clip(conf0 - acc0, 0, None),
            bottom=low,
            width=w,
            color="#E69F00",
            alpha=0.55,
            label="over-confident gap",
        )
        ax.plot([0, 1], [0, 1], ls="--", color="#555", lw=1, label="perfectly honest")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"{title}\nECE {100 * e:.1f} points" if e is not None else title, fontsize=10)
        ax.set_ylabel("Share correct")
        ax.legend(loc="upper left", fontsize=8, frameon=False)
        hx.bar(centers, rb["count"], width=width * 0.92, color="#999")
        hx.set_xlim(0, 1)
        hx.set_xlabel("Model's confidence")
        hx.set_ylabel("Cells")
    fig.tight_layout()
    return fig_to_data_uri(fig)


def threshold_label(threshold: float) -> str:
    """The coverage chart's marker label: the threshold with the digits that tell it from the confidences it flags
    (:func:`wbc.formats.threshold_text`; before wbc 0.31.0 the report rounded 0.9863 to 0.99, above cells of 0.988 the
    model had not flagged).

    >>> threshold_label(0.9863332509994507)
    'review threshold 0.986'
    """
    return f"review threshold {threshold_text(threshold)}"


def plot_coverage(metrics: Mapping[str, Any], y_true: np.ndarray, y_prob: np.ndarray) -> str:
    from wbc.evaluate.metrics import coverage_curve

    plt = _plt()
    cov, acc = coverage_curve(y_prob, y_true)
    sel = metrics["selective"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(100 * cov, 100 * acc, color="#0072B2", lw=1.8)
    lines = []
    for c, a in sel["accuracy_at_coverage"].items():
        share = sel.get("cells_at_coverage", {}).get(c, float(c) * len(y_true)) / max(len(y_true), 1)
        ax.plot(100 * share, 100 * a, "o", color="#0072B2", ms=5)
        lines.append(f"{100 * share:.0f}% accepted: {100 * a:.1f}% right")
    ax.text(
        0.03,
        0.14,
        "\n".join(lines),
        transform=ax.transAxes,
        ha="left",
        va="bottom",
        fontsize=9,
        bbox={"boxstyle": "round", "fc": "white", "ec": "#ccc"},
    )
    if sel.get("accepted_fraction") and sel["accepted_accuracy"] is not None and sel["review_threshold"] > 0:
        x, y = 100 * sel["accepted_fraction"], 100 * sel["accepted_accuracy"]
        ax.axvline(x, color="#D55E00", ls=":", lw=1.2)
        ax.plot(x, y, "D", color="#D55E00", ms=6, label=threshold_label(sel["review_threshold"]))
        ax.legend(loc="lower left", frameon=False, fontsize=9)
    ax.set_xlabel("Cells accepted without review (%), most confident first")
    ax.set_ylabel("Accuracy on accepted cells (%)")
    lo = max(0.0, 100 * float(np.min(acc[len(acc) // 20 :])) - 3) if len(acc) else 0.0
    ax.set_ylim(lo, 100.5)
    ax.set_xlim(0, 100.5)
    ax.grid(alpha=0.3)
    ax.set_title("Accuracy when the least confident cells go to review")
    fig.tight_layout()
    return fig_to_data_uri(fig)


# --- HTML ---------------------------------------------------------------------------------------
# The pages are Jinja2 templates in ``templates/`` (autoescaped: user text such as file names and model ids
# cannot inject markup). Python computes the values and formats the numbers; the templates only lay them out.


@functools.cache
def _env() -> jinja2.Environment:
    """The one template environment of the evaluation pages, created on first use."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("wbc.evaluate", "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render(template: str, **context: Any) -> str:
    """Render one of the evaluation templates with plain values (strings, numbers, lists, dicts)."""
    return _env().get_template(template).render(**context) + "\n"


def _fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _grade(x: float | None) -> str:
    if x is None:
        return ""
    return " low" if x < 0.75 else " mid" if x < 0.9 else ""


def _ci_plain(ci: Sequence[float] | None) -> str:
    return "n/a" if not ci or ci[1] <= ci[0] else f"{ci[0]:.3f}–{ci[1]:.3f}"


#: The key-numbers table's interval of macro-F1 where the bootstrap has none (every resample gives the same value).
NO_BOOTSTRAP_INTERVAL = "none: every resample of the cells gives the same value"
#: The same where no resample was drawn (``n_boot`` 0, from the Python API).
NOT_BOOTSTRAPPED = "none: not bootstrapped (n_boot 0)"


def key_numbers_rows(metrics: Mapping[str, Any]) -> list[dict[str, str]]:
    """The rows of the key-numbers table: measure, value, 95% interval and what it means, as plain text."""
    ci = metrics["ci"]
    ece = metrics["ece"]
    rows = [
        ("Accuracy", pct(metrics["accuracy"]), pct_ci(ci["accuracy"]), "Share of cells given the right class."),
        (
            "Balanced accuracy",
            pct(metrics["balanced_accuracy"]),
            "",
            "Average of the per-class sensitivities: every class counts the same, however rare.",
        ),
        (
            "Macro F1",
            _fmt(metrics["macro_f1"]),
            _ci_plain(ci["macro_f1"]) if ci["macro_f1"]
            else NO_BOOTSTRAP_INTERVAL if ci.get("n_boot", 1) > 0 else NOT_BOOTSTRAPPED,
            "Balance of missed cells and false alarms, averaged over classes (1 is perfect).",
        ),
        ("Weighted F1", _fmt(metrics["weighted_f1"]), "", "The same, weighted by how many cells each class has."),
        (
            "Cohen's kappa",
            _fmt(metrics["cohen_kappa"]),
            "",
            "Agreement with the experts beyond what chance would give (1 perfect, 0 chance).",
        ),
        (
            "ROC AUC (macro)",
            _fmt(metrics["roc_auc"]["macro"]),
            "",
            "How well the scores separate each class from the others (1 perfect, 0.5 a coin toss).",
        ),
    ]
    if ece.get("raw") is not None:
        rows.append(
            (
                "Calibration error, raw",
                f"{100 * ece['raw']:.1f} points",
                "",
                "Average gap between stated confidence and actual accuracy, before temperature scaling.",
            )
        )
    rows.append(
        (
            "Calibration error" + (", as stated" if ece.get("raw") is not None else ""),
            f"{100 * ece['calibrated']:.1f} points",
            "",
            "The same for the confidence the model states"
            + (f" (after temperature scaling, T = {ece['temperature']:.2f})" if ece.get("temperature") else "")
            + "; 0 is perfectly honest.",
        )
    )
    t_only = ece.get("temperature_only")
    if t_only is not None and f"{100 * t_only:.1f}" != f"{100 * ece['calibrated']:.1f}":
        rows.append(
            (
                "Calibration error, temperature only",
                f"{100 * t_only:.1f} points",
                "",
                "The raw scores after temperature scaling alone, before the lab's class prior and the cytoplasm "
                "evidence that the stated confidence weighs.",
            )
        )
    if ece.get("refit"):
        r = ece["refit"]
        rows.append(
            (
                "Calibration error, refitted",
                f"{100 * r['ece']:.1f} points",
                "",
                f"The raw scores with T = {r['temperature']:.2f} refitted on {r['fitted_on']} (temperature alone).",
            )
        )
    n = metrics["n"]
    for c, a in metrics["selective"]["accuracy_at_coverage"].items():
        k = metrics["selective"].get("cells_at_coverage", {}).get(c, round(float(c) * n))
        rows.append(
            (
                f"Accuracy on the {100 * k / n:.0f}% most confident ({k:,} of {n:,} cells)",
                pct(a),
                "",
                f"If the least confident {n - k:,} cell{'s' * (n - k != 1)} ({100 * (n - k) / n:.0f}%) went to a "
                "human.",
            )
        )
    return [{"measure": a, "value": b, "ci": c, "meaning": d} for a, b, c, d in rows]


def per_class_rows(metrics: Mapping[str, Any]) -> list[dict[str, str]]:
    """One row per class: counts, sensitivity with its interval, specificity, precision, F1, AUC, main confusion."""
    ci = metrics["ci"]
    auc = metrics["roc_auc"]["per_class"]
    rows = []
    for c, m in metrics["per_class"].items():
        conf = main_confusion(metrics, c) if m["support"] else None
        rows.append(
            {
                "name": display_name(c),
                "support": f"{m['support']:,}",
                "recall": pct(m["recall"]),
                "recall_grade": _grade(m["recall"]),
                "recall_ci": pct_ci(ci["recall"].get(c)),
                "specificity": pct(m["specificity"]),
                "precision": pct(m["precision"]),
                "precision_grade": _grade(m["precision"]),
                "f1": _fmt(m["f1"]),
                "auc": _fmt(auc.get(c)),
                "confused": f"{display_name(conf[0])} ({conf[1]:,})" if conf else "—",
            }
        )
    return rows


def thumb_items(thumbs: Sequence[Thumb], review_threshold: float = 0.0) -> list[dict[str, Any]]:
    """What a gallery template needs of each thumbnail; the picture as a base64 data URI. The probability has the
    digits that tell it from the ``review_threshold`` and from 100 % (:func:`share_text`; before wbc 0.33.0 whole
    percents: a confident mistake at 0.996 read "100%", cells of 0.9855, flagged, and 0.9904 both "99%")."""
    return [
        {
            "src": image_to_data_uri(t.rgb),
            "path": t.path,
            "true": t.true,
            "true_short": _short([t.true])[0],
            "predicted": t.predicted,
            "predicted_short": _short([t.predicted])[0],
            "percent": share_text(t.probability, review_threshold),
            "wrong": t.true != t.predicted,
            "overlay_src": image_to_data_uri(t.overlay) if t.overlay is not None else None,
        }
        for t in thumbs
    ]


def gradcam_rows(gradcam: Mapping[str, Sequence[Thumb]], review_threshold: float = 0.0) -> list[dict[str, Any]]:
    """One row per class of cell/overlay pairs (a cell without an overlay is shown twice)."""
    rows = []
    for c, thumbs in gradcam.items():
        items = thumb_items(thumbs, review_threshold)
        for it in items:
            it["overlay_src"] = it["overlay_src"] or it["src"]
        rows.append({"label": c, "name": display_name(c), "thumbs": items})
    return rows


def fold_rows(folds: Mapping[str, Mapping[str, Any]]) -> list[dict[str, str]]:
    rows = []
    for k, v in folds.items():
        sd = "" if v["sd"] is None else f" ± {v['sd']:.3f}"
        rows.append(
            {
                "name": k,
                "mean_sd": f"{v['mean']:.3f}{sd}",
                "n": str(v["n"]),
                "per_fold": ", ".join(f"{x:.3f}" for x in v["values"]),
            }
        )
    return rows


def unknown_rows(metrics: Mapping[str, Any]) -> list[dict[str, str]]:
    """Labels the model does not know: how many cells, and what the model called them."""
    unknown = metrics.get("unknown_labels") or {}
    if not unknown.get("count"):
        return []
    called = unknown.get("called", {})
    return [
        {"label": lab, "n": f"{n:,}", "called": ", ".join(f"{c} {k}" for c, k in called.get(lab, {}).items())}
        for lab, n in unknown["labels"].items()
    ]


def technical_rows(metrics: Mapping[str, Any]) -> list[tuple[str, str]]:
    ci = metrics["ci"]
    items = [
        ("Model", metrics.get("model_id", "")),
        ("Model file", metrics.get("model_path", "")),
        ("Data", metrics.get("data", "")),
        ("Split", metrics.get("split") or "all"),
        ("Data manifest hash", metrics.get("manifest_hash", "")),
        ("Cells scored", f"{metrics['n']:,}"),
        ("Classes", ", ".join(metrics["classes"])),
        ("Temperature (stored)", _fmt(metrics["ece"].get("temperature"), 3)),
        ("Calibration bins", str(metrics["ece"]["bins"])),
        ("95% intervals", "exact binomial (Clopper-Pearson) for accuracy, sensitivity and precision; percentile "
         f"bootstrap for macro F1 ({ci['n_boot']} resamples of cells, seed {ci['seed']}); none for the other "
         "measures"),
        ("Macro averages", "over the classes that have cells in the data"),
        ("wbc version", metrics.get("wbc_version", "")),
        ("Created", metrics.get("created", "")),
    ]
    return [(k, str(v)) for k, v in items]


def page_start(title: str) -> str:
    """The opening of every self-contained wbc HTML page, up to ``<main>``: head, title and the shared CSS."""
    return _env().get_template("page_start.html").render(title=title)


def review_page(title: str, intro: str, thumbs: Sequence[Thumb]) -> str:
    """A self-contained HTML page of one gallery, for an expert's second look at chosen cells
    (e.g. the cells every trained run gets wrong, `benchmarks/error_overlap.py --html`).

    >>> page = review_page("Shared errors", "Cells all runs got wrong.", [])
    >>> page.startswith("<!DOCTYPE html>") and "None." in page
    True
    """
    return render("review.html", title=title, intro=intro, thumbs=thumb_items(thumbs))


def build_report(metrics: Mapping[str, Any], inputs: ReportInputs) -> str:
    """The whole report as one HTML string."""
    y_true, y_prob = inputs.y_true, inputs.y_prob
    unreadable = [m for _, m in metrics.get("unreadable") or []]
    threshold = float((metrics.get("selective") or {}).get("review_threshold") or 0.0)  # captions tell cells from it
    return render(
        "report.html",
        title=f"{inputs.title} — {metrics.get('model_id', '')}",
        heading=inputs.title,
        model_id=metrics.get("model_id", ""),
        data=str(metrics.get("data", "")),
        split=metrics.get("split") or "",
        n_cells=f"{metrics['n']:,}",
        created=metrics.get("created", ""),
        summary=summary_paragraphs(metrics),
        key_numbers=key_numbers_rows(metrics),
        per_class=per_class_rows(metrics),
        figures={
            "per_class": plot_per_class(metrics),
            "confusion": plot_confusion(metrics),
            "roc": plot_roc(metrics, y_true, y_prob),
            "reliability": plot_reliability(metrics, inputs),
            "coverage": plot_coverage(metrics, y_true, y_prob),
        },
        min_bin_cells=MIN_BIN_CELLS,
        confident_mistakes=thumb_items(inputs.confident_mistakes, threshold),
        unsure_correct=thumb_items(inputs.unsure_correct, threshold),
        gradcam_rows=gradcam_rows(inputs.gradcam, threshold),
        gradcam_note=inputs.gradcam_note or "Not available.",
        folds=fold_rows(inputs.folds) if inputs.folds else [],
        unknown=unknown_rows(metrics),
        unreadable=unreadable[:50],
        unreadable_more=len(unreadable) - 50,
        technical=technical_rows(metrics),
    )
