"""The composable base: plug-in terms, the tower forward, EMAN, nested shuffles,
in-step seeds, gathered in-batch losses, the per-method test table, flag clashes."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import METHOD_CASES, tiny_config
from tests.test_losses import np_info_nce
from tests.test_methods import real_views
from tfssl import trainer
from tfssl.config import non_negative, option
from tfssl.losses import info_nce_in_batch
from tfssl.methods import METHODS, base
from tfssl.methods.moco_v2 import MoCoV2, MoCoV2Params
from tfssl.methods.shuffle_bn import permutation, shuffled_apply

STRATEGY = tf.distribute.get_strategy()


def test_every_registered_method_has_a_test_case():
    assert sorted(METHOD_CASES) == sorted(METHODS.names())
    for name, case in METHOD_CASES.items():  # "covered by" names cases that run
        covering = case.xla_test.split(", ") if case.xla_test else []
        for other in covering:
            assert METHOD_CASES[other].xla_test is None, (name, other)
        if case.replica_test and not case.replica_test.startswith("tests/"):
            assert METHOD_CASES[case.replica_test].replica_test is None, name


# --------------------------------------------- a plug-in term (the documented example)


@dataclasses.dataclass(frozen=True)
class InBatchParams(MoCoV2Params):
    in_batch_weight: float = option(0.0, "Weight of the in-batch InfoNCE term.",
                                    non_negative)


class InBatchTerm(base.Term):
    """``λ · info_nce_in_batch(q1, k2)``: MoCo's own query and key, reused."""

    name = "in_batch"

    def weight(self, method):
        return method.params.in_batch_weight

    def objective(self, method, out, step):
        return {self.name: info_nce_in_batch(out["q1"], out["k2"],
                                             method.params.temperature)}


class MoCoInBatch(MoCoV2):  # not registered: no flags, no global state
    params_cls = InBatchParams
    terms = (InBatchTerm,)


def moco_in_batch(tmp_path, monkeypatch, weight):
    config = tiny_config(tmp_path, "moco_v2", batch=8, queue=16)
    config = dataclasses.replace(config, method_params=InBatchParams(
        in_batch_weight=weight))
    monkeypatch.setattr(trainer, "get_method", lambda name: MoCoInBatch)
    return trainer.build_model(config, STRATEGY, 10, (0.5,) * 3, (0.5,) * 3)


def test_a_plug_in_term_adds_its_weighted_value(tmp_path, monkeypatch):
    model = moco_in_batch(tmp_path, monkeypatch, 0.5)
    x1, x2 = real_views(model, 8)
    queue = model.queue.read().numpy()
    q = model.encode(x1, model.backbone, model.proj).numpy()
    k = model.encode(x2, model.target_backbone, model.target_proj).numpy()
    terms = model.compute_losses((x1, x2), tf.constant(0, tf.int64))

    logits = q @ k.T / 0.2
    in_batch = np.mean(np.log(np.exp(logits).sum(1)) - np.diag(logits))
    assert float(terms["in_batch"]) == pytest.approx(in_batch, rel=1e-4)
    assert float(terms["info_nce"]) == pytest.approx(np_info_nce(q, k, queue, 0.2),
                                                     rel=1e-4)
    assert float(terms["loss"]) == pytest.approx(
        float(terms["info_nce"]) + 0.5 * in_batch, rel=1e-5)


def test_a_term_of_weight_zero_is_not_built_and_changes_nothing(tmp_path, monkeypatch):
    plain = trainer.build_model(tiny_config(tmp_path, "moco_v2", batch=8, queue=16),
                                STRATEGY, 10, (0.5,) * 3, (0.5,) * 3)
    plus = moco_in_batch(tmp_path, monkeypatch, 0.0)
    assert not plus._terms
    batches = [real_views(plain, 8, seed=s) for s in (1, 2)]
    for v, w in zip(plus.weights, plain.weights):
        v.assign(w)
    logs = []
    for model in (plain, plus):
        step = tf.function(model.train_step)
        logs.append([{k: v.numpy() for k, v in step(b).items()} for b in batches])
    assert logs[0] == logs[1]
    for a, b in zip(plain.weights + plain.optimizer.variables,
                    plus.weights + plus.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


# --------------------------------------------- the tower


@pytest.mark.parametrize("method", METHODS.names())
def test_tower_forward_returns_every_stage(tmp_path, method):
    model = trainer.build_model(tiny_config(tmp_path, method), STRATEGY, 10,
                                (0.5,) * 3, (0.5,) * 3)
    x = real_views(model, 4)[0]
    out = model.forward_online(x)
    features = model.backbone(x, training=True)
    h = model.proj(features["pooled"], training=True).numpy()
    np.testing.assert_allclose(out["projection"].numpy(), h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["embedding"].numpy(),
                               h / np.linalg.norm(h, axis=1, keepdims=True),
                               rtol=1e-5, atol=1e-6)
    assert out["feature_map"].shape[0] == 4 and out["feature_map"].shape.rank == 4
    assert ("prediction" in out) == (model.pred is not None)
    target = model.forward_target(x, 0, outputs=("pooled", "embedding"))
    assert sorted(target) == ["embedding", "pooled"]


# --------------------------------------------- EMAN


def bn_layers(network):
    return [layer for layer in network._flatten_layers()
            if "BatchNormalization" in type(layer).__name__]


@pytest.mark.parametrize("ema_bn", [False, True])
def test_eman_target_normalises_with_its_averaged_statistics(tmp_path, ema_bn):
    config = tiny_config(tmp_path, "moco_v2", batch=8, queue=16, momentum=0.9,
                         ema_bn=ema_bn)
    model = trainer.build_model(config, STRATEGY, 10, (0.5,) * 3, (0.5,) * 3)
    x1, x2 = real_views(model, 8)
    # Distinct moving statistics, so inference mode and batch statistics differ.
    rng = np.random.default_rng(0)
    for layer in bn_layers(model.target_backbone) + bn_layers(model.target_proj):
        layer.moving_mean.assign(rng.normal(size=layer.moving_mean.shape) * 0.1)
        layer.moving_variance.assign(rng.uniform(0.5, 2.0,
                                                 layer.moving_variance.shape))
    before = {id(v): v.numpy() for p in model.momentum_pairs
              for v in p.target.non_trainable_weights}
    inference = model.encode(x2, model.target_backbone, model.target_proj,
                             training=False).numpy()
    batch_stats = model.encode(x2, model.target_backbone, model.target_proj,
                               training=True).numpy()
    for p in model.momentum_pairs:  # the probe forward above moved them
        for v in p.target.non_trainable_weights:
            v.assign(before[id(v)])
    assert not np.allclose(inference, batch_stats, atol=1e-3)
    model.train_step((x1, x2))

    keys = model.queue.read().numpy()[:8]
    np.testing.assert_allclose(keys, inference if ema_bn else batch_stats, atol=1e-5)
    for pair in model.momentum_pairs:
        for o, t in zip(pair.online.non_trainable_weights,
                        pair.target.non_trainable_weights):
            if ema_bn:  # EMA of the online statistics after the step
                np.testing.assert_allclose(t.numpy(), 0.9 * before[id(t)]
                                           + 0.1 * o.numpy(), rtol=1e-5, atol=1e-7)
            else:  # the target's own batch statistics moved them
                assert not np.allclose(t.numpy(), 0.9 * before[id(t)]
                                       + 0.1 * o.numpy(), atol=1e-7)


# --------------------------------------------- shuffles and seeds


def test_shuffled_apply_restores_nested_outputs(mirrored):
    from tests.test_shuffle_bn import center, np_shuffled, on_replicas

    seed = tf.constant([3, 4], tf.int64)
    x = np.random.default_rng(2).normal(size=(8, 3)).astype(np.float32)
    order = permutation(8, seed).numpy()

    def fn(v):
        return {"centred": center(v), "pair": (2.0 * v, center(v)[:, :1])}

    for pick, numpy_fn in ((lambda o: o["centred"], lambda c: c - c.mean(0)),
                           (lambda o: o["pair"][0], lambda c: 2.0 * c),
                           (lambda o: o["pair"][1], lambda c: (c - c.mean(0))[:, :1])):
        got = on_replicas(mirrored, lambda v: pick(shuffled_apply(fn, v, seed)), x)
        np.testing.assert_allclose(got, np_shuffled(numpy_fn, x, order, 2),
                                   atol=1e-6)
    with pytest.raises(ValueError, match="batch's 4 rows first"):
        on_replicas(mirrored, lambda v: shuffled_apply(
            lambda c: tf.reduce_mean(c, 0), v, seed), x)


def test_momentum_forwards_are_numbered_in_each_step(tmp_path, monkeypatch):
    model = trainer.build_model(
        tiny_config(tmp_path, "moco_v2", batch=8, queue=16, symmetric=True),
        STRATEGY, 10, (0.5,) * 3, (0.5,) * 3)
    model.batch_norm = "shuffle"  # one device: shuffled_apply is fn(x) itself
    seeds = []
    monkeypatch.setattr(base, "shuffled_apply",
                        lambda fn, x, seed: seeds.append(seed.numpy()) or fn(x))
    views = real_views(model, 8)
    for step in (0, 1):
        model.compute_losses(views, tf.constant(step, tf.int64))
    expected = [model.shuffle_seed(s, i).numpy() for s in (0, 1) for i in (0, 1)]
    np.testing.assert_array_equal(np.stack(seeds), np.stack(expected))
    assert len({tuple(s) for s in seeds}) == 4


def test_momentum_forwards_are_numbered_per_replica(tmp_path, mirrored, monkeypatch):
    """Under MirroredStrategy each replica traces its step in its own thread: each
    numbers its own momentum forwards 0, 1 (a shared counter gave 0..3)."""
    import threading

    from tests.test_distributed import run_steps

    config = tiny_config(tmp_path, "moco_v2", batch=8, queue=16, symmetric=True)
    probe = trainer.build_model(config, STRATEGY, 10, (0.5,) * 3, (0.5,) * 3)
    views = tuple(v.numpy() for v in real_views(probe, 8))
    calls = {}
    seed = base.MomentumMethod.shuffle_seed

    def recording(self, step, index=0):
        calls.setdefault(threading.get_ident(), []).append(index)
        return seed(self, step, index)

    monkeypatch.setattr(base.MomentumMethod, "shuffle_seed", recording)
    two, _ = run_steps(mirrored, config, [views])
    assert two.batch_norm == "shuffle"
    assert sorted(calls.values()) == [[0, 1], [0, 1]]


def test_random_seed_is_a_pure_function_of_seed_step_stream_index(tmp_path, mirrored):
    model = trainer.build_model(tiny_config(tmp_path, "byol", seed=5), STRATEGY, 10,
                                (0.5,) * 3, (0.5,) * 3)
    fold = tf.random.experimental.stateless_fold_in
    raw = tf.constant([5, 7], tf.int64)
    np.testing.assert_array_equal(model.random_seed(7).numpy(), raw.numpy())
    np.testing.assert_array_equal(model.random_seed(7, 11, 2).numpy(),
                                  fold(fold(raw, 11), 2).numpy())
    np.testing.assert_array_equal(model.shuffle_seed(7, 1).numpy(),
                                  model.random_seed(7, base.SHUFFLE_STREAM, 1).numpy())
    seeds = {tuple(model.random_seed(s, st, i).numpy())
             for s in (0, 1) for st in (None, 3) for i in (None, 0, 1)}
    assert len(seeds) == 12
    # Every replica draws the same numbers.
    draws = mirrored.run(tf.function(lambda: tf.random.stateless_uniform(
        [4], seed=model.random_seed(3, 9, 0))))
    first, second = (d.numpy() for d in mirrored.experimental_local_results(draws))
    np.testing.assert_array_equal(first, second)


# --------------------------------------------- gathered in-batch InfoNCE


def _in_batch_value_and_grads(strategy, q, k, gradient):
    n = strategy.num_replicas_in_sync
    size = q.shape[0] // n

    def replica(qv, kv):
        with tf.GradientTape() as tape:
            tape.watch([qv, kv])
            loss = info_nce_in_batch(qv, kv, 0.5, gradient=gradient)
            scaled = loss / n
        gq, gk = tape.gradient(scaled, [qv, kv])
        zero = tf.zeros_like(qv)
        return loss, zero if gq is None else gq, zero if gk is None else gk

    if n == 1:
        loss, gq, gk = replica(tf.constant(q), tf.constant(k))
        return float(loss), gq.numpy(), gk.numpy()
    values = [strategy.experimental_distribute_values_from_function(
        lambda ctx, a=a: tf.constant(a[ctx.replica_id_in_sync_group * size:][:size]))
        for a in (q, k)]
    out = tf.function(lambda a, b: strategy.run(replica, args=(a, b)))(*values)
    loss = strategy.reduce("MEAN", out[0], axis=None)
    grads = [np.concatenate([g.numpy() for g in strategy.experimental_local_results(o)])
             for o in out[1:]]
    return float(loss), *grads


@pytest.mark.parametrize("gradient", ["query", "keys", "both"])
def test_gathered_in_batch_info_nce_equals_one_device(mirrored, gradient):
    rng = np.random.default_rng(4)
    q, k = (rng.normal(size=(8, 5)).astype(np.float32) for _ in range(2))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    k /= np.linalg.norm(k, axis=1, keepdims=True)
    one = _in_batch_value_and_grads(STRATEGY, q, k, gradient)
    two = _in_batch_value_and_grads(mirrored, q, k, gradient)

    logits = q @ k.T / 0.5
    expected = np.mean(np.log(np.exp(logits).sum(1)) - np.diag(logits))
    assert one[0] == pytest.approx(expected, rel=1e-5)
    assert two[0] == pytest.approx(expected, rel=1e-5)
    np.testing.assert_allclose(two[1], one[1], atol=1e-6)
    np.testing.assert_allclose(two[2], one[2], atol=1e-6)
    # The gradient reaches only the side asked for.
    assert (np.abs(one[1]).sum() > 0) == (gradient != "keys")
    assert (np.abs(one[2]).sum() > 0) == (gradient != "query")
    # Per-replica negatives (the old behaviour) would give another value.
    local = [np.mean(np.log(np.exp(lg).sum(1)) - np.diag(lg)) for lg in
             (q[:4] @ k[:4].T / 0.5, q[4:] @ k[4:].T / 0.5)]
    assert abs(np.mean(local) - expected) > 1e-3


def test_in_batch_gradient_side_is_checked():
    with pytest.raises(ValueError, match="query, keys or both"):
        info_nce_in_batch(tf.ones([2, 2]), tf.ones([2, 2]), 0.1, gradient="key")


# --------------------------------------------- flags


def test_a_conflicting_flag_definition_raises():
    from absl import flags as absl_flags

    from tfssl import flags as tfssl_flags

    values = absl_flags.FlagValues()
    tfssl_flags.define_flags(values)
    tfssl_flags.define_flags(values)  # the same definitions again: fine

    @dataclasses.dataclass(frozen=True)
    class Clash:
        temperature: float = option(0.5, "Another temperature.")

    with pytest.raises(ValueError, match="--moco_temperature of Clash.temperature .* "
                                         "already defined by another field"):
        tfssl_flags._define(Clash, "moco_", values)
    tfssl_flags._define(MoCoV2Params, "moco_", values)  # a reused field shares it
