"""The multi-network method against a numpy transcription of the paper's Algorithm 1
on the model's own outputs, and its pieces (divide, combine, NN, BN decision)."""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import (tensorboard_events, tiny_config,
                           train_straight_and_resumed)
from tests.test_configs import parse
from tests.test_methods import real_views
from tfssl.errors import UserError
from tfssl.methods import multinet
from tfssl.trainer import build_model

STRATEGY = tf.distribute.get_strategy()
rng = np.random.default_rng(0)
STEP = tf.constant(1, tf.int64)


def make(tmp_path, **overrides):
    config = tiny_config(tmp_path, "multinet", batch=8, queue=32, **overrides)
    return build_model(config, STRATEGY, 10, (0.5,) * 3, (0.5,) * 3)


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def np_contrast(k, p, tau):
    """Algorithm 1's L(k, p): rows k, softmax over every prediction, label = own."""
    logits = unit(k) @ unit(p).T / tau
    m = logits.max(1, keepdims=True)
    lse = np.log(np.exp(logits - m).sum(1)) + m[:, 0]
    return np.mean(lse - np.diag(logits))


def test_divide_gives_the_four_quarters_row_by_row():
    x = rng.normal(size=(2, 6, 6, 3)).astype(np.float32)
    got = multinet.divide(x).numpy()
    assert got.shape == (4, 2, 3, 3, 3)
    for i, (r, c) in enumerate([(0, 0), (0, 3), (3, 0), (3, 3)]):
        np.testing.assert_array_equal(got[i], x[:, r:r + 3, c:c + 3])
    grid = multinet.patch_grid(x, gap=2).numpy()
    assert grid.shape == (2, 8, 8, 3)
    np.testing.assert_array_equal(grid[:, 5:, 5:], x[:, 3:, 3:])  # bottom-right
    np.testing.assert_array_equal(grid[:, 3:5], 1.0)  # the white gap


@pytest.mark.parametrize("k, count", [(1, 4), (2, 6), (3, 4), (4, 1)])
def test_combine_averages_every_combination(k, count):
    feats = rng.normal(size=(4, 5, 7)).astype(np.float32)
    got = multinet.combine(feats, k).numpy()
    want = [feats[list(c)].mean(0) for c in itertools.combinations(range(4), k)]
    assert got.shape == (count, 5, 7)
    np.testing.assert_allclose(got, np.stack(want), rtol=1e-6, atol=1e-6)


def test_nearest_neighbour_is_the_most_similar_queue_row():
    queue = unit(rng.normal(size=(20, 6))).astype(np.float32)
    z = unit(rng.normal(size=(5, 6))).astype(np.float32)
    z[2] = unit(queue[13] + 0.01)  # a near copy finds its row
    nn, index = multinet.nearest_neighbours(z, queue)
    want = np.argmax(z @ queue.T, axis=1)
    np.testing.assert_array_equal(index.numpy(), want)
    assert want[2] == 13
    np.testing.assert_array_equal(nn.numpy(), queue[want])


def test_contrast_matches_numpy_and_averages_leading_axes():
    k = rng.normal(size=(3, 6, 8)).astype(np.float32)
    p = rng.normal(size=(6, 8)).astype(np.float32)
    want = np.mean([np_contrast(k[i], p, 0.5) for i in range(3)])
    assert float(multinet.contrast(k, p, 0.5)) == pytest.approx(want, rel=1e-5)
    # Identical targets and predictions at a low temperature: the loss -> 0.
    q = unit(np.eye(6, 8)).astype(np.float32)
    assert float(multinet.contrast(q, q, 0.01)) == pytest.approx(0.0, abs=1e-6)


def np_losses(model, views_):
    """Algorithm 1 on the model's networks, the patches, combinations, NN and loss
    in numpy (BN in training mode, as the step runs it)."""
    p = model.params
    tau, k = p.temperature, p.combine_k
    queue = model.queue.read().numpy()

    def predict(x):
        h = model.proj(model.backbone(x, training=True)["pooled"], training=True)
        return model.pred(h, training=True).numpy()

    def momentum(x):
        h = model.target_proj(model.target_backbone(x, training=True)["pooled"],
                              training=True)
        return unit(h.numpy())

    def local(x):
        x = x.numpy()
        s = x.shape[1] // 2
        quarters = [x[:, :s, :s], x[:, :s, s:], x[:, s:, :s], x[:, s:, s:]]
        pooled = model.backbone(np.concatenate(quarters), training=True)["pooled"]
        pooled = pooled.numpy().reshape(4, len(x), -1)
        combos = np.stack([pooled[list(c)].mean(0)
                           for c in itertools.combinations(range(4), k)])
        h = model.proj(combos.reshape(-1, combos.shape[-1]), training=True).numpy()
        return unit(h).reshape(len(combos), len(x), -1)

    p1, p2, p3 = (predict(x) for x in views_)
    z1, z2 = momentum(views_[0]), momentum(views_[1])
    nn1 = queue[np.argmax(z1 @ queue.T, 1)]
    nn2 = queue[np.argmax(z2 @ queue.T, 1)]
    c1, c3 = local(views_[0]), local(views_[2])
    l_m = 0.5 * (np_contrast(nn1, p2, tau) + np_contrast(nn2, p1, tau))
    l_s = 0.5 * (np.mean([np_contrast(c, p3, tau) for c in c1])
                 + np.mean([np_contrast(c, p1, tau) for c in c3]))
    return l_s, l_m, z1


@pytest.mark.parametrize("k", [3])  # k = 2 is the other tests' default
def test_loss_matches_numpy_algorithm_1_on_the_models_outputs(tmp_path, k):
    model = make(tmp_path, combine_k=k, momentum_weight=4.0, temperature=0.5)
    model.train_step(real_views(model, 8, seed=1))  # the queue holds keys
    views_ = real_views(model, 8, seed=2)
    l_s, l_m, _ = np_losses(model, views_)
    out = model.compute_losses(views_, STEP)
    np.testing.assert_allclose(float(out["l_s"]), l_s, rtol=2e-4)
    np.testing.assert_allclose(float(out["l_m"]), l_m, rtol=2e-4)
    np.testing.assert_allclose(float(out["loss"]), l_s + 4.0 * l_m, rtol=2e-4)
    assert 0.0 <= float(out["nn_agreement"]) <= 1.0


def test_queue_receives_the_momentum_embeddings_of_the_first_view(tmp_path):
    model = make(tmp_path)
    views_ = real_views(model, 8)
    _, _, z1 = np_losses(model, views_)
    model.train_step(views_)
    np.testing.assert_allclose(model.queue.read().numpy()[:8], z1, atol=1e-5)


def test_gradient_reaches_the_predictions_and_not_the_stop_gradient_branch(tmp_path):
    model = make(tmp_path)
    model.train_step(real_views(model, 8, seed=1))
    views_ = real_views(model, 8, seed=2)
    with tf.GradientTape(persistent=True) as tape:
        out = model.forward(views_, STEP)
        scalars = model.objective(out, STEP)
    variables = model.online_variables
    # The local targets are constants to the tape: no gradient into f_o, g_o.
    assert all(g is None for g in tape.gradient(out["c1"], variables))
    assert all(g is None for g in tape.gradient(out["c3"], variables))
    ps = [out["p1"], out["p2"], out["p3"]]
    g_s = tape.gradient(scalars["l_s"], ps)
    g_m = tape.gradient(scalars["l_m"], ps)
    # L_s reads p3 and p1, L_m reads p2 and p1; each gradient is non-zero.
    assert g_s[1] is None and g_m[2] is None
    for g in (g_s[0], g_s[2], g_m[0], g_m[1]):
        assert float(tf.reduce_max(tf.abs(g))) > 1e-4
    grads = tape.gradient(scalars["loss"], variables)
    assert all(g is not None for g in grads)


@pytest.mark.parametrize("updates", [False, True])
def test_patches_leave_the_moving_statistics_of_full_images(tmp_path, updates):
    """Default: the online moving statistics after the step's forwards are those of
    the three full-image forwards alone; ``--multinet_patch_bn_updates`` moves them."""
    model = make(tmp_path / "a", patch_bn_updates=updates)
    reference = make(tmp_path / "b")
    views_ = real_views(model, 8)
    model.compute_losses(views_, STEP)
    for x in views_:
        reference.forward_online(x)
    online = [(a, b) for name in ("backbone", "proj", "pred")
              for a, b in zip(getattr(model, name).weights,
                              getattr(reference, name).weights)]
    stats = [(a, b) for a, b in online if "moving" in a.path]
    assert stats
    same = all(np.array_equal(a.numpy(), b.numpy()) for a, b in stats)
    assert same != updates


def test_one_combination_draws_one_combined_feature_per_step(tmp_path):
    model = make(tmp_path, one_combination=True, combine_k=2)
    x = real_views(model, 8)[0]
    chosen = set()
    for step in range(6):
        got = model.local_targets(x, tf.constant(step, tf.int64), 0).numpy()
        assert got.shape[0] == 1
        np.testing.assert_array_equal(
            got, model.local_targets(x, tf.constant(step, tf.int64), 0).numpy())
        pooled = model.backbone(tf.reshape(multinet.divide(x), [-1, 14, 14, 3]),
                                training=True)["pooled"]
        combos = multinet.combine(tf.reshape(pooled, [4, 8, -1]), 2)
        errors = [np.abs(unit(model.proj(c, training=True).numpy()) - got[0]).max()
                  for c in combos]
        assert min(errors) < 1e-5
        chosen.add(int(np.argmin(errors)))
    assert len(chosen) > 1  # drawn, not fixed


def test_odd_image_size_and_bad_k_are_refused(tmp_path):
    with pytest.raises(UserError, match=r"--image_size=27 must be even .* use 28"):
        parse("configs/fashion_mnist/multinet.flags", "--image_size=27")
    with pytest.raises(UserError, match="--image_size=27 must be even"):
        make(tmp_path, image_size=27)
    with pytest.raises(UserError, match="--multinet_combine_k=5 must be one of"):
        parse("configs/fashion_mnist/multinet.flags", "--multinet_combine_k=5")


def test_paper_numbers_in_the_flagfiles():
    c = parse("configs/cifar10/multinet.flags")
    p = c.method_params
    assert (p.momentum_weight, p.temperature, p.combine_k, p.one_combination,
            p.patch_bn_updates) == (6.0, 1.0, 2, False, False)
    assert (c.optim.optimizer, c.optim.weight_decay, c.train.queue_size,
            c.train.momentum, c.train.epochs, c.train.global_batch_size) == (
        "sgd", 1e-4, 16384, 0.99, 200, 256)
    assert c.learning_rate() == pytest.approx(0.1)
    assert (c.model.proj_layers, c.model.proj_hidden_dim, c.model.proj_dim,
            c.model.pred_hidden_dim) == (3, 2048, 2048, 512)


def test_resume_is_exact_and_tensorboard_has_the_terms(tmp_path):
    train_straight_and_resumed(tmp_path, "multinet")
    acc = tensorboard_events(tmp_path / "a" / "tb")
    assert {"train/l_s", "train/l_m", "train/nn_agreement",
            "multinet/patches"} <= set(acc.Tags()["tensors"])
