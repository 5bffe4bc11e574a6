"""Canonical WBC class names and the spellings that map to them.

Datasets spell classes differently (``NEUTROPHIL``, ``Eosinophils``, ``IG``, ``Immature granulocytes``).
Everything inside wbc uses the lowercase canonical names below, so that models trained on one dataset can
be evaluated on another without renaming folders.

>>> canonical_label("Eosinophils")
'eosinophil'
>>> canonical_label("IG")
'ig'
>>> canonical_label("RBC") is None
True
"""

from __future__ import annotations

import re

#: The eight PBC classes in the order used by the shipped model.
CLASSES: tuple[str, ...] = (
    "basophil",
    "eosinophil",
    "erythroblast",
    "ig",
    "lymphocyte",
    "monocyte",
    "neutrophil",
    "platelet",
)

#: The five mature WBC types found in every normal differential.
WBC5: tuple[str, ...] = ("basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil")

#: Classes a cell found in a smear cannot be: the segmenters find cells by their nucleus, and platelets
#: have none. ``wbc analyze`` removes them from each cell's probabilities (on BCCD test fields the model
#: had called 16 of 64 detected WBCs "platelet").
NOT_IN_SMEAR_DETECTIONS: tuple[str, ...] = ("platelet",)

_ALIASES: dict[str, str] = {
    "basophil": "basophil",
    "baso": "basophil",
    "ba": "basophil",
    "eosinophil": "eosinophil",
    "eos": "eosinophil",
    "eo": "eosinophil",
    "erythroblast": "erythroblast",
    "nrbc": "erythroblast",
    "nucleated red blood cell": "erythroblast",
    "ery": "erythroblast",
    "ig": "ig",
    "immature granulocyte": "ig",
    "immature gran": "ig",
    "lymphocyte": "lymphocyte",
    "lymph": "lymphocyte",
    "ly": "lymphocyte",
    "monocyte": "monocyte",
    "mono": "monocyte",
    "mo": "monocyte",
    "neutrophil": "neutrophil",
    "neut": "neutrophil",
    "ne": "neutrophil",
    "platelet": "platelet",
    "plt": "platelet",
    "thrombocyte": "platelet",
}


def _normalise(name: str) -> str:
    key = re.sub(r"[_\-\s]+", " ", name.strip().lower())
    if key.endswith("s") and key[:-1] in _ALIASES:
        key = key[:-1]
    return key


def canonical_label(name: str, mapping: dict[str, str] | None = None) -> str | None:
    """Return the canonical class for ``name``, or None when it is not a known class.

    ``mapping`` (e.g. from ``--map old=new``) is applied first, on the raw or normalised spelling.
    """
    if mapping:
        for key in (name, _normalise(name)):
            if key in mapping:
                name = mapping[key]
                break
    return _ALIASES.get(_normalise(name))


def parse_mapping(items: list[str] | None) -> dict[str, str]:
    """Parse ``["old=new", ...]`` into a dict, rejecting malformed items with a clear message."""
    out: dict[str, str] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"bad --map item {item!r}: expected OLD=NEW")
        old, new = (s.strip() for s in item.split("=", 1))
        if not old or not new:
            raise ValueError(f"bad --map item {item!r}: expected OLD=NEW")
        out[old] = new
        out[_normalise(old)] = new
    return out
