"""Train the compact U-Net WBC segmenter on the BCCD *train* split masks and export it to ONNX.

    wbc train-segmenter --data-root ../shared/data --output src/wbc/models/default/wbc_segmenter.onnx --overwrite

Fields are brought to the working scale exactly as at inference (red cells ~32 px, measured per image by
:func:`wbc.segment.classical.estimate_rbc_diameter`) and white-balanced by
:func:`wbc.segment.learned.normalise_field`. Augmentation: flips, 90-degree turns, +-25 % scale (covers
the scale estimator's error), hue/saturation/brightness/contrast jitter (other stains and cameras).
Targets: 0 background, 1 cytoplasm, 2 nucleus (BCCD masks quantised at 64 and 192). The val split picks
the epoch; the test split is never read here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from wbc.errors import WbcError
from wbc.evaluate.smears import load_bccd
from wbc.io import read_image
from wbc.segment.classical import estimate_rbc_diameter, resample, work_factor
from wbc.segment.learned import normalise_field


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """4-level U-Net, ~0.5 M parameters; bilinear upsampling keeps the ONNX graph simple."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 48, 64, 96), classes: int = 3) -> None:
        super().__init__()
        self.enc = nn.ModuleList()
        cin = 3
        for w in widths:
            self.enc.append(_block(cin, w))
            cin = w
        self.dec = nn.ModuleList(_block(widths[i + 1] + widths[i], widths[i]) for i in range(len(widths) - 1))
        self.head = nn.Conv2d(widths[0], classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, blk in enumerate(self.enc):
            x = blk(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for blk in reversed(self.dec):
            s = skips.pop()
            x = F.interpolate(x, size=s.shape[-2:], mode="bilinear", align_corners=False)
            x = blk(torch.cat([x, s], 1))
        return self.head(x)


def _quantise(mask: np.ndarray) -> np.ndarray:
    if mask.ndim == 3:
        mask = mask[:, :, :3].max(axis=2)
    return (mask > 64).astype(np.uint8) + (mask > 192).astype(np.uint8)


def load_split(root: Path, split: str) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """(rgb, target, working-scale factor) per field with a mask, at full resolution."""
    out = []
    for it in load_bccd(root, split):
        if it.mask is None:
            continue
        rgb = read_image(it.image)
        raw = cv2.imdecode(np.frombuffer(Path(it.mask).read_bytes(), np.uint8), cv2.IMREAD_UNCHANGED)
        if raw is None:
            raise WbcError(f"{it.mask}: not a readable mask image")
        tgt = _quantise(raw)
        out.append((rgb, tgt, work_factor(rgb, estimate_rbc_diameter(rgb))))
    return out


def check_masks(root: Path) -> None:
    """Refuse, before any field is read, a data root whose BCCD train or val fields have no mask: the masks come
    apart from BCCD (Banik et al.), and before wbc 0.33.0 a root without them was a ``high <= 0`` traceback, and one
    with train masks only trained every iteration, scored nothing on validation and ended in a FileNotFoundError."""
    for split in ("train", "val"):
        items = load_bccd(root, split)
        if not any(it.mask is not None for it in items):
            bccd = root / "bccd" if (root / "bccd").is_dir() else root
            raise WbcError(f"{bccd / 'masks'}: none of the {len(items)} BCCD {split} fields has a mask "
                           "(BloodImage_Mask_NNNNN.png); train-segmenter learns from the masks, which BCCD's own "
                           "repository does not ship (Banik et al. 2020)")


def _jitter_colour(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[:, :, 0] = (hsv[:, :, 0] + rng.uniform(-8, 8)) % 180
    hsv[:, :, 1] *= rng.uniform(0.7, 1.3)
    hsv[:, :, 2] *= rng.uniform(0.85, 1.15)
    out = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    c = rng.uniform(0.8, 1.2)
    out = (out - out.mean()) * c + out.mean()
    return np.clip(out, 0, 255).astype(np.uint8)


def sample(
    item: tuple[np.ndarray, np.ndarray, float], size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One augmented (3, size, size) input and (size, size) target crop, biased towards the WBC."""
    rgb, tgt, factor = item
    f = factor * rng.uniform(0.75, 1.25)
    img = _jitter_colour(resample(rgb, f), rng)
    t = cv2.resize(tgt, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_NEAREST)
    h, w = t.shape
    if h < size or w < size:
        ph, pw = max(0, size - h), max(0, size - w)
        img = np.pad(img, ((0, ph), (0, pw), (0, 0)), mode="reflect")
        t = np.pad(t, ((0, ph), (0, pw)), mode="reflect")
        h, w = t.shape
    ys, xs = np.nonzero(t == 2)
    if ys.size and rng.random() < 0.7:
        k = rng.integers(ys.size)
        cy = int(np.clip(ys[k] + rng.integers(-size // 3, size // 3 + 1), size // 2, h - size + size // 2))
        cx = int(np.clip(xs[k] + rng.integers(-size // 3, size // 3 + 1), size // 2, w - size + size // 2))
        y0, x0 = cy - size // 2, cx - size // 2
    else:
        y0, x0 = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    x = normalise_field(img)[:, y0 : y0 + size, x0 : x0 + size]
    y = t[y0 : y0 + size, x0 : x0 + size]
    if rng.random() < 0.5:
        x, y = x[:, :, ::-1], y[:, ::-1]
    turns = int(rng.integers(4))
    x, y = np.rot90(x, turns, axes=(1, 2)), np.rot90(y, turns)
    return np.ascontiguousarray(x), np.ascontiguousarray(y)


def dice_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    p = logits.softmax(1)
    loss = torch.zeros((), device=logits.device)
    for pred, true in ((p[:, 2], (y == 2).float()), (p[:, 1] + p[:, 2], (y >= 1).float())):
        inter = (pred * true).sum()
        loss = loss + 1 - (2 * inter + 1) / (pred.sum() + true.sum() + 1)
    return loss / 2


@torch.no_grad()
def evaluate(net: nn.Module, items: list[tuple[np.ndarray, np.ndarray, float]]) -> dict[str, float]:
    """Mean per-field nucleus and cell Dice at the working scale (val split)."""
    net.eval()
    nd: list[float] = []
    cd: list[float] = []
    for rgb, tgt, factor in items:
        img = resample(rgb, factor)
        t = cv2.resize(tgt, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_NEAREST)
        x = normalise_field(img)
        h, w = x.shape[1:]
        x = np.pad(x, ((0, 0), (0, (-h) % 16), (0, (-w) % 16)), mode="edge")
        pred = net(torch.from_numpy(x)[None])[0, :, :h, :w].argmax(0).numpy()
        for lv, acc in ((2, nd), (1, cd)):
            a, b = pred >= lv, t >= lv
            s = a.sum() + b.sum()
            acc.append(2 * (a & b).sum() / s if s else 1.0)
    net.train()
    return {"nucleus_dice": float(np.mean(nd)), "cell_dice": float(np.mean(cd))}


def export(net: nn.Module, path: Path, model_id: str, metrics: dict[str, float]) -> None:
    """ONNX (opset 17, dynamic H/W) with metadata, written atomically: a failed write keeps the model there."""
    import onnx

    net.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.onnx")
    torch.onnx.export(
        net,
        (torch.zeros(1, 3, 192, 256),),
        str(tmp),
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {2: "h", 3: "w"}, "logits": {2: "h", 3: "w"}},
        opset_version=17,
        dynamo=False,
    )
    m = onnx.load(str(tmp))
    for k, v in {
        "model_id": model_id,
        "classes": "background,cytoplasm,nucleus",
        "metrics": json.dumps(metrics),
    }.items():
        p = m.metadata_props.add()
        p.key, p.value = k, v
    onnx.save(m, str(tmp))
    tmp.replace(path)


def train_segmenter(
    root: Path, output: Path, iters: int = 600, eval_every: int = 150, batch: int = 8, size: int = 128,
    lr: float = 3e-3, threads: int = 1, seed: int = 0, log: Callable[[str], None] = print, overwrite: bool = False,
) -> dict[str, float]:
    """Train the U-Net on BCCD train, choose the iteration on BCCD val, export the best to ``output`` (ONNX).

    ``wbc train-segmenter`` runs this. Every new best is exported at once, so an interrupted run still leaves a
    usable model. Returns the best validation metrics. An existing ``output`` is replaced only with ``overwrite``
    (:func:`wbc.train.export.check_new_output`): the first validation's checkpoint, however poor, replaces it.
    """
    from wbc.train.export import check_new_output

    check_new_output(output, overwrite)
    check_masks(root)
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    t0 = time.time()
    train, val = load_split(root, "train"), load_split(root, "val")
    log(f"loaded {len(train)} train / {len(val)} val fields in {time.time() - t0:.0f}s")
    net = UNet()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=iters, pct_start=0.1)
    weight = torch.tensor([1.0, 2.0, 2.0])
    best, best_metrics = -1.0, {}
    for it in range(1, iters + 1):
        items = [sample(train[int(rng.integers(len(train)))], size, rng) for _ in range(batch)]
        x = torch.from_numpy(np.stack([b[0] for b in items]))
        y = torch.from_numpy(np.stack([b[1] for b in items]).astype(np.int64))
        logits = net(x)
        loss = F.cross_entropy(logits, y, weight=weight) + dice_loss(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if it % 50 == 0:
            log(f"it {it} loss {loss.item():.3f} {time.time() - t0:.0f}s")
        if it % eval_every == 0 or it == iters:
            m = evaluate(net, val)
            score = m["nucleus_dice"] + m["cell_dice"]
            log(f"it {it} val {m}")
            if score > best:
                best, best_metrics = score, m
                export(net, output, f"wbc-unet-bccd-it{it}-s{seed}", {"val_" + k: v for k, v in m.items()})
                net.train()
    log(f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB) val {best_metrics}")
    return best_metrics
