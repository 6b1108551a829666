"""Optimizers: PyTorch-semantics SGD/LARS with coupled weight decay, and AdamW.

tensorflow-addons (which never had LARS) does not import with Keras 3, and Keras'
own ``SGD`` differs from ``torch.optim.SGD`` (lr inside the momentum buffer, only
decoupled weight decay), so the papers' recipes are reproduced here:

- :class:`MomentumSGD` — ``torch.optim.SGD`` with coupled weight decay and optional
  Nesterov momentum, plus optional LARS layer adaptation (SimCLR/BYOL/solo-learn).
- :class:`AdamW` — ``keras.optimizers.AdamW`` (decoupled decay ``w <- w - lr*wd*w``)
  that excludes 1-D variables (biases, BN gamma/beta) from the decay.
- :func:`build_optimizer` — the one factory the entry points call.

In both optimizers a variable is *excluded* when ``exclude_1d`` and ``ndim <= 1``,
or when one of the ``exclude_from_weight_decay`` substrings occurs in its
``variable.path`` (e.g. ``"dense/bias"``; Keras' own mechanism matches the short
``variable.name`` only). Excluded variables get neither weight decay nor LARS
adaptation (SimCLR's ``exclude_from_layer_adaptation`` defaults to the same list).
The exclusion is decided once, in ``build``, from the model variables; build the
optimizer explicitly on the online variables (``optimizer.build(online_vars)``).
"""

from __future__ import annotations

import numbers
from typing import Sequence

import keras
import tensorflow as tf

from tfssl.errors import UserError

__all__ = ["MomentumSGD", "AdamW", "build_optimizer", "scaled_learning_rate", "OPTIMIZERS"]

OPTIMIZERS = ("sgd", "lars", "adamw")


def _is_excluded(variable, exclude_1d: bool, names: Sequence[str]) -> bool:
    if exclude_1d and len(variable.shape) <= 1:
        return True
    path = getattr(variable, "path", None) or variable.name
    return any(n in path for n in names)


def _names(exclude_from_weight_decay) -> tuple[str, ...]:
    if exclude_from_weight_decay is None:
        return ()
    if isinstance(exclude_from_weight_decay, str):
        return (exclude_from_weight_decay,)
    return tuple(exclude_from_weight_decay)


@keras.saving.register_keras_serializable(package="tfssl")
class MomentumSGD(keras.optimizers.Optimizer):
    """SGD with momentum, coupled weight decay and optional LARS (torch semantics).

    Per variable ``w`` with gradient ``g``, learning rate ``lr``, momentum ``mu``,
    weight decay ``wd`` and momentum buffer ``v`` (zero-initialised)::

        if not excluded:  g <- g + wd * w                        (coupled decay)
        if lars and not excluded and ||w|| > 0 and ||g|| > 0:
                          g <- g * eta * ||w|| / ||g||            (trust ratio)
        v <- mu * v + g
        w <- w - lr * v                  (nesterov: w <- w - lr * (g + mu * v))

    This is ``torch.optim.SGD(momentum=mu, weight_decay=wd, dampening=0)`` and, with
    ``lars=True``, solo-learn's / BYOL's LARS (norms are Frobenius norms over the
    whole variable, taken after adding the decay). ``lr`` stays outside the
    buffer, unlike ``keras.optimizers.SGD``, so a change of lr acts at once.
    ``mu == 0`` keeps no buffer (``w <- w - lr * g``).

    Args:
        learning_rate: float or ``LearningRateSchedule``.
        momentum: ``mu`` in ``[0, 1)``.
        weight_decay: ``wd >= 0`` (coupled). The Keras base class is given
            ``weight_decay=None`` so it does not decay a second time; therefore
            ``self.weight_decay`` is ``None`` and the value lives in
            ``self.coupled_weight_decay`` (``get_config()["weight_decay"]``).
        nesterov: Nesterov momentum (needs ``momentum > 0``).
        lars: apply the LARS trust ratio.
        eta: LARS trust coefficient.
        exclude_1d: exclude variables with ``ndim <= 1`` from decay and LARS.
        exclude_from_weight_decay: substrings of ``variable.path`` to exclude too.
        **kwargs: ``keras.optimizers.Optimizer`` arguments (``name``, ``clipnorm``,
            ``global_clipnorm``, ``use_ema``, ...), except ``weight_decay``.
    """

    def __init__(self, learning_rate=0.1, momentum: float = 0.9, weight_decay: float = 0.0,
                 nesterov: bool = False, lars: bool = False, eta: float = 0.001,
                 exclude_1d: bool = True,
                 exclude_from_weight_decay: Sequence[str] | None = None, **kwargs):
        if isinstance(learning_rate, numbers.Real) and not isinstance(learning_rate, bool):
            learning_rate = float(learning_rate)
        super().__init__(learning_rate=learning_rate, weight_decay=None, **kwargs)
        if not 0.0 <= momentum < 1.0:
            raise UserError(f"momentum must be in [0, 1), got {momentum}")
        if weight_decay is None or weight_decay < 0:
            raise UserError(f"weight decay must be >= 0, got {weight_decay}")
        if nesterov and momentum == 0:
            raise UserError("nesterov momentum needs momentum > 0")
        if eta <= 0:
            raise UserError(f"LARS eta must be > 0, got {eta}")
        self.momentum = float(momentum)
        self.coupled_weight_decay = float(weight_decay)
        self.nesterov = bool(nesterov)
        self.lars = bool(lars)
        self.eta = float(eta)
        self.exclude_1d = bool(exclude_1d)
        self.exclude_names = _names(exclude_from_weight_decay)

    def build(self, var_list):
        """Creates one momentum buffer per variable and fixes the exclusion mask."""
        if self.built:
            return
        super().build(var_list)
        # Tuple (not list) so Keras' tracker leaves it alone; indexed like var_list.
        self._excluded = tuple(_is_excluded(v, self.exclude_1d, self.exclude_names)
                               for v in var_list)
        self.momentums = []
        if self.momentum > 0:
            self.momentums = [self.add_variable_from_reference(v, name="momentum")
                              for v in var_list]

    def excluded(self, variable) -> bool:
        """Whether ``variable`` (one the optimizer was built on) skips decay and LARS."""
        return self._excluded[self._get_variable_index(variable)]

    def update_step(self, gradient, variable, learning_rate):
        """One update of ``variable`` (see the class docstring for the formula)."""
        index = self._get_variable_index(variable)
        dtype = variable.dtype
        lr = tf.cast(learning_rate, dtype)
        g = tf.cast(tf.convert_to_tensor(gradient), dtype)
        if not self._excluded[index]:
            w = tf.convert_to_tensor(variable)
            if self.coupled_weight_decay > 0:
                g = g + tf.cast(self.coupled_weight_decay, dtype) * w
            if self.lars:
                w_norm = tf.norm(w)
                g_norm = tf.norm(g)
                ok = tf.logical_and(w_norm > 0, g_norm > 0)
                safe_g_norm = tf.where(ok, g_norm, tf.ones_like(g_norm))
                trust = tf.where(ok, tf.cast(self.eta, dtype) * w_norm / safe_g_norm,
                                 tf.ones_like(g_norm))
                g = g * trust
        if self.momentum > 0:
            v = self.momentums[index]
            mu = tf.cast(self.momentum, dtype)
            new_v = mu * tf.convert_to_tensor(v) + g
            self.assign(v, new_v)
            step = g + mu * new_v if self.nesterov else new_v
        else:
            step = g
        self.assign_sub(variable, lr * step)

    def get_config(self):
        config = super().get_config()
        config.update({
            "momentum": self.momentum,
            "weight_decay": self.coupled_weight_decay,
            "nesterov": self.nesterov,
            "lars": self.lars,
            "eta": self.eta,
            "exclude_1d": self.exclude_1d,
            "exclude_from_weight_decay": list(self.exclude_names),
        })
        return config


@keras.saving.register_keras_serializable(package="tfssl")
class AdamW(keras.optimizers.AdamW):
    """``keras.optimizers.AdamW`` whose decoupled decay skips 1-D variables.

    Keras AdamW applies ``w <- w - lr * wd * w`` before the Adam step; here the
    variables selected as in the module docstring (``ndim <= 1`` if ``exclude_1d``,
    or ``exclude_from_weight_decay`` substrings of ``variable.path``) are handed to
    Keras' ``exclude_from_weight_decay(var_list=...)`` at ``build`` time, so they
    get the Adam step only.

    Args:
        learning_rate, weight_decay, beta_1, beta_2, epsilon, **kwargs: as in
            ``keras.optimizers.AdamW``.
        exclude_1d: exclude variables with ``ndim <= 1`` from the decay.
        exclude_from_weight_decay: substrings of ``variable.path`` to exclude too.
    """

    def __init__(self, learning_rate=0.001, weight_decay: float = 0.004, exclude_1d: bool = True,
                 exclude_from_weight_decay: Sequence[str] | None = None, **kwargs):
        if isinstance(learning_rate, numbers.Real) and not isinstance(learning_rate, bool):
            learning_rate = float(learning_rate)
        super().__init__(learning_rate=learning_rate, weight_decay=float(weight_decay), **kwargs)
        self.exclude_1d = bool(exclude_1d)
        self.exclude_names = _names(exclude_from_weight_decay)

    def build(self, var_list):
        if self.built:
            return
        excluded = [v for v in var_list if _is_excluded(v, self.exclude_1d, self.exclude_names)]
        # Keep anything excluded through Keras' own API before build.
        previous = getattr(self, "_exclude_from_weight_decay", set())
        pattern = getattr(self, "_exclude_from_weight_decay_pattern", None)
        self.exclude_from_weight_decay(var_list=excluded)
        self._exclude_from_weight_decay = set(self._exclude_from_weight_decay) | set(previous)
        self._exclude_from_weight_decay_pattern = pattern
        super().build(var_list)

    def get_config(self):
        config = super().get_config()
        config.update({"exclude_1d": self.exclude_1d,
                       "exclude_from_weight_decay": list(self.exclude_names)})
        return config


def build_optimizer(name: str, learning_rate, *, weight_decay: float, momentum: float = 0.9,
                    nesterov: bool = False, lars_eta: float = 0.001, beta_1: float = 0.9,
                    beta_2: float = 0.999) -> keras.optimizers.Optimizer:
    """The optimizer named ``name``; 1-D variables never get decay or LARS.

    - ``"sgd"``: :class:`MomentumSGD` (coupled ``weight_decay``, ``momentum``, ``nesterov``).
    - ``"lars"``: :class:`MomentumSGD` with ``lars=True, eta=lars_eta``.
    - ``"adamw"``: :class:`AdamW` (decoupled ``weight_decay``, ``beta_1``, ``beta_2``).

    Args:
        name: one of :data:`OPTIMIZERS`.
        learning_rate: number or ``LearningRateSchedule`` (already batch-scaled, see
            :func:`scaled_learning_rate`).
        weight_decay: ``>= 0``.

    Raises:
        UserError: unknown ``name`` (message lists the known ones), negative learning
            rate or weight decay, momentum outside ``[0, 1)``.
    """
    if name not in OPTIMIZERS:
        raise UserError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")
    if isinstance(learning_rate, numbers.Real):
        if learning_rate < 0:
            raise UserError(f"learning rate must be >= 0, got {learning_rate}")
        learning_rate = float(learning_rate)
    if weight_decay < 0:
        raise UserError(f"weight decay must be >= 0, got {weight_decay}")
    if name == "adamw":
        return AdamW(learning_rate=learning_rate, weight_decay=weight_decay,
                     beta_1=beta_1, beta_2=beta_2)
    return MomentumSGD(learning_rate=learning_rate, momentum=momentum,
                       weight_decay=weight_decay, nesterov=nesterov,
                       lars=(name == "lars"), eta=lars_eta)


def scaled_learning_rate(base_lr: float, global_batch_size: int, reference: int = 256) -> float:
    """Linear scaling rule (Goyal et al. 2017): ``lr = base_lr * B / reference``.

    Callers log both the base and the effective value (STYLE point 5).
    """
    if global_batch_size <= 0 or reference <= 0:
        raise UserError(f"batch sizes must be > 0, got global_batch_size={global_batch_size}, "
                        f"reference={reference}")
    if base_lr < 0:
        raise UserError(f"learning rate must be >= 0, got {base_lr}")
    return float(base_lr) * global_batch_size / reference
