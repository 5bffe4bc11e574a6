"""Post-training int8 quantisation of an exported classifier, for ONNX Runtime on CPU.

Why: classification speed on a 2-core lab PC is set by the network, and int8 convolutions (VNNI/AMX on
current x86 CPUs) run the EfficientNet-Lite0 graph 1.7x as fast as float32 (benchmarks/classify_speed.py).
Lite0 was designed for this (ReLU6, no squeeze-excite), so per-channel int8 weights with static activation
ranges calibrated on a few hundred training cells keep its accuracy.

What changes with the weights is re-measured, never carried over: the temperature and the review
threshold are re-fitted on the validation split with the quantised network, its validation metrics
(``info.metrics``, what ``GET /model`` shows) are measured with it (the float model's are kept as
``extra["quantization"]["float_metrics"]``; before wbc 0.35.0 they stayed the model's), and out-of-distribution
statistics, if the source model had them, are re-fitted too (:func:`wbc.ood_fit.fit_from_manifest`). The
agreement with the float model and both accuracies on validation are stored in
``info.extra["quantization"]``. Manifest labels are read as `wbc ood fit` and `wbc evaluate` read them
(``NRBC`` is ``erythroblast``; before wbc 0.35.0 such rows were left out of calibration without a word).
Two calibrations are kept instead, as the manifest cannot re-measure them: a
cross-validation run's (its val rows trained the members) and a model adapted to a lab (``wbc adapt``), whose
calibration and OOD reference belong to that lab's cells, not to the manifest's.

``wbc quantize MODEL --manifest RUN/manifest.csv --output MODEL_INT8``
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from wbc.calibration import calibrate, resolve_review_target, val_summary
from wbc.classify import load_cells
from wbc.data import cap_per_class
from wbc.errors import WbcError
from wbc.io import output_target
from wbc.model import Classifier, beside_model, check_model_output, write_model
from wbc.ood_fit import check_own_split, model_samples


def float_nodes(graph: Any) -> list[str]:
    """The nodes :func:`quantize_onnx` keeps float by default: the linear heads (embedding -> logits, each
    ensemble member's too; it costs nothing, keeps the logits exact given the embedding, and `wbc adapt` reads and
    replaces it) and the first convolutions, the ones that read the network input (see :func:`quantize_onnx`)."""
    # every Gemm: the only ones in a WbcNet graph are linear heads, one per member of an ensemble (whose "logits"
    # node is the Log of the mean probability, not a head)
    head = [n.name for n in graph.node if "logits" in n.output or n.op_type == "Gemm"]
    stem = [n.name for n in graph.node if n.op_type == "Conv" and graph.input[0].name in n.input]
    return head + stem


def quantize_onnx(
    src: Path, dst: Path, calibration: np.ndarray, batch_size: int = 32,
    keep_float: Callable[[Any], list[str]] = float_nodes, method: str = "MinMax",
    extra_options: dict[str, Any] | None = None,
) -> None:
    """Static int8 quantisation (QDQ, per-channel weights, ``method`` activation ranges) of ``src`` into ``dst``.

    Two parts stay float (``keep_float``: the names of the nodes to leave float, given the pre-processed
    graph): the linear head, and the first convolution. Quantising the input would clip every pixel to the
    colour range of the calibration cells, and another lab's stain falls outside it; keeping the stem float
    costs 5-17 % of the network's speed and recovered the float network's PBC validation accuracy (0.9897 ->
    0.9915, float 0.9915) and BCCD cells as is (0.805 -> 0.812, float 0.809) for model 1.2.1
    (docs/model_card.md; other choices: ``benchmarks/quantize_variants.py``).

    ``calibration``: float32 network inputs (N, 3, S, S), already normalised. ``method``: an ONNX Runtime
    ``CalibrationMethod`` name (MinMax, Percentile, Entropy).
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.start = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.start >= len(calibration):
                return None
            batch = calibration[self.start : self.start + batch_size]
            self.start += batch_size
            return {"input": batch}

    with tempfile.TemporaryDirectory(prefix="wbc-quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod[method], nodes_to_exclude=keep_float(onnx.load(str(pre)).graph),
            extra_options=extra_options or {},
        )


#: ONNX operators that only a quantised graph holds.
QUANTISED_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
                           "MatMulInteger"})


def is_quantised(path: str | os.PathLike[str]) -> bool:
    """Whether the ONNX graph at ``path`` is quantised: read from the graph, not from ``extra["quantization"]``,
    which a float model fine-tuned by `wbc adapt` before wbc 0.30.0 carried over from its int8 base."""
    import onnx

    return any(n.op_type in QUANTISED_OPS for n in onnx.load(str(path), load_external_data=False).graph.node)


def quantize_model(
    model: str | os.PathLike[str], manifest: str | os.PathLike[str], output: str | os.PathLike[str],
    per_class: int = 32, data_root: Path | None = None, threads: int = 2, seed: int = 0,
    ood_per_class: int = 150,
) -> dict[str, Any]:
    """Quantise ``model`` to int8 with cells from its run's manifest; returns the validation comparison.

    Calibration uses ``per_class`` random training cells of each class; the validation split (all of it)
    re-fits temperature and review threshold and measures agreement with the float model (each cell averaged over
    the model's ``extra["tta_views"]``, as it answers). OOD statistics are re-fitted on up to ``ood_per_class``
    train and val cells per class. Kept as they are instead: the out-of-fold calibration of a cross-validation run
    (its val rows trained its members), and the calibration and OOD statistics of a model adapted to a lab (`wbc
    adapt`: fitted on that lab's cells, which the manifest does not hold; re-fitted on it, a lab model whose every
    cell was reviewed accepted cells at PBC's 0.965 and lost its lab's OOD reference). A ``manifest`` other than the
    split the model records (``extra["split_hash"]``) is refused (:func:`wbc.ood_fit.check_own_split`).
    """
    from wbc.classify import run_views

    t0 = time.perf_counter()
    check_model_output(output)  # before any work: a checkpoint named by mistake is never replaced
    fp32 = Classifier(model, threads=threads)
    if is_quantised(fp32.path):
        raise WbcError(f"{model}: already quantised")
    if Path(output).resolve() == fp32.path.resolve():
        raise WbcError(f"{output}: --output must differ from the model (the float model is kept)")
    info = fp32.info
    info.extra.pop("quantization", None)  # a float graph: a record there was its int8 base's (see is_quantised)
    adapt = info.extra.get("adapt")
    adapted = isinstance(adapt, dict)
    check_own_split(info, model, manifest)  # its val rows re-fit the calibration: the model's own split only
    views = fp32.tta_views()  # the flips/rotations the model averages per cell, as it will answer
    (train, unknown), (val, unknown_val) = (model_samples(manifest, split, fp32.classes, data_root)
                                            for split in ("train", "val"))
    unknown = sorted({*unknown, *unknown_val})
    if not train or not val:
        seen = f" (labels seen: {', '.join(unknown[:8])}{', ...' if len(unknown) > 8 else ''})" if unknown else ""
        raise WbcError(f"{manifest}: needs rows of the model's classes in both the train and val splits{seen}")
    size = info.input_size
    cal_cells, _, _ = load_cells([s.path for s in cap_per_class(train, per_class, seed)], size, threads)
    val_cells, val_ok, _ = load_cells([s.path for s in val], size, threads)
    if not len(cal_cells) or not len(val_cells):
        raise WbcError(f"{manifest}: the calibration or validation images could not be read; check --data-root")
    y = np.array([fp32.classes.index(val[i].label) for i in val_ok])

    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _finished_then_moved(out) as work:
        with tempfile.TemporaryDirectory(prefix="wbc-quant-") as tmp:
            raw = Path(tmp) / "int8.onnx"
            quantize_onnx(fp32.path, raw, fp32.network_input(cal_cells))
            write_model(work, raw.read_bytes(), info)  # metadata first, so the file loads as a Classifier
        int8 = Classifier(work, threads=threads)

        def logits(clf: Classifier) -> np.ndarray:
            return np.concatenate([run_views(clf, val_cells[i : i + 64], ("logits",), views)["logits"]
                                   for i in range(0, len(val_cells), 64)])

        lf, lq = logits(fp32), logits(int8)
        # a cross-validation run's val rows trained its members: re-fitted on them, the review threshold fell from
        # 0.99 to 0.85; the float model's out-of-fold calibration is kept instead
        cross_validated = any(s.fold >= 0 for s in val)
        float_metrics = info.metrics
        if adapted:
            data = (adapt if isinstance(adapt, dict) else {}).get("data") or "a lab's cells"
            calibration = (f"the adapted model's (wbc adapt on {data}), kept: the "
                           "manifest's val split holds other cells and cannot re-measure it")
        elif cross_validated:
            calibration = ("the float model's, fitted on out-of-fold predictions (a cross-validation run's val rows "
                           "trained its members)")
        else:
            cal = calibrate(lq, y, resolve_review_target(None, info.review_target_accuracy))
            info.temperature, info.review_threshold = cal.temperature, cal.review_threshold
            info.review_target_accuracy = cal.review_target_accuracy
            info.metrics = val_summary(y, lq.argmax(1), fp32.classes) | {"split": "val"}
            calibration = "re-fitted on the val split"
        report = {
            "calibration": calibration,
            "method": "onnxruntime static int8, QDQ, per-channel weights, min-max activation ranges; "
                      "first convolution and linear head float",
            "calibration_cells": len(cal_cells),
            "val_cells": len(y),
            "val_accuracy_float": float((lf.argmax(1) == y).mean()),
            "val_accuracy_int8": float((lq.argmax(1) == y).mean()),
            "val_agreement": float((lf.argmax(1) == lq.argmax(1)).mean()),
            "val_in_sample": cross_validated,  # its val rows trained the members: the accuracies above are in-sample
            "val_max_abs_logit_diff": float(np.abs(lf - lq).max()),
            "source_model_id": info.model_id,
            "float_metrics": float_metrics,
            "metrics": ("measured on the val split with the int8 network" if info.metrics is not float_metrics
                        else "the float model's, kept with its calibration"),
        }
        if unknown:
            report["labels_left_out"] = unknown  # rows of no class of the model's, however spelled
        if info.ood:
            report["ood"] = ("the adapted model's, kept: its lab's reference cannot be re-measured on the manifest"
                             if adapted else "re-fitted on the manifest")
        info.extra["quantization"] = report
        info.model_id = f"{info.model_id}-int8"
        write_model(work, work.read_bytes(), info)
        if info.ood and not adapted:
            from wbc.ood import DEFAULT_PERCENTILE
            from wbc.ood_fit import fit_from_manifest

            fit_from_manifest(work, manifest, max_per_class=ood_per_class, data_root=data_root, threads=threads,
                              seed=seed, percentile=float(info.ood.get("percentile", DEFAULT_PERCENTILE)))
    report["seconds"] = time.perf_counter() - t0
    return report


@contextlib.contextmanager
def _finished_then_moved(out: Path) -> Iterator[Path]:
    """A path beside ``out`` where a model file (and its ``.json``) is built, moved to ``out`` only when the block
    ends without error: an interrupted quantisation must not leave at ``out`` a finished-looking int8 model that
    carries the float model's temperature or out-of-distribution thresholds. Through a link, the file it points to
    is replaced, never the link (:func:`wbc.io.output_target`; before wbc 0.33.0 the link became a file)."""
    target = output_target(out)[0]
    target.parent.mkdir(parents=True, exist_ok=True)  # a link to a folder not made yet
    work = target.with_name(f".{target.stem}.{os.getpid()}.partial.onnx")
    try:
        yield work
        os.replace(work.with_suffix(".json"), beside_model(target, ".json"))
        os.replace(work, target)
    finally:
        work.unlink(missing_ok=True)
        work.with_suffix(".json").unlink(missing_ok=True)
