"""Pure schedule functions of the training step, and the Keras LR schedules.

Every function takes the global optimizer step ``step`` (0 for the first update)
and works on two kinds of input:

- a Python number (``int``/``float``/numpy scalar): the result is a Python ``float``;
- anything else (a ``tf.Tensor`` of any integer or float dtype, an ``int64`` step
  variable, a numpy array): the result is a ``float32`` tensor of the same shape as
  ``step`` (the functions are element-wise), usable inside ``tf.function``.

The two paths compute the same formula (the tensor path in float32, so steps above
2**24 lose integer precision — irrelevant at our scale). Hyper-parameters
(``base_lr``, ``total_steps``, ...) are Python numbers; invalid ones raise
:class:`tfssl.errors.UserError`.

Who uses what: ``warmup_cosine_lr`` (pretraining LR), ``step_lr`` (linear probe,
x0.1 at epochs 60 and 80), ``cosine_momentum``/``constant`` (EMA momentum,
``docs/METHODS.md`` "Shared machinery"), ``linear_ramp`` (SMoG's beta 1.0 -> 0.99),
``warmup_weight`` (ReSSL's alpha warm-up).
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, Sequence

import keras
import tensorflow as tf

from tfssl.errors import UserError

__all__ = [
    "warmup_cosine_lr",
    "step_lr",
    "cosine_momentum",
    "constant",
    "linear_ramp",
    "warmup_weight",
    "momentum_schedule",
    "MOMENTUM_SCHEDULES",
    "WarmupCosine",
    "StepDecay",
]

MOMENTUM_SCHEDULES = ("constant", "cosine")


def _is_python(step) -> bool:
    return isinstance(step, numbers.Real) and not isinstance(step, bool)


def _as_float_tensor(step) -> tf.Tensor:
    return tf.cast(tf.convert_to_tensor(step), tf.float32)


def _check_nonneg_int(name: str, value) -> None:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 0:
        raise UserError(f"{name} must be an integer >= 0, got {value!r}")


def warmup_cosine_lr(step, base_lr: float, total_steps: int, warmup_steps: int,
                     end_lr: float = 0.0):
    """Linear warm-up followed by a half-cosine decay, constant after ``total_steps``.

    With ``s = step``, ``W = warmup_steps``, ``T = total_steps``::

        s <  W:      lr = base_lr * (s + 1) / W
        W <= s < T:  lr = end_lr + (base_lr - end_lr) * (1 + cos(pi * (s - W) / (T - W))) / 2
        s >= T:      lr = end_lr

    Warm-up uses ``(s + 1) / W`` (not ``s / W``) so that step 0 already trains
    (lr = base_lr / W) and the last warm-up step ``W - 1`` reaches ``base_lr``; step
    ``W`` is the start of the cosine and is also ``base_lr``. The cosine divides by
    ``T - W`` (MoCo's ``0.5 * (1 + cos(pi * epoch / epochs))``), so it reaches
    ``end_lr`` exactly at ``s = T`` and is continuous there; step ``T - 1`` is
    slightly above ``end_lr``.

    Args:
        step: optimizer step, Python number or integer/float tensor (any shape).
        base_lr: peak learning rate.
        total_steps: ``T`` > 0, total number of optimizer steps.
        warmup_steps: ``W`` in ``[0, T]``; 0 disables warm-up.
        end_lr: final learning rate.

    Returns:
        Python float, or float32 tensor with the shape of ``step``.
    """
    _check_nonneg_int("total_steps", total_steps)
    _check_nonneg_int("warmup_steps", warmup_steps)
    if total_steps == 0 or warmup_steps > total_steps:
        raise UserError(
            f"need 0 <= warmup_steps <= total_steps and total_steps > 0, got "
            f"warmup_steps={warmup_steps}, total_steps={total_steps}")
    decay_steps = max(total_steps - warmup_steps, 1)
    if _is_python(step):
        if step < warmup_steps:
            return float(base_lr) * (step + 1) / warmup_steps
        if step >= total_steps:
            return float(end_lr)
        cos = (1.0 + math.cos(math.pi * (step - warmup_steps) / decay_steps)) / 2.0
        return float(end_lr) + (float(base_lr) - float(end_lr)) * cos
    s = _as_float_tensor(step)
    base = tf.constant(base_lr, tf.float32)
    end = tf.constant(end_lr, tf.float32)
    warm = base * (s + 1.0) / float(max(warmup_steps, 1))
    progress = tf.clip_by_value((s - float(warmup_steps)) / float(decay_steps), 0.0, 1.0)
    cos = end + (base - end) * (1.0 + tf.cos(math.pi * progress)) / 2.0
    lr = tf.where(s < float(warmup_steps), warm, cos)
    return tf.where(s >= float(total_steps), end * tf.ones_like(s), lr)


def step_lr(step, base_lr: float, boundaries: Sequence[int], factor: float = 0.1):
    """Piecewise-constant decay: multiply by ``factor`` at every boundary passed.

    ``lr = base_lr * factor ** n`` with ``n = #{b in boundaries : step >= b}``; e.g.
    the linear probe's x0.1 at epochs 60 and 80 uses
    ``boundaries = (60 * steps_per_epoch, 80 * steps_per_epoch)``.

    Args:
        step: optimizer step, Python number or tensor (any shape).
        base_lr: learning rate before the first boundary.
        boundaries: increasing step indices at which the decay applies.
        factor: multiplicative decay per boundary.

    Returns:
        Python float, or float32 tensor with the shape of ``step``.
    """
    boundaries = tuple(boundaries)
    if any(b1 >= b2 for b1, b2 in zip(boundaries, boundaries[1:])):
        raise UserError(f"step_lr boundaries must be strictly increasing, got {boundaries}")
    if _is_python(step):
        n = sum(1 for b in boundaries if step >= b)
        return float(base_lr) * float(factor) ** n
    s = _as_float_tensor(step)
    n = tf.zeros_like(s)
    for b in boundaries:
        n += tf.cast(s >= float(b), tf.float32)
    return tf.constant(base_lr, tf.float32) * tf.pow(tf.constant(factor, tf.float32), n)


def cosine_momentum(step, base: float, total_steps: int):
    """EMA momentum increased from ``base`` to 1 along a half cosine (BYOL).

    ``m = 1 - (1 - base) * (cos(pi * min(step, T) / T) + 1) / 2`` with
    ``T = total_steps``: ``m(0) = base``, ``m(T/2) = (1 + base) / 2``, and
    ``m = 1`` for ``step >= T`` (clamped, exactly 1).

    Args:
        step: optimizer step, Python number or tensor (any shape).
        base: ``m0``, momentum at step 0, in ``[0, 1]``.
        total_steps: ``T`` > 0.

    Returns:
        Python float, or float32 tensor with the shape of ``step``.
    """
    _check_nonneg_int("total_steps", total_steps)
    if total_steps == 0:
        raise UserError("cosine momentum needs total_steps > 0")
    if _is_python(step):
        if step >= total_steps:
            return 1.0
        return 1.0 - (1.0 - float(base)) * (math.cos(math.pi * step / total_steps) + 1.0) / 2.0
    s = _as_float_tensor(step)
    progress = tf.minimum(s / float(total_steps), 1.0)
    m = 1.0 - (1.0 - tf.constant(base, tf.float32)) * (tf.cos(math.pi * progress) + 1.0) / 2.0
    return tf.where(s >= float(total_steps), tf.ones_like(s), m)


def constant(step, value: float):
    """``value`` at every step (``m = m0`` for a constant EMA momentum).

    Returns:
        Python float, or float32 tensor with the shape of ``step`` filled with ``value``.
    """
    if _is_python(step):
        return float(value)
    return tf.ones_like(_as_float_tensor(step)) * tf.constant(value, tf.float32)


def linear_ramp(step, start: float, end: float, total_steps: int):
    """Linear interpolation from ``start`` to ``end``, clamped at ``end``.

    ``v = start + (end - start) * min(step / T, 1)`` with ``T = total_steps``;
    ``T == 0`` gives ``end`` at every step. Used for SMoG's group-feature momentum
    beta: 1.0 -> 0.99.

    Returns:
        Python float, or float32 tensor with the shape of ``step``.
    """
    _check_nonneg_int("total_steps", total_steps)
    if _is_python(step):
        frac = 1.0 if total_steps == 0 else min(max(step / total_steps, 0.0), 1.0)
        return float(start) + (float(end) - float(start)) * frac
    s = _as_float_tensor(step)
    if total_steps == 0:
        frac = tf.ones_like(s)
    else:
        frac = tf.clip_by_value(s / float(total_steps), 0.0, 1.0)
    start_t = tf.constant(start, tf.float32)
    return start_t + (tf.constant(end, tf.float32) - start_t) * frac


def warmup_weight(step, warmup_steps: int):
    """Loss-weight warm-up ``w = min(step / warmup_steps, 1)``; ``w = 1`` if ``warmup_steps == 0``.

    Note ``step / W`` (not ``(step + 1) / W``): the weighted term is off at step 0.
    Used for ReSSL's alpha.

    Returns:
        Python float, or float32 tensor with the shape of ``step``.
    """
    _check_nonneg_int("warmup_steps", warmup_steps)
    return linear_ramp(step, 0.0, 1.0, warmup_steps)


def momentum_schedule(kind: str, base: float, total_steps: int) -> Callable:
    """The EMA momentum schedule ``step -> m`` named by ``kind``.

    Args:
        kind: ``"constant"`` (``m = base``) or ``"cosine"`` (:func:`cosine_momentum`).
        base: ``m0`` in ``[0, 1]``.
        total_steps: total optimizer steps (used by ``"cosine"``).

    Returns:
        A function of the step (Python number or tensor) returning ``m`` as in the
        module docstring.

    Raises:
        UserError: unknown ``kind`` (the message lists the known ones), ``base``
            outside ``[0, 1]``, or ``total_steps <= 0`` for ``"cosine"``.
    """
    if kind not in MOMENTUM_SCHEDULES:
        raise UserError(
            f"unknown momentum schedule {kind!r}; known: {', '.join(MOMENTUM_SCHEDULES)}")
    if not 0.0 <= base <= 1.0:
        raise UserError(f"EMA momentum must be in [0, 1], got {base}")
    if kind == "constant":
        return lambda step: constant(step, base)
    _check_nonneg_int("total_steps", total_steps)
    if total_steps == 0:
        raise UserError("cosine momentum schedule needs total_steps > 0")
    return lambda step: cosine_momentum(step, base, total_steps)


@keras.saving.register_keras_serializable(package="tfssl")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Keras LR schedule wrapping :func:`warmup_cosine_lr` (formula there).

    Args:
        base_lr: peak learning rate (already batch-scaled if the run scales it).
        total_steps: total optimizer steps.
        warmup_steps: warm-up steps (0 for none).
        end_lr: final learning rate.
        name: optional name.
    """

    def __init__(self, base_lr: float, total_steps: int, warmup_steps: int,
                 end_lr: float = 0.0, name: str | None = None):
        super().__init__()
        warmup_cosine_lr(0, base_lr, total_steps, warmup_steps, end_lr)  # validates
        self.base_lr = float(base_lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.end_lr = float(end_lr)
        self.name = name

    def __call__(self, step):
        return warmup_cosine_lr(tf.convert_to_tensor(step), self.base_lr, self.total_steps,
                                self.warmup_steps, self.end_lr)

    def get_config(self):
        return {"base_lr": self.base_lr, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "end_lr": self.end_lr, "name": self.name}


@keras.saving.register_keras_serializable(package="tfssl")
class StepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Keras LR schedule wrapping :func:`step_lr` (formula there).

    Args:
        base_lr: learning rate before the first boundary.
        boundaries: increasing optimizer steps at which lr is multiplied by ``factor``.
        factor: decay factor per boundary.
        name: optional name.
    """

    def __init__(self, base_lr: float, boundaries: Sequence[int], factor: float = 0.1,
                 name: str | None = None):
        super().__init__()
        self.base_lr = float(base_lr)
        self.boundaries = [int(b) for b in boundaries]
        self.factor = float(factor)
        self.name = name
        step_lr(0, self.base_lr, self.boundaries, self.factor)  # validates

    def __call__(self, step):
        return step_lr(tf.convert_to_tensor(step), self.base_lr, self.boundaries, self.factor)

    def get_config(self):
        return {"base_lr": self.base_lr, "boundaries": list(self.boundaries),
                "factor": self.factor, "name": self.name}
