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
from collections.abc import Sequence

import numpy as np

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

#: Classes ``wbc analyze`` never answers: a smear's differential counts no platelets. They are removed from each
#: cell's probabilities (on BCCD test fields the model had called 16 of 64 detected WBCs "platelet"). A detection
#: can still be one (the detector boxes giant platelets and clumps: 243 in 217 of PBC's 240 validation platelet
#: images), so one the model takes for a platelet is flagged for review, its reason naming platelet
#: (:func:`wbc.classify.predict_cells`, since wbc 0.33.0), and stays counted in the class shown.
NOT_IN_SMEAR_DETECTIONS: tuple[str, ...] = ("platelet",)

def smear_classes(classes: Sequence[str]) -> list[str]:
    """``classes`` less those a smear cell is never answered as (:data:`NOT_IN_SMEAR_DETECTIONS`): the rows of a smear
    differential and its legend. ``wbc analyze`` never answers "platelet", so before wbc 0.30.0 its outputs printed a
    measured-looking 0.0 platelets per 100 WBCs with an interval (BCCD's ten fields hold 11 platelets to 18 WBCs).

    >>> smear_classes(CLASSES)
    ['basophil', 'eosinophil', 'erythroblast', 'ig', 'lymphocyte', 'monocyte', 'neutrophil']
    """
    return [c for c in classes if c not in NOT_IN_SMEAR_DETECTIONS]


#: Classes counted per 100 WBCs, outside the WBC total, as hematology reports them: an erythroblast (a nucleated
#: red cell, NRBC) and a platelet are no leukocytes. Counted inside the total, one NRBC changed every other share.
PER_100_WBC: tuple[str, ...] = ("erythroblast", "platelet")

_ALIASES: dict[str, str] = {
    "basophil": "basophil",
    "baso": "basophil",
    "ba": "basophil",
    "bas": "basophil",  # Matek et al. 2019 (AML cytomorphology, Munich)
    "eosinophil": "eosinophil",
    "eos": "eosinophil",
    "eo": "eosinophil",
    "eosi": "eosinophil",  # LISC (Rezatofighi & Soltanian-Zadeh 2011)
    "erythroblast": "erythroblast",
    "nrbc": "erythroblast",
    "nucleated red blood cell": "erythroblast",
    "nucleated rbc": "erythroblast",
    "normoblast": "erythroblast",
    "ery": "erythroblast",
    "erb": "erythroblast",  # PBC's file prefix
    "ebo": "erythroblast",  # Matek
    "ig": "ig",
    "immature granulocyte": "ig",
    "immature gran": "ig",
    "promyelocyte": "ig",  # PBC's ig class: promyelocytes, myelocytes and metamyelocytes
    "myelocyte": "ig",
    "metamyelocyte": "ig",
    "pmy": "ig",  # PBC's file prefixes
    "mmy": "ig",
    "pmo": "ig",  # Matek: promyelocyte, its bilobed form, myelocyte, metamyelocyte
    "pmb": "ig",
    "myb": "ig",
    "mmz": "ig",
    "lymphocyte": "lymphocyte",
    "lymph": "lymphocyte",
    "ly": "lymphocyte",
    "lymp": "lymphocyte",  # LISC
    "lyt": "lymphocyte",  # Matek: typical lymphocyte (its atypical ones, LYA, are left to --map)
    "monocyte": "monocyte",
    "mono": "monocyte",
    "mo": "monocyte",
    "mon": "monocyte",  # Matek
    "neutrophil": "neutrophil",
    "neut": "neutrophil",
    "ne": "neutrophil",
    "band": "neutrophil",  # band and segmented neutrophils are one class in PBC, as in a 5-part differential
    "segmented": "neutrophil",
    "seg": "neutrophil",
    "stab": "neutrophil",
    "pmn": "neutrophil",
    "bne": "neutrophil",  # PBC's file prefixes
    "sne": "neutrophil",
    "ngb": "neutrophil",  # Matek
    "ngs": "neutrophil",
    "platelet": "platelet",
    "plt": "platelet",
    "thrombocyte": "platelet",
}

#: Words that qualify a class name without changing the class: CellaVision's "Neutrophil, segmented",
#: Raabin-WBC's "Large Lymph". "Variant", "reactive" and "atypical" are not among them: whether such cells count
#: as the class is the lab's call (``--map``).
_QUALIFIERS = frozenset({"segmented", "seg", "band", "banded", "stab", "small", "large", "mature", "typical",
                         "normal", "cell", "cells", "form"})


def _normalise(name: str) -> str:
    key = re.sub(r"[^0-9a-z]+", " ", name.strip().lower()).strip()
    if key.endswith("s") and key[:-1] in _ALIASES:
        key = key[:-1]
    return key


#: Aliases of several words, longest first: read as their class word inside a longer name, so that "Immature
#: granulocytes (IG)" is "ig ig", one class, as "erythroblasts (NRBC)" is.
_PHRASES: tuple[str, ...] = tuple(sorted((a for a in _ALIASES if " " in a), key=len, reverse=True))


def _lookup(key: str) -> str | None:
    """``key`` (normalised) as a class: itself, or the one class word it holds beside qualifiers."""
    if key in _ALIASES:
        return _ALIASES[key]
    for phrase in _PHRASES:
        key = re.sub(rf"\b{phrase}s?\b", _ALIASES[phrase], key)
    words = [w[:-1] if w.endswith("s") and w[:-1] in _ALIASES else w for w in key.split()]
    if not words or not all(w in _ALIASES or w in _QUALIFIERS for w in words):
        return None
    named = {_ALIASES[w] for w in words if w in _ALIASES and w not in _QUALIFIERS}  # "band" qualifies a neutrophil
    named = named or {_ALIASES[w] for w in words if w in _ALIASES}  # ... and is one: "band cells"
    return named.pop() if len(named) == 1 else None


def canonical_label(name: str, mapping: dict[str, str] | None = None) -> str | None:
    """Return the canonical class for ``name``, or None when it is not a known class.

    Public datasets' spellings are known (LISC's ``eosi``, Matek's ``NGS``, CellaVision's ``Neutrophil,
    segmented``, Raabin-WBC's ``Large Lymph``); cells a lab may or may not count as the class (``Lymphocyte,
    variant form``, blasts) are not guessed. ``mapping`` (e.g. from ``--map old=new``) is applied first, on the raw
    or normalised spelling.

    >>> [canonical_label(s) for s in ("eosi", "NGS", "Neutrophil, segmented", "Large Lymph", "MMY")]
    ['eosinophil', 'neutrophil', 'neutrophil', 'lymphocyte', 'ig']
    >>> canonical_label("Lymphocyte, variant form") is None, canonical_label("Band")
    (True, 'neutrophil')
    """
    if mapping:
        for key in (name, _normalise(name)):
            if key in mapping:
                name = mapping[key]
                break
    return _lookup(_normalise(name))


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


#: Named label sets for ``--classes`` (a lab that counts a 5-part differential never sees "platelet").
CLASS_SETS: dict[str, tuple[str, ...]] = {"5part": WBC5, "wbc5": WBC5}


def parse_class_set(spec: str | Sequence[str] | None, available: Sequence[str]) -> tuple[str, ...]:
    """The chosen label set as the model's class names, in the model's order; () means every class.

    ``spec``: ``"5part"``, a comma-separated list in any known spelling (``"neutrophil,Lymphocytes,eo"``), or a
    sequence of names; ``"all"`` or None: every class (``"all,all"`` too, since wbc 0.36.0; ``all`` next to a class
    is refused as a contradiction). Names the model does not predict raise :class:`wbc.errors.WbcError`, and so does
    an empty ``spec`` (``[]``, ``""``): before wbc 0.36.0 it meant every class, so a filtered list that came out empty
    widened a five-part classifier (``classes=[]`` against ``with_classes("5part")``) to platelets, unflagged.

    >>> parse_class_set("5part", CLASSES)
    ('basophil', 'eosinophil', 'lymphocyte', 'monocyte', 'neutrophil')
    >>> parse_class_set("Neutrophils, lymph", CLASSES)
    ('lymphocyte', 'neutrophil')
    >>> parse_class_set(None, CLASSES)
    ()
    >>> parse_class_set([], CLASSES)
    Traceback (most recent call last):
    wbc.errors.WbcError: classes: empty; name classes, a set (5part) or 'all' (every class)
    >>> parse_class_set("all,ALL", CLASSES)
    ()
    >>> parse_class_set("all,neutrophil", CLASSES)
    Traceback (most recent call last):
    wbc.errors.WbcError: classes: 'all' (every class) cannot be combined with other classes: neutrophil
    """
    from wbc.errors import WbcError

    if spec is None:
        return ()
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s and s.strip()]
    if not items:
        raise WbcError("classes: empty; name classes, a set (5part) or 'all' (every class)")
    if "all" in (lowered := {i.lower() for i in items}):  # `all` repeated (a client's default sent twice) is `all`
        if len(lowered) > 1:
            raise WbcError("classes: 'all' (every class) cannot be combined with other classes: "
                           f"{', '.join(dict.fromkeys(i for i in items if i.lower() != 'all'))}")
        return ()
    wanted: set[str] = set()
    for item in items:
        if item.lower() in CLASS_SETS:
            wanted |= set(CLASS_SETS[item.lower()])
            continue
        name = canonical_label(item)
        if name is None:
            name = item if item in available else None
        if name is None or name not in available:
            raise WbcError(f"classes: {item!r} is not a class of this model ({', '.join(available)}) "
                           f"nor a named set ({', '.join(CLASS_SETS)})")
        wanted.add(name)
    return tuple(c for c in available if c in wanted)


def restrict_probabilities(
    probs: np.ndarray, classes: Sequence[str], allowed: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (N, C) restricted to ``allowed`` classes (the others 0, the rest renormalised to sum 1),
    and the probability mass the model had put on the allowed classes (N,) before renormalising.

    Renormalising is the same as a softmax over the allowed classes' logits only. Empty ``allowed``: unchanged.

    A row with no probability left on any allowed class (float32 underflow) is spread evenly over them, so the
    answer is still one of them, at its lowest confidence.

    >>> p, mass = restrict_probabilities(np.array([[0.5, 0.3, 0.2]]), ["a", "b", "c"], ["b", "c"])
    >>> [round(float(v), 2) for v in p[0]], round(float(mass[0]), 2)
    ([0.0, 0.6, 0.4], 0.5)
    >>> restrict_probabilities(np.array([[1.0, 0.0, 0.0]]), ["a", "b", "c"], ["b", "c"])[0].tolist()
    [[0.0, 0.5, 0.5]]
    """
    probs = np.asarray(probs, np.float32)
    if not allowed or set(allowed) >= set(classes):
        return probs, np.ones(len(probs), np.float32)
    keep = np.array([c in set(allowed) for c in classes])
    out = np.where(keep[None, :], probs, 0.0).astype(np.float32)
    mass = out.sum(1)
    empty = mass <= 0
    if empty.any():
        out[empty] = keep.astype(np.float32)
    out /= np.maximum(out.sum(1), 1e-12)[:, None]
    return out, mass
