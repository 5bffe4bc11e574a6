"""Morphological attributes as a second training signal (``TrainConfig.attributes``, WBCAtt).

WBCAtt (Tsutsui et al., NeurIPS 2023; ``wbcatt/`` under the data root) gives 11 attributes a pathologist reads
(cell size and shape, nucleus shape, nuclear-cytoplasmic ratio, chromatin, vacuoles, cytoplasm texture and colour,
granule type and colour, granularity) for PBC's five WBC classes. Trained to name them from the network's pooled
embedding as well as the class (one linear head per attribute, dropped at export), the network is asked for the
morphology behind each class, not only for whatever separates PBC's classes. The heads see only the cells trained
on (never the test split's); a cell without attributes (the other three classes, unlisted files) adds nothing to
that loss. Measured once, not shipped (docs/generalisation.md, "Tried in wbc 0.17.0").
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from wbc.errors import WbcError

#: The 11 WBCAtt attributes and their values, in the dataset's own spelling (``pbc_attr_v1_*.csv``).
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "cell_size": ("big", "small"),
    "cell_shape": ("round", "irregular"),
    "nucleus_shape": ("segmented-bilobed", "segmented-multilobed", "unsegmented-band", "unsegmented-indented",
                      "unsegmented-round", "irregular"),
    "nuclear_cytoplasmic_ratio": ("low", "high"),
    "chromatin_density": ("densely", "loosely"),
    "cytoplasm_vacuole": ("no", "yes"),
    "cytoplasm_texture": ("clear", "frosted"),
    "cytoplasm_colour": ("light blue", "blue", "purple blue"),
    "granule_type": ("nil", "small", "round", "coarse"),
    "granule_colour": ("nil", "pink", "red", "purple"),
    "granularity": ("no", "yes"),
}


def read_wbcatt(folder: str | Path) -> dict[str, np.ndarray]:
    """{image file name: (11,) int8 value indices (-1: not given)} from WBCAtt's ``pbc_attr_v1_*.csv`` in ``folder``.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> row = "BNE_1.jpg,Neutrophil,big,round,unsegmented-band,low,densely,no,clear,light blue,small,pink,yes,x"
    >>> _ = (d / "pbc_attr_v1_train.csv").write_text("img_name,label," + ",".join(ATTRIBUTES) + ",path\\n" + row)
    >>> read_wbcatt(d)["BNE_1.jpg"].tolist()
    [0, 0, 2, 0, 0, 0, 0, 0, 1, 1, 1]
    """
    files = sorted(Path(folder).glob("pbc_attr_v1_*.csv"))
    if not files:
        raise WbcError(f"{folder}: no WBCAtt tables (pbc_attr_v1_*.csv) found")
    out: dict[str, np.ndarray] = {}
    for f in files:
        with f.open(newline="") as fh:
            for row in csv.DictReader(fh):
                out[row["img_name"]] = np.array(
                    [values.index(row[a]) if row.get(a) in values else -1 for a, values in ATTRIBUTES.items()],
                    np.int8)
    return out


def attribute_targets(paths: Sequence[str | Path], table: dict[str, np.ndarray]) -> np.ndarray:
    """(N, 11) int64 targets for the images ``paths`` (matched by file name), -1 where the table has none.

    >>> attribute_targets(["pbc/neutrophil/BNE_1.jpg", "x.jpg"], {"BNE_1.jpg": np.zeros(11, np.int8)})[:, 0].tolist()
    [0, -1]
    """
    missing = np.full(len(ATTRIBUTES), -1, np.int64)
    return np.stack([table.get(Path(p).name, missing).astype(np.int64) for p in paths]) if len(paths) else \
        np.zeros((0, len(ATTRIBUTES)), np.int64)


class AttributeHeads(nn.Module):
    """One linear head per attribute on the pooled embedding; :meth:`loss` is their mean cross-entropy over the
    attributes a batch has targets for."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(num_features, len(v)) for v in ATTRIBUTES.values())

    def forward(self, emb: torch.Tensor) -> list[torch.Tensor]:
        return [h(emb) for h in self.heads]

    def loss(self, emb: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the attributes with at least one target in ``targets`` ((N, 11), -1: none)."""
        terms = [nn.functional.cross_entropy(out, targets[:, k], ignore_index=-1)
                 for k, out in enumerate(self(emb)) if bool((targets[:, k] >= 0).any())]
        return torch.stack(terms).mean() if terms else emb.sum() * 0.0
