"""Classify single-cell images with an exported model: files in, :class:`Prediction` objects out.

Decoding runs in a thread pool (OpenCV releases the GIL) while ONNX Runtime works on the previous
batch, so the model, not JPEG decoding, sets the pace.
"""

from __future__ import annotations

import functools
import os
import re
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar, cast

import numpy as np

from wbc.calibration import under_review
from wbc.cytoplasm import Evidence, single_cell_evidence
from wbc.errors import ImageReadError, ImageTooLargeError, WbcError, checked_whole
from wbc.io import check_pixels, decode_image, image_size, read_bytes, tiff_fields
from wbc.labels import parse_class_set, restrict_probabilities
from wbc.model import Classifier, class_probabilities
from wbc.preprocess import check_rgb8, field_of_view, not_a_photo, resize_square, scaled_view
from wbc.protocols import ClassifierLike, checked_classifier
from wbc.reframe import (
    DEFAULT_STATS,
    SECOND_VIEW_WEIGHT,
    CellViews,
    FramingStats,
    FullImage,
    frame_cell_views,
    framing_stats_of,
    nucleus_view,
)
from wbc.runtime import one_blas_thread
from wbc.types import Prediction

#: A single-cell image with a side below this cannot show a cell (a 1x1 image is no platelet).
MIN_CELL_SIDE: int = 16
#: A single-cell image above this many pixels is a scan, not a photo of one cell: it is refused from its header, before
#: decoding. A camera's whole frame of one cell is welcome: 12-24 MP photos are common, and re-framing finds the cell
#: in them (PBC validation cells centred in 16:9 frames of 6.7 and 15 MP, JPEG 95: 0.9875 and 0.9792 over eight
#: classes, every five-part answer right; BCCD's train/val fields enlarged to 4000 x 3000: five-part 0.8412, against
#: 0.8339 at 320 x 240; docs/generalisation.md). The same limit as ``wbc analyze``'s fields (40 MP, a 7,700 x 5,200
#: frame); it was 4 MP until wbc 0.26.0, which refused every such photo.
MAX_CELL_PIXELS: int = 40_000_000


@dataclass
class ClassifyResult:
    """Predictions in input order (failed files left out), the raw logits, and the failures. ``indices``: each
    prediction's place among the inputs (0-based; the failures are the places left out, in order), which ties an answer
    to its input where names repeat (since wbc 0.37.0; empty from the Ray engine)."""

    predictions: list[Prediction]
    logits: np.ndarray  # (N, C), before temperature scaling
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, message)
    embeddings: np.ndarray | None = None
    indices: list[int] = field(default_factory=list)  # of each prediction, among the inputs
    #: the inputs whose bytes another input has (a cell saved twice, ``cell (1).jpg``), as (copy, the one kept), in
    #: input order, and by place (copy -> the one kept): filled by ``wbc.classify_images`` and ``wbc.classify_arrays``
    #: (bytes inputs), which still answer each copy (since wbc 0.37.0)
    copies: list[tuple[str, str]] = field(default_factory=list)
    copy_of: dict[int, int] = field(default_factory=dict)

    def counts(self, each_image_once: bool = False) -> Counter[str]:
        """The predictions' labels counted, one per input given; ``each_image_once``: the copies (:attr:`copies`)
        left out, each image counted once, as ``POST /classify`` and `wbc classify` count them."""
        skip = set(self.copy_of) if each_image_once else set()
        places = self.indices or range(len(self.predictions))
        return Counter(p.label for p, i in zip(self.predictions, places, strict=True) if i not in skip)

    def outside_note(self) -> str | None:
        """:func:`outside_note` of these predictions."""
        return outside_note(self.predictions)

    def other_cells_note(self) -> str | None:
        """:func:`other_cells_note` of these predictions."""
        return other_cells_note(self.predictions)

    def several_images_note(self) -> str | None:
        """:func:`several_images_note` of these predictions."""
        return several_images_note(self.predictions)


def outside_note(preds: Sequence[Prediction]) -> str | None:
    """How many cells the model takes for a class a label set left out (``--classes 5part``: platelets, NRBCs, IGs
    of an analyser's export), by class; None when none. They stay counted in the chosen class they are shown as
    (each flagged, its reason naming the class), so the run must say it: 14 of 40 PBC cells counted as basophils and
    lymphocytes with only per-cell flags (before wbc 0.30.0). `wbc classify`, its report, ``/classify`` and the
    Python API (:meth:`ClassifyResult.outside_note`) all give this sentence.

    >>> P = lambda out: Prediction("lymphocyte", 0.5, True, {}, outside=out)
    >>> outside_note([P("platelet"), P("platelet"), P("ig"), P("")]).partition(":")[0]
    '3 of 4 cells are most likely a class outside the chosen ones (platelet 2, ig 1)'
    >>> outside_note([P("")]) is None
    True
    """
    smear = {o[0] for p in preds if p.outside for r in p.reasons if (o := outside_of(r)) and not o[1]}
    return outside_sentence(Counter(p.outside for p in preds if p.outside), len(preds), smear)


def outside_sentence(by_class: Mapping[str, int], n: int, smear: Collection[str] = ()) -> str | None:
    """:func:`outside_note`'s sentence for ``by_class`` (how many cells are most likely each class left out) of ``n``
    cells; None when none. `wbc analyze` gives it pooled over a run's fields (their cells' :func:`outside_of`), in
    the terminal and report.html, without ``--classes`` too: the detections the model takes for platelets (since wbc
    0.33.0). ``smear``: the classes left out not by a chosen label set but because a smear's differential does not
    count them (their reasons' :data:`OUTSIDE_SMEAR`): a run without ``--classes`` chose none, so its sentence says so.

    >>> outside_sentence({"ig": 1, "platelet": 2}, 9).partition(":")[0]
    '3 of 9 cells are most likely a class outside the chosen ones (platelet 2, ig 1)'
    >>> outside_sentence({"platelet": 2}, 9, {"platelet"}).partition(":")[0]
    "2 of 9 cells are most likely a class a smear's differential does not count (platelet 2)"
    """
    counts = Counter({c: k for c, k in by_class.items() if k})
    if not counts:
        return None
    which = ", ".join(f"{c} {k}" for c, k in counts.most_common())
    not_counted = [c for c in counts if c in smear]
    if len(not_counted) == len(counts):  # no class was chosen (a plain `wbc analyze`'s platelets)
        return (f"{counts.total()} of {n} cells are most likely a class a smear's differential does not count "
                f"({which}): each is counted in the class shown and flagged for review")
    what = "the chosen ones or one a smear's differential does not count" if not_counted else "the chosen ones"
    return (f"{counts.total()} of {n} cells are most likely a class outside {what} ({which}): "
            "each is counted in the chosen class shown and flagged for review")


#: The tails of :func:`outside_reason`: a class the chosen label set (``--classes``) leaves out, and one left out
#: because a smear's differential does not count it (a detection taken for a platelet; before wbc 0.33.0 that said
#: "outside the chosen classes" too, where no class had been chosen).
OUTSIDE_CHOSEN = "outside the chosen classes"
OUTSIDE_SMEAR = "outside the classes counted on smears"


def outside_reason(other: str, probability: float, chosen: bool = True) -> str:
    """A cell's review reason when the model's most likely class, ``other``, is outside the classes answered among:
    those chosen (``chosen``), or those a smear's differential counts (``chosen`` False: no ``--classes`` left it
    out)."""
    return f"the model favours {other} ({probability:.2f}), {OUTSIDE_CHOSEN if chosen else OUTSIDE_SMEAR}"


def outside_of(reason: str) -> tuple[str, bool] | None:
    """The class an :func:`outside_reason` names and whether it was outside the chosen classes (False: outside those
    counted on smears); None for another reason. A field's JSON keeps the reasons only, older ones' too.

    >>> outside_of(outside_reason("ig", 0.5)), outside_of(outside_reason("platelet", 0.9, chosen=False))
    (('ig', True), ('platelet', False))
    """
    head, sep, tail = str(reason).partition("the model favours ")
    other, _, rest = tail.partition(" (")
    if not sep or head or not other:
        return None
    for chosen, end in ((True, OUTSIDE_CHOSEN), (False, OUTSIDE_SMEAR)):
        if rest.endswith(f"), {end}"):
            return other, chosen
    return None


def outside_class(reason: str) -> str | None:
    """The class an :func:`outside_reason` names (None for another reason): a field's JSON keeps the reasons only.

    >>> outside_class(outside_reason("platelet", 0.8312)), outside_class("colours unlike the training images")
    ('platelet', None)
    >>> outside_class(outside_reason("platelet", 0.8312, chosen=False))
    'platelet'
    """
    return got[0] if (got := outside_of(reason)) else None


def other_cells_note(preds: Sequence[Prediction]) -> str | None:
    """How many images show other nucleated cells whole beside the one answered for (``Prediction.other_cells``, see
    :func:`predict_cells`); None when none. Each is flagged, but a run of many must say it too, as
    :func:`outside_note` does: `wbc classify`, its report, ``/classify`` and the Python API
    (:meth:`ClassifyResult.other_cells_note`) all give this sentence. Since wbc 0.31.0.

    >>> P = lambda k: Prediction("neutrophil", 0.99, True, {}, other_cells=k)
    >>> other_cells_note([P(1), P(0), P(2)]).partition(":")[0]
    '2 of 3 images show more than one nucleated cell'
    >>> other_cells_note([P(0)]) is None
    True
    """
    n = sum(1 for p in preds if p.other_cells)
    if not n:
        return None
    return (f"{n} of {len(preds)} images show more than one nucleated cell: each is answered for one of them and "
            "flagged for review; crop each cell on its own to have it answered")


#: A cell's review reason when its file holds several images (:func:`several_images_reason`), as a pattern.
_SEVERAL_IMAGES = re.compile(r"the file holds \d+ images; only the first was classified")


def several_images_reason(pages: int) -> str:
    """Why a cell whose file holds ``pages`` images (a multi-page TIFF: an ImageJ stack, a microscope's z-stack or
    time series; an animated GIF, PNG or WebP, since wbc 0.35.0) is flagged: only the first image was classified,
    so the others' cells are in no count.

    >>> several_images_reason(4)
    'the file holds 4 images; only the first was classified'
    """
    return f"the file holds {pages} images; only the first was classified"


def flag_several_images(preds: Sequence[Prediction], pages: Mapping[int, int]) -> None:
    """Flag for review, saying why (:func:`several_images_reason`), the cells of ``preds`` whose file holds several
    images ({index in ``preds``: how many images}, from :class:`wbc.reframe.CellViews`). Before wbc 0.32.0 a stack of
    four cells was answered as one cell, and nothing said three were never looked at. The pages are not classified as
    cells of their own: a stack may as well be one cell's focal planes or exposures, which would count it N times."""
    for at, n in pages.items():
        if n > 1:
            preds[at].review = True
            preds[at].reasons.append(several_images_reason(n))


def several_images_note(preds: Sequence[Prediction]) -> str | None:
    """How many of the files answered hold several images (:func:`flag_several_images`), only the first of each
    classified; None when none. `wbc classify`, ``/classify``'s ``warnings`` and the Python API
    (:meth:`ClassifyResult.several_images_note`) give this sentence. Since wbc 0.32.0.

    >>> P = lambda *why: Prediction("neutrophil", 0.99, bool(why), {}, reasons=list(why))
    >>> several_images_note([P(several_images_reason(4)), P()]).partition(":")[0]
    '1 of 2 files holds several images; only the first of each was classified'
    >>> several_images_note([P("colours unlike the training images")]) is None
    True
    """
    n = sum(1 for p in preds if any(_SEVERAL_IMAGES.fullmatch(r) for r in p.reasons))
    if not n:
        return None
    return (f"{n} of {len(preds)} files {'hold' if n != 1 else 'holds'} several images; only the first of each was "
            "classified: save each cell as a file of its own to have it counted")


def other_cells_reason(others: int) -> str:
    """Why a cell whose image shows ``others`` more nucleated cells whole is flagged (:func:`predict_cells`).

    >>> other_cells_reason(1)
    '2 nucleated cells in view: the answer is for one of them, and which one is unclear'
    """
    return f"{others + 1} nucleated cells in view: the answer is for one of them, and which one is unclear"


def review_reason(confidence: float, threshold: float) -> str:
    """Why a low-confidence cell is flagged, with as many decimals as it takes for the two numbers to differ (never
    "confidence 0.99 < 0.99"), the threshold never with fewer than the reports and pages show it with
    (:func:`wbc.formats.threshold_text`: 0.986, not 0.99 beside a page's 98.6 %, before wbc 0.30.0), both rounded by
    the rule every output rounds with (:func:`wbc.counts.fixed`).

    >>> review_reason(0.9893, 0.99)
    'confidence 0.989, below the review threshold 0.990'
    >>> review_reason(0.61, 0.83), review_reason(0.98496, 0.9863332509994507)
    ('confidence 0.61, below the review threshold 0.83', 'confidence 0.985, below the review threshold 0.986')
    >>> review_reason(1.0, 1.0)
    'every cell is reviewed: the cells this model was checked on do not show its review target'
    """
    from wbc.counts import fixed
    from wbc.formats import confidence_text, threshold_text

    if threshold >= 1.0:
        return "every cell is reviewed: the cells this model was checked on do not show its review target"
    t = threshold_text(threshold)
    c = confidence_text(confidence, threshold, max(2, len(t.partition(".")[2])))  # 0.985, as a page's 98.5 %
    if (digits := len(c.partition(".")[2])) > len(t.partition(".")[2]):
        t = fixed(threshold, digits)
    return f"confidence {c}, below the review threshold {t}"


def predictions_from_probs(
    probs: np.ndarray, classifier: ClassifierLike, paths: Sequence[str] = ()
) -> list[Prediction]:
    """Label, confidence and the review flag (confidence below the model's threshold) per row."""
    classes = classifier.classes
    thr = classifier.info.review_threshold
    out = []
    for i, p in enumerate(probs):
        k = int(p.argmax())
        conf = float(p[k])
        review = bool(under_review(conf, thr))
        out.append(Prediction(
            label=classes[k],
            confidence=conf,
            review=review,
            probabilities={c: float(v) for c, v in zip(classes, p, strict=True)},
            path=str(paths[i]) if i < len(paths) else "",
            reasons=[review_reason(conf, thr)] if review else [],
        ))
    return out


def run_views(classifier: ClassifierLike, cells: np.ndarray, want: tuple[str, ...], views: int = 1,
              first: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """``classifier.run`` with the logits averaged over the first ``views`` flips/rotations of each cell
    (:func:`wbc.preprocess.dihedral_view`; cells have no up). Other outputs (the embedding the
    out-of-distribution flags read) are those of the cell as it is, the view the flags were fitted on.
    ``first``: the logits of the cells as they are, when already known (only logits wanted): not run again."""
    out = {"logits": first} if first is not None and want == ("logits",) else classifier.run(cells, want)
    if views <= 1 or len(cells) == 0:
        return out
    from wbc.preprocess import dihedral_view

    cells = np.asarray(cells)
    logits = [out["logits"]] + [classifier.run(dihedral_view(cells, k), ("logits",))["logits"]
                                for k in range(1, views)]
    return {**out, "logits": np.mean(logits, axis=0)}


def average_second_framings(
    logits: np.ndarray, second: Mapping[int, np.ndarray] | None, logits_of: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """``logits`` (N, C) with the rows of the cells in ``second`` ({index: the cell re-framed},
    :func:`wbc.reframe.frame_cell_views`) replaced by the weighted mean of theirs and ``logits_of`` the re-framed
    cells (:data:`wbc.reframe.SECOND_VIEW_WEIGHT` on the re-framed one): how an ambiguously framed cell is
    answered, here and in the label-free adaptation's scores."""
    if not second:
        return logits
    idx = sorted(second)
    return weigh_second_framings(logits, idx, logits_of(np.stack([second[i] for i in idx])))


def weigh_second_framings(logits: np.ndarray, rows: Sequence[int], second_logits: np.ndarray) -> np.ndarray:
    """``logits`` (N, C) with ``rows`` replaced by the weighted mean of theirs and ``second_logits`` (the same cells
    re-framed, in ``rows``' order; :data:`wbc.reframe.SECOND_VIEW_WEIGHT` on them): :func:`average_second_framings`
    when the re-framed cells' logits are already known.

    >>> weigh_second_framings(np.zeros((3, 2)), [1], np.ones((1, 2)))[:, 0].round(2).tolist()
    [0.0, 0.6, 0.0]
    """
    out = np.array(logits, copy=True)
    if len(rows):
        idx = np.asarray(rows, dtype=int)
        out[idx] = (1 - SECOND_VIEW_WEIGHT) * out[idx] + SECOND_VIEW_WEIGHT * second_logits
    return out


#: What the network answers for an image with no nucleated cell in it: PBC's platelet crops show red cells and a
#: platelet or two. A WBC small and off the centre of a wide or crowded frame, left as it is, looks like that to it.
NO_WBC_CLASS = "platelet"


def platelet_second_framings(
    cells: np.ndarray, logits: np.ndarray, classes: Sequence[str], stats: FramingStats, known: Mapping[int, np.ndarray]
) -> dict[int, np.ndarray]:
    """{index: the cell re-framed around its nucleus} for the ``cells`` whose ``logits`` name :data:`NO_WBC_CLASS`
    although the first look finds a nucleus in them (:func:`wbc.reframe.nucleus_view`), leaving out those ``known``
    to be shown in a second framing already; :func:`predict_cells` averages both framings' logits, as for an
    ambiguously framed cell. Nothing at a lab's one magnification (``stats.side``: every cell is cut around its
    nucleus already) or for a model without that class.

    Chosen on validation (docs/generalisation.md, "A nucleus in a cell named platelet"): BCCD's 277 train/val fields
    shown whole at 320 x 240, eight classes 0.6787 -> 0.6968 ("platelet" 28 -> 20); PBC validation cells as they are
    and re-framed synthetically (11 variants of 1,648) within two cells of their answers before.

    >>> import cv2
    >>> cells = np.full((2, 96, 96, 3), 235, np.uint8)
    >>> _ = cv2.circle(cells[1], (70, 60), 10, (90, 40, 140), -1)  # a nucleus off the centre
    >>> logits = np.array([[0.0, 5.0], [0.0, 5.0]])  # both named platelet
    >>> sorted(platelet_second_framings(cells, logits, ["neutrophil", "platelet"], DEFAULT_STATS, {}))
    [1]
    >>> platelet_second_framings(cells, logits, ["neutrophil", "platelet"], DEFAULT_STATS, {1: cells[1]})
    {}
    """
    if stats.side > 0 or NO_WBC_CLASS not in classes or not len(cells):
        return {}
    named = np.flatnonzero(np.asarray(logits).argmax(1) == list(classes).index(NO_WBC_CLASS))
    out: dict[int, np.ndarray] = {}
    for i in (int(i) for i in named if int(i) not in known):
        view = nucleus_view(cells[i], cells.shape[1], stats.target)
        if view is not None:
            out[i] = view
    return out


def answer_probabilities(
    logits: np.ndarray, classifier: ClassifierLike, exclude: Sequence[str] = (), classes: Sequence[str] = ()
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Calibrated probabilities as the answer gives them (``exclude``d classes zeroed, then restricted to
    ``classes`` when given), the model's own over all its classes (before either: what :func:`predict_cells`' outside
    check reads, so a smear cell the model takes for a platelet says so), and the mass the restriction kept (ones
    without it): :func:`predict_cells`' arithmetic."""
    probs = class_probabilities(logits, classifier.info, classes)
    before = probs.copy()  # what the model says, before the classes these cells cannot be are taken out
    excluded = set(exclude)
    drop = [i for i, c in enumerate(classifier.classes) if c in excluded]
    if drop and len(drop) < len(classifier.classes):
        probs[:, drop] = 0.0
        probs /= probs.sum(1, keepdims=True)
    if not classes:
        return probs, before, np.ones(len(probs))
    restricted, mass = restrict_probabilities(probs, classifier.classes, tuple(classes))
    return restricted, before, mass


def unsure_views_of(classifier: ClassifierLike) -> tuple[float, int]:
    """``(gate, views)`` of :meth:`wbc.model.Classifier.unsure_views`: cells one view names below ``gate`` are
    answered by the mean of ``views`` rotations."""
    return classifier.unsure_views()


def tta_unsure_of(classifier: ClassifierLike) -> dict[str, float | int] | None:
    """``{"below": gate, "views": views}`` when :func:`predict_cells` answers a single cell that one view names below
    ``gate`` confidence again by the mean of ``views`` rotations (:func:`unsure_views_of`), else None (the views set,
    by ``--tta``/a request's ``tta`` or by the model): ``GET /model``'s ``tta_unsure`` and ``POST /classify``'s
    ``settings``."""
    gate, views = unsure_views_of(classifier)
    return {"below": gate, "views": views} if gate > 0 and views > tta_views_of(classifier) else None


def tta_views_of(classifier: ClassifierLike, smear: bool = False) -> int:
    """How many views :func:`predict_cells` averages for this classifier (:meth:`wbc.model.Classifier.tta_views`)."""
    return int(classifier.tta_views(smear))


@one_blas_thread()  # the out-of-distribution products; see one_blas_thread for why
def predict_cells(
    classifier: ClassifierLike, cells: np.ndarray, names: Sequence[str] = (), with_embeddings: bool = False,
    exclude: Sequence[str] = (), classes: Sequence[str] = (), views: int | None = None,
    second: Mapping[int, np.ndarray] | None = None, ood_cells: np.ndarray | None = None,
    refocus: FramingStats | None = None, adjust: Evidence | None = None, others: Mapping[int, int] | None = None,
) -> tuple[list[Prediction], dict[str, np.ndarray]]:
    """Predictions for one batch of uint8 cells at the model's input size, and the raw outputs.

    The one place where logits become calibrated probabilities, labels, review and out-of-distribution
    flags, so `wbc classify`, `wbc analyze` and the HTTP API always agree. ``exclude``: classes not to answer
    (`wbc analyze`'s platelets: a smear's differential counts no platelets); their probability is set to 0 and the rest
    renormalised, the same as predicting over the other classes' logits only, and a cell whose most likely class over
    all the model's is one of them is flagged, naming it, as for ``classes`` (since wbc 0.33.0: the detector finds giant
    platelets and clumps, which were counted as the leftover's basophil or erythroblast with only a low-confidence
    flag). ``classes``: the chosen label
    set (``--classes``, see :func:`wbc.labels.parse_class_set`): the answer is restricted to them the same
    way; the review threshold applies to the renormalised confidence, and a cell whose most likely class over all
    the model's is outside the set is flagged too, naming that class (``Prediction.outside``; before wbc 0.30.0
    only when the set held under half the probability), as is one whose set holds under half of it. ``views``: logits
    averaged over that many flips/rotations (:func:`run_views`; None: :func:`tta_views_of` the classifier).
    ``second``: {index in ``cells``: the same cell re-framed} for cells whose framing is ambiguous
    (:func:`wbc.reframe.frame_cell_views`); their logits are the weighted mean of both framings'
    (:func:`average_second_framings`). With ``views`` left to the classifier and one view its default, the cells
    it names below :data:`wbc.model.UNSURE_GATE` confidence are answered again by the mean of the four rotations
    (:func:`unsure_views_of`). ``ood_cells``: the
    same cells as they came, when ``cells`` were colour-calibrated (:func:`wbc.analyze.calibrate_field`): the
    colour part of the out-of-distribution check reads them, so a lab unlike the training lab stays flagged.
    ``refocus``: single-cell images re-framed with these statistics (`wbc classify`): a cell answered platelet
    although a nucleus stands out in it, and not shown in two framings already, is also shown re-framed around that
    nucleus and answered by the weighted mean of both framings (:func:`platelet_second_framings`). ``adjust``:
    evidence from outside the network (:class:`wbc.cytoplasm.Evidence`: the cytoplasm's colour, `wbc analyze`'s
    :func:`wbc.cytoplasm.cytoplasm_evidence` and `wbc classify`'s :func:`wbc.cytoplasm.single_cell_evidence`),
    applied to the answer's probabilities before they become predictions, with the cells' out-of-distribution colour
    scores (computed once, for it and the flags); a cell whose answer it changes is flagged for review, the reason
    naming both answers and the evidence. ``others``: {index in ``cells``: how many other cells' nuclei lie whole in its
    image} (:class:`wbc.reframe.CellViews`): such a cell is flagged for review, the answer being for one of them
    (``Prediction.other_cells``; since wbc 0.31.0), unless the model takes the image for a platelet crop
    (:data:`NO_WBC_CLASS`, over all its classes), whose "nuclei" are platelets.
    """
    checked_classifier(classifier)  # before wbc 0.36.0 a wrapper lacking them was answered otherwise
    ood = classifier.info.ood
    gate, more = unsure_views_of(classifier) if views is None else (0.0, 1)
    views = tta_views_of(classifier) if views is None else views
    out = run_views(classifier, cells, ("logits", "embedding") if with_embeddings or ood else ("logits",), views)
    first = out["logits"]  # kept so the unsure cells' rotations do not run the view scored here again
    framed = sorted(second or ())  # the cells shown in two framings, in the order their second framing is run
    first_second = np.zeros((0, first.shape[1]), first.dtype)  # their second framing's, in ``framed`` order
    if second:
        first_second = run_views(classifier, np.stack([second[i] for i in framed]), ("logits",), views)["logits"]
        out = {**out, "logits": weigh_second_framings(out["logits"], framed, first_second)}
    classes = tuple(classes) or tuple(classifier.label_set)
    probs, full, mass = answer_probabilities(out["logits"], classifier, exclude, classes)
    unsure = np.flatnonzero(probs.max(1) < gate) if more > views and len(probs) else np.zeros(0, int)
    if unsure.size:  # the cells one view is unsure of, answered again by the mean of ``more`` rotations
        again = {j: second[int(i)] for j, i in enumerate(unsure) if second and int(i) in second}
        identity = views == 1  # one view's logits are then those of the cells as they are: rotation 0
        row_of = {i: r for r, i in enumerate(framed)}
        known = first_second[[row_of[int(i)] for i in unsure if int(i) in row_of]] if again and identity else None
        logits = np.array(out["logits"], copy=True)
        turned = run_views(classifier, cells[unsure], ("logits",), more, first=first[unsure] if identity else None)
        logits[unsure] = average_second_framings(
            turned["logits"], again, lambda z: run_views(classifier, z, ("logits",), more, first=known)["logits"])
        out = {**out, "logits": logits}
        probs, full, mass = answer_probabilities(logits, classifier, exclude, classes)
    if refocus is not None:  # named platelet with a nucleus in view: answered by both framings (as many views)
        looked = platelet_second_framings(cells, out["logits"], classifier.classes, refocus, second or {})
        if looked:
            logits = np.array(out["logits"], copy=True)
            rotated = set(unsure.tolist())
            for n_views in {more if i in rotated else views for i in looked}:
                rows = sorted(i for i in looked if (more if i in rotated else views) == n_views)
                z = run_views(classifier, np.stack([looked[i] for i in rows]), ("logits",), n_views)["logits"]
                logits = weigh_second_framings(logits, rows, z)
            out = {**out, "logits": logits}
            probs, full, mass = answer_probabilities(logits, classifier, exclude, classes)
    from wbc.ood import flag_predictions, ood_scores

    # computed once: the evidence and the flags below read them
    scores = ood_scores(cells if ood_cells is None else ood_cells, out["embedding"], ood) if ood else {}
    network = probs.argmax(1)
    if adjust is not None:
        probs = adjust(probs, scores.get("colour"))
    preds = predictions_from_probs(probs, classifier, names)
    if adjust is not None:  # the network and the evidence disagree: a person decides
        for i in np.flatnonzero(probs.argmax(1) != network):
            preds[i].review = True
            preds[i].reasons.append(adjust.reason(classifier.classes, int(network[i]), int(probs[i].argmax())))
    if classes or exclude:  # the model takes the cell for a class left out (a smear's platelet too): a person decides
        chosen = set(classes or classifier.classes) - set(exclude)
        for p, m, row in zip(preds, mass, full, strict=True):
            other = classifier.classes[int(row.argmax())]
            if other not in chosen:
                p.review, p.outside = True, other
                # chosen: a --classes set left it out; else only ``exclude`` did (no class was chosen)
                p.reasons.append(outside_reason(other, float(row.max()), bool(classes) and other not in classes))
            elif classes and m < 0.5:
                p.review = True
                p.reasons.append(f"the chosen classes hold {m:.2f} of the model's probability")
    for at, k in (others or {}).items():  # more than one cell in view: a person decides which the answer is for
        if k and classifier.classes[int(full[at].argmax())] != NO_WBC_CLASS:
            preds[at].review, preds[at].other_cells = True, int(k)
            preds[at].reasons.append(other_cells_reason(int(k)))
    if ood:  # out-of-distribution cells get review and a reason (wbc.ood)
        flag_predictions(preds, None, None, ood, scores)
    return preds, out


def check_cell_image(rgb: np.ndarray, name: str, full: FullImage | None = None) -> None:
    """Refuse a decoded image too small to be one cell, or one that is no photo (a mask, a drawing, a blank frame:
    :func:`wbc.preprocess.not_a_photo`), naming the file. ``full``: the file, when ``rgb`` is a reduced decoding
    of it; shrinking averages away the camera noise the photo check counts, so a refusal is checked on the whole."""
    h, w = rgb.shape[:2]
    if min(h, w) < MIN_CELL_SIDE:
        raise ImageReadError(f"{name}: {w}x{h} is too small to be a single-cell image "
                             f"(minimum side {MIN_CELL_SIDE} px)")
    if (why := not_a_photo(rgb)) and (full is None or not_a_photo(full.decode())):
        raise ImageReadError(f"{name}: {why}")


def cell_too_large(exc: ImageTooLargeError) -> ImageReadError:
    """The size error reworded for single-cell tools: such an image is a scan, not one cell."""
    return ImageReadError(f"{exc}; too large to be a single-cell image (tile a whole-slide scan into fields for wbc "
                          "analyze)")


def read_cell(path: str | os.PathLike[str], size: int, reframe: bool | FramingStats = False) -> np.ndarray:
    """One single-cell image at the model's square input size, refusing images that cannot be one cell.

    Oversized images are refused from their header (:data:`MAX_CELL_PIXELS`), tiny ones after decoding.
    ``reframe``: a cell framed unlike the training crops (filling a tight crop, small in a wide field) is
    re-framed like them first (:func:`wbc.reframe.frame_cell`; a :class:`~wbc.reframe.FramingStats`: that
    framing, ``True``: the default one).
    """
    return read_cell_views(path, size, reframe, second=False)[0]


def read_cell_views(path: str | os.PathLike[str], size: int, reframe: bool | FramingStats = False,
                    second: bool = True) -> CellViews:
    """:func:`read_cell`, with the second framing of an ambiguously framed cell (:func:`prepare_cell_views`) and the
    other cells found whole in the image (``others``, when re-framing measured it)."""
    return decode_cell_views(read_bytes(path), str(path), size, reframe, second)


def decode_cell_views(data: bytes, name: str, size: int, reframe: bool | FramingStats = False,
                      second: bool = True) -> CellViews:
    """:func:`read_cell_views` of a file's bytes (``name`` for messages): `wbc classify`'s files and ``/classify``'s
    uploads take this one path. A large JPEG is decoded at a reduced size, enough for the network's input; a
    region re-framing cuts smaller than that comes from the file decoded whole (:func:`full_image`). A TIFF of
    several images is read on its first; the views' ``pages`` say how many it holds (:func:`flag_several_images`)."""
    try:
        rgb = decode_image(data, name, min_size=size, max_pixels=MAX_CELL_PIXELS)
    except ImageTooLargeError as exc:
        raise cell_too_large(exc) from None
    views = cell_views(rgb, name, size, reframe, second, full_image(data, name, rgb))
    views.pages = tiff_fields(data)
    return views


def cell_views(rgb: np.ndarray, name: str, size: int, reframe: bool | FramingStats = False, second: bool = True,
               full: FullImage | None = None) -> CellViews:
    """The views of a decoded single-cell image (``name`` for messages), refusing one that cannot be a cell
    (:func:`check_cell_image`): the one preparation of files, uploads and arrays (:func:`classify_arrays`), so an
    image is answered alike however it came. ``full``: the file ``rgb`` is a reduced decoding of."""
    check_cell_image(rgb, name, full)
    if reframe is False:
        return CellViews(resize_square(rgb, size))
    fov = field_of_view(rgb)
    _check_view_size(fov, name, full)
    return _framed_views(rgb, fov, size, reframe, second, full)


def _check_view_size(fov: tuple[np.ndarray, tuple[int, int, int, int] | None], name: str,
                     full: FullImage | None = None) -> None:
    """Refuse a picture under :data:`MIN_CELL_SIDE` once its canvas or eyepiece black is cut off (``fov``, from
    :func:`wbc.preprocess.field_of_view`), naming the file: re-framing frames what is left, so a thumbnail pasted on a
    page was answered, confidently, where the thumbnail alone is refused (before wbc 0.29.0). Sides in the file's
    pixels (``full``: ``rgb`` was a reduced decoding of it)."""
    view, box = fov
    if box is None:
        return
    k = full.scale if full is not None else 1.0
    h, w = (round(v * k) for v in view.shape[:2])
    if min(h, w) < MIN_CELL_SIDE:
        raise ImageReadError(f"{name}: the picture inside its canvas is {w}x{h}, too small to be a single-cell "
                             f"image (minimum side {MIN_CELL_SIDE} px)")


def full_image(data: bytes, name: str, decoded: np.ndarray) -> FullImage | None:
    """The file ``data`` as :class:`wbc.reframe.FullImage` when ``decoded`` is a reduced-size decoding of it (its
    header says larger), else None; the whole decoding happens only if re-framing asks for it, once.

    >>> import cv2
    >>> ok, jpg = cv2.imencode(".jpg", np.full((480, 640, 3), 200, np.uint8))
    >>> small = decode_image(jpg.tobytes(), "field.jpg", min_size=100)  # read at 1/4
    >>> f = full_image(jpg.tobytes(), "field.jpg", small)
    >>> small.shape, f.scale, f.decode().shape
    ((120, 160, 3), 4.0, (480, 640, 3))
    >>> full_image(jpg.tobytes(), "field.jpg", f.decode()) is None
    True
    """
    header = image_size(data, name)
    if header is None or max(header) <= max(decoded.shape[:2]):
        return None
    return FullImage(max(header) / max(decoded.shape[:2]),
                     functools.cache(lambda: decode_image(data, name, max_pixels=MAX_CELL_PIXELS)))


def prepare_cell(rgb: np.ndarray, size: int, reframe: bool | FramingStats = True) -> np.ndarray:
    """A decoded single-cell image as the network's uint8 input: re-framed like the training crops when it is
    framed unlike them (``reframe``, :func:`wbc.reframe.frame_cell`), resized to ``size``. The one
    preprocessing of `wbc classify`, the Python API and the HTTP API's ``/classify``."""
    return prepare_cell_views(rgb, size, reframe, second=False)[0]


def prepare_cell_views(rgb: np.ndarray, size: int, reframe: bool | FramingStats = True, second: bool = True,
                       full: FullImage | None = None) -> CellViews:
    """:func:`prepare_cell`, and (``second``, re-framing on) the cell re-framed to the training crops' nucleus
    fraction when its framing is ambiguous, else None (:func:`wbc.reframe.frame_cell_views`):
    :func:`predict_cells` averages the two. ``full``: the file ``rgb`` was decoded from at a reduced size. Anything
    but an 8-bit RGB array is refused (:func:`wbc.preprocess.check_rgb8`): float 0-1 failed inside OpenCV, and
    16-bit was answered with a confident wrong class. With them, the other cells whose nuclei the re-framing
    measurement found whole in the image (:class:`wbc.reframe.CellViews`; none measured without re-framing)."""
    check_rgb8(rgb)
    if reframe is False:
        return CellViews(resize_square(rgb, size))
    return _framed_views(rgb, field_of_view(rgb), size, reframe, second, full)


def _framed_views(rgb: np.ndarray, fov: tuple[np.ndarray, tuple[int, int, int, int] | None], size: int,
                  reframe: bool | FramingStats, second: bool, full: FullImage | None
                  ) -> CellViews:
    """:func:`prepare_cell_views` of ``rgb`` whose :func:`wbc.preprocess.field_of_view` is ``fov`` (computed once)."""
    stats = reframe if isinstance(reframe, FramingStats) else DEFAULT_STATS
    view, box = fov  # an eyepiece photo: its round field of view, the black around it background
    if box is not None:
        if full is not None:
            full = FullImage(full.scale, functools.cache(
                lambda whole=full.decode, shape=rgb.shape: scaled_view(whole(), box, shape)))
        rgb = view
    return frame_cell_views(rgb, size, stats, second, full)


@dataclass
class CellBatch:
    """One batch of :func:`iter_batches`: the files that loaded, their cells (N, S, S, 3), the files that did
    not (path, message), the second framings of ambiguously framed cells (index in ``cells`` -> cell), how many
    other cells lie whole in the images that show more than one (index in ``cells`` -> count), and how many images
    the files that hold several hold (index in ``cells`` -> count)."""

    paths: list[Path]
    cells: np.ndarray
    errors: list[tuple[str, str]]
    second: dict[int, np.ndarray] = field(default_factory=dict)
    indices: list[int] = field(default_factory=list)  # of ``paths`` in the input list (a file given twice: both)
    others: dict[int, int] = field(default_factory=dict)
    pages: dict[int, int] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)  # of ``cells``, as predictions name them (a file: its path)


def _load(path: Path, size: int, reframe: bool | FramingStats = False, second: bool = True
          ) -> CellViews | str:
    """One file's cell views, or the one-line message saying why it cannot be one: never an exception, so that one
    file a decoder fails on in a way wbc does not know (before wbc 0.32.0, Pillow's SyntaxError for a damaged PNG)
    cannot end the run and lose every other file's answer."""
    try:
        return read_cell_views(path, size, reframe, second)
    except ImageReadError as exc:
        return str(exc)
    except Exception as exc:
        return unreadable_message(str(path), exc)


def unreadable_message(name: str, exc: BaseException) -> str:
    """The one line for a file whose reading failed with an exception wbc does not expect (a decoder's own).

    >>> unreadable_message("a.png", SyntaxError("broken PNG file\\nmore"))
    'a.png: could not be read (SyntaxError: broken PNG file)'
    """
    text = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
    return f"{name}: could not be read ({exc.__class__.__name__}{': ' + text if text else ''})"


def iter_batches(
    paths: Sequence[Path], size: int, batch_size: int, workers: int, reframe: bool | FramingStats = False,
    second: bool = True,
) -> Iterator[CellBatch]:
    """Decoded, resized (``reframe``: re-framed, see :func:`read_cell`) batches in order, with the files that
    failed to load, and (``second``) the second framings :func:`prepare_cell_views` gives."""
    def load(i: int) -> CellViews | str:
        return _load(paths[i], size, reframe, second)

    for batch in _view_batches([str(p) for p in paths], load, size, batch_size, workers):
        batch.paths = [paths[i] for i in batch.indices]
        yield batch


def _view_batches(names: Sequence[str], load: Callable[[int], CellViews | str], size: int, batch_size: int,
                  workers: int) -> Iterator[CellBatch]:
    """Batches of the views ``load`` gives for each index of ``names`` (or the message why it cannot), loaded in a
    thread pool two batches ahead of the one yielded: files and decoded images (:func:`classify_arrays`) alike."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        chunks = [range(i, min(i + batch_size, len(names))) for i in range(0, len(names), batch_size)]
        pending = [pool.map(load, c) for c in chunks[:2]]
        for ci, chunk in enumerate(chunks):
            loaded = list(pending[ci])
            if ci + 2 < len(chunks):
                pending.append(pool.map(load, chunks[ci + 2]))
            ok = [(k, a) for k, a in zip(chunk, loaded, strict=True) if not isinstance(a, str)]
            errors = [(names[k], a) for k, a in zip(chunk, loaded, strict=True) if isinstance(a, str)]
            arr = np.stack([a[0] for _, a in ok]) if ok else np.zeros((0, size, size, 3), np.uint8)
            yield CellBatch([], arr, errors,
                            {i: a[1] for i, (_, a) in enumerate(ok) if a[1] is not None},
                            [k for k, _ in ok],
                            {i: a.others for i, (_, a) in enumerate(ok) if a.others},
                            {i: a.pages for i, (_, a) in enumerate(ok) if a.pages > 1},
                            [names[k] for k, _ in ok])


def load_cells(
    paths: Sequence[str | os.PathLike[str]], size: int, workers: int = 2, batch_size: int = 128,
    reframe: bool | FramingStats = False,
) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
    """All readable images as uint8 cells (N, size, size, 3), the indices into ``paths`` of those
    that loaded, and (path, message) for those that did not (never fatal). One framing per cell (the second
    framing of an ambiguously framed cell: :func:`load_cell_views`)."""
    cells, _, ok, errors = load_cell_views(paths, size, workers, batch_size, reframe, second=False)
    return cells, ok, errors


def load_cell_views(
    paths: Sequence[str | os.PathLike[str]], size: int, workers: int = 2, batch_size: int = 128,
    reframe: bool | FramingStats = False, second: bool = True,
) -> tuple[np.ndarray, dict[int, np.ndarray], list[int], list[tuple[str, str]]]:
    """:func:`load_cells` with the second framings of ambiguously framed cells ({index in the cells: cell};
    :func:`prepare_cell_views`), as `wbc classify` prepares them."""
    files = [Path(p) for p in paths]
    cells: list[np.ndarray] = []
    zoomed: dict[int, np.ndarray] = {}
    ok: list[int] = []
    errors: list[tuple[str, str]] = []
    for batch in iter_batches(files, size, batch_size, workers, reframe, second=second):
        zoomed.update({len(ok) + k: v for k, v in batch.second.items()})
        cells.append(batch.cells)
        ok += batch.indices
        errors += batch.errors
    arr = np.concatenate(cells) if cells else np.zeros((0, size, size, 3), np.uint8)
    return arr, zoomed, ok, errors


def classify_paths(
    paths: Sequence[str | os.PathLike[str]],
    classifier: Classifier,
    batch_size: int = 128,
    workers: int = 2,
    with_embeddings: bool = False,
    progress: object | None = None,
    reframe: bool = True,
    classes: str | Sequence[str] | None = None,
) -> ClassifyResult:
    """Classify image files. A file that cannot be read is recorded in ``errors``, never fatal. Each path given is
    answered, a file given twice or copied under another name once per path: `wbc classify` and ``POST /classify``
    leave such files out first (:func:`wbc.cli.classify.each_file_once`, :func:`wbc.cli.classify.without_copies`);
    ``wbc.classify_images`` names them in the result's ``copies`` and counts each image once with
    ``counts(each_image_once=True)``.

    ``progress``: an optional callable ``progress(n_done)`` for progress bars. ``reframe`` (default on):
    cells framed unlike the training crops are re-framed first (:mod:`wbc.reframe`), and an image that shows other
    nucleated cells whole beside the one answered for is flagged for review (:func:`predict_cells`'s ``others``;
    :meth:`ClassifyResult.other_cells_note` says how many). A multi-page TIFF is classified on its first image and
    flagged for review (:func:`flag_several_images`; :meth:`ClassifyResult.several_images_note` says how many).
    ``classes``: restrict the answer to a label set (``"5part"``, ``"neutrophil,lymphocyte"``, or names; see
    :func:`wbc.labels.parse_class_set`). A ``batch_size`` or ``workers`` that is no whole number (0 batch size: it
    failed in ``range()``) is a one-line :class:`wbc.errors.WbcError`.
    """
    batch_size = checked_whole(batch_size, "batch_size", 1, meaning="cells a network call takes")
    workers = checked_whole(workers, "workers", 0, meaning="threads decoding the files; 0 is taken as 1")
    allowed = parse_class_set(classes, classifier.classes)
    classifier = every_class_if_asked(classifier, classes, allowed)
    framing = framing_stats_of(classifier) if reframe else False
    batches = iter_batches([Path(p) for p in paths], classifier.info.input_size, batch_size, workers, framing)
    return _classify_batches(batches, classifier, framing, allowed, with_embeddings, progress)


_C = TypeVar("_C", bound=ClassifierLike)


def every_class_if_asked(classifier: _C, classes: str | Sequence[str] | None, allowed: Sequence[str]) -> _C:
    """``classifier`` answering among every class when ``classes`` (parsed: ``allowed``) asks for it (``"all"``),
    whatever label set :meth:`wbc.model.Classifier.with_classes` gave it, as ``/classify``'s ``classes=all`` does:
    before wbc 0.35.0 the API's "all" kept that label set. ``None``: the classifier's own label set."""
    if (classes is None or allowed or not classifier.label_set
            or not callable(with_classes := getattr(classifier, "with_classes", None))):
        return classifier
    return cast(_C, with_classes(None))


def _classify_batches(batches: Iterable[CellBatch], classifier: ClassifierLike, framing: bool | FramingStats,
                      allowed: Sequence[str], with_embeddings: bool, progress: object | None) -> ClassifyResult:
    """The answers for batches of cell views, with every flag `wbc classify` gives (second framings, the platelet
    re-framing, the cytoplasm's evidence, other cells in the image, files of several images): files
    (:func:`classify_paths`) and decoded images (:func:`classify_arrays`) take this one path."""
    checked_classifier(classifier)  # before any batch is read (the cytoplasm's evidence reads its settings too)
    preds: list[Prediction] = []
    logits: list[np.ndarray] = []
    embs: list[np.ndarray] = []
    errors: list[tuple[str, str]] = []
    indices: list[int] = []
    done = 0
    for batch in batches:
        errors += batch.errors
        indices += batch.indices
        arr = batch.cells
        if len(arr):
            batch_preds, out = predict_cells(classifier, arr, batch.names, with_embeddings,
                                             classes=allowed, second=batch.second,
                                             refocus=framing if isinstance(framing, FramingStats) else None,
                                             adjust=single_cell_evidence(arr, classifier), others=batch.others)
            flag_several_images(batch_preds, batch.pages)
            preds += batch_preds
            logits.append(out["logits"])
            if with_embeddings:
                embs.append(out["embedding"])
        done += len(arr) + len(batch.errors)
        if callable(progress):
            progress(done)
    n_cls = len(classifier.classes)
    return ClassifyResult(
        predictions=preds,
        logits=np.concatenate(logits) if logits else np.zeros((0, n_cls), np.float32),
        errors=errors,
        embeddings=np.concatenate(embs) if embs else None,
        indices=indices,
    )


#: What :func:`classify_arrays` takes as one image: a decoded array or an image file's bytes.
DecodedImage = np.ndarray | bytes | bytearray | memoryview


def classify_arrays(
    images: DecodedImage | Iterable[DecodedImage],
    classifier: Classifier,
    names: Sequence[str] | None = None,
    batch_size: int = 128,
    workers: int = 2,
    with_embeddings: bool = False,
    progress: object | None = None,
    reframe: bool = True,
    classes: str | Sequence[str] | None = None,
) -> ClassifyResult:
    """Classify single-cell images already in memory as :func:`classify_paths` classifies files: the same answers,
    review flags, reasons and out-of-distribution flags, through the same preparation (:func:`cell_views`) and
    prediction (``_classify_batches``), so an integrator with a camera frame or an upload needs no file.

    Each image is a uint8 RGB array (height x width x 3; ``cv2.imread``'s BGR needs ``cv2.cvtColor(bgr,
    cv2.COLOR_BGR2RGB)``), or an image file's bytes (decoded as its file is: any depth, EXIF orientation, colour
    profile, a TIFF's pages). A uint8 grey array (height x width, or x 1) is taken as RGB with three equal channels
    and an RGBA one is composited on white, as image files with those layouts are read, each as its batch is
    prepared (never all up front, which held a copy of each); any other array (float, 16-bit, other shapes)
    is refused in one line naming it, before any work: its scale is not known (a file's bytes say it). An array is
    answered as its lossless file (PNG) is. A JPEG file is decoded at a reduced size when it is at least twice the
    model's input (as the training cells were), so its decoded array's answers can differ from the file's (128 PBC
    validation cells: 6 differed in label or flags, confidence up to 0.27): pass its bytes to match. ``images``: one
    image or a sequence of them (a 4-D array is a stack). ``names``: how predictions (``Prediction.path``) and
    ``errors`` name each image (default ``images[i]``). An image that cannot be a cell (too small, no photo, bytes
    that are no image) is listed in ``errors`` as ``(name, message)``, as a file is. Other arguments as
    :func:`classify_paths`.
    """
    items = _decoded_images(images)
    if names is None:
        labels = [f"images[{i}]" for i in range(len(items))]
    else:
        labels = [str(n) for n in names]
        if len(labels) != len(items):
            raise WbcError(f"names: {len(labels)} given for {len(items)} images; give one name per image")
    for i, a in enumerate(items):  # every array checked before any work; converted only as it is loaded (a grey or
        if isinstance(a, np.ndarray):  # RGBA array's RGB copy: all of them at once held 150 MiB for 400 grey cells)
            _check_cell_array(a, i, labels[i] if names is not None else "")
    batch_size = checked_whole(batch_size, "batch_size", 1, meaning="cells a network call takes")
    workers = checked_whole(workers, "workers", 0, meaning="threads preparing the images; 0 is taken as 1")
    allowed = parse_class_set(classes, classifier.classes)
    classifier = every_class_if_asked(classifier, classes, allowed)
    framing = framing_stats_of(classifier) if reframe else False
    size = classifier.info.input_size

    def views(i: int) -> CellViews:
        item = items[i]
        if isinstance(item, np.ndarray):
            check_pixels(item.shape[:2], labels[i], MAX_CELL_PIXELS)  # a scan, as a file of it is
            return cell_views(_cell_array(item), labels[i], size, framing)
        return decode_cell_views(bytes(item), labels[i], size, framing)

    batches = _view_batches(labels, lambda i: _views_or_message(labels[i], lambda: views(i)), size, batch_size,
                            workers)
    return _classify_batches(batches, classifier, framing, allowed, with_embeddings, progress)


def classify_byte_sources(
    read: Callable[[int], bytes],
    names: Sequence[str],
    classifier: ClassifierLike,
    batch_size: int = 128,
    workers: int = 2,
    reframe: bool = True,
    classes: str | Sequence[str] | None = None,
) -> ClassifyResult:
    """Classify ``len(names)`` image files whose bytes ``read(i)`` gives, each read only as its batch is prepared
    (uploads spooled to disk: the HTTP API's ``/classify``, which before wbc 0.34.0 kept a predict loop of its own),
    through the same preparation and prediction as :func:`classify_arrays` given the same bytes. ``read`` may raise
    :class:`wbc.errors.WbcError` for a file it refuses: that file is listed in ``errors`` with its message, as one
    that does not decode is. Other arguments as :func:`classify_paths`."""
    labels = [str(n) for n in names]
    batch_size = checked_whole(batch_size, "batch_size", 1, meaning="cells a network call takes")
    workers = checked_whole(workers, "workers", 0, meaning="threads preparing the images; 0 is taken as 1")
    allowed = parse_class_set(classes, classifier.classes)
    classifier = every_class_if_asked(classifier, classes, allowed)
    framing = framing_stats_of(classifier) if reframe else False
    size = classifier.info.input_size
    batches = _view_batches(
        labels, lambda i: _views_or_message(labels[i], lambda: decode_cell_views(read(i), labels[i], size, framing)),
        size, batch_size, workers)
    return _classify_batches(batches, classifier, framing, allowed, False, None)


def _views_or_message(name: str, views: Callable[[], CellViews]) -> CellViews | str:
    """``views()``, or the one line saying why this image cannot be a cell: a decoder's own failure is this
    image's problem, as a file's is (:func:`_load`), never the run's."""
    try:
        return views()
    except ImageTooLargeError as exc:
        return str(cell_too_large(exc))
    except WbcError as exc:
        return str(exc)
    except Exception as exc:
        return unreadable_message(name, exc)


def _decoded_images(images: object) -> list[DecodedImage]:
    """``images`` as a list of arrays and bytes: one image (an array of 2 or 3 dimensions, bytes) becomes a list of
    one, a 4-D array a list of its images. Anything else (a path, a PIL image, None) is a one-line
    :class:`wbc.errors.WbcError` naming the item and where it goes."""
    if isinstance(images, (bytes, bytearray, memoryview)):
        return [images]
    if isinstance(images, np.ndarray):
        return list(images) if images.ndim == 4 else [images]
    if isinstance(images, (str, os.PathLike)) or not isinstance(images, Iterable):
        raise _not_an_image(images, "images")
    out = list(images)
    for i, item in enumerate(out):
        if not isinstance(item, (np.ndarray, bytes, bytearray, memoryview)):
            raise _not_an_image(item, f"images[{i}]")
    return out


def _not_an_image(value: object, where: str) -> WbcError:
    """The refusal of what is neither a decoded image nor a file's bytes, saying what to pass instead."""
    hint = ("; for image files use wbc.classify_images" if isinstance(value, (str, os.PathLike)) else
            "; a PIL image: np.asarray(img.convert('RGB'))" if hasattr(value, "convert") and hasattr(value, "mode")
            else "")
    return WbcError(f"{where}: expected a uint8 RGB image array or an image file's bytes, got "
                    f"{type(value).__name__}{hint}")


def _check_cell_array(a: np.ndarray, index: int, name: str = "") -> None:
    """Refuse, in one line naming the image by index (and ``name``) and saying how to convert it, an array that is
    no uint8 grey, RGB or RGBA image (:class:`wbc.errors.WbcError`); cheap, so every array is checked before any
    work."""
    if a.dtype == np.uint8 and (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (1, 3, 4))):
        return
    what = f"images[{index}]" + (f" ({name})" if name else "")
    how = ("convert it to 8 bits (uint8, 0-255) first, or pass the image file's bytes, which are read at any depth"
           if a.dtype != np.uint8 else "give height x width x 3 (RGB); grey (height x width) and RGBA are converted")
    raise WbcError(f"{what}: expected a uint8 RGB image array (height x width x 3), got {a.dtype} {a.shape}; {how}")


def _cell_array(a: np.ndarray) -> np.ndarray:
    """The uint8 RGB array of a decoded single-cell image that :func:`_check_cell_array` passed, converting what is
    unambiguous as files are read (grey: three equal channels; RGBA: composited on white,
    :func:`wbc.io.decode_image`); an RGB array as it is, when contiguous."""
    if a.ndim == 2 or a.shape[2] == 1:
        return np.ascontiguousarray(np.repeat(a.reshape(*a.shape[:2], 1), 3, axis=2))
    if a.shape[2] == 4:
        alpha = a[:, :, 3:4].astype(np.float32) / 255.0
        return (a[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)).round().astype(np.uint8)
    return np.ascontiguousarray(a)


# The predictions CSV is one of the output formats of wbc.formats; these names stay importable from here.
from wbc.formats import prediction_header, prediction_row, write_predictions_csv  # noqa: E402

__all__ = ["ClassifyResult", "cell_views", "classify_arrays", "classify_paths", "load_cell_views", "load_cells",
           "other_cells_note", "outside_note", "predict_cells", "prediction_header", "prediction_row", "read_cell",
           "several_images_note", "write_predictions_csv"]
