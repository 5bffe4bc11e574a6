"""Training augmentation with torchvision.transforms.v2, on uint8 (3, S, S) tensors.

The input is already what inference sees (:func:`wbc.preprocess.load_cell`); augmentation only
perturbs it, and :func:`normalise` is the same arithmetic as :func:`wbc.preprocess.prepare_batch`.
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
    if cfg.jpeg_p > 0:
        ops.append(v2.RandomApply([v2.JPEG((40, 95))], p=cfg.jpeg_p))
    return v2.Compose(ops)


def cells_to_batch(cells: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 cells (N, S, S, 3) as numpy -> the normalised float (N, 3, S, S) tensor the network takes."""
    return normalise(torch.from_numpy(np.ascontiguousarray(cells)).permute(0, 3, 1, 2), mean, std)


def normalise(batch: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (N, 3, S, S) -> float, the same arithmetic as :func:`wbc.preprocess.prepare_batch`."""
    scale, offset = normalisation_constants(mean, std)
    scale_t, offset_t = (torch.from_numpy(a).view(1, 3, 1, 1).to(batch.device) for a in (scale, offset))
    return batch.float() * scale_t + offset_t
