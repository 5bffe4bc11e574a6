"""The field's scale: how many pixels a red cell and a WBC span, from the optics or from the image.

Every segmenter works at a fixed scale, so each needs it. ``--pixel-size UM`` (micrometres per pixel,
known from the lab's objective and camera) gives it exactly; otherwise the red-cell diameter is measured
from the image (:func:`wbc.segment.classical.estimate_rbc_diameter`, a granulometry of the red-cell mask).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wbc.errors import ConfigError

#: A normocyte's diameter in micrometres (the textbook 7-8 um).
RBC_UM: float = 7.5
#: WBC box side / measured red-cell diameter. TXL-PBC train+val, 30 fields per source (median of each
#: field's WBC box sides over the estimate): BCCD 2.39, BCD 2.57, PBC 2.05 (5-95 %: 1.4-3.9).
WBC_PER_RBC: float = 2.3
#: WBC box side in micrometres (about 2x a red cell's box: neutrophils 12-15 um, plus the box margin).
WBC_BOX_UM: float = 14.0
#: A WBC's box side as a fraction of the field's shorter side in a typical field: TXL-PBC, median per
#: source, BCCD 0.45, BCD 0.37, PBC 0.37; wide 40x camera fields are lower (~0.1). Used when nothing can be
#: measured, and by the detector to temper a red-cell estimate (:func:`wbc.segment.detector.first_guess`).
FIELD_WBC_FRACTION: float = 0.35


@dataclass(frozen=True)
class FieldScale:
    """Red-cell diameter and expected WBC box side in pixels, and where they came from."""

    rbc_px: float
    wbc_px: float
    source: str  # "pixel_size", "red_cells" or "fallback"


def check_pixel_size(pixel_size: float | None) -> float | None:
    """``pixel_size`` validated (micrometres per pixel, 0.01-10), or None. A value that is no number (a string read
    from a config file or the environment, a bool) is a one-line :class:`~wbc.errors.ConfigError`, as is one out of
    range, naming the keyword (the flag's name without dashes, as the other Python errors do): before wbc 0.33.0
    ``"0.1"`` failed inside NumPy with a TypeError, and the message named ``--pixel-size`` to Python callers.

    >>> check_pixel_size(0.25), check_pixel_size(None)
    (0.25, None)
    >>> check_pixel_size("0.1")
    Traceback (most recent call last):
    wbc.errors.ConfigError: pixel_size '0.1': expected a number of micrometres per pixel between 0.01 and 10
    """
    if pixel_size is None:
        return None
    if isinstance(pixel_size, bool) or not isinstance(pixel_size, (int, float, np.integer, np.floating)) or not (
            np.isfinite(pixel_size) and 0.01 <= pixel_size <= 10.0):
        shown = repr(pixel_size) if isinstance(pixel_size, str) else pixel_size  # '0.1' is no 0.1
        raise ConfigError(f"pixel_size {shown}: expected a number of micrometres per pixel between 0.01 and 10")
    return float(pixel_size)


def estimate_field_scale(rgb: np.ndarray, pixel_size: float | None = None) -> FieldScale:
    """The field's scale: from ``pixel_size`` (um/px) when given, else from the measured red-cell size."""
    pixel_size = check_pixel_size(pixel_size)
    if pixel_size is not None:
        return FieldScale(RBC_UM / pixel_size, WBC_BOX_UM / pixel_size, "pixel_size")
    from wbc.segment.classical import estimate_rbc_diameter

    rbc = estimate_rbc_diameter(rgb)
    if rbc is None:
        wbc = FIELD_WBC_FRACTION * float(min(rgb.shape[:2]))
        return FieldScale(wbc / WBC_PER_RBC, wbc, "fallback")
    return FieldScale(float(rbc), float(rbc) * WBC_PER_RBC, "red_cells")


__all__ = ["FIELD_WBC_FRACTION", "FieldScale", "check_pixel_size", "estimate_field_scale"]
