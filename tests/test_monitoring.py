"""The collapse indicator against numpy and its closed-form limits."""

import numpy as np
import pytest

from tfssl.monitoring import embedding_std


def test_embedding_std_matches_numpy():
    z = np.random.default_rng(0).normal(size=(32, 8)).astype(np.float32)
    unit = z / np.linalg.norm(z, axis=1, keepdims=True)
    np.testing.assert_allclose(float(embedding_std(z)), unit.std(0).mean(), rtol=1e-5)


def test_embedding_std_limits():
    collapsed = np.tile([[3.0, 4.0]], (10, 1))
    assert float(embedding_std(collapsed)) < 1e-6  # float32 rounding of the mean
    # ±e_i for every axis: each coordinate is ±1 on 2 of 2d rows, so its std is
    # sqrt(2/(2d)) = 1/sqrt(d).
    d = 4
    axes = np.concatenate([np.eye(d), -np.eye(d)])
    np.testing.assert_allclose(float(embedding_std(axes)), 1 / np.sqrt(d), rtol=1e-6)


def test_rankme_matches_numpy_and_the_rank_of_a_known_matrix():
    from tfssl.monitoring import rankme

    rng = np.random.default_rng(0)
    # r equal singular values: RankMe = r (up to eps).
    u, _ = np.linalg.qr(rng.normal(size=(64, 64)))
    v, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    for r in (1, 5, 16):
        m = u[:, :r] @ v[:r] * 3.0
        assert float(rankme(m)) == pytest.approx(r, rel=1e-4)
    x = rng.normal(size=(100, 12)) * np.linspace(0.1, 2.0, 12)
    s = np.linalg.svd(x, compute_uv=False)
    p = s / s.sum() + 1e-7
    assert float(rankme(x.astype(np.float32))) == pytest.approx(
        np.exp(-(p * np.log(p)).sum()), rel=1e-5)
