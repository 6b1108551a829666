"""Losses against numpy transcriptions of the papers' equations and closed forms."""

import numpy as np
import pytest
import tensorflow as tf

from tfssl import losses

rng = np.random.default_rng(0)


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def np_info_nce(q, k, neg, tau):
    # MoCo eq. 1: -log exp(q.k/t) / (exp(q.k/t) + sum_j exp(q.n_j/t))
    out = []
    for i in range(len(q)):
        pos = np.exp(q[i] @ k[i] / tau)
        negs = np.exp(neg @ q[i] / tau).sum()
        out.append(-np.log(pos / (pos + negs)))
    return np.mean(out)


def test_info_nce_matches_numpy():
    q, k, neg = unit(rng.normal(size=(6, 8))), unit(rng.normal(size=(6, 8))), unit(
        rng.normal(size=(20, 8)))
    got = losses.info_nce(q, k, neg, 0.2).numpy()
    np.testing.assert_allclose(got, np_info_nce(q, k, neg, 0.2), rtol=1e-5)


def test_info_nce_closed_form_orthogonal():
    # q = k and every negative orthogonal: L = -log(e^{1/t} / (e^{1/t} + K))
    q = np.eye(4)[:2]
    neg = np.eye(4)[2:]
    tau = 0.5
    expected = -np.log(np.exp(2.0) / (np.exp(2.0) + 2 * np.exp(0.0)))
    np.testing.assert_allclose(losses.info_nce(q, q, neg, tau).numpy(), expected,
                               rtol=1e-6)


def test_info_nce_in_batch_matches_numpy():
    q, k = unit(rng.normal(size=(5, 8))), unit(rng.normal(size=(5, 8)))
    logits = q @ k.T / 0.3
    expected = -np.mean(np.diag(np_log_softmax(logits)))
    np.testing.assert_allclose(losses.info_nce_in_batch(q, k, 0.3).numpy(), expected,
                               rtol=1e-5)


def np_relation(s, t, ts, tt):
    # ReSSL eqs. 3-5: p1 = softmax(s/ts), p2 = softmax(t/tt), H(p2, p1)
    p2 = np.exp(np_log_softmax(t / tt))
    return np.mean(-(p2 * np_log_softmax(s / ts)).sum(-1))


def test_relation_ce_matches_numpy():
    s, t = rng.uniform(-1, 1, (7, 30)), rng.uniform(-1, 1, (7, 30))
    got = losses.relation_ce(s, t, 0.1, 0.04).numpy()
    np.testing.assert_allclose(got, np_relation(s, t, 0.1, 0.04), rtol=1e-5)


def test_relation_ce_equal_distributions_give_entropy():
    # KL(p||p) = 0, so H(p, p) = H(p).
    s = rng.uniform(-1, 1, (5, 12))
    got = losses.relation_ce(s, s, 0.1, 0.1).numpy()
    np.testing.assert_allclose(got, losses.entropy(s, 0.1).numpy(), rtol=1e-5)


def test_relation_ce_sharp_teacher_is_cross_entropy_to_argmax():
    # τt -> 0: the target becomes one-hot at the teacher's nearest anchor.
    s, t = rng.uniform(-1, 1, (5, 12)), rng.uniform(-1, 1, (5, 12))
    got = losses.relation_ce(s, t, 0.1, 1e-4).numpy()
    nearest = t.argmax(-1)
    expected = -np.mean(np_log_softmax(s / 0.1)[np.arange(5), nearest])
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_relation_ce_stops_teacher_gradient():
    s = tf.Variable(rng.normal(size=(3, 4)))
    t = tf.Variable(rng.normal(size=(3, 4)))
    with tf.GradientTape() as tape:
        loss = losses.relation_ce(s, t, 0.1, 0.04)
    gs, gt = tape.gradient(loss, [s, t])
    assert gt is None and np.abs(gs.numpy()).sum() > 0


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_byol_mse_closed_forms(scale):
    p = rng.normal(size=(4, 6))
    # Opposite directions: cos = -1, L = 4; same direction (any scale): L = 0.
    np.testing.assert_allclose(losses.byol_mse(p, -scale * p).numpy(), 4.0, rtol=1e-6)
    np.testing.assert_allclose(losses.byol_mse(p, scale * p).numpy(), 0.0, atol=1e-6)
    z = rng.normal(size=(4, 6))
    np.testing.assert_allclose(losses.byol_mse(p, z).numpy(),
                               np.mean(2 - 2 * (unit(p) * unit(z)).sum(-1)), rtol=1e-5)


def test_entropy_uniform_is_log_k():
    np.testing.assert_allclose(losses.entropy(np.zeros((2, 16)), 0.1).numpy(),
                               np.log(16), rtol=1e-6)
