"""Tiny real ONNX classifiers for tests: mean colour -> one linear layer, with wbc metadata.

They run through the real ONNX Runtime path in milliseconds, so tests of the analysis path need no trained
network. Needs the ``onnx`` package (the test skips without it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from wbc.labels import CLASSES
from wbc.model import METADATA_KEY, ModelInfo


def mean_colour_model(
    path: Path, size: int, weight: np.ndarray, model_id: str, extra: dict[str, Any] | None = None,
    embedding_output: bool = False, top_half: bool = False,
) -> Path:
    """logits = mean RGB (normalised) @ weight.T; optionally the mean colour as an ``embedding`` output.

    ``top_half``: the mean over the image's top half only, so the answer changes when the cell is turned."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    pooled = "embedding" if embedding_output else "flat"
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", len(CLASSES)])]
    if embedding_output:
        outputs.append(helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 3]))
    inits = [numpy_helper.from_array(weight.astype(np.float32), "W"),
             numpy_helper.from_array(np.zeros(len(CLASSES), np.float32), "B")]
    nodes = [helper.make_node("GlobalAveragePool", ["top" if top_half else "input"], ["gap"]),
             helper.make_node("Flatten", ["gap"], [pooled]),
             helper.make_node("Gemm", [pooled, "W", "B"], ["logits"], transB=1)]
    if top_half:  # rows 0 .. size/2 of axis 2 (height)
        inits += [numpy_helper.from_array(np.array(v, np.int64), n)
                  for v, n in (([0], "starts"), ([size // 2], "ends"), ([2], "axes"))]
        nodes.insert(0, helper.make_node("Slice", ["input", "starts", "ends", "axes"], ["top"]))
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        outputs, inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    info = ModelInfo(classes=list(CLASSES), input_size=size, mean=[0.5] * 3, std=[0.25] * 3,
                     model_id=model_id, review_threshold=0.5, extra=extra or {})
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, info.to_json()
    onnx.save(model, str(path))
    return path
