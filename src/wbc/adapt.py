"""Few-shot adaptation to a new lab from up to ~100 labelled cells: fine-tune the network, or refit its head.

Two methods, one command (``wbc adapt --model M --data DIR --output M2``, DIR: class-per-folder images or a
manifest CSV):

- ``finetune`` (default; :func:`wbc.train.finetune.adapt_finetune`, PyTorch): every weight is updated on the lab's cells
  (:mod:`wbc.train.finetune`), starting from the network's PyTorch weights (the shipped model carries
  them beside its ONNX file). A new stain changes the input, so the early filters must move too: on 100
  BCCD cells this scored 0.881 against the head refit's 0.819 (docs/generalisation.md). One stratified
  fifth of the cells is held out of a first fine-tuning for the *held-out check* and the calibration;
  the exported model is then fine-tuned on all cells.
- ``head`` (:func:`adapt_model`, numpy only, seconds): the network's pooled ``embedding`` is kept and only
  the linear head (logits = embedding @ W.T + b) is refitted, as a multinomial logistic regression pulled
  toward the original head (penalty ``lam * ||W - W0||^2``), so a handful of cells nudge the decision
  boundaries instead of replacing them. Each labelled cell is embedded in its 8 flips/rotations (cells have
  no up). ``lam`` is chosen by stratified cross-validation; the out-of-fold predictions are the held-out
  check and refit the temperature and the review threshold. The result is a copy of the ONNX file whose
  metadata carries the new head (``ModelInfo.head``, applied by :meth:`wbc.model.Classifier.run`).

Both can store a stain normalisation to the training colours (``preprocessing.stain``) and an OOD reference for
the new lab's cells. ``--no-labels`` (:func:`adapt_stain`) stores only the colour mapping.
"""

from __future__ import annotations

import copy
import os
import re
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

# the calls `wbc analyze` recorded for a `wbc cases export`'s cells, read as the manifest itself is
# (wbc.data.read_manifest_rows), under the names `wbc adapt`'s callers import
from wbc.data import RecordedCalls, recorded_calls
from wbc.errors import ModelError, WbcError
from wbc.model import (
    ADAPTED_TTA_VIEWS,
    Classifier,
    ModelInfo,
    beside_model,
    checked_tta_views,
    without_lab_prior,
    write_model,
)
from wbc.preprocess import dihedral_view
from wbc.runtime import one_blas_thread

if TYPE_CHECKING:
    from wbc.calibration import KeptTemperature

LAMBDAS = (0.001, 0.01, 0.1, 1.0)
MAX_CELLS_WARN = 1000
#: The fewest labelled cells the adaptation is documented for (docs/generalisation.md: "25-100 cells are enough"):
#: below it the held-out check and the review threshold rest on a handful of cells, and the adapted model often does
#: worse than the original (16 cells of one case: 93.8 % -> 81.2 %).
MIN_CELLS_ADVISED = 25
#: The fewest labelled cells `wbc adapt` runs on at all (a held-out check needs some); `wbc cases export` names the
#: next step against it rather than suggesting an adaptation that refuses.
MIN_LABELLED_CELLS = 4


#: The fewest classes the labelled cells must hold: with one, balanced accuracy is that class's recall, so the head
#: refit pushes every cell towards it, the held-out check reads 100 % and the review threshold falls to 0 (wbc 0.31.0
#: signed off 12 of 78 BCCD eosinophils, lymphocytes and monocytes as neutrophils after adapting on 8 neutrophils).
MIN_LABELLED_CLASSES = 2
#: How many unread files a refusal names; the rest are counted.
NAMED_UNREAD = 3


def unread_summary(unread: Sequence[str], named: int = NAMED_UNREAD, what: str = "not read") -> str:
    """The first ``named`` of the messages for files that could not be read, the rest counted.

    >>> unread_summary(["a.png: no such file", "b.png: no such file", "c.png: x", "d.png: x"], named=2)
    '4 files not read: a.png: no such file; b.png: no such file; and 2 more'
    """
    more = f"; and {len(unread) - named} more" if len(unread) > named else ""
    return f"{len(unread)} file{'s' if len(unread) != 1 else ''} {what}: {'; '.join(unread[:named])}{more}"


def too_few_labelled(data: object, n: int, unread: Sequence[str] = ()) -> WbcError:
    """The one-line refusal for fewer than :data:`MIN_LABELLED_CELLS`, with the way forward: before wbc 0.30.0 a
    folder `wbc cases export` had just written and advised adapting on was refused with no word of what to do.
    ``unread``: the messages for the files that could not be read; before wbc 0.32.0 they were dropped, and a lab
    whose manifest's paths no longer led to its 28 labelled cells was told to "label more"."""
    if not unread:
        return WbcError(f"{data}: need at least {MIN_LABELLED_CELLS} labelled cells, got {n}; label more (for a "
                        "`wbc cases export` folder: review more cells, or export with --include-accepted)")
    where = ""
    if Path(str(data)).suffix.lower() == ".csv" and any(m.endswith(": no such file") for m in unread):
        from wbc.paths import data_root

        where = (f" (a manifest's relative paths are looked for beside it, then under the data folder {data_root()}, "
                 "WBC_DATA_DIR)")
    return WbcError(f"{data}: need at least {MIN_LABELLED_CELLS} labelled cells, got {n}; "
                    f"{unread_summary(unread)}{where}")


def too_few_classes(data: object, labels: Sequence[str], unread: Sequence[str] = (), what: str = "not read"
                    ) -> WbcError:
    """The one-line refusal for labelled cells of fewer than :data:`MIN_LABELLED_CLASSES` classes; ``unread``: the
    files (or folders: ``what``) left out, which may have held the others."""
    why = f"; {unread_summary(unread, what=what)}" if unread else ""
    held = f"every labelled cell is {labels[0]} ({len(labels)} cells)" if labels else "no labelled cell"
    return WbcError(f"{data}: {held}; label cells of at least {MIN_LABELLED_CLASSES} classes (with one, every cell "
                    f"is pushed towards it and the held-out check and review threshold cannot be fitted){why}")


# --- model file ----------------------------------------------------------------------------------


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:  # pragma: no cover - onnx is a main dependency
        raise WbcError("writing a model needs the `onnx` package: pip install onnx") from None
    return onnx


def write_model_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str], info: ModelInfo) -> Path:
    """Copy the ONNX graph of ``src`` to ``dst`` with ``info`` as its metadata (atomic) + ``<dst>.json``."""
    return write_model(dst, Path(src).read_bytes(), info)


def adaptation_hash(info: ModelInfo, weights: bytes = b"") -> str:
    """8 hex digits of the SHA-1 of an adapted model's metadata (``info`` without its id: the head, temperature,
    stain mapping, what was done on which cells, ...) and of its network's ``weights`` when they changed. Each
    adaptation's model id carries it (``BASE+adapt-1a2b3c4d``), so two adapted models never share an id (analysis
    results, reports and case stores name the model by its id, and a resumed `wbc analyze` redoes a field made by
    another model), and the same adaptation (same cells, settings and seed, read from a folder of the same name)
    gives the same id: the folder's path is left out, its name is not (it names the lab's OOD reference,
    ``adapt:<folder name>``, in ``info.ood``)."""
    import hashlib

    adapt = info.extra.get("adapt") if isinstance(info.extra, dict) else None
    if isinstance(adapt, dict):  # the path the cells were read from is no part of the adaptation (:data:`UNHASHED`)
        adapt = {k: v for k, v in adapt.items() if k not in UNHASHED}
        unlabelled = (adapt.get("settings") or {}).get("unlabelled")
        if isinstance(unlabelled, dict):
            adapt["settings"] = {**adapt["settings"], "unlabelled": {k: v for k, v in unlabelled.items()
                                                                     if k not in UNHASHED}}
        if isinstance(adapt.get("settings"), dict) and "export" in adapt["settings"]:  # the cells' provenance: the
            # same cells and labels exported from another case or store give the same adaptation (since wbc 0.37.0;
            # the export folder's name still counts, as the OOD reference's name)
            adapt["settings"] = {k: v for k, v in adapt["settings"].items() if k != "export"}
        info = replace(info, extra={**info.extra, "adapt": adapt})
    digest = hashlib.sha1(replace(info, model_id="").to_json().encode())
    digest.update(weights)
    return digest.hexdigest()[:8]


#: Keys of ``extra["adapt"]`` (and of its ``settings["unlabelled"]``) that :func:`adaptation_hash` leaves out: the
#: paths the cells and weights were read from, which change nothing the model answers. Before wbc 0.34.0 ``--data``
#: was hashed as typed, so one folder named by a relative and by an absolute path gave two ids (and a resumed
#: `wbc analyze` redid every field).
UNHASHED = ("data", "checkpoint")


def base_record(clf: Classifier) -> dict[str, Any]:
    """What an adapted model keeps of the model it was adapted from (``extra["adapt"]["base"]``): its id, version,
    creation time and validation ``metrics``. The adapted model's own ``version`` and ``created`` stay the base's;
    its ``metrics`` are replaced (:func:`heldout_metrics`): before wbc 0.34.0 a model fine-tuned on 36 BCCD cells
    still stated the base's PBC validation accuracy, 0.990, where `wbc quantize` measured it at 0.629. Since wbc
    0.37.0 also ``kept_temperature``, :func:`kept_temperature`'s: the one a later adaptation keeps when this model's
    own temperature was fitted on held-out cells all right."""
    return {"model_id": clf.model_id, "version": clf.info.version, "created": clf.info.created,
            "metrics": copy.deepcopy(clf.info.metrics), "kept_temperature": kept_temperature(clf).value}


def unidentified_temperature(info: ModelInfo) -> bool:
    """Whether ``info``, an adapted model's, carries a temperature its held-out cells could not identify: fitted on
    cells all right (``heldout_acc_after`` 1.0 and no ``fitted_temperature``, as every such model made before wbc 0.37.0
    has; wbc 0.37.0 keeps its base's and records the fit), or at the fit's lower bound, whatever record it has."""
    from wbc.calibration import TEMPERATURE_BOUNDS

    record = info.extra.get("adapt")
    if not isinstance(record, dict) or record.get("fitted_temperature") is not None:
        return False
    return record.get("heldout_acc_after") == 1.0 or float(info.temperature) <= TEMPERATURE_BOUNDS[0] * 1.05


def kept_temperature(clf: Classifier) -> KeptTemperature:
    """The temperature `wbc adapt` keeps from ``clf``, the model adapted from, when the lab's held-out cells are all
    right and fit none (``wbc.calibration.calibrate``): ``clf``'s own, unless :func:`unidentified_temperature` (a lab
    model adapted by wbc 0.36.0 on cells all right: 0.05, every cell read ~1.000, wrong calls included, the defect
    the rule is there to avoid, kept again before this). Then the one its own base record keeps
    (``kept_temperature``, recorded since wbc 0.37.0), else the shipped model's; the words say which and why."""
    from wbc.calibration import TEMPERATURE_BOUNDS, KeptTemperature
    from wbc.model import load_model

    own = float(clf.info.temperature)
    if not unidentified_temperature(clf.info):
        return KeptTemperature(own)
    base = clf.info.extra["adapt"].get("base") or {}
    base_id = base.get("model_id")
    why = f"{clf.path.name}'s own, {own:.2f}, was fitted on held-out cells all right, which fit none either"
    recorded = base.get("kept_temperature")
    if isinstance(recorded, (int, float)) and recorded > TEMPERATURE_BOUNDS[0] * 1.05:
        return KeptTemperature(float(recorded), f"{base_id}'s",
                               f"{why}, and {base_id} is the model it was adapted from")
    shipped = load_model(None, threads=1).info
    other = bool(base_id) and base_id != shipped.model_id
    return KeptTemperature(float(shipped.temperature), "the shipped model's", why + (
        f" (to keep the temperature of {base_id}, which it was adapted from, adapt from that model instead)"
        if other else ""))


def no_ood_note(clf: Classifier) -> list[str]:
    """A note when the model to adapt, ``clf`` as loaded, carries no out-of-distribution statistics (a model straight
    from `wbc train`): the adapted model then has none either, which nothing said before wbc 0.36.0, and fitting them
    on it afterwards takes a run manifest's cells for its reference and flags the lab's own. Fitted on the run's model
    first, the adaptation adds the lab's cells as a reference (:func:`wbc.ood.add_reference`)."""
    if clf.info.ood.get("references"):
        return []
    adapt = clf.info.extra.get("adapt")
    if isinstance(adapt, dict):  # adapted already: `wbc ood fit` refuses it, its own base is the one to fit
        base = (adapt.get("base") or {}).get("model_id") or "the model it was adapted from"
        how = f"fit them on {base} (wbc ood fit --model BASE --manifest RUN/manifest.csv) and adapt from there again"
    else:
        beside = clf.path.parent / "manifest.csv"  # a run's model: its own manifest is there
        manifest = beside if beside.is_file() else "RUN/manifest.csv, its run's manifest"
        how = f"fit them on this model first (wbc ood fit --model {clf.path} --manifest {manifest}) and adapt again"
    return [f"{clf.path}: no out-of-distribution statistics, so the adapted model has none either and flags no cell as "
            f"unlike its training cells or this lab's; to have them, {how}"]


def heldout_metrics(res: AdaptResult) -> dict[str, Any]:
    """An adapted model's ``metrics`` (served by ``GET /model``): its held-out check on the lab's labelled cells, the
    only cells it was measured on."""
    return {"accuracy": res.heldout_acc_after, "n": res.heldout_n, "split": "adapt held-out",
            "cells": "the lab's labelled cells, each predicted by an adaptation that never saw it (wbc adapt's "
                     "held-out check); the base model's validation metrics are in extra.adapt.base"}


def carry_weights(src: str | os.PathLike[str], dst: str | os.PathLike[str], same_network: bool) -> None:
    """The PyTorch weights beside ``dst`` (``<dst>.pt``, what `wbc adapt --method finetune` starts from): the ones
    beside ``src`` when the adaptation left the network as it was (``same_network``) and ``src`` has them; else
    none, so that an earlier run's weights left beside ``dst`` are never taken for this model's."""
    from wbc.io import atomic_write_bytes

    weights, stale = beside_model(src, ".pt"), beside_model(dst, ".pt")  # through a link: beside its target
    if same_network and weights.is_file():
        atomic_write_bytes(stale, weights.read_bytes())
    else:
        stale.unlink(missing_ok=True)


#: The steps of a model id whose adaptation leaves the network as it was (`wbc adapt --stain` alone, `--no-labels`:
#: ``+stain-…``, ``+unlabelled-…``, ``+prior``, ``+framing-…``): :func:`carry_weights` gives their output the base's
#: ``.pt`` (``same_network``), so its weights' id is the base's.
SAME_NETWORK_STEPS = ("stain-", "unlabelled-", "prior", "framing-")


def weights_fit_model(weights_id: str, model_id: str) -> bool:
    """Whether PyTorch weights recorded as ``weights_id`` (a ``.pt``'s ``model_id``) are the network of the model
    ``model_id``: the same id, or the model is those weights' after steps that keep the network (quantised, ``-int8``:
    the shipped model's ``.pt`` is its float network's; :data:`SAME_NETWORK_STEPS`). Either id empty: nothing to
    compare. Before wbc 0.37.0 it was never compared, and a link's model fine-tuned another network's weights.

    >>> weights_fit_model("m", "m-int8+stain-1a2b"), weights_fit_model("m", "m+finetune-3c4d")
    (True, False)
    """
    if not weights_id or not model_id:
        return True
    w, m = (re.sub(r"-int8(?=\+|$)", "", i) for i in (weights_id, model_id))
    if m == w:
        return True
    return m.startswith(w + "+") and all(step.startswith(SAME_NETWORK_STEPS) for step in m[len(w) + 1:].split("+"))


def original_head(classifier: Classifier) -> tuple[np.ndarray, np.ndarray]:
    """The head in use: ``info.head`` when present, else the ONNX ``Gemm`` that maps embedding -> logits."""
    if classifier.info.head:
        return (np.asarray(classifier.info.head["weight"], np.float64),
                np.asarray(classifier.info.head["bias"], np.float64))
    onnx = _onnx()
    from onnx import numpy_helper

    graph = onnx.load(str(classifier.path)).graph
    inits = {i.name: i for i in graph.initializer}
    for node in graph.node:
        if "logits" in node.output and node.op_type == "Gemm" and node.input[0] == "embedding":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
            if not attrs.get("transB", 0):
                w = w.T
            b = numpy_helper.to_array(inits[node.input[2]]).astype(np.float64) if node.input[2:] else None
            alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
            return alpha * w, (beta * b if b is not None else np.zeros(w.shape[0]))
    raise ModelError(f"{classifier.path}: no linear head (Gemm embedding -> logits) found; "
                     "ensemble models cannot be adapted")


# --- the head fit --------------------------------------------------------------------------------


def fit_head(
    emb: np.ndarray, y: np.ndarray, w0: np.ndarray, b0: np.ndarray, lam: float,
    sample_weight: np.ndarray | None = None, max_iter: int = 200, trained: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted softmax cross-entropy + ``lam * ||W - W0||^2 + lam * 0.1 * ||b - b0||^2`` by L-BFGS.

    ``emb`` (N, D), ``y`` (N,) integer classes in ``range(C)``. ``trained`` (C,) bool: the classes the softmax is
    taken over (default all); the others' rows are left as ``w0``, ``b0`` and no cell pushes their logits down
    (for classes no cell is labelled as, :func:`absent_classes`; measured and not adopted by `wbc adapt`,
    ``benchmarks/absent_class.py``). Deterministic.
    """
    x = np.asarray(emb, np.float64)
    n, d = x.shape
    c = w0.shape[0]
    sw = np.ones(n) if sample_weight is None else np.asarray(sample_weight, np.float64)
    sw = sw / sw.sum()
    onehot = np.zeros((n, c))
    onehot[np.arange(n), y] = 1.0
    # out of the softmax: a logit so low its probability is 0 (finite: 0 * log p must stay 0 for the one-hot)
    off = np.zeros(c) if trained is None else np.where(np.asarray(trained, bool), 0.0, -1e30)

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w = theta[: c * d].reshape(c, d)
        b = theta[c * d :]
        z = x @ w.T + b + off
        z -= z.max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        dw_, db_ = w - w0, b - b0
        val = -(sw * (onehot * logp).sum(1)).sum() + lam * ((dw_**2).sum() + 0.1 * (db_**2).sum())
        g = (np.exp(logp) - onehot) * sw[:, None]
        gw = g.T @ x + 2 * lam * dw_
        gb = g.sum(0) + 0.2 * lam * db_
        return float(val), np.concatenate([gw.ravel(), gb])

    theta0 = np.concatenate([w0.ravel(), b0]).astype(np.float64)
    from scipy.optimize import minimize

    res = minimize(loss, theta0, jac=True, method="L-BFGS-B", options={"maxiter": max_iter})
    return res.x[: c * d].reshape(c, d), res.x[c * d :]


def stratified_folds(labels: Sequence[int] | np.ndarray, k: int, seed: int = 0,
                     groups: Sequence[Any] | None = None) -> np.ndarray:
    """Fold index per sample, classes spread evenly over folds (deterministic for a seed). ``groups``: a key per
    sample (:func:`content_keys`); samples with one key share a fold, so a copy of a labelled cell is never held out
    while the cell itself is learnt from, even a copy under another label (before wbc 0.32.0 copies were grouped
    within a class only; such a group is spread with the class of its first sample).

    By hand, not ``sklearn.model_selection.StratifiedKFold``: that refuses when every class has fewer cells
    than folds (4 cells of 4 classes, 2 folds), which few-shot adaptation must accept.

    >>> stratified_folds([0, 0, 0, 0], 2, groups=["a", "b", "a", "c"]).tolist()
    [1, 0, 1, 0]
    """
    lab = np.asarray(labels)
    rng = np.random.default_rng(seed)
    folds = np.zeros(len(lab), int)
    units: dict[Any, list[int]] = {}  # key -> its samples, in the order of their first sample
    for i in range(len(lab)):
        units.setdefault(i if groups is None else groups[i], []).append(i)
    offset = 0
    for c in np.unique(lab):
        parts = [u for u in units.values() if lab[u[0]] == c]
        for pos, u in enumerate(rng.permutation(len(parts))):
            folds[parts[u]] = (pos + offset) % k
        offset += len(parts)
    return folds


def content_keys(arrays: np.ndarray) -> list[str]:
    """A key per row of ``arrays`` (cells, embeddings) that equal rows share: a file's copies are one cell."""
    import hashlib

    return [hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest() for a in arrays]


def dihedral(cells: np.ndarray, views: int = 8) -> list[np.ndarray]:
    """The first ``views`` of the 8 flips/rotations of a batch of cells, identity first."""
    return [dihedral_view(cells, k) for k in range(views)]


def embed_tta(classifier: Classifier, cells: np.ndarray, views: int = 8, batch_size: int = 64) -> np.ndarray:
    """Embeddings (V, N, D) of the first ``views`` dihedral variants of each cell."""
    out = []
    for k in range(views):
        v = dihedral_view(cells, k)
        out.append(np.concatenate([classifier.run(v[i : i + batch_size], ("embedding",))["embedding"]
                                   for i in range(0, len(v), batch_size)]))
    return np.stack(out)


@dataclass
class AdaptResult:
    """What adaptation did and how well it checks out on held-out (out-of-fold) cells."""

    n_cells: int
    counts: dict[str, int]
    lam: float | None  # the head refit's regularisation (None for fine-tuning)
    folds: int
    heldout_acc_before: float
    heldout_acc_after: float
    temperature: float
    review_threshold: float
    seconds: float = 0.0
    cv: dict[str, float] = field(default_factory=dict)  # lam -> out-of-fold accuracy
    output: str = ""
    skipped: list[str] = field(default_factory=list)  # files that could not be read
    method: str = "head"  # "head" (last layer refit) or "finetune" (every weight)
    heldout_n: int = 0  # cells behind heldout_acc_* (all of them for the head's cross-validation)
    settings: dict[str, Any] = field(default_factory=dict)  # the fine-tuning recipe
    #: the review target, and the highest one the held-out cells show (``wbc.calibration.shown_accuracy``)
    review_target_accuracy: float | None = None
    shown_accuracy: float | None = None
    notes: list[str] = field(default_factory=list)  # warnings about the labels (:func:`relabelled_copies`)
    absent: list[str] = field(default_factory=list)  # classes no labelled cell is of (:func:`absent_classes`)
    #: the temperature the held-out cells fitted when ``temperature`` is not it, and why (one line): cells all right
    #: fit none, and the base model's is kept (``wbc.calibration.calibrate``'s ``base_temperature``)
    fitted_temperature: float | None = None
    temperature_note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@one_blas_thread()  # L-BFGS's many small products: BLAS threads spinning made 30 cells take 146 s, not 20 s
def adapt_embeddings(
    emb_views: np.ndarray, labels: Sequence[str], classes: Sequence[str], w0: np.ndarray, b0: np.ndarray,
    lambdas: Sequence[float] = LAMBDAS, folds: int = 5, seed: int = 0,
    review_target_accuracy: float | None = None, tta_views: int = 1, kept: Sequence[str] = (),
    before_logits: np.ndarray | None = None, base_temperature: float | KeptTemperature | None = None,
) -> tuple[np.ndarray, np.ndarray, AdaptResult]:
    """The whole fit on precomputed embeddings (V views, N cells, D): choose ``lam``, check, refit on all.

    ``tta_views``: the adapted model answers with the mean logits of that many views, so the out-of-fold check,
    ``lam``'s choice and the calibration score the mean of the first ``tta_views`` views (the head is linear:
    the mean of their embeddings); the original head's accuracy ("before") is scored on the same mean, so the
    check credits the adaptation with its own gain only (before wbc 0.32.0 "before" saw one view, and the gain of
    averaging rotations, which the original model gets from ``--tta`` too, was counted as the adaptation's).
    ``before_logits`` (N, C): the original model's logits as it answers the cells, when they are not the original
    head on ``emb_views`` (``wbc adapt --stain`` embeds through the new mapping). ``kept``: classes left out of the
    softmax (:func:`fit_head`'s ``trained``). Pure numpy + scipy, so benchmarks can run many random draws cheaply.
    """
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.utils.class_weight import compute_class_weight

    from wbc.calibration import calibrate

    v, n, _ = emb_views.shape
    cls_index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({lab for lab in labels if lab not in cls_index})
    if unknown:
        raise WbcError(f"labels not among the model's classes {list(classes)}: {unknown}")
    y = np.array([cls_index[lab] for lab in labels])
    present, counts = np.unique(y, return_counts=True)
    k = int(max(2, min(folds, n // 2)))
    fold = stratified_folds(y, k, seed, content_keys(emb_views[0]))  # a cell's copies: one fold
    # class-balanced weights: a lab's rare classes (basophils) count as much as its common ones
    weights = compute_class_weight("balanced", classes=present, y=y)[np.searchsorted(present, y)]

    # ``kept``: classes no cell is labelled as, left out of the softmax (a labelled class is always trained)
    trained = np.array([c not in kept or i in present for i, c in enumerate(classes)]) if kept else None

    def fit(idx: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
        xs = emb_views[:, idx].reshape(-1, emb_views.shape[2])
        return fit_head(xs, np.tile(y[idx], v), w0, b0, lam, np.tile(weights[idx], v), trained=trained)

    scored = emb_views[: max(1, min(tta_views, v))].mean(0)  # what the adapted model will see of each cell
    oof: dict[float, np.ndarray] = {}
    for lam in lambdas:
        logits = np.zeros((n, len(classes)))
        for f in range(k):
            tr, te = fold != f, fold == f
            if not te.any() or not tr.any():
                continue
            w, b = fit(np.nonzero(tr)[0], lam)
            logits[te] = scored[te] @ w.T + b
        oof[lam] = logits
    cv = {lam: float((oof[lam].argmax(1) == y).mean()) for lam in lambdas}
    # balanced accuracy (mean recall over the classes present) picks lam (ties -> the larger, more
    # conservative lam); predictions of classes absent from the labels are simply wrong, not warned about
    def bal(lg: np.ndarray) -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return float(balanced_accuracy_score(y, lg.argmax(1)))

    best = max(lambdas, key=lambda lam: (round(bal(oof[lam]), 6), lam))
    # the original model as it answers these cells (default: its head on what the adapted one is scored on)
    before = scored @ w0.T + b0 if before_logits is None else np.asarray(before_logits)
    # the threshold these few cells show; the base model's temperature where they are all right (they fit none)
    cal = calibrate(oof[best], y, review_target_accuracy, evidence=True, base_temperature=base_temperature)
    w, b = fit(np.arange(n), best)
    res = AdaptResult(
        n_cells=n, counts={classes[c]: int(m) for c, m in zip(present, counts, strict=True)}, lam=best,
        folds=k, heldout_acc_before=float((before.argmax(1) == y).mean()),
        heldout_acc_after=cv[best], temperature=cal.temperature, review_threshold=cal.review_threshold,
        shown_accuracy=cal.shown_accuracy, review_target_accuracy=cal.review_target_accuracy,
        cv={str(lam): acc for lam, acc in cv.items()}, heldout_n=n, settings={"tta_views": tta_views},
        fitted_temperature=cal.fitted_temperature, temperature_note=cal.temperature_note,
    )
    return w, b, res


def load_labelled_cells(
    data: str | os.PathLike[str], size: int, mapping: dict[str, str] | None = None, reframe: Any = False,
    classes: Sequence[str] | None = None,
) -> tuple[np.ndarray, list[str], list[str], list[str]]:
    """Cells (N, S, S, 3), labels, file names, and messages for files that could not be read or have no label
    (skipped).

    ``reframe``: as :func:`wbc.classify.load_cells` (the model's framing, so the cells are prepared exactly as
    `wbc classify` will prepare the lab's cells). ``classes``: the model's classes; given, what `wbc adapt` needs is
    checked, each a one-line :class:`WbcError` naming ``data``: every label one of ``classes`` and at least
    :data:`MIN_LABELLED_CLASSES` of them, before any image is read; at least :data:`MIN_LABELLED_CELLS` readable
    cells of as many classes after, with the files that could not be read named (the run stops before the command
    could list them)."""
    from wbc.classify import load_cells
    from wbc.data import UNKNOWN_FOLDER, load_dataset

    dataset = load_dataset(data, mapping=mapping)
    found = dataset.samples
    samples = [s for s in found if s.label.strip()]  # a manifest's rows not labelled yet (`wbc pick-cells`)
    if not samples:
        raise WbcError(f"{data}: no labelled images" + (" (fill in the label column)" if found else ""))
    strays = [f"{path}: {why}" + (f" (--map {Path(path).name}=CLASS names its class)" if why == UNKNOWN_FOLDER
                                  else "") for path, why in dataset.skipped]
    if classes is not None:
        unknown = sorted({s.label for s in samples} - set(classes))
        if unknown:
            first = next(s.path for s in samples if s.label == unknown[0])
            raise WbcError(f"{data}: labels not among the model's classes {list(classes)}: {unknown} (the first "
                           f"{unknown[0]!r} is {first}); rename them with --map {unknown[0]}=CLASS")
        if len(samples) < MIN_LABELLED_CELLS:  # "label more" first: a `wbc cases export` of a case or two
            raise too_few_labelled(data, len(samples))
        if len({s.label for s in samples}) < MIN_LABELLED_CLASSES:
            raise too_few_classes(data, [s.label for s in samples], strays, what="left out")
    cells, ok, errors = load_cells([s.path for s in samples], size, reframe=reframe)
    labels = [samples[i].label for i in ok]
    if classes is not None:
        unread = [msg for _, msg in errors]
        if len(cells) < MIN_LABELLED_CELLS:
            raise too_few_labelled(data, len(cells), unread)
        if len(set(labels)) < MIN_LABELLED_CLASSES:
            raise too_few_classes(data, labels, unread)
    gaps = len(found) - len(samples)
    unlabelled = [f"{data}: {gaps} of {len(found)} rows have no label"] if gaps else []
    return (cells, labels, [str(samples[i].path) for i in ok], strays + unlabelled + [msg for _, msg in errors])


def absent_classes(classes: Sequence[str], labels: Sequence[str]) -> list[str]:
    """The classes of a white-cell differential the model names (the five-part ones it has, else every class but
    platelets) that no labelled cell is of: the adaptation learns that the lab's cells are the classes it was shown
    and names these less (:func:`absent_note`).

    >>> absent_classes(["basophil", "lymphocyte", "monocyte", "neutrophil", "platelet"], ["neutrophil", "lymphocyte"])
    ['basophil', 'monocyte']
    """
    from wbc.labels import NOT_IN_SMEAR_DETECTIONS, WBC5

    counted = [c for c in classes if c in WBC5] or [c for c in classes if c not in NOT_IN_SMEAR_DETECTIONS]
    shown = set(labels)
    return [c for c in counted if c not in shown]


def absent_note(absent: Sequence[str]) -> str:
    """The warning for classes no labelled cell is of (:func:`absent_classes`); before wbc 0.34.0 nothing was said,
    and a lab whose 80 cells held no monocyte got a model that named none of 12 other BCCD monocytes monocyte. The
    numbers: ``benchmarks/absent_class.py`` (docs/generalisation.md)."""
    them = "them" if len(absent) > 1 else "it"
    return (f"no labelled cell of {', '.join(absent)}: the adapted model will name {them} far less often than the "
            "original (BCCD: classes left out of 50 labelled cells went from 72-75 % of their cells named right to "
            "21 % with --method head and 3 % fine-tuned); label a few cells of every class the lab counts "
            "(`wbc pick-cells` chooses cells of every kind in a folder) and adapt again")


def use_recorded_calls(res: AdaptResult, calls: RecordedCalls | None, labels: Sequence[str],
                       held: np.ndarray | None = None) -> None:
    """Score "before" as the lab's cells were answered (:func:`recorded_calls`) where the export recorded it: the
    calls' accuracy on the held-out cells (``held``, a mask; default all) replaces the original model's on the
    crops, which is kept as ``settings["before"]["original_on_crops"]``, with the calls per model (``by_model``: an
    export of cases analysed by two models mixes their calls). The export's provenance
    (:meth:`wbc.data.RecordedCalls.provenance`: manifest SHA-1, cases, stores, label sources, models) goes to
    ``settings["export"]``, so to the adapted model's ``extra["adapt"]`` and ``--report``."""
    if calls is None:
        return
    right = np.asarray(calls.labels) == np.asarray(labels)
    by_model = calls.by_model()
    if held is not None:
        right = right[held]
        by_model = dict(Counter(m for m, h in zip(calls.model_ids, held, strict=True) if h).most_common())
    res.settings["before"] = {"from": "the calls recorded in the cases (manifest.csv's model_label)",
                              "model_id": calls.model_id, "by_model": by_model,
                              "original_on_crops": res.heldout_acc_before}
    # where the labels came from (since wbc 0.37.0: before, only the export's folder, which the next export replaces)
    res.settings["export"] = calls.provenance()
    res.heldout_acc_before = float(right.mean())


def relabelled_copies(cells: np.ndarray, labels: Sequence[str], files: Sequence[str]) -> list[str]:
    """A line for each image labelled as two classes (the same pixels under two labels: a cell copied into two
    folders), which no held-out check can score right; before wbc 0.32.0 nothing said so.

    >>> a, b = np.zeros((1, 2, 2, 3), np.uint8), np.ones((1, 2, 2, 3), np.uint8)
    >>> relabelled_copies(np.concatenate([a, b, a]), ["neutrophil", "neutrophil", "lymphocyte"], ["x", "y", "z"])
    ['x and z are the same image, labelled neutrophil and lymphocyte']
    """
    seen: dict[str, list[int]] = {}
    for i, key in enumerate(content_keys(cells)):
        seen.setdefault(key, []).append(i)
    out = []
    for members in seen.values():
        named = list(dict.fromkeys(labels[i] for i in members))
        if len(named) > 1:
            firsts = [next(i for i in members if labels[i] == lab) for lab in named]
            out.append(f"{' and '.join(files[i] for i in firsts)} are the same image, labelled {' and '.join(named)}")
    return out


def _check_output(output: str | os.PathLike[str], clf: Classifier) -> Path:
    """``output`` as a path, or a one-line refusal before any work: the model itself, no ``.onnx``, an ``OUTPUT.pt``
    that is a folder, or one that is no earlier adapted model's weights. Every adaptation replaces or removes the
    ``.pt`` beside its output (:func:`carry_weights`); one without its ``.onnx`` beside it is another program's (a
    training run holds ``model.onnx``, ``best.pt`` and ``last.pt``), and before wbc 0.32.0 ``--output RUN/best.onnx``
    deleted the run's ``best.pt``."""
    out = Path(output)
    if out.resolve() == clf.path.resolve():
        raise WbcError(f"{out}: --output must differ from --model (the original is kept)")
    if out.suffix.lower() != ".onnx":
        raise WbcError(f"{out}: --output must be an .onnx file")
    weights = beside_model(out, ".pt")
    if weights.is_dir():  # before wbc 0.34.0 a traceback once the new .onnx and .json were written
        raise WbcError(f"{weights}: is a folder where the adapted model's weights go (beside {out.name}): move it or "
                       "choose another --output")
    if weights.exists() and not out.exists():
        raise WbcError(f"{weights}: exists with no {out.name} beside it, so it is not an earlier adapted model's "
                       f"weights (a training run's checkpoint?), and --output {out.name} would replace it: choose "
                       "another --output")
    return out


def unlabelled_image_paths(data: str | os.PathLike[str]) -> list[Path]:
    """The image files of ``data``, a folder (or file) of a lab's unlabelled cells (``--no-labels``); a manifest CSV
    or a folder without one image is refused with what it is, rather than as "got 0" readable cells."""
    from wbc.io import iter_image_paths, no_images_message

    if Path(data).suffix.lower() == ".csv" and Path(data).is_file():
        raise WbcError(f"{data}: --no-labels takes a folder of the lab's cell images; a manifest CSV (path,label) is "
                       "for labelled cells (wbc adapt without --no-labels)")
    found = list(iter_image_paths([data]))
    if not found:
        raise WbcError(no_images_message([data]))
    return found


def too_few_cells(data: object, need: int, got: int, errors: Sequence[tuple[Any, str]]) -> WbcError:
    """The error for ``data`` holding fewer than ``need`` readable cell images, with how many were refused and the
    first one's reason (``errors``: (file, message)), which a run that stops here never reported."""
    why = f"; {len(errors)} refused, the first: {errors[0][1]}" if errors else ""
    return WbcError(f"{data}: need at least {need} readable cell images, got {got}{why}")


def few_cells_warning(data: str | os.PathLike[str], mapping: dict[str, str] | None = None) -> str | None:
    """A one-line warning, before any training, when ``data`` holds fewer labelled cells than
    :data:`MIN_CELLS_ADVISED` (counted from the folder or manifest, no image read); None otherwise, or when ``data``
    cannot be read (the adaptation says why)."""
    from wbc.data import load_dataset

    try:
        n = sum(1 for s in load_dataset(data, mapping=mapping).samples if s.label.strip())
    except (WbcError, OSError, ValueError):
        return None
    if n >= MIN_CELLS_ADVISED:
        return None
    return (f"{data}: {n} labelled cells, fewer than the {MIN_CELLS_ADVISED}-100 the adaptation is made for: its "
            "held-out check rests on a handful of cells and the adapted model may do worse; label more if you can")


def stain_spec(clf: Classifier, stain: str, cells: Sequence[np.ndarray] | np.ndarray) -> dict[str, Any]:
    """The fixed transform from these cells' pooled colours to ``clf``'s training colours."""
    from wbc.stain import METHODS, fit_stain_stats

    if stain not in METHODS:
        raise WbcError(f"--stain {stain!r}: not a stain normalisation method ({', '.join(METHODS)})")
    ref = clf.info.colour_reference.get(stain)
    if not ref:
        raise WbcError(f"{clf.path}: no training colour statistics in the model; run "
                       "`wbc ood fit --model M --manifest RUN/manifest.csv` first")
    return {"method": stain, "target": ref, "source": fit_stain_stats(list(cells), stain)}


def adapt_model(
    model: str | os.PathLike[str] | None, data: str | os.PathLike[str], output: str | os.PathLike[str],
    stain: str | None = None, views: int = 8, seed: int = 0, threads: int = 2,
    mapping: dict[str, str] | None = None, review_target_accuracy: float | None = None,
    tta: int = ADAPTED_TTA_VIEWS,
) -> AdaptResult:
    """Adapt ``model`` to the labelled cells in ``data`` and write the adapted copy to ``output``.

    ``stain``: None keeps the model's stain normalisation as it is; ``"none"`` removes it; a method name
    maps this lab's pooled colours onto the training colours (a fixed transform stored in the model).
    ``views``: flips/rotations of each labelled cell the head is fitted on; ``tta``: flips/rotations the
    adapted model averages per cell (``extra["tta_views"]``; the check and calibration score the same).
    """
    from wbc.calibration import resolve_review_target
    from wbc.model import load_model
    from wbc.ood import add_reference
    from wbc.reframe import framing_stats_of

    tta = checked_tta_views(tta)
    t0 = time.perf_counter()
    clf = load_model(model, threads=threads)
    out = _check_output(output, clf)
    base, no_ood = base_record(clf), no_ood_note(clf)  # of the model as given
    base_t = kept_temperature(clf)  # kept when the held-out cells are all right (calibrate)
    info = without_lab_prior(clf.info)  # labelled cells refit the probabilities: a label-free estimate is dropped
    cells, labels, files, skipped = load_labelled_cells(data, info.input_size, mapping, framing_stats_of(clf),
                                                        classes=clf.classes)
    w0, b0 = original_head(clf)
    before = None
    if stain is not None:  # "before" is the original model as it is, whatever mapping the output stores (wbc 0.34.0)
        before = embed_tta(clf, cells, views=tta).mean(0) @ w0.T + b0
    if stain not in (None, "none"):
        info.preprocessing = replace(info.preprocessing, stain=stain_spec(clf, stain, cells))
    elif stain == "none":
        info.preprocessing = replace(info.preprocessing, stain=None)
    clf.info = info  # embed through the (possibly stain-normalised) preprocessing the output will use
    emb = embed_tta(clf, cells, views=views)
    target = resolve_review_target(review_target_accuracy, info.review_target_accuracy)
    absent = absent_classes(clf.classes, labels)
    w, b, res = adapt_embeddings(emb, labels, clf.classes, w0, b0, seed=seed, review_target_accuracy=target,
                                 tta_views=tta, before_logits=before, base_temperature=base_t)
    use_recorded_calls(res, recorded_calls(data, files), labels)
    res.absent = absent
    res.skipped = skipped
    info.head = {"weight": w.astype(np.float32).tolist(), "bias": b.astype(np.float32).tolist()}
    info.temperature = res.temperature
    info.review_threshold, info.review_target_accuracy = res.review_threshold, target
    info.extra["tta_views"] = tta  # wbc classify / analyze / serve average each cell over this many views
    # no file paths of the run (the skipped files' messages): the same cells from another folder, the same model
    info.extra["adapt"] = {k: v for k, v in res.to_dict().items()
                           if k not in ("output", "seconds", "notes", "skipped")}
    info.extra["adapt"].update(data=str(Path(data).resolve()), base=base,
                               stain=(info.preprocessing.stain or {}).get("method", "none"),
                               notes=[absent_note(absent)] if absent else [])
    info.metrics = heldout_metrics(res)
    if info.ood.get("references"):
        name = f"adapt:{Path(data).resolve().name}"
        info.ood = add_reference(info.ood, cells, emb[0], labels, clf.classes, name=name)
    info.model_id = f"{clf.model_id}+adapt-{adaptation_hash(info)}"
    write_model_copy(clf.path, out, info)
    carry_weights(clf.path, out, same_network=False)  # the head changed: the .pt's would be another model's
    res.output = str(out)
    res.notes = ([absent_note(absent)] if absent else []) + relabelled_copies(cells, labels, files) + no_ood
    res.seconds = time.perf_counter() - t0
    return res


def adapt_stain(
    model: str | os.PathLike[str] | None, data: str | os.PathLike[str], output: str | os.PathLike[str],
    stain: str = "reinhard", threads: int = 2,
) -> dict[str, Any]:
    """Label-free adaptation: map a lab's pooled colours onto the training colours, nothing else.

    ``data``: any folder (or files) of the new lab's single-cell images, no labels needed. The fitted
    transform is one per lab (pooled over all its cells), so a cell's colours do not depend on what else
    its crop holds; it is stored as ``preprocessing.stain`` and applied by :meth:`wbc.model.Classifier.run`.
    The head, calibration and OOD statistics are untouched: without labels nothing can be re-validated,
    so such cells keep their out-of-distribution flag.
    """
    from wbc.classify import load_cells
    from wbc.model import load_model
    from wbc.reframe import framing_stats_of

    t0 = time.perf_counter()
    clf = load_model(model, threads=threads)
    out = _check_output(output, clf)
    # the colours are fitted on the cells as `wbc classify` will map them: re-framed as the model frames them
    cells, _, errors = load_cells(unlabelled_image_paths(data), clf.info.input_size, threads,
                                  reframe=framing_stats_of(clf))
    skipped = [msg for _, msg in errors]
    if len(cells) < 4:
        raise too_few_cells(data, 4, len(cells), errors)
    info = without_lab_prior(clf.info)  # another lab's class frequencies do not carry over to this one
    info.preprocessing = replace(info.preprocessing, stain=stain_spec(clf, stain, cells))
    info.extra["adapt"] = {"kind": "stain only, no labels", "stain": stain, "n_cells": len(cells),
                           "data": str(Path(data).resolve()), "base": base_record(clf)}
    info.metrics = {}  # nothing was measured on the lab's cells: the base's validation metrics describe another input
    info.model_id = f"{clf.model_id}+stain-{adaptation_hash(info)}"
    write_model_copy(clf.path, out, info)
    carry_weights(clf.path, out, same_network=True)
    return {"output": str(out), "n_cells": len(cells), "skipped": skipped, "stain": stain,
            "seconds": time.perf_counter() - t0}
