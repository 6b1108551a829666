"""Mixed precision (``--mixed_precision``): the Keras dtype policy and loss scaling.

Layers built under a mixed policy keep float32 variables and compute in float16 or
bfloat16; the policy is read when a layer is created, so it only has to be in
force while the model is built.  :func:`dtype_policy` sets it for that time and
restores the previous global policy afterwards (nothing leaks into later models).
float16 needs dynamic loss scaling against gradient underflow
(:func:`loss_scaled`, :func:`shared_overflow`); bfloat16 has float32's exponent
range and does not.
"""

import contextlib

import keras
import tensorflow as tf

#: ``--mixed_precision`` value -> Keras dtype policy name.
POLICIES = {"none": "float32", "mixed_float16": "mixed_float16",
            "mixed_bfloat16": "mixed_bfloat16"}


@contextlib.contextmanager
def dtype_policy(mixed_precision):
    """Global Keras dtype policy of ``--mixed_precision`` inside the block."""
    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy(POLICIES[mixed_precision])
    try:
        yield
    finally:
        keras.mixed_precision.set_dtype_policy(previous)


def loss_scaled(optimizer, mixed_precision):
    """``optimizer`` in a dynamic ``LossScaleOptimizer`` for ``mixed_float16``.

    The step multiplies the loss by ``optimizer.scale_loss`` and the wrapper divides
    the gradients by the scale again; a step with non-finite gradients is skipped
    (the scale halves; it doubles after 2000 finite steps).  Other policies get the
    optimizer itself.
    """
    if mixed_precision == "mixed_float16":
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def shared_overflow(grads):
    """``grads`` (local, list) made NaN on every replica when any replica's are not
    finite; identity with one replica.

    ``LossScaleOptimizer`` decides whether to skip a step from the gradients before
    their cross-replica sum (under ``MirroredStrategy``: the first replica's), so an
    overflow on another replica alone would be applied and turn every weight into
    NaN.  One scalar all-reduce (the number of replicas with non-finite gradients)
    makes the skip global.
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return grads
    finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g))
                            for g in grads if g is not None])
    overflows = context.all_reduce(tf.distribute.ReduceOp.SUM,
                                   1.0 - tf.cast(finite, tf.float32))
    poison = tf.where(overflows > 0, float("nan"), 0.0)
    return [None if g is None else g + tf.cast(poison, g.dtype) for g in grads]
