"""Few-shot fine-tuning of a whole network on a new lab's cells (the torch half of ``wbc adapt``).

:func:`adapt_finetune` is ``wbc adapt --method finetune`` (the default); :func:`finetune` is its core.

A new lab's stain and optics change the *input*, so refitting only the last layer (``wbc adapt --method
head``) leaves the early filters looking at colours and textures they were never trained on. Updating
every weight on the lab's ~100 cells moves those filters too. Three choices keep that from overfitting a
hundred cells:

- BatchNorm layers stay in inference mode: their running statistics come from ~8,000 training cells and
  are not re-estimated from mini-batches of 16 (on BCCD at lr 3e-4: 0.856 with them updated, 0.882 frozen);
- each cell is seen in a random flip/90-degree rotation (cells have no up);
- a one-cycle schedule with label smoothing, starting from the trained weights: 60 epochs over the labelled
  cells (360 steps for 100 cells). Chosen on 3 draws of 100 BCCD train/val cells, the other 177 scored, mean of 4
  rotations (``benchmarks/semi_finetune.py --epochs E``): 30 epochs 0.865, **60 0.883** (every draw up), 100
  0.885 (not worth 1.7x the time); at 30 epochs lr 3e-4 0.883, no label smoothing 0.881, 60 epochs at 5e-4 0.878.

Measured on 100 labelled BCCD cells (3 random draws, the other 241 as test; docs/generalisation.md):
head refit 0.819, this 0.881 (30 epochs).

The lab's *unlabelled* cells can join in (``unlabelled``; ``wbc adapt --unlabelled FOLDER``): each step a batch
of them is named by the network on a flip/rotation and, where it is at least ``unlabelled_threshold``
confident, the network learns to give a strongly augmented copy the same answer (FixMatch, as the shipped
model's own training did with another lab's cells, :mod:`wbc.train.unlabelled`). A hundred labels then
constrain a network that also sees the lab's whole range of cells.
"""

from __future__ import annotations

import copy
import io
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from wbc.errors import WbcError
from wbc.model import (
    ADAPTED_TTA_VIEWS,
    ModelInfo,
    beside_model,
    checked_tta_views,
    checkpoint_info,
    without_lab_prior,
)
from wbc.train.loop import predict_embeddings, predict_logits, pseudo_labels
from wbc.train.models import Ensemble, WbcNet, create_model
from wbc.train.transforms import cells_to_batch, normalise

if TYPE_CHECKING:
    from wbc.adapt import AdaptResult

#: Fine-tuning returns the kind of network it is given (a WbcNet or an Ensemble).
NetT = TypeVar("NetT", bound=torch.nn.Module)

#: The recipe measured in the module docstring; every value is a keyword of :func:`finetune`.
DEFAULTS: dict[str, Any] = {"epochs": 60, "lr": 1e-3, "batch_size": 16, "weight_decay": 0.01,
                            "label_smoothing": 0.1, "unlabelled_weight": 1.0, "unlabelled_threshold": 0.9}


def strong_augment(info: ModelInfo) -> Callable[[torch.Tensor], torch.Tensor]:
    """The strong view for the unlabelled cells' consistency term: the augmentation the network was trained
    with (its training config travels in the model's metadata), or :class:`wbc.config.TrainConfig`'s
    defaults for a model without one."""
    from wbc.config import TrainConfig
    from wbc.train.transforms import build_augment

    cfg = TrainConfig()
    saved = info.extra.get("config", {}) if isinstance(info.extra, dict) else {}
    known = {k: v for k, v in saved.items() if k in TrainConfig.__dataclass_fields__ and not k.startswith("unlab")}
    try:
        cfg = cfg.updated(known)
    except WbcError:  # an older model's config that today's TrainConfig no longer accepts: use the defaults
        cfg = TrainConfig()
    return build_augment(cfg)


def load_weights(path: str | os.PathLike[str]) -> tuple[WbcNet | Ensemble, ModelInfo]:
    """The network and its metadata from a ``best.pt`` checkpoint, the shipped ``.pt`` weights, or an
    ensemble's (``ensemble.pt``, or what ``wbc adapt --members K`` writes): then an :class:`Ensemble`.

    Half-precision state dicts (the shipped weights) load into the float32 network unchanged.
    """
    p = Path(path)
    if not p.is_file():
        raise WbcError(f"{p}: PyTorch weights not found (fine-tuning needs the network's weights: pass "
                       "--checkpoint RUN/best.pt, or use --method head)")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=False)
        info = checkpoint_info(ckpt, p)
        nets = []
        for state in ckpt["members"] if "members" in ckpt else [ckpt["model"]]:
            one = create_model(ckpt["arch"], len(info.classes), pretrained=False, dropout=ckpt.get("dropout", 0.0))
            one.load_state_dict({k: v.float() for k, v in state.items()})
            nets.append(one)
        net = Ensemble(nets) if "members" in ckpt else nets[0]
    except WbcError:
        raise
    except Exception as exc:  # a truncated file, another program's pickle, a state dict that does not fit
        raise WbcError(f"{p}: not a wbc checkpoint ({type(exc).__name__}: {exc})") from None
    return net.eval(), info


def default_weights(model: Path, model_id: str | None = None) -> Path:
    """The weights `wbc adapt --method finetune` starts from without ``--checkpoint``: the ``.pt`` beside the model
    (beside the file a link points to: :func:`wbc.model.beside_model`, where wbc writes them), else, for a run's
    ``model.onnx`` (``config.json`` beside it), the run's ``best.pt`` (``ensemble.pt``) it was exported from: before
    wbc 0.36.0 a run's own model was refused for want of ``RUN/model.pt``, though the help named ``RUN/best.pt`` as
    the default.

    ``model_id`` (the model's recorded id): the weights must be its network's (:func:`wbc.adapt.weights_fit_model`).
    Where those beside a link's target are another model's, the ``.pt`` beside the link is taken if it is the model's
    (where wbc 0.36.0 wrote a linked model's tuned weights), also where the target has none (a link's first fine-tune
    by wbc 0.36.0); if neither is, it is refused in one line naming both.
    Before wbc 0.37.0 the ids were never compared, and such a model was fine-tuned from the earlier network."""
    from wbc.adapt import weights_fit_model
    from wbc.io import output_target
    from wbc.paths import checkpoint_file

    target = output_target(model)[0]  # a link's file: where wbc wrote the model and the weights beside it
    found = beside = beside_model(target, ".pt")
    if not beside.is_file() and target.name == "model.onnx" and (target.parent / "config.json").is_file():
        run_ckpt = checkpoint_file(target.parent)
        found = run_ckpt if run_ckpt.is_file() else beside
    if model_id is None:
        return found
    link = Path(model)
    by_link = link.with_suffix(".pt") if link.suffix.lower() == ".onnx" else link.with_name(link.name + ".pt")
    candidates = [p for p in (found, by_link) if p.is_file()]
    if len(candidates) == 2 and by_link.resolve() == found.resolve():
        candidates = [found]
    if not candidates:  # load_weights says "not found", naming the file wbc writes
        return found
    others: list[str] = []
    for p in candidates:
        weights_id = weights_model_id(p)
        if weights_id is None or weights_fit_model(weights_id, model_id):  # unreadable: load_weights says why
            return p
        others.append(f"{p} holds {weights_id}")
    raise WbcError(f"{'; '.join(others)}, not {model}'s {model_id}: give --checkpoint with its own weights (or use "
                   "--method head)")


def weights_model_id(path: Path) -> str | None:
    """The ``model_id`` the weights at ``path`` record ("" for none), or None when they cannot be read."""
    try:
        return checkpoint_info(torch.load(path, map_location="cpu", weights_only=False), path).model_id
    except Exception:  # load_weights reads them again and says what is wrong
        return None


def _arch(net: WbcNet | Ensemble) -> str:
    """The registry name of a network, or of an ensemble's members."""
    return str(net.members[0].arch if isinstance(net, Ensemble) else net.arch)


def save_weights(
    net: WbcNet | Ensemble, arch: str, info: ModelInfo, path: str | os.PathLike[str], half: bool = True
) -> Path:
    """Write the weights as :func:`load_weights` reads them (float16 by default: half the bytes)."""
    from wbc.io import atomic_write_bytes

    def state(m: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {k: (v.half() if half and v.is_floating_point() else v) for k, v in m.state_dict().items()}

    weights = {"members": [state(m) for m in net.members]} if isinstance(net, Ensemble) else {"model": state(net)}
    buf = io.BytesIO()
    torch.save({**weights, "arch": arch, "dropout": 0.0, "info": info.to_json()}, buf)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def blend_weights(original: NetT, tuned: NetT, share: float) -> NetT:
    """A copy of ``tuned`` whose float weights are ``share`` of its own and ``1 - share`` of ``original``'s (the
    network it was fine-tuned from; WiSE-FT, Wortsman et al. 2022); ``share`` 1 returns ``tuned`` itself.

    >>> a, b = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    >>> _ = torch.nn.init.zeros_(a.weight), torch.nn.init.ones_(b.weight)
    >>> blend_weights(a, b, 0.25).weight.tolist()
    [[0.25, 0.25]]
    """
    if share >= 1.0:
        return tuned
    out = copy.deepcopy(tuned)
    base = original.state_dict()
    out.load_state_dict({k: (share * v + (1.0 - share) * base[k]) if v.is_floating_point() else v
                         for k, v in tuned.state_dict().items()})
    return out.eval()


def mean_view_logits(net: torch.nn.Module, cells: np.ndarray, mean: Sequence[float], std: Sequence[float],
                     views: int = 1) -> np.ndarray:
    """Logits (N, C) averaged over the first ``views`` flips/rotations of each cell, as
    :func:`wbc.classify.run_views` averages them at inference."""
    from wbc.preprocess import dihedral_view

    return np.mean([predict_logits(net, dihedral_view(cells, k), mean, std) for k in range(max(1, views))], axis=0)


def finetune_members(
    net: WbcNet | Ensemble, cells: np.ndarray, labels: Sequence[int] | np.ndarray, mean: Sequence[float],
    std: Sequence[float], members: int = 1, seed: int = 0, **kwargs: Any,
) -> WbcNet | Ensemble:
    """:func:`finetune` ``members`` times (seeds ``seed``, ``seed + 1``, ...); more than one gives their
    mean-probability :class:`Ensemble` (what ``wbc adapt --members K`` ships)."""
    nets = [finetune(net, cells, labels, mean, std, seed=seed + m, **kwargs) for m in range(members)]
    return Ensemble(nets).eval() if members > 1 else nets[0]


def _dihedral(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Each image of the batch in a random one of its 8 flips/rotations."""
    out = torch.empty_like(x)
    codes = torch.randint(0, 8, (len(x),), generator=gen)
    for i, c in enumerate(codes.tolist()):
        img = torch.rot90(x[i], c % 4, (1, 2))
        out[i] = torch.flip(img, (2,)) if c >= 4 else img
    return out


def finetune(
    net: NetT, cells: np.ndarray, labels: Sequence[int] | np.ndarray, mean: Sequence[float], std: Sequence[float],
    epochs: int = DEFAULTS["epochs"], lr: float = DEFAULTS["lr"], batch_size: int = DEFAULTS["batch_size"],
    weight_decay: float = DEFAULTS["weight_decay"], label_smoothing: float = DEFAULTS["label_smoothing"],
    seed: int = 0, progress: Callable[[int, int], None] | None = None, unlabelled: np.ndarray | None = None,
    unlabelled_weight: float = DEFAULTS["unlabelled_weight"],
    unlabelled_threshold: float = DEFAULTS["unlabelled_threshold"],
    strong: Callable[[torch.Tensor], torch.Tensor] | None = None,
    frozen: Sequence[str] = (),
    trained: Sequence[int] | None = None,
) -> NetT:
    """A fine-tuned copy of ``net`` (the original is untouched).

    ``cells``: uint8 (N, S, S, 3) exactly as inference preprocesses them (stain normalisation included);
    ``labels``: class indices of ``net``'s head. ``progress(step, total)`` is called after each step.
    ``unlabelled``: the lab's cells without labels, prepared like ``cells``; each step adds ``batch_size`` of
    them in a consistency term (module docstring) weighted ``unlabelled_weight``, their strong view made by
    ``strong`` (required with them; :func:`strong_augment` gives the network's training augmentation).
    ``frozen``: prefixes of parameter names (``"backbone.conv_stem"``, ``"backbone.blocks.0"``) kept as they are.
    ``trained``: the classes (indices) the labelled cells' softmax is taken over (default all): the others' logits
    are not pushed down by cells that are never of them (for classes no cell is labelled as,
    :func:`wbc.adapt.absent_classes`; measured and not adopted by `wbc adapt`, ``benchmarks/absent_class.py``).
    """
    if len(cells) != len(labels) or len(cells) < 2:
        raise WbcError(f"fine-tuning needs at least 2 labelled cells, got {len(cells)}")
    use_unlabelled = unlabelled is not None and len(unlabelled) > 0 and unlabelled_weight > 0
    if use_unlabelled and strong is None:
        raise WbcError("fine-tuning with unlabelled cells needs their strong augmentation (strong=...)")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = copy.deepcopy(net)
    model.eval()  # BatchNorm keeps its training statistics (see the module docstring)
    for name, p in model.named_parameters():
        p.requires_grad_(not name.startswith(tuple(frozen)))
    tuned = [p for p in model.parameters() if p.requires_grad]
    if not tuned:
        raise WbcError(f"fine-tuning: frozen={list(frozen)} leaves no weight to tune")
    x = cells_to_batch(cells, mean, std)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    steps_per_epoch = max(1, len(x) // batch_size)
    total = epochs * steps_per_epoch
    opt = torch.optim.AdamW(tuned, lr=lr, weight_decay=weight_decay)
    # OneCycleLR divides by pct_start * total - 1: exactly 10 steps at 0.1 raised ZeroDivisionError (--epochs 10 on
    # fewer than 32 cells, --epochs 2 on 80-95) before wbc 0.34.0; a warm-up of 0.15 there is as short
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=total, pct_start=0.1 if total != 10 else 0.15)
    # the classes in the softmax (every labelled one), and the labels as positions among them
    shown = None if trained is None else torch.as_tensor(sorted({*trained, *y.tolist()}), dtype=torch.long)
    if shown is not None:
        y = torch.searchsorted(shown, y)
    pool = torch.from_numpy(np.ascontiguousarray(unlabelled)).permute(0, 3, 1, 2) if use_unlabelled else None
    step = 0
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(steps_per_epoch):
            idx = perm[i * batch_size : (i + 1) * batch_size] if steps_per_epoch > 1 else perm
            logits = model(_dihedral(x[idx], gen))
            loss = F.cross_entropy(logits if shown is None else logits[:, shown], y[idx],
                                   label_smoothing=label_smoothing)
            if pool is not None and strong is not None:
                raw = pool[torch.randint(0, len(pool), (batch_size,), generator=gen)]
                pseudo, keep = pseudo_labels(model, _dihedral(normalise(raw, mean, std), gen), unlabelled_threshold)
                xs = normalise(torch.stack([strong(c) for c in raw]), mean, std)
                consistency = (F.cross_entropy(model(xs), pseudo, reduction="none") * keep).mean()
                loss = loss + unlabelled_weight * consistency
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if progress:
                progress(step, total)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def adapt_finetune(
    model: str | os.PathLike[str] | None, data: str | os.PathLike[str], output: str | os.PathLike[str],
    checkpoint: str | os.PathLike[str] | None = None, stain: str | None = None, seed: int = 0,
    threads: int = 2, mapping: dict[str, str] | None = None, review_target_accuracy: float | None = None,
    progress: Any = None, members: int = 1, cross_validate: bool = True,
    unlabelled: str | os.PathLike[str] | None = None, tta: int = ADAPTED_TTA_VIEWS, **recipe: Any,
) -> AdaptResult:
    """Fine-tune every weight of ``model``'s network on the labelled cells in ``data`` (needs PyTorch).

    ``checkpoint``: the network's PyTorch weights (default: the ``.pt`` beside ``model``; the shipped model
    has one). The held-out check: stratified folds of the cells are kept out in turn, the network is
    fine-tuned on the rest and scored on them before and after, both on the mean of the ``tta`` flips/rotations
    (this also fits the temperature and the review threshold); then the network is fine-tuned on all cells and
    exported in float32 ONNX, with its weights beside it (``output`` with ``.pt``; for a link, beside the file it
    points to: :func:`wbc.model.beside_model`), so it can be adapted again. The
    new lab's cells become the OOD reference (the old one described the old features). ``recipe``: keywords of
    :func:`wbc.train.finetune.finetune` (epochs, lr, ...).

    ``cross_validate`` (default): k-fold cross-validation (k = 5 with 10 or more cells): each fold is
    fine-tuned without its cells and predicts them, so the check, the temperature and the review threshold
    rest on every cell (k + 1 fine-tunings). False: one held-out fifth only (2 fine-tunings). On 100 BCCD
    cells the threshold fitted on 20 held-out cells let through 185 of 241 new cells at 89.7 % accuracy
    (target 99.5 %); fitted on all 100, it let through 26, all right.

    ``members`` > 1 fine-tunes that many copies (seeds ``seed``, ``seed + 1``, ...) and exports their
    mean-probability ensemble as one ONNX graph, for both the held-out check and the output: on 100 BCCD
    cells, 3 members gave 0.900 against 0.884 for one (3 draws, ``benchmarks/cross_dataset.py
    --finetune-members``), at 3x the fitting time and inference cost.

    ``unlabelled``: a folder (or file) of the lab's cell images without labels, learnt from by consistency
    alongside the labelled cells (module docstring). The labelled cells a fine-tuning trains on join them;
    cells held out for the check never do (images of the labelled set found in the folder are left out of
    it), so the check stays one on unseen cells.

    ``tta``: flips/rotations the adapted model averages per cell (stored as ``extra["tta_views"]``); the
    held-out check, temperature and review threshold are fitted on those averaged logits.
    """
    from wbc.adapt import (
        AdaptResult,
        _check_output,
        absent_classes,
        absent_note,
        adaptation_hash,
        base_record,
        content_keys,
        heldout_metrics,
        kept_temperature,
        load_labelled_cells,
        no_ood_note,
        recorded_calls,
        relabelled_copies,
        stain_spec,
        stratified_folds,
        use_recorded_calls,
    )
    from wbc.calibration import calibrate, resolve_review_target
    from wbc.model import load_model
    from wbc.ood import add_reference
    from wbc.preprocess import centre_crop, dihedral_view
    from wbc.reframe import framing_stats_of
    from wbc.stain import normalise_batch
    from wbc.train.export import export_model, parity_input

    tta = checked_tta_views(tta)
    t0 = time.perf_counter()
    torch.set_num_threads(max(1, threads))
    clf = load_model(model, threads=threads)
    out = _check_output(output, clf)
    no_ood = no_ood_note(clf)  # of the model as given: clf.info becomes the adapted one's below
    ckpt = Path(checkpoint) if checkpoint else default_weights(clf.path, clf.info.model_id)
    weights_out = beside_model(out, ".pt")  # through a link: beside its target, as the .onnx and .json are written
    if ckpt.resolve() == weights_out:  # the tuned weights are written there
        raise WbcError(f"{ckpt}: --checkpoint would be replaced by the adapted model's weights "
                       f"({weights_out.name}): choose another --output")
    net, ck_info = load_weights(ckpt)
    if members < 1 or (members > 1 and isinstance(net, Ensemble)):
        raise WbcError(f"--members {members}: must be >= 1, and 1 when the weights ({ckpt}) are already an "
                       "ensemble")
    if (list(ck_info.classes), ck_info.input_size, ck_info.network_size) != (
            clf.classes, clf.info.input_size, clf.info.network_size):
        raise WbcError(f"{ckpt}: these weights ({ck_info.classes}, {ck_info.input_size} px) do not belong to "
                       f"{clf.path} ({clf.classes}, {clf.info.input_size} px)")
    base, base_t = base_record(clf), kept_temperature(clf)  # base_t: kept where the held-out cells are all right
    original = clf.info  # "before" is the original model as it is, whatever mapping the output stores (wbc 0.34.0)
    info = without_lab_prior(clf.info)  # labelled cells refit the probabilities: a label-free estimate is dropped
    # the output is a new float32 network: an int8 base's quantisation record would describe a graph it is not
    # (and `wbc quantize` refused it as "already quantised")
    info.extra.pop("quantization", None)
    cells, labels, files, skipped = load_labelled_cells(data, info.input_size, mapping, framing_stats_of(clf),
                                                        classes=clf.classes)
    if stain not in (None, "none"):
        info.preprocessing = replace(info.preprocessing, stain=stain_spec(clf, stain, cells))
    elif stain == "none":
        info.preprocessing = replace(info.preprocessing, stain=None)
    clf.info = info
    y = np.array([clf.classes.index(lab) for lab in labels])
    absent = absent_classes(clf.classes, labels)

    def prepared(c: np.ndarray) -> np.ndarray:  # what the exported network's inputs look like
        return np.ascontiguousarray(centre_crop(normalise_batch(c, info.preprocessing.stain), info.centre_crop))

    x = prepared(cells)
    pool = prepared(unlabelled_pool(clf, unlabelled, files, threads, seed=seed)) if unlabelled is not None else None
    strong = strong_augment(info) if pool is not None else None
    settings = {**DEFAULTS, **recipe}
    n = len(y)
    k = int(max(2, min(5, n // 2)))
    fold = stratified_folds(y, k, seed, content_keys(cells))  # a cell's copies in one fold: never held out and learnt
    checked = range(k) if cross_validate else range(1)  # the folds held out in turn (default: only fold 0)
    steps = members * settings["epochs"] * (sum(max(1, int((fold != f).sum()) // settings["batch_size"])
                                                for f in checked) + max(1, n // settings["batch_size"]))
    done = [0]

    def tick(step: int, total: int) -> None:
        done[0] += 1
        if progress:
            progress(done[0], steps)

    def tuned(cells_: np.ndarray, labels_: np.ndarray) -> WbcNet | Ensemble:
        extra = {} if pool is None else {"unlabelled": np.concatenate([pool, cells_]), "strong": strong}
        return finetune_members(net, cells_, labels_, info.mean, info.std, members, seed, progress=tick,
                                **extra, **recipe)

    held = np.isin(fold, list(checked))
    logits_held = np.zeros((n, len(clf.classes)), np.float32)
    for f in checked:  # every checked cell is predicted by a network that never saw it, as the output will
        logits_held[fold == f] = mean_view_logits(tuned(x[fold != f], y[fold != f]), x[fold == f], info.mean,
                                                  info.std, tta)
    logits_held = logits_held[held]
    # the original model scored as the adapted one is: on the mean of the same flips/rotations (one view before
    # wbc 0.32.0, which credited the fine-tuning with the gain of averaging rotations)
    clf.info = original
    before = np.mean([clf.run(dihedral_view(cells[held], v))["logits"] for v in range(tta)], axis=0)
    clf.info = info
    # a lab's few cells: the threshold they show, not one they reach by chance; the original model's temperature
    # where they are all right (the fit then runs to its bound: every cell at 1.000), or if that was itself such a
    # fit, the one kept in its place (wbc.adapt.kept_temperature)
    cal = calibrate(logits_held, y[held], resolve_review_target(review_target_accuracy, info.review_target_accuracy),
                    evidence=True, base_temperature=base_t)
    temp, thr = cal.temperature, cal.review_threshold
    final = tuned(x, y)
    present, counts = np.unique(y, return_counts=True)
    res = AdaptResult(
        n_cells=n, counts={clf.classes[c]: int(m) for c, m in zip(present, counts, strict=True)}, lam=None,
        folds=k, heldout_acc_before=float((before.argmax(1) == y[held]).mean()),
        heldout_acc_after=float((logits_held.argmax(1) == y[held]).mean()), temperature=temp,
        review_threshold=thr, method="finetune", heldout_n=int(held.sum()), shown_accuracy=cal.shown_accuracy,
        review_target_accuracy=cal.review_target_accuracy,
        settings={**settings, "members": members, "cross_validate": cross_validate, "tta_views": tta,
                  "unlabelled": None if pool is None or unlabelled is None else {
                      "data": str(Path(unlabelled).resolve()), "cells": len(pool)}},
        absent=absent, skipped=skipped, fitted_temperature=cal.fitted_temperature,
        temperature_note=cal.temperature_note,
    )
    use_recorded_calls(res, recorded_calls(data, files), labels, held)
    info.head = {}  # the fine-tuned network's own last layer replaces any earlier head refit
    info.temperature, info.review_threshold, info.review_target_accuracy = temp, thr, cal.review_target_accuracy
    info.extra["tta_views"] = tta  # wbc classify / analyze / serve average each cell over this many views
    if members > 1:
        info.architecture = f"ensemble of {members} x {_arch(net)}"
    info.extra["adapt"] = {k_: v for k_, v in res.to_dict().items()
                           if k_ not in ("output", "seconds", "skipped", "notes")}
    info.extra["adapt"].update(data=str(Path(data).resolve()), checkpoint=str(ckpt.resolve()), base=base,
                               stain=(info.preprocessing.stain or {}).get("method", "none"),
                               notes=[absent_note(absent)] if absent else [])
    info.metrics = heldout_metrics(res)
    if info.ood.get("references"):
        emb = predict_embeddings(final, x, info.mean, info.std)
        info.ood = add_reference(info.ood, cells, emb, labels, clf.classes,
                                 name=f"adapt:{Path(data).resolve().name}", new_features=True)
    weights = b"".join(t.detach().cpu().numpy().tobytes() for t in final.state_dict().values())
    info.model_id = (f"{clf.model_id}+finetune" + (f"x{members}" if members > 1 else "")
                     + f"-{adaptation_hash(info, weights)}")
    export_model(final, info, out, parity_input(2, info.network_size))  # seeded: the same adaptation, the same bytes
    # the tuned weights beside the model, as the shipped model has them: the output can be adapted again
    save_weights(final, _arch(net), info, weights_out)
    res.output = str(out)
    res.notes = ([absent_note(absent)] if absent else []) + relabelled_copies(cells, labels, files) + no_ood
    res.seconds = time.perf_counter() - t0
    return res


#: The most unlabelled cells :func:`unlabelled_pool` reads (a seeded random subset of a larger folder): 60 epochs
#: over 100 labelled cells draw about 6,000 unlabelled ones, each pool cell seen about three times.
MAX_UNLABELLED = 2000


def unlabelled_pool(clf: Any, data: str | os.PathLike[str], labelled: Sequence[str], threads: int = 2,
                    limit: int = MAX_UNLABELLED, seed: int = 0) -> np.ndarray:
    """The lab's unlabelled cells in ``data``, read and re-framed as ``wbc classify`` reads them, without the
    images that are among the ``labelled`` files, or copies of them (same bytes): those join as labelled cells,
    and must never reach a held-out check as unlabelled ones. At most ``limit`` images (a seeded random subset).
    """

    from wbc.classify import load_cells
    from wbc.io import file_sha1, iter_image_paths
    from wbc.reframe import framing_stats_of

    def digest(path: str | os.PathLike[str]) -> str:
        try:
            return file_sha1(path)
        except OSError:
            return f"unreadable:{path}"  # load_cells names the file when it fails to read it

    seen = {digest(f) for f in labelled}
    paths = list(iter_image_paths([data]))
    if len(paths) > limit + len(seen):
        paths = [paths[i] for i in sorted(np.random.default_rng(seed).choice(len(paths), limit + len(seen), False))]
    paths = [p for p in paths if digest(p) not in seen][:limit]
    cells, _, _ = load_cells(paths, clf.info.input_size, threads, reframe=framing_stats_of(clf))
    if len(cells) < 1:
        raise WbcError(f"{data}: no readable unlabelled cell images (besides the labelled ones)")
    return cells


def export_half_weights(checkpoint: Path, output: Path) -> Path:
    """Write a checkpoint's network weights in half precision, as `wbc adapt` reads them beside an ONNX model
    (``MODEL.pt`` next to ``MODEL.onnx``); ``wbc export-weights`` runs this. ``checkpoint`` is read as `wbc export`
    reads it (a run folder too; an unfinished run's best.pt is named as such), not as `wbc adapt` reads weights."""
    from wbc.train.export import load_checkpoint

    net, info = load_checkpoint(checkpoint)
    save_weights(net, _arch(net), info, output)
    return output
