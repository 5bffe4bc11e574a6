"""Label-free adaptation (``wbc adapt --no-labels``): pick what helps a new lab without any of its labels.

One fixed colour mapping is not the answer: on other labs' cells per-lab Macenko helped one lab and hurt
another, per-lab Reinhard hurt the first. So each candidate preprocessing (no mapping, and Reinhard's mapping
fitted on the lab's pooled colours; Macenko's and histogram matching's are no candidates, :data:`CANDIDATE_METHODS`) is
scored on the lab's own unlabelled cells by what a model that
understands the cells shows without labels:

- **view agreement**: the same answer for a cell and its rotated/flipped copy (cells have no up, so a
  disagreement is a guess), and
- **confidence**: low prediction entropy, averaged over the views, and
- **diversity**: a high entropy of the predictions pooled over all cells, so a mapping that makes the model
  confidently call every cell one class does not win (information maximisation, as in SHOT, Liang et al.
  2020; on 277 BCCD train/val cells per-lab Macenko was the most confident and agreeing mapping but called
  83 cells basophil and none eosinophil or lymphocyte: 54 % right, against 71 % for the mapping chosen),

``score = agreement - entropy / log(C) + pooled entropy / log(C)`` over the chosen label set (``classes``).
No mapping is the default:
a mapping replaces it only when it scores more than :data:`MAPPING_MIN_GAIN` higher, so PBC-like input is not
mapped for nothing (without ``--classes`` it never was on PBC draws; over five classes a folder half platelets chose
Reinhard, and PBC accuracy was not lower). A mapping makes the lab's cells look like PBC's, which by itself raises
the model's confidence and agreement, so it has to earn its place. On seven validation labs (BCCD's 277 train/val
cells and six colour-shifted copies of PBC validation cells) with four models (1.2.1, 1.3.0 and two sibling runs),
a 0.02 and a 0.05 margin choose alike except for the second-epoch networks on BCCD, where histogram matching beat no
mapping by 0.026-0.050 and cost 1.8-3.2 points: 0.05 chooses none there, and its choice is never more than
0.5 point below the best candidate (``benchmarks/mapping_choice.py``, docs/generalisation.md).
The result says what was chosen and why (every candidate's scores).

Framing is chosen the same way. The network learned PBC's framing, and :mod:`wbc.reframe` re-frames only
cells whose nucleus is outside the 0.12-0.5 of the frame PBC's crops show, so a lab whose crops show the cell
at half PBC's size (a nucleus at 0.17) is never re-framed and loses a third of its cells. Each candidate is
therefore also scored with every cell re-framed to the canonical fraction (:data:`wbc.reframe.CANONICAL`;
the shipped network trained on such copies too), and that framing replaces the model's own only when it
scores more than :data:`MIN_GAIN` higher. Measured with model 1.2.1 (docs/generalisation.md): PBC validation
cells padded 2x get every cell re-framed (1.976 against 1.389; 5-part accuracy 0.645 -> 0.985); PBC-framed
cells, tight crops and BCCD's train/val crops keep the band. (No re-framing at all, as a third candidate,
won on BCCD's crops, 1.501 against 1.467, but lowered their accuracy after adaptation, 0.820 -> 0.801: not
a candidate.)

A third framing is the lab's **one magnification** (:func:`wbc.reframe.lab_framing`, wbc 0.10.0): one microscope
and camera show every cell at one scale, and PBC's crops keep each class's size (a small lymphocyte, a large
monocyte), which re-framing each cell to the target fraction takes away. So every cell is also cut as one square
side around its nucleus, the side that puts the lab's median nucleus at the target fraction; it replaces the
model's own framing when it scores :data:`LAB_MIN_GAIN` higher. On PBC-framed cells it is nearly the model's own
framing and rarely wins; below :data:`FEW_CELLS` it can, by less than one cell's disagreement, and then name a PBC
cell differently: one draw of 25 PBC test cells named 199 of 200 other PBC cells right against the shipped model's
200 (the wbc 0.33.0 review; before, these notes said it never lowered PBC accuracy), six draws of 25 validation
cells lost none (``benchmarks/framing_few_cells.py``). On BCCD's single-cell images it is chosen and names more of
them right (train/val 0.827 -> 0.856; validation cells adapted on the train cells 0.871 -> 0.918,
model 1.4.0; docs/generalisation.md).

Then, with the chosen mapping, the lab's **class frequencies** are estimated from the same unlabelled cells
by expectation-maximisation (:func:`wbc.calibration.estimate_class_prior`, Saerens et al. 2002) and stored as
the model's ``class_prior``: training balanced the classes, a lab's differential does not (on BCCD's 277
train/val cells accuracy rose 0.765 -> 0.780 with model 1.1.0 and 0.780 -> 0.812 with 1.2.0; see
docs/generalisation.md). A balanced folder gives a nearly uniform estimate, which changes little. An image outside
the label set that is no nucleated cell (a platelet, for the five WBC types) counts for as little as the model gives
the set (:func:`set_weights`; before wbc 0.30.0 as a whole cell, with a near-random five-part answer).

The adapted model also averages each cell's answer over the four rotations (``ADAPTED_TTA_VIEWS``, stored as
``extra["tta_views"]``; :meth:`wbc.model.Classifier.tta_views`): on BCCD's train/val cells 0.834 -> 0.845, on its
validation cells adapted on its train cells 0.882 -> 0.906 (model 1.3.0), PBC validation unchanged, at four
network passes per cell (``--tta 1`` keeps one).

Measured and not adopted (docs/generalisation.md): re-estimating the BatchNorm statistics on the lab's cells
(AdaBN) was no better than the colour mapping alone, and self-training the last layer on the model's own
confident, view-consistent calls lowered BCCD accuracy (0.711 -> 0.66-0.71 over 9 settings).
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from wbc.data import sample_paths
from wbc.errors import WbcError
from wbc.model import ADAPTED_TTA_VIEWS, checked_tta_views, label_set_key, without_lab_prior
from wbc.reframe import CANONICAL, DEFAULT_STATS, FramingStats, framing_stats_of

#: Framings ``wbc adapt --no-labels --framing`` can choose from: re-frame the cells outside the training crops'
#: band, or every cell to the canonical nucleus fraction.
FRAMINGS: dict[str, FramingStats] = {"band": DEFAULT_STATS, "all": CANONICAL}

#: A colour mapping must beat no mapping by this much (score units: agreement - entropy + diversity).
MAPPING_MIN_GAIN = 0.05
#: The colour mappings a lab's cells are scored under, besides none (``wbc adapt --no-labels --stain macenko`` still
#: fits Macenko's). Macenko is not a candidate since wbc 0.17.0: in all 78 (validation lab, model) pairs measured it
#: named fewer cells right than no mapping (1 to 44 points fewer), and on BCCD's single-cell crops at the lab's one
#: magnification it makes the network confident and consistent while turning eosinophils into basophils: it scored
#: 0.045 above no mapping with the shipped model, and cleared the margin with a sibling network (5-part accuracy
#: after adaptation 0.6679 against 0.8448 without it; ``benchmarks/mapping_choice.py``, docs/generalisation.md).
#: Histogram matching is not a candidate since wbc 0.27.0 either: it never named more cells right than no mapping in
#: the 50 (lab, network) pairs of wbc 0.17.0 (up to 54 points fewer), and with the shipped network it cleared the
#: margin on BCCD's train/val fields (five-part 0.8556 without it, 0.8231 with it) and, scored over the five-part
#: set (``--classes 5part``), on its single-cell crops (0.8592 against 0.7978). ``--stain histogram`` still fits it.
CANDIDATE_METHODS = ("reinhard",)
#: Another framing must beat the model's own by this much. 0.1 since wbc 0.9.0 (was 0.02): 40 PBC-framed validation
#: cells (the first eight of each WBC type) scored 0.030 higher with every cell re-framed under model 1.4.0 (one view
#: disagreeing moves a score by 0.025). With no colour mapping, on six random 40-cell draws
#: (benchmarks/framing_margin.py, models 1.3.0 and 1.4.0) every-cell re-framing scored -0.077 to +0.002 against the
#: band for PBC-framed cells and +0.082 to +0.208 for the same cells padded 2x.
MIN_GAIN = 0.1
#: The lab's one magnification (``--framing lab``) must beat the model's own framing by this much. On PBC-framed cells
#: it is nearly the model's own framing (a square the size of PBC's crops around each nucleus): on the same draws it
#: scored -0.037 to +0.001 against the band, for the cells padded 2x +0.114 to +0.209. It can still win on PBC cells:
#: below :data:`FEW_CELLS` one cell's views disagreeing moves a score by 1/N, more than this margin (25 PBC cells of
#: all eight kinds over five classes: 1.668 against 1.595; eight-class accuracy on 80 other PBC cells 0.963 -> 1.000;
#: another draw of 25, 1.622 against 1.584: 199 of 200 other PBC cells right against 200). A margin of two cells' worth
#: below FEW_CELLS (2 / N) was measured for wbc 0.34.0 and not adopted: on six draws of 25 BCCD train/val cells it gave
#: up the lab framing in 3 of the 5 draws where it was chosen over every class, 0.8542 -> 0.8400 (five-part 0.8325 ->
#: 0.8283), and on six draws of 25 PBC validation cells it changed nothing measured (0.9975 either way;
#: ``benchmarks/framing_few_cells.py``, docs/generalisation.md).
LAB_MIN_GAIN = 0.03
#: Views scored per candidate: identity and one rotation+flip (cells have no up).
VIEWS = (0, 5)
#: Below this many cells the choice is mostly the draw's: five draws each of 25 / 50 / 100 of BCCD's 277 train/val
#: single-cell crops, adapted on and scored on themselves (5-part), 0.800 -> 0.784 on average (one draw -16 points) /
#: 0.840 -> 0.856 / 0.846 -> 0.864 (docs/generalisation.md, "How many cells"). Fewer are adapted on, with a warning.
FEW_CELLS = 50
#: At most this many of the lab's cells are scored (a seeded random sample of a larger folder): the cells are held in
#: memory in three framings and run through the network 12 times (2 candidates x 3 framings x 2 views; 18 when
#: measured, with 3 candidates), so time and memory grow with the folder. All 10,986 PBC images took 463 s and 4.8 GB
#: on 2 cores; a sample of 2,000, 88 s and 1.3 GB, the same choice, every score within 0.008 (docs/generalisation.md,
#: "A large folder"). ``max_cells`` (``--max-cells``) changes it; 0: every cell.
MAX_CELLS = 2000
#: Fewer readable cells than this and nothing can be chosen (nor a sample of fewer drawn, ``--max-cells``).
MIN_CELLS = 8
#: :func:`measure_lab` decodes a large JPEG at 1/2-1/8 of its size, its short side never below this many pixels (as
#: `wbc classify` decodes it at a reduced size): a 6000x4000 camera frame of one cell took 1-2 s and up to 2 GB to
#: measure decoded whole (a sample of 2,000 such images, 30-60 min). A JPEG under twice this is decoded whole.
MEASURE_MIN_SIDE = 1000


@dataclass
class Candidate:
    name: str
    agreement: float
    entropy: float  # mean normalised entropy of each cell's prediction (0: certain, 1: uniform)
    diversity: float  # normalised entropy of the predictions pooled over the cells
    score: float
    counts: dict[str, int] = field(default_factory=dict)  # predicted classes (each cell's mean over VIEWS)
    framing: str = "band"  # how the cells were framed for this candidate (a key of FRAMINGS, or "model")


@dataclass
class UnlabelledResult:
    output: str
    n_cells: int
    chosen: str
    reason: str
    candidates: list[Candidate]
    classes: list[str]
    seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)
    class_prior: dict[str, float] = field(default_factory=dict)  # estimated class frequencies ({}: not estimated)
    framing: str = "band"  # the chosen framing (a key of FRAMINGS, or "model": the model's own)
    tta_views: int = 1  # flips/rotations the adapted model averages per cell
    set_priors: dict[str, dict[str, float]] = field(default_factory=dict)  # per named label set (label_set_priors)
    n_files: int = 0  # image files in the folder; more than scored when a sample was drawn (MAX_CELLS)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def score_probs(views: list[np.ndarray], classes: list[str], name: str) -> Candidate:
    """View agreement, mean entropy and pooled entropy of per-view probabilities (each (N, C) over ``classes``)."""
    mean = np.mean(views, axis=0)
    agree = float(np.mean([(v.argmax(1) == views[0].argmax(1)).mean() for v in views[1:]])) if len(views) > 1 else 1.0
    norm = np.log(max(2, mean.shape[1]))
    ent = float((-(mean * np.log(np.clip(mean, 1e-12, None))).sum(1)).mean() / norm)
    pooled = mean.mean(0)
    div = float(-(pooled * np.log(np.clip(pooled, 1e-12, None))).sum() / norm)
    labels = mean.argmax(1)
    counts = {c: int((labels == i).sum()) for i, c in enumerate(classes) if (labels == i).any()}
    return Candidate(name, agree, ent, div, agree - ent + div, counts)


def set_weights(probs: np.ndarray, classes: list[str], allowed: tuple[str, ...] | list[str]) -> np.ndarray:
    """How far each cell, with probabilities ``probs`` (N, len(classes)) over every class, is one of the label set
    ``allowed`` (all ones when it is empty): 1 - its probability on the classes of no nucleated cell outside the set
    (:data:`wbc.labels.NOT_IN_SMEAR_DETECTIONS`, platelets). A platelet image is no cell of a five-part differential
    (on 20 PBC platelets the five WBC types held 0.2 % of the probability), but the nucleated classes outside the
    set (erythroblast, ig) count as in it: on another lab's cells the model's line between them and the WBC types
    does not hold (BCCD's lymphocytes are taken for erythroblasts), and weighting by the whole probability inside
    the set lowered BCCD's five-part accuracy after adaptation, 0.8592 -> 0.8556.

    >>> p = np.array([[0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.9], [0.0, 0.0, 0.6, 0.0, 0.4, 0.0, 0.0, 0.0]])
    >>> from wbc.labels import CLASSES, WBC5
    >>> set_weights(p, list(CLASSES), WBC5).round(2).tolist(), set_weights(p, list(CLASSES), ()).tolist()
    ([0.1, 1.0], [1.0, 1.0])
    """
    from wbc.labels import NOT_IN_SMEAR_DETECTIONS

    out = [i for i, c in enumerate(classes) if allowed and c not in allowed and c in NOT_IN_SMEAR_DETECTIONS]
    return np.clip(1.0 - np.asarray(probs, np.float64)[:, out].sum(1), 0.0, 1.0)


def view_probs(clf: Any, cells: np.ndarray, allowed: tuple[str, ...] = (),
               second: dict[int, np.ndarray] | None = None, refocus: FramingStats | None = None) -> list[np.ndarray]:
    """Calibrated probabilities over ``allowed`` (all classes if empty) of each of :data:`VIEWS` of the cells;
    ``second``: ambiguously framed cells' second framings, whose logits are averaged in as `wbc classify` does
    (:func:`wbc.classify.predict_cells`); ``refocus``: the framing the cells were cut with, so a cell named platelet
    although a nucleus stands out in it gets its second framing too, as there
    (:func:`wbc.classify.platelet_second_framings`)."""
    return views_and_weights(clf, cells, allowed, second, refocus)[0]


def views_and_weights(clf: Any, cells: np.ndarray, allowed: tuple[str, ...] = (),
                      second: dict[int, np.ndarray] | None = None, refocus: FramingStats | None = None
                      ) -> tuple[list[np.ndarray], np.ndarray]:
    """(:func:`view_probs`, each cell's :func:`set_weights` from its first view's probabilities over every class)."""
    from wbc.adapt import dihedral_view
    from wbc.classify import average_second_framings, platelet_second_framings
    from wbc.labels import restrict_probabilities
    from wbc.model import class_probabilities

    def logits_of(x: np.ndarray) -> np.ndarray:
        return np.concatenate([clf.run(x[i : i + 64])["logits"] for i in range(0, len(x), 64)])

    known = {k: logits_of(dihedral_view(cells, k)) for k in VIEWS[:1]}  # the first view's, reused below
    if refocus is not None:
        second = {**(second or {}),
                  **platelet_second_framings(cells, known[VIEWS[0]], clf.classes, refocus, second or {})}
    out = []
    weights = np.ones(len(cells))
    for k in VIEWS:
        def view_logits(z: np.ndarray, k: int = k) -> np.ndarray:
            return logits_of(dihedral_view(z, k))

        logits = average_second_framings(known[k] if k in known else view_logits(cells), second, view_logits)
        full = class_probabilities(logits, clf.info)
        if k == VIEWS[0]:
            weights = set_weights(full, list(clf.classes), allowed)
        p, _ = restrict_probabilities(full, clf.classes, allowed)
        idx = [clf.classes.index(c) for c in (allowed or clf.classes)]
        out.append(p[:, idx])
    return out, weights


def candidate_views(
    clf: Any, cells: np.ndarray, allowed: tuple[str, ...] = (), methods: tuple[str, ...] | None = None,
    second: dict[int, np.ndarray] | None = None, refocus: FramingStats | None = None,
) -> dict[str, tuple[dict[str, Any] | None, list[np.ndarray], np.ndarray]]:
    """{candidate: (its stain spec, :func:`view_probs` under it, :func:`set_weights` under it)}: no mapping, then
    every stain mapping the model
    has training colours for, fitted on these cells (``second``, ``refocus``: as :func:`view_probs`). ``methods``:
    the mappings to try (None: :data:`CANDIDATE_METHODS`; empty: no mapping, only "none")."""
    from wbc.adapt import stain_spec

    base = clf.info
    names = ["none", *[m for m in (CANDIDATE_METHODS if methods is None else methods) if base.colour_reference.get(m)]]
    out: dict[str, tuple[dict[str, Any] | None, list[np.ndarray], np.ndarray]] = {}
    try:
        for name in names:
            spec = None if name == "none" else stain_spec(clf, name, cells)
            clf.info = replace(base, preprocessing=replace(base.preprocessing, stain=spec))
            out[name] = (spec, *views_and_weights(clf, cells, allowed, second, refocus))
    finally:
        clf.info = base
    return out


def choose_preprocessing(
    clf: Any, cells: np.ndarray, allowed: tuple[str, ...] = (), methods: tuple[str, ...] | None = None
) -> tuple[dict[str, Any] | None, list[Candidate], str, str]:
    """(stain spec or None, every candidate's scores, the chosen name, why) for these unlabelled cells."""
    return choose_from_views(candidate_views(clf, cells, allowed, methods), list(allowed or clf.classes))


def choose_from_views(
    views: dict[str, tuple[dict[str, Any] | None, list[np.ndarray], np.ndarray]], shown: list[str]
) -> tuple[dict[str, Any] | None, list[Candidate], str, str]:
    """:func:`choose_preprocessing` on probabilities already computed (:func:`candidate_views`)."""
    cands = [score_probs(v, shown, name) for name, (_spec, v, _w) in views.items()]
    chosen, why = pick_mapping(cands)
    return views[chosen][0], cands, chosen, why


def pick_mapping(cands: list[Candidate], margin: float = MAPPING_MIN_GAIN) -> tuple[str, str]:
    """(the chosen candidate's name, why): the best-scoring mapping if it beats "none" by more than ``margin``.

    >>> none, hist = Candidate("none", 0.90, 0.16, 0.68, 1.419), Candidate("histogram", 0.94, 0.11, 0.63, 1.460)
    >>> pick_mapping([none, hist])[0]  # 0.041 higher: not enough evidence to change every cell's colours
    'none'
    >>> pick_mapping([none, Candidate("histogram", 0.92, 0.15, 0.69, 1.480)])[0]
    'histogram'
    >>> pick_mapping([none, Candidate("reinhard", 0.85, 0.20, 0.60, 1.250)])[1]
    'no mapping: it scored highest (1.419)'
    """
    none = next(c for c in cands if c.name == "none")
    best = max(cands, key=lambda c: (c.score, c.name == "none"))  # a tie: no mapping
    if best.name != "none" and best.score > none.score + margin:
        return best.name, (f"{best.name} scored {best.score:.3f} (view agreement {best.agreement:.2f}, entropy "
                           f"{best.entropy:.2f}, diversity {best.diversity:.2f}) against {none.score:.3f} without "
                           "a mapping")
    tied = [c.name for c in cands if c.name != "none" and c.score == none.score]
    if best.name == "none":  # before wbc 0.34.0 a tie read "it scored highest" too
        return "none", (f"no mapping: it scored highest ({none.score:.3f})" if not tied else
                        f"no mapping: it scored as high as {', '.join(tied)} ({none.score:.3f})")
    return "none", (f"no mapping: no candidate beat it by more than {margin} (best {best.name} {best.score:.3f}, "
                    f"{best.score - none.score:+.4f} over none's {none.score:.3f})")


def class_prior_of(probs: np.ndarray, shown: list[str], weights: np.ndarray | None = None
                   ) -> tuple[dict[str, float], int]:
    """({class: frequency}, EM iterations) of the cells whose calibrated probabilities over ``shown`` are
    ``probs`` (N, len(shown)): the model's answers as it will give them, its stain mapping applied. ``weights``
    (N,): how far each cell is one of ``shown`` (:func:`set_weights`; default 1 each), so that an image the model
    puts outside the set (a platelet, for five WBC types) does not count as a whole cell of it."""
    from wbc.calibration import estimate_class_prior

    prior, iterations = estimate_class_prior(probs, weights=weights)
    # 4 decimals, but never 0: a class the folder lacks keeps its small frequency (EM's pseudo-count, below 5e-5 past
    # about 20,000 cells), or the adapted model could never name it again, however clear a cell
    return {c: round(float(v), 4) or float(f"{v:.2g}") for c, v in zip(shown, prior, strict=True)}, iterations


def label_set_priors(probs: np.ndarray, shown: list[str]) -> dict[str, dict[str, float]]:
    """{label-set key: {class: frequency}} for each named label set (:data:`wbc.labels.CLASS_SETS`) smaller than
    ``shown``: the class frequencies estimated from ``probs`` (N, len(shown)) restricted to that set, as the answer
    will be with ``--classes`` (:func:`wbc.model.prior_for` reads them).

    >>> p = np.array([[0.6, 0.3, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0]] * 4)
    >>> from wbc.labels import CLASSES
    >>> five = label_set_priors(p, list(CLASSES))["basophil,eosinophil,lymphocyte,monocyte,neutrophil"]
    >>> round(sum(five.values()), 3), max(five, key=five.get)
    (1.0, 'basophil')
    """
    from wbc.labels import CLASS_SETS

    out: dict[str, dict[str, float]] = {}
    for members in CLASS_SETS.values():
        idx = [shown.index(c) for c in members if c in shown]
        if len(idx) != len(members) or len(idx) >= len(shown):
            continue
        sub = np.asarray(probs, np.float64)[:, idx]
        sub = sub / np.maximum(sub.sum(1, keepdims=True), 1e-300)
        weights = set_weights(probs, shown, members)  # a platelet image is no white cell of the set's answer
        out[label_set_key(members)] = class_prior_of(sub, [shown[i] for i in idx], weights)[0]
    return out


def framing_name(stats: FramingStats, own: FramingStats | None = None) -> str:
    """The :data:`FRAMINGS` key of ``stats``, "lab" for one magnification for the lab (``side``), else "model"
    (a framing of the model's own). ``own``: the model's framing; a lab magnification it already has (adapted to
    a lab before) is "model", so that a newly measured one is told from it."""
    if stats.side > 0:
        return "model" if stats == own else "lab"
    return next((k for k, v in FRAMINGS.items() if v == stats), "model")


def framing_options(clf: Any, framing: str = "auto", lab: FramingStats | None = None) -> list[FramingStats]:
    """The framings to score, the incumbent (the model's own) first; one for ``framing`` "band", "all" or "lab".

    ``lab``: the lab's one magnification (:func:`wbc.reframe.lab_framing`; None when it could not be measured).
    """
    if framing == "lab":
        if lab is None:
            raise WbcError("--framing lab: fewer than 8 of the lab's images show a measurable nucleus")
        return [lab]
    if framing != "auto":
        if framing not in FRAMINGS:
            raise WbcError(f"--framing {framing}: choose auto, {', '.join(FRAMINGS)}, lab")
        return [FRAMINGS[framing]]
    out = [framing_stats_of(clf)]
    return out + [v for v in (*FRAMINGS.values(), lab) if v is not None and v not in out]


def measure_lab(paths: list[Any], threads: int = 2) -> FramingStats | None:
    """The lab's one magnification from its images (:func:`wbc.reframe.lab_framing`; unreadable files, images that
    are no photos and images over the single-cell limit are skipped here and reported by the scoring), each
    measured within its field of view as `wbc classify` frames it (:func:`wbc.preprocess.field_of_view`), in the
    file's pixels. An image over :data:`wbc.classify.MAX_CELL_PIXELS` is refused from its header, as the scoring
    refuses it (before wbc 0.30.0 it was decoded and measured first: gigabytes for a slide export), and a large
    JPEG is measured on a reduced decoding (:data:`MEASURE_MIN_SIDE`)."""
    from concurrent.futures import ThreadPoolExecutor

    from wbc.classify import MAX_CELL_PIXELS, check_cell_image, full_image
    from wbc.io import decode_image, read_bytes
    from wbc.preprocess import field_of_view
    from wbc.reframe import lab_framing, nucleus_extent

    def extent(path: Any) -> float | None:
        try:
            data, name = read_bytes(path), str(path)
            rgb = decode_image(data, name, min_size=MEASURE_MIN_SIDE, max_pixels=MAX_CELL_PIXELS)
            full = full_image(data, name, rgb)  # None unless rgb is a reduced decoding of the file
            check_cell_image(rgb, name, full)  # a mask or a drawing beside the lab's cells is no measure of them
            found = nucleus_extent(field_of_view(rgb)[0])
            return None if found is None else found * (full.scale if full is not None else 1.0)
        except (WbcError, OSError, ValueError):
            return None

    with ThreadPoolExecutor(max(1, threads)) as pool:
        return lab_framing(list(pool.map(extent, paths)))


@dataclass
class _Framed:
    """One framing's cells and the colour-mapping choice made on them."""

    stats: FramingStats
    cells: np.ndarray
    spec: dict[str, Any] | None
    candidates: list[Candidate]
    chosen: str
    why: str
    skipped: list[str]
    probs: np.ndarray  # the chosen candidate's probabilities (identity view), for the class prior
    weights: np.ndarray  # how far each cell is one of the label set (set_weights), for the class prior

    @property
    def score(self) -> float:
        return next(c.score for c in self.candidates if c.name == self.chosen)


def _score_framing(clf: Any, paths: list[Any], stats: FramingStats, allowed: tuple[str, ...],
                   methods: tuple[str, ...] | None, threads: int, data: object) -> _Framed:
    """Load the lab's cells framed by ``stats`` (with the second framings `wbc classify` averages in) and choose
    the colour mapping on them."""
    from wbc.adapt import too_few_cells
    from wbc.classify import load_cell_views

    cells, second, _, errors = load_cell_views(paths, clf.info.input_size, threads, reframe=stats)
    if len(cells) < MIN_CELLS:
        raise too_few_cells(data, MIN_CELLS, len(cells), errors)
    views = candidate_views(clf, cells, allowed, methods, second, stats)
    spec, cands, chosen, why = choose_from_views(views, list(allowed or clf.classes))
    for c in cands:
        c.framing = framing_name(stats, framing_stats_of(clf))
    return _Framed(stats, cells, spec, cands, chosen, why, [m for _, m in errors], views[chosen][1][0],
                   views[chosen][2])


def choose_framing(clf: Any, paths: list[Any], framing: str = "auto", allowed: tuple[str, ...] = (),
                   methods: tuple[str, ...] | None = None, threads: int = 2, data: object = "",
                   ) -> tuple[_Framed, list[_Framed]]:
    """(the framing chosen for the lab's cells ``paths``, every framing scored): the model's own, unless another
    of :func:`framing_options` (every cell re-framed, the lab's one magnification measured by :func:`measure_lab`)
    scores clearly higher without labels (:data:`MIN_GAIN`, :data:`LAB_MIN_GAIN`), each under its best colour
    mapping among ``methods`` (``()``: no mapping)."""
    lab = measure_lab(paths, threads) if framing in ("auto", "lab") else None
    tried = [_score_framing(clf, paths, stats, allowed, methods, threads, data)
             for stats in framing_options(clf, framing, lab)]
    best = tried[0]  # the model's own framing, unless another scores clearly higher
    clear = [t for t in tried[1:] if t.score > best.score + framing_margin(t.stats)]
    if clear:
        best = max(clear, key=lambda t: t.score)
    return best, tried


def framing_margin(stats: FramingStats) -> float:
    """How much higher than the model's own framing a framing must score to replace it: :data:`LAB_MIN_GAIN` for the
    lab's one magnification, :data:`MIN_GAIN` for another."""
    return LAB_MIN_GAIN if stats.side > 0 else MIN_GAIN


def framing_reason(best: _Framed, tried: list[_Framed]) -> str:
    """The framing chosen and every framing's score against the margin it had to clear over the model's own framing
    (:func:`framing_margin`), for the report: "framing lab (1.400 > band 1.340 + 0.030; all 1.355 < band + 0.100)".
    Before wbc 0.34.0 the margins were not shown, and "framing lab (1.622; band 1.584; all 1.665)" read as if the
    highest score had lost."""
    own = tried[0]  # the model's own framing is scored first
    own_name = framing_name(own.stats, own.stats)

    def against(t: _Framed) -> str:
        need = framing_margin(t.stats)
        if t.score > own.score + need:  # clear of the margin, but another clear one scored higher
            return f"{t.score:.3f} > {own_name} + {need:.3f}, below {framing_name(best.stats, own.stats)}"
        return f"{t.score:.3f} < {own_name} + {need:.3f}"

    head = f"framing {framing_name(best.stats, own.stats)} ({best.score:.3f}"
    if best is not own:
        head += f" > {own_name} {own.score:.3f} + {framing_margin(best.stats):.3f}"
    others = "; ".join(f"{framing_name(t.stats, own.stats)} {against(t)}" for t in tried
                       if t is not best and t is not own)
    return head + (f"; {others})" if others else ")")


def adapt_unlabelled(
    model: str | os.PathLike[str] | None, data: str | os.PathLike[str], output: str | os.PathLike[str],
    classes: str | None = None, threads: int = 2, methods: tuple[str, ...] | None = None, prior: bool = True,
    framing: str = "auto", tta: int = ADAPTED_TTA_VIEWS, max_cells: int = MAX_CELLS,
) -> UnlabelledResult:
    """Choose a framing and a stain mapping for the lab's unlabelled cells in ``data`` by view agreement and
    confidence, estimate the lab's class frequencies (``prior``), and write the model with all three (a copy
    of the ONNX file; only the metadata changes).

    ``classes``: the label set the lab uses (``"5part"``, ...): the scores and frequencies are computed over
    it, and it is what `wbc classify --classes` will answer with. ``framing``: "auto" (the model's own framing
    unless another of :data:`FRAMINGS`, or the lab's one magnification, scores clearly higher), or "band", "all" or
    "lab" to fix it. ``tta``: flips/rotations the adapted model averages per cell (1-8). ``max_cells``: the most
    cells scored, a seeded random sample of a larger folder (:data:`MAX_CELLS`; 0: all). The network's ``.pt``
    weights beside ``model`` are copied beside ``output``, so the output can be fine-tuned with labels.
    """
    from wbc.adapt import (
        _check_output,
        adaptation_hash,
        base_record,
        carry_weights,
        unlabelled_image_paths,
        write_model_copy,
    )
    from wbc.labels import parse_class_set
    from wbc.model import load_model

    tta = checked_tta_views(tta)
    t0 = time.perf_counter()
    clf = load_model(model, threads=threads)
    clf.info = without_lab_prior(clf.info)  # a model adapted before: judge its own probabilities
    out = _check_output(output, clf)
    allowed = parse_class_set(classes, clf.classes)
    if set(allowed) >= set(clf.classes):  # every class named: the answer is unrestricted, and so are the priors
        allowed = ()
    own = framing_stats_of(clf)
    if max_cells < 0 or 0 < max_cells < MIN_CELLS:
        raise WbcError(f"--max-cells must be 0 (every cell) or at least {MIN_CELLS}, got {max_cells}")
    found = unlabelled_image_paths(data)
    paths = sample_paths(found, max_cells)
    best, tried = choose_framing(clf, paths, framing, allowed, methods, threads, data)
    stats, cells, spec, chosen, why = best.stats, best.cells, best.spec, best.chosen, best.why
    if len(tried) > 1:
        why = f"{framing_reason(best, tried)}, {why}"
    cands = [c for t in tried for c in t.candidates]
    reframed = stats != own
    info = copy.deepcopy(clf.info)
    info.preprocessing = replace(info.preprocessing, stain=spec)
    if reframed:
        info.extra["reframe"] = asdict(stats)  # wbc classify / serve frame the lab's cells this way
    info.extra["tta_views"] = tta  # wbc classify / analyze / serve average each cell over this many views
    class_prior: dict[str, float] = {}
    iterations = 0
    set_priors: dict[str, dict[str, float]] = {}
    if prior:
        class_prior, iterations = class_prior_of(best.probs, list(allowed or clf.classes), best.weights)
        if not allowed:  # the lab may still answer over a named label set (--classes 5part): its own estimate
            set_priors = label_set_priors(best.probs, list(clf.classes))
    info.class_prior = class_prior
    if set_priors:
        info.extra["class_priors"] = set_priors
    info.metrics = {}  # nothing measured on the lab's cells (no labels); the base's are in extra.adapt.base
    info.extra["adapt"] = {"kind": "no labels", "chosen": chosen, "framing": framing_name(stats, own),
                           "reason": why, "n_cells": len(cells), "n_files": len(found),
                           "data": str(Path(data).resolve()), "base": base_record(clf), "classes": list(allowed),
                           "candidates": [asdict(c) for c in cands],
                           "class_prior": {"estimated": bool(class_prior), "method": "EM (Saerens et al. 2002)",
                                           "iterations": iterations}}
    info.model_id = (f"{clf.model_id}+unlabelled-{chosen}-{adaptation_hash(info)}" + ("+prior" if class_prior else "")
                     + (f"+framing-{framing_name(stats, own)}" if reframed else ""))
    write_model_copy(clf.path, out, info)
    carry_weights(clf.path, out, same_network=True)  # unchanged: `wbc adapt` can fine-tune the output
    return UnlabelledResult(str(out), len(cells), chosen, why, cands, list(allowed or clf.classes),
                            time.perf_counter() - t0, best.skipped, class_prior, framing_name(stats, own), tta,
                            set_priors, len(found))


def summary_lines(res: UnlabelledResult) -> list[str]:
    """The report printed by ``wbc adapt --no-labels``: every candidate, what was chosen and why."""
    lines = [f"{'framing':<8} {'candidate':<11} {'agreement':>9} {'entropy':>8} {'diversity':>9} {'score':>7}  "
             "predicted"]
    for c in res.candidates:
        top = ", ".join(f"{k} {v}" for k, v in sorted(c.counts.items(), key=lambda kv: -kv[1])[:4])
        mark = " <- chosen" if (c.name, c.framing) == (res.chosen, res.framing) else ""
        lines.append(f"{c.framing:<8} {c.name:<11} {c.agreement:>9.3f} {c.entropy:>8.3f} {c.diversity:>9.3f} "
                     f"{c.score:>7.3f}  {top}{mark}")
    lines.append(f"chose {res.chosen}: {res.reason}")
    if res.n_files > res.n_cells + len(res.skipped):
        lines.append(f"scored on a random {res.n_cells + len(res.skipped)} of the folder's {res.n_files} images "
                     "(--max-cells; 0: every one): enough for the choice, and the model answers every cell")
    if res.n_cells < FEW_CELLS:
        lines.append(f"warning: only {res.n_cells} cells; below {FEW_CELLS} what scores best is mostly the draw's "
                     "(on another lab's folders of 25 cells adaptation gained nothing on average): give it more of "
                     "the lab's cells if there are more")
    if res.class_prior:
        mix = ", ".join(f"{c} {v:.0%}" for c, v in sorted(res.class_prior.items(), key=lambda kv: -kv[1]))
        lines.append(f"class frequencies estimated without labels (EM): {mix}; probabilities re-weighted to them")
    for key, prior in res.set_priors.items():
        mix = ", ".join(f"{c} {v:.0%}" for c, v in sorted(prior.items(), key=lambda kv: -kv[1]))
        lines.append(f"  answered over {key.replace(',', ', ')} only (--classes): {mix}")
    if res.tta_views > 1:
        lines.append(f"each cell's answer averaged over {res.tta_views} flips/rotations ({res.tta_views} network "
                     "passes per cell; --tta 1 here or at classify time for one)")
    return lines
