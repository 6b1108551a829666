"""MomentumSGD / LARS against a numpy transcription of torch.optim.SGD; AdamW exclusion."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfssl import optim, schedules
from tfssl.errors import UserError

LR, MU, WD = 0.1, 0.9, 0.05


def torch_sgd_reference(params, grads_per_step, lr, momentum, wd, nesterov=False,
                        decay_mask=None, lars_eta=None):
    """numpy transcription of torch.optim.SGD.step (dampening 0), + solo-learn LARS.

    ``params``: dict name -> array; ``grads_per_step``: list of dicts name -> grad;
    ``decay_mask``: name -> bool (False: no decay and no LARS for that param).
    """
    params = {k: v.astype(np.float64).copy() for k, v in params.items()}
    bufs = {}
    for grads in grads_per_step:
        for k, p in params.items():
            d_p = grads[k].astype(np.float64)
            use = decay_mask is None or decay_mask[k]
            if use and wd != 0:
                d_p = d_p + wd * p
            if use and lars_eta is not None:
                p_norm, g_norm = np.linalg.norm(p), np.linalg.norm(d_p)
                if p_norm > 0 and g_norm > 0:
                    d_p = d_p * (lars_eta * p_norm / g_norm)
            if momentum != 0:
                if k not in bufs:
                    bufs[k] = d_p.copy()            # torch: buf = clone(d_p) at step 1
                else:
                    bufs[k] = momentum * bufs[k] + d_p
                d_p = d_p + momentum * bufs[k] if nesterov else bufs[k]
            params[k] = p - lr * d_p
    return params


def _problem(seed=0, steps=3):
    rng = np.random.default_rng(seed)
    params = {"kernel": rng.normal(size=(4, 3)).astype(np.float32),
              "bias": rng.normal(size=(3,)).astype(np.float32)}
    grads = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}
             for _ in range(steps)]
    return params, grads


def _run(opt, params, grads, use_tf_function=False):
    layer = keras.layers.Dense(3)
    layer.build((None, 4))
    layer.kernel.assign(params["kernel"])
    layer.bias.assign(params["bias"])
    variables = [layer.kernel, layer.bias]
    opt.build(variables)

    def apply(g_kernel, g_bias):
        opt.apply_gradients([(g_kernel, layer.kernel), (g_bias, layer.bias)])

    if use_tf_function:
        apply = tf.function(apply)
    for g in grads:
        apply(tf.constant(g["kernel"]), tf.constant(g["bias"]))
    return {"kernel": layer.kernel.numpy(), "bias": layer.bias.numpy()}, opt


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("use_tf_function", [False, True])
def test_momentum_sgd_matches_torch_sgd(nesterov, use_tf_function):
    params, grads = _problem()
    got, _ = _run(optim.MomentumSGD(LR, momentum=MU, weight_decay=WD, nesterov=nesterov),
                  params, grads, use_tf_function)
    want = torch_sgd_reference(params, grads, LR, MU, WD, nesterov,
                               decay_mask={"kernel": True, "bias": False})
    np.testing.assert_allclose(got["kernel"], want["kernel"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["bias"], want["bias"], rtol=1e-5, atol=1e-6)


def test_bias_is_excluded_from_weight_decay():
    params, grads = _problem()
    got, opt = _run(optim.MomentumSGD(LR, momentum=MU, weight_decay=WD), params, grads)
    decayed_bias = torch_sgd_reference(params, grads, LR, MU, WD)["bias"]
    plain_bias = torch_sgd_reference(params, grads, LR, MU, 0.0)["bias"]
    np.testing.assert_allclose(got["bias"], plain_bias, rtol=1e-5, atol=1e-6)
    assert not np.allclose(got["bias"], decayed_bias, rtol=1e-4)
    assert opt.excluded(opt._trainable_variables[1]) and not opt.excluded(
        opt._trainable_variables[0])


def test_exclude_1d_false_and_name_exclusion():
    params, grads = _problem()
    got, _ = _run(optim.MomentumSGD(LR, momentum=MU, weight_decay=WD, exclude_1d=False),
                  params, grads)
    want = torch_sgd_reference(params, grads, LR, MU, WD)  # everything decayed
    np.testing.assert_allclose(got["bias"], want["bias"], rtol=1e-5, atol=1e-6)
    got, _ = _run(optim.MomentumSGD(LR, momentum=MU, weight_decay=WD,
                                    exclude_from_weight_decay=["kernel"]), params, grads)
    want = torch_sgd_reference(params, grads, LR, MU, 0.0)  # nothing decayed
    np.testing.assert_allclose(got["kernel"], want["kernel"], rtol=1e-5, atol=1e-6)


def test_zero_momentum_is_plain_sgd():
    params, grads = _problem()
    got, opt = _run(optim.MomentumSGD(LR, momentum=0.0, weight_decay=WD), params, grads)
    want = torch_sgd_reference(params, grads, LR, 0.0, WD,
                               decay_mask={"kernel": True, "bias": False})
    np.testing.assert_allclose(got["kernel"], want["kernel"], rtol=1e-5, atol=1e-6)
    assert len(opt.variables) == 2  # iteration + learning rate: no buffers


def test_lars_one_step_trust_ratio_exact():
    params, grads = _problem(seed=1, steps=1)
    eta = 0.001
    got, _ = _run(optim.MomentumSGD(LR, momentum=MU, weight_decay=WD, lars=True, eta=eta),
                  params, grads)
    w = params["kernel"].astype(np.float64)
    g = grads[0]["kernel"] + WD * w
    trust = eta * np.linalg.norm(w) / np.linalg.norm(g)
    np.testing.assert_allclose(got["kernel"], w - LR * trust * g, rtol=1e-5, atol=1e-7)
    # The bias (1-D) gets neither decay nor LARS scaling: plain SGD step.
    np.testing.assert_allclose(got["bias"], params["bias"] - LR * grads[0]["bias"],
                               rtol=1e-6, atol=1e-7)


def test_lars_three_steps_match_reference():
    params, grads = _problem(seed=2)
    got, _ = _run(optim.MomentumSGD(LR, momentum=MU, weight_decay=WD, lars=True, eta=0.02),
                  params, grads, use_tf_function=True)
    want = torch_sgd_reference(params, grads, LR, MU, WD, lars_eta=0.02,
                               decay_mask={"kernel": True, "bias": False})
    for k in params:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-7)


def test_lars_zero_gradient_and_zero_weights_no_nan():
    zero = {"kernel": np.zeros((4, 3), np.float32), "bias": np.zeros(3, np.float32)}
    params, _ = _problem()
    # Zero gradient, no decay: ||g|| = 0 -> trust ratio 1 -> nothing moves.
    got, _ = _run(optim.MomentumSGD(LR, momentum=MU, weight_decay=0.0, lars=True),
                  params, [zero] * 2)
    for k in params:
        np.testing.assert_array_equal(got[k], params[k])
    # Zero weights: ||w|| = 0 -> trust ratio 1 -> plain SGD step, finite.
    _, grads = _problem(steps=1)
    got, _ = _run(optim.MomentumSGD(LR, momentum=MU, weight_decay=WD, lars=True), zero, grads)
    assert all(np.isfinite(v).all() for v in got.values())
    np.testing.assert_allclose(got["kernel"], -LR * grads[0]["kernel"], rtol=1e-6)


def test_learning_rate_schedule_is_used_per_step():
    params, grads = _problem()
    sched = schedules.WarmupCosine(LR, 10, 3)
    got, _ = _run(optim.MomentumSGD(sched, momentum=0.0), params, grads)
    lrs = [schedules.warmup_cosine_lr(s, LR, 10, 3) for s in range(3)]
    want = params["bias"] - sum(lr * g["bias"] for lr, g in zip(lrs, grads))
    np.testing.assert_allclose(got["bias"], want, rtol=1e-5, atol=1e-6)


def test_momentum_sgd_config_round_trip():
    opt = optim.MomentumSGD(schedules.WarmupCosine(0.3, 100, 10), momentum=0.95,
                            weight_decay=1e-4, nesterov=True, lars=True, eta=0.02,
                            exclude_1d=False, exclude_from_weight_decay=["bn"], name="opt")
    config = opt.get_config()
    assert config["weight_decay"] == 1e-4 and opt.weight_decay is None  # not decayed twice
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(opt))
    assert type(restored) is optim.MomentumSGD
    assert restored.get_config() == config
    assert isinstance(restored._learning_rate, schedules.WarmupCosine)


def test_adamw_excludes_1d_from_decay():
    lr, wd = 0.01, 0.5
    zero = {"kernel": np.zeros((4, 3), np.float32), "bias": np.zeros(3, np.float32)}
    params, _ = _problem()
    opt = optim.build_optimizer("adamw", lr, weight_decay=wd)
    assert isinstance(opt, keras.optimizers.AdamW)
    got, _ = _run(opt, params, [zero])
    np.testing.assert_array_equal(got["bias"], params["bias"])  # no grad, no decay
    np.testing.assert_allclose(got["kernel"], params["kernel"] * (1 - lr * wd), rtol=1e-6)


def test_adamw_config_round_trip():
    opt = optim.AdamW(0.001, weight_decay=0.05, exclude_from_weight_decay=["head"], beta_2=0.95)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(opt))
    assert type(restored) is optim.AdamW
    assert restored.get_config() == opt.get_config()


def test_build_optimizer_kinds():
    sgd = optim.build_optimizer("sgd", 1, weight_decay=1e-4, nesterov=True)
    lars = optim.build_optimizer("lars", 0.3, weight_decay=1e-6, lars_eta=0.02)
    assert isinstance(sgd, optim.MomentumSGD) and not sgd.lars and sgd.nesterov
    assert float(sgd.learning_rate) == 1.0
    assert isinstance(lars, optim.MomentumSGD) and lars.lars and lars.eta == 0.02
    with pytest.raises(UserError, match="sgd, lars, adamw"):
        optim.build_optimizer("adam", 0.1, weight_decay=0.0)
    with pytest.raises(UserError):
        optim.build_optimizer("sgd", -0.1, weight_decay=0.0)
    with pytest.raises(UserError):
        optim.build_optimizer("sgd", 0.1, weight_decay=-1e-4)
    with pytest.raises(UserError):
        optim.build_optimizer("sgd", 0.1, weight_decay=0.0, momentum=1.0)


def test_scaled_learning_rate():
    assert optim.scaled_learning_rate(0.3, 512) == pytest.approx(0.6)
    assert optim.scaled_learning_rate(0.3, 64) == pytest.approx(0.075)
    assert optim.scaled_learning_rate(0.1, 100, reference=50) == pytest.approx(0.2)
    with pytest.raises(UserError):
        optim.scaled_learning_rate(0.3, 0)
