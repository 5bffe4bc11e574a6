"""Training augmentation with torchvision.transforms.v2, on uint8 (3, S, S) tensors.

The input is already what inference sees (:func:`wbc.train.data.decode_all`: :func:`wbc.classify.read_cell`'s view);
augmentation only perturbs it, and :func:`normalise` is the same arithmetic as :func:`wbc.preprocess.prepare_batch`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from wbc.config import TrainConfig
from wbc.preprocess import normalisation_constants

# Haematoxylin-Eosin-DAB stain vectors (Ruifrok & Johnston 2001), as in skimage.color.
_RGB_FROM_HED = torch.tensor(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float32
)
_RGB_FROM_HED[2] = torch.linalg.cross(_RGB_FROM_HED[0], _RGB_FROM_HED[1])
_RGB_FROM_HED = _RGB_FROM_HED / _RGB_FROM_HED.norm(dim=1, keepdim=True)
_HED_FROM_RGB = torch.linalg.inv(_RGB_FROM_HED)


class RandomRot90(v2.Transform):
    """Rotate by 0, 90, 180 or 270 degrees: cells have no up."""

    def make_params(self, flat_inputs: list) -> dict:
        return {"k": int(torch.randint(0, 4, ()).item())}

    def transform(self, inpt: torch.Tensor, params: dict) -> torch.Tensor:
        return torch.rot90(inpt, params["k"], dims=(-2, -1))


class RandomScaleShift(v2.Transform):
    """Zoom and shift with reflected borders, so no black corners appear that real crops never have."""

    def __init__(self, scale: tuple[float, float], translate: float) -> None:
        super().__init__()
        self.scale = scale
        self.translate = translate

    def make_params(self, flat_inputs: list) -> dict:
        s = float(torch.empty(()).uniform_(*self.scale))
        t = torch.empty(2).uniform_(-self.translate, self.translate).tolist()
        return {"scale": s, "shift": t}

    def transform(self, inpt: torch.Tensor, params: dict) -> torch.Tensor:
        h, w = inpt.shape[-2:]
        pad = math.ceil(max(h, w) * ((1 / min(self.scale) - 1) / 2 + self.translate)) + 2
        x = torch.nn.functional.pad(inpt[None].float(), (pad, pad, pad, pad), mode="reflect")[0]
        tx, ty = params["shift"][0] * w, params["shift"][1] * h
        x = F.affine(x, angle=0.0, translate=[tx, ty], scale=params["scale"], shear=[0.0, 0.0],
                     interpolation=v2.InterpolationMode.BILINEAR)
        x = x[..., pad : pad + h, pad : pad + w]
        return x.round().clamp(0, 255).to(inpt.dtype)


class RandomHEDJitter(v2.Transform):
    """Perturb haematoxylin/eosin stain amounts (Tellez et al. 2018): stain and scanner variation."""

    def __init__(self, sigma: float, bias: float) -> None:
        super().__init__()
        self.sigma = sigma
        self.bias = bias

    def make_params(self, flat_inputs: list) -> dict:
        return {"alpha": torch.empty(3).uniform_(1 - self.sigma, 1 + self.sigma),
                "beta": torch.empty(3).uniform_(-self.bias, self.bias)}

    def transform(self, inpt: torch.Tensor, params: dict) -> torch.Tensor:
        return hed_jitter(inpt, params["alpha"], params["beta"])


def hed_jitter(img: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Scale and shift each stain's optical density (natural-log units): ``hed * alpha + beta``."""
    rgb = img.float().clamp_min(1.0) / 255.0
    od = -torch.log(rgb).permute(1, 2, 0)  # H, W, 3
    hed = od @ _HED_FROM_RGB
    hed = hed * alpha + beta
    out = torch.exp(-(hed @ _RGB_FROM_HED)).permute(2, 0, 1)
    return (out * 255.0).round().clamp(0, 255).to(img.dtype)


class RandomLowRes(v2.Transform):
    """Down-sample by a random factor and back up: a lower-resolution objective or camera."""

    def __init__(self, min_factor: float) -> None:
        super().__init__()
        self.min_factor = min_factor

    def make_params(self, flat_inputs: list) -> dict:
        return {"factor": float(torch.empty(()).uniform_(self.min_factor, 1.0))}

    def transform(self, inpt: torch.Tensor, params: dict) -> torch.Tensor:
        h, w = inpt.shape[-2:]
        small = [max(8, round(h * params["factor"])), max(8, round(w * params["factor"]))]
        x = F.resize(inpt, small, interpolation=v2.InterpolationMode.BILINEAR, antialias=True)
        return F.resize(x, [h, w], interpolation=v2.InterpolationMode.BILINEAR, antialias=False)


class CentreCrop(v2.Transform):
    """The central ``size`` px of a (C, S, S) image, at exactly the offset :func:`wbc.preprocess.centre_crop`
    uses at inference (torchvision's CenterCrop rounds odd margins differently)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def transform(self, inpt: torch.Tensor, params: dict) -> torch.Tensor:
        o = (inpt.shape[-1] - self.size) // 2
        return inpt[..., o : o + self.size, o : o + self.size]


class AddGaussianNoise(v2.Transform):
    def __init__(self, std: float) -> None:
        super().__init__()
        self.std = std

    def transform(self, inpt: torch.Tensor, params: dict) -> torch.Tensor:
        noise = torch.randn(inpt.shape) * (self.std * 255.0 * float(torch.rand(())))
        return (inpt.float() + noise).round().clamp(0, 255).to(inpt.dtype)


def build_augment(cfg: TrainConfig) -> v2.Transform:
    """The training augmentation for uint8 (3, S, S) tensors, every knob from the config."""
    if not cfg.augment:
        return v2.Identity()
    ops: list[v2.Transform] = []
    if cfg.hflip:
        ops += [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()]
    if cfg.rot90:
        ops.append(RandomRot90())
    if cfg.tight_pad_p > 0:
        ops.append(v2.RandomApply([RandomTightPad((0.45, 0.8))], p=cfg.tight_pad_p))
    if cfg.scale != (1.0, 1.0) or cfg.translate > 0:
        ops.append(RandomScaleShift(cfg.scale, cfg.translate))
    if cfg.hed_sigma > 0 or cfg.hed_bias > 0:
        ops.append(RandomHEDJitter(cfg.hed_sigma, cfg.hed_bias))
    if max(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue) > 0:
        ops.append(v2.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue))
    if cfg.gray_p > 0:
        ops.append(v2.RandomGrayscale(p=cfg.gray_p))
    if cfg.lowres_p > 0:
        ops.append(v2.RandomApply([RandomLowRes(cfg.lowres_min)], p=cfg.lowres_p))
    if cfg.blur_p > 0:
        kernel = 2 * math.ceil(2.5 * cfg.blur_sigma) + 1
        ops.append(v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, cfg.blur_sigma))], p=cfg.blur_p))
    if cfg.noise_std > 0:
        ops.append(AddGaussianNoise(cfg.noise_std))
    if cfg.strong_colour_p > 0:
        ops.append(RandomStrongColour(cfg.strong_colour_p, {op: float(op in cfg.strong_colour_ops)
                                                            for op in RandomStrongColour.OPS}
                                      if cfg.strong_colour_ops else None))
    if cfg.jpeg_p > 0:
        ops.append(v2.RandomApply([v2.JPEG((cfg.jpeg_min_quality, 95))], p=cfg.jpeg_p))
    return v2.Compose(ops)


def cells_to_batch(cells: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 cells (N, S, S, 3) as numpy -> the normalised float (N, 3, S, S) tensor the network takes."""
    return normalise(torch.from_numpy(np.ascontiguousarray(cells)).permute(0, 3, 1, 2), mean, std)


def normalise(batch: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (N, 3, S, S) -> float, the same arithmetic as :func:`wbc.preprocess.prepare_batch`."""
    scale, offset = normalisation_constants(mean, std)
    scale_t, offset_t = (torch.from_numpy(a).view(1, 3, 1, 1).to(batch.device) for a in (scale, offset))
    return batch.float() * scale_t + offset_t


# --- shape-first colour randomisation (docs/generalisation.md: "Shape-first training") -----------------------
# Another lab's stain can put the nucleus at any hue; these ops make colour useless as a cue so the network
# must use nucleus and cytoplasm shape and texture. Colour ops work in optical density (OD = -ln(I / 255)),
# where an empty, white background stays white whatever the stain does.


def _to_od(img: torch.Tensor) -> torch.Tensor:
    return -torch.log(img.float().clamp_min(1.0) / 255.0)


def _from_od(od: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (torch.exp(-od.clamp_min(0.0)) * 255.0).round().clamp(0, 255).to(dtype)


def _random_unit_positive(n: int) -> torch.Tensor:
    v = torch.rand(n, 3) + 0.05
    return v / v.norm(dim=1, keepdim=True)


def stain_vector_resample(img: torch.Tensor, strength: float) -> torch.Tensor:
    """Unmix haematoxylin and eosin with the standard vectors, then re-mix them with stain vectors moved
    ``strength`` (0-1) of the way toward random positive directions, and each stain's amount rescaled:
    a different stain recipe, scanner white balance or staining time."""
    od = _to_od(img).permute(1, 2, 0)  # H, W, 3
    hed = od @ _HED_FROM_RGB
    vec = _RGB_FROM_HED.clone()
    vec[:2] = (1 - strength) * vec[:2] + strength * _random_unit_positive(2)
    vec[:2] = vec[:2] / vec[:2].norm(dim=1, keepdim=True)
    hed[..., :2] = hed[..., :2] * torch.empty(2).uniform_(0.6, 1.5)
    return _from_od((hed @ vec).permute(2, 0, 1), img.dtype)


def channel_mix(img: torch.Tensor, alpha: float) -> torch.Tensor:
    """Mix the three optical-density channels with a random non-negative matrix (``alpha`` of it, the rest
    identity), columns scaled to keep the total density: arbitrary colours, the same structure."""
    od = _to_od(img).permute(1, 2, 0)
    m = torch.rand(3, 3)
    m = m / m.sum(0, keepdim=True)
    mix = (1 - alpha) * torch.eye(3) + alpha * m
    return _from_od((od @ mix).permute(2, 0, 1), img.dtype)


def hematoxylin_only(img: torch.Tensor) -> torch.Tensor:
    """The haematoxylin channel alone, re-coloured with its own stain vector: nuclei and basophilic
    cytoplasm only, as a lab with a weak eosin would show them."""
    hed = _to_od(img).permute(1, 2, 0) @ _HED_FROM_RGB
    return _from_od((hed[..., :1] @ _RGB_FROM_HED[:1]).permute(2, 0, 1), img.dtype)


def random_convolution(img: torch.Tensor, k: int, alpha: float) -> torch.Tensor:
    """RandConv (Xu et al. 2021), with non-negative weights: a random k x k convolution of the image,
    rescaled to the image's own per-channel mean and spread, blended with the original by ``alpha``: random
    local colour/texture filters that keep shapes (and do not invert brightness)."""
    x = img.float()[None] / 255.0
    w = torch.rand(3, 3, k, k)  # non-negative: colours and textures change, dark nuclei stay dark
    y = torch.nn.functional.conv2d(torch.nn.functional.pad(x, [k // 2] * 4, mode="reflect"), w)
    mu, sd = x.mean((2, 3), keepdim=True), x.std((2, 3), keepdim=True)
    y = (y - y.mean((2, 3), keepdim=True)) / (y.std((2, 3), keepdim=True) + 1e-6) * sd + mu
    out = alpha * y + (1 - alpha) * x
    return (out[0] * 255.0).round().clamp(0, 255).to(img.dtype)


class RandomStrongColour(v2.Transform):
    """With probability ``p``, one of the shape-first colour ops (weights: relative frequency of each).

    Ops: ``hue`` (hue rotated anywhere on the circle), ``stain`` (:func:`stain_vector_resample`),
    ``mix`` (:func:`channel_mix`), ``grey``, ``hema`` (:func:`hematoxylin_only`), ``randconv``
    (:func:`random_convolution`).
    """

    OPS: tuple[str, ...] = ("hue", "stain", "mix", "grey", "hema", "randconv")

    def __init__(self, p: float, weights: dict[str, float] | None = None) -> None:
        super().__init__()
        self.p = p
        w = weights or {}
        self.weights = torch.tensor([float(w.get(op, 1.0)) for op in self.OPS])

    def make_params(self, flat_inputs: list) -> dict:
        if float(torch.rand(())) >= self.p or float(self.weights.sum()) <= 0:
            return {"op": ""}
        op = self.OPS[int(torch.multinomial(self.weights, 1))]
        return {"op": op, "u": float(torch.rand(())), "k": int(torch.randint(0, 3, ())) * 2 + 1}

    def transform(self, inpt: torch.Tensor, params: dict) -> torch.Tensor:
        op, u = params["op"], params.get("u", 0.0)
        if op == "hue":
            return F.adjust_hue(inpt, u - 0.5)
        if op == "stain":
            return stain_vector_resample(inpt, 0.3 + 0.7 * u)
        if op == "mix":
            return channel_mix(inpt, 0.3 + 0.7 * u)
        if op == "grey":
            return F.rgb_to_grayscale(inpt, num_output_channels=3)
        if op == "hema":
            out = hematoxylin_only(inpt)
            return F.rgb_to_grayscale(out, num_output_channels=3) if u < 0.3 else out
        if op == "randconv":
            return random_convolution(inpt, params["k"], 0.5 + 0.5 * u)
        return inpt


class RandomTightPad(v2.Transform):
    """Keep a central square (a random ``frac`` of the side) and fill the rest with the cell's background
    colour: a cell cut tightly by another lab, then re-framed by `wbc classify` (:mod:`wbc.reframe`)."""

    def __init__(self, frac: tuple[float, float]) -> None:
        super().__init__()
        self.frac = frac

    def make_params(self, flat_inputs: list) -> dict:
        return {"frac": float(torch.empty(()).uniform_(*self.frac))}

    def transform(self, inpt: torch.Tensor, params: dict) -> torch.Tensor:
        h, w = inpt.shape[-2:]
        k = max(8, round(min(h, w) * params["frac"]))
        y0, x0 = (h - k) // 2, (w - k) // 2
        flat = inpt[:, ::4, ::4].reshape(3, -1)
        bright = flat.sum(0, dtype=torch.int32)
        fill = flat[:, bright >= torch.quantile(bright.float(), 0.9)].float().median(dim=1).values
        out = fill.round().to(inpt.dtype).view(3, 1, 1).expand(3, h, w).clone()
        out[:, y0 : y0 + k, x0 : x0 + k] = inpt[:, y0 : y0 + k, x0 : x0 + k]
        return out
