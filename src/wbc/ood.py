"""Out-of-distribution (OOD) flags: is this cell image unlike anything the model was trained on?

A classifier answers confidently even for images it has never seen the like of (another lab's stain, a
blurred field, not a blood cell at all). Two cheap scores catch most of that, both fitted on the training
split and stored in the model's metadata (``ModelInfo.ood``) so that analysis needs nothing else:

- *colour*: Mahalanobis distance of the cell image's CIELAB mean and spread (6 numbers) from the training
  images' (Ledoit-Wolf covariance). Catches other stains, white balance and exposure.
- *feature*: distance of the network's pooled embedding from the nearest class centre, in a whitened
  32-dimensional PCA space, plus the PCA reconstruction residual. Catches things that look different to
  the network, whatever their colour.

Each score is divided by its threshold, so 1.0 is the edge, and a cell is flagged when either score passes it.
The two thresholds sit at one percentile of the *validation* split's scores (``score_percentile``), the lowest at
which no more than 100 - ``percentile`` (99.5) % of those cells pass either (:func:`joint_thresholds`): about 0.5 %
of in-distribution cells are flagged. Before wbc 0.30.0 each score had its own 99.5th percentile, which together
flag up to 1 %; the shipped model's statistics are of that kind (docs/generalisation.md). ``references`` is a list;
a score is the minimum over references, so ``wbc adapt`` can add a reference for a new lab's cells.

Fit on a run: ``wbc ood fit --model M --manifest RUN/manifest.csv`` (writes into ``M``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from wbc.errors import WbcError
from wbc.types import Prediction

OOD_VERSION = 1
DEFAULT_PERCENTILE = 99.5
PCA_DIMS = 32


# --- features ------------------------------------------------------------------------------------


def colour_features(cells: np.ndarray | Sequence[np.ndarray], step: int = 2) -> np.ndarray:
    """(N, 6) CIELAB mean and standard deviation of each uint8 RGB cell image.

    Computed on every ``step``-th pixel in each direction: this runs once per classified cell, and the
    statistics barely change (on 550 PBC cells at 160 px, at most 4 % of their spread across cells) at
    a third of the cost.
    """
    from wbc.stain import lab_stats

    arr = np.asarray(cells if isinstance(cells, np.ndarray) else np.stack(cells))
    if len(arr) == 0:
        return np.zeros((0, 6), np.float64)
    return np.stack([np.concatenate(lab_stats(np.ascontiguousarray(c[::step, ::step]))) for c in arr])


def fit_gaussian(x: np.ndarray) -> dict[str, Any]:
    """Mean and inverse Ledoit-Wolf covariance of the rows of ``x`` (stable with few samples)."""
    from sklearn.covariance import LedoitWolf

    if len(x) < 3:
        raise WbcError(f"need at least 3 samples to fit OOD statistics, got {len(x)}")
    lw = LedoitWolf().fit(np.asarray(x, np.float64))
    cov = lw.covariance_
    if not np.trace(cov) > 0:  # every sample alike (one image listed many times): no spread to measure against
        raise WbcError(f"the {len(x)} training cells' colours do not vary at all (the same image repeated?)")
    try:
        return {"mean": lw.location_.tolist(), "icov": np.linalg.inv(cov).tolist()}
    except np.linalg.LinAlgError:
        raise WbcError(f"the {len(x)} training cells' colours vary too little to fit OOD statistics on") from None


def mahalanobis(x: np.ndarray, gauss: dict[str, Any]) -> np.ndarray:
    d = np.asarray(x, np.float64) - np.asarray(gauss["mean"], np.float64)
    return np.sqrt(np.maximum(np.einsum("ni,ij,nj->n", d, np.asarray(gauss["icov"], np.float64), d), 0.0))


def fit_pca(emb: np.ndarray, dims: int = PCA_DIMS) -> dict[str, Any]:
    """Centre, principal axes and their standard deviations of L2-normalised embeddings.

    Fitted by ``sklearn.decomposition.PCA``; stored as plain lists (not a pickled estimator) so the model's
    JSON stays readable, and applied by :func:`pca_project` (whitening with a floored scale).
    """
    from sklearn.decomposition import PCA

    z = _l2(emb)
    # at most half as many axes as embeddings: n - 1 axes pass through every training embedding, leaving them no
    # residual, so its scale (the median) sat at its floor and a few dozen cells gave thresholds of 10,000 or more
    k = int(min(dims, *z.shape, max(1, (len(z) - 1) // 2)))
    with np.errstate(divide="ignore", invalid="ignore"):  # one embedding: no variance (0 / 0), handled below
        pca = PCA(n_components=k, svd_solver="full").fit(z)
    sd = np.sqrt(pca.explained_variance_) if len(z) > 1 else np.zeros(k)
    scale = np.maximum(sd, max(float(sd[0]) * 1e-3, 1e-9))  # near-empty axes must not blow up distances
    return {"mean": pca.mean_.tolist(), "components": pca.components_.tolist(), "scale": scale.tolist()}


def _l2(emb: np.ndarray) -> np.ndarray:
    e = np.asarray(emb, np.float64)
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


def pca_project(emb: np.ndarray, pca: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Whitened PCA coordinates (N, k) and the squared reconstruction residual (N,)."""
    z = _l2(emb) - np.asarray(pca["mean"], np.float64)
    comps = np.asarray(pca["components"], np.float64)
    coef = z @ comps.T
    resid = np.maximum((z**2).sum(1) - (coef**2).sum(1), 0.0)
    return coef / np.asarray(pca["scale"], np.float64), resid


def fit_feature_reference(
    emb: np.ndarray, labels: Sequence[str], classes: Sequence[str], pca: dict[str, Any]
) -> dict[str, Any]:
    """Class centres in the whitened PCA space and the typical residual, for :func:`feature_distance`."""
    coords, resid = pca_project(emb, pca)
    lab = np.asarray(labels)
    centres = {c: coords[lab == c].mean(0).tolist() for c in classes if (lab == c).any()}
    if not centres:
        raise WbcError("no labelled embeddings of the model's classes to fit OOD statistics on")
    return {"centres": centres, "resid_scale": float(max(np.median(resid), 1e-9))}


def feature_distance(emb: np.ndarray, pca: dict[str, Any], ref: dict[str, Any]) -> np.ndarray:
    """Root mean square of the whitened distance to the nearest class centre, plus the scaled residual."""
    coords, resid = pca_project(emb, pca)
    centres = np.asarray(list(ref["centres"].values()), np.float64)
    d2 = ((coords[:, None, :] - centres[None]) ** 2).sum(-1).min(1) / coords.shape[1]
    return np.sqrt(d2 + resid / ref["resid_scale"])


# --- fitting and scoring -------------------------------------------------------------------------


def check_percentile(percentile: float) -> float:
    """``percentile`` when it is a share of validation cells worth leaving unflagged (50-100), else a one-line
    :class:`WbcError`: below 50, more than half of the training lab's own cells would be flagged.

    >>> check_percentile(99.5)
    99.5
    """
    if not 50.0 <= percentile <= 100.0:  # nan fails this too
        raise WbcError(f"percentile {percentile:g}: must be between 50 and 100 (99.5: 0.5 % of the training lab's "
                       "validation cells flagged)")
    return percentile


def min_val_cells(percentile: float) -> int:
    """Validation cells needed for a ``percentile`` threshold to leave at least one cell above it; with fewer, the
    threshold is in effect their largest score, and about 1 in (n + 1) of the lab's own cells is flagged.

    >>> min_val_cells(99.5), min_val_cells(95.0), min_val_cells(100.0)
    (200, 20, 0)
    """
    return 0 if percentile >= 100 else int(np.ceil(100.0 / (100.0 - percentile) - 1e-9))


def joint_thresholds(scores: Sequence[np.ndarray], percentile: float) -> tuple[list[float], float]:
    """A threshold for each of several scores of the same cells, all at one common percentile ``q`` >= ``percentile``:
    the lowest at which at most 100 - ``percentile`` % of the cells pass any of them; and ``q``. A cell is flagged
    when either score passes its threshold, so each at ``percentile`` itself would flag up to twice as many.

    >>> rng = np.random.default_rng(0)
    >>> a, b = rng.normal(size=2000), rng.normal(size=2000)
    >>> (t, q) = joint_thresholds([a, b], 99.0)
    >>> bool(q > 99.0), float(np.mean((a > t[0]) | (b > t[1])))
    (True, 0.01)
    """
    target = (100.0 - percentile) / 100.0

    def at(q: float) -> list[float]:
        return [float(np.percentile(s, q)) for s in scores]

    def share(q: float) -> float:
        return float(np.mean(np.any([s > t for s, t in zip(scores, at(q), strict=True)], axis=0)))

    lo, hi = percentile, 100.0
    if share(lo) <= target:
        return at(lo), lo
    for _ in range(40):  # the share falls as q rises, and is 0 at 100: bisect to a small fraction of a cell
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if share(mid) <= target else (mid, hi)
    return at(hi), hi


def fit_ood(
    train_cells: np.ndarray, train_emb: np.ndarray, train_labels: Sequence[str],
    val_cells: np.ndarray, val_emb: np.ndarray, classes: Sequence[str],
    percentile: float = DEFAULT_PERCENTILE, name: str = "training",
) -> dict[str, Any]:
    """The ``ModelInfo.ood`` dict: statistics from training cells, thresholds from validation cells
    (:func:`joint_thresholds`: about 100 - ``percentile`` % of validation cells flagged by either score)."""
    check_percentile(percentile)
    pca = fit_pca(train_emb)
    ref: dict[str, Any] = {
        "name": name,
        "colour": fit_gaussian(colour_features(train_cells)),
        "feature": fit_feature_reference(train_emb, train_labels, classes, pca),
    }
    val_colour = mahalanobis(colour_features(val_cells), ref["colour"])
    val_feature = feature_distance(val_emb, pca, ref["feature"])
    (ref["colour"]["threshold"], ref["feature"]["threshold"]), each = joint_thresholds(
        [val_colour, val_feature], percentile)
    return {"version": OOD_VERSION, "percentile": percentile, "score_percentile": each, "pca": pca,
            "references": [ref], "n_train": len(train_cells), "n_val": len(val_cells)}


def add_reference(
    ood: dict[str, Any], cells: np.ndarray, emb: np.ndarray, labels: Sequence[str], classes: Sequence[str],
    name: str, new_features: bool = False,
) -> dict[str, Any]:
    """A copy of ``ood`` that also accepts cells like ``cells`` (a new lab's).

    The new reference keeps the training reference's colour covariance shape and thresholds (a few dozen cells
    cannot give a reliable 99.5th percentile) and moves the colour and class centres to the new cells'. It keeps the
    training feature residual scale, and its feature threshold is at least the largest distance among the new cells:
    the lab's embeddings lie off the training embeddings' principal axes, and before wbc 0.32.0 the training
    threshold left half of the very cells a head refit was adapted on flagged as unlike the training cells (16 of 32
    BCCD cells). The residual scale of the lab's few cells instead (ten times the training one on BCCD) accepted
    random noise (docs/generalisation.md). ``new_features``: the network was fine-tuned, so its embeddings no longer
    match the training reference; the new reference then *replaces* the old ones, with the new cells' residual
    scale and their largest distance as its threshold (the training ones do not transfer to moved features).
    """
    base = ood["references"][0]
    col = colour_features(cells)
    ref: dict[str, Any] = {
        "name": name,
        "colour": {"mean": col.mean(0).tolist(), "icov": base["colour"]["icov"],
                   "threshold": base["colour"]["threshold"]},
        "feature": fit_feature_reference(emb, labels, classes, ood["pca"]),
    }
    if new_features:
        ref["feature"]["threshold"] = float(feature_distance(emb, ood["pca"], ref["feature"]).max())
        return {**ood, "references": [ref]}
    ref["feature"]["resid_scale"] = base["feature"]["resid_scale"]
    own = float(feature_distance(emb, ood["pca"], ref["feature"]).max())  # the lab's labelled cells: never unlike
    ref["feature"]["threshold"] = max(float(base["feature"]["threshold"]), own)
    return {**ood, "references": [*ood["references"], ref]}


def ood_scores(
    cells: np.ndarray | None, embeddings: np.ndarray | None, ood: dict[str, Any]
) -> dict[str, np.ndarray]:
    """Scores relative to the thresholds (> 1 means out of distribution), best over references.

    Either input may be None (then its score is left out).
    """
    out: dict[str, np.ndarray] = {}
    refs = ood.get("references") or []
    if not refs:
        return out
    if cells is not None and len(cells):
        col = colour_features(cells)
        out["colour"] = np.min([mahalanobis(col, r["colour"]) / r["colour"]["threshold"] for r in refs], 0)
    if embeddings is not None and len(embeddings) and "pca" in ood:
        out["feature"] = np.min([feature_distance(embeddings, ood["pca"], r["feature"])
                                 / r["feature"]["threshold"] for r in refs], 0)
    return out


REASONS = {"colour": "colours unlike the training images", "feature": "appearance unlike the training cells"}


def flag_predictions(
    predictions: Sequence[Prediction], cells: np.ndarray | None, embeddings: np.ndarray | None,
    ood: dict[str, Any], scores: dict[str, np.ndarray] | None = None,
) -> list[Prediction]:
    """Set ``ood``, ``review`` and a reason on predictions whose cells are out of distribution (in place);
    ``scores``: their :func:`ood_scores`, when already computed."""
    if not ood or not len(predictions):
        return list(predictions)
    scores = ood_scores(cells, embeddings, ood) if scores is None else scores
    for i, p in enumerate(predictions):
        for kind, s in scores.items():
            if s[i] > 1.0:
                p.ood = True
                p.review = True
                p.reasons.append(f"{REASONS[kind]} (OOD score {s[i]:.1f})")
    return list(predictions)


#: What the command line adds to :func:`ood_warning` for the person who runs wbc (never shown to lab staff in the web
#: page or reports, which speak of the lab's images, not of commands), with the cell counts `wbc adapt` is made for
#: (25-100, as the README and `wbc adapt` say; before wbc 0.30.0 "~50-100").
ADAPT_ADVICE: str = ("adapt the model to this lab with `wbc adapt` on 25-100 labelled cells "
                     "(or `wbc adapt --no-labels` on unlabelled ones)")

#: The same advice for a model already adapted to the lab without labels (:func:`adapted_without_labels`).
LABEL_ADVICE: str = ("label 25-100 of this lab's cells and run `wbc adapt` on them: it measures the model's accuracy "
                     "on them (held-out check) and adapts it further")


def adapted_without_labels(classifier: object) -> bool:
    """Whether the model was adapted to a lab by ``wbc adapt --no-labels``: it still flags that lab's cells as unlike
    its training data (its out-of-distribution statistics are the training lab's), but it was chosen for them.

    >>> from types import SimpleNamespace as NS
    >>> adapted_without_labels(NS(info=NS(extra={"adapt": {"kind": "no labels"}})))
    True
    >>> adapted_without_labels(NS(info=NS(extra={})))
    False
    """
    extra = getattr(getattr(classifier, "info", None), "extra", None)
    adapt = extra.get("adapt") if isinstance(extra, dict) else None
    return isinstance(adapt, dict) and adapt.get("kind") == "no labels"


#: The advice for a model already adapted on labelled cells (``wbc adapt``, head or fine-tuned; before wbc 0.32.0 it was
#: told to run the `wbc adapt` it had just run).
ADAPTED_ADVICE: str = ("the model was adapted on a lab's labelled cells (`wbc adapt`): if these images are that lab's, "
                       "label more of its cells, these kinds included, and adapt again; if another lab's, adapt a "
                       "model to that lab")


def adapted_with_labels(classifier: object) -> bool:
    """Whether the model was adapted to a lab on labelled cells (``wbc adapt --method head`` or ``finetune``).

    >>> from types import SimpleNamespace as NS
    >>> adapted_with_labels(NS(info=NS(extra={"adapt": {"method": "head"}})))
    True
    >>> adapted_with_labels(NS(info=NS(extra={"adapt": {"kind": "no labels"}})))
    False
    """
    extra = getattr(getattr(classifier, "info", None), "extra", None)
    adapt = extra.get("adapt") if isinstance(extra, dict) else None
    return isinstance(adapt, dict) and adapt.get("method") in ("head", "finetune")


def advice_for(classifier: object) -> str:
    """What the command line advises when many cells are out of distribution (:data:`ADAPT_ADVICE`;
    :data:`LABEL_ADVICE` for a model already adapted without labels, :data:`ADAPTED_ADVICE` with them)."""
    if adapted_with_labels(classifier):
        return ADAPTED_ADVICE
    return LABEL_ADVICE if adapted_without_labels(classifier) else ADAPT_ADVICE


#: Above this fraction of out-of-distribution cells, results are called unreliable for the lab's images.
UNRELIABLE_OOD_FRACTION: float = 0.2


def too_many_ood(k: int, n: int) -> bool:
    """Whether ``k`` out-of-distribution cells of ``n`` are so many that the model should be adapted to this lab."""
    return n > 0 and k / n >= UNRELIABLE_OOD_FRACTION


def needs_adaptation(predictions: Sequence[Prediction]) -> bool:
    """Whether so many cells are out of distribution that the model should be adapted to this lab."""
    return too_many_ood(sum(p.ood for p in predictions), len(predictions))


def ood_warning(predictions: Sequence[Prediction], unlabelled_adaptation: bool = False) -> str | None:
    """One sentence for reports and the web page when cells are out of distribution, else None.

    Written for lab staff: it says what to do in the lab's words, with no command; the CLI appends :func:`advice_for`
    the model, the commands with the cell counts.
    ``unlabelled_adaptation``: the model was adapted to this lab without labels (:func:`adapted_without_labels`),
    so the sentence says its accuracy here is unmeasured instead of asking for an adaptation already made.
    """
    return ood_sentence(sum(p.ood for p in predictions), len(predictions), unlabelled_adaptation)


def ood_sentence(k: int, n: int, unlabelled_adaptation: bool = False) -> str | None:
    """:func:`ood_warning` from the counts alone: ``k`` out-of-distribution cells of ``n`` (a whole `wbc analyze` run's,
    which never holds every cell's prediction at once). The share is never rounded to all or none of the cells.

    >>> ood_sentence(199, 200).split(" look")[0], ood_sentence(1, 400).split(" look")[0]
    ('199 of 200 cells (over 99%)', '1 of 400 cells (under 1%)')
    """
    if n == 0 or k == 0:
        return None
    share = f"{100 * k / n:.0f}%"
    if 100 * k / n < 1:
        share = "under 1%"
    elif share == "100%" and k < n:
        share = "over 99%"
    msg = f"{k} of {n} cells ({share}) look unlike the model's training data (marked for review)"
    if too_many_ood(k, n) and unlabelled_adaptation:
        msg += ("; the model was adapted to this lab's images without labels, so its accuracy on them has not been "
                "measured: check every cell")
    elif too_many_ood(k, n):
        msg += ("; results may be unreliable for this lab's images until the model is adapted to this lab's "
                "stain and scanner: check every cell")
    return msg


def colour_reference(cells: np.ndarray, n: int = 200, seed: int = 0) -> dict[str, Any]:
    """Training colours for every stain normalisation method, from ``n`` random cells (for ``wbc adapt``),
    and the red cells' around them (``red_cells``: the target of ``wbc analyze``'s calibration)."""
    from wbc.stain import METHODS, fit_stain_stats, red_cell_reference

    idx = np.sort(np.random.default_rng(seed).permutation(len(cells))[:n])
    out = {}
    for m in METHODS:
        try:
            out[m] = fit_stain_stats(list(cells[idx]), m)
        except ValueError:  # e.g. too few stained pixels for Macenko: that method is just unavailable
            continue
    with contextlib.suppress(ValueError):  # crops without red cells around the WBC: smear fields stay as they are
        out["red_cells"] = red_cell_reference(cells[idx])
    return out
