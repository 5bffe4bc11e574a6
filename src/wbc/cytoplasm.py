"""What a WBC's cytoplasm colour says between lymphocyte and erythroblast, measured against the red cells around it.

An erythroblast's cytoplasm holds haemoglobin and absorbs green as the red cells do; a lymphocyte's is basophilic and
absorbs red (:func:`wbc.stain.cytoplasm_eosin`). Another lab's lymphocyte, blurred to a dense violet disc, looks to the
network like one of PBC's erythroblasts, but its cytoplasm still says which it is: the field is its own colour
standard. `wbc analyze` weighs every smear cell so (:func:`cytoplasm_evidence`); `wbc classify` a single-cell image
whose colours are unlike the training images' (:func:`single_cell_evidence`). The odds come from the training cells'
measures, fitted into the model (``colour_reference["cytoplasm_eosin"]``, ``scripts/fit_cytoplasm_colours.py``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from wbc.protocols import ClassifierLike, SegmenterLike
from wbc.types import Cell

#: The two classes a WBC's cytoplasm tells apart where the network may not: an erythroblast's holds haemoglobin and
#: absorbs green as the red cells do, a lymphocyte's is basophilic and absorbs red. Another lab's lymphocytes, blurred
#: to a dense violet disc with no visible cytoplasm, look to the network like PBC's erythroblasts.
HAEMOGLOBIN_PAIR: tuple[str, str] = ("lymphocyte", "erythroblast")

#: Each WBC's box is widened by this fraction of its side on every side before the field's red cells are
#: measured, so no cytoplasm is taken for a red cell.
WBC_MARGIN: float = 0.15


@dataclass(frozen=True)
class Evidence:
    """The cytoplasm's say between the two classes of ``pair`` (class indices), as :func:`wbc.classify.predict_cells`'
    ``adjust``: ``odds_of`` gives {row: odds of the first class against the second} from the answer's probabilities
    (N, C) and the cells' out-of-distribution colour scores (:func:`wbc.ood.ood_scores`, which `predict_cells` computes
    once for this and its flags; None: none), and :func:`share_pair` applies
    them; ``what`` names it in the review reason of a cell whose answer it changes."""

    pair: tuple[int, int]
    odds_of: Callable[[np.ndarray, np.ndarray | None], dict[int, float]]
    what: str = "its cytoplasm's colour against the red cells"

    def __call__(self, probs: np.ndarray, colour: np.ndarray | None = None) -> np.ndarray:
        odds = self.odds_of(probs, colour)
        return share_pair(probs, self.pair, odds) if odds else probs

    def reason(self, classes: Sequence[str], network: int, answer: int) -> str:
        """The review reason of a cell whose answer this evidence changed from class ``network`` to ``answer``. The
        evidence weighs only the ``pair``: when the share it takes from the network's answer leaves a third class
        on top, the reason says so rather than that the cytoplasm named that class.

        >>> e = Evidence((0, 2), lambda probs, colour: {})
        >>> e.reason(["lymphocyte", "neutrophil", "erythroblast"], 0, 2)
        "lymphocyte by the network, erythroblast by its cytoplasm's colour against the red cells"
        >>> e.reason(["lymphocyte", "neutrophil", "erythroblast"], 0, 1).split(" red cells ")[1]
        'weighs erythroblast over lymphocyte, leaving neutrophil'
        """
        if answer in self.pair:
            return f"{classes[network]} by the network, {classes[answer]} by {self.what}"
        other = self.pair[1] if network == self.pair[0] else self.pair[0]
        return (f"{classes[network]} by the network; {self.what} weighs {classes[other]} over {classes[network]}, "
                f"leaving {classes[answer]}")


def outside_cells(shape: tuple[int, ...], cells: list[Cell], margin: float = WBC_MARGIN) -> np.ndarray:
    """Boolean mask of the field outside every WBC's (widened) box: its red cells and glass."""
    h, w = shape[:2]
    keep = np.ones((h, w), bool)
    for c in cells:
        x0, y0, x1, y1 = c.box
        dx, dy = int(margin * (x1 - x0)), int(margin * (y1 - y0))
        keep[max(0, y0 - dy) : min(h, y1 + dy), max(0, x0 - dx) : min(w, x1 + dx)] = False
    return keep


def field_colours(rgb: np.ndarray, cells: list[Cell], step: int | None = None) -> dict[str, list[float]] | None:
    """The field's glass and red-cell colours (:func:`wbc.stain.red_cell_colours`) outside ``cells``, on every
    ``step``-th pixel row and column (default: every other in a field of 256 px or more, the same colours 4x faster;
    1: every pixel); None with too few red cells."""
    from wbc.stain import red_cell_colours

    step = step or (2 if min(rgb.shape[:2]) >= 256 else 1)
    return red_cell_colours(rgb[::step, ::step], outside_cells(rgb.shape, cells)[::step, ::step])


def inside_field(rgb: np.ndarray, cell: Cell) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The part of ``cell``'s box inside the field, and its cell and nucleus masks cut to match: a segmenter may give
    a box reaching past the field's edge (:class:`wbc.types.Cell` does not forbid it; :func:`wbc.crops.crop_cells`
    mirrors the field there), whose box-sized masks are larger than the pixels the field has there.

    >>> m = np.ones((4, 4), bool)
    >>> [a.shape[:2] for a in inside_field(np.zeros((3, 5, 3), np.uint8), Cell(0, (3, -1, 7, 3), m, m))]
    [(3, 2), (3, 2), (3, 2)]
    """
    h, w = rgb.shape[:2]
    x0, y0, x1, y1 = cell.box
    cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    cut = np.s_[cy0 - y0 : max(cy0, cy1) - y0, cx0 - x0 : max(cx0, cx1) - x0]
    return rgb[cy0:cy1, cx0:cx1], cell.cell_mask[cut], cell.nucleus_mask[cut]


def share_pair(probs: np.ndarray, pair: tuple[int, int], odds: dict[int, float]) -> np.ndarray:
    """``probs`` (N, C) with, in each row of ``odds`` ({row: odds of the first class against the second}) whose
    answer is one of the ``pair``'s classes, their summed probability shared again in proportion to their
    probabilities times those odds; every other probability as it was.

    >>> share_pair(np.array([[0.1, 0.6, 0.3], [0.1, 0.6, 0.3]]), (2, 1), {0: 4.0})[:, 1:].round(2).tolist()
    [[0.3, 0.6], [0.6, 0.3]]
    """
    out = np.array(probs, copy=True)
    a, b = pair
    for row, factor in odds.items():
        if out[row].argmax() not in pair:
            continue
        wa, wb = out[row, a] * factor, out[row, b]
        if wa + wb > 0:
            total = out[row, a] + out[row, b]
            out[row, a], out[row, b] = total * wa / (wa + wb), total * wb / (wa + wb)
    return out


#: A measure further than this many standard deviations from both classes' training means describes neither class (a
#: field whose red cells barely absorb green more than red, dividing by almost nothing; a stain turned out of range):
#: it is no evidence between them. PBC validation cells with their hue turned 30 degrees measured 12-15 and lost
#: two lymphocytes to erythroblast at odds of 1e-13 without it; no answer on BCCD's smears or cells changes with it.
#: At 3 it cost a BCCD train smear lymphocyte measured at -1.17, bluer than most lymphocytes, not unlike them.
PLAUSIBLE_SD: float = 5.0


def pair_odds(value: float, first: Sequence[float], second: Sequence[float]) -> float | None:
    """:func:`wbc.stain.eosin_odds` of a cytoplasm measure between two classes (each ``[mean, sd]``), or None when the
    value lies beyond :data:`PLAUSIBLE_SD` of both.

    >>> lymphocyte, erythroblast = [0.05, 0.39], [0.69, 0.42]
    >>> round(pair_odds(-0.2, lymphocyte, erythroblast), 1)  # a blue cytoplasm: a lymphocyte's
    8.3
    >>> pair_odds(12.0, lymphocyte, erythroblast) is None  # neither class's: a red-cell reference too faint
    True
    """
    from wbc.stain import eosin_odds

    if all(abs(value - mean) > PLAUSIBLE_SD * sd for mean, sd in (first, second)):
        return None
    return eosin_odds(value, first, second)


def pair_statistics(classifier: ClassifierLike) -> tuple[tuple[int, int], Sequence[float], Sequence[float]] | None:
    """The :data:`HAEMOGLOBIN_PAIR`'s class indices and their training cells' ``[mean, sd]`` of the cytoplasm
    measure (the model's ``colour_reference["cytoplasm_eosin"]``); None for a model without them.

    >>> from types import SimpleNamespace as NS
    >>> fitted = {"lymphocyte": [0.05, 0.39], "erythroblast": [0.69, 0.42]}
    >>> classes = ["erythroblast", "lymphocyte"]
    >>> pair_statistics(NS(classes=classes, info=NS(colour_reference={"cytoplasm_eosin": fitted})))
    ((1, 0), [0.05, 0.39], [0.69, 0.42])
    >>> pair_statistics(NS(classes=classes, info=NS(colour_reference={}))) is None
    True
    """
    info = getattr(classifier, "info", None)
    fitted = (getattr(info, "colour_reference", None) or {}).get("cytoplasm_eosin") or {}
    first, second = HAEMOGLOBIN_PAIR
    if not {first, second} <= set(fitted) or not {first, second} <= set(classifier.classes):
        return None
    return (classifier.classes.index(first), classifier.classes.index(second)), fitted[first], fitted[second]


def cytoplasm_evidence(
    rgb: np.ndarray, cells: list[Cell], colours: dict[str, list[float]] | None, classifier: ClassifierLike
) -> Evidence | None:
    """What each cell's cytoplasm says between the two classes of :data:`HAEMOGLOBIN_PAIR`, as an ``adjust`` for
    :func:`wbc.classify.predict_cells`: for a cell answered one of them, their summed probability is shared again
    by the odds its cytoplasm's colour gives (:func:`wbc.stain.cytoplasm_eosin` against the field's red cells
    ``colours``, :func:`pair_odds` under the training cells' statistics, :func:`pair_statistics`). None
    when the model has no such statistics, the field no red-cell colours, or no cell a measurable cytoplasm. Chosen
    on validation (docs/smear_analysis.md, "The cytoplasm's colour").
    """
    from wbc.stain import cytoplasm_eosin

    stats = pair_statistics(classifier)
    if colours is None or stats is None:
        return None
    pair, first, second = stats
    odds: dict[int, float] = {}
    for i, c in enumerate(cells):
        view, cell_mask, nucleus_mask = inside_field(rgb, c)
        value = cytoplasm_eosin(view, cell_mask, nucleus_mask, colours)
        if value is not None and (o := pair_odds(value, first, second)) is not None:
            odds[i] = o
    if not odds:
        return None
    return Evidence(pair, lambda probs, colour: odds)


def central_cytoplasm_eosin(rgb: np.ndarray, segmenter: SegmenterLike) -> float | None:
    """:func:`wbc.stain.cytoplasm_eosin` of the WBC nearest the centre of an image analysed as a smear field (a
    training crop, a single-cell image), against the image's red cells measured as the calibration measures them
    (:func:`field_colours`); None when no WBC, red cells or cytoplasm is found. What the model's
    ``colour_reference["cytoplasm_eosin"]`` is fitted from (``scripts/fit_cytoplasm_colours.py``)."""
    from wbc.stain import cytoplasm_eosin

    cells = segmenter.segment(rgb)
    if not cells:
        return None
    h, w = rgb.shape[:2]
    c = min(cells, key=lambda k: ((k.box[0] + k.box[2]) / 2 - w / 2) ** 2 + ((k.box[1] + k.box[3]) / 2 - h / 2) ** 2)
    colours = field_colours(rgb, cells)
    if colours is None:
        return None
    return cytoplasm_eosin(*inside_field(rgb, c), colours)


@functools.cache
def _single_cell_segmenter() -> SegmenterLike:
    """The classical segmenter (no model file to load), made once per process."""
    from wbc.segment import get_segmenter

    return get_segmenter("classical")


def single_cell_evidence(cells: np.ndarray, classifier: ClassifierLike) -> Evidence | None:
    """:func:`cytoplasm_evidence` for single-cell images (the network's uint8 views ``cells``), as an ``adjust`` for
    :func:`wbc.classify.predict_cells`: a cell answered lymphocyte or erythroblast (the other of the two still
    possible) whose colours are unlike the training images' (the model's out-of-distribution colour check) is
    analysed as a smear field (:func:`central_cytoplasm_eosin`, classical segmenter), and the two classes' summed
    probability shared again by what its cytoplasm says. Nothing changes for a cell without red cells around it (a
    tight crop), a model without the statistics or an out-of-distribution reference, or a classifier with colour
    calibration turned off (`--no-colour-calibration`, :meth:`wbc.model.Classifier.with_colour_calibration`).

    Only unfamiliar colours are measured: a measure costs 20-35 ms, and on the training lab's own cells the network
    needs no second opinion (of PBC's validation cells answered one of the two, every one measured: 3 of 357 answers
    move, 2 of them right). Chosen on validation (docs/generalisation.md, "A lymphocyte named erythroblast"): BCCD's
    277 train/val cells shown as whole fields, eight classes, 0.6968 -> 0.7220; PBC validation 0.9867 unchanged.

    >>> from types import SimpleNamespace as NS
    >>> fitted = {"lymphocyte": [0.05, 0.39], "erythroblast": [0.69, 0.42]}
    >>> clf = NS(classes=["erythroblast", "lymphocyte"], info=NS(colour_reference={"cytoplasm_eosin": fitted}, ood={}))
    >>> single_cell_evidence(np.zeros((1, 64, 64, 3), np.uint8), clf) is None  # no out-of-distribution reference
    True
    """
    stats = pair_statistics(classifier)
    ood = getattr(getattr(classifier, "info", None), "ood", None)
    if stats is None or not ood or not len(cells) or not classifier.colour_calibration:
        return None
    pair, first, second = stats

    def odds_of(probs: np.ndarray, colour: np.ndarray | None) -> dict[int, float]:
        if colour is None:  # no colour check made: nothing is measured
            return {}
        answer = probs.argmax(1)
        unfamiliar = [i for i in range(len(probs))
                      if answer[i] in pair and probs[i, list(pair)].min() > 0 and colour[i] > 1.0]
        values = {i: central_cytoplasm_eosin(cells[i], _single_cell_segmenter()) for i in unfamiliar}
        odds = {i: pair_odds(v, first, second) for i, v in values.items() if v is not None}
        return {i: o for i, o in odds.items() if o is not None}

    return Evidence(pair, odds_of)
