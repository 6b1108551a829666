"""ReCo's two relation terms against a numpy transcription of the paper's equations
(eqs. 3-7) on the model's own outputs, its draws and mixing, and the plug-in
contract: with λ1 = λ2 = 0 reco_moco_v2 is moco_v2 and reco_byol is byol, bit for
bit."""

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import (tensorboard_events, tiny_config,
                           train_straight_and_resumed)
from tests.test_losses import np_info_nce, np_relation
from tests.test_methods import real_views
from tfssl.errors import UserError
from tfssl.methods import reco
from tfssl.trainer import build_model, make_train_function

STRATEGY = tf.distribute.get_strategy()
SEED = tf.constant([0, 5], tf.int64)


def make(tmp_path, method="reco_moco_v2", **overrides):
    config = tiny_config(tmp_path, method, batch=8, queue=32, **overrides)
    return build_model(config, STRATEGY, 10, (0.5,) * 3, (0.5,) * 3)


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# -- draws and mixing ----------------------------------------------------------


@pytest.mark.parametrize("lam, cy, cx, box", [
    (0.75, 14, 14, (7, 21, 7, 21)),    # side 14, centred: a quarter of the image
    (0.75, 2, 27, (0, 9, 20, 28)),     # clipped at the top and right borders
    (1 - (13.5 / 28) ** 2, 14, 14, (8, 20, 8, 20)),  # side 13: half-sides 6 (authors)
    (1.0, 5, 5, (5, 5, 5, 5)),         # λ = 1: an empty box
])
def test_cutmix_box_and_ratio(lam, cy, cx, box):
    got = reco.cutmix_box(tf.constant(lam, tf.float32), cy, cx, 28).numpy()
    assert tuple(got) == box
    area = (box[1] - box[0]) * (box[3] - box[2])
    assert float(reco.box_ratio(tf.constant(box), 28)) == pytest.approx(1 - area / 784)


def np_mix(x_q, x_k, draws, mix):
    """The authors' ``_img_interpolation`` per group of rows."""
    perm, lam, box = (np.asarray(t) for t in draws[:3])
    g = perm.shape[1]
    x_mix, partner, ratio = x_q.copy(), np.zeros(len(x_q), int), np.zeros(len(x_q))
    for i in range(len(x_q)):
        group = i // g
        j = group * g + perm[group, i % g]
        partner[i] = j
        if mix == "mixup":
            ratio[i] = lam[group]
            x_mix[i] = lam[group] * x_q[i] + (1 - lam[group]) * x_k[j]
        else:
            y1, y2, c1, c2 = box[group]
            x_mix[i, y1:y2, c1:c2] = x_k[j, y1:y2, c1:c2]
            ratio[i] = 1 - (y2 - y1) * (c2 - c1) / (x_q.shape[1] * x_q.shape[2])
    return x_mix, partner, ratio


@pytest.mark.parametrize("mix", ["cutmix", "mixup"])
def test_mix_batch_matches_numpy_and_replica_slices_compose(mix):
    rng = np.random.default_rng(0)
    x_q, x_k = (rng.uniform(size=(8, 12, 12, 3)).astype(np.float32) for _ in range(2))
    draws = reco.mixing_draws(SEED, 2, 4, 12, 1.0, mix)
    x_mix, partner, ratio = reco.mix_batch(x_q, x_k, draws, 0, mix)
    want, want_partner, want_ratio = np_mix(x_q, x_k, draws, mix)
    np.testing.assert_array_equal(partner.numpy(), want_partner)
    np.testing.assert_allclose(ratio.numpy(), want_ratio, rtol=1e-6)
    np.testing.assert_allclose(x_mix.numpy(), want, rtol=1e-6)
    # Two replicas of 4 rows each mix their own group: the same rows as one device.
    halves = [reco.mix_batch(x_q[r * 4:(r + 1) * 4], x_k[r * 4:(r + 1) * 4], draws,
                             r, mix) for r in (0, 1)]
    np.testing.assert_array_equal(np.concatenate([h[0] for h in halves]), x_mix)
    np.testing.assert_array_equal(np.concatenate([h[1] + 4 * r for r, h in
                                                  enumerate(halves)]), partner)


def test_draws_are_permutations_pure_and_the_same_under_xla():
    draws = reco.mixing_draws(SEED, 16, 8, 28, 1.0)
    for row in draws.perm.numpy():
        assert sorted(row) == list(range(8))
    again = reco.mixing_draws(SEED, 16, 8, 28, 1.0)
    for a, b in zip(draws, again):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    other = reco.mixing_draws(tf.constant([0, 6], tf.int64), 16, 8, 28, 1.0)
    assert not np.array_equal(other.perm.numpy(), draws.perm.numpy())
    xla = tf.function(lambda s: reco.mixing_draws(s, 16, 8, 28, 1.0),
                      jit_compile=True, autograph=False)
    for seed in ([0, 5], [-3, 99]):  # a negative --seed too
        seed = tf.constant(seed, tf.int64)
        want, got = reco.mixing_draws(seed, 16, 8, 28, 1.0), xla(seed)
        np.testing.assert_array_equal(got.perm.numpy(), want.perm.numpy())
        np.testing.assert_array_equal(got.box.numpy(), want.box.numpy())
        np.testing.assert_allclose(got.lam.numpy(), want.lam.numpy(), atol=1e-6)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_beta_draws_have_the_beta_moments(alpha):
    x = reco.stateless_beta([100_000], SEED, alpha).numpy()
    assert x.min() >= 0 and x.max() <= 1
    # Beta(α, α): mean 1/2, variance 1 / (4 (2α + 1)); standard errors ~1e-3, 3e-4.
    assert x.mean() == pytest.approx(0.5, abs=5e-3)
    assert x.var() == pytest.approx(1 / (4 * (2 * alpha + 1)), rel=2e-2)
    if alpha == 1.0:  # uniform: the deciles are evenly spaced
        np.testing.assert_allclose(np.quantile(x, np.linspace(0.1, 0.9, 9)),
                                   np.linspace(0.1, 0.9, 9), atol=1e-2)


# -- the terms on the model's own outputs --------------------------------------


def np_reco(model, views, step, method):
    """``(L_base, L_global, L_local, mean r)`` by the paper's equations."""
    x_q, x_k, x_w = (v.numpy() for v in views)
    queue_w = model.queue_w.read().numpy()
    target = lambda x: model.tower_forward(  # noqa: E731
        tf.constant(x), model.target_backbone, model.target_proj)
    if method == "reco_moco_v2":
        queue = model.queue.read().numpy()
        q = model.forward_online(x_q)["embedding"].numpy()
        k = target(x_k)["embedding"].numpy()
        base = np_info_nce(q, k, queue, 0.2)
    else:
        q = unit(model.forward_online(x_q)["prediction"].numpy())
        k = unit(target(x_k)["projection"].numpy())
        q2 = unit(model.forward_online(x_k)["prediction"].numpy())
        k1 = unit(target(x_q)["projection"].numpy())
        base = np.mean(2 - 2 * (q * k).sum(-1)) + np.mean(2 - 2 * (q2 * k1).sum(-1))
    k_w = target(x_w)["embedding"].numpy()
    # eqs. 3-4: H(softmax(k_w·Q_wᵀ/τ_tt), softmax(q·Q_wᵀ/τ_ot))
    l_global = np_relation(q @ queue_w.T, k_w @ queue_w.T, 0.1, 0.04)
    p = model.params
    draws = reco.mixing_draws(model.random_seed(step, reco.RECO_STREAM), 2, 4, 28,
                              p.alpha, p.mix)
    x_mix, partner, r = np_mix(x_q, x_k, draws, p.mix)
    t = unit(r[:, None] * q + (1 - r[:, None]) * k[partner])  # eq. 6
    online_mix = model.forward_online(tf.constant(x_mix))
    if method == "reco_moco_v2":
        l_local = np_info_nce(online_mix["embedding"].numpy(), t, queue, 0.2)  # eq. 7
    else:
        pm = unit(online_mix["prediction"].numpy())
        l_local = np.mean(2 - 2 * (pm * t).sum(-1))
    return base, l_global, l_local, float(np.mean(draws.ratio))


@pytest.mark.parametrize("method, mix", [("reco_moco_v2", "cutmix"),
                                         ("reco_moco_v2", "mixup"),
                                         ("reco_byol", "cutmix")])
def test_terms_match_numpy_transcription(tmp_path, method, mix):
    model = make(tmp_path, method, mix=mix)
    # Step 0 ends with the weak and strong keys enqueued: the queues then hold keys.
    model.train_step(real_views(model, 8, seed=1))
    views = real_views(model, 8, seed=2)
    step = tf.constant(1, tf.int64)
    base, l_global, l_local, mean_r = np_reco(model, views, step, method)
    out = model.compute_losses(views, step)
    base_name = "info_nce" if method == "reco_moco_v2" else "byol"
    np.testing.assert_allclose(float(out[base_name]), base, rtol=1e-4)
    np.testing.assert_allclose(float(out["reco_global"]), l_global, rtol=1e-4)
    np.testing.assert_allclose(float(out["reco_local"]), l_local, rtol=1e-4)
    np.testing.assert_allclose(float(out["reco_mix_ratio"]), mean_r, rtol=1e-6)
    np.testing.assert_allclose(float(out["loss"]), base + l_global + 2 * l_local,
                               rtol=1e-4)


def test_each_key_enters_its_own_queue(tmp_path):
    model = make(tmp_path)
    views = real_views(model, 8)
    k = model.target_embedding(views[1]).numpy()
    k_w = model.target_embedding(views[2]).numpy()
    model.train_step(views)
    np.testing.assert_allclose(model.queue.read().numpy()[:8], k, atol=1e-5)
    np.testing.assert_allclose(model.queue_w.read().numpy()[:8], k_w, atol=1e-5)
    assert int(model.queue_w.pointer.numpy()) == 8
    # The two queues start from different content.
    fresh = make(tmp_path / "fresh")
    assert not np.allclose(fresh.queue.read().numpy(), fresh.queue_w.read().numpy())


def test_weak_view_is_the_third_and_weak(tmp_path):
    specs = make(tmp_path).input_view_specs()
    assert len(specs) == 3
    assert specs[2].jitter_p == specs[2].gray_p == specs[2].blur_p == 0.0
    assert specs[0].jitter_p == specs[1].jitter_p == 0.8


# -- the plug-in contract ------------------------------------------------------


def count_forwards(model, monkeypatch):
    calls = {"online": 0, "target": 0}
    online, target = model.forward_online, model.forward_target

    def counted_online(*a, **k):
        calls["online"] += 1
        return online(*a, **k)

    def counted_target(*a, **k):
        calls["target"] += 1
        return target(*a, **k)

    monkeypatch.setattr(model, "forward_online", counted_online)
    monkeypatch.setattr(model, "forward_target", counted_target)
    return calls


@pytest.mark.parametrize("lambdas, views, online, target, weak_queue", [
    ((1.0, 2.0), 3, 2, 2, True),   # MoCo: q1, mixed; k2, weak
    ((0.0, 2.0), 2, 2, 1, False),  # +Local only
    ((1.0, 0.0), 3, 1, 2, True),   # +Global only
    ((0.0, 0.0), 2, 1, 1, False),  # MoCo-v2 itself
])
def test_a_zero_weight_removes_the_term_and_its_forwards(
        tmp_path, monkeypatch, lambdas, views, online, target, weak_queue):
    model = make(tmp_path, lambda_global=lambdas[0], lambda_local=lambdas[1])
    assert len(model.input_view_specs()) == views
    assert hasattr(model, "queue_w") == weak_queue
    calls = count_forwards(model, monkeypatch)
    out = model.compute_losses(real_views(model, 8), tf.constant(0, tf.int64))
    assert (calls["online"], calls["target"]) == (online, target)
    assert ("reco_global" in out) == bool(lambdas[0])
    assert ("reco_local" in out) == bool(lambdas[1])


@pytest.mark.parametrize("base", ["moco_v2", "byol"])
def test_zero_weights_give_the_base_method_bit_for_bit(tmp_path, base):
    def run(method, **params):
        config = tiny_config(tmp_path / method, method, batch=8, queue=16, **params)
        model = build_model(config, STRATEGY, 10, (0.5,) * 3, (0.5,) * 3)
        batches = [tuple(v.numpy() for v in real_views(model, 8, seed=s))
                   for s in range(3)]
        ds = tf.data.Dataset.from_tensor_slices(tuple(
            np.stack([b[i] for b in batches]) for i in range(len(batches[0]))))
        fn, iterator = make_train_function(model, STRATEGY), iter(ds)
        logs = [{k: v.numpy() for k, v in fn(iterator).items()} for _ in batches]
        return model, logs

    plain, plain_logs = run(base)
    zero, zero_logs = run("reco_" + base, lambda_global=0.0, lambda_local=0.0)
    assert plain_logs == zero_logs
    assert len(plain.weights) == len(zero.weights)
    for a, b in zip(plain.weights + plain.optimizer.variables,
                    zero.weights + zero.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


# -- refusals, resume, TensorBoard --------------------------------------------


def test_group_size_must_divide_the_per_replica_batch(tmp_path, mirrored):
    with pytest.raises(UserError, match=r"--reco_group_size=3 must divide the "
                       r"per-replica batch .* = 8 rows\); use 2"):
        make(tmp_path, group_size=3)
    with pytest.raises(UserError, match=r"over 2 replica\(s\) = 4 rows\); use 4"):
        build_model(tiny_config(tmp_path, "reco_byol", batch=8, group_size=8),
                    mirrored, 10, (0.5,) * 3, (0.5,) * 3)


def test_target_temperature_must_be_sharper():
    from tfssl.config import validate_run

    with pytest.raises(UserError, match="--reco_tau_target=0.2 must be smaller"):
        validate_run(tiny_config("/tmp/x", "reco_moco_v2", tau_target=0.2), "moco_")
    validate_run(tiny_config("/tmp/x", "reco_moco_v2", tau_target=0.2,
                             lambda_global=0.0), "moco_")


def test_resume_is_exact_and_tensorboard_shows_terms_and_mixed_images(tmp_path):
    train_straight_and_resumed(tmp_path, "reco_byol")
    tags = set(tensorboard_events(tmp_path / "a" / "tb").Tags()["tensors"])
    assert {"train/reco_global", "train/reco_local", "train/reco_mix_ratio",
            "train/byol", "reco/mixed", "reco/partner", "views/2_28px"} <= tags


def test_flags_share_moco_and_name_reco(tmp_path):
    from absl import flags as absl_flags

    from tfssl import flags as tfssl_flags

    values = absl_flags.FlagValues()
    tfssl_flags.define_flags(values)
    values(["prog", "--method=reco_moco_v2", "--moco_temperature=0.3",
            "--reco_lambda_local=1.0", "--reco_mix=mixup", f"--model_dir={tmp_path}"])
    params = tfssl_flags.run_config_from_flags(values).method_params
    assert (params.temperature, params.lambda_local, params.mix) == (0.3, 1.0, "mixup")
    assert params.lambda_global == 1.0 and params.group_size == 32
