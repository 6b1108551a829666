"""SMoG: eq. 4 and eq. 3 against numpy, the synchronous gradient, k-means, resets,
multi-crop pairing, and the group features under MirroredStrategy."""

import types

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import tiny_config
from tests.test_distributed import run_steps
from tests.test_methods import real_views
from tfssl.errors import UserError
from tfssl.methods import groups as G
from tfssl.methods.smog import SMoG, SMoGParams, cache_rows, local_crop_size
from tfssl.trainer import build_model

STRATEGY = tf.distribute.get_strategy()


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def np_update(groups, z, c, beta):
    """Eq. 4, one group at a time: g_k <- norm(β g_k + (1−β) mean{z : c = k})."""
    new = groups.copy()
    for k in range(len(groups)):
        members = z[c == k]
        if len(members):
            new[k] = unit(beta * groups[k] + (1 - beta) * members.mean(0))
    return new


def np_group_ce(p, groups, c, tau):
    """Eq. 3: -mean_i log softmax(norm(p_i)·Gᵀ/τ)[c_i]."""
    logits = unit(p) @ groups.T / tau
    m = logits.max(1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(logits - m).sum(1))
    return float(np.mean(lse - logits[np.arange(len(c)), c]))


def planted(rng, k, d, n_per, noise):
    """``k`` orthogonal unit centres, ``n_per`` noisy unit points around each."""
    centers = np.linalg.qr(rng.normal(size=(d, d)))[0][:k]
    labels = np.repeat(np.arange(k), n_per)
    x = unit(centers[labels] + noise * rng.normal(size=(len(labels), d)))
    return centers, x.astype(np.float32), labels


# -- eq. 4 ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["some_unchosen", "all_in_one"])
def test_assignment_and_update_match_numpy(case):
    rng = np.random.default_rng(0)
    groups = np.linalg.qr(rng.normal(size=(8, 8)))[0][:6].astype(np.float32)  # 6 x 8
    planned = rng.integers(0, 4, 10) if case == "some_unchosen" else np.full(10, 2)
    z_t = unit(groups[planned] + 0.1 * rng.normal(size=(10, 8))).astype(np.float32)
    z_a = unit(rng.normal(size=(10, 8))).astype(np.float32)
    beta = 0.7

    c = G.assign_groups(z_t, groups).numpy()
    np.testing.assert_array_equal(c, np.argmax(z_t @ groups.T, 1))
    np.testing.assert_array_equal(c, planned)
    new, counts = G.synchronous_update(groups, z_a, c, beta)
    expected = np_update(groups.astype(np.float64), z_a, c, beta)
    np.testing.assert_allclose(new.numpy(), expected, atol=1e-6)
    np.testing.assert_array_equal(counts.numpy(), np.bincount(c, minlength=6))
    unchosen = np.setdiff1d(np.arange(6), c)
    assert len(unchosen) >= (2 if case == "some_unchosen" else 5)
    np.testing.assert_array_equal(new.numpy()[unchosen], groups[unchosen])  # exact
    np.testing.assert_allclose(np.linalg.norm(new.numpy(), axis=1), 1, atol=1e-6)
    if case == "all_in_one":
        np.testing.assert_allclose(new.numpy()[2],
                                   unit(beta * groups[2] + (1 - beta) * z_a.mean(0)),
                                   atol=1e-6)


def test_gradient_through_groups_matches_finite_differences():
    """d=3, K=4, B=5: dL/dz flows only through G_new's (1−β)·mean term."""
    rng = np.random.default_rng(1)
    groups = unit(rng.normal(size=(4, 3)))
    z = unit(rng.normal(size=(5, 3)))
    p = rng.normal(size=(5, 3))
    c = np.array([0, 0, 1, 2, 2])  # group 3 unchosen, 0 and 2 shared
    beta, tau = 0.6, 0.1

    def np_loss(z_, p_):
        return np_group_ce(p_, np_update(groups, z_, c, beta), c, tau)

    def fd(f, x, eps=1e-6):
        grad = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            up, down = x.copy(), x.copy()
            up[idx] += eps
            down[idx] -= eps
            grad[idx] = (f(up) - f(down)) / (2 * eps)
        return grad

    zt, pt = tf.constant(z, tf.float32), tf.constant(p, tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([zt, pt])
        new, _ = G.synchronous_update(groups, zt, c, beta)
        loss, _ = G.group_cross_entropy(pt, new, c, tau)
    np.testing.assert_allclose(float(loss), np_loss(z, p), rtol=1e-5)
    grad_z = tape.gradient(loss, zt).numpy()
    expected_z = fd(lambda x: np_loss(x, p), z)
    assert np.abs(expected_z).max() > 0.1  # the synchronous path is real
    np.testing.assert_allclose(grad_z, expected_z, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(tape.gradient(loss, pt).numpy(),
                               fd(lambda x: np_loss(z, x), p), rtol=1e-3, atol=1e-4)
    # Closed-form limit: β = 1 leaves G unchanged, so no gradient reaches z.
    with tf.GradientTape() as tape:
        tape.watch(zt)
        loss, _ = G.group_cross_entropy(pt, G.synchronous_update(groups, zt, c, 1.0)[0],
                                        c, tau)
    grad = tape.gradient(loss, zt)
    assert grad is None or np.abs(grad.numpy()).max() == 0


def test_occupancy_entropy():
    counts = np.array([4.0, 0.0, 2.0, 2.0])
    q = counts[counts > 0] / 8
    assert float(G.occupancy_entropy(counts)) == pytest.approx(-(q * np.log(q)).sum())
    assert float(G.occupancy_entropy(np.zeros(4))) == 0.0


# -- k-means ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kmeans_recovers_planted_clusters(seed):
    rng = np.random.default_rng(seed)
    centers, x, labels = planted(rng, 5, 16, 40, 0.1)
    order = rng.permutation(len(x))
    x, labels = x[order], labels[order]
    centroids, c = G.kmeans(x, 5, 10, tf.constant([seed, 0], tf.int64))
    c = c.numpy()
    table = np.zeros((5, 5), int)
    np.add.at(table, (labels, c), 1)
    # A permutation: every planted cluster maps to exactly one group and back.
    assert sorted(table.max(1)) == [40] * 5 and (table > 0).sum() == 5
    match = centers[np.argmax(table, 0)]  # planted centre of each found group
    assert np.all(np.sum(match * centroids.numpy(), 1) > 0.98)


def test_kmeans_with_more_groups_than_points():
    rng = np.random.default_rng(3)
    x = unit(rng.normal(size=(4, 8))).astype(np.float32)
    centroids, c = G.kmeans(x, 10, 5, tf.constant([0, 0], tf.int64))
    centroids = centroids.numpy()
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(np.max(x @ centroids.T, 1), 1, atol=1e-5)  # all seeded
    assert len(set(c.numpy())) == 4
    # The 6 spare groups are distinct random directions, not copies of the data.
    assert np.sum(np.max(centroids @ x.T, 1) > 0.999) == 4


# -- the method on a tiny model --------------------------------------------------------


def make(tmp_path, **overrides):
    config = tiny_config(tmp_path, "smog", batch=8, queue=16, **overrides)
    return build_model(config, STRATEGY, 10, (0.5,) * 3, (0.5,) * 3)


def weights_equal(pair):
    return all(np.array_equal(o.numpy(), t.numpy())
               for o, t in zip(pair.online.weights, pair.target.weights))


def test_init_kmeans_and_reset_exactly_at_the_interval(tmp_path):
    model = make(tmp_path, n_groups=4, reset_interval=2, momentum=0.9)
    batch = real_views(model, 8)
    step = tf.function(model.train_step)
    seed = lambda s: tf.constant([0, s], tf.int64)  # noqa: E731

    step(batch)  # step 0: G = k-means of this step's online features (β(0) = 1)
    np.testing.assert_allclose(
        model.groups.read().numpy(),
        G.kmeans(model.cache.read()[:8], 4, 10, seed(0))[0].numpy(), atol=1e-5)
    assert not any(weights_equal(p) for p in model.momentum_pairs)
    assert int(model.groups.resets.numpy()) == 0

    step(batch)  # step 1 ends an interval: re-group on the cache, hard reset
    assert model.cache.size == 16 and int(model.cache.pointer.numpy()) == 0
    assert all(weights_equal(p) for p in model.momentum_pairs)
    assert int(model.groups.resets.numpy()) == 1
    np.testing.assert_allclose(model.groups.read().numpy(),
                               G.kmeans(model.cache.read(), 4, 10, seed(1))[0].numpy(),
                               atol=1e-5)
    assert float(np.sum(model.groups.window_counts.numpy())) == 16  # steps 0 and 1

    step(batch)  # step 2: EMA again, no reset, a fresh occupancy window
    assert not any(weights_equal(p) for p in model.momentum_pairs)
    assert int(model.groups.resets.numpy()) == 1
    counts = model.groups.window_counts.numpy()
    assert counts.sum() == 8
    out = {k: v.numpy() for k, v in model.summaries().items()}
    np.testing.assert_array_equal(out["smog/occupancy"], counts)
    assert out["smog/empty_groups"] == np.sum(counts == 0)
    q = counts[counts > 0] / 8
    entropy = -(q * np.log(q)).sum()
    assert out["smog/occupancy_entropy"] == pytest.approx(entropy, rel=1e-5)
    assert out["smog/resets"] == 1

    # The state is checkpointed with the model (tf.train.Checkpoint, as the trainer).
    path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt" / "c"))
    fresh = make(tmp_path / "fresh", n_groups=4, reset_interval=2, momentum=0.9)
    tf.train.Checkpoint(model=fresh).restore(path).assert_existing_objects_matched()
    for state in ("groups", "window_counts", "resets"):
        np.testing.assert_array_equal(getattr(fresh.groups, state).numpy(),
                                      getattr(model.groups, state).numpy())
    np.testing.assert_array_equal(fresh.cache.read().numpy(), model.cache.read().numpy())


def test_multicrop_loss_and_pairing_match_numpy(tmp_path):
    model = make(tmp_path, n_groups=6, crops=6, symmetric=True, init="random",
                 beta_schedule="constant", beta=0.8)
    specs = model.input_view_specs()
    assert [s.size for s in specs] == [28, 28, 12, 12, 12, 12]
    assert [s.solarize_p for s in specs] == [0.0, 0.2] * 3  # byol_a, byol_b, ...
    assert [s.crop_scale for s in specs] == [(0.2, 1.0)] * 2 + [(0.05, 0.2)] * 4
    views = real_views(model, 8)
    groups = model.groups.read().numpy()
    h = [x.numpy() for x in model._project(views, model.backbone, model.proj)]
    preds = [model.pred(x, training=True).numpy() for x in h]
    z_t = [unit(x.numpy()) for x in
           model._project(views[:2], model.target_backbone, model.target_proj)]
    c = [np.argmax(z @ groups.T, 1) for z in z_t]
    # Every crop is paired with the target global of the other recipe.
    labels = [c[1], c[0], c[1], c[0], c[1], c[0]]
    new = np_update(groups.astype(np.float64), unit(np.concatenate(h[:2])),
                    np.concatenate(labels[:2]), 0.8)
    ce = np.mean([np_group_ce(p, new, y, 0.1) for p, y in zip(preds, labels)])
    acc = np.mean([np.mean(np.argmax(unit(p) @ new.T, 1) == y)
                   for p, y in zip(preds, labels)])
    out = model.compute_losses(views, tf.constant(3, tf.int64))
    np.testing.assert_allclose(float(out["loss"]), ce, rtol=1e-4)
    np.testing.assert_allclose(float(out["group_acc"]), acc, atol=1e-6)
    assert float(out["beta"]) == pytest.approx(0.8)
    np.testing.assert_allclose(model.groups.read().numpy(), new, atol=2e-5)


def test_alternating_roles_by_step_parity():
    stub = types.SimpleNamespace(params=SMoGParams())
    a, b = tf.zeros([2, 4, 4, 3]), tf.ones([2, 4, 4, 3])
    for step, first in ((0, 0.0), (1, 1.0), (6, 0.0)):
        online, target, pairing = SMoG.roles(stub, (a, b), tf.constant(step, tf.int64))
        assert float(online[0][0, 0, 0, 0]) == first
        assert float(target[0][0, 0, 0, 0]) == 1.0 - first and pairing == [0]


def test_groups_identical_across_replicas_and_equal_one_device(tmp_path, mirrored):
    # Symmetric roles (two online views per step), β 0.5 (a strong synchronous
    # gradient path) and a reset after step 1 under both strategies. One device
    # computes BN with Keras' ops, as synchronised BN does (the fused kernel rounds
    # differently, and the reset's k-means amplifies it).
    config = tiny_config(tmp_path, "smog", batch=8, queue=16, n_groups=6,
                         symmetric=True, reset_interval=2, beta_schedule="constant",
                         beta=0.5, fused_batch_norm=False)
    probe = build_model(config, STRATEGY, 10, (0.5,) * 3, (0.5,) * 3)
    batches = [tuple(v.numpy() for v in real_views(probe, 8, seed=s)) for s in (1, 2)]
    init = [w.numpy() for w in probe.weights]
    one, logs_one = run_steps(STRATEGY, config, batches, init)
    two, logs_two = run_steps(mirrored, config, batches, init)
    for a, b in zip(logs_one, logs_two):
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), key
    # Bit-identical on the two replicas; equal to one device up to the sync-BN
    # float differences (the features after one optimizer step differ by ~1e-5).
    for state in (two.groups.groups, two.groups.window_counts, two.cache.queue):
        first, second = (v.numpy() for v in state.value.values)
        np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(two.groups.read().numpy(), one.groups.read().numpy(),
                               atol=1e-4)
    np.testing.assert_array_equal(two.groups.window_counts.numpy(),
                                  one.groups.window_counts.numpy())
    np.testing.assert_allclose(two.cache.read().numpy(), one.cache.read().numpy(),
                               atol=1e-4)
    assert int(two.groups.resets.numpy()) == int(one.groups.resets.numpy()) == 1
    for w1, w2 in zip(one.weights, two.weights):
        np.testing.assert_allclose(w1.numpy(), w2.numpy(), rtol=1e-3, atol=1e-4,
                                   err_msg=w1.path)
    assert all(weights_equal(p) for p in two.momentum_pairs)  # reset on 2 replicas


# -- configuration -------------------------------------------------------------------


def test_params_and_cache_size_checks():
    assert SMoGParams().problems() is None
    assert "freezes" in SMoGParams(beta_schedule="constant", beta=1.0).problems()
    assert cache_rows(SMoGParams(), 256) == 65536  # min(300 * 256, 65536)
    assert cache_rows(SMoGParams(reset_interval=2), 8) == 16
    assert cache_rows(SMoGParams(symmetric=True, reset_interval=2), 8) == 32
    assert cache_rows(SMoGParams(reset_interval=0), 8) == 8  # step-0 k-means only
    assert cache_rows(SMoGParams(reset_interval=0, init="random"), 8) == 0
    for bad in (12, 4, 24):  # not a multiple; less than a step; more than 2 steps
        with pytest.raises(UserError, match="smog_cache_size"):
            cache_rows(SMoGParams(reset_interval=2, cache_size=bad), 8)
    assert [local_crop_size(s) for s in (224, 32, 28, 96)] == [96, 14, 12, 41]
    with pytest.raises(UserError):
        from tfssl.config import validate_run
        validate_run(tiny_config("/tmp/x", "smog", crops=4), "smog_")


def test_flagfiles_carry_the_paper_numbers():
    from tests.test_configs import parse

    small = parse("configs/cifar10/smog.flags")
    p = small.method_params
    assert (p.n_groups, p.temperature, p.beta, p.beta_schedule) == (300, 0.1, 0.99,
                                                                    "linear")
    assert (p.reset_interval, p.crops, p.init) == (300, 2, "kmeans")
    assert (small.train.momentum, small.model.proj_hidden_dim, small.model.proj_dim) == (
        0.99, 2048, 128)
    big = parse("configs/imagenet2012/smog.flags")
    assert (big.method_params.n_groups, big.method_params.crops) == (3000, 6)
    assert (big.optim.optimizer, big.optim.weight_decay, big.train.momentum) == (
        "lars", 1e-6, 0.999)
    assert big.learning_rate() == pytest.approx(0.3 * 4096 / 256)
