"""Train the learned WBC detector + outliner (:mod:`wbc.segment.detector`) and export it to ONNX.

    wbc train-detector --output src/wbc/models/default/wbc_detector.onnx --minutes 60 --overwrite
    wbc train-detector --output runs/detector/wbc_detector.onnx --iters 650   # repeatable with --seed

Data (read-only, under the data root):

* BCCD *train* split: VOC WBC boxes and the nucleus/cytoplasm masks (the only source of outlines);
* TXL-PBC *train* split, all three origins (BCCD 640x480, BCD 416x416, PBC 360x363 at 100x): WBC boxes.
  TXL fields that are copies of BCCD *test* or *val* images are left out (:func:`txl_training_files`): those
  ``sources.csv`` names (``bccd_image``, the BCCD-origin copies) and, since wbc 0.36.0, those found by content, byte
  for byte or resized (``wbc.evaluate.smears.field_thumbnail``: 20 BCD-origin fields are BCCD val/test images resized
  to 416x416). The shipped detector trained on those 20 and was not retrained; its scores leave the BCCD fields they
  copy out instead (``wbc.evaluate.smears.training_files``; docs/smear_analysis.md). ``holdout`` (``--holdout
  ORIGIN``) leaves a TXL origin out (and, for ``bccd``, the BCCD fields too) for the leave-one-source-out table.

Every field is cached once as uint8, resized so its median WBC box side is :data:`CACHE_WBC` px.
A sample rescales a cached field so that WBCs are 0.3-3x :data:`~wbc.segment.detector.NOMINAL_WBC`
(half the samples within 0.7-1.4x, where inference runs after its scale refinement), takes a 256 px crop
(padded with background), jitters hue/saturation/brightness/contrast/gamma, blurs (out-of-focus fields)
and adds noise, flips and turns. Validation (TXL-PBC val and BCCD val) runs the inference code itself
(:class:`ValDetector`: scale estimate, refinement, decoding), and picks the checkpoint by detection F1
plus the mask Dice; TXL-PBC val fields that copy a BCCD train image, or any training field byte for byte or
(since wbc 0.36.0) resized, are left out of it (:func:`build_val_set`). Neither test split is trained or validated
on: the TXL-PBC test split is never read, and BCCD test's images only to find their copies in TXL-PBC train.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import cv2
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from wbc.errors import WbcError
from wbc.evaluate.smears import (
    TXL_ORIGINS,
    TrainingIndex,
    bccd_names,
    file_index,
    load_bccd,
    read_gt_mask,
    txl_files,
)
from wbc.io import atomic_write_text, read_image
from wbc.segment import detector as D

#: WBC box side (px) of the cached fields (the largest training size is ~3x nominal, upsampled from it).
CACHE_WBC: float = 110.0
CROP: int = 192
ORIGINS: tuple[str, ...] = TXL_ORIGINS


# ----------------------------------------------------------------------------------------------- network
def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DetectorNet(nn.Module):
    """EfficientNet-Lite0 stages at strides 2-16 (ImageNet weights), a U-Net decoder, three heads.

    Heads: WBC-centre heatmap and log box size at stride 4; nucleus and cell logits at stride 2,
    upsampled bilinearly to the input size (a stride-1 head doubled the training cost).
    """

    def __init__(self, pretrained: bool = True) -> None:
        super().__init__()
        import timm
        from timm.models import FeatureInfo

        self.encoder = timm.create_model("efficientnet_lite0", features_only=True, out_indices=(0, 1, 2, 3),
                                         pretrained=False)
        if pretrained:
            from wbc.train.models import efficientnet_lite0_imagenet_state

            state = efficientnet_lite0_imagenet_state()
            own = self.encoder.state_dict()
            self.encoder.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)
        # the stem and the stride-2/4 stages stay at their ImageNet weights (generic edges and colours;
        # most of the backward pass's cost on a contended CPU)
        for name, p in self.encoder.named_parameters():
            if name.startswith(("conv_stem", "bn1", "blocks.0", "blocks.1")):
                p.requires_grad_(False)
        # features_only models carry a FeatureInfo; create_model is annotated as returning a plain nn.Module
        c2, c4, c8, c16 = cast(FeatureInfo, self.encoder.feature_info).channels()
        self.lat16 = _conv(c16, 64)
        self.up8 = _conv(64 + c8, 40)
        self.up4 = _conv(40 + c4, 32)
        self.up2 = _conv(32 + c2, 16)
        self.hm = nn.Sequential(_conv(32, 32), nn.Conv2d(32, 1, 1))
        self.size = nn.Sequential(_conv(32, 32), nn.Conv2d(32, 2, 1))
        self.mask = nn.Sequential(_conv(16, 16), nn.Conv2d(16, 2, 1))
        hm_out = self.hm[-1]
        assert isinstance(hm_out, nn.Conv2d) and hm_out.bias is not None
        nn.init.constant_(hm_out.bias, -4.0)

    @staticmethod
    def _up(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f2, f4, f8, f16 = self.encoder(x)
        y = self.lat16(f16)
        y = self.up8(torch.cat([self._up(y, f8), f8], 1))
        y4 = self.up4(torch.cat([self._up(y, f4), f4], 1))
        y2 = self.up2(torch.cat([self._up(y4, f2), f2], 1))
        m = self._up(self.mask(y2), x)  # stride-2 logits, bilinear to the input size
        return self.hm(y4), self.size(y4), m  # logits, log sizes, mask logits


class ExportWrapper(nn.Module):
    """What the ONNX file computes: probabilities instead of logits."""

    def __init__(self, net: DetectorNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        hm, size, m = self.net(x)
        return torch.sigmoid(hm), size, torch.sigmoid(m)


# -------------------------------------------------------------------------------------------------- data
@dataclass
class Field:
    """A cached field: uint8 RGB at :data:`CACHE_WBC`, WBC boxes there, optional 0/1/2 mask."""

    name: str
    origin: str  # bccd / bcd / pbc, or "bccd_voc" for BCCD's own fields with masks
    rgb: np.ndarray
    boxes: np.ndarray  # (n, 4) float32 x0, y0, x1, y1
    mask: np.ndarray | None
    path: Path | None = None


def _yolo_boxes(path: Path, w: int, h: int) -> np.ndarray:
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            p = line.split()
            if len(p) >= 5 and p[0] == "0":
                cx, cy, bw, bh = (float(v) for v in p[1:5])
                rows.append(((cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h))
    return np.asarray(rows, np.float32).reshape(-1, 4)


def _cache(name: str, origin: str, rgb: np.ndarray, boxes: np.ndarray, mask: np.ndarray | None,
           default_wbc: float, path: Path | None = None) -> Field:
    side = float(np.median(np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]))) if len(boxes) else 0
    f = CACHE_WBC / (side if side > 8 else default_wbc)
    h, w = rgb.shape[:2]
    size = (max(16, round(w * f)), max(16, round(h * f)))
    small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
    m = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST) if mask is not None else None
    return Field(name, origin, small, boxes * np.float32(f), m, path)


def load_init(init: Path) -> dict[str, torch.Tensor]:
    """The weights of a ``.pt`` `wbc train-detector` wrote (beside its ``.onnx``), checked to fit the network before
    any field is read: a missing file, the ``.onnx`` itself or a classifier's ``.pt`` were tracebacks after the data
    was loaded."""
    try:
        state = torch.load(init, map_location="cpu", weights_only=True)
        DetectorNet(pretrained=False).load_state_dict(state)
    except Exception as exc:  # missing, not a torch file, another network's weights
        first = (str(exc).strip().splitlines() or [""])[0]
        raise WbcError(f"{init}: not a detector checkpoint (the .pt wbc train-detector writes beside its .onnx): "
                       f"{type(exc).__name__}: {first}") from None
    return cast(dict[str, torch.Tensor], state)


def load_txl(root: Path, split: str, origins: tuple[str, ...] = ORIGINS, exclude_bccd: AbstractSet[str] = frozenset(),
             cache: bool = True, files: Sequence[tuple[dict[str, str], Path]] | None = None) -> list[Field]:
    """TXL-PBC fields of ``split`` from ``origins``; copies of the BCCD images in ``exclude_bccd`` left out. ``files``:
    these ``sources.csv`` rows and files instead (:func:`txl_training_files`)."""
    out = []
    txl = root / "txl_pbc"
    for r, img in txl_files(root, split, origins, exclude_bccd) if files is None else files:
        rgb = read_image(img)
        boxes = _yolo_boxes(txl / "labels" / split / f"{r['stem']}.txt", rgb.shape[1], rgb.shape[0])
        default = {"bccd": 214.0, "bcd": 152.0, "pbc": 134.0}[r["origin"]]
        if cache:
            out.append(_cache(r["stem"], r["origin"], rgb, boxes, None, default, img))
        else:
            out.append(Field(r["stem"], r["origin"], rgb, boxes, None, img))
    return out


def _bccd_mask(path: Path | None) -> np.ndarray | None:
    if path is None:
        return None
    nuc, cell = read_gt_mask(path)
    return cell.astype(np.uint8) + nuc.astype(np.uint8)


def load_bccd_fields(root: Path, split: str, cache: bool = True) -> list[Field]:
    """BCCD's own fields of ``split`` with VOC WBC boxes and masks."""
    out = []
    for it in load_bccd(root, split):
        rgb = read_image(it.image)
        boxes = np.asarray(it.wbc_boxes, np.float32).reshape(-1, 4)
        mask = _bccd_mask(it.mask)
        if mask is not None and mask.shape != rgb.shape[:2]:
            mask = cv2.resize(mask, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_NEAREST)
        if cache:
            out.append(_cache(it.name, "bccd_voc", rgb, boxes, mask, 214.0, it.image))
        else:
            out.append(Field(it.name, "bccd_voc", rgb, boxes, mask, it.image))
    return out


# ---------------------------------------------------------------------------------------- augmentation
def jitter_colour(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Other stains, lamps and cameras: hue, saturation, brightness, contrast, gamma, channel gains."""
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[:, :, 0] = (hsv[:, :, 0] + rng.uniform(-12, 12)) % 180
    hsv[:, :, 1] *= rng.uniform(0.6, 1.4)
    hsv[:, :, 2] *= rng.uniform(0.8, 1.2)
    out = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32) / 255.0
    out = out ** rng.uniform(0.7, 1.4)
    out = out * rng.uniform(0.9, 1.1, size=3).astype(np.float32)
    c = rng.uniform(0.75, 1.25)
    out = (out - out.mean()) * c + out.mean()
    return np.clip(out * 255, 0, 255).astype(np.uint8)


def degrade(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Out-of-focus blur and sensor noise, each on some samples."""
    if rng.random() < 0.35:
        rgb = cv2.GaussianBlur(rgb, (0, 0), rng.uniform(0.5, 2.5))
    if rng.random() < 0.25:
        noise = rng.normal(0, rng.uniform(2, 8), rgb.shape).astype(np.float32)
        rgb = np.clip(rgb.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    return rgb


def target_wbc(rng: np.random.Generator) -> float:
    """A WBC size for one sample: half near nominal (0.7-1.4x), half over the whole 0.3-3x range."""
    lo, hi = (0.7, 1.4) if rng.random() < 0.5 else (0.3, 3.0)
    return D.NOMINAL_WBC * float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def make_sample(fd: Field, rng: np.random.Generator, crop: int = CROP) -> dict[str, np.ndarray | np.float32]:
    """One augmented training sample: input (3, crop, crop), heatmap/size targets at stride 4, mask."""
    f = target_wbc(rng) / CACHE_WBC
    h, w = fd.rgb.shape[:2]
    size = (max(8, round(w * f)), max(8, round(h * f)))
    img = cv2.resize(fd.rgb, size, interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
    boxes = fd.boxes * np.float32(f)
    mask = cv2.resize(fd.mask, size, interpolation=cv2.INTER_NEAREST) if fd.mask is not None else None
    img = jitter_colour(img, rng)
    H, W = img.shape[:2]
    # crop window (may extend beyond the image: padded with background)
    if len(boxes) and rng.random() < 0.75:
        b = boxes[int(rng.integers(len(boxes)))]
        cx = (b[0] + b[2]) / 2 + rng.uniform(-0.4, 0.4) * crop
        cy = (b[1] + b[3]) / 2 + rng.uniform(-0.4, 0.4) * crop
    else:
        cx, cy = rng.uniform(0, W), rng.uniform(0, H)
    x0 = int(np.clip(round(cx - crop / 2), min(0, W - crop), max(0, W - crop)))
    y0 = int(np.clip(round(cy - crop / 2), min(0, H - crop), max(0, H - crop)))
    ref = np.percentile(img[::4, ::4].reshape(-1, 3), 90, axis=0)
    canvas = np.empty((crop, crop, 3), np.uint8)
    canvas[:] = ref.astype(np.uint8)
    mcanvas = np.zeros((crop, crop), np.uint8)
    sx0, sy0 = max(0, x0), max(0, y0)
    sx1, sy1 = min(W, x0 + crop), min(H, y0 + crop)
    canvas[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = img[sy0:sy1, sx0:sx1]
    if mask is not None:
        mcanvas[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = mask[sy0:sy1, sx0:sx1]
    # boxes: shift, clip to the visible image part, keep when >= 35 % visible
    vis = []
    for b in boxes:
        bb = b - np.array([x0, y0, x0, y0], np.float32)
        cb = np.clip(bb, [sx0 - x0, sy0 - y0, sx0 - x0, sy0 - y0], [sx1 - x0, sy1 - y0, sx1 - x0, sy1 - y0])
        area = (bb[2] - bb[0]) * (bb[3] - bb[1])
        carea = max(0.0, cb[2] - cb[0]) * max(0.0, cb[3] - cb[1])
        if area > 0 and carea / area >= 0.35 and min(cb[2] - cb[0], cb[3] - cb[1]) >= 4:
            vis.append(cb)
    canvas = degrade(canvas, rng)
    x, _ = D.normalise(canvas)
    # flips and 90-degree turns, applied to image, mask and boxes alike
    bx = np.asarray(vis, np.float32).reshape(-1, 4)
    if rng.random() < 0.5:
        x, mcanvas = x[:, :, ::-1], mcanvas[:, ::-1]
        bx = np.stack([crop - bx[:, 2], bx[:, 1], crop - bx[:, 0], bx[:, 3]], 1)
    for _ in range(int(rng.integers(4))):  # rot90 counter-clockwise: (x, y) -> (y, crop - x)
        x, mcanvas = np.rot90(x, 1, axes=(1, 2)), np.rot90(mcanvas, 1)
        bx = np.stack([bx[:, 1], crop - bx[:, 2], bx[:, 3], crop - bx[:, 0]], 1)
    hm, sz, szw = render_targets(bx, crop)
    return {
        "x": np.ascontiguousarray(x, np.float32),
        "hm": hm, "size": sz, "size_w": szw,
        "mask": np.ascontiguousarray(mcanvas),
        "has_mask": np.float32(fd.mask is not None),
    }


def render_targets(boxes: np.ndarray, crop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian centre heatmap (1, g, g), log-size targets (2, g, g) and their weights (1, g, g)."""
    g = crop // D.HM_STRIDE
    hm = np.zeros((1, g, g), np.float32)
    sz = np.zeros((2, g, g), np.float32)
    wt = np.zeros((1, g, g), np.float32)
    yy, xx = np.mgrid[0:g, 0:g].astype(np.float32)
    for b in boxes:
        bw, bh = float(b[2] - b[0]), float(b[3] - b[1])
        cx, cy = (b[0] + b[2]) / 2 / D.HM_STRIDE - 0.5, (b[1] + b[3]) / 2 / D.HM_STRIDE - 0.5
        sigma = max(0.7, 0.09 * np.sqrt(bw * bh) / D.HM_STRIDE)
        gk = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))
        hm[0] = np.maximum(hm[0], gk)
        near = gk > 0.5
        closer = near & (gk > wt[0])
        sz[0][closer] = np.log(bw / D.NOMINAL_WBC)
        sz[1][closer] = np.log(bh / D.NOMINAL_WBC)
        wt[0][closer] = gk[closer]
        ix, iy = round(float(cx)), round(float(cy))
        if 0 <= ix < g and 0 <= iy < g:
            hm[0, iy, ix] = 1.0
    return hm, sz, (wt > 0).astype(np.float32)


# -------------------------------------------------------------------------------------------------- loss
def focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss, normalised by the number of centres."""
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    neg = 1 - pos
    pos_loss = -torch.log(p) * (1 - p) ** 2 * pos
    neg_loss = -torch.log(1 - p) * p**2 * (1 - target) ** 4 * neg
    return (pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp_min(1.0)


def mask_loss(logits: torch.Tensor, mask: torch.Tensor, has: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice on the nucleus and cell channels, over samples that have a mask."""
    if has.sum() == 0:
        return logits.sum() * 0
    sel = has > 0
    lg = logits[sel]
    t = torch.stack([(mask[sel] == 2).float(), (mask[sel] >= 1).float()], 1)
    bce = F.binary_cross_entropy_with_logits(lg, t)
    p = torch.sigmoid(lg)
    inter = (p * t).sum((0, 2, 3))
    dice = 1 - (2 * inter + 1) / (p.sum((0, 2, 3)) + t.sum((0, 2, 3)) + 1)
    return bce + dice.mean()


# ------------------------------------------------------------------------------------------- validation
class ValDetector(D.DetectorSegmenter):
    """The inference code with the torch network in place of the ONNX session."""

    def __init__(self, net: nn.Module, threshold: float = D.SCORE_THRESHOLD) -> None:
        self.net = net
        self.model_id = "training"
        self.threshold = threshold
        self.pixel_size = None
        self.last_scale = None

    @torch.no_grad()
    def run(self, small: np.ndarray, ref: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x, _ = D.normalise(small, ref)
        h, w = x.shape[1:]
        hm, size, m = self.net(torch.from_numpy(D.pad_input(x))[None])
        hh, ww = -(-h // D.HM_STRIDE), -(-w // D.HM_STRIDE)
        return (torch.sigmoid(hm)[0, 0, :hh, :ww].numpy(), size[0, :, :hh, :ww].numpy(),
                torch.sigmoid(m)[0, :, :h, :w].numpy())


def validate(net: nn.Module, fields: list[Field], threshold: float = D.SCORE_THRESHOLD) -> dict[str, float]:
    """Detection precision/recall/F1 at IoU 0.5 per origin and overall, and mask Dice where masks exist.

    Fields here are *uncached* (full resolution), so the scale estimate runs as at inference.
    """
    from wbc.evaluate.smears import dice_iou, match_detections, paste_masks

    net.eval()
    seg = ValDetector(net, threshold)
    stats: dict[str, list[int]] = {}
    nd, cd = [], []
    for fd in fields:
        cells = seg.segment(fd.rgb)
        boxes = [(float(x0), float(y0), float(x1), float(y1)) for x0, y0, x1, y1 in (c.box for c in cells)]
        tp, _, g = match_detections(boxes, [c.score for c in cells], [tuple(b) for b in fd.boxes])
        s = stats.setdefault(fd.origin, [0, 0, 0])
        s[0] += sum(tp)
        s[1] += len(tp) - sum(tp)
        s[2] += g - sum(tp)
        if fd.mask is not None:
            pn, pc = paste_masks(cells, fd.rgb.shape[:2])
            nd.append(dice_iou(pn, fd.mask == 2)[0])
            cd.append(dice_iou(pc, fd.mask >= 1)[0])
    net.train()
    out: dict[str, float] = {}
    tot = np.zeros(3)
    for o, (o_tp, o_fp, o_fn) in sorted(stats.items()):
        tot += (o_tp, o_fp, o_fn)
        out[f"{o}_recall"] = o_tp / max(1, o_tp + o_fn)
        out[f"{o}_precision"] = o_tp / max(1, o_tp + o_fp)
    n_tp, n_fp, n_fn = tot
    out["recall"], out["precision"] = n_tp / max(1, n_tp + n_fn), n_tp / max(1, n_tp + n_fp)
    out["f1"] = 2 * n_tp / max(1, 2 * n_tp + n_fp + n_fn)
    if nd:
        out["nucleus_dice"], out["cell_dice"] = float(np.mean(nd)), float(np.mean(cd))
    return out


# ---------------------------------------------------------------------------------------------- export
def export(net: DetectorNet, path: Path, meta: dict[str, str]) -> None:
    """ONNX (opset 17, dynamic H/W) with metadata, written atomically."""
    import onnx

    net.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.onnx")
    torch.onnx.export(
        ExportWrapper(net), (torch.zeros(1, 3, 192, 256),), str(tmp),
        input_names=["image"], output_names=["heatmap", "size", "masks"],
        dynamic_axes={"image": {2: "h", 3: "w"}, "heatmap": {2: "h4", 3: "w4"}, "size": {2: "h4", 3: "w4"},
                      "masks": {2: "h", 3: "w"}},
        opset_version=17, dynamo=False,
    )
    m = onnx.load(str(tmp))
    for k, v in meta.items():
        p = m.metadata_props.add()
        p.key, p.value = k, v
    onnx.save(m, str(tmp))
    tmp.replace(path)
    net.train()


# ------------------------------------------------------------------------------------------------ main
def txl_training_files(root: Path, holdout: str | None = None) -> list[tuple[dict[str, str], Path]]:
    """The ``sources.csv`` rows and files of the TXL-PBC train fields :func:`build_training_set` trains on: the
    origins but ``holdout``, without copies of BCCD val and test images, those ``sources.csv`` names (``bccd_image``)
    and those found by content, byte for byte or resized (:class:`wbc.evaluate.smears.TrainingIndex`: before wbc
    0.36.0, 20 BCD-origin fields that are BCCD val/test images resized to 416x416 were trained on, and 5 BCCD test
    fields' scores were partly training numbers). A BCCD val or test image that cannot be read is a :class:`WbcError`
    naming it: its copies could not be left out."""
    keep_out = bccd_names(root, "test") | bccd_names(root, "val")
    errors: list[tuple[str, str]] = []
    held = file_index([root / "bccd" / "JPEGImages" / f"{n}.jpg" for n in sorted(keep_out)], errors)
    if errors:
        raise WbcError(f"{errors[0][1]} (a BCCD val or test image: its copies in TXL-PBC train cannot be left out of "
                       "training)")
    origins = tuple(o for o in ORIGINS if o != holdout)
    return [(r, img) for r, img in txl_files(root, "train", origins, keep_out) if not _copies(held, img)]


def _copies(index: TrainingIndex, path: Path) -> bool:
    """Whether ``path`` copies a file of ``index``; a file that cannot be read is no copy (its loading names it)."""
    try:
        return index.copies(path)
    except OSError:
        return False


def build_training_set(root: Path, holdout: str | None = None) -> list[Field]:
    """BCCD train (masks) + TXL-PBC train (:func:`txl_training_files`: BCCD val/test copies removed, resized ones
    too); ``holdout`` origin left out."""
    fields = load_txl(root, "train", files=txl_training_files(root, holdout))
    if holdout != "bccd":
        fields += load_bccd_fields(root, "train")
    return fields


def build_val_set(root: Path, holdout: str | None = None, per_origin: int | None = None) -> list[Field]:
    """TXL-PBC val (the training origins) + BCCD val, uncached, without any field the training set holds.

    TXL-PBC's val fields that copy a BCCD train (or test) image are left out, and so is any field that copies a
    training field or a BCCD test image byte for byte or, since wbc 0.36.0, resized
    (:class:`wbc.evaluate.smears.TrainingIndex`). Before, the checkpoint was chosen on 9 TXL-PBC val fields resized
    from training fields and 2 resized from BCCD test images, and on the 15 BCCD val fields whose resized copies were
    trained on (now left out of training instead, :func:`txl_training_files`).
    """
    origins = tuple(o for o in ORIGINS if o != holdout)
    trained = [img for _, img in txl_training_files(root, holdout)]
    names: set[str] = set()
    if holdout != "bccd":
        bccd_train = load_bccd(root, "train")
        names = {it.name for it in bccd_train}
        trained += [it.image for it in bccd_train]
    test = [root / "bccd" / "JPEGImages" / f"{n}.jpg" for n in sorted(bccd_names(root, "test"))]
    index = file_index([*trained, *test])
    fields = load_txl(root, "val", origins, exclude_bccd=bccd_names(root, "test") | names, cache=False)
    if holdout != "bccd":
        fields += load_bccd_fields(root, "val", cache=False)
    fields = [f for f in fields if f.path is None or not _copies(index, f.path)]
    if per_origin:
        rng = np.random.default_rng(0)
        out = []
        for o in sorted({f.origin for f in fields}):
            fs = [f for f in fields if f.origin == o]
            out += [fs[i] for i in sorted(rng.permutation(len(fs))[:per_origin])]
        fields = out
    return fields


#: Most iterations of a run scheduled by wall time (``minutes`` without ``iters``).
MAX_TIMED_ITERS: int = 5000


def train_detector(
    root: Path,
    output: Path,
    holdout: str | None = None,
    minutes: float | None = None,
    iters: int | None = None,
    batch: int = 8,
    crop: int = CROP,
    lr: float = 2e-3,
    eval_every: int = 150,
    val_per_origin: int = 40,
    threads: int = 1,
    seed: int = 0,
    pretrained: bool = True,
    init: Path | None = None,
    log: Callable[[str], None] = print,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train with a cosine learning-rate schedule, export each new best checkpoint to ``output`` (ONNX, with a
    ``.pt`` beside it) and return the validation log.

    ``iters``: the schedule runs over that many iterations, so two runs with the same ``seed`` give the same
    model (on the CPU); ``minutes`` then only ends a run early, without changing its learning rate. ``minutes``
    alone (60 when neither is given): the schedule follows the wall time used of that budget (at most
    :data:`MAX_TIMED_ITERS` iterations), as many iterations as the machine's load allows, so runs are not
    repeatable; the log records the iterations made (``iters`` set to them repeats a run of that length, on a
    schedule by iterations).

    ``holdout``: a TXL-PBC origin left out of training and validation (leave-one-source-out).
    ``init``: start from a ``.pt`` this function saved (then no warm-up).
    ``overwrite``: replace an existing ``output``, and the ``.pt`` and ``.log.json`` beside it (else refused before
    anything is read: :func:`wbc.train.export.check_new_output`; before wbc 0.36.0 an existing ``.pt``, the weights
    a fine-tuning may start from, was replaced at the first checkpoint without ``--overwrite``).
    """
    if holdout is not None and holdout not in ORIGINS:
        from wbc.errors import ConfigError

        raise ConfigError(f"--holdout {holdout!r}: choose one of {', '.join(ORIGINS)}")
    from wbc.train.export import check_new_output

    check_new_output(output, overwrite)
    for beside in (output.with_suffix(".pt"), output.with_suffix(".log.json")):
        if beside.exists() and not overwrite:
            what = "weights" if beside.suffix == ".pt" else "log"
            raise WbcError(f"{beside}: exists (this run would write its {what} there); pass --overwrite to replace it, "
                           "or give a new --output")
    init_state = load_init(init) if init is not None else None
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    t0 = time.time()
    train = build_training_set(root, holdout)
    val = build_val_set(root, holdout, val_per_origin)
    by_origin: dict[str, list[Field]] = {}
    for fd in train:
        by_origin.setdefault(fd.origin, []).append(fd)
    origins = sorted(by_origin)
    log(f"train {', '.join(f'{o} {len(v)}' for o, v in by_origin.items())}; val {len(val)}; "
          f"{time.time() - t0:.0f}s")
    net = DetectorNet(pretrained=pretrained and init is None)
    if init_state is not None:
        net.load_state_dict(init_state)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    # cosine schedule over the iterations, or (``minutes`` alone) over the fraction of the wall-time budget used
    timed = iters is None
    if timed and minutes is None:
        minutes = 60.0
    limit = MAX_TIMED_ITERS if iters is None else iters
    budget = minutes * 60.0 if minutes is not None else float("inf")
    schedule = f"cosine over {minutes:g} min of wall time" if timed else f"cosine over {limit} iterations"
    t_start = time.time()
    best, best_it = -1.0, 0
    history: list[dict[str, float]] = []
    it = 0
    while it < limit:
        it += 1
        elapsed = time.time() - t_start
        out_of_time = elapsed >= budget  # (ends the run after this iteration)
        frac = min(1.0, elapsed / budget) if timed else (it - 1) / limit
        warm = 1.0 if init is not None else min(1.0, it / 100)
        cur_lr = lr * (warm * 0.5 * (1 + np.cos(np.pi * frac)) + 0.01)
        for gparam in opt.param_groups:
            gparam["lr"] = cur_lr
        # origins equally often (BCCD's own fields carry the masks)
        samples = [make_sample(by_origin[o][int(rng.integers(len(by_origin[o])))], rng, crop)
                   for o in (origins[int(rng.integers(len(origins)))] for _ in range(batch))]
        x = torch.from_numpy(np.stack([b["x"] for b in samples]))
        hm_t = torch.from_numpy(np.stack([b["hm"] for b in samples]))
        sz_t = torch.from_numpy(np.stack([b["size"] for b in samples]))
        sw = torch.from_numpy(np.stack([b["size_w"] for b in samples]))
        mk = torch.from_numpy(np.stack([b["mask"] for b in samples]).astype(np.int64))
        has = torch.from_numpy(np.stack([b["has_mask"] for b in samples]))
        hm, sz, m = net(x)
        l_hm = focal_loss(hm, hm_t)
        l_sz = (torch.abs(sz - sz_t) * sw).sum() / sw.sum().clamp_min(1.0) / 2
        l_m = mask_loss(m, mk, has)
        loss = l_hm + l_sz + l_m
        opt.zero_grad()
        loss.backward()
        opt.step()
        if it % 25 == 0:
            log(f"it {it} loss {loss.item():.3f} (hm {l_hm.item():.3f} size {l_sz.item():.3f} "
                f"mask {l_m.item():.3f}) lr {cur_lr:.2e} {time.time() - t0:.0f}s")
        done = out_of_time or it >= limit
        if it % eval_every == 0 or done:
            v = validate(net, val)
            score = v["f1"] + 0.5 * (v.get("nucleus_dice", 0.0) + v.get("cell_dice", 0.0)) / 2
            v.update(it=it, seconds=time.time() - t0, score=score)
            history.append(v)
            log(f"it {it} val {json.dumps({k: round(float(x), 4) for k, x in v.items()})}")
            if score > best:
                best, best_it = score, it
                export(net, output, {
                    "model_id": f"wbc-detector-lite0-{'loso-' + holdout if holdout else 'all'}"
                                f"{'-ft' if init else ''}-it{it}-s{seed}",
                    "nominal_wbc": str(D.NOMINAL_WBC),
                    "score_threshold": str(D.SCORE_THRESHOLD),
                    "holdout": holdout or "",
                    "schedule": schedule,
                    "val": json.dumps({k: round(float(x), 4) for k, x in v.items()}),
                })
                from wbc.train.loop import save_atomic

                save_atomic(net.state_dict(), output.with_suffix(".pt"))
                log(f"  -> exported {output}")
        if done:
            break
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output.with_suffix(".log.json"), json.dumps({"best_it": best_it, "iterations": it,
                                                                    "schedule": schedule, "log": history}, indent=1))
    log(f"done: best it {best_it} score {best:.4f}; {it} iterations ({schedule}"
        f"{', ended by the time budget' if not timed and it < limit else ''}); {time.time() - t0:.0f}s")
    return {"best_it": best_it, "score": best, "iterations": it, "log": history}
