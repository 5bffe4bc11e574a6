"""Stain normalisation: each method moves an image's colour statistics onto the target's."""

from __future__ import annotations

import json

import numpy as np
import pytest

from wbc.stain import (
    METHODS,
    channel_quantiles,
    fit_stain_target,
    lab_stats,
    macenko,
    macenko_stains,
    match_histograms,
    normalise,
    normalise_batch,
    red_cell_colours,
    reinhard,
)

# two stain optical-density directions (unit vectors): a blue-violet nuclear stain and a pink eosin
NUCLEAR = np.array([0.65, 0.70, 0.29])
EOSIN = np.array([0.07, 0.99, 0.11])


def stained_image(stains: np.ndarray, seed: int = 0, size: int = 48) -> np.ndarray:
    """A synthetic smear patch: background, a 'nucleus' disc and eosin-stained blobs, by Beer-Lambert."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    c1 = 1.2 * (((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size / 5) ** 2)
    c2 = 0.6 * (np.sin(xx / 3.0) > 0.3) * (yy > size * 0.6)
    conc = np.stack([c1 + rng.uniform(0, 0.05, c1.shape), c2 + rng.uniform(0, 0.05, c1.shape)], -1)
    stains = stains / np.linalg.norm(stains, axis=1, keepdims=True)
    od = conc @ stains
    return np.clip(256 * np.exp(-od) - 1, 0, 255).astype(np.uint8)


def tinted(rgb: np.ndarray, gain: tuple[float, float, float]) -> np.ndarray:
    return np.clip(rgb.astype(np.float32) * np.asarray(gain, np.float32), 0, 255).astype(np.uint8)


def test_reinhard_moves_lab_statistics_to_the_target() -> None:
    ref = stained_image(np.stack([NUCLEAR, EOSIN]), seed=1)
    src = tinted(stained_image(np.stack([NUCLEAR, EOSIN]), seed=2), (0.8, 0.95, 1.1))
    tm, ts = lab_stats(ref)
    before = np.abs(lab_stats(src)[0] - tm).max()
    out = reinhard(src, tm, ts)
    om, os_ = lab_stats(out)
    assert np.abs(om - tm).max() < 0.2 * before
    assert np.allclose(os_, ts, rtol=0.15, atol=0.5)


def test_reinhard_with_fixed_source_stats_is_one_transform_for_all_images() -> None:
    a = stained_image(np.stack([NUCLEAR, EOSIN]), seed=3)
    src_stats = lab_stats(a)
    spec = {"method": "reinhard", "target": {"mean": [70.0, 10.0, -5.0], "std": [10.0, 5.0, 5.0]},
            "source": {"mean": src_stats[0].tolist(), "std": src_stats[1].tolist()}}
    # the same pixel value maps to the same output whatever else is in the image
    px = a[:1, :1]
    assert np.array_equal(normalise(px, spec)[0, 0], normalise(a, spec)[0, 0])


def test_histogram_matching_gives_the_target_quantiles() -> None:
    ref = stained_image(np.stack([NUCLEAR, EOSIN]), seed=4)
    src = tinted(stained_image(np.stack([NUCLEAR, EOSIN]), seed=5), (1.1, 0.85, 0.9))
    tq = channel_quantiles([ref])
    out = match_histograms(src, tq)
    err_before = np.abs(channel_quantiles([src]) - tq)[:, 5:-5].mean()
    err_after = np.abs(channel_quantiles([out]) - tq)[:, 5:-5].mean()
    assert err_after < 0.3 * err_before
    # monotone: brighter input never becomes darker output, per channel
    order = np.argsort(src[..., 0].ravel())
    assert np.all(np.diff(out[..., 0].ravel()[order].astype(int)) >= 0)


def test_macenko_recovers_the_stain_vectors() -> None:
    img = stained_image(np.stack([NUCLEAR, EOSIN]), seed=6, size=64)
    stains, max_c, _bg = macenko_stains(img)
    truth = np.stack([NUCLEAR, EOSIN]) / np.linalg.norm(np.stack([NUCLEAR, EOSIN]), axis=1, keepdims=True)
    cos = (stains * truth).sum(1)
    assert cos.min() > 0.98 and np.all(max_c > 0)


def test_macenko_maps_one_stain_pair_onto_another() -> None:
    other = np.stack([[0.45, 0.80, 0.40], [0.15, 0.90, 0.40]])
    target_img = stained_image(np.stack([NUCLEAR, EOSIN]), seed=7, size=64)
    src_img = stained_image(other, seed=7, size=64)
    t_stains, t_max, t_bg = macenko_stains(target_img)
    out = macenko(src_img, t_stains, t_max, t_bg)
    before = np.abs(src_img.astype(int) - target_img).mean()
    after = np.abs(out.astype(int) - target_img).mean()
    assert after < 0.5 * before


def test_unstained_image_is_left_alone_by_macenko() -> None:
    blank = np.full((16, 16, 3), 250, np.uint8)
    assert np.array_equal(macenko(blank, [NUCLEAR, EOSIN], [1.0, 1.0]), blank)


@pytest.mark.parametrize("method", METHODS)
def test_fit_and_apply_by_name_round_trips_through_json(method: str) -> None:
    refs = [stained_image(np.stack([NUCLEAR, EOSIN]), seed=s) for s in range(3)]
    spec = json.loads(json.dumps(fit_stain_target(refs, method)))
    batch = np.stack([tinted(r, (0.9, 1.0, 1.1)) for r in refs])
    out = normalise_batch(batch, spec)
    assert out.shape == batch.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - np.stack(refs)).mean() < np.abs(batch.astype(int) - np.stack(refs)).mean()


def test_bad_input_gives_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown stain normalisation"):
        normalise(np.zeros((4, 4, 3), np.uint8), {"method": "vahadane"})
    with pytest.raises(ValueError, match="RGB"):
        reinhard(np.zeros((4, 4), np.uint8), [50, 0, 0], [1, 1, 1])
    batch = np.zeros((2, 4, 4, 3), np.uint8)
    assert normalise_batch(batch, None) is batch


def test_a_grey_image_keeps_its_grey_under_reinhard() -> None:
    """A grey image's a and b spreads are rounding noise: stretched 850-2,700x, they painted grey cells at random."""
    grey = stained_image(np.stack([NUCLEAR, EOSIN]), seed=8).mean(2, keepdims=True).repeat(3, 2).astype(np.uint8)
    m, s = lab_stats(stained_image(np.stack([NUCLEAR, EOSIN]), seed=9))
    out_std = lab_stats(reinhard(grey, m, s, *lab_stats(grey)))[1]
    assert out_std[1:].max() < 0.3 * s[1:].min()  # a and b shifted to the target's tint, not stretched to its spread


def test_a_field_clipped_in_a_channel_is_not_calibrated() -> None:
    """Over-exposed, the glass and red cells both read 255 in one channel: its red-cell density reads near 0, and
    scaling it up to the training lab's painted every cell."""
    field = np.full((100, 100, 3), (250, 238, 255), np.uint8)
    field[20:80, 20:80] = (215, 130, 254)
    assert red_cell_colours(field) is None
    field[20:80, 20:80] = (215, 130, 235)
    assert red_cell_colours(field) is not None


def test_macenko_maps_a_lab_onto_its_own_reference_whichever_order_its_stains_come_in() -> None:
    """Two fits of one lab can name its stains in either order (May-Grunwald-Giemsa's two dyes absorb red alike),
    and images of one lab differ in their glass: the mapping onto the lab's own reference stays near identity."""
    tiles = [tinted(stained_image(np.stack([NUCLEAR, EOSIN]), seed=s, size=64), (1.0, 1.0, g))
             for s, g in zip(range(10, 16), (1.0, 0.9, 0.8, 1.0, 0.9, 0.8), strict=True)]
    reference = fit_stain_target(tiles[:3], "macenko")["target"]
    source = fit_stain_target(tiles[3:], "macenko")["target"]
    flipped = {"stains": source["stains"][::-1], "max": source["max"][::-1], "background": source["background"]}
    outs = [normalise_batch(np.stack(tiles[3:]), {"method": "macenko", "target": reference, "source": src})
            for src in (source, flipped)]
    assert np.array_equal(outs[0], outs[1])
    assert np.abs(outs[0].astype(int) - np.stack(tiles[3:])).mean() < 8  # the glass moved to the lab's median
