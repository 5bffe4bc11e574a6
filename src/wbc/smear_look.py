"""Whether a field can be, and looks like, a stained blood smear, measured in milliseconds before it is analysed.

Two questions, each a small pure function over an RGB array:

- is it coloured at all (:func:`field_chroma`; :func:`check_colour` refuses a grey field, which every segmenter would
  read as a field without WBCs);
- does it look like a smear (:func:`smear_look` measures a :class:`SmearLook`, :func:`not_a_smear` says why not: a
  photograph, a page, blank glass), and the warning such a field carries (:func:`not_a_smear_warning`).

:func:`wbc.analyze.analyze_image` asks both of every field within any canvas; ``benchmarks/non_smear.py`` measures the
thresholds on fields that are smears and on images that are not. Moved out of :mod:`wbc.analyze` in wbc 0.32.0 (the
names are still importable from there).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np

from wbc.errors import ImageReadError
from wbc.preprocess import field_stop_mask

#: Least stain colour (:func:`field_chroma`) for a field to be analysed: every segmenter finds WBCs by their stain's
#: colours, and in a grey field (a monochrome camera, a grey JPEG) they find none or almost none, which would read as
#: a field without WBCs. Every BCCD field (364) measures 125 and more, every TXL-PBC field (861, all splits) 87 and
#: more, 1,000 PBC cell images 103 and more; grey fields 0, tinted grey JPEGs up to 9, 30 BCCD val fields desaturated
#: to 0.1 of their colour 12 and more (the classical segmenter still finds every WBC there), at 8 % of their light 120
#: and more (each field measured within its canvas, as :func:`analyze_image` does).
MIN_FIELD_CHROMA: float = 10.0


def field_chroma(rgb: np.ndarray) -> float:
    """How coloured a field's most coloured parts are: the 99.9th percentile of max - min over the channels, after
    the white balance the segmenters apply (a tinted grey image stays grey), per 255 of the background's brightness
    (a dark field keeps its colours). A stained smear's nuclei and red cells measure far above a grey image's 0.

    >>> field = np.full((64, 64, 3), 220, np.uint8); field[20:40, 20:40] = (200, 110, 130)
    >>> round(field_chroma(field)), field_chroma(np.full((64, 64, 3), 220, np.uint8))
    (104, 0.0)
    """
    from wbc.segment.classical import grey_gains

    h, w = rgb.shape[:2]
    step = max(1, round(np.sqrt(h * w / 65_536)))  # about 256 x 256 samples: 1-2 ms
    px = rgb[::step, ::step]
    r, g, b = (px[:, :, c].astype(np.float32) * k for c, k in enumerate(grey_gains(px)))
    chroma = np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)
    background = float(np.percentile((r + g + b) / 3.0, 90)) + 1.0
    return float(np.percentile(chroma, 99.9)) / background * 255.0


def check_colour(rgb: np.ndarray, name: str = "") -> None:
    """Refuse a grey field (:data:`MIN_FIELD_CHROMA`) with a message naming the file: it cannot be analysed, and its
    empty result would be read as a field without WBCs."""
    name = name or "the image"
    if (chroma := field_chroma(rgb)) < MIN_FIELD_CHROMA:
        raise ImageReadError(
            f"{name}: a grey image (its stain colours measure {chroma:.0f}, stained smears 87 and more, "
            f"{MIN_FIELD_CHROMA:.0f} needed): WBCs are found by their stain's colours; analyse the colour original"
        )


#: Long side of the copy :func:`smear_look` measures a field on (about 256 x 192 px: a few milliseconds).
LOOK_SIDE: int = 256
#: Red-cell diameter (px) at which a field's texture is judged when its whole copy looks too textured and its red
#: cells are smaller there (:func:`smear_look`'s closer look).
LOOK_RBC: float = 40.0
#: The closer look is taken when the copy's texture is within this factor of a threshold (its measures then count).
LOOK_CLOSER: float = 1.4


@dataclass(frozen=True)
class SmearLook:
    """What a field shows of a blood smear, each a share of its pixels (outside an eyepiece's field stop), measured
    on a copy :data:`LOOK_SIDE` px long against the light of its glass (its brightest pixels).

    ``stained``: pixels with a stain's colour (max - min of the white-balanced channels over 8 % of the light);
    ``dark``: near-black pixels (no channel above 25 % of the light); ``off_stain``: of the stained pixels' colour,
    the share (weighted by how coloured) in the yellow-green-cyan-sky hues (45-210 degrees) no Romanowsky stain gives;
    ``glass``: pixels within 8 % of the glass's brightness (the glass and plasma between cells); ``smooth``: pixels
    whose 5 x 5 neighbourhood varies by under 2 % of the light (glass, plasma, the insides of cells); ``solid``: of
    the stained pixels, those inside a stained 5 px disc (cells, not the thin strokes of print or a drawing).
    ``smooth`` and ``solid`` are judged at the red cells' scale (:func:`smear_look`). :func:`not_a_smear` reads them.
    """

    stained: float
    dark: float
    off_stain: float
    glass: float
    smooth: float
    solid: float


#: Thresholds of :func:`not_a_smear`, each beyond every field wbc is tuned on with a margin (benchmarks/non_smear.py,
#: docs/smear_analysis.md "Not a smear field"): BCCD and TXL-PBC train and val fields, BCCD fields cut beside their
#: WBCs, BCCD mosaics, PBC train and val platelet images (fields without a WBC), and fields under the stain, lamp,
#: exposure, tone, noise, JPEG, blur, scale, scale-bar, eyepiece and canvas changes wbc is meant to withstand.
#: ``MIN_STAINED`` was 0.03 before wbc 0.32.0: the PBC lab's pale red cells on peach glass barely count as stained, and
#: its fields without a WBC (1.7 % and more) were called blank glass; blank glass and plain surfaces measure 0.5 % at
#: most.
MIN_STAINED: float = 0.01
MAX_DARK: float = 0.025
MAX_OFF_STAIN: float = 0.35
MIN_GLASS: float = 0.09
MIN_SMOOTH: float = 0.36
MIN_SOLID: float = 0.10


def _look_copy(rgb: np.ndarray, factor: float) -> np.ndarray:
    """``rgb`` resized by ``factor``: every n-th pixel down to twice the size first, then averaged (cheap on large
    fields), or enlarged (cubic)."""
    h, w = rgb.shape[:2]
    step = max(1, int(np.ceil(0.5 / factor - 1e-6)))
    small = rgb[::step, ::step]
    f = factor * step
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    if abs(f - 1.0) < 1e-3:
        return np.ascontiguousarray(small)
    return cv2.resize(small, size, interpolation=cv2.INTER_AREA if f < 1.0 else cv2.INTER_CUBIC)


def _inside_stop(small: np.ndarray) -> np.ndarray:
    """The pixels of ``small`` inside an eyepiece's field of view, 4 px in from its edge (all of them without one)."""
    stop = field_stop_mask(small)
    keep = np.ones(small.shape[:2], bool) if stop is None else \
        ~cv2.dilate(stop.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    return keep if keep.any() else np.ones(small.shape[:2], bool)


def _share_at(values: np.ndarray, q: float) -> int:
    """The ``q``-th percentile (0-100, lower) of uint8 ``values``, from their histogram (a fraction of np.percentile's
    time)."""
    counts = np.cumsum(np.bincount(values.reshape(-1), minlength=256))
    return int(np.searchsorted(counts, q / 100.0 * (counts[-1] - 1), side="right"))


@dataclass
class _Copy:
    """A field's copy as :func:`smear_look` reads it: its pixels inside any field stop (``keep``), the glass's light,
    each pixel's brightest channel (``top``), its white-balanced channels (``balanced``, float32) and their max - min
    (``chroma``), the stained pixels and the grey (per light) blurred by 1 px."""

    keep: np.ndarray
    light: float
    top: np.ndarray
    chroma: np.ndarray
    stained: np.ndarray
    grey: np.ndarray
    balanced: tuple[np.ndarray, ...]


def _read_copy(small: np.ndarray) -> _Copy:
    """What :func:`smear_look` reads of a copy (:class:`_Copy`): each measure's parts computed once, per channel
    (numpy's reductions over a colour axis cost several times as much)."""
    from wbc.segment.classical import grey_gains

    keep = _inside_stop(small)
    channels = cv2.split(small)
    top = cv2.max(cv2.max(channels[0], channels[1]), channels[2])
    light = float(_share_at(top[keep], 95)) + 1.0
    balanced = tuple(c.astype(np.float32) * float(k) for c, k in zip(channels, grey_gains(small), strict=True))
    chroma = cv2.max(cv2.max(*balanced[:2]), balanced[2]) - cv2.min(cv2.min(*balanced[:2]), balanced[2])
    stained = keep & (chroma > 0.08 * light)
    grey = cv2.GaussianBlur(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).astype(np.float32) / light, (0, 0), 1.0)
    return _Copy(keep, light, top, chroma, stained, grey, balanced)


def _texture(copy: _Copy) -> tuple[float, float]:
    """:attr:`SmearLook.smooth` and :attr:`SmearLook.solid` of a copy."""
    mean, sq = cv2.blur(copy.grey, (5, 5)), cv2.blur(copy.grey * copy.grey, (5, 5))
    smooth = np.count_nonzero((sq - mean * mean)[copy.keep] < 0.02**2) / max(1, int(np.count_nonzero(copy.keep)))
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    inside = cv2.morphologyEx(copy.stained.astype(np.uint8), cv2.MORPH_OPEN, disc)
    return float(smooth), np.count_nonzero(inside) / max(1, int(np.count_nonzero(copy.stained)))


def smear_look(field: np.ndarray) -> SmearLook:
    """Measure :class:`SmearLook` on ``field`` (uint8 RGB, within any canvas): a few milliseconds on a 640 x 480 field,
    about 5 % of :func:`analyze_image`'s time (benchmarks/non_smear.py).

    Texture depends on the magnification: a field that looks textured or stroked in its copy (within
    :data:`LOOK_CLOSER` of :data:`MIN_SMOOTH` or :data:`MIN_SOLID`) is looked at again with
    its red cells :data:`LOOK_RBC` px across (:func:`wbc.segment.classical.estimate_rbc_diameter`; its centre, at
    most :data:`LOOK_SIDE` px, when that is a reduction: a wide low-magnification frame, a mosaic of fields; all of it
    enlarged when smaller), and the smoother, more solid of the two counts. A field that fails a test of its light and
    colour already is not looked at again (on a photograph of many megapixels that costs 0.1-0.2 s)."""
    factor = min(1.0, LOOK_SIDE / max(field.shape[:2]))
    copy = _read_copy(_look_copy(field, factor))
    keep, stained = copy.keep, copy.stained
    n, n_stained = max(1, int(np.count_nonzero(keep))), int(np.count_nonzero(stained))
    off = 0.0
    if n_stained >= 30:
        colours = np.stack([np.clip(c[stained], 0, 255) for c in copy.balanced], axis=1).astype(np.uint8)
        hue = cv2.cvtColor(colours.reshape(-1, 1, 3), cv2.COLOR_RGB2HSV)[:, 0, 0].astype(np.float32) * 2.0
        weight = copy.chroma[stained]
        off = float(weight[(hue >= 45) & (hue < 210)].sum() / weight.sum())
    grey = np.clip(copy.grey[keep] * 255.0, 0, 255).astype(np.uint8)
    dark = np.count_nonzero(copy.top[keep] < 0.25 * copy.light)
    glass = np.count_nonzero(grey > 0.92 * _share_at(grey, 95))
    look = SmearLook(float(n_stained / n), float(dark / n), off, float(glass / n), *_texture(copy))
    if (look.smooth < LOOK_CLOSER * MIN_SMOOTH or look.solid < LOOK_CLOSER * MIN_SOLID) \
            and _not_smear_colours(look) is None and (closer := _closer(field, factor)) is not None:
        look = replace(look, smooth=max(look.smooth, closer[0]), solid=max(look.solid, closer[1]))
    return look


def _closer(field: np.ndarray, factor: float) -> tuple[float, float] | None:
    """:func:`_texture` of ``field`` with its red cells :data:`LOOK_RBC` px across (its centre, when reduced), when
    they are smaller in its copy at ``factor``; None when they are not, or not measured. ``solid`` is measured at
    most at the field's own resolution: an enlargement thickens the thin strokes of print as much as it does cells."""
    from wbc.segment.classical import estimate_rbc_diameter

    rbc = estimate_rbc_diameter(field)
    if rbc is None or rbc * factor >= LOOK_RBC:
        return None

    def centre(f: float) -> tuple[float, float]:
        h, w = field.shape[:2]
        side = round(LOOK_SIDE / f)
        y0, x0 = max(0, (h - side) // 2), max(0, (w - side) // 2)
        return _texture(_read_copy(_look_copy(field[y0 : y0 + side, x0 : x0 + side], f)))

    f = LOOK_RBC / rbc
    smooth, solid = centre(f)
    return (smooth, solid) if f <= 1.0 else (smooth, centre(1.0)[1])


def not_a_smear(field: np.ndarray, look: SmearLook | None = None) -> str | None:
    """Why ``field`` does not look like a blood-smear field (:func:`smear_look`, ``look`` when measured), in words,
    or None when it does. Every field wbc is tuned on passes (benchmarks/non_smear.py)."""
    look = look or smear_look(field)
    if why := _not_smear_colours(look):
        return why
    if look.smooth < MIN_SMOOTH:
        return f"it is textured all over (only {look.smooth:.0%} of it is smooth, as glass and cells are)"
    if look.solid < MIN_SOLID:
        return "only thin lines in it are stained, as in print or a drawing, not cells"
    return None


def _not_smear_colours(look: SmearLook) -> str | None:
    """:func:`not_a_smear`'s tests of a field's light and colour (those that need no closer look)."""
    if look.stained < MIN_STAINED:
        return f"nothing in it is stained ({look.stained:.1%} coloured), as on blank glass or a plain surface"
    if look.dark > MAX_DARK:
        return f"{look.dark:.0%} of it is near black, which a bright-field smear never is"
    if look.off_stain > MAX_OFF_STAIN:
        return f"{look.off_stain:.0%} of its colour is yellow, green or sky blue, which no blood stain gives"
    if look.glass < MIN_GLASS:
        return f"it shows no glass between cells (only {look.glass:.0%} of it is near its brightest)"
    return None


#: How the warning of a field that does not look like a blood smear begins (:func:`not_a_smear_warning`): what the
#: command line looks for to name those fields.
NOT_A_SMEAR_WARNING = "does not look like a blood-smear field"
#: The review reason of each cell of such a field.
NOT_A_SMEAR_REASON = "its field does not look like a blood smear"


def not_a_smear_warning(reason: str, n_cells: int, classified: bool = True) -> str:
    """The warning of a field that does not look like a blood smear, for ``reason`` (:func:`not_a_smear`) and the
    ``n_cells`` found in it (``classified`` False: outlined only, so none is flagged).

    >>> not_a_smear_warning("it is textured all over", 0).split("; ")
    ['does not look like a blood-smear field: it is textured all over', \
'check the image: finding no WBCs in it says nothing about a smear']
    >>> not_a_smear_warning("it is textured all over", 2).split("; ")[1]
    'its 2 cells are flagged for review: count them only once a person has confirmed they are WBCs'
    """
    if not n_cells:
        return f"{NOT_A_SMEAR_WARNING}: {reason}; check the image: finding no WBCs in it says nothing about a smear"
    if not classified:
        return f"{NOT_A_SMEAR_WARNING}: {reason}; check the image: the cells found in it may be no WBCs"
    cells = "its 1 cell is" if n_cells == 1 else f"its {n_cells} cells are"
    them = "it" if n_cells == 1 else "them"
    its = "it is a WBC" if n_cells == 1 else "they are WBCs"
    return (f"{NOT_A_SMEAR_WARNING}: {reason}; {cells} flagged for review: count {them} only once a person has "
            f"confirmed {its}")
