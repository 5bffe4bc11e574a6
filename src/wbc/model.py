"""Load an exported classifier (ONNX file with its metadata) and run it with ONNX Runtime.

This is the only place where training and analysis meet: training writes an ONNX file whose
``metadata_props["wbc"]`` holds :class:`ModelInfo` as JSON (a copy sits beside it as ``<name>.json``);
analysis reads both back. Nothing here imports torch.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wbc.errors import ModelError
from wbc.io import atomic_write_bytes, atomic_write_text
from wbc.paths import DEFAULT_MODEL
from wbc.preprocess import centre_crop, prepare_batch

METADATA_KEY = "wbc"


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
    review_target_accuracy: float = 0.0
    training_data: str = ""
    created: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)  # validation metrics at export
    ood: dict[str, Any] = field(default_factory=dict)  # statistics for out-of-distribution flags
    head: dict[str, Any] = field(default_factory=dict)  # optional replacement head (wbc adapt)
    extra: dict[str, Any] = field(default_factory=dict)
    centre_crop: int = 0  # >0: the network's input is the central centre_crop px of the input_size cell

    @property
    def network_size(self) -> int:
        """The side of the network's input: ``centre_crop`` if set, else ``input_size``."""
        return self.centre_crop or self.input_size

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelInfo:
        data = json.loads(text)
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def with_metadata(onnx_bytes: bytes, info: ModelInfo) -> bytes:
    """``onnx_bytes`` with ``info`` as its wbc metadata (any previous metadata replaced), checked."""
    import onnx

    proto = onnx.load_from_string(onnx_bytes)
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, info.to_json()
    proto.producer_name = "wbc"
    proto.model_version = int(info.version.split(".")[0]) if info.version[:1].isdigit() else 0
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def write_model(path: str | os.PathLike[str], onnx_bytes: bytes, info: ModelInfo) -> Path:
    """Write a model file carrying ``info`` (atomically) and a readable copy of it as ``<name>.json``.

    The one writer of model files: export, ``wbc adapt`` and ``wbc.ood fit`` all go through it.
    """
    p = Path(path)
    atomic_write_bytes(p, with_metadata(onnx_bytes, info))
    atomic_write_text(p.with_suffix(".json"), json.dumps(json.loads(info.to_json()), indent=2) + "\n")
    return p


def update_metadata(path: str | os.PathLike[str], **changes: Any) -> ModelInfo:
    """Change metadata fields of a model file in place (e.g. statistics added after export)."""
    p = Path(path)
    info = Classifier(p, threads=1).info
    for k, v in changes.items():
        if k not in ModelInfo.__dataclass_fields__:
            raise KeyError(k)
        setattr(info, k, v)
    write_model(p, p.read_bytes(), info)
    return info


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits.astype(np.float64) / max(temperature, 1e-6)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


class Classifier:
    """An ONNX Runtime session plus the metadata that says how to feed it and read it.

    Outputs of the network: ``logits`` (N, C), ``embedding`` (N, D) and ``cam`` (N, C, h, w), the
    class activation maps used for Grad-CAM overlays.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, threads: int = 2) -> None:
        import onnxruntime as ort

        self.path = Path(path) if path else DEFAULT_MODEL
        if not self.path.is_file():
            raise ModelError(f"{self.path}: model file not found")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, threads)
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # No busy-waiting between batches: the decoding threads need those cores (`wbc classify` ran
        # 1.35x faster end to end on 2 cores without spinning, benchmarks/classify_speed.py).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelError(f"{self.path}: not a valid ONNX model ({str(exc).splitlines()[0][:200]})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in meta:
            raise ModelError(f"{self.path}: ONNX file has no wbc metadata (was it exported by `wbc export`?)")
        self.info = ModelInfo.from_json(meta[METADATA_KEY])
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.input_name = self.session.get_inputs()[0].name

    @property
    def classes(self) -> list[str]:
        return list(self.info.classes)

    @property
    def model_id(self) -> str:
        return self.info.model_id or self.path.stem

    def network_input(self, cells: np.ndarray | list[np.ndarray]) -> np.ndarray:
        """uint8 RGB cells at ``input_size`` -> the float32 (N, 3, S, S) batch the network is fed.

        The one place inference preprocessing happens: the stain normalisation in the metadata
        (``extra["stain"]``, see :mod:`wbc.stain`), then the ``centre_crop``, then the normalisation.
        """
        stain = self.info.extra.get("stain")
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
        res = dict(zip(names, self.session.run(names, {self.input_name: x}), strict=True))
        if self.info.head and "logits" in want:
            w = np.asarray(self.info.head["weight"], np.float32)
            b = np.asarray(self.info.head["bias"], np.float32)
            res["logits"] = res["embedding"] @ w.T + b
        return res

    def predict_proba(self, cells: np.ndarray | list[np.ndarray], batch_size: int = 64) -> np.ndarray:
        """Calibrated class probabilities (N, C) for uint8 RGB cells at ``input_size``."""
        out = [softmax(self.run(cells[i : i + batch_size])["logits"], self.info.temperature)
               for i in range(0, len(cells), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)


def load_model(path: str | os.PathLike[str] | None = None, threads: int = 2) -> Classifier:
    """The classifier at ``path``, or the default model shipped with wbc."""
    return Classifier(path, threads=threads)
