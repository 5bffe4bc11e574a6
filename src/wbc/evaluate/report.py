"""The evaluation report: one self-contained HTML file a hematologist can read and an engineer can trust.

It opens with a paragraph in plain words (how many cells, how often right, where it goes wrong), then
the evidence: tables with confidence intervals, confusion matrices, per-class bars, ROC curves, a
reliability diagram, a coverage-accuracy curve, the most telling mistakes, and Grad-CAM overlays.
Figures are drawn with matplotlib (Agg) and embedded as base64 PNG; thumbnails as base64 JPEG; there
is no script and no external resource, so the file works offline and can be mailed around.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

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


def pct_ci(ci: Sequence[float] | None, digits: int = 1) -> str:
    return "n/a" if not ci else f"{100 * ci[0]:.{digits}f}–{100 * ci[1]:.{digits}f}%"


def weakest_classes(metrics: Mapping[str, Any], k: int = 2) -> list[tuple[str, float]]:
    """The ``k`` classes (with cells in the data) that the model finds least often, lowest recall first."""
    rec = [(c, m["recall"]) for c, m in metrics["per_class"].items() if m["recall"] is not None]
    rec.sort(key=lambda t: (t[1], t[0]))
    return rec[: k if len(rec) > k else max(len(rec) - 1, 0)]


def main_confusion(metrics: Mapping[str, Any], label: str) -> tuple[str, int] | None:
    """What cells of class ``label`` are most often called instead, and how many."""
    classes = metrics["confusion_matrix"]["classes"]
    row = np.array(metrics["confusion_matrix"]["matrix"][classes.index(label)])
    row[classes.index(label)] = 0
    if row.sum() == 0:
        return None
    j = int(row.argmax())
    return classes[j], int(row[j])


def summary_paragraphs(metrics: Mapping[str, Any]) -> list[str]:
    """The opening of the report in plain words (HTML-escaped, with <b> for the key numbers)."""
    e = html.escape
    n = metrics["n"]
    ci = metrics["ci"]
    where = e(metrics.get("data_description", "the evaluation data"))
    paras = []
    first = (
        f"The model <b>{e(metrics.get('model_id', ''))}</b> was tested on <b>{n:,} cells</b> from "
        f"{where} whose type had been set by experts. It named <b>{pct(metrics['accuracy'])}</b> "
        f"of them correctly (95% confidence interval {pct_ci(ci['accuracy'])})."
    )
    weak = weakest_classes(metrics)
    if weak:
        parts = []
        for c, r in weak:
            conf = main_confusion(metrics, c)
            s = f"<b>{e(display_name(c))}</b> (it recognised {pct(r, 0)} of them"
            if conf:
                s += f"; most often mistaken for {e(display_name(conf[0]))}, {conf[1]:,} cells)"
            else:
                s += ")"
            parts.append(s)
        best = max(
            ((c, m["recall"]) for c, m in metrics["per_class"].items() if m["recall"] is not None),
            key=lambda t: (t[1], t[0]),
        )
        first += (
            f" It was weakest on {' and '.join(parts)}, and best on {e(display_name(best[0]))} "
            f"({pct(best[1], 0)})."
        )
    if metrics.get("split") == "test":
        first += " These test cells were set aside before training, so the model had never seen them."
    paras.append(first)
    sel = metrics["selective"]
    if sel.get("accepted_fraction") is not None and sel["review_threshold"] > 0:
        flagged = sel["flagged"]
        acc_ok = sel["accepted_accuracy"]
        paras.append(
            f"wbc flags a cell for human review when the model's confidence is below "
            f"{sel['review_threshold']:.2f}. Here that flagged <b>{flagged:,} cells "
            f"({pct(1 - sel['accepted_fraction'], 0)})</b>; on the other {n - flagged:,} cells it was right "
            f"<b>{pct(acc_ok)}</b> of the time."
            if acc_ok is not None
            else f"wbc flags a cell for review when the model's confidence is below "
            f"{sel['review_threshold']:.2f}; here every cell was flagged."
        )
    ece = metrics["ece"]
    if ece.get("calibrated") is not None:
        s = (
            f"When the model states a confidence, the share of cells it gets right differs from that "
            f"confidence by <b>{100 * ece['calibrated']:.1f} percentage points</b> on average "
            f"(expected calibration error, after temperature scaling"
        )
        s += f"; {100 * ece['raw']:.1f} before)." if ece.get("raw") is not None else ")."
        paras.append(s)
    unknown = metrics.get("unknown_labels") or {}
    if unknown.get("count"):
        labels = ", ".join(f"{e(k)} ({v:,})" for k, v in unknown["labels"].items())
        paras.append(
            f"{unknown['count']:,} cells had labels the model does not know ({labels}); they are "
            "not part of the scores above. What the model called them is listed at the end."
        )
    if metrics.get("split") is None and metrics.get("data_kind") == "folder":
        paras.append(
            "Caution: if any of these images were used to train the model, the numbers above are "
            "too optimistic. Evaluate on a run's manifest (its test split) for an unbiased estimate."
        )
    if metrics.get("unreadable"):
        paras.append(
            f"{len(metrics['unreadable']):,} image file(s) could not be read and were left out "
            "(listed at the end)."
        )
    return paras


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
    """Horizontal bars: recall (sensitivity) and precision per class with 95% bootstrap intervals."""
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
    """Reliability diagrams before (T = 1) and after temperature scaling, with confidence histograms."""
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
            (f"Calibrated (T = {ece['temperature']:.2f})", metrics["reliability"], ece["calibrated"])
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


def plot_coverage(metrics: Mapping[str, Any], y_true: np.ndarray, y_prob: np.ndarray) -> str:
    from wbc.evaluate.metrics import coverage_curve

    plt = _plt()
    cov, acc = coverage_curve(y_prob, y_true)
    sel = metrics["selective"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(100 * cov, 100 * acc, color="#0072B2", lw=1.8)
    lines = []
    for c, a in sel["accuracy_at_coverage"].items():
        ax.plot(100 * float(c), 100 * a, "o", color="#0072B2", ms=5)
        lines.append(f"{100 * float(c):.0f}% accepted: {100 * a:.1f}% right")
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
        ax.plot(x, y, "D", color="#D55E00", ms=6, label=f"review threshold {sel['review_threshold']:.2f}")
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

CSS = """
:root { --ink:#1f2933; --muted:#5f6b7a; --line:#e3e8ee; --accent:#0b5cad; --warn:#b45309; --bad:#b91c1c; }
* { box-sizing: border-box; }
body { font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: var(--ink);
       margin: 0; background: #f6f8fa; line-height: 1.5; }
main { max-width: 1120px; margin: 0 auto; padding: 28px 28px 60px; background: #fff; }
h1 { font-size: 1.7rem; margin: 0 0 4px; }
h2 { font-size: 1.25rem; margin: 38px 0 8px; padding-top: 10px; border-top: 1px solid var(--line); }
h3 { font-size: 1.02rem; margin: 22px 0 6px; }
.meta { color: var(--muted); font-size: 0.9rem; margin-bottom: 18px; }
.summary { background: #eef5fc; border-left: 5px solid var(--accent); padding: 14px 20px; border-radius: 4px;
           font-size: 1.05rem; }
.summary p { margin: 8px 0; }
.howto { color: var(--muted); font-size: 0.93rem; margin: 4px 0 10px; max-width: 900px; }
table { border-collapse: collapse; margin: 10px 0; font-size: 0.93rem; }
th, td { padding: 6px 12px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th { background: #f3f5f8; font-weight: 600; white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.ci { color: var(--muted); font-size: 0.85rem; white-space: nowrap; font-variant-numeric: tabular-nums; }
td.low { color: var(--bad); font-weight: 600; }
td.mid { color: var(--warn); font-weight: 600; }
.fig { margin: 10px 0 4px; }
.fig img { max-width: 100%; height: auto; }
.gallery { display: flex; flex-wrap: wrap; gap: 12px; margin: 8px 0; }
.gallery figure { margin: 0; width: 132px; font-size: 0.8rem; text-align: center; }
.gallery figure.pair { width: 268px; }
.gallery img { width: 128px; height: 128px; border-radius: 4px; border: 1px solid var(--line); }
.gallery figcaption { line-height: 1.3; margin-top: 3px; }
.gallery .wrong { color: var(--bad); font-weight: 600; }
.classrow { display: flex; align-items: flex-start; gap: 16px; margin: 10px 0; }
.classrow .name { width: 150px; font-weight: 600; padding-top: 50px; }
.tech { font-size: 0.85rem; color: var(--muted); }
.tech td { padding: 3px 10px; }
code { font-size: 0.88em; background: #f3f5f8; padding: 1px 4px; border-radius: 3px; }
"""


def _fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _grade(x: float | None) -> str:
    if x is None:
        return ""
    return " low" if x < 0.75 else " mid" if x < 0.9 else ""


def key_numbers_table(metrics: Mapping[str, Any]) -> str:
    ci = metrics["ci"]
    ece = metrics["ece"]
    rows = [
        (
            "Accuracy",
            pct(metrics["accuracy"]),
            pct_ci(ci["accuracy"]),
            "Share of cells given the right class.",
        ),
        (
            "Balanced accuracy",
            pct(metrics["balanced_accuracy"]),
            "",
            "Average of the per-class sensitivities: every class counts the same, however rare.",
        ),
        (
            "Macro F1",
            _fmt(metrics["macro_f1"]),
            _ci_plain(ci["macro_f1"]),
            "Balance of missed cells and false alarms, averaged over classes (1 is perfect).",
        ),
        (
            "Weighted F1",
            _fmt(metrics["weighted_f1"]),
            "",
            "The same, weighted by how many cells each class has.",
        ),
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
            "Calibration error" + (", calibrated" if ece.get("raw") is not None else ""),
            f"{100 * ece['calibrated']:.1f} points",
            "",
            "The same after temperature scaling"
            + (f" (T = {ece['temperature']:.2f})" if ece.get("temperature") else "")
            + "; 0 is perfectly honest.",
        )
    )
    if ece.get("refit"):
        r = ece["refit"]
        rows.append(
            (
                "Calibration error, refitted",
                f"{100 * r['ece']:.1f} points",
                "",
                f"With T = {r['temperature']:.2f} refitted on {html.escape(r['fitted_on'])}.",
            )
        )
    for c, a in metrics["selective"]["accuracy_at_coverage"].items():
        rows.append(
            (
                f"Accuracy on the {100 * float(c):.0f}% most confident",
                pct(a),
                "",
                f"If the least confident {100 - 100 * float(c):.0f}% of cells went to a human.",
            )
        )
    body = "".join(
        f"<tr><td>{a}</td><td class='num'>{b}</td><td class='ci'>{c}</td><td>{d}</td></tr>"
        for a, b, c, d in rows
    )
    return (
        "<table><tr><th>Measure</th><th class='num'>Value</th><th>95% interval</th><th>What it means</th>"
        "</tr>"
        f"{body}</table>"
    )


def _ci_plain(ci: Sequence[float] | None) -> str:
    return "n/a" if not ci else f"{ci[0]:.3f}–{ci[1]:.3f}"


def per_class_table(metrics: Mapping[str, Any]) -> str:
    ci = metrics["ci"]
    auc = metrics["roc_auc"]["per_class"]
    rows = []
    for c, m in metrics["per_class"].items():
        conf = main_confusion(metrics, c) if m["support"] else None
        confused = f"{html.escape(display_name(conf[0]))} ({conf[1]:,})" if conf else "—"
        rows.append(
            f"<tr><td>{html.escape(display_name(c))}</td><td class='num'>{m['support']:,}</td>"
            f"<td class='num{_grade(m['recall'])}'>{pct(m['recall'])}</td>"
            f"<td class='ci'>{pct_ci(ci['recall'].get(c))}</td>"
            f"<td class='num'>{pct(m['specificity'])}</td>"
            f"<td class='num{_grade(m['precision'])}'>{pct(m['precision'])}</td>"
            f"<td class='num'>{_fmt(m['f1'])}</td><td class='num'>{_fmt(auc.get(c))}</td>"
            f"<td>{confused}</td></tr>"
        )
    return (
        "<table><tr><th>Class</th><th class='num'>Cells</th><th class='num'>Sensitivity</th>"
        "<th>95% interval</th><th class='num'>Specificity</th><th class='num'>Precision</th>"
        "<th class='num'>F1</th><th class='num'>AUC</th><th>Most often mistaken for</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def gallery_html(thumbs: Sequence[Thumb]) -> str:
    if not thumbs:
        return "<p class='howto'>None.</p>"
    items = []
    for t in thumbs:
        wrong = t.true != t.predicted
        cls = " class='wrong'" if wrong else ""
        title = html.escape(t.path, quote=True)
        items.append(
            f"<figure><img src='{image_to_data_uri(t.rgb)}' alt='{html.escape(t.true)} cell' title='{title}'>"
            f"<figcaption>expert: {html.escape(_short([t.true])[0])}<br>"
            f"<span{cls}>model: {html.escape(_short([t.predicted])[0])} {100 * t.probability:.0f}%</span>"
            "</figcaption></figure>"
        )
    return "<div class='gallery'>" + "".join(items) + "</div>"


def gradcam_html(gradcam: Mapping[str, Sequence[Thumb]]) -> str:
    rows = []
    for c, thumbs in gradcam.items():
        items = []
        for t in thumbs:
            wrong = t.true != t.predicted
            cls = " class='wrong'" if wrong else ""
            overlay = t.overlay if t.overlay is not None else t.rgb
            items.append(
                f"<figure class='pair'><img src='{image_to_data_uri(t.rgb)}' alt='{html.escape(c)} cell'>"
                f" <img src='{image_to_data_uri(overlay)}' alt='Grad-CAM for {html.escape(t.predicted)}'>"
                f"<figcaption><span{cls}>model: {html.escape(_short([t.predicted])[0])} "
                f"{100 * t.probability:.0f}%</span></figcaption></figure>"
            )
        rows.append(
            f"<div class='classrow'><div class='name'>{html.escape(display_name(c))}</div>"
            f"<div class='gallery'>{''.join(items)}</div></div>"
        )
    return "".join(rows)


def folds_table(folds: Mapping[str, Mapping[str, Any]]) -> str:
    rows = []
    for k, v in folds.items():
        sd = "" if v["sd"] is None else f" ± {v['sd']:.3f}"
        vals = ", ".join(f"{x:.3f}" for x in v["values"])
        rows.append(
            f"<tr><td>{html.escape(k)}</td><td class='num'>{v['mean']:.3f}{sd}</td>"
            f"<td class='num'>{v['n']}</td><td class='ci'>{vals}</td></tr>"
        )
    return (
        "<table><tr><th>Measure (validation fold)</th><th class='num'>Mean ± SD</th><th class='num'>"
        "Folds</th>"
        "<th>Per fold</th></tr>" + "".join(rows) + "</table>"
    )


def unknown_html(metrics: Mapping[str, Any]) -> str:
    out = []
    unknown = metrics.get("unknown_labels") or {}
    if unknown.get("count"):
        rows = "".join(
            f"<tr><td>{html.escape(lab)}</td><td class='num'>{n:,}</td><td>"
            + html.escape(", ".join(f"{c} {k}" for c, k in unknown.get("called", {}).get(lab, {}).items()))
            + "</td></tr>"
            for lab, n in unknown["labels"].items()
        )
        out.append(
            "<h3>Labels the model does not know</h3><p class='howto'>These cells were classified but not "
            "scored: the model cannot give their label. Use <code>--map OLD=NEW</code> if a label is a "
            "different spelling of a known class.</p><table><tr><th>Label in the data</th>"
            f"<th class='num'>Cells</th><th>The model called them</th></tr>{rows}</table>"
        )
    if metrics.get("unreadable"):
        items = "".join(f"<li><code>{html.escape(m)}</code></li>" for _, m in metrics["unreadable"][:50])
        more = len(metrics["unreadable"]) - 50
        out.append(
            f"<h3>Files that could not be read</h3><ul>{items}</ul>"
            + (f"<p>… and {more} more (see metrics.json).</p>" if more > 0 else "")
        )
    return "".join(out)


def technical_table(metrics: Mapping[str, Any]) -> str:
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
        ("Bootstrap", f"{ci['n_boot']} resamples of cells, percentile intervals, seed {ci['seed']}"),
        ("Macro averages", "over the classes that have cells in the data"),
        ("wbc version", metrics.get("wbc_version", "")),
        ("Created", metrics.get("created", "")),
    ]
    return (
        "<table class='tech'>"
        + "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>" for k, v in items)
        + "</table>"
    )


def page_start(title: str) -> str:
    """The opening of every self-contained wbc HTML page, up to ``<main>``: head, title and the shared CSS."""
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body><main>")


def review_page(title: str, intro: str, thumbs: Sequence[Thumb]) -> str:
    """A self-contained HTML page of one gallery, for an expert's second look at chosen cells
    (e.g. the cells every trained run gets wrong, `benchmarks/error_overlap.py --html`).

    >>> page = review_page("Shared errors", "Cells all runs got wrong.", [])
    >>> page.startswith("<!DOCTYPE html>") and "None." in page
    True
    """
    return (f"{page_start(title)}<h1>{html.escape(title)}</h1><p class='howto'>{html.escape(intro)}</p>"
            f"{gallery_html(thumbs)}</main></body></html>\n")


def build_report(metrics: Mapping[str, Any], inputs: ReportInputs) -> str:
    """The whole report as one HTML string."""
    e = html.escape
    y_true, y_prob = inputs.y_true, inputs.y_prob
    parts = [
        page_start(f"{inputs.title} — {metrics.get('model_id', '')}"),
        f"<h1>{e(inputs.title)}</h1>",
        f"<div class='meta'>Model <b>{e(metrics.get('model_id', ''))}</b> · data "
        f"{e(str(metrics.get('data', '')))}"
        + (f" ({e(metrics['split'])} split)" if metrics.get("split") else "")
        + f" · {metrics['n']:,} cells · {e(metrics.get('created', ''))}</div>",
        "<section class='summary'>"
        + "".join(f"<p>{p}</p>" for p in summary_paragraphs(metrics))
        + "</section>",
        "<h2>Key numbers</h2><p class='howto'>The 95% interval shows how much the number could move with a "
        "different sample of cells of the same kind (bootstrap).</p>",
        key_numbers_table(metrics),
        "<h2>Per class</h2><p class='howto'><b>Sensitivity</b>: of the cells an expert put in this "
        "class, the share the model also put there. <b>Specificity</b>: of the cells of other classes, "
        "the share the model kept out. <b>Precision</b>: of the cells the model put in this class, the "
        "share that belong there. Red: below 75%; amber: below 90%.</p>",
        per_class_table(metrics),
        f"<div class='fig'><img src='{plot_per_class(metrics)}' alt='per-class sensitivity and precision'>"
        "</div>",
        "<h2>Where the mistakes go</h2><p class='howto'>Each row is the experts' label, each column the "
        "model's answer; the diagonal holds the correct calls. Left: numbers of cells; right: the same as "
        "a share of each row, so rare classes read as easily as common ones.</p>",
        f"<div class='fig'><img src='{plot_confusion(metrics)}' alt='confusion matrices'></div>",
        "<h2>Telling classes apart</h2><p class='howto'>For each class, the curve shows how many of its "
        "cells would be found (up) against how many other cells would be wrongly included (right) as the "
        "decision threshold moves. Curves hugging the top-left corner are best.</p>",
        f"<div class='fig'><img src='{plot_roc(metrics, y_true, y_prob)}' alt='ROC curves'></div>",
        "<h2>Can the confidence be trusted?</h2><p class='howto'>Cells are grouped by the model's stated "
        "confidence; the bars show how often the model was actually right in each group. Bars on the "
        "dashed line mean the confidence is honest; orange marks over-confidence (right less often than "
        "stated), light blue under-confidence. The grey histogram shows how many cells fall in each "
        f"group; groups of fewer than {MIN_BIN_CELLS} cells are too small to draw.</p>",
        f"<div class='fig'><img src='{plot_reliability(metrics, inputs)}' alt='reliability diagram'></div>",
        "<h2>Sending unsure cells to review</h2><p class='howto'>If the cells the model is least sure about "
        "are checked by a person, the remaining ones are more often right. The curve shows the accuracy on "
        "the accepted cells for each share accepted; the diamond is the threshold stored in the model.</p>",
        f"<div class='fig'><img src='{plot_coverage(metrics, y_true, y_prob)}' alt='coverage-accuracy curve'>"
        "</div>",
        "<h2>Most confident mistakes</h2><p class='howto'>Cells the model got wrong while being sure of "
        "itself: worth a look, both for model errors and for possible labelling errors.</p>",
        gallery_html(inputs.confident_mistakes),
        "<h3>Least confident correct calls</h3>"
        "<p class='howto'>Cells the model got right, but only just.</p>",
        gallery_html(inputs.unsure_correct),
        "<h2>What the model looks at (Grad-CAM)</h2><p class='howto'>Left: the cell. Right: the same cell "
        "with the regions that pushed the model towards its answer in warm colours (red strongest). A sound "
        "model looks at the nucleus and cytoplasm of the white cell, not at the background or red cells.</p>",
        gradcam_html(inputs.gradcam)
        if inputs.gradcam
        else f"<p class='howto'>{e(inputs.gradcam_note or 'Not available.')}</p>",
    ]
    if inputs.folds:
        parts += [
            "<h2>Cross-validation</h2><p class='howto'>The same training repeated on different parts of "
            "the data; a small spread means the result does not hinge on one lucky split.</p>",
            folds_table(inputs.folds),
        ]
    extra = unknown_html(metrics)
    if extra:
        parts += ["<h2>Left out</h2>", extra]
    parts += ["<h2>Technical details</h2>", technical_table(metrics), "</main></body></html>"]
    return "\n".join(parts)
