"""Training configuration: one typed dataclass, filled from defaults, then a TOML file, then flags.

>>> cfg = TrainConfig().updated({"epochs": 3})
>>> cfg.epochs, cfg.model
(3, 'efficientnet_lite0')
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from wbc.errors import ConfigError

if TYPE_CHECKING:
    from pydantic import TypeAdapter

#: How ``TrainConfig.unlabelled_crop`` may cut TXL-PBC's WBC boxes (:func:`wbc.train.unlabelled.txl_wbc_crops`).
UNLABELLED_CROPS: tuple[str, ...] = ("smear", "single", "both")


@dataclass(frozen=True)
class TrainConfig:
    # data
    data: str = "pbc"  # class-per-folder dataset, or a manifest .csv (its split kept); relative: under the data root
    classes: tuple[str, ...] = ()  # empty: every known class found in the data
    split: tuple[float, float, float] = (0.70, 0.15, 0.15)
    split_seed: int = 0  # the split's seed, kept apart from ``seed`` so reruns share one split
    max_per_class: int = 0  # 0: all; >0 caps each class (quick experiments, tests)
    # model
    model: str = "efficientnet_lite0"
    pretrained: bool = True
    input_size: int = 160  # cells are resized to this (their whole frame, as on disk)
    centre_crop: int = 0  # >0: the network sees only the central centre_crop px of that (more pixels per cell)
    dropout: float = 0.2
    # optimisation
    epochs: int = 12
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.02
    warmup_epochs: float = 0.5
    label_smoothing: float = 0.1
    balance: str = "loss"  # "loss" (class-weighted), "sampler" (balanced sampling) or "none"
    patience: int = 4  # early stopping on validation macro-F1; 0 disables
    ema: float = 0.0  # >0: evaluate and keep an exponential moving average of the weights (e.g. 0.998)
    progressive_size: int = 0  # >0: the first progressive_epochs train at this smaller input (cheaper epochs)
    progressive_epochs: int = 0
    # augmentation
    augment: bool = True
    hflip: bool = True
    rot90: bool = True
    scale: tuple[float, float] = (0.9, 1.1)
    translate: float = 0.05
    brightness: float = 0.15
    contrast: float = 0.15
    saturation: float = 0.15
    hue: float = 0.03
    hed_sigma: float = 0.05  # HED stain jitter: scale per stain channel ~ U(1-s, 1+s)
    hed_bias: float = 0.02  # ... and shift by U(-b, b) optical-density units
    blur_p: float = 0.2
    blur_sigma: float = 1.2  # largest Gaussian blur sigma (pixels at input size)
    noise_std: float = 0.02
    # robustness to other labs' stains, optics and cameras (off by default; see docs/generalisation.md)
    gray_p: float = 0.0  # probability of a grey-scale copy (shape and texture without colour)
    lowres_p: float = 0.0  # probability of down- then up-sampling (lower optical resolution)
    lowres_min: float = 0.5  # smallest down-sampling factor
    jpeg_p: float = 0.0  # probability of JPEG re-compression at quality U(jpeg_min_quality, 95)
    # shape-first colour randomisation (wbc.train.transforms.RandomStrongColour; docs/generalisation.md)
    strong_colour_p: float = 0.0  # probability of one strong colour op: full hue circle, stain vectors, ...
    strong_colour_ops: tuple[str, ...] = ()  # which ops (empty: all of RandomStrongColour.OPS)
    jpeg_min_quality: int = 40  # JPEG re-compression quality U(jpeg_min_quality, 95)
    reframe_p: float = 0.0  # probability of showing a training cell re-framed (wbc.reframe.CANONICAL)
    reframe_tight: float = 0.0  # share of those re-framed copies cut tight first (the cell filling a crop, as
    # another lab's single-cell image; re-framed by `wbc classify`'s path, so padded with its background colour)
    tight_pad_p: float = 0.0  # probability of a tight crop padded back with the cell's background colour
    init_weights: str = ""  # start from these network weights (a .pt; e.g. the shipped model): fine-tuning
    # other labs' unlabelled cells, learnt from by consistency (FixMatch; wbc.train.unlabelled)
    unlabelled: str = ""  # "txl_pbc:bcd" (WBC crops of TXL-PBC train/val fields of those origins) or a folder
    unlabelled_crop: str = "smear"  # how TXL-PBC's WBC boxes are cut: "smear" (as `wbc analyze` cuts smear
    # cells: the field mirrored beyond its border), "single" (as a lab's single-cell image: the box inside the
    # field, re-framed as `wbc classify` re-frames it) or "both" (each box twice); wbc.train.unlabelled
    unlabelled_weight: float = 1.0  # weight of their loss next to the labelled cells' loss
    unlabelled_threshold: float = 0.75  # pseudo-label a cell only when the teacher is this confident (label
    # smoothing 0.1 caps a certain network near 0.91: at 0.9 only 2 % of the other lab's cells were used)
    unlabelled_ratio: float = 0.5  # unlabelled cells per step, as a fraction of batch_size
    unlabelled_teacher_views: int = 1  # the teacher names the mean of this many rotations of each (1-4)
    # morphological attributes as a second signal (wbc.train.attributes): "wbcatt" (WBCAtt's 11 attributes of PBC
    # cells, under the data root's wbcatt/), learnt by linear heads on the embedding, dropped at export
    attributes: str = ""
    attribute_weight: float = 0.5  # weight of their mean cross-entropy next to the class loss
    # review flag
    review_target_accuracy: float = 0.995  # accepted (non-review) val cells must reach this accuracy
    # run
    folds: int = 0  # >1: K-fold cross-validation on train+val and an ensemble of the fold models
    seed: int = 0
    threads: int = 2
    num_workers: int = 0  # DataLoader worker processes for augmentation (0: in the training process)
    device: str = "cpu"  # "cpu", "cuda" (a GPU) or "auto" (a GPU when there is one)
    version: str = "1.0.0"
    extra: dict[str, Any] = field(default_factory=dict)

    __pydantic_config__: ClassVar[dict[str, Any]] = {"coerce_numbers_to_str": True}  # `version = 1.0` -> "1.0"

    def updated(self, changes: dict[str, Any]) -> TrainConfig:
        """A copy with ``changes`` applied (None values ignored), coerced to the fields' types by pydantic
        (TOML/JSON lists become tuples, ``"3"`` an int; ``3.5`` for an int or two numbers for three fail)."""
        from pydantic import ValidationError

        known = {f.name for f in dataclasses.fields(self)}
        clean = {k: v for k, v in changes.items() if v is not None}
        if isinstance(clean.get("classes"), str):  # "5part" or "neutrophil,lymphocyte", as --classes takes them
            clean["classes"] = [c for c in clean["classes"].split(",") if c.strip()]
        for key in clean:
            if key not in known:
                raise ConfigError(f"unknown training option {key!r}; known: {', '.join(sorted(known))}")
        try:
            cfg = _validator().validate_python({**{k: getattr(self, k) for k in known}, **clean})
        except ValidationError as exc:
            err = exc.errors()[0]
            key = str(err["loc"][0]) if err["loc"] else "?"
            kind = type(getattr(self, key, "")).__name__
            raise ConfigError(f"option {key!r}: {clean.get(key)!r} is not a valid {kind} ({err['msg']})") from None
        cfg = dataclasses.replace(cfg, classes=training_classes(cfg.classes))
        cfg.validate()
        return cfg

    def validate(self) -> None:
        self.validate_finite()
        if self.epochs < 1 or self.batch_size < 1 or self.input_size < 32:
            raise ConfigError("epochs and batch_size must be >= 1 and input_size >= 32")
        if self.balance not in ("loss", "sampler", "none"):
            raise ConfigError(f"balance must be loss, sampler or none, not {self.balance!r}")
        if not 0 <= self.label_smoothing < 1 or self.lr <= 0:
            raise ConfigError("label_smoothing must be in [0, 1) and lr > 0")
        if self.centre_crop and not 32 <= self.centre_crop <= self.input_size:
            raise ConfigError(f"centre_crop must be 0 (off) or 32..input_size ({self.input_size}), "
                              f"not {self.centre_crop}")
        if self.progressive_size and not 32 <= self.progressive_size <= (self.centre_crop or self.input_size):
            raise ConfigError(f"progressive_size must be 0 (off) or 32..the network input size, "
                              f"not {self.progressive_size}")
        if self.progressive_epochs < 0 or (self.progressive_size and self.progressive_epochs >= self.epochs):
            raise ConfigError("progressive_epochs must be >= 0 and leave at least one epoch at full size")
        if bool(self.progressive_size) != bool(self.progressive_epochs):  # one alone did nothing, without a word
            raise ConfigError(f"progressive_size and progressive_epochs go together (the first progressive_epochs "
                              f"epochs train at progressive_size), not {self.progressive_size} and "
                              f"{self.progressive_epochs}")
        if self.device not in ("cpu", "cuda", "auto"):
            raise ConfigError(f"device must be cpu, cuda or auto, not {self.device!r}")
        if self.num_workers < 0 or self.threads < 1:
            raise ConfigError("num_workers must be >= 0 and threads >= 1")
        bad_ops = set(self.strong_colour_ops) - {"hue", "stain", "mix", "grey", "hema", "randconv"}
        if bad_ops or not 0 <= self.strong_colour_p <= 1 or not 1 <= self.jpeg_min_quality <= 95:
            raise ConfigError(f"strong_colour_p must be in [0, 1], strong_colour_ops among hue, stain, mix, grey, "
                              f"hema, randconv (not {sorted(bad_ops)}), jpeg_min_quality in 1..95")
        if self.unlabelled_weight < 0 or not 0 < self.unlabelled_threshold < 1 or not 0 < self.unlabelled_ratio <= 4:
            raise ConfigError("unlabelled_weight must be >= 0, unlabelled_threshold in (0, 1), unlabelled_ratio "
                              "in (0, 4]")
        if not 1 <= self.unlabelled_teacher_views <= 4:
            raise ConfigError(f"unlabelled_teacher_views must be 1-4 (rotations), not {self.unlabelled_teacher_views}")
        if self.unlabelled_crop not in UNLABELLED_CROPS:
            raise ConfigError(f"unlabelled_crop must be one of {', '.join(UNLABELLED_CROPS)}, "
                              f"not {self.unlabelled_crop!r}")
        if self.attributes not in ("", "wbcatt") or self.attribute_weight < 0:
            raise ConfigError(f"attributes must be '' or 'wbcatt' (not {self.attributes!r}) and attribute_weight >= 0")
        if self.folds == 1 or self.folds < 0:
            raise ConfigError("folds must be 0 (no cross-validation) or >= 2")
        if not 0 <= self.split_seed < 2**32 or not 0 <= self.seed < 2**32 - max(0, self.folds - 1):
            # numpy refused them with a traceback only once the whole dataset was read (fold k trains with seed + k)
            raise ConfigError(f"seed and split_seed must be in 0..2**32 - 1 (seed + folds - 1 at most that), not "
                              f"{self.seed} and {self.split_seed}")
        if not 0 < self.review_target_accuracy <= 1:
            raise ConfigError(f"review_target_accuracy is a fraction in (0, 1] (0.995 for 99.5 %), "
                              f"not {self.review_target_accuracy}")
        if not 0 <= self.ema < 1 or not 0 <= self.dropout < 1:
            raise ConfigError(f"ema and dropout must be in [0, 1) (ema 0: off), not {self.ema} and {self.dropout}")
        negative = {k: getattr(self, k) for k in ("patience", "warmup_epochs", "weight_decay", "max_per_class")
                    if getattr(self, k) < 0}
        if negative:
            raise ConfigError(f"must be >= 0: {negative}")
        self.validate_augmentation()
        if len(self.split) != 3 or min(self.split) < 0 or abs(sum(self.split) - 1) > 1e-6 or self.split[0] <= 0:
            raise ConfigError(f"split is three fractions (train, val, test) >= 0 summing to 1, not {list(self.split)}")

    def validate_finite(self) -> None:
        """Refuse NaN and infinite numbers (TOML's ``nan``, ``inf``), whichever float option holds them: every range
        check compares, and a comparison with NaN is False, so before wbc 0.35.0 ``lr = nan`` or ``warmup_epochs = inf``
        passed, then failed with a traceback after the whole dataset was decoded, or trained a NaN model."""
        def finite(value: Any) -> bool:
            if isinstance(value, tuple):  # scale, split
                return all(map(finite, value))
            return not isinstance(value, float) or math.isfinite(value)

        bad = [f.name for f in dataclasses.fields(self) if not finite(getattr(self, f.name))]
        if bad:
            raise ConfigError(f"{', '.join(bad)}: must be finite numbers (no nan or inf), not "
                              f"{', '.join(_shown_value(getattr(self, k)) for k in bad)}")

    def validate_augmentation(self) -> None:
        """The augmentation's ranges, checked before any image is decoded: torchvision refused a hue of 0.7 or a
        scale of 0.3 with a traceback only in the first batch, after the whole dataset was decoded, and took a
        probability of 3 without a word."""
        p_keys = ("blur_p", "gray_p", "lowres_p", "jpeg_p", "reframe_p", "reframe_tight", "tight_pad_p")
        bad = [k for k in p_keys if not 0 <= getattr(self, k) <= 1]
        if bad:
            raise ConfigError(f"{', '.join(bad)}: a probability (share) in [0, 1], not "
                              f"{', '.join(str(getattr(self, k)) for k in bad)}")
        negative = [k for k in ("brightness", "contrast", "saturation", "hed_sigma", "hed_bias", "noise_std")
                    if getattr(self, k) < 0]
        if negative:
            raise ConfigError(f"{', '.join(negative)}: must be >= 0")
        lo, hi = self.scale
        if not 0 < lo <= hi or not 0 <= self.translate < 0.5 or (1 / lo - 1) / 2 + self.translate >= 0.9:
            raise ConfigError(f"scale must be two factors 0 < low <= high, translate in [0, 0.5), and the padding "
                              f"they need under 0.9 of the side (low >= about 0.4), not scale {list(self.scale)}, "
                              f"translate {self.translate}")
        if not 0 <= self.hue <= 0.5 or self.hed_sigma > 1 or not 0 < self.lowres_min <= 1:
            raise ConfigError(f"hue must be in [0, 0.5] (a fraction of the colour circle), hed_sigma <= 1, lowres_min "
                              f"in (0, 1], not {self.hue}, {self.hed_sigma}, {self.lowres_min}")
        if self.blur_p > 0 and self.blur_sigma <= 0.1:
            raise ConfigError(f"blur_sigma must be > 0.1 (the smallest blur drawn) when blur_p > 0, "
                              f"not {self.blur_sigma}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _shown_value(value: Any) -> str:
    """An option's value as TOML writes it (``nan``, ``inf``, tuples as lists)."""
    if isinstance(value, tuple):
        return f"[{', '.join(map(_shown_value, value))}]"
    return str(value).lower() if isinstance(value, float) and not math.isfinite(value) else repr(value)


def training_classes(names: tuple[str, ...]) -> tuple[str, ...]:
    """``classes`` as canonical class names, in any known spelling or as a named set (``5part``), as ``--classes``
    takes them: compared verbatim with the canonical folder labels, ``"lymphocytes"`` or a typo silently left that
    class out of training. Unknown names and a single class (a classifier that cannot be wrong) are refused.

    >>> training_classes(("Lymphocytes", "eos", "lymphocyte"))
    ('lymphocyte', 'eosinophil')
    """
    from wbc.labels import CLASS_SETS, CLASSES, canonical_label

    out: list[str] = []
    for name in names:
        found = CLASS_SETS.get(name.strip().lower()) or (canonical_label(name),)
        if found == (None,):
            raise ConfigError(f"classes: {name!r} is not a class ({', '.join(CLASSES)}) "
                              f"nor a named set ({', '.join(CLASS_SETS)})")
        out += [c for c in found if c and c not in out]
    if len(out) == 1:
        raise ConfigError(f"classes: only {out[0]!r}; a classifier needs at least two classes (none: every class "
                          "found in the data)")
    return tuple(out)


@functools.cache
def _validator() -> TypeAdapter[TrainConfig]:
    """pydantic's validator for :class:`TrainConfig` (built once)."""
    from pydantic import TypeAdapter

    return TypeAdapter(TrainConfig)


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The options a TOML config file sets (keys flat or under ``[train]``), as written: its shape is checked
    here, its values by :meth:`TrainConfig.updated`."""
    p = Path(path)
    try:
        # TOML is UTF-8, whatever the locale; a byte-order mark (Windows editors' "UTF-8 with BOM", PowerShell 5's
        # Out-File) is dropped, as manifests drop it: before wbc 0.35.0 it was "not valid TOML" at line 1
        data = tomllib.loads(p.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{p}: is a folder, not a TOML config file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not UTF-8 text, as TOML must be (saved as UTF-16 \"Unicode\"?)") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot be read ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML ({exc})") from None
    if "train" in data:  # the keys go under [train], or all at the top: never some of each
        stray = sorted(k for k in data if k != "train")
        if stray:
            raise ConfigError(f"{p}: {', '.join(stray)} outside the [train] table would be ignored; "
                              "put every key under [train] (or none)")
        data = data["train"]
        if not isinstance(data, dict):  # `train = "configs/default.toml"`: an AttributeError traceback
            raise ConfigError(f"{p}: train must be a [train] table of options, not {data!r}")
    return data


def load_config(path: str | os.PathLike[str] | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults <- TOML file (flat keys, or under ``[train]``) <- ``overrides`` (CLI flags)."""
    cfg = TrainConfig()
    if path:
        data = read_config_file(path)
        try:
            cfg = cfg.updated(data)
        except ConfigError as exc:
            raise ConfigError(f"{Path(path)}: {exc}") from None
    return cfg.updated(overrides or {})


def given_options(path: str | os.PathLike[str] | None, overrides: dict[str, Any] | None = None) -> frozenset[str]:
    """The options a user set, in the config file or as flags (``overrides`` that are not None), as against those
    left at their defaults: `wbc train --resume` compares only these with the run's own."""
    from_file = set(read_config_file(path)) if path else set()
    return frozenset(from_file | {k for k, v in (overrides or {}).items() if v is not None})
