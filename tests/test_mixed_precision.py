"""--mixed_precision: mixed compute on float32 variables, float32 losses and state,
loss scaling undone exactly, checkpoints interchangeable with float32 runs."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import tiny_config
from tests.test_methods import real_views
from tfssl.models.precision import shared_overflow
from tfssl.trainer import build_model

STRATEGY = tf.distribute.get_strategy()
MIXED = ("mixed_float16", "mixed_bfloat16")


@pytest.fixture(autouse=True)
def float32_policy():
    """Every test starts and ends under the float32 policy, whatever happens."""
    keras.mixed_precision.set_dtype_policy("float32")
    yield
    keras.mixed_precision.set_dtype_policy("float32")


def build(tmp_path, method, policy):
    config = tiny_config(tmp_path, method, batch=8, queue=16, mixed_precision=policy)
    return build_model(config, STRATEGY, 10, (0.5,) * 3, (0.5,) * 3)


def layers_of(model, kind):
    return [layer for net in (model.backbone, model.target_backbone, model.proj)
            for layer in net.layers if isinstance(layer, kind)]


def check_dtypes(model, compute_dtype):
    """Float32 variables everywhere, mixed compute in the conv / dense layers."""
    assert keras.mixed_precision.dtype_policy().name == "float32"  # not leaked
    for layer in layers_of(model, (keras.layers.Conv2D, keras.layers.Dense)):
        assert layer.kernel.dtype == "float32", layer.path
        assert layer.compute_dtype == compute_dtype, layer.path
    for layer in layers_of(model, keras.layers.BatchNormalization):
        assert layer.moving_mean.dtype == layer.moving_variance.dtype == "float32"
    assert {w.dtype for w in model.weights} <= {"float32", "int32", "int64"}
    out = model.backbone(tf.zeros([2, 8, 8, 3]), training=False)
    assert out["pooled"].dtype == out["feature_map"].dtype == tf.float32


def online_deltas(model, before):
    return np.concatenate([(v.numpy() - before[id(v)]).ravel()
                           for v in model.online_variables])


@pytest.mark.parametrize("policy", MIXED)
def test_ressl_step_is_mixed_with_float32_state(tmp_path, policy):
    reference = build(tmp_path / "f32", "ressl", "none")
    batch = real_views(reference, 8)
    init = [w.numpy() for w in reference.weights]
    before = {id(v): v.numpy() for v in reference.online_variables}
    tf.function(reference.train_step)(batch)
    expected = online_deltas(reference, before)

    model = build(tmp_path, "ressl", policy)
    check_dtypes(model, policy.split("_")[1])
    for v, w in zip(model.weights, init):
        v.assign(w)
    scaled = isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert scaled == (policy == "mixed_float16")
    if scaled:  # a scale that does not overflow at this size: the step is applied
        model.optimizer.dynamic_scale.assign(2.0 ** 8)
    before = {id(v): v.numpy() for v in model.online_variables}
    logs = tf.function(model.train_step)(batch)

    assert logs["loss"].dtype == tf.float32 and np.isfinite(float(logs["loss"]))
    assert model.queue.queue.dtype == "float32" and model.queue.read().dtype == tf.float32
    np.testing.assert_allclose(np.linalg.norm(model.queue.read().numpy()[:8], axis=1),
                               1.0, atol=1e-5)
    assert int(model.optimizer.iterations.numpy()) == 1
    # The update is the float32 one up to rounding: the loss scale is undone.
    got = online_deltas(model, before)
    cosine = got @ expected / (np.linalg.norm(got) * np.linalg.norm(expected))
    assert cosine > 0.9
    assert np.linalg.norm(got) / np.linalg.norm(expected) == pytest.approx(1.0, abs=0.1)


@pytest.mark.parametrize("policy", MIXED)
@pytest.mark.parametrize("method", ["moco_v2", "byol", "smog"])
def test_other_methods_step_in_mixed_precision(tmp_path, method, policy):
    model = build(tmp_path, method, policy)
    check_dtypes(model, policy.split("_")[1])
    logs = tf.function(model.train_step)(real_views(model, 8))
    assert logs["loss"].dtype == tf.float32 and np.isfinite(float(logs["loss"]))
    state = [getattr(model, "queue", None), getattr(model, "cache", None)]
    for bank in filter(None, state):
        assert bank.queue.dtype == "float32"
    if method == "smog":
        assert model.groups.groups.dtype == model.groups.window_counts.dtype == "float32"
        np.testing.assert_allclose(np.linalg.norm(model.groups.read().numpy(), axis=1),
                                   1.0, atol=1e-5)


def test_an_overflow_on_one_replica_skips_the_step_on_all(mirrored):
    def grads(bad_replica):
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        bad = tf.logical_and(tf.equal(replica, bad_replica), bad_replica >= 0)
        g = tf.fill([3], tf.where(bad, np.inf, 2.0))
        return shared_overflow([g, tf.ones([2, 2]), None])

    run = tf.function(lambda bad: mirrored.run(grads, args=(bad,)))
    for bad_replica in (-1, 0, 1):
        out = run(tf.constant(bad_replica))
        assert out[2] is None
        for g in (out[0], out[1]):
            for local in mirrored.experimental_local_results(g):
                assert np.isfinite(local.numpy()).all() == (bad_replica < 0)
    np.testing.assert_array_equal(shared_overflow([tf.ones([2])])[0].numpy(), [1, 1])


def train_and_save(tmp_path, policy):
    model = build(tmp_path / policy, "ressl", policy)
    step = tf.function(model.train_step)
    batch = real_views(model, 8)
    for _ in range(2):
        step(batch)
    path = tf.train.Checkpoint(model=model, optimizer=model.optimizer).save(
        str(tmp_path / "ckpt" / policy))
    return model, path


def restore_exactly(tmp_path, model, path, policy):
    """A fresh ``policy`` model restores every weight and optimizer variable."""
    fresh = build(tmp_path / f"fresh_{policy}", "ressl", policy)
    tf.train.Checkpoint(model=fresh, optimizer=fresh.optimizer).restore(
        path).assert_existing_objects_matched()
    for a, b in zip(model.weights + model.optimizer.variables,
                    fresh.weights + fresh.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


@pytest.mark.parametrize("policy", MIXED)
def test_mixed_checkpoint_holds_float32_and_resumes(tmp_path, policy):
    model, path = train_and_save(tmp_path, policy)
    dtypes = tf.train.load_checkpoint(path).get_variable_to_dtype_map()
    assert {d for d in dtypes.values() if d.is_floating} == {tf.float32}
    restore_exactly(tmp_path, model, path, policy)
    if policy == "mixed_bfloat16":  # same optimizer as float32: interchangeable
        restore_exactly(tmp_path, model, path, "none")


def test_a_skipped_float16_update_still_counts_as_a_step(tmp_path):
    # The stream position and the method's schedules follow steps_taken, so a run
    # resumed after skipped updates continues exactly where it stopped.
    model = build(tmp_path, "ressl", "mixed_float16")
    model.optimizer.dynamic_scale.assign(3e38)  # every scaled gradient overflows
    tf.function(model.train_step)(real_views(model, 8))
    assert int(model.optimizer.iterations.numpy()) == 0
    assert int(model.steps_taken.numpy()) == 1


def test_resuming_across_float16_and_float32_is_refused(tmp_path):
    from tfssl.errors import UserError
    from tfssl.trainer import check_run_dir

    run = tiny_config(tmp_path, "ressl", mixed_precision="mixed_float16")
    (tmp_path / "config.json").write_text(run.to_json())  # what train writes
    check_run_dir(run, resuming=True)
    with pytest.raises(UserError, match="--mixed_precision: run mixed_float16"):
        check_run_dir(tiny_config(tmp_path, "ressl", mixed_precision="none"),
                      resuming=True)
