"""Table tests of exact schedule values (python path), and python == tensor path."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfssl import schedules
from tfssl.errors import UserError

BASE, TOTAL, WARM, END = 0.4, 100, 10, 0.004


def _cos_lr(s):
    return END + (BASE - END) * (1 + math.cos(math.pi * (s - WARM) / (TOTAL - WARM))) / 2


WARMUP_COSINE_TABLE = [
    (0, BASE * 1 / WARM),          # step 0 trains: (s + 1) / W
    (4, BASE * 5 / WARM),
    (WARM - 1, BASE),              # last warm-up step reaches base_lr
    (WARM, BASE),                  # cosine starts at base_lr
    (55, (BASE + END) / 2),        # midpoint of the cosine part
    (TOTAL - 1, _cos_lr(TOTAL - 1)),
    (TOTAL, END),
    (TOTAL + 5, END),
]


@pytest.mark.parametrize("step,expected", WARMUP_COSINE_TABLE)
def test_warmup_cosine_table(step, expected):
    got = schedules.warmup_cosine_lr(step, BASE, TOTAL, WARM, END)
    assert isinstance(got, float)
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_warmup_cosine_last_step_close_to_end_and_monotone():
    lrs = [schedules.warmup_cosine_lr(s, BASE, TOTAL, WARM, END) for s in range(TOTAL + 3)]
    assert END < lrs[TOTAL - 1] < END + 1e-3
    assert all(a <= b for a, b in zip(lrs[:WARM], lrs[1:WARM]))
    assert all(a >= b for a, b in zip(lrs[WARM:], lrs[WARM + 1:]))


def test_warmup_cosine_no_warmup():
    assert schedules.warmup_cosine_lr(0, 1.0, 10, 0) == pytest.approx(1.0)
    assert schedules.warmup_cosine_lr(5, 1.0, 10, 0) == pytest.approx(0.5)
    assert schedules.warmup_cosine_lr(10, 1.0, 10, 0) == 0.0


@pytest.mark.parametrize("total,warm", [(0, 0), (10, 11), (10, -1)])
def test_warmup_cosine_rejects_bad_steps(total, warm):
    with pytest.raises(UserError):
        schedules.warmup_cosine_lr(0, 0.1, total, warm)


STEP_LR_TABLE = [(0, 0.1), (59, 0.1), (60, 0.01), (79, 0.01), (80, 0.001), (500, 0.001)]


@pytest.mark.parametrize("step,expected", STEP_LR_TABLE)
def test_step_lr_table(step, expected):
    assert schedules.step_lr(step, 0.1, (60, 80)) == pytest.approx(expected, rel=1e-12)


def test_step_lr_rejects_unsorted_boundaries():
    with pytest.raises(UserError):
        schedules.step_lr(0, 0.1, (80, 60))


M0 = 0.99
COSINE_MOMENTUM_TABLE = [
    (0, M0),
    (50, (1 + M0) / 2),
    (25, 1 - (1 - M0) * (math.cos(math.pi / 4) + 1) / 2),
    (100, 1.0),
    (150, 1.0),
]


@pytest.mark.parametrize("step,expected", COSINE_MOMENTUM_TABLE)
def test_cosine_momentum_table(step, expected):
    assert schedules.cosine_momentum(step, M0, 100) == pytest.approx(expected, rel=1e-12)


def test_cosine_momentum_exactly_one_at_end():
    assert schedules.cosine_momentum(100, M0, 100) == 1.0
    assert float(schedules.cosine_momentum(tf.constant(100, tf.int64), M0, 100)) == 1.0


LINEAR_RAMP_TABLE = [(0, 1.0), (50, 0.995), (100, 0.99), (1000, 0.99)]


@pytest.mark.parametrize("step,expected", LINEAR_RAMP_TABLE)
def test_linear_ramp_table(step, expected):
    assert schedules.linear_ramp(step, 1.0, 0.99, 100) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("step,warm,expected",
                         [(0, 10, 0.0), (5, 10, 0.5), (10, 10, 1.0), (99, 10, 1.0),
                          (0, 0, 1.0), (7, 0, 1.0)])
def test_warmup_weight_table(step, warm, expected):
    assert schedules.warmup_weight(step, warm) == expected


def test_constant():
    assert schedules.constant(123, 0.996) == 0.996
    got = schedules.constant(tf.constant([1, 2], tf.int64), 0.996)
    assert got.dtype == tf.float32 and got.shape == (2,)
    np.testing.assert_allclose(got.numpy(), [0.996, 0.996])


STEPS = [0, 1, 4, 9, 10, 11, 33, 55, 98, 99, 100, 105, 1000]
FUNCTIONS = {
    "warmup_cosine": lambda s: schedules.warmup_cosine_lr(s, BASE, TOTAL, WARM, END),
    "warmup_cosine_nowarm": lambda s: schedules.warmup_cosine_lr(s, BASE, TOTAL, 0),
    "step_lr": lambda s: schedules.step_lr(s, 0.1, (10, 55)),
    "cosine_momentum": lambda s: schedules.cosine_momentum(s, M0, TOTAL),
    "constant": lambda s: schedules.constant(s, 0.9),
    "linear_ramp": lambda s: schedules.linear_ramp(s, 1.0, 0.99, TOTAL),
    "warmup_weight": lambda s: schedules.warmup_weight(s, WARM),
    "warmup_weight_zero": lambda s: schedules.warmup_weight(s, 0),
}


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_python_and_tensor_paths_agree(name):
    fn = FUNCTIONS[name]
    expected = np.array([fn(s) for s in STEPS])
    # Eager, vector of int64 steps.
    eager = fn(tf.constant(STEPS, tf.int64))
    assert eager.dtype == tf.float32 and eager.shape == (len(STEPS),)
    np.testing.assert_allclose(eager.numpy(), expected, rtol=1e-6, atol=1e-7)
    # Inside tf.function, one scalar int64 step at a time (a traced step variable).
    step_var = tf.Variable(0, dtype=tf.int64)
    traced = tf.function(lambda: fn(step_var))
    for s, e in zip(STEPS, expected):
        step_var.assign(s)
        out = traced()
        assert out.dtype == tf.float32 and out.shape == ()
        assert float(out) == pytest.approx(e, rel=1e-6, abs=1e-7)


def test_momentum_schedule():
    cos = schedules.momentum_schedule("cosine", M0, 100)
    const = schedules.momentum_schedule("constant", M0, 100)
    assert cos(50) == pytest.approx((1 + M0) / 2)
    assert const(50) == M0
    assert float(cos(tf.constant(100, tf.int64))) == 1.0
    with pytest.raises(UserError, match="constant, cosine"):
        schedules.momentum_schedule("linear", M0, 100)
    with pytest.raises(UserError):
        schedules.momentum_schedule("constant", 1.5, 100)


@pytest.mark.parametrize("schedule,fn", [
    (schedules.WarmupCosine(BASE, TOTAL, WARM, END),
     lambda s: schedules.warmup_cosine_lr(s, BASE, TOTAL, WARM, END)),
    (schedules.StepDecay(0.1, [10, 55], factor=0.5),
     lambda s: schedules.step_lr(s, 0.1, (10, 55), 0.5)),
])
def test_keras_schedules_match_functions_and_round_trip(schedule, fn):
    for s in (0, WARM - 1, WARM, 55, TOTAL, TOTAL + 5):
        assert float(schedule(tf.constant(s, tf.int64))) == pytest.approx(fn(s), rel=1e-6)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert type(restored) is type(schedule)
    assert restored.get_config() == schedule.get_config()


def test_keras_schedule_drives_an_optimizer():
    sched = schedules.WarmupCosine(1.0, 10, 2)
    opt = keras.optimizers.SGD(learning_rate=sched)
    var = keras.Variable(np.zeros(2, np.float32))
    seen = []
    for _ in range(3):
        seen.append(float(opt.learning_rate))
        opt.apply_gradients([(tf.ones(2), var)])
    expected = [schedules.warmup_cosine_lr(s, 1.0, 10, 2) for s in range(3)]
    np.testing.assert_allclose(seen, expected, rtol=1e-6)  # 0.5, 1.0, 1.0
