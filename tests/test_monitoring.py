"""The collapse indicator against numpy and its closed-form limits."""

import numpy as np

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
