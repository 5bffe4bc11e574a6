"""Library calls that replaced hand-written code give the numbers the hand-written code gave (issue 12),
and the hand-written code that stayed agrees with the library it could have been."""

from __future__ import annotations

import io

import numpy as np
import pytest

from conftest import needs_torch


def _old_softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits.astype(np.float64) / max(temperature, 1e-6)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("temperature", [1.0, 0.55, 2.0])
def test_scipy_softmax_is_bit_identical(temperature: float) -> None:
    from wbc.model import softmax

    x = np.random.default_rng(0).normal(0, 10, (2000, 8)).astype(np.float32)
    assert np.array_equal(softmax(x, temperature), _old_softmax(x, temperature))


def test_clopper_pearson_by_hand_equals_binomtest() -> None:
    from scipy.stats import binomtest

    from wbc.counts import clopper_pearson

    for n in (1, 2, 7, 50, 100):
        for k in range(n + 1):
            ci = binomtest(k, n).proportion_ci(0.95, method="exact")
            assert clopper_pearson(k, n) == pytest.approx((ci.low, ci.high), abs=1e-11)


@pytest.mark.parametrize(("w", "h", "progressive"), [(9, 7, False), (360, 363, False), (640, 480, True), (1, 1, False)])
def test_jpeg_header_by_hand_equals_pillow(w: int, h: int, progressive: bool) -> None:
    from PIL import Image

    from wbc.io import _jpeg_size, image_size

    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x010F] = "wbc"  # an APP1 segment before the frame header
    Image.new("RGB", (w, h), (200, 100, 50)).save(buf, "JPEG", progressive=progressive, exif=exif.tobytes())
    data = buf.getvalue()
    with Image.open(io.BytesIO(data)) as im:
        want = (im.size[1], im.size[0])
    assert _jpeg_size(data) == image_size(data) == want == (h, w)


def test_adapt_class_weights_and_balanced_accuracy_equal_the_old_formulas() -> None:
    """The old formulas against sklearn's, and `wbc adapt`'s head refit (wbc.adapt.adapt_embeddings) using them: a
    rare class weighed as much as a common one, and ``lam`` picked by balanced accuracy, not plain accuracy."""
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.utils.class_weight import compute_class_weight

    from wbc.adapt import adapt_embeddings

    # 100 common and 10 rare overlapping cells; the original head calls every cell common
    cells = np.random.default_rng(0)
    classes, yc = ["common", "rare"], np.repeat([0, 1], [100, 10])
    emb = np.where(yc[:, None] == 0, -0.7, 0.7) + cells.normal(0, 1.0, (110, 2))
    w, b, res = adapt_embeddings(emb[None], [classes[i] for i in yc], classes, np.zeros((2, 2)), np.array([2.0, -2.0]),
                                 lambdas=(0.001, 10.0))
    # plain accuracy would keep the original head (lam 10: every cell common, 91 % right, no rare cell found)
    assert res.lam == 0.001
    pred = (emb @ w.T + b).argmax(1)
    assert (pred[yc == 1] == 1).mean() >= 0.8  # weighted 0.9; unweighted 0.4
    rng = np.random.default_rng(1)
    y = np.repeat([0, 2, 3, 5], [3, 20, 7, 1])
    present, counts = np.unique(y, return_counts=True)
    old = {c: len(y) / (len(present) * m) for c, m in zip(present, counts, strict=True)}
    new = compute_class_weight("balanced", classes=present, y=y)[np.searchsorted(present, y)]
    assert np.array_equal(new, np.array([old[c] for c in y]))
    pred = np.where(rng.random(len(y)) < 0.7, y, rng.integers(0, 6, len(y)))  # also classes absent from y
    old_bal = float(np.mean([(pred[y == c] == c).mean() for c in present]))
    with pytest.warns(UserWarning, match="not in y_true"):  # sklearn warns about those; the value agrees
        assert balanced_accuracy_score(y, pred) == pytest.approx(old_bal, abs=1e-15)


@needs_torch
def test_training_class_weights_equal_the_old_formula() -> None:
    from wbc.train.data import class_weights

    labels = np.repeat([0, 1, 3, 4], [722, 1120, 922, 5])
    counts = np.bincount(labels, minlength=6).astype(np.float64)
    old = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / 6, 0.0)
    old = (old / old[counts > 0].mean()).astype(np.float32)
    got = class_weights(labels, 6).numpy()
    np.testing.assert_allclose(got, old, rtol=1e-6)
    assert got[2] == got[5] == 0.0


def test_sklearn_pca_gives_the_old_feature_distances() -> None:
    from wbc.ood import _l2, fit_pca, pca_project

    def old_fit(emb: np.ndarray, dims: int = 32) -> dict:
        z = _l2(emb)
        mean = z.mean(0)
        _, s, vt = np.linalg.svd(z - mean, full_matrices=False)
        k = int(min(dims, vt.shape[0], max(1, (len(z) - 1) // 2)))  # at most half the cells' axes (wbc 0.30.0)
        sd = s[:k] / np.sqrt(max(len(z) - 1, 1))
        scale = np.maximum(sd, max(float(sd[0]) * 1e-3, 1e-9))
        return {"mean": mean.tolist(), "components": vt[:k].tolist(), "scale": scale.tolist()}

    rng = np.random.default_rng(0)
    for n, d in ((300, 96), (20, 64), (3, 16)):
        emb = rng.normal(size=(n, d)) + rng.normal(size=d)
        a, b = old_fit(emb), fit_pca(emb)
        x = rng.normal(size=(40, d))
        (ca, ra), (cb, rb) = pca_project(x, a), pca_project(x, b)
        # axes may point the other way (SVD signs); whitened distances and residuals do not change
        np.testing.assert_allclose(np.abs(ca), np.abs(cb), atol=1e-9)
        np.testing.assert_allclose(ra, rb, atol=1e-12)
        np.testing.assert_allclose(a["scale"], b["scale"], rtol=1e-9)
