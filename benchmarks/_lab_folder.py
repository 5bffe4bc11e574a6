"""A labelled folder of one lab's cells, loaded as the few-shot benchmarks score it: one loader, so
``semi_finetune.py`` and ``label_choice.py`` see the same cells."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class LabFolder:
    """The model and its PyTorch network, the folder's files, the indices of those that loaded, their cells (framed
    as the model frames them), class indices, and the five-part label set."""

    clf: Any
    net: Any
    info: Any
    paths: list[Path]
    ok: list[int]
    cells: np.ndarray
    labels: np.ndarray
    allowed: tuple[str, ...]


def load_lab_folder(folder: Path, model: Path | None, threads: int) -> LabFolder:
    """``folder``'s ``<class>/<cell>`` images, with the model (default: shipped) and the ``.pt`` weights beside it.

    A folder without images, or with a class folder the model does not know (``lymphocytes/`` for ``lymphocyte``), is
    refused naming them: a class's index is its folder's name, and an unknown one was a ValueError traceback."""
    import torch

    from wbc.classify import load_cells
    from wbc.errors import WbcError
    from wbc.io import iter_image_paths
    from wbc.labels import parse_class_set
    from wbc.model import load_model
    from wbc.reframe import framing_stats_of
    from wbc.train.finetune import load_weights

    torch.set_num_threads(threads)
    clf = load_model(model)
    paths = list(iter_image_paths([folder]))
    if not paths:
        raise WbcError(f"{folder}: no images (<class>/<image> files)")
    unknown = sorted({p.parent.name for p in paths} - set(clf.classes))
    if unknown:
        raise WbcError(f"{folder}: class folder(s) {', '.join(unknown)} not among the model's classes "
                       f"({', '.join(clf.classes)})")
    net, info = load_weights(clf.path.with_suffix(".pt"))
    cells, ok, _ = load_cells(paths, clf.info.input_size, threads, reframe=framing_stats_of(clf))
    labels = np.array([clf.classes.index(paths[i].parent.name) for i in ok])
    return LabFolder(clf, net, info, paths, ok, cells, labels, parse_class_set("5part", clf.classes))
