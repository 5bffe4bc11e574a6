"""Export a trained network to ONNX with its metadata, and prove the export matches PyTorch."""

from __future__ import annotations

import io
import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from wbc.errors import WbcError
from wbc.io import check_output_file
from wbc.model import ModelInfo, checkpoint_info, write_model
from wbc.paths import checkpoint_file
from wbc.train.models import Ensemble, ExportWrapper, WbcNet, create_model

OUTPUT_NAMES = ["logits", "embedding", "cam"]


def to_onnx_bytes(net: WbcNet | Ensemble, input_size: int, opset: int = 17) -> bytes:
    """Serialise ``net.forward_all`` to ONNX with a dynamic batch axis."""
    wrapper = ExportWrapper(net).eval().to(memory_format=torch.contiguous_format)
    buf = io.BytesIO()
    dummy = torch.zeros(2, 3, input_size, input_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            # torch annotates f as a path, but the TorchScript exporter (dynamo=False) also takes a file object
            wrapper, (dummy,), buf,  # type: ignore[arg-type]
            input_names=["input"], output_names=OUTPUT_NAMES,
            dynamic_axes={"input": {0: "batch"}, **{n: {0: "batch"} for n in OUTPUT_NAMES}},
            opset_version=opset, dynamo=False,
        )
    return buf.getvalue()


def parity(onnx_bytes: bytes, net: WbcNet | Ensemble, x: torch.Tensor) -> float:
    """Max absolute difference of the logits from ONNX Runtime and from PyTorch on ``x``."""
    import onnxruntime as ort

    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    got = sess.run(["logits"], {"input": x.numpy()})[0]
    with torch.no_grad():
        want = net.eval().forward_all(x)[0].numpy()
    return float(np.abs(got - want).max())


def parity_input(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """``n`` seeded random network inputs (N, 3, size, size) in [-2, 2), for :func:`parity`."""
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 4 - 2


def export_model(
    net: WbcNet | Ensemble, info: ModelInfo, path: str | os.PathLike[str], check_input: torch.Tensor,
    opset: int = 17,
) -> float:
    """Write ``net`` to ``path`` with ``info``; returns the max |ONNX - PyTorch| logit difference."""
    data = to_onnx_bytes(net, info.network_size, opset)
    diff = parity(data, net, check_input)
    if not math.isfinite(diff):  # NaN weights (a diverged run): no model, and no bare NaN in model.json
        raise WbcError(f"{path}: the network's outputs are not finite numbers (NaN weights: a diverged training run?); "
                       "nothing exported")
    info.extra["onnx_max_abs_diff"] = diff
    info.extra["opset"] = opset
    write_model(path, data, info)
    return diff


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[WbcNet | Ensemble, ModelInfo]:
    """A network and its metadata from ``best.pt``/``ensemble.pt`` or a run folder holding one."""
    p = checkpoint_file(path)
    if p.is_dir():
        raise WbcError(f"{path}: no best.pt or ensemble.pt in this run folder")
    if not p.is_file():
        raise WbcError(f"{p}: checkpoint not found")
    try:  # as wbc.train.finetune.load_weights reads one
        ckpt = torch.load(p, map_location="cpu", weights_only=False)
        if isinstance(ckpt, dict) and "model" in ckpt and not ckpt.get("info"):
            run = p.parent.parent
            if p.parent.name.startswith("fold_") and (run / "config.json").is_file():  # never gets metadata
                raise WbcError(f"{p}: one fold's network of a cross-validation run, which has no metadata of its own; "
                               f"export the run folder {run} (the ensemble of its folds; if it is unfinished, "
                               f"finish it first with `wbc train --output {run} --resume`)")
            raise WbcError(f"{p}: no model metadata yet: a run's best.pt gets it when the run finishes (finish it "
                           "with `wbc train --resume`); last.pt never has it, export the run folder or its best.pt")
        info = checkpoint_info(ckpt, p)
        states = ckpt["members"] if "members" in ckpt else [ckpt["model"]]
        nets: list[WbcNet] = []
        for state in states:
            net = create_model(ckpt["arch"], len(info.classes), pretrained=False, dropout=ckpt.get("dropout", 0.0))
            net.load_state_dict(state)
            nets.append(net.eval())
    except WbcError:
        raise
    except Exception as exc:  # a truncated file, another program's pickle, a state dict that does not fit
        raise WbcError(f"{p}: not a wbc checkpoint ({type(exc).__name__}: {exc})") from None
    return (Ensemble(nets) if len(nets) > 1 else nets[0]), info


#: The lowest ONNX opset `wbc export` writes (``--opset``).
MIN_OPSET = 17


def max_opset() -> int:
    """The highest ONNX opset this PyTorch's exporter writes (23 for torch 2.9 to 2.14)."""
    from torch.onnx import _constants

    return int(getattr(_constants, "ONNX_MAX_OPSET", 23))


def check_opset(opset: int) -> None:
    """Refuse, before the checkpoint is loaded, an opset this PyTorch cannot write: before wbc 0.33.0 `wbc export
    --opset 24` was a RuntimeError traceback."""
    if not MIN_OPSET <= opset <= max_opset():
        raise WbcError(f"--opset {opset}: this PyTorch ({torch.__version__}) exports opsets {MIN_OPSET} to "
                       f"{max_opset()}")


def export_checkpoint(path: str | os.PathLike[str], output: str | os.PathLike[str], opset: int = 17) -> float:
    check_opset(opset)
    net, info = load_checkpoint(path)
    # a seeded parity input: its difference is stored in the metadata, so one checkpoint exports to the same bytes
    # (wbc analyze redoes every field of a model whose file SHA-1 changed)
    x = parity_input(4, info.network_size)
    return export_model(net, info, output, x, opset)


def check_new_output(output: Path, overwrite: bool) -> None:
    """Refuse, before any data is read, an ``output`` model that is no ``.onnx`` name, exists (without ``overwrite``)
    or cannot be written.

    A trainer exports its first checkpoint at its first validation, however poor, over what is there: a trial run of
    `wbc train-segmenter` from the repository root replaced the shipped U-Net, its default output until wbc 0.31.0.
    `wbc train-detector` keeps its weights beside the model as ``NAME.pt``: before wbc 0.33.0 ``--output NAME.pt``
    wrote the ONNX model and then the state dict over it.
    """
    from wbc.model import check_model_output

    if not output.is_dir():  # a folder: check_output_file names it
        check_model_output(output)
    if output.is_file() and not overwrite:
        raise WbcError(f"{output}: exists (its first checkpoint would replace it); pass --overwrite to replace it, "
                       "or give a new --output")
    check_output_file(output)
