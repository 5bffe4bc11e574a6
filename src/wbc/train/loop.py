"""``wbc train``: one readable loop, every knob from :class:`wbc.config.TrainConfig`.

A run folder holds everything needed to trust and repeat the run::

    RUN/config.json  manifest.csv  skipped.csv  metrics.csv  last.pt  best.pt  curves.png
        model.onnx (+ model.json)  val_metrics.json  test_metrics.json
        fold_K/...   (cross-validation: one sub-run per fold, then ensemble.pt and model.onnx)
"""

from __future__ import annotations

import csv
import difflib
import gc
import json
import math
import os
import random
import re
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch.utils.data import DataLoader, DistributedSampler, WeightedRandomSampler
from torchvision.transforms import v2

from wbc.calibration import calibrate
from wbc.config import TrainConfig
from wbc.data import (
    Sample,
    file_sha1,
    manifest_data_root,
    read_manifest,
    scan_folder,
    split_hash,
    stratified_split,
    write_manifest,
)
from wbc.errors import WbcError
from wbc.evaluate.metrics import summary_metrics
from wbc.io import atomic_write_bytes, atomic_write_csv, atomic_write_json, check_output_file
from wbc.labels import CLASSES, canonical_label
from wbc.model import ModelInfo, Preprocessing, softmax
from wbc.paths import data_root as default_data_root
from wbc.preprocess import centre_crop
from wbc.train import distributed
from wbc.train.data import TRAINED_FRAMING, CachedCells, class_weights, decode_all
from wbc.train.export import export_model
from wbc.train.models import Ensemble, WbcNet, create_model
from wbc.train.transforms import CentreCrop, build_augment, cells_to_batch, normalise

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
METRIC_COLUMNS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "val_macro_f1", "seconds")


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@dataclass
class Split:
    """Cached images and integer labels of one part of the data."""

    images: np.ndarray
    labels: np.ndarray
    alt: np.ndarray | None = None  # the same cells re-framed (cfg.reframe_p), training only
    attributes: np.ndarray | None = None  # (N, 11) morphological attribute targets (cfg.attributes), training only

    def __len__(self) -> int:
        return len(self.labels)


def _lr_lambda(warmup_steps: int, total_steps: int):
    def f(step: int) -> float:
        if step < warmup_steps:
            return 0.01 + 0.99 * step / max(1, warmup_steps)
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return f


@torch.no_grad()
def _in_batches(fn, images: np.ndarray, mean, std, batch_size: int, device: torch.device) -> list[np.ndarray]:
    return [fn(cells_to_batch(images[i : i + batch_size], mean, std).to(device)
               .contiguous(memory_format=torch.channels_last)).float().cpu().numpy()
            for i in range(0, len(images), batch_size)]


def _device_of(net: torch.nn.Module) -> torch.device:
    return next(net.parameters()).device


def resolve_device(name: str) -> torch.device:
    """``cfg.device`` as a torch device; "cuda" without a usable GPU is a clear error, "auto" falls back to CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise WbcError("device = cuda, but PyTorch sees no CUDA GPU here; use --device cpu or auto")
    return torch.device(name)


def predict_logits(net: torch.nn.Module, images: np.ndarray, mean, std, batch_size: int = 128) -> np.ndarray:
    """Logits (N, C) of uint8 cells (N, S, S, 3) at the network's input size, in eval mode, without gradients."""
    net.eval()
    out = _in_batches(net, images, mean, std, batch_size, _device_of(net))
    return np.concatenate(out) if out else np.zeros((0, 1), np.float32)


def predict_embeddings(net: WbcNet | Ensemble, images: np.ndarray, mean, std, batch_size: int = 128) -> np.ndarray:
    """Pooled embeddings (N, D) of uint8 cells, as the exported ``embedding`` output."""
    net.eval()
    out = _in_batches(lambda x: net.forward_all(x)[1], images, mean, std, batch_size, _device_of(net))
    return np.concatenate(out) if out else np.zeros((0, net.num_features), np.float32)


def summarise(logits: np.ndarray, labels: np.ndarray, classes: list[str], n_boot: int = 0,
              seed: int = 0) -> dict[str, Any]:
    """Training's summary of scored cells, the same numbers ``wbc evaluate`` reports
    (:func:`wbc.evaluate.metrics.summary_metrics`); ``n_boot`` > 0 adds 95% intervals (exact binomial for accuracy
    and recall, bootstrap for macro-F1)."""
    return summary_metrics(labels, logits.argmax(1), classes, n_boot=n_boot, seed=seed)


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]:.3f} acc {task.fields[acc]:.3f}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True,
        disable=not console.is_terminal and os.environ.get("WBC_PROGRESS") != "1",
    )


def progressive_input(cfg: TrainConfig, epoch: int) -> int:
    """The smaller input size of a progressive-resizing epoch (0: full size). Such an epoch costs about
    (small / size)^2 of a full one, so a fixed time budget holds more epochs; the last ones are at full size
    so BatchNorm statistics and the weights settle at the size inference uses.

    >>> [progressive_input(TrainConfig(epochs=4, progressive_size=112, progressive_epochs=2), e) for e in range(4)]
    [112, 112, 0, 0]
    """
    return cfg.progressive_size if epoch < cfg.progressive_epochs else 0


def load_init_weights(path: str | os.PathLike[str], classes: list[str], arch: str = "") -> dict[str, torch.Tensor]:
    """The float32 state dict of a ``best.pt`` or shipped ``.pt`` whose classes are ``classes`` (in order) and, when
    ``arch`` is given and the file records its own, whose architecture is ``arch``."""
    try:
        ck = torch.load(Path(path), map_location="cpu", weights_only=False)
        state = ck["model"]
    except Exception as exc:  # missing file, another program's pickle
        raise WbcError(f"{path}: cannot read network weights ({type(exc).__name__}: {exc})") from None
    if arch and ck.get("arch") and ck["arch"] != arch:
        raise WbcError(f"{path}: weights of {ck['arch']}, this run trains {arch}")
    theirs = ModelInfo.from_json(ck["info"]).classes if ck.get("info") else classes
    if list(theirs) != list(classes):
        raise WbcError(f"{path}: weights for classes {theirs}, this run has {classes}")
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def check_before_reading(cfg: TrainConfig, root: Path) -> None:
    """Refuse, before the data is scanned or decoded, what only the training itself refused, some with a traceback,
    after a minute of decoding on full PBC: an unregistered model, an unlabelled source that is not there, a missing
    ``init_weights`` file (its architecture and classes: :func:`check_init_weights`, once the classes are known),
    ``attributes = "wbcatt"`` without WBCAtt's tables."""
    from wbc.train.models import list_models

    if cfg.model not in list_models():
        raise WbcError(f"model {cfg.model!r}: not a registered model ({', '.join(list_models())}; see `wbc models`)")
    if cfg.unlabelled:
        from wbc.train.unlabelled import unlabelled_source

        unlabelled_source(cfg.unlabelled, root)
    if cfg.init_weights and not Path(cfg.init_weights).is_file():
        raise WbcError(f"{cfg.init_weights}: init_weights not found")
    if cfg.attributes == "wbcatt" and not any((root / "wbcatt").glob("pbc_attr_v1_*.csv")):
        # since wbc 0.35.0 here: before, after decoding, leaving the run's first files to refuse the same command
        raise WbcError(f"{root / 'wbcatt'}: no WBCAtt tables (pbc_attr_v1_*.csv) found, which attributes = "
                       "\"wbcatt\" needs; put them there, or leave attributes out")


def class_loss(weights: torch.Tensor | None, label_smoothing: float = 0.0) -> Callable[[torch.Tensor, torch.Tensor],
                                                                                      torch.Tensor]:
    """The labelled cells' loss: cross-entropy with label smoothing and, with ``weights`` (``balance = "loss"``), the
    class-weighted mean over the batch (its sum divided by the sum of the cells' weights).

    Under DDP that mean is the global batch's: each process divides its weighted sum by the weight sum of every
    process's cells (all-reduced) over the number of processes, since DDP averages their gradients, so that N
    processes take one process's step (``test_two_processes_take_the_same_step_as_one_with_class_weights``). Before
    wbc 0.37.0 each process divided by its own cells' weights, and a process whose share held more cells of the rare,
    heavily weighted classes diluted each of their weights: the default config's step was 4.7 % off one process's.
    Unweighted, the mean of the processes' means is already the global one."""
    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        d = distributed.current()
        if weights is None or not d.enabled:
            return torch.nn.functional.cross_entropy(logits, y, weight=weights, label_smoothing=label_smoothing)
        per_cell = torch.nn.functional.cross_entropy(logits, y, weight=weights, label_smoothing=label_smoothing,
                                                     reduction="none")  # each cell's term carries its weights
        return per_cell.sum() * d.world_size / distributed.global_sum(weights[y].sum())

    return loss


def check_init_weights(cfg: TrainConfig, classes: list[str]) -> None:
    """Refuse, before any image is decoded, ``init_weights`` of another architecture or other classes, or that do not
    fit the network (a state dict's traceback after decoding)."""
    state = load_init_weights(cfg.init_weights, classes, cfg.model)
    try:
        create_model(cfg.model, len(classes), pretrained=False, dropout=cfg.dropout).load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise WbcError(f"{cfg.init_weights}: these weights do not fit a {cfg.model} network ({first})") from None


def fit(
    cfg: TrainConfig, train: Split, val: Split, classes: list[str], run_dir: Path,
    mean, std, console: Console, resume: bool = False, unlabelled: np.ndarray | None = None,
) -> tuple[WbcNet, list[dict[str, Any]]]:
    """Train one network; returns it (on the CPU) with the weights of its best validation macro-F1 epoch.

    ``unlabelled``: other labs' cells (uint8 cache) learnt from by consistency (FixMatch): each step, the
    teacher (the weight average when ``ema`` > 0, else the network) names a flipped/rotated copy of each; where
    it is at least ``unlabelled_threshold`` confident, the network is trained to give a strongly augmented
    copy that answer, with weight ``unlabelled_weight``. Both kinds of cell pass through the network in one
    batch, so BatchNorm's statistics cover the other labs too.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    d = distributed.current()  # DDP (wbc train --nproc N, torchrun): rank 0 writes, gradients are averaged
    device = resolve_device(cfg.device)
    if d.enabled and device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
    gen = seed_everything(cfg.seed)
    net = create_model(cfg.model, len(classes), pretrained=cfg.pretrained, dropout=cfg.dropout)
    if cfg.init_weights:  # fine-tune a trained network (e.g. the shipped one) instead of starting from ImageNet
        net.load_state_dict(load_init_weights(cfg.init_weights, classes, cfg.model))
    net = net.to(device).to(memory_format=torch.channels_last)
    model: torch.nn.Module = net  # what the batches go through: DDP's wrapper when distributed
    if d.enabled:  # BatchNorm over the global batch, as in one process (see distributed.GlobalBatchStats)
        net = distributed.sync_batchnorm(net)
        model = torch.nn.parallel.DistributedDataParallel(net, device_ids=[d.local_rank] if device.type == "cuda"
                                                          else None)
        torch.manual_seed(cfg.seed + d.rank)  # same initial weights (DDP broadcasts rank 0's), own augmentations
        gen.manual_seed(cfg.seed + d.rank)  # ... in the loaders' worker processes too (they seed from ``gen``)
    weights = class_weights(train.labels, len(classes)).to(device) if cfg.balance == "loss" else None
    loss_fn = class_loss(weights, cfg.label_smoothing)
    transform = build_augment(cfg)
    if cfg.centre_crop:  # augment the whole frame (rotations, scale), then keep what the network sees
        transform = v2.Compose([transform, CentreCrop(cfg.centre_crop)])
    heads = None
    if train.attributes is not None and cfg.attribute_weight > 0:  # a second signal: the morphology (attributes.py)
        if d.enabled:
            raise WbcError("attributes do not work with --nproc > 1 (their heads sit outside DDP's wrapper)")
        from wbc.train.attributes import AttributeHeads

        heads = AttributeHeads(net.num_features).to(device)
    dataset = CachedCells(train.images, train.labels, transform, train.alt, cfg.reframe_p,
                          train.attributes if heads is not None else None)
    sampler: Any = None
    batch_size = cfg.batch_size
    if d.enabled:  # each process takes its share of every epoch; the global batch stays cfg.batch_size
        if cfg.balance == "sampler":
            raise WbcError("balance = sampler does not work with --nproc > 1; use balance = loss")
        sampler = DistributedSampler(dataset, d.world_size, d.rank, shuffle=True, seed=cfg.seed, drop_last=True)
        batch_size = max(1, cfg.batch_size // d.world_size)
    elif cfg.balance == "sampler":
        w = class_weights(train.labels, len(classes))[torch.as_tensor(train.labels)]
        sampler = WeightedRandomSampler(cast(Sequence[float], w.double()), len(train), replacement=True,
                                        generator=gen)
    # worker processes start afresh each epoch, seeded from ``gen``, which last.pt saves: a resumed run draws the
    # same augmentations as an uninterrupted one (persistent workers' random streams run on across epochs)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=sampler is None, sampler=sampler,
                        drop_last=len(train) > cfg.batch_size, num_workers=cfg.num_workers, generator=gen,
                        pin_memory=device.type == "cuda")
    params = list(net.parameters()) + (list(heads.parameters()) if heads is not None else [])
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, len(loader))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, _lr_lambda(int(cfg.warmup_epochs * steps_per_epoch), cfg.epochs * steps_per_epoch))
    ema = None
    if cfg.ema > 0:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
    history: list[dict[str, Any]] = []
    start_epoch, best_f1, best_epoch, bad_epochs = 0, -1.0, -1, 0
    last = run_dir / "last.pt"
    if resume and last.is_file():
        ck = torch.load(last, map_location="cpu", weights_only=False)
        net.load_state_dict(ck["model"])
        if ema is not None and "ema" in ck:
            ema.load_state_dict(ck["ema"])
        if heads is not None and "heads" in ck:  # trained as far as the network (last.pt of wbc 0.33.0 on)
            heads.load_state_dict(ck["heads"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        start_epoch, best_f1, best_epoch, bad_epochs = ck["epoch"] + 1, ck["best_f1"], ck["best_epoch"], ck["bad"]
        history = ck["history"]
        rng, gen_state = ck["rng"], ck["gen"]
        if d.enabled and len(ck.get("rng_ranks") or ()) == d.world_size:  # this rank's own streams, as saved
            rng, gen_state = ck["rng_ranks"][d.rank]
        torch.set_rng_state(rng)
        gen.set_state(gen_state)
        if d.enabled and len(ck.get("rng_ranks") or ()) != d.world_size:
            # a checkpoint of wbc before 0.32.0 (rank 0's streams alone) or of another number of processes: each
            # rank's streams drawn afresh, so the run goes on as well as, not as, the uninterrupted one
            torch.manual_seed(cfg.seed + d.rank + 1000 * start_epoch)
            gen.manual_seed(cfg.seed + d.rank + 1000 * start_epoch)  # ... and so is the workers' seed source
        console.print(f"resuming {run_dir} at epoch {start_epoch + 1}", highlight=False)
    elif resume:  # stopped before its first epoch ended (while decoding, say): nothing to go on from
        console.print(f"{run_dir}: no last.pt (no epoch of the run finished); training starts at epoch 1",
                      highlight=False)
    if history and history[-1].get("stopped"):
        start_epoch = cfg.epochs  # finished (early-stopped) run: nothing left to do

    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.time()
        small = progressive_input(cfg, epoch)
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        net.train()
        # drawn afresh each epoch (from ``gen`` and the torch RNG, which last.pt saves), so that a resumed run goes on
        # with the same unlabelled batches
        ul_batches = _unlabelled_batches(cfg, unlabelled, transform, gen, d, epoch) if unlabelled is not None else None
        tot_loss, tot_correct, seen = 0.0, 0, 0
        ul_seen, ul_used = 0, 0
        with _progress(console) as bar:
            task = bar.add_task(f"epoch {epoch + 1}/{cfg.epochs}", total=steps_per_epoch, loss=0.0, acc=0.0)
            with _frozen_heap():  # each epoch forks its worker processes (num_workers > 0) here
                batches = iter(loader)
            for x, y, *more in batches:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                x = normalise(x, mean, std).contiguous(memory_format=torch.channels_last)
                if small:
                    x = torch.nn.functional.interpolate(x, size=(small, small), mode="bilinear", antialias=True)
                xs = None
                if ul_batches is not None:
                    xw, xs = (normalise(v.to(device), mean, std) for v in next(ul_batches))
                    if small:
                        xw, xs = (torch.nn.functional.interpolate(v, size=(small, small), mode="bilinear",
                                                                  antialias=True) for v in (xw, xs))
                    pseudo, keep = pseudo_labels(ema.module if ema is not None else net, xw,
                                                  cfg.unlabelled_threshold, cfg.unlabelled_teacher_views)
                    xs = xs.contiguous(memory_format=torch.channels_last)
                both = x if xs is None else torch.cat([x, xs])  # one batch: BatchNorm sees the other labs too
                if heads is not None:  # the embedding feeds the attribute heads too (DDP was refused above)
                    emb = net.embed(both)
                    out = net.logits_of(emb)
                else:
                    out = model(both)
                logits = out[: len(y)]
                loss = loss_fn(logits, y)
                if xs is not None:
                    ul_loss = torch.nn.functional.cross_entropy(out[len(y):], pseudo, reduction="none")
                    loss = loss + cfg.unlabelled_weight * (ul_loss * keep).mean()
                    ul_seen, ul_used = ul_seen + len(keep), ul_used + int(keep.sum())
                if heads is not None:
                    loss = loss + cfg.attribute_weight * heads.loss(emb[: len(y)], more[0].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                if ema is not None:
                    ema.update_parameters(net)
                tot_loss += float(loss.detach()) * len(y)
                tot_correct += int((logits.argmax(1) == y).sum())
                seen += len(y)
                bar.update(task, advance=1, loss=tot_loss / seen, acc=tot_correct / seen)
        sum_loss, sum_correct, n_seen = distributed.all_reduce_sum([tot_loss, tot_correct, seen])
        if n_seen == 0:  # every rank alike: an epoch without a step must not pass for training (the initial weights)
            raise WbcError(f"no training image reached the network in epoch {epoch + 1} ({len(train)} training "
                           f"image(s) among {d.world_size} process(es)); train with fewer processes")
        scored = ema.module if ema is not None else net  # the weights that are evaluated and kept
        val_logits = predict_logits(scored, val.images, mean, std)
        val_loss = float(torch.nn.functional.cross_entropy(torch.from_numpy(val_logits),
                                                           torch.from_numpy(val.labels)))
        s = summarise(val_logits, val.labels, classes)
        val_loss, s["accuracy"], s["macro_f1"] = distributed.broadcast_from_main([val_loss, s["accuracy"],
                                                                                  s["macro_f1"]])
        check_finite(epoch, sum_loss, val_loss if len(val) else 0.0, cfg.lr)  # before best.pt or last.pt is saved
        row = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"], "train_loss": sum_loss / max(n_seen, 1),
               "train_acc": sum_correct / max(n_seen, 1), "val_loss": val_loss, "val_acc": s["accuracy"],
               "val_macro_f1": s["macro_f1"], "seconds": time.time() - t0}
        history.append(row)
        improved = s["macro_f1"] > best_f1
        if improved:
            best_f1, best_epoch, bad_epochs = s["macro_f1"], epoch + 1, 0
        if improved and d.is_main:
            save_atomic({"model": scored.state_dict(), "arch": cfg.model, "dropout": cfg.dropout},
                        run_dir / "best.pt")
        elif not improved:
            bad_epochs += 1
        stop = cfg.patience > 0 and bad_epochs >= cfg.patience
        row["stopped"] = stop
        console.print(
            f"epoch {epoch + 1:>3}  loss {row['train_loss']:.4f}  acc {row['train_acc']:.4f}  "
            f"val_loss {val_loss:.4f}  val_acc {s['accuracy']:.4f}  val_F1 {s['macro_f1']:.4f}"
            f"{f'  pseudo-labelled {ul_used / ul_seen:.0%}' if ul_seen else ''}"
            f"{'  *' if improved else ''}  {row['seconds']:.0f}s", highlight=False)
        # every rank's random streams (its augmentations, its workers' seeds), so that each rank of a resumed run
        # goes on with its own: before wbc 0.32.0 only rank 0's were saved and a DDP resume drew other augmentations
        rng_ranks = distributed.all_gather_objects((torch.get_rng_state(), gen.get_state())) if d.enabled else None
        if d.is_main:
            atomic_write_csv(run_dir / "metrics.csv", METRIC_COLUMNS,
                             [[r[c] for c in METRIC_COLUMNS] for r in history])
            save_atomic({"model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                         "epoch": epoch, "best_f1": best_f1, "best_epoch": best_epoch, "bad": bad_epochs,
                         "history": history, "rng": torch.get_rng_state(), "gen": gen.get_state(),
                         **({"rng_ranks": rng_ranks} if rng_ranks is not None else {}),
                         # the attribute heads too: before wbc 0.33.0 a resumed run built them afresh from the seed,
                         # under the optimizer's trained moments, and went on otherwise than the uninterrupted run
                         **({"heads": heads.state_dict()} if heads is not None else {}),
                         **({"ema": ema.state_dict()} if ema is not None else {})}, last)
        distributed.barrier()  # every rank sees this epoch's checkpoints before going on
        if stop:
            console.print(f"early stop: no val macro-F1 gain for {cfg.patience} epochs (best epoch {best_epoch})")
            break
    if d.is_main:
        plot_curves(history, run_dir / "curves.png")
    best = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=False)
    net = net.cpu()
    net.load_state_dict(best["model"])
    return net.eval(), history


def check_finite(epoch: int, train_loss: float, val_loss: float, lr: float) -> None:
    """Stop a run whose loss is no longer a finite number (diverged: too high a learning rate, most often). Before
    wbc 0.35.0 it went on: a NaN network still beat the initial best macro-F1, was saved as best.pt, calibrated,
    exported (``NaN`` in model.json) and named every cell one class.

    >>> check_finite(0, float("nan"), 1.0, 1.0)
    Traceback (most recent call last):
    wbc.errors.WbcError: epoch 1: the training loss is nan (the training diverged); lower lr (now 1.0) and train...
    """
    what = [(name, v) for name, v in (("training loss", train_loss), ("validation loss", val_loss))
            if not math.isfinite(v)]
    if what:
        name, v = what[0]
        raise WbcError(f"epoch {epoch + 1}: the {name} is {v} (the training diverged); lower lr (now {lr}) and train "
                       "again (--overwrite, or another --output)")


@contextmanager
def _frozen_heap() -> Iterator[None]:
    """Every object alive now is left out of garbage collection inside the block, and for good in processes forked
    there (the data loader's workers).

    A worker is a fork of the training process with its other threads gone. Collecting an object it inherited can
    wait on those threads for ever: an ONNX Runtime session left as garbage in the parent (an earlier model's, in a
    notebook or a test run) waits on its thread pool's condition variable in its destructor, and the worker hangs.
    Frozen, such objects are never collected in the worker (Python's ``gc.freeze`` is meant for this: objects alive
    at a fork stay untouched); the parent collects them as before once the block ends.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _unlabelled_batches(cfg: TrainConfig, cache: np.ndarray, strong: Any, gen: torch.Generator,
                        d: distributed.DistInfo, epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (weak, strong) batches of the unlabelled cells, ``unlabelled_ratio`` x this rank's batch, for one
    training ``epoch``."""
    from wbc.train.unlabelled import TwoViews

    weak = CentreCrop(cfg.centre_crop) if cfg.centre_crop else None
    size = max(1, round(cfg.batch_size * cfg.unlabelled_ratio / max(1, d.world_size)))
    ds = TwoViews(cache, strong, weak)
    sampler: DistributedSampler[int] | None = None
    if d.enabled:
        sampler = DistributedSampler(ds, d.world_size, d.rank, shuffle=True, seed=cfg.seed)
    share = len(sampler) if sampler is not None else len(ds)  # this rank's cells: a batch never larger
    loader = DataLoader(ds, batch_size=min(size, share), shuffle=sampler is None, sampler=sampler,
                        drop_last=True, generator=gen)
    n = 0
    while True:
        if sampler is not None:
            sampler.set_epoch(epoch * 1_000_000 + n)  # another order for every pass of every training epoch
        yield from loader
        n += 1


def pseudo_labels(teacher: torch.nn.Module, x: torch.Tensor, threshold: float, views: int = 1
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(the teacher's class for each cell, 1.0 where its probability reaches ``threshold`` else 0.0); with
    ``views`` > 1 the teacher's probability is the mean over that many quarter turns of each cell, as `wbc`
    answers an unsure cell (:data:`wbc.model.UNSURE_TTA_VIEWS`)."""
    was_training = teacher.training
    teacher.eval()
    with torch.no_grad():
        p = torch.stack([torch.softmax(teacher(torch.rot90(x, k, (2, 3)) if k else x), 1)
                         for k in range(views)]).mean(0)
    teacher.train(was_training)
    conf, label = p.max(1)
    return label, (conf >= threshold).float()


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary name, then rename: a run killed while saving keeps its last checkpoint."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot(ep, [r["train_loss"] for r in history], label="train")
    a.plot(ep, [r["val_loss"] for r in history], label="validation")
    a.set(xlabel="epoch", ylabel="loss", title="Loss")
    a.legend()
    b.plot(ep, [r["train_acc"] for r in history], label="train accuracy")
    b.plot(ep, [r["val_acc"] for r in history], label="val accuracy")
    b.plot(ep, [r["val_macro_f1"] for r in history], label="val macro-F1")
    b.set(xlabel="epoch", title="Accuracy", ylim=(max(0.0, min(r["train_acc"] for r in history) - 0.05), 1.0))
    b.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def data_source(cfg: TrainConfig, root: Path) -> Path:
    """``cfg.data`` as a path: a folder or manifest as given, else under the data root."""
    data = Path(cfg.data)
    return data if data.is_absolute() or data.exists() else root / cfg.data


def is_manifest(path: Path) -> bool:
    """Whether training data names a manifest CSV (a run's ``manifest.csv``), not a class-per-folder dataset."""
    return path.suffix.lower() == ".csv"


def prepare_samples(cfg: TrainConfig, run_dir: Path, root: Path, resume: bool, console: Console) -> list[Sample]:
    """The run's manifest: reused when resuming, else scanned (or read from a manifest), split (seeded) and
    written."""
    manifest = run_dir / "manifest.csv"
    if resume and manifest.is_file():
        return read_manifest(manifest, root=root)
    folder = data_source(cfg, root)
    skipped: list[tuple[str, str]] = []
    if is_manifest(folder):
        samples = manifest_samples(folder, cfg, root)
    else:
        scan = scan_folder(folder, classes=cfg.classes or None)
        for path, reason in scan.skipped:
            console.print(f"[yellow]skipped[/] {path}: {reason}", highlight=False)
        samples, skipped = scan.samples, scan.skipped
    found = sorted({s.label for s in samples})
    absent = [c for c in cfg.classes if c not in found]
    if absent:  # the model left them out without a word, while its config.json listed them
        raise WbcError(f"{folder}: no images of {', '.join(absent)}, which classes asks for; add them, or leave "
                       f"{'that class' if len(absent) == 1 else 'those classes'} out of classes")
    if len(found) < 2:
        raise WbcError(f"{folder}: images of one class only ({', '.join(found)}); a classifier needs at least two")
    if cfg.max_per_class and is_manifest(folder):
        samples = cap_manifest(samples, cfg.max_per_class, cfg.split_seed)
    elif cfg.max_per_class:
        rng = np.random.default_rng(cfg.split_seed)
        by: dict[str, list[Sample]] = {}
        for s in samples:
            by.setdefault(s.label, []).append(s)
        samples = [s for lab in sorted(by) for s in
                   [by[lab][i] for i in sorted(rng.permutation(len(by[lab]))[: cfg.max_per_class])]]
    if is_manifest(folder):
        samples, unreadable = deal_new_rows(samples, cfg, folder)
        for path, reason in unreadable:
            console.print(f"[yellow]skipped[/] {path}: {reason}", highlight=False)
        skipped += unreadable
    else:
        samples = stratified_split(samples, cfg.split, seed=cfg.split_seed, folds=cfg.folds)
    check_folds(cfg.folds, samples, folder)
    write_manifest(manifest, samples, root=root)
    atomic_write_csv(run_dir / "skipped.csv", ["path", "reason"], skipped)
    return samples


def record_unreadable(run_dir: Path, kept: Sequence[Sample], bad: Sequence[tuple[str, str]], root: Path) -> None:
    """Add the images that could not be decoded to ``RUN/skipped.csv`` (reason ``unreadable: ...``) and leave them out
    of ``RUN/manifest.csv``, which then lists the images the run used: before wbc 0.35.0 skipped.csv was written
    before decoding and missed them, while the manifest kept them as train, val or test rows."""
    where = run_dir / "skipped.csv"
    try:
        with where.open(newline="", encoding="utf-8") as fh:
            rows = [(r["path"], r["reason"]) for r in csv.DictReader(fh)]
    except (OSError, KeyError, csv.Error):
        rows = []
    listed = {path for path, _ in rows}
    rows += [(path, "unreadable: " + reason.removeprefix(f"{path}: ")) for path, reason in bad if path not in listed]
    atomic_write_csv(where, ["path", "reason"], rows)  # first: a run stopped between the two still lists them
    write_manifest(run_dir / "manifest.csv", kept, root=root)


def check_folds(folds: int, samples: Sequence[Sample], where: Path, unreadable: int | None = None) -> None:
    """Refuse cross-validation with a fold that holds no train or val image (``unreadable``: how many images could not
    be read, when checking the decoded ones): before wbc 0.33.0 ``--folds`` above the train and val images trained
    every fold that had some, then failed with a scikit-learn traceback on the first empty one."""
    if folds < 2:
        return
    pool = [s for s in samples if s.split != "test"]
    empty = sorted(set(range(folds)) - {s.fold for s in pool})
    if empty:
        readable, bad = ("readable ", f" ({unreadable} images could not be read)") if unreadable else ("", "")
        raise WbcError(f"{where}: --folds {folds}, but only {len(pool)} {readable}train and val images{bad}: fold(s) "
                       f"{', '.join(map(str, empty))} would have none to validate on; give fewer folds")


def manifest_samples(path: Path, cfg: TrainConfig, root: Path) -> list[Sample]:
    """A manifest's rows as training samples (labels in any known spelling, restricted to ``cfg.classes``), each
    keeping its split; rows without one are dealt later (:func:`deal_new_rows`).

    A label that is no class is refused, naming the row and the nearest class: before wbc 0.33.0 it was kept as
    written and became an extra model output, learnt from that row alone (a typo, ``lymphocyt``, was a class). With
    ``cfg.classes``, rows of other labels are left out as those of other classes are (a lab's ``blast`` rows), unless
    the label is close to a class asked for (a typo of a class wanted, whose rows would go missing)."""
    rows = read_manifest(path, root=root)
    unknown = [s for s in rows if canonical_label(s.label) is None]
    if cfg.classes:
        unknown = [s for s in unknown if difflib.get_close_matches(s.label.strip().lower(), cfg.classes, cutoff=0.8)]
    if unknown:
        first = unknown[0]
        near = difflib.get_close_matches(first.label.strip().lower(), cfg.classes or CLASSES, n=1, cutoff=0.6)
        hint = f"did you mean {near[0]!r}? " if near else ""
        others = sorted({s.label for s in unknown} - {first.label})
        more = f"; {len(unknown)} rows in all, also {', '.join(map(repr, others))}" if others else (
            f"; {len(unknown)} rows in all" if len(unknown) > 1 else "")
        raise WbcError(f"{path}: row {first.path}: label {first.label!r} is not a class ({hint}classes: "
                       f"{', '.join(CLASSES)}){more}; correct the label or leave the row out")
    rows = [replace(s, label=label) for s in rows if (label := canonical_label(s.label)) is not None]
    for s in rows:
        if s.split not in ("train", "val", "test", ""):
            raise WbcError(f"{path}: {s.path}: split {s.split!r}; a row's split is train, val, test or empty (a new "
                           "file, dealt into train and val)")
    rows = [s for s in rows if not cfg.classes or s.label in cfg.classes]
    if not rows:
        raise WbcError(f"{path}: no rows{' of the classes asked for' if cfg.classes else ''}")
    for part in ("train", "val") if cfg.folds <= 1 else ():  # a lab's Train/Test split: said now, not after decoding
        if not any(s.split in (part, "") for s in rows):
            raise WbcError(f"{path}: no {part} rows (splits here: {', '.join(sorted({s.split for s in rows}))}); give "
                           f"some rows split {part}, or an empty split to have them dealt into train and val")
    return rows


def cap_manifest(samples: list[Sample], max_per_class: int, seed: int) -> list[Sample]:
    """``max_per_class`` random rows of each class of a manifest, from each split about in its share of the class but
    at least one (so more when the class has more splits than that). A plain draw with ``seed`` repeated the draw
    that had dealt a manifest made with that split seed, and so kept its test rows only."""
    rng = np.random.default_rng([seed, 1])
    out: list[Sample] = []
    for label in sorted({s.label for s in samples}):
        group = [s for s in samples if s.label == label]
        if len(group) <= max_per_class:
            out += group
            continue
        parts = {sp: [s for s in group if s.split == sp] for sp in ("train", "val", "test", "")}
        want = {sp: max_per_class * len(part) / len(group) for sp, part in parts.items() if part}
        n = {sp: max(1, int(w)) for sp, w in want.items()}
        while sum(n.values()) > max_per_class and max(n.values()) > 1:
            n[max(n, key=lambda sp: n[sp])] -= 1
        while sum(n.values()) < max_per_class:  # the largest shortfall first; the class has rows to spare
            n[max((sp for sp in n if n[sp] < len(parts[sp])), key=lambda sp: want[sp] - n[sp])] += 1
        for sp, k in n.items():
            out += [parts[sp][i] for i in sorted(rng.permutation(len(parts[sp]))[:k])]
    return out


def check_one_split_per_image(samples: Sequence[Sample], where: Path, cv: bool = False) -> None:
    """Refuse a manifest that lists one image (one SHA-1) in two splits (``cv``: in test and in train or val, which
    cross-validation pools): a merged manifest, a row listed again. Before wbc 0.35.0 the run trained on such a test
    image and reported its test accuracy as held out (and early-stopped and calibrated on a trained val image)."""
    parts: dict[str, dict[str, Sample]] = defaultdict(dict)
    for s in samples:
        if s.sha1 and s.split:
            parts[s.sha1].setdefault("train/val" if cv and s.split != "test" else s.split, s)
    clash = [h for h, by in parts.items() if len(by) > 1]
    if clash:
        (pa, a), (pb, b) = [(s.path, s.split) for s in list(parts[clash[0]].values())[:2]]
        more = f"; {len(clash)} such images" if len(clash) > 1 else ""
        raise WbcError(f"{where}: {pa} ({a}) and {pb} ({b}) are the same image (SHA-1 {clash[0][:12]}) in two "
                       f"splits{more}; an image belongs to one split, so its test and validation scores stay held "
                       "out: remove one of the rows, or give both the same split")


def deal_new_rows(samples: list[Sample], cfg: TrainConfig,
                  where: Path = Path("manifest.csv")) -> tuple[list[Sample], list[tuple[str, str]]]:
    """(a manifest's samples with every row split and, for cross-validation, in a fold; [(path, reason)] of new rows
    whose file cannot be read, left out).

    Rows that have a split keep it, so a test split stays the one it was: rows without one (files added since) are
    dealt into train and val only, in ``cfg.split``'s proportion, but a copy (same SHA-1) of a listed file, which
    joins that file's split. With ``folds`` K > 1, the train and val rows keep their folds when these are the K folds
    0..K-1, else are dealt into K folds afresh (before wbc 0.33.0 fewer folds were kept too: a 5-fold run's manifest
    used for 10 folds left folds 5-9 without a row, a traceback after five folds had trained). One image (SHA-1) in
    two splits is refused (:func:`check_one_split_per_image`), in two folds dealt afresh. ``where``: the manifest,
    for messages."""
    def content(s: Sample) -> str:
        try:
            return s.sha1 or file_sha1(s.path)
        except OSError:
            return ""

    out = [replace(s, sha1=content(s)) for s in samples]
    check_one_split_per_image(out, where, cv=cfg.folds > 1)
    split_of = {s.sha1: s.split for s in out if s.split and s.sha1}
    out = [replace(s, split=s.split or split_of.get(s.sha1, "")) for s in out]
    skipped = [(str(s.path), "cannot be read") for s in out if not s.split and not s.sha1]
    out = [s for s in out if s.split or s.sha1]
    new = [i for i, s in enumerate(out) if not s.split]
    if new:
        train, val, _ = cfg.split
        dealt = stratified_split([out[i] for i in new], (train / (train + val), val / (train + val), 0.0),
                                 seed=cfg.split_seed)
        for i, s in zip(new, dealt, strict=True):
            out[i] = s
    if cfg.folds < 2:
        return [replace(s, fold=-1) for s in out], skipped
    pool = [i for i, s in enumerate(out) if s.split != "test"]
    folds_of: dict[str, set[int]] = defaultdict(set)
    for i in pool:
        if out[i].sha1:  # a file that cannot be read has none: it is no copy of another, and decoding skips it
            folds_of[out[i].sha1].add(out[i].fold)
    # one image in two folds (a row listed again, a merged manifest) would validate a member on an image it trained
    # on: dealt afresh, copies together (stratified_split groups by SHA-1); before wbc 0.35.0 such folds were kept
    if {out[i].fold for i in pool} != set(range(cfg.folds)) or any(len(f) > 1 for f in folds_of.values()):
        # a file that cannot be read keyed by its path: stratified_split would read it, a traceback
        keyed = [replace(out[i], sha1=out[i].sha1 or f"unread:{out[i].path}") for i in pool]
        dealt = stratified_split(keyed, (1.0, 0.0, 0.0), seed=cfg.split_seed, folds=cfg.folds)
        for i, s in zip(pool, dealt, strict=True):
            out[i] = replace(out[i], fold=s.fold)
    return [replace(s, fold=-1) if s.split == "test" else s for s in out], skipped


def classes_of(samples: Sequence[Sample]) -> list[str]:
    """A run's classes, the model's outputs: the known classes its samples hold in :data:`wbc.labels.CLASSES`'s order,
    then any other labels alphabetically."""
    classes = [c for c in CLASSES if any(s.label == c for s in samples)]
    return classes + sorted({s.label for s in samples} - set(classes))


#: Options that describe the machine a run runs on, not its recipe: `--resume` takes them from the command line.
MACHINE_OPTIONS: frozenset[str] = frozenset({"device", "threads", "num_workers"})


def resumed_config(cfg: TrainConfig, run_dir: Path, given: Collection[str] | None = None) -> TrainConfig:
    """The configuration a resumed run goes on with: its own (``RUN/config.json``), with this machine's
    :data:`MACHINE_OPTIONS` from ``cfg``.

    Every other option the user set (``given``: flags and config-file keys; None: every option of ``cfg``) must equal
    the run's, else the run is refused: a resumed run goes on as the uninterrupted one would have, and `--epochs 20`
    on a finished 12-epoch run was dropped without a word (more epochs would also stretch the cosine schedule the
    first epochs were trained on). To train on from a run's weights, start a new run with ``init_weights``.
    """
    where = run_dir / "config.json"
    try:
        saved = json.loads(where.read_text())
        if not isinstance(saved, dict):
            raise ValueError("not a JSON object")
        run_cfg = TrainConfig().updated(as_trained(saved))
    except (OSError, ValueError, WbcError) as exc:
        raise WbcError(f"{where}: unreadable run config ({exc})") from None
    cfg, run_cfg = truthful_pretrained(cfg), truthful_pretrained(run_cfg)  # as the run recorded it (or now would)
    keys = [f.name for f in fields(TrainConfig) if f.name != "extra"] if given is None else sorted(given)
    clash = [k for k in keys if k not in MACHINE_OPTIONS and k != "extra" and getattr(cfg, k) != getattr(run_cfg, k)]
    if clash:
        raise WbcError(f"{run_dir}: --resume goes on with the run's own settings, but "
                       + ", ".join(f"{k} {_shown(getattr(cfg, k))} (the run's: {_shown(getattr(run_cfg, k))})"
                                   for k in clash)
                       + "; leave them out to resume, or start a new --output to change the recipe (init_weights = "
                       f"\"{run_dir / 'best.pt'}\" trains on from its weights)")
    return run_cfg.updated({k: getattr(cfg, k) for k in MACHINE_OPTIONS})


def as_trained(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved run's options (its config.json, a model's ``extra["config"]``) as the run trained with them, for
    :class:`TrainConfig`: ``progressive_size`` or ``progressive_epochs`` alone, which a config may not set since wbc
    0.33.0, did nothing before (every epoch at full size), so such a run goes on and joins an ensemble as both 0."""
    out = {k: v for k, v in saved.items() if k not in ("extra", "data_root")}  # data_root: where, not what
    if bool(out.get("progressive_size")) != bool(out.get("progressive_epochs")):
        out.update(progressive_size=0, progressive_epochs=0)
    return out


def truthful_pretrained(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with ``pretrained`` false for a model that has no pretrained weights (small_cnn, resnet50), which
    start from random weights whatever it says: before wbc 0.33.0 such a run's config.json and metadata said
    ``pretrained: true``."""
    from wbc.train.models import has_pretrained_weights, list_models

    if cfg.pretrained and cfg.model in list_models() and not has_pretrained_weights(cfg.model):
        return cfg.updated({"pretrained": False})
    return cfg


def _shown(value: Any) -> str:
    """An option's value as a config file writes it (tuples as lists)."""
    return repr(list(value) if isinstance(value, tuple) else value)


#: Files that make a folder a run or a model: `wbc train` writes into it only with --resume or --overwrite.
RUN_FILES: tuple[str, ...] = ("last.pt", "best.pt", "ensemble.pt", "model.onnx", "manifest.csv")
#: What a run writes besides manifest.csv, skipped.csv and config.json (which a new run writes first, and puts back
#: when it is refused): removed on --overwrite, so that no earlier run's checkpoint, score or fold is left beside the
#: new one (`wbc export` loads ensemble.pt first).
_STALE_RUN_FILES: tuple[str, ...] = ("last.pt", "best.pt", "ensemble.pt", "model.onnx", "model.json", "metrics.csv",
                                     "curves.png", "val_metrics.json", "test_metrics.json", "cv_metrics.json")
#: What a cross-validation run writes into each of its ``fold_K`` folders (fit, run_training): removed there on
#: --overwrite, and the folder with them when nothing else is left in it.
_FOLD_FILES: tuple[str, ...] = ("last.pt", "best.pt", "metrics.csv", "curves.png", "val_metrics.json")
#: The run files a new run writes before its last check (:func:`run_training`), put back when it is refused.
_FIRST_WRITTEN: tuple[str, ...] = ("manifest.csv", "skipped.csv", "config.json")


def _fold_folders(run_dir: Path) -> list[Path]:
    """``run_dir``'s ``fold_K`` entries (K digits), the only names a cross-validation run writes its folds under: a
    user's ``fold_notes/`` is none of them."""
    return sorted(p for p in run_dir.glob("fold_*") if re.fullmatch(r"fold_[0-9]+", p.name))


def earlier_run_files(run_dir: Path) -> list[Path]:
    """The files --overwrite removes from ``run_dir``: an earlier run's outputs (:data:`_STALE_RUN_FILES`) and its
    folds' (:data:`_FOLD_FILES` in ``fold_K`` folders, never through a link); a user's own files stay."""
    folds = [f for f in _fold_folders(run_dir) if f.is_dir() and not f.is_symlink()]
    files = [run_dir / n for n in _STALE_RUN_FILES] + [f / n for f in folds for n in _FOLD_FILES]
    return [f for f in files if f.is_file() or f.is_symlink()]


def _resume_refusal(run_dir: Path) -> str | None:
    """Why `--resume` cannot go on with ``run_dir`` (None: it can): no run there (no config.json; a cross-validation
    fold), or a run that cannot go on (trained, but its last.pt removed)."""
    parent = run_dir.parent
    if run_dir.name.startswith("fold_") and (parent / "config.json").is_file():
        return (f"{run_dir}: one fold of the cross-validation run {parent}; resume that run (wbc train --output "
                f"{parent} --resume)")
    if not (run_dir / "config.json").is_file():
        return f"{run_dir}: no run to resume here (no config.json); drop --resume to start one"
    has_last = (run_dir / "last.pt").is_file() or any(run_dir.glob("fold_*/last.pt"))
    trained = [n for n in ("best.pt", "ensemble.pt", "model.onnx", "metrics.csv") if (run_dir / n).exists()]
    if trained and not has_last:
        return (f"{run_dir}: a trained run without its last.pt ({', '.join(trained)}), which cannot go on; retrain it "
                "with --overwrite, or into another --output")
    return None


def check_run_folder(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse, before anything is read or written, a run folder that does not fit the request.

    Without ``resume`` or ``overwrite``, a folder holding any of :data:`RUN_FILES` (a finished run whose last.pt was
    removed, the committed runs/default, an ensemble): before wbc 0.33.0 only a last.pt stopped a new run, which
    replaced the folder's manifest.csv (what pins a split) and model, and left an ensemble's ensemble.pt to be
    exported. With ``resume``, a folder without a run (no config.json; a cross-validation fold), or a run that
    cannot go on (trained, but its last.pt removed): before, each started a new run, a fold one with the default
    settings, after decoding the whole dataset. The refusal of a used folder offers `--resume` only where it would
    go on (the committed runs/default, which has no last.pt, takes --overwrite). With ``overwrite``, a ``fold_K``
    that is a link is refused, before anything is removed: what --overwrite removes is never looked for through one.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise WbcError(f"{run_dir}: is a file; --output is the run folder")
    if resume and overwrite:
        raise WbcError(f"{run_dir}: --resume goes on with the run there, --overwrite replaces it; give one")
    if resume:
        refusal = _resume_refusal(run_dir)
        if refusal:
            raise WbcError(refusal)
        return
    linked = [f for f in _fold_folders(run_dir) if f.is_symlink()] if overwrite else []
    if linked:
        raise WbcError(f"{linked[0]}: a link, where a cross-validation run keeps a fold; --overwrite removes no run "
                       "files through a link: remove it, or pick another --output")
    held = [n for n in RUN_FILES if (run_dir / n).exists()] + [str(p.relative_to(run_dir))
                                                                for p in sorted(run_dir.glob("fold_*/last.pt"))]
    if held and not overwrite:
        resume_hint = "--resume to continue it, " if _resume_refusal(run_dir) is None else ""
        raise WbcError(f"{run_dir}: holds a run or a model already ({', '.join(held)}); pass {resume_hint}"
                       "--overwrite to replace it, or pick another --output")


def check_init_weights_kept(init_weights: str, run_dir: Path) -> None:
    """Refuse ``init_weights`` that --overwrite removes from ``run_dir`` (its own best.pt) before the new run reads
    them: the earlier run would be gone and the new one fail. A user's file there, which stays, is fine."""
    def entry(p: Path) -> Path:  # the directory entry unlink removes: its folder resolved, not the name itself
        return p.parent.resolve() / p.name

    init = Path(init_weights)
    if {entry(init), init.resolve()} & {entry(f) for f in earlier_run_files(run_dir)}:
        raise WbcError(f"{init_weights}: init_weights is in the folder --overwrite clears ({run_dir}); copy it "
                       "elsewhere first, or train into another --output")


def clear_run_folder(run_dir: Path) -> None:
    """Remove an earlier run's outputs (:func:`earlier_run_files`) from ``run_dir`` (--overwrite), and the ``fold_K``
    folders they leave empty: a user's files there, and their own ``fold_*`` folders, stay."""
    import contextlib

    for path in earlier_run_files(run_dir):
        path.unlink(missing_ok=True)
    for fold in _fold_folders(run_dir):
        if fold.is_dir() and not fold.is_symlink():
            with contextlib.suppress(OSError):  # not empty: what is left is not the run's
                fold.rmdir()


@contextmanager
def _put_back_if_refused(paths: Sequence[Path], active: bool) -> Iterator[None]:
    """Run the block; if it raises (a refusal), put ``paths`` back as they were, or remove them where there were none
    (``active``: else nothing is kept). A new run refused under --overwrite so leaves the earlier run whole, not
    with the new run's manifest and config beside its model."""
    saved = {p: p.read_bytes() if p.is_file() else None for p in paths} if active else {}
    try:
        yield
    except BaseException:
        for p, data in saved.items():
            if data is None:
                p.unlink(missing_ok=True)
            else:
                atomic_write_bytes(p, data)
        raise


def run_training(
    cfg: TrainConfig, run_dir: str | os.PathLike[str], data_root: str | os.PathLike[str] | None = None,
    resume: bool = False, console: Console | None = None, nproc: int = 1, score_test: bool = True,
    given: Collection[str] | None = None, overwrite: bool = False,
) -> dict[str, Any]:
    """Run a whole training job into ``run_dir``; returns the test summary.

    ``resume``: go on with the run in ``run_dir`` (its own configuration, :func:`resumed_config`; ``given``: the
    options the user set, which must equal the run's, None: every option of ``cfg``). ``overwrite``: replace the run
    or model ``run_dir`` holds (its files are removed once every check before training has passed: a refused run
    leaves it as it was); without either, such a folder is refused (:func:`check_run_folder`).

    ``nproc`` > 1: data-parallel training in that many processes on this machine (DDP; gloo on CPUs, NCCL on
    GPUs); under ``torchrun`` the ranks come from its environment instead.
    ``score_test=False`` (``wbc train --no-test``): the test split is held back, not scored or printed, for a
    candidate that is to be chosen on validation; ``wbc evaluate RUN/manifest.csv --split test`` scores it once,
    after the choice. The summary then holds only the training time.
    """
    console = console or Console(stderr=True)
    run_dir = Path(run_dir)
    check_run_folder(run_dir, resume, overwrite)
    root = default_data_root(data_root)
    if resume:
        cfg = resumed_config(cfg, run_dir, given)
        root, moved = manifest_data_root(run_dir / "manifest.csv", data_root)  # the run's own, where it was trained
        main = int(os.environ.get("RANK", 0)) == 0  # under torchrun, rank 0 alone speaks
        if moved and main:
            console.print(moved, highlight=False)
        if finished := finished_run(run_dir, cfg):  # nothing to train: its model kept, not re-exported under a new id
            tested = run_dir / "test_metrics.json"
            unscored = score_test and not tested.is_file() and read_manifest(run_dir / "manifest.csv", "test", root)
            held = f"; its test split is not scored: score it once with wbc evaluate {run_dir}" if unscored else ""
            if main:
                console.print(f"{run_dir}: finished already ({finished}); its model.onnx is kept as it is{held}. To "
                              f"train on, start a new run with init_weights = \"{run_dir / 'best.pt'}\"",
                              highlight=False)
            return json.loads(tested.read_text()) if tested.is_file() else {}
    check_before_reading(cfg, root)
    if overwrite and cfg.init_weights:
        check_init_weights_kept(cfg.init_weights, run_dir)
    if cfg.pretrained and not truthful_pretrained(cfg).pretrained:
        if int(os.environ.get("RANK", 0)) == 0:
            console.print(f"{cfg.model} has no pretrained weights: it starts from random weights (recorded as "
                          "pretrained = false)", highlight=False)
        cfg = truthful_pretrained(cfg)
    device_type = resolve_device(cfg.device).type  # a missing GPU is reported now, not after decoding the data
    if (nproc > 1 or "WORLD_SIZE" in os.environ) and cfg.folds > 1:
        raise WbcError("cross-validation (folds > 1) runs in one process; train the folds as separate jobs")
    if (nproc > 1 or int(os.environ.get("WORLD_SIZE", 1)) > 1) and cfg.balance == "sampler":
        # refused here, before the ranks start or a file is written (train_one checks it again under torchrun)
        raise WbcError("balance = sampler does not work with --nproc > 1; use balance = loss")
    if (nproc > 1 or int(os.environ.get("WORLD_SIZE", 1)) > 1) and cfg.attributes and cfg.attribute_weight > 0:
        # refused here, before the data is decoded (fit checks it again): before wbc 0.33.0 only in fit, after
        raise WbcError("attributes do not work with --nproc > 1 (their heads sit outside DDP's wrapper)")
    check_batch_divides(cfg.batch_size, nproc if nproc > 1 else int(os.environ.get("WORLD_SIZE", 1)))
    if device_type == "cuda" and nproc > torch.cuda.device_count():
        raise WbcError(f"--nproc {nproc} on cuda needs {nproc} GPUs; PyTorch sees {torch.cuda.device_count()}")
    check_output_file(run_dir / "config.json")  # a path under a file, a folder that cannot be written: one line
    if nproc > 1 and "WORLD_SIZE" not in os.environ:  # start nproc processes, each running this function
        distributed.spawn(_distributed_worker, nproc, cfg, run_dir, data_root, resume, score_test, overwrite)
        done = run_dir / "test_metrics.json"
        return json.loads(done.read_text()) if score_test and done.is_file() else {}
    d = distributed.init_distributed_mode(device_type)
    if not d.is_main:
        console = Console(quiet=True)
    torch.set_num_threads(max(1, cfg.threads // d.world_size))
    run_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    # with --overwrite the earlier run stays whole until every check before training has passed: its split, config
    # (rewritten first, for the checks and for a resume of a run stopped while decoding) are put back on a refusal
    with _put_back_if_refused([run_dir / n for n in _FIRST_WRITTEN], overwrite and d.is_main):
        samples: list[Sample] = []
        refusal: WbcError | None = None
        if d.is_main:  # rank 0 alone scans the data and writes the manifest
            try:
                samples = prepare_samples(cfg, run_dir, root, resume, console)
                # once the data is found: a run stopped by a missing or one-class folder leaves no config behind
                if cfg.init_weights:
                    check_init_weights(cfg, classes_of(samples))
                # with the data root the manifest's paths are relative to, which later commands read them under
                atomic_write_json(run_dir / "config.json", {**cfg.to_dict(), "data_root": str(root.resolve())})
            except WbcError as exc:
                refusal = exc
        # rank 0's refusal stops every rank (before wbc 0.34.0, under torchrun, the others died in the barrier with a
        # gloo traceback); the others then read the manifest rank 0 wrote
        distributed.raise_from_main(refusal)
        samples = samples or read_manifest(run_dir / "manifest.csv", root=root)
        classes = classes_of(samples)
        console.print(f"decoding {len(samples)} images at {cfg.input_size}px ...", highlight=False)
        cache, ok, bad = decode_all(samples, cfg.input_size, workers=max(1, cfg.threads // d.world_size))
        for _path, reason in bad:
            console.print(f"[yellow]skipped unreadable[/] {reason}", highlight=False)
        kept = [samples[i] for i in ok]
        for parts in (("train",), ("val",)) if cfg.folds <= 1 else (("train", "val"),):
            if not any(s.split in parts for s in kept):
                raise WbcError(f"{run_dir / 'manifest.csv'}: no readable {'+'.join(parts)} images "
                               f"({len(bad)} of {len(samples)} could not be read)"
                               + ("; check --data-root (the root the run was trained with)" if not ok else ""))
        check_folds(cfg.folds, kept, run_dir / "manifest.csv", unreadable=len(bad))
        labels = np.array([classes.index(s.label) for s in kept])
        part = np.array([s.split for s in kept])
        trained = np.isin(part, ("train", "val") if cfg.folds > 1 else ("train",))
        untrained = [c for k, c in enumerate(classes) if not np.any(labels[trained] == k)]
        if untrained:  # an output the network never learnt, which wbc classify would still answer with
            raise WbcError(f"{run_dir / 'manifest.csv'}: no readable training images of {', '.join(untrained)} "
                           f"({len(bad)} of {len(samples)} images could not be read); fix or remove them, or leave "
                           f"{'that class' if len(untrained) == 1 else 'those classes'} out of classes")
        check_shares(int(trained.sum()), d.world_size, run_dir / "manifest.csv")
        if bad and d.is_main:
            record_unreadable(run_dir, kept, bad, root)
        folds = np.array([s.fold for s in kept])
        counts = {c: int((labels == k).sum()) for k, c in enumerate(classes)}
        console.print(f"{len(kept)} images ({len(bad)} unreadable skipped): {counts}", highlight=False)

        alt_cache = None
        if cfg.reframe_p > 0:  # the same cells re-framed, for training (decoded again: ~1 min per 10k cells)
            console.print("decoding the re-framed copies ...", highlight=False)
            alt_all, alt_ok, _ = decode_all([samples[i] for i in ok], cfg.input_size, workers=cfg.threads, reframe=True,
                                            tight=cfg.reframe_tight, seed=cfg.seed)
            alt_cache = alt_all if len(alt_ok) == len(ok) else None

        unlabelled = None
        if cfg.unlabelled:  # other labs' cells, no labels (FixMatch, see fit)
            from wbc.crops import DEFAULT_CELL_FRACTION
            from wbc.train.unlabelled import load_unlabelled

            fraction = measure_training_cell_fraction(kept) or DEFAULT_CELL_FRACTION
            held_out = frozenset(s.sha1 or file_sha1(s.path) for s in kept if s.split in ("val", "test"))
            unlabelled = load_unlabelled(cfg.unlabelled, root, cfg.input_size, fraction, cfg.threads,
                                         cfg.unlabelled_crop, exclude=held_out)  # never the run's own val/test
            crop = f", {cfg.unlabelled_crop} crops" if cfg.unlabelled.startswith("txl_pbc:") else ""
            console.print(f"{len(unlabelled)} unlabelled cells from {cfg.unlabelled} (cell fraction "
                          f"{fraction:.3f}{crop})", highlight=False)

        attributes = None
        if cfg.attributes:  # morphological attributes of the training cells (wbc.train.attributes)
            from wbc.train.attributes import attribute_targets, read_wbcatt

            attributes = attribute_targets([s.path for s in kept], read_wbcatt(root / "wbcatt"))
            attributes[part == "test"] = -1  # only the cells trained on reach the heads; the test split's never
            console.print(f"{int((attributes >= 0).any(1).sum())} train/val cells with WBCAtt attributes",
                          highlight=False)
    if d.is_main and overwrite:  # the new run will train: the earlier one goes (its init_weights are not in it)
        clear_run_folder(run_dir)

    def subset(mask: np.ndarray, scored: bool = True) -> Split:
        """Images to score are cut to the network's input now; training images keep their frame for augmentation."""
        images = cache[mask]
        if scored:
            return Split(np.ascontiguousarray(centre_crop(images, cfg.centre_crop)), labels[mask])
        return Split(images, labels[mask], alt_cache[mask] if alt_cache is not None else None,
                     attributes[mask] if attributes is not None else None)

    mean, std = IMAGENET_MEAN, IMAGENET_STD
    test = subset(part == "test")
    if cfg.folds > 1:
        members, oof_logits, oof_labels, fold_summaries = [], [], [], []
        for k in range(cfg.folds):
            console.print(f"[bold]fold {k + 1}/{cfg.folds}[/]")
            tr, va = subset((part != "test") & (folds != k), False), subset((part != "test") & (folds == k))
            net, _ = fit(cfg.updated({"seed": cfg.seed + k}), tr, va, classes, run_dir / f"fold_{k}", mean, std,
                         console, resume, unlabelled)
            lg = predict_logits(net, va.images, mean, std)
            fs = summarise(lg, va.labels, classes)
            atomic_write_json(run_dir / f"fold_{k}" / "val_metrics.json", fs)
            fold_summaries.append(fs)
            members.append(net)
            oof_logits.append(lg)
            oof_labels.append(va.labels)
        final: WbcNet | Ensemble = Ensemble(members).eval()
        save_atomic({"members": [m.state_dict() for m in members], "arch": cfg.model, "dropout": cfg.dropout,
                     "info": ""}, run_dir / "ensemble.pt")
        # members' out-of-fold predictions calibrate the ensemble (no image is scored by a model that saw it)
        val_logits = np.log(np.clip(softmax(np.concatenate(oof_logits)), 1e-12, None))
        val_labels = np.concatenate(oof_labels)
        cv = {m: [f[m] for f in fold_summaries] for m in ("accuracy", "macro_f1")}
        atomic_write_json(run_dir / "cv_metrics.json",
                          {"folds": fold_summaries, **{f"{m}_mean": float(np.mean(v)) for m, v in cv.items()},
                           **{f"{m}_sd": float(np.std(v, ddof=1)) for m, v in cv.items()}})
    else:
        val = subset(part == "val")
        final, _ = fit(cfg, subset(part == "train", False), val, classes, run_dir, mean, std, console, resume,
                       unlabelled)
        if not d.is_main:
            return {}  # rank 0 calibrates, exports and tests
        val_logits = predict_logits(final, val.images, mean, std)
        val_labels = val.labels

    info = finalise_info(cfg, classes, mean, std, val_logits, val_labels, kept, root)  # the images trained on
    # the split it was trained on, as its manifest.csv holds it (its readable rows): `wbc evaluate` tells its own
    # run's split by it wherever the files are (wbc.evaluate.is_own_run)
    info.extra["split_hash"] = split_hash(read_manifest(run_dir / "manifest.csv", root=root))
    ckpt_name = "ensemble.pt" if cfg.folds > 1 else "best.pt"
    ck = torch.load(run_dir / ckpt_name, map_location="cpu", weights_only=False)
    ck["info"] = info.to_json()
    save_atomic(ck, run_dir / ckpt_name)
    check = cells_to_batch(centre_crop(cache[:8], cfg.centre_crop), mean, std)
    diff = export_model(final, info, run_dir / "model.onnx", check)
    console.print(f"exported {run_dir / 'model.onnx'} (max |onnx - torch| logit difference {diff:.2e})")
    atomic_write_json(run_dir / "val_metrics.json", summarise(val_logits, val_labels, classes))
    result: dict[str, Any] = {"train_seconds": time.time() - t_start}
    if not len(test):  # said, not left to silence (before wbc 0.36.0): a lab manifest's rows were all trained on
        source = data_source(cfg, root)
        why = ("; its test images could not be read" if any(s.split == "test" for s in samples) else
               f"; {source} has none, and rows without a split go to train and val only (give it a split column with "
               "test rows to hold some out)" if is_manifest(source) else "")
        console.print(f"no test rows in {run_dir / 'manifest.csv'}: nothing held out was scored{why}", highlight=False)
    elif not score_test:
        console.print(f"test split held back ({len(test)} images, --no-test): after choosing, score it once with "
                      f"wbc evaluate {run_dir / 'manifest.csv'} --split test --model {run_dir / 'model.onnx'}",
                      highlight=False)
    else:
        test_logits = predict_logits(final, test.images, mean, std)
        result.update(summarise(test_logits, test.labels, classes, n_boot=1000, seed=cfg.seed))
        atomic_write_json(run_dir / "test_metrics.json", result)
        lo, hi = result["accuracy_ci95"]  # rounded as `wbc evaluate` prints it
        console.print(
            f"test: accuracy {result['accuracy']:.4f} [{lo:.4f}, {hi:.4f}]  macro-F1 {result['macro_f1']:.4f}  "
            f"min recall {min(r for r in result['recall'].values() if r is not None):.4f}", highlight=False)
    console.print(f"run finished in {result['train_seconds'] / 60:.1f} min: {run_dir}")
    return result


def finished_run(run_dir: Path, cfg: TrainConfig) -> str | None:
    """How far a finished run trained ("8 of 8 epochs", "early-stopped after 5 of 8 epochs"; each fold's, in a
    cross-validation run), or None when `--resume` has something to do: a ``last.pt`` short of that, or no exported
    ``model.onnx`` (the run stopped before its export). Before wbc 0.36.0 a finished run was exported again, the same
    weights under a new ``model_id`` (its creation time), so results and cases named two ids for one model."""
    lasts = [run_dir / "last.pt"] if cfg.folds <= 1 else [run_dir / f"fold_{k}" / "last.pt" for k in range(cfg.folds)]
    if not (run_dir / "model.onnx").is_file() or not all(p.is_file() for p in lasts):
        return None
    said = []
    for p in lasts:
        try:
            ck = torch.load(p, map_location="cpu", weights_only=False)
            epochs, stopped = int(ck["epoch"]) + 1, bool((ck.get("history") or [{}])[-1].get("stopped"))
        except Exception:  # unreadable: fit reads it and says what is wrong
            return None
        if epochs < cfg.epochs and not stopped:
            return None
        said.append(f"{'early-stopped after ' if stopped and epochs < cfg.epochs else ''}{epochs} of {cfg.epochs} "
                    "epochs")
    return ", ".join(dict.fromkeys(said))


def check_batch_divides(batch_size: int, world_size: int) -> None:
    """Refuse a ``batch_size`` that ``world_size`` processes cannot share equally: each takes ``batch_size //
    world_size``, so the global batch, the steps per epoch and the schedule would not be one process's (before wbc
    0.32.0, --nproc 3 with batch 32 trained on global batches of 30 without a word).

    >>> check_batch_divides(32, 3)
    Traceback (most recent call last):
    wbc.errors.WbcError: batch_size 32 does not split evenly among 3 processes: give a multiple of 3 (30 or 33)...
    """
    if world_size > 1 and batch_size % world_size:
        lower = batch_size // world_size * world_size
        sizes = f"{lower} or {lower + world_size}" if lower else f"{world_size}"
        raise WbcError(f"batch_size {batch_size} does not split evenly among {world_size} processes: give a multiple "
                       f"of {world_size} ({sizes}), or another --nproc")


def check_shares(n_train: int, world_size: int, manifest: Path) -> None:
    """Refuse more processes than training images: each process takes ``n_train // world_size`` of every epoch
    (DistributedSampler, drop_last), so none took a step, and before wbc 0.34.0 the run exported, calibrated and
    scored its initial random weights as a finished run.

    >>> check_shares(2, 4, Path("run/manifest.csv"))
    Traceback (most recent call last):
    wbc.errors.WbcError: run/manifest.csv: 2 readable training image(s) cannot be shared among 4 processes (each...
    """
    if world_size > n_train:
        fewer = f"--nproc {n_train} or fewer" if n_train > 1 else "one process (no --nproc)"
        raise WbcError(f"{manifest}: {n_train} readable training image(s) cannot be shared among {world_size} "
                       f"processes (each would take none, and no training step would be taken): train with {fewer}, "
                       "or with more images")


def _distributed_worker(cfg: TrainConfig, run_dir: Path, data_root: str | os.PathLike[str] | None,
                        resume: bool, score_test: bool = True, overwrite: bool = False) -> None:
    """One rank of ``wbc train --nproc N`` (see :func:`wbc.train.distributed.spawn`)."""
    run_training(cfg, run_dir, data_root=data_root, resume=resume, score_test=score_test, overwrite=overwrite)


def measure_training_cell_fraction(samples: list[Sample], per_class: int = 25, seed: int = 0) -> float | None:
    """Median cell-diameter / crop-side ratio of the training crops, so smear crops can match it.

    A file that cannot be read is passed over: before wbc 0.33.0 one unreadable image among those picked dropped the
    whole measurement, and `wbc analyze` cut the model's smear cells at the default fraction without a word."""
    from wbc.crops import measure_cell_fraction
    from wbc.io import read_image

    rng = np.random.default_rng(seed)
    train = [s for s in samples if s.split in ("train", "")]
    picked = []
    for label in sorted({s.label for s in train}):
        group = [s for s in train if s.label == label]
        picked += [group[i] for i in rng.permutation(len(group))[:per_class]]

    def readable() -> Iterator[np.ndarray]:
        for s in picked:
            try:
                yield read_image(s.path)
            except (WbcError, OSError, ValueError):
                continue

    try:
        return measure_cell_fraction(readable())
    except (ValueError, WbcError):
        return None


def finalise_info(
    cfg: TrainConfig, classes: list[str], mean, std, val_logits: np.ndarray, val_labels: np.ndarray,
    samples: list[Sample], root: Path, members: int | None = None, runs: Sequence[TrainConfig] = (),
) -> ModelInfo:
    """Metadata for export: temperature and review threshold fitted on validation data. ``members``: how many
    networks a cross-validation ensemble holds, when not ``cfg.folds`` (`wbc ensemble` of several such runs).
    ``runs``: the configurations of the runs `wbc ensemble` combines, whose seeds and starting weights the metadata
    names (before wbc 0.33.0 it described the first run alone, and a --folds model's architecture was its members').
    ``extra["reframe"]``: the framing its cells were cached with (:data:`wbc.train.data.TRAINED_FRAMING`), so `wbc
    classify` frames them as training did even if wbc's default framing changes (since wbc 0.36.0)."""
    cal = calibrate(val_logits, val_labels, cfg.review_target_accuracy)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    cv = cfg.folds > 1  # every non-test row trained K-1 members, and the validation answers are out-of-fold
    trained = ("train", "val") if cv else ("train",)
    counts = {c: sum(1 for s in samples if s.label == c and s.split in trained) for c in classes}
    data = Path(cfg.data)  # a manifest by its folder too: every run's is manifest.csv
    data_desc = "-".join(filter(None, (data.parent.name, data.stem))) if is_manifest(data) else data.name
    n = members or cfg.folds
    of_runs = f"{n // cfg.folds} x " if cv and n != cfg.folds else ""
    how = (f"{of_runs}{cfg.folds}-fold cross-validation ensemble{'s' if of_runs else ''} ({n} members) on the train "
           "and val splits" if cv else f"ensemble of {len(runs)} runs, each on the train split" if runs else
           "train split")
    configs = list(runs) or [cfg]
    starts = sorted({Path(c.init_weights).name for c in configs if c.init_weights})
    start = f"; started from {', '.join(starts)}" if starts else ""
    seeds = f"seeds {', '.join(str(c.seed) for c in configs)}" if len(configs) > 1 else f"seed {cfg.seed}"
    networks = n if cv else len(runs)
    return ModelInfo(
        classes=classes, input_size=cfg.input_size, centre_crop=cfg.centre_crop, mean=list(mean), std=list(std),
        architecture=f"ensemble of {networks} x {cfg.model}" if networks > 1 else cfg.model,
        version=cfg.version, model_id=f"wbc-{cfg.model}-{data_desc}-{stamp}", temperature=cal.temperature,
        review_threshold=cal.review_threshold, review_target_accuracy=cal.review_target_accuracy,
        training_data=(f"{data_desc}: {how} ({sum(counts.values())} of {len(samples)} images: {counts}); "
                       f"split seed {cfg.split_seed}, {seeds}{start}"),
        created=stamp,
        metrics=summarise(val_logits, val_labels, classes) | {"split": "out-of-fold" if cv else "val"},
        extra={"config": {k: v for k, v in cfg.to_dict().items() if k != "extra"}, "reframe": asdict(TRAINED_FRAMING)},
        preprocessing=Preprocessing(cell_fraction=measure_training_cell_fraction(samples) or None),
    )


def check_ensemble_output(runs: Sequence[str | os.PathLike[str]], out: Path) -> None:
    """Refuse, before anything is loaded, an ensemble that would overwrite a run or count one twice: ``out`` one of
    the ``runs`` (its model.onnx replaced, and the ensemble.pt added there is what `wbc export RUN` then loads), a
    folder holding a training run, or a file; a run given twice (weighted double)."""
    resolved = [Path(r).resolve() for r in runs]
    for i, r in enumerate(resolved):
        if r in resolved[:i]:
            raise WbcError(f"{runs[i]}: given twice; each run is one member of the ensemble")
    if out.resolve() in resolved:
        raise WbcError(f"{out}: --output is one of the runs (its model would be replaced); give a new folder")
    if out.exists() and not out.is_dir():
        raise WbcError(f"{out}: is a file; --output is the folder the ensemble is written to")
    if any((out / name).exists() for name in ("best.pt", "last.pt", "config.json")):
        raise WbcError(f"{out}: holds a training run (its model would be replaced); give a new folder")


def _run_config(run: str | os.PathLike[str], info: ModelInfo) -> TrainConfig:
    """A run's training configuration: the one its checkpoint carries (``extra["config"]``), else its config.json."""
    saved, where = info.extra.get("config"), Path(run) / "config.json"
    if not isinstance(saved, dict):
        try:
            saved = json.loads(where.read_text())
        except (OSError, ValueError) as exc:
            raise WbcError(f"{where}: unreadable run config ({exc})") from None
        if not isinstance(saved, dict):
            raise WbcError(f"{where}: not a run config (a JSON object of training options)")
    try:
        return TrainConfig().updated(as_trained(saved))
    except WbcError as exc:
        raise WbcError(f"{where}: {exc}") from None


def _same_networks(runs: Sequence[str | os.PathLike[str]], nets: Sequence[Sequence[WbcNet]]) -> None:
    """Refuse two runs holding one network (a copied run folder): it would be weighted double."""
    import hashlib

    seen: dict[str, int] = {}
    for i, run_nets in enumerate(nets):
        for net in run_nets:
            digest = hashlib.sha1()
            for t in net.state_dict().values():
                digest.update(t.detach().cpu().numpy().tobytes())
            j = seen.setdefault(digest.hexdigest(), i)
            if j != i:
                raise WbcError(f"{runs[i]}: holds the same network as {runs[j]}; each run is one member of the "
                               "ensemble")


#: At most this many unreadable images are named one by one on the console (all of them in skipped.csv).
UNREADABLE_SHOWN = 10


def _say_unreadable(bad: Sequence[tuple[str, str]], n: int, split: str, out: Path, console: Console) -> None:
    """Name the first :data:`UNREADABLE_SHOWN` of the ``n`` images of ``split`` that could not be read, and count them:
    before wbc 0.36.0 `wbc ensemble` dropped them without a word and scored the readable rest as if it were the
    split."""
    if not bad:
        return
    for _path, reason in bad[:UNREADABLE_SHOWN]:
        console.print(f"[yellow]skipped unreadable[/] {escape(reason)}", highlight=False)
    console.print(f"[yellow]skipped[/] {len(bad)} of {n} {split} images, which could not be read: left out, every one "
                  f"named in {escape(str(out / 'skipped.csv'))}", highlight=False)


def _refuse_unread(manifest: Path, split: str, n: int, bad: Sequence[tuple[str, str]], root: Path,
                   made: Sequence[Path]) -> None:
    """Refuse, before anything is written, an ensemble whose val (or test) rows are none of them readable: before
    wbc 0.36.0 it calibrated on nothing and ended in a scikit-learn traceback. Usually the manifest's paths are
    relative to another data root. The folders :func:`check_output_file` made for the output (``made``, the output
    folder first, then its parents) are removed again, up to the first one something else has filled since (in
    wbc 0.36.0's first cut only the output folder: ``-o new/deep/ens`` left ``new/deep/``)."""
    for folder in made:
        try:
            folder.rmdir()
        except OSError:
            break
    first = f"; first: {bad[0][1]}" if bad else ""
    if not n:
        raise WbcError(f"{manifest}: no {split} rows to calibrate the ensemble on")
    or_not = ", or --no-test" if split == "test" else ""
    raise WbcError(f"{manifest}: none of its {n} {split} images could be read under the data root {root}{first}; "
                   f"give --data-root or WBC_DATA_DIR where its paths lie{or_not}")


def run_ensemble(
    runs: list[Path], out_dir: str | os.PathLike[str], data_root: str | os.PathLike[str] | None = None,
    console: Console | None = None, score_test: bool = True,
) -> dict[str, Any]:
    """Combine finished runs that share one split into a mean-probability ensemble, calibrated on that
    split's validation images, exported as one ONNX model and scored on its test images (``score_test=False``:
    held back, as in :func:`run_training`).

    Cross-validation runs (``--folds K``: the manifest's rows carry their folds, ``ensemble.pt`` one member per fold)
    are calibrated out of fold, as :func:`run_training` calibrates one: each train or val row is scored by the
    members that never trained on it (fold k's by every run's k-th member). Their val rows trained every other
    member, so a calibration on them would be in-sample (a review threshold re-fitted so fell from 0.99 to 0.85).
    """
    from wbc.train.export import load_checkpoint

    console = console or Console(stderr=True)
    out = Path(out_dir)
    root = default_data_root(data_root)
    manifests = [(Path(r) / "manifest.csv") for r in runs]
    for m in manifests:
        if not m.is_file():
            raise WbcError(f"{m.parent}: not a run folder (no manifest.csv)")
    if len({m.read_bytes() for m in manifests}) != 1:
        raise WbcError("the runs were trained on different splits; an ensemble needs one shared manifest.csv")
    check_ensemble_output(runs, out)
    loaded = [load_checkpoint(r) for r in runs]
    infos = [i for _, i in loaded]
    for run, info in zip(runs, infos, strict=True):
        for field in ("classes", "input_size", "centre_crop", "mean", "std"):
            if getattr(info, field) != getattr(infos[0], field):
                raise WbcError(f"{run}: {field} {getattr(info, field)}, {runs[0]}: {getattr(infos[0], field)}; the "
                               "runs of an ensemble must share it")
    nets = [[cast(WbcNet, m) for m in (net.members if isinstance(net, Ensemble) else [net])] for net, _ in loaded]
    arch = nets[0][0].arch
    for run, run_nets in zip(runs, nets, strict=True):
        other = next((m.arch for m in run_nets if m.arch != arch), None)
        if other is not None:
            raise WbcError(f"{run}: architecture {other}, {runs[0]}: {arch}; an ensemble needs one architecture")
    _same_networks(runs, nets)
    members = [m for run_nets in nets for m in run_nets]
    ensemble = Ensemble(members).eval()
    run_cfgs = [_run_config(r, i) for r, i in zip(runs, infos, strict=True)]
    cfg = run_cfgs[0]
    samples = read_manifest(manifests[0], root=root)
    folds = sorted({s.fold for s in samples if s.fold >= 0 and s.split != "test"})
    for run, run_nets in zip(runs, nets, strict=True):
        if folds and folds != list(range(len(run_nets))):
            raise WbcError(f"{run}: {len(run_nets)} networks for its manifest's {len(folds)} cross-validation folds; "
                           "a cross-validation run's ensemble.pt holds one network per fold, in fold order")
    cfg = cfg.updated({"folds": len(folds) if folds else 0})
    made = [q for q in (out, *out.parents) if not q.exists()]  # what check_output_file creates, removed on refusal
    check_output_file(out / "model.onnx")  # the runs are checked: now a folder that cannot be written, before decoding
    torch.set_num_threads(cfg.threads)
    classes, size = infos[0].classes, infos[0].input_size
    mean, std = infos[0].mean, infos[0].std
    parts, fold_of = {}, np.zeros(0, int)
    unreadable: dict[str, list[tuple[str, str]]] = {}
    for split in ("val", "test") if score_test else ("val",):
        subset = [s for s in samples if (s.split != "test" if split == "val" and folds else s.split == split)]
        if split == "test" and not subset:  # a manifest of train and val rows (`wbc train --data my.csv`)
            console.print(f"{escape(str(manifests[0]))}: no test rows, so no test score", highlight=False)
            continue
        cache, ok, bad = decode_all(subset, size, workers=cfg.threads)
        unreadable[split] = bad
        what = "train/val" if split == "val" and folds else split
        if not ok:
            _refuse_unread(manifests[0], what, len(subset), bad, root, made)
        _say_unreadable(bad, len(subset), what, out, console)
        parts[split] = Split(np.ascontiguousarray(centre_crop(cache, infos[0].centre_crop)),
                             np.array([classes.index(subset[i].label) for i in ok]))
        if split == "val":
            fold_of = np.array([subset[i].fold for i in ok])
    if folds:  # out of fold: fold k's rows by every run's k-th member, as run_training calibrates one such run
        probs = np.zeros((len(parts["val"]), len(classes)))
        for k in folds:
            rows = fold_of == k
            probs[rows] = np.mean([softmax(predict_logits(run_nets[k], parts["val"].images[rows], mean, std))
                                   for run_nets in nets], axis=0)
        val_logits = np.log(np.clip(probs, 1e-12, None)).astype(np.float32)
    else:
        val_logits = predict_logits(ensemble, parts["val"].images, mean, std)
    info = finalise_info(cfg, classes, mean, std, val_logits, parts["val"].labels, samples, root,
                         members=len(members), runs=run_cfgs)
    info.architecture = f"ensemble of {len(members)} x {arch}"
    info.model_id = info.model_id.replace(f"wbc-{cfg.model}", f"wbc-ensemble{len(members)}-{arch}")
    info.extra["members"] = [str(r) for r in runs]
    info.extra["split_hash"] = split_hash(samples)  # every member's split (checked above), as a run's model records it
    out.mkdir(parents=True, exist_ok=True)
    (out / "test_metrics.json").unlink(missing_ok=True)  # never another model's test score beside this one
    save_atomic({"members": [m.state_dict() for m in members], "arch": arch, "dropout": cfg.dropout,
                 "info": info.to_json()}, out / "ensemble.pt")
    atomic_write_bytes(out / "manifest.csv", manifests[0].read_bytes())
    atomic_write_csv(out / "skipped.csv", ["path", "reason"],  # as a run's: never an earlier ensemble's list
                     [(path, "unreadable: " + reason.removeprefix(f"{path}: "))
                      for bad in unreadable.values() for path, reason in bad])
    check = cells_to_batch(parts["val"].images[:8], mean, std)
    diff = export_model(ensemble, info, out / "model.onnx", check)
    atomic_write_json(out / "val_metrics.json", {**summarise(val_logits, parts["val"].labels, classes),
                                                 "unreadable": [list(e) for e in unreadable["val"]]})
    console.print(f"exported {out / 'model.onnx'} ({len(members)} members, max |onnx - torch| {diff:.2e})",
                  highlight=False)
    if not score_test:
        console.print(f"test split held back (--no-test): after choosing, score it once with wbc evaluate "
                      f"{out / 'manifest.csv'} --split test --model {out / 'model.onnx'}", highlight=False)
        return {}
    if "test" not in parts:  # no test rows: nothing to score (said above), as run_training then scores none
        return {}
    test_logits = predict_logits(ensemble, parts["test"].images, mean, std)
    result = summarise(test_logits, parts["test"].labels, classes, n_boot=1000, seed=cfg.seed)
    result["unreadable"] = [list(e) for e in unreadable["test"]]  # as `wbc evaluate`'s metrics.json lists them
    atomic_write_json(out / "test_metrics.json", result)
    console.print(f"test accuracy {result['accuracy']:.4f} {result['accuracy_ci95']}", highlight=False)
    return result
