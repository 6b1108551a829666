"""--batch_norm: the modes per method and replica count, and MoCo's shuffling BN
against a numpy transcription on two replicas."""

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import METHOD_CASES, tiny_config
from tests.test_distributed import run_steps
from tests.test_methods import real_views
from tfssl.errors import UserError
from tfssl.methods import METHODS, MomentumMethod
from tfssl.methods.shuffle_bn import permutation, shuffled_apply
from tfssl.trainer import build_model

SEED = tf.constant([1, 2], tf.int64)


def center(x):
    """What BN does to a batch (without the scale): ``x − mean_B(x)``."""
    return x - tf.reduce_mean(x, axis=0, keepdims=True)


def np_shuffled(fn, x, order, replicas):
    """Numpy transcription: permute the global batch, ``fn`` per replica chunk,
    undo the permutation."""
    chunks = np.split(x[order], replicas)
    out = np.concatenate([fn(c) for c in chunks])
    restored = np.empty_like(out)
    restored[order] = out
    return restored


def on_replicas(strategy, fn, x):
    """``fn`` run on ``x`` split in contiguous per-replica chunks; outputs joined."""
    n = strategy.num_replicas_in_sync
    size = x.shape[0] // n
    values = strategy.experimental_distribute_values_from_function(
        lambda ctx: x[ctx.replica_id_in_sync_group * size:][:size])
    out = tf.function(lambda v: strategy.run(fn, args=(v,)))(values)
    return np.concatenate([o.numpy() for o in strategy.experimental_local_results(out)])


def test_permutation_is_a_pure_function_of_the_seed():
    order = permutation(16, SEED).numpy()
    np.testing.assert_array_equal(np.sort(order), np.arange(16))
    np.testing.assert_array_equal(permutation(16, SEED).numpy(), order)
    assert not np.array_equal(permutation(16, SEED + 1).numpy(), order)
    compiled = tf.function(permutation, jit_compile=True)(16, SEED).numpy()  # TPU
    np.testing.assert_array_equal(np.sort(compiled), np.arange(16))


def test_shuffled_centering_equals_numpy_on_two_replicas(mirrored):
    x = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
    order = permutation(8, SEED).numpy()
    assert set(order[:4]) != set(range(4))  # the chunks really mix the replicas

    got = on_replicas(mirrored, lambda v: shuffled_apply(center, v, SEED), x)
    expected = np_shuffled(lambda c: c - c.mean(0), x, order, 2)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    local = np.concatenate([c - c.mean(0) for c in np.split(x, 2)])
    assert not np.allclose(got, local)
    # The inverse permutation puts every row back in its place.
    restored = on_replicas(mirrored, lambda v: shuffled_apply(tf.identity, v, SEED), x)
    np.testing.assert_array_equal(restored, x)


def test_one_replica_is_fn_itself():
    x = tf.constant(np.random.default_rng(1).normal(size=(8, 3)), tf.float32)
    np.testing.assert_array_equal(shuffled_apply(center, x, SEED).numpy(),
                                  center(x).numpy())


def test_batch_norm_modes_per_method_and_replica_count():
    defaults = {name: METHODS.get(name).default_batch_norm for name in METHODS.names()}
    assert defaults == {name: METHOD_CASES[name].default_batch_norm
                        for name in METHODS.names()}
    assert defaults["moco_v2"] == "shuffle" and defaults["byol"] == "sync"
    for name in METHODS.names():
        method = METHODS.get(name)
        assert method.batch_norm_mode("auto", 2) == defaults[name]
        for choice in ("auto", "sync", "shuffle", "local"):
            assert method.batch_norm_mode(choice, 1) == "local"  # plain BN
        assert method.batch_norm_mode("local", 2) == "local"
        assert method.batch_norm_mode("shuffle", 2) == "shuffle"


def test_shuffle_is_refused_where_targets_are_not_shuffled():
    class NoMomentumEncoder(MomentumMethod):  # not registered
        method_name = "plain"

    assert NoMomentumEncoder.batch_norm_mode("sync", 2) == "sync"
    for replicas in (1, 2):
        with pytest.raises(UserError, match="--batch_norm=shuffle is not available "
                                            "for --method=plain"):
            NoMomentumEncoder.batch_norm_mode("shuffle", replicas)


def test_moco_keys_come_from_shuffled_chunks_on_two_replicas(tmp_path, mirrored):
    config = tiny_config(tmp_path, "moco_v2", batch=8, queue=16, image_size=16)
    single = tf.distribute.get_strategy()
    probe = build_model(config, single, 10, (0.5,) * 3, (0.5,) * 3)
    batch = tuple(v.numpy() for v in real_views(probe, 8))
    init = [w.numpy() for w in probe.weights]

    two, _ = run_steps(mirrored, config, [batch], init)

    assert two.batch_norm == "shuffle" and probe.batch_norm == "local"
    bns = [layer for layer in two.target_backbone.layers
           if "BatchNormalization" in type(layer).__name__]
    assert bns and not any(layer.synchronized for layer in bns)
    # Keys of step 0: the key encoder (BN on each chunk of 4) on the permuted batch.
    order = permutation(8, two.shuffle_seed(0)).numpy()
    expected = np_shuffled(
        lambda c: probe.key(tf.constant(c)).numpy(), batch[1], order, 2)
    np.testing.assert_allclose(two.queue.read().numpy()[:8], expected, atol=1e-5)
