"""Keras ``BatchNormalization`` whose training pass runs TensorFlow's fused kernel.

Keras 3 computes a training-mode BN from separate ops (``Mean``,
``SquaredDifference``, the normalisation's ``Mul``/``Sub``/``Add`` and about twenty
more in the gradient). TensorFlow's ``FusedBatchNormV3`` does the forward in one
kernel and the backward in one ``FusedBatchNormGradV3``; under oneDNN the graph
optimiser also folds a following ReLU into it (``_FusedBatchNormEx``), which cuts
BN's op time in the ResNet-18 step (docs/BENCHMARKS.md, "Measurements behind design
decisions").

The layer is ``keras.layers.BatchNormalization`` in every other respect: the same
variables (checkpoints and SavedModels are interchangeable), the same moving-statistic
update (``moving = m * moving + (1 - m) * batch``, with the *biased* batch variance
as Keras 3 uses; the kernel's Bessel-corrected variance is scaled back), the same
float32 compute under mixed precision. It falls back to Keras' own ops for
inference, synchronised BN (the fused kernel cannot all-reduce moments), renorm,
masks, ranks other than 2 and 4, a channel axis other than the last, and backends
other than TensorFlow.

:func:`moving_statistics_frozen` makes training-mode calls normalise with their batch
statistics (the same output) but leave the moving statistics as they are: the
multi-network method runs the online network on half-size patches, whose statistics
must not replace those of full images that evaluation and export use.
"""

from __future__ import annotations

import contextlib
import threading

import keras
import tensorflow as tf
from keras import ops

_STATE = threading.local()


@contextlib.contextmanager
def moving_statistics_frozen(frozen: bool = True):
    """Inside (on this thread; MirroredStrategy traces each replica in its own),
    every :class:`BatchNormalization` called in training mode normalises with its
    batch statistics as usual but does not update its moving mean and variance.
    ``frozen=False`` is a no-op context."""
    previous = getattr(_STATE, "frozen", False)
    _STATE.frozen = previous or bool(frozen)
    try:
        yield
    finally:
        _STATE.frozen = previous


def statistics_frozen() -> bool:
    """Whether this thread is inside :func:`moving_statistics_frozen`."""
    return getattr(_STATE, "frozen", False)


@keras.saving.register_keras_serializable(package="tfssl")
class BatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` with a fused training kernel.

    Args:
        fused: use ``FusedBatchNormV3`` in training where it applies (see the
            module docstring); False is exactly Keras' layer.
        **kwargs: ``keras.layers.BatchNormalization``'s arguments.
    """

    def __init__(self, fused: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.fused = bool(fused)

    def _fused_applies(self, inputs, training, mask) -> bool:
        rank = len(inputs.shape)
        return (self.fused and bool(training) and self.trainable
                and not self.synchronized and not self.renorm and mask is None
                and rank in (2, 4) and self.axis in (-1, rank - 1)
                and keras.backend.backend() == "tensorflow")

    def call(self, inputs, training=None, mask=None):
        frozen = statistics_frozen() and bool(training) and self.trainable
        if frozen and not self._fused_applies(inputs, training, mask):
            return self._batch_statistics_call(inputs, mask)
        if not self._fused_applies(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        x = tf.cast(inputs, tf.float32)  # Keras upcasts float16 / bfloat16 as well
        flat = len(x.shape) == 2
        if flat:
            x = x[:, None, None, :]
        channels = x.shape[-1]
        gamma = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels])
        beta = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels])
        # The raw op, not tf.compat.v1.nn.fused_batch_norm: that wrapper raises
        # epsilon to 1.001e-5 (a cuDNN limit) and would change 1e-5.
        empty = tf.zeros([0], tf.float32)
        y, mean, variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=gamma, offset=beta, mean=empty, variance=empty,
            epsilon=self.epsilon, exponential_avg_factor=1.0, data_format="NHWC",
            is_training=True)
        # The kernel returns the unbiased variance n / (n - 1) * biased (n > 1).
        n = tf.cast(tf.size(x) // channels, tf.float32)
        variance = variance * tf.where(n > 1.0, (n - 1.0) / tf.maximum(n, 1.0), 1.0)
        if not frozen:
            m = self.momentum
            self.moving_mean.assign(
                tf.cast(self.moving_mean, tf.float32) * m + mean * (1.0 - m))
            self.moving_variance.assign(
                tf.cast(self.moving_variance, tf.float32) * m + variance * (1.0 - m))
        if flat:
            y = y[:, 0, 0, :]
        return tf.cast(y, self.compute_dtype)

    def _batch_statistics_call(self, inputs, mask):
        """Keras' training-mode computation without the moving-statistic update
        (synchronised moments included)."""
        if self.renorm:
            raise NotImplementedError(
                "moving_statistics_frozen does not support BN renormalisation.")
        x = ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
        mean, variance = self._moments(x, mask)
        gamma = ops.cast(self.gamma, x.dtype) if self.scale else None
        beta = ops.cast(self.beta, x.dtype) if self.center else None
        y = ops.batch_normalization(x=x, mean=mean, variance=variance, axis=self.axis,
                                    offset=beta, scale=gamma, epsilon=self.epsilon)
        return ops.cast(y, self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "fused": self.fused}
