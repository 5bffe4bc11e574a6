"""Load an exported classifier (ONNX file with its metadata) and run it with ONNX Runtime.

This is the only place where training and analysis meet: training writes an ONNX file whose
``metadata_props["wbc"]`` holds :class:`ModelInfo` as JSON (a copy sits beside it as ``<name>.json``);
analysis reads both back. Nothing here imports torch.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from wbc.errors import ModelError, WbcError, checked_whole
from wbc.io import atomic_write_bytes, atomic_write_text, output_target
from wbc.paths import DEFAULT_MODEL
from wbc.preprocess import centre_crop, checked_cells, prepare_batch
from wbc.runtime import SessionGroup

METADATA_KEY = "wbc"
#: Layout of :class:`ModelInfo` as stored. 1 (no ``format_version`` key): stain, cell fraction and colour
#: statistics inside the free ``extra`` dict; 2: typed fields (``preprocessing``, ``colour_reference``);
#: 3: ``class_prior`` (read by older wbc it would be ignored, changing the answers, so they refuse it).
FORMAT_VERSION = 3
#: ``extra`` keys of format 1 that are typed fields now, and where they went.
_LEGACY_PREPROCESSING = ("stain", "cell_fraction")


@dataclass(frozen=True)
class Preprocessing:
    """How a cell is prepared for the network beyond the resize, centre crop and normalisation
    (``input_size``, ``centre_crop``, ``mean``, ``std`` of :class:`ModelInfo`)."""

    #: A fixed stain normalisation applied before the network (:func:`wbc.stain.normalise_batch`'s spec:
    #: ``method``, ``target``, ``source``), set by ``wbc adapt --stain``; None: none.
    stain: dict[str, Any] | None = None
    #: Cell diameter / crop side of the training crops, so smear crops can match it (:mod:`wbc.crops`);
    #: None: :data:`wbc.crops.DEFAULT_CELL_FRACTION`.
    cell_fraction: float | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Preprocessing:
        data = data or {}
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass
class ModelInfo:
    """Everything needed to use a model correctly, stored inside the model file."""

    classes: list[str]
    input_size: int  # cells are resized to this, whole frame
    mean: list[float]
    std: list[float]
    architecture: str = ""
    version: str = ""
    model_id: str = ""
    temperature: float = 1.0  # logits are divided by this (fitted on validation data)
    review_threshold: float = 0.0  # confidence below this -> review
    review_target_accuracy: float = 0.0  # what review_threshold was fitted for (accuracy of accepted cells)
    training_data: str = ""
    created: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)  # validation metrics at export
    ood: dict[str, Any] = field(default_factory=dict)  # statistics for out-of-distribution flags
    head: dict[str, Any] = field(default_factory=dict)  # optional replacement head (wbc adapt)
    extra: dict[str, Any] = field(default_factory=dict)  # provenance notes (config, export check, ...)
    centre_crop: int = 0  # >0: the network's input is the central centre_crop px of the input_size cell
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    colour_reference: dict[str, Any] = field(default_factory=dict)  # training colours per stain method
    #: A lab's class frequencies, estimated without labels (``wbc adapt --no-labels``); probabilities are
    #: re-weighted to them from training's class-balanced prior (:func:`apply_class_prior`). Empty: none.
    class_prior: dict[str, float] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        """Accept ``preprocessing`` as a dict (from JSON) and format 1's settings inside ``extra``."""
        if not isinstance(self.preprocessing, Preprocessing):
            self.preprocessing = Preprocessing.from_dict(self.preprocessing)
        if any(k in self.extra for k in (*_LEGACY_PREPROCESSING, "colour_reference")):
            self.extra = dict(self.extra)
            legacy = {k: self.extra.pop(k) for k in _LEGACY_PREPROCESSING if k in self.extra}
            self.preprocessing = replace(self.preprocessing, **{
                k: v for k, v in legacy.items() if getattr(self.preprocessing, k) is None})
            colours = self.extra.pop("colour_reference", None)
            self.colour_reference = self.colour_reference or colours or {}

    @property
    def network_size(self) -> int:
        """The side of the network's input: ``centre_crop`` if set, else ``input_size``."""
        return self.centre_crop or self.input_size

    def to_json(self) -> str:
        return json.dumps(asdict(self) | {"format_version": FORMAT_VERSION}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelInfo:
        """Read any format up to :data:`FORMAT_VERSION` (format 1 is migrated on reading)."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ModelError(f"metadata is a JSON {type(data).__name__}, not an object")
        version = int(data.get("format_version", 1))
        if version > FORMAT_VERSION:
            raise ModelError(f"model metadata format {version} is newer than this wbc reads ({FORMAT_VERSION}); "
                             "upgrade wbc")
        known = {f for f in cls.__dataclass_fields__}
        check_fields(data)
        return cls(**{k: v for k, v in data.items() if k in known} | {"format_version": FORMAT_VERSION})


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _whole(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _finite(v: Any) -> bool:
    """A number that is neither infinite nor NaN (JSON from Python's ``json.dumps`` may hold ``Infinity``, ``NaN``)."""
    return _number(v) and math.isfinite(v)


def _share(v: Any) -> bool:
    return _finite(v) and 0 <= v <= 1


def _matrix(v: Any, cols: int | None = None) -> int | None:
    """How many rows the list of equally long lists of finite numbers ``v`` has (``cols`` long, when given), or
    None when it is none."""
    if not isinstance(v, list) or not v or not all(isinstance(r, list) and r and all(_finite(x) for x in r) for r in v):
        return None
    width = len(v[0]) if cols is None else cols
    return len(v) if all(len(r) == width for r in v) else None


def _vector(v: Any, n: int | None = None) -> bool:
    return isinstance(v, list) and bool(v) and all(_finite(x) for x in v) and (n is None or len(v) == n)


def ood_problem(ood: dict[str, Any]) -> str | None:
    """What is wrong with a model's out-of-distribution statistics (:mod:`wbc.ood`'s ``references``: each a colour
    Gaussian with its threshold and, with ``pca``, class centres in its space), or None. Read unchecked they raised
    ``KeyError`` at the first cell classified, a traceback, and a threshold of 0 flagged every cell.

    >>> ood_problem({"references": [{"colour": {"mean": [0.5], "icov": [[1.0]], "threshold": 3.0}}]}) is None
    True
    >>> ood_problem({"references": [{"colour": {}}]})
    'references[0].colour: mean, icov and threshold (a number > 0)'
    """
    refs = ood.get("references")
    if refs is None:  # none fitted (``{"percentile": 99}``: the percentile `wbc quantize` re-fits at)
        return None
    if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
        return "references: a list of objects"
    pca = ood.get("pca")
    k = None
    if pca is not None:
        dims = _matrix(pca.get("components")) if isinstance(pca, dict) else None
        if (dims is None or not _vector(pca.get("mean"), len(pca["components"][0]))
                or not _vector(pca.get("scale"), dims)):
            return "pca: mean, components and scale (lists of numbers of matching lengths)"
        k = dims
    for i, ref in enumerate(refs):
        col = ref.get("colour")
        if not (isinstance(col, dict) and _vector(col.get("mean"))
                and _matrix(col.get("icov"), len(col["mean"])) == len(col["mean"])
                and _finite(col.get("threshold")) and col["threshold"] > 0):
            return f"references[{i}].colour: mean, icov and threshold (a number > 0)"
        feat = ref.get("feature")
        if k is not None and not (
                isinstance(feat, dict) and isinstance(feat.get("centres"), dict) and feat["centres"]
                and all(_vector(c, k) for c in feat["centres"].values())
                and all(_finite(feat.get(f)) and feat[f] > 0 for f in ("resid_scale", "threshold"))):
            return f"references[{i}].feature: centres, resid_scale and threshold (numbers > 0)"
    return None


#: What each metadata field must hold, as (test, description). A hand-edited model file gets these wrong: a wrong
#: type fails deep inside classification with a traceback, and some answer wrongly without a word (a string of
#: class names is a class per letter, one mean value is broadcast over the three channels).
_FIELD_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "classes": (lambda v: isinstance(v, list) and bool(v) and all(isinstance(c, str) and c for c in v)
                and len(set(v)) == len(v), "a non-empty list of distinct class names"),
    "input_size": (lambda v: _whole(v) and v > 0, "a whole number > 0"),
    "centre_crop": (lambda v: _whole(v) and v >= 0, "a whole number >= 0"),
    "mean": (lambda v: isinstance(v, list) and len(v) == 3 and all(_number(x) for x in v), "three numbers"),
    "std": (lambda v: isinstance(v, list) and len(v) == 3 and all(_number(x) and x > 0 for x in v),
            "three numbers > 0"),
    "temperature": (lambda v: _finite(v) and v > 0, "a finite number > 0"),
    "review_threshold": (_share, "a number between 0 and 1"),
    "review_target_accuracy": (_share, "a number between 0 and 1"),
    "class_prior": (lambda v: isinstance(v, dict) and all(_number(x) for x in v.values()),
                    "an object of class: frequency"),
    "preprocessing": (lambda v: v is None or isinstance(v, dict), "an object"),
    **{k: (lambda v: isinstance(v, dict), "an object") for k in ("metrics", "ood", "head", "extra",
                                                                 "colour_reference")},
    **{k: (lambda v: isinstance(v, str), "a string") for k in ("architecture", "version", "model_id",
                                                               "training_data", "created")},
}


def check_fields(data: dict[str, Any]) -> None:
    """Refuse metadata (as read from JSON) whose fields hold the wrong type or an impossible value, naming the
    field. Hand-written, not pydantic: it runs at every model load, whose time is ``wbc classify``'s start-up.

    >>> check_fields({"classes": "basophil"})
    Traceback (most recent call last):
    wbc.errors.ModelError: field classes: a non-empty list of distinct class names, not 'basophil'
    """
    for key, (ok, want) in _FIELD_CHECKS.items():
        if key in data and not ok(data[key]):
            raise ModelError(f"field {key}: {want}, not {data[key]!r}"[:200])
    if isinstance(data.get("ood"), dict) and (why := ood_problem(data["ood"])):
        raise ModelError(f"field ood: {why}")


def with_metadata(onnx_bytes: bytes, info: ModelInfo) -> bytes:
    """``onnx_bytes`` with ``info`` as its wbc metadata (any previous metadata replaced), checked."""
    import onnx

    proto = onnx.load_from_string(onnx_bytes)
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, info.to_json()
    proto.producer_name = "wbc"
    # the version's leading number ("2024-06" -> 2024, "2rc1" -> 2, "v3" -> 0): any label must export
    lead = re.match(r"\d+", info.version)
    proto.model_version = min(int(lead.group()), 2**63 - 1) if lead else 0
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def check_model_output(path: str | os.PathLike[str]) -> Path:
    """``path`` as a model file's name, or a one-line :class:`WbcError` unless it ends in ``.onnx``: a ``.json`` name
    would be replaced by the metadata copy :func:`write_model` writes beside it, and a typo such as ``best.pt`` for
    ``best.onnx`` would replace a run's PyTorch checkpoint with ONNX bytes.

    >>> check_model_output("lab.onnx").name
    'lab.onnx'
    """
    p = Path(path)
    if p.suffix.lower() != ".onnx":
        raise WbcError(f"{p}: a model file is ONNX; give a .onnx name (its metadata is written beside it as .json)")
    return p


def beside_model(path: str | os.PathLike[str], suffix: str) -> Path:
    """The file with ``suffix`` that goes with the model file ``path`` (its ``.json`` copy, its ``.pt`` weights):
    beside the file a link ``path`` points to, as that is the file written and described (before wbc 0.33.0 the
    copy went beside the link, and the target's own ``.json`` kept describing the previous model).

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> (d / "lab.onnx").symlink_to("models/lab_v3.onnx")
    >>> beside_model(d / "lab.onnx", ".json") == d.resolve() / "models" / "lab_v3.json"
    True
    """
    target = output_target(path)[0]
    return target.with_suffix(suffix) if target.suffix.lower() == ".onnx" else target.with_name(target.name + suffix)


def write_model(path: str | os.PathLike[str], onnx_bytes: bytes, info: ModelInfo) -> Path:
    """Write a model file carrying ``info`` (atomically) and a readable copy of it as ``<name>.json`` beside it
    (through a link: beside its target, :func:`beside_model`).

    The one writer of model files: export, ``wbc adapt`` and ``wbc.ood fit`` all go through it. ``info`` is checked
    as the loader checks it (:func:`check_fields`) before anything is written: before wbc 0.35.0
    ``update_metadata(m, review_threshold=98.6)`` replaced ``m`` with a model that no longer loaded.
    """
    p = check_model_output(path)
    try:
        check_fields(json.loads(info.to_json()))
    except (ModelError, TypeError, ValueError) as exc:  # a refused field; a value JSON cannot hold
        raise ModelError(f"{p}: metadata not written ({exc}); the model is unchanged") from None
    atomic_write_bytes(p, with_metadata(onnx_bytes, info))
    atomic_write_text(beside_model(p, ".json"), json.dumps(json.loads(info.to_json()), indent=2) + "\n")
    return p


def checkpoint_info(ckpt: object, path: str | os.PathLike[str]) -> ModelInfo:
    """The metadata of ``ckpt``, a PyTorch checkpoint loaded from ``path``, for the two readers of checkpoints
    (``wbc.train.export.load_checkpoint``, ``wbc.train.finetune.load_weights``): one line naming the file when it is
    not a checkpoint dict (a bare tensor indexed by "info" was a PyTorch warning before the error) or a field of its
    metadata is refused (the field's message alone did not say which file, since wbc 0.35.0).

    >>> checkpoint_info([1.0], "w.pt")
    Traceback (most recent call last):
    wbc.errors.WbcError: w.pt: not a wbc checkpoint (a list, not a checkpoint dict)
    """
    if not isinstance(ckpt, dict):
        raise WbcError(f"{path}: not a wbc checkpoint (a {type(ckpt).__name__}, not a checkpoint dict)")
    try:
        return ModelInfo.from_json(ckpt["info"])
    except WbcError as exc:
        raise WbcError(f"{path}: unreadable wbc metadata ({exc})") from None


def update_metadata(path: str | os.PathLike[str], **changes: Any) -> ModelInfo:
    """Change metadata fields of a model file in place (e.g. statistics added after export); a value the loader
    would refuse leaves the file as it was (:func:`write_model`)."""
    p = Path(path)
    info = Classifier(p, threads=1).info
    for k, v in changes.items():
        if k not in ModelInfo.__dataclass_fields__:
            raise KeyError(k)
        setattr(info, k, v)
    write_model(p, p.read_bytes(), info)
    return info


def class_probabilities(logits: np.ndarray, info: ModelInfo, label_set: Sequence[str] = ()) -> np.ndarray:
    """Calibrated class probabilities of a model's logits: ``softmax(logits / temperature)``, re-weighted to
    the lab's class frequencies when the model stores them (:func:`prior_for` the ``label_set`` the answer will be
    restricted to, ``--classes``)."""
    return apply_class_prior(softmax(logits, info.temperature), info.classes, prior_for(info, label_set))


def label_set_key(label_set: Sequence[str]) -> str:
    """How a label set names its class prior in ``info.extra["class_priors"]``: its classes, sorted, comma-joined.

    >>> label_set_key(["neutrophil", "basophil"])
    'basophil,neutrophil'
    """
    return ",".join(sorted(label_set))


def without_lab_prior(info: ModelInfo) -> ModelInfo:
    """A copy of ``info`` without the lab class frequencies `wbc adapt --no-labels` estimated (``class_prior`` and
    ``extra["class_priors"]``): what an adaptation that judges or refits the probabilities itself starts from.

    >>> info = ModelInfo(["a", "b"], 8, [0.0] * 3, [1.0] * 3, class_prior={"a": 0.7, "b": 0.3},
    ...                  extra={"class_priors": {"a,b": {"a": 0.7, "b": 0.3}}, "tta_views": 4})
    >>> bare = without_lab_prior(info)
    >>> bare.class_prior, bare.extra, info.class_prior["a"]
    ({}, {'tta_views': 4}, 0.7)
    """
    extra = {k: v for k, v in (info.extra or {}).items() if k != "class_priors"}
    return replace(info, class_prior={}, extra=copy.deepcopy(extra))


def prior_for(info: ModelInfo, label_set: Sequence[str] = ()) -> dict[str, float]:
    """The lab's class frequencies to re-weight to: those `wbc adapt --no-labels` estimated over exactly
    ``label_set`` when it stored them (``info.extra["class_priors"]``: adapted without ``--classes``, a lab may still
    answer over 5 classes, and frequencies estimated over 8 misplace the cells the 8 classes split differently,
    lymphocytes taken for erythroblasts), else ``info.class_prior``.

    >>> info = ModelInfo(["a", "b", "c"], 8, [0.0] * 3, [1.0] * 3, class_prior={"a": 0.5, "b": 0.3, "c": 0.2},
    ...                  extra={"class_priors": {"a,b": {"a": 0.4, "b": 0.6}}})
    >>> prior_for(info, ("b", "a")), prior_for(info)["c"], prior_for(info, ("a", "c"))["c"]
    ({'a': 0.4, 'b': 0.6}, 0.2, 0.2)
    """
    if label_set:
        by_set = info.extra.get("class_priors") if isinstance(info.extra, dict) else None
        prior = by_set.get(label_set_key(label_set)) if isinstance(by_set, dict) else None
        if isinstance(prior, dict) and prior:
            return {str(k): float(v) for k, v in prior.items()}
    return info.class_prior


def apply_class_prior(probs: np.ndarray, classes: list[str], prior: dict[str, float]) -> np.ndarray:
    """Probabilities re-weighted from a uniform prior over the classes in ``prior`` to ``prior`` (Bayes' rule
    for a change of class frequencies, Saerens et al. 2002): ``p'(c|x) ∝ p(c|x) * prior[c] * len(prior)``.

    Training balances the classes, so a model's calibrated probabilities treat every class as equally
    frequent; a lab where three cells in five are neutrophils is not like that. Classes outside ``prior``
    keep weight 1, so a 5-part prior leaves the other classes' probabilities as they were.

    >>> p = np.array([[0.5, 0.5, 0.0]], np.float32)
    >>> apply_class_prior(p, ["a", "b", "c"], {"a": 0.75, "b": 0.25}).round(2).tolist()
    [[0.75, 0.25, 0.0]]
    >>> apply_class_prior(p, ["a", "b", "c"], {}).tolist()  # no prior: unchanged
    [[0.5, 0.5, 0.0]]
    """
    if not prior:
        return probs
    w = np.array([prior.get(c, 1.0 / len(prior)) * len(prior) for c in classes], np.float64)
    out = np.asarray(probs, np.float64) * w[None, :]
    return (out / np.maximum(out.sum(1, keepdims=True), 1e-300)).astype(np.float32)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """float32 class probabilities of ``logits / temperature`` (computed in float64, row-wise)."""
    from scipy.special import softmax as _softmax

    return _softmax(np.asarray(logits, np.float64) / max(temperature, 1e-6), axis=1).astype(np.float32)


#: Flips/rotations averaged per cell found in a smear field (``wbc analyze``; ``--tta`` overrides): the four
#: rotations. Chosen on validation (docs/generalisation.md, "Averaging over rotations"): BCCD validation smears
#: 0.694 -> 0.753 subtype accuracy, PBC validation cells unchanged; a field holds a few cells, so the cost is
#: small next to finding them. ``wbc classify`` keeps one view unless asked (speed: 400+ cells/s).
SMEAR_TTA_VIEWS = 4
#: Flips/rotations a model adapted to a lab (every ``wbc adapt`` method) averages per cell, stored as its
#: ``extra["tta_views"]``: the four rotations. Chosen on validation (docs/generalisation.md): BCCD val cells after
#: label-free adaptation on its train cells 0.882 -> 0.906; three draws of 100 labelled BCCD train/val cells,
#: 0.853 -> 0.865 fine-tuned and 0.789 -> 0.831 with the head refit on the others, every draw up.
ADAPTED_TTA_VIEWS = 4
#: A single-cell image that one view names with a confidence below ``UNSURE_GATE`` (after the chosen label set)
#: is answered again by the mean of the four rotations (``UNSURE_TTA_VIEWS``), when the classifier answers with one
#: view by default (the shipped model in ``wbc classify``, ``wbc evaluate`` and ``/classify``; not with ``--tta``):
#: the rotations' gain where the network is unsure, at the cost of the few cells it is unsure of. Chosen on
#: validation (docs/generalisation.md, "Rotations where the model is unsure").
UNSURE_GATE = 0.7
UNSURE_TTA_VIEWS = 4


def checked_tta_views(views: int) -> int:
    """``views`` as an int, if it is a number of flips/rotations to average (1-8); else a one-line error naming
    ``tta`` (``--tta`` on the command line, ``tta=`` / :meth:`Classifier.with_tta` in Python). Since wbc 0.30.0
    2.7 is refused, not taken as 2.

    >>> checked_tta_views(4)
    4
    """
    return checked_whole(views, "tta", 1, 8, "the flips/rotations to average", ModelError)


class Classifier:
    """An ONNX Runtime session plus the metadata that says how to feed it and read it.

    Outputs of the network: ``logits`` (N, C), ``embedding`` (N, D) and ``cam`` (N, C, h, w), the
    class activation maps used for Grad-CAM overlays.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, threads: int = 2) -> None:
        self.path = Path(path) if path else DEFAULT_MODEL
        if self.path.is_dir():  # a run folder for its model.onnx: "not found" named the wrong problem
            inside = " (it holds model.onnx)" if (self.path / "model.onnx").is_file() else ""
            raise ModelError(f"{self.path}: is a folder; give the model's .onnx file{inside}")
        if not self.path.is_file():
            raise ModelError(f"{self.path}: model file not found")
        # one single-thread session per core, sharing each batch (wbc.runtime.SessionGroup): the decoding threads
        # need those cores too, and independent calls keep them busier than one multi-threaded call
        self.sessions = SessionGroup(self.path, threads)
        self.session = self.sessions.sessions[0]
        meta = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in meta:
            raise ModelError(f"{self.path}: ONNX file has no wbc metadata (was it exported by `wbc export`?)")
        try:
            self.info = ModelInfo.from_json(meta[METADATA_KEY])
        except (ModelError, ValueError, TypeError) as exc:  # a newer format, bad JSON, wrong field types
            raise ModelError(f"{self.path}: unreadable wbc metadata ({exc})") from None
        self._check_graph()
        # a head refitted by `wbc adapt` lives in the metadata, not in the graph, whose class-activation maps are
        # still the old head's: they would show the old head's evidence for the new head's answer, so none is offered
        self.outputs = [o.name for o in self.session.get_outputs() if not (self.info.head and o.name == "cam")]
        self.input_name = self.session.get_inputs()[0].name
        #: the chosen label set (``--classes``); empty: every class. See :meth:`with_classes`.
        self.label_set: tuple[str, ...] = ()
        #: views averaged per cell when asked for explicitly (``--tta``); None: the default, see :meth:`tta_views`.
        self.tta: int | None = None
        #: the confidence below which a one-view answer is re-run over the four rotations; None: ``UNSURE_GATE``;
        #: see :meth:`unsure_views`.
        self.unsure_gate: float | None = None
        #: calibrate smear fields' colours on their red cells before cropping (``--no-colour-calibration``: False); see
        #: :meth:`red_cell_target`.
        self.colour_calibration: bool = True

    def _check_graph(self) -> None:
        """The metadata against the network: its input side and its number of classes (or the head's shapes), so a
        model whose metadata was edited to fit another network is refused in one line, not answered with."""
        shape = self.session.get_inputs()[0].shape
        side = self.info.network_size
        if len(shape) == 4 and all(isinstance(d, int) for d in shape[2:]) and tuple(shape[2:]) != (side, side):
            raise ModelError(f"{self.path}: the network takes {shape[2]}x{shape[3]} inputs, its metadata says {side}")
        widths = {o.name: o.shape[-1] if o.shape else None for o in self.session.get_outputs()}
        n = len(self.info.classes)
        if self.info.head:
            try:
                w = np.asarray(self.info.head.get("weight"), np.float32)
                b = np.asarray(self.info.head.get("bias"), np.float32)
            except (ValueError, TypeError):
                w = b = np.zeros(0, np.float32)
            emb = widths.get("embedding")
            if w.ndim != 2 or w.shape[0] != n or b.shape != (n,) or (isinstance(emb, int) and w.shape[1] != emb):
                raise ModelError(f"{self.path}: its metadata's head does not map the {emb}-wide embedding to "
                                 f"its {n} classes")
        elif isinstance(widths.get("logits"), int) and widths["logits"] != n:
            raise ModelError(f"{self.path}: the network answers {widths['logits']} classes, its metadata names {n}")

    def with_classes(self, classes: str | list[str] | tuple[str, ...] | None) -> Classifier:
        """This classifier (the same ONNX session, no copy of the network) answering only among ``classes``
        (``"5part"``, ``"neutrophil,lymphocyte"``, names): probabilities renormalised over them, the review
        threshold applied to the renormalised confidence (:func:`wbc.classify.predict_cells`)."""
        import copy

        from wbc.labels import parse_class_set

        out = copy.copy(self)
        out.label_set = parse_class_set(classes, self.classes)
        return out

    def with_tta(self, views: int | None) -> Classifier:
        """This classifier (the same session) averaging its logits over ``views`` flips/rotations of each cell
        (1-8, :func:`wbc.preprocess.dihedral_view`; 1: none; None: the default, :meth:`tta_views`)."""
        import copy

        out = copy.copy(self)
        out.tta = None if views is None else checked_tta_views(views)
        return out

    def with_unsure_gate(self, gate: float | None) -> Classifier:
        """This classifier (the same session) re-running cells it names below ``gate`` confidence over the four
        rotations (0: never; None: the default, :data:`UNSURE_GATE`); see :meth:`unsure_views`."""
        import copy

        if gate is not None and not 0.0 <= gate <= 1.0:
            raise ModelError(f"unsure gate {gate}: a confidence between 0 and 1 is needed")
        out = copy.copy(self)
        out.unsure_gate = gate
        return out

    def with_colour_calibration(self, on: bool = True) -> Classifier:
        """This classifier (the same session) with smear-field red-cell calibration on or off."""
        import copy

        out = copy.copy(self)
        out.colour_calibration = bool(on)
        return out

    def red_cell_target(self) -> dict[str, Any] | None:
        """The training lab's glass and red-cell colours a smear field is calibrated to
        (:func:`wbc.stain.calibrate_red_cells`), or None: calibration off, a model without them (fitted by
        ``wbc ood fit``), or a model adapted to a lab (``wbc adapt``, with or without labels): it was fitted to,
        or chose for, that lab's colours as they come, so they are left as they come."""
        adapted = isinstance(self.info.extra, dict) and "adapt" in self.info.extra
        if not self.colour_calibration or adapted or self.info.preprocessing.stain:
            return None
        return self.info.colour_reference.get("red_cells") or None

    def tta_views(self, smear: bool = False) -> int:
        """Flips/rotations averaged per cell: ``--tta`` when given, else the model's own
        (``extra["tta_views"]``, which ``wbc adapt --no-labels`` sets), else 1; for cells found in smear
        fields (``smear``) at least :data:`SMEAR_TTA_VIEWS`, since a field holds few cells."""
        if self.tta is not None:
            return self.tta
        own = int(self.info.extra.get("tta_views", 1)) if isinstance(self.info.extra, dict) else 1
        return max(own, SMEAR_TTA_VIEWS) if smear else own

    def unsure_views(self) -> tuple[float, int]:
        """``(gate, views)``: a cell answered with one view and a confidence below ``gate`` is answered again by the
        mean of ``views`` flips/rotations (:func:`wbc.classify.predict_cells`). ``(0.0, 1)`` when the views were
        chosen explicitly: ``--tta`` (including ``--tta 1``), or the model's own ``extra["tta_views"]`` (what
        ``wbc adapt --tta N`` stores, 1 included)."""
        own = isinstance(self.info.extra, dict) and "tta_views" in self.info.extra
        if self.tta is not None or own:
            return 0.0, 1
        return (UNSURE_GATE if self.unsure_gate is None else self.unsure_gate), UNSURE_TTA_VIEWS

    @property
    def classes(self) -> list[str]:
        return list(self.info.classes)

    @property
    def model_id(self) -> str:
        return self.info.model_id or self.path.stem

    def network_input(self, cells: np.ndarray | list[np.ndarray]) -> np.ndarray:
        """uint8 RGB cells at ``input_size`` -> the float32 (N, 3, S, S) batch the network is fed.

        The one place inference preprocessing happens: the stain normalisation in the metadata
        (``info.preprocessing.stain``, see :mod:`wbc.stain`), then the ``centre_crop``, then the normalisation.
        Anything but uint8 (N, S, S, 3) is refused (:func:`wbc.preprocess.checked_cells`): float 0-1 or 16-bit cells
        were answered as if near-black or blown out, a confident wrong class. RGB order cannot be checked: a BGR
        cell (``cv2.imread``) is answered wrongly without a word.
        """
        cells = checked_cells(cells, self.info.input_size)
        stain = self.info.preprocessing.stain
        if stain:
            from wbc.stain import normalise_batch

            cells = normalise_batch(cells, stain)
        return prepare_batch(centre_crop(np.asarray(cells), self.info.centre_crop), self.info.mean, self.info.std)

    def run(self, cells: np.ndarray | list[np.ndarray], want: tuple[str, ...] = ("logits",)) -> dict[str, np.ndarray]:
        """Raw network outputs for uint8 RGB cells already at ``input_size`` (see :meth:`network_input`)."""
        x = self.network_input(cells)
        names = [n for n in want if n in self.outputs]
        if self.info.head and "logits" in want and "embedding" not in names:
            names.append("embedding")
        if not names:  # none of ``want`` is offered (ONNX Runtime would answer every output for no names)
            return {}
        res = dict(zip(names, self.sessions.run(names, x), strict=True))
        if self.info.head and "logits" in want:
            w = np.asarray(self.info.head["weight"], np.float32)
            b = np.asarray(self.info.head["bias"], np.float32)
            res["logits"] = res["embedding"] @ w.T + b
        return res

    def predict_proba(self, cells: np.ndarray | list[np.ndarray], batch_size: int = 64) -> np.ndarray:
        """Calibrated class probabilities (N, C) for uint8 RGB cells at ``input_size``, within :attr:`label_set`
        (:meth:`with_classes`; the other classes 0, the rest renormalised, the lab's class prior for that set) as
        :func:`wbc.classify.predict_cells` answers; before wbc 0.30.0 over every class whatever the label set.
        One view per cell, without the re-framing or the other evidence ``predict_cells`` weighs in."""
        from wbc.labels import restrict_probabilities

        batch_size = checked_whole(batch_size, "batch_size", 1)
        cells = checked_cells(cells, self.info.input_size)
        out = [restrict_probabilities(class_probabilities(self.run(cells[i : i + batch_size])["logits"], self.info,
                                                          self.label_set), self.classes, self.label_set)[0]
               for i in range(0, len(cells), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)


def load_model(path: str | os.PathLike[str] | None = None, threads: int = 2) -> Classifier:
    """The classifier at ``path``, or the default model shipped with wbc."""
    return Classifier(path, threads=threads)
