"""The base step on every registered method: copies, EMA, queue, real data."""

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import fashion_batch, tiny_config
from tfssl.data import views as views_lib
from tfssl.methods import METHODS
from tfssl.trainer import build_model

STRATEGY = tf.distribute.get_strategy()


def real_views(model, n, seed=0):
    images = tf.constant(fashion_batch(n, seed))
    per_example = [views_lib.make_views(images[i], model.input_view_specs(),
                                        tf.constant([seed, i], tf.int64))
                   for i in range(n)]
    return tuple(tf.stack([v[j] for v in per_example])
                 for j in range(len(model.input_view_specs())))


@pytest.mark.parametrize("method", METHODS.names())
def test_target_equals_online_at_step_zero(tmp_path, method):
    model = build_model(tiny_config(tmp_path, method), STRATEGY, 10, (0.5,) * 3,
                        (0.5,) * 3)
    assert model.momentum_pairs
    for pair in model.momentum_pairs:
        assert pair.target is not pair.online
        for o, t in zip(pair.online.weights, pair.target.weights):
            np.testing.assert_array_equal(o.numpy(), t.numpy())
    target_ids = {id(v) for p in model.momentum_pairs for v in p.target.weights}
    assert not target_ids & {id(v) for v in model.online_variables}
    assert len(model.optimizer.variables) > 1  # built on the online variables


@pytest.mark.parametrize("method", METHODS.names())
def test_steps_on_real_images_update_ema_exactly(tmp_path, method):
    config = tiny_config(tmp_path, method, momentum=0.9)
    model = build_model(config, STRATEGY, 10, (0.5,) * 3, (0.5,) * 3)
    batch = real_views(model, config.train.global_batch_size)
    step = tf.function(model.train_step)
    for _ in range(2):
        pair = model.momentum_pairs[0]
        before = [t.numpy() for t in pair.target.trainable_weights]
        logs = step(batch)
        after_online = [o.numpy() for o in pair.online.trainable_weights]
        for b, o, t in zip(before, after_online, pair.target.trainable_weights):
            # θ_t ← m·θ_t + (1−m)·θ, with θ the online weights after the step.
            np.testing.assert_allclose(t.numpy(), 0.9 * b + 0.1 * o, rtol=1e-5,
                                       atol=1e-7)
    assert np.isfinite(float(logs["loss"]))
    assert float(logs["momentum"]) == pytest.approx(0.9)
    assert int(model.optimizer.iterations.numpy()) == 2
    moved = any(not np.array_equal(o.numpy(), t.numpy()) for o, t in
                zip(pair.online.trainable_weights, pair.target.trainable_weights))
    assert moved


def test_moco_queue_receives_the_target_keys(tmp_path):
    config = tiny_config(tmp_path, "moco_v2", batch=8, queue=16)
    model = build_model(config, STRATEGY, 10, (0.5,) * 3, (0.5,) * 3)
    x1, x2 = real_views(model, 8)
    expected = model.encode(x2, model.target_backbone, model.target_proj).numpy()
    model.train_step((x1, x2))
    np.testing.assert_allclose(model.queue.read().numpy()[:8], expected, atol=1e-5)
    assert int(model.queue.pointer.numpy()) == 8


def test_moco_loss_matches_a_numpy_transcription(tmp_path):
    from tests.test_losses import np_info_nce

    config = tiny_config(tmp_path, "moco_v2", batch=8, queue=16)
    model = build_model(config, STRATEGY, 10, (0.5,) * 3, (0.5,) * 3)
    x1, x2 = real_views(model, 8)
    queue = model.queue.read().numpy()
    q = model.encode(x1, model.backbone, model.proj).numpy()
    k = model.encode(x2, model.target_backbone, model.target_proj).numpy()
    losses = model.compute_losses((x1, x2), tf.constant(0, tf.int64))
    np.testing.assert_allclose(float(losses["loss"]), np_info_nce(q, k, queue, 0.2),
                               rtol=1e-4)


def test_byol_predictor_only_on_the_online_branch(tmp_path):
    model = build_model(tiny_config(tmp_path, "byol"), STRATEGY, 10, (0.5,) * 3,
                        (0.5,) * 3)
    targets = [p.target for p in model.momentum_pairs]
    assert model.pred not in [p.online for p in model.momentum_pairs]
    assert len(targets) == 2
