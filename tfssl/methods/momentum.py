"""Online -> target (momentum / EMA) network pairs.

Targets are *copies*: built from the online model's config, then every weight is
assigned explicitly (``clone_model`` alone would give new random weights).  The
target's variables never reach the optimizer.
"""

import tensorflow as tf


def copy_model(online, name=None):
    """A new model with ``online``'s architecture and a copy of its weights."""
    config = online.get_config()
    config["name"] = name or f"target_{online.name}"
    target = online.__class__.from_config(config)
    if len(target.weights) != len(online.weights):
        raise ValueError(f"copy of {online.name} has {len(target.weights)} weights, "
                         f"expected {len(online.weights)}")
    for o, t in zip(online.weights, target.weights):
        if tuple(o.shape) != tuple(t.shape):
            raise ValueError(f"weight shape mismatch {o.path} {o.shape} vs "
                             f"{t.path} {t.shape}")
        t.assign(o)
    return target


class MomentumPair:
    """An online model and its EMA target.

    ``θ_t ← m·θ_t + (1−m)·θ`` for every trainable weight; with ``ema_bn`` also for
    the BatchNorm moving statistics (EMAN, Cai et al. 2021), and the method's
    momentum forwards then run BN in inference mode on them
    (``MomentumMethod.forward_target``).  Without it the target's BN runs in
    training mode on its own batch and keeps its own moving statistics.

    Args:
      online: a built ``keras.Model``.
      ema_bn: also average non-trainable weights (BN moving statistics).
    """

    def __init__(self, online, ema_bn=False):
        self.online = online
        self.target = copy_model(online)
        self.ema_bn = ema_bn
        pairs = list(zip(online.trainable_weights, self.target.trainable_weights))
        if ema_bn:
            pairs += zip(online.non_trainable_weights,
                         self.target.non_trainable_weights)
        self._pairs = pairs

    def update(self, momentum):
        """Moves the target towards the online weights with momentum ``m``."""
        m = tf.cast(momentum, tf.float32)
        for o, t in self._pairs:
            t.assign(m * t + (1.0 - m) * tf.cast(o, t.dtype))

    def reset(self):
        """Hard reset: the target becomes an exact copy of the online network."""
        for o, t in zip(self.online.weights, self.target.weights):
            t.assign(o)
