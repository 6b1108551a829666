"""The one memory bank (queue) every queue-based method uses.

A fixed-shape ``[K, d]`` non-trainable variable plus an int pointer, read *before*
the step's enqueue, written with keys gathered from every replica so that all
replicas hold the same queue (after lightly's ``MemoryBankModule``).  Created with
``add_weight`` so that both ``tf.train.Checkpoint`` and Keras weight files hold it.
"""

import keras
import tensorflow as tf

from tfssl.errors import UserError


def check_queue_size(size, global_batch_size, flag="--queue_size"):
    """Raise :class:`UserError` unless ``size`` is a positive multiple of the batch.

    A queue that is a whole number of batches long makes every enqueue a contiguous
    block, so the queue never holds a half-overwritten batch and the pointer returns
    to 0 exactly every ``K / B`` steps (MoCo asserts the same).
    """
    if size <= 0 or size % global_batch_size:
        lower = max(global_batch_size, size // global_batch_size * global_batch_size)
        raise UserError(
            f"{flag}={size} must be a positive multiple of --global_batch_size="
            f"{global_batch_size}; use {lower} or {lower + global_batch_size}.")


@keras.saving.register_keras_serializable(package="tfssl")
class MemoryBank(keras.layers.Layer):
    """FIFO queue of L2-normalised keys, identical on every replica.

    Args:
      size: K, number of entries.
      dim: d, key dimension.
      seed: seed of the initial content (unit-norm Gaussian rows, as MoCo).
      stream: second half of that content's stateless seed (a method's second
        queue takes another, so the two do not start equal).
    """

    def __init__(self, size, dim, seed=0, stream=7919, **kwargs):
        super().__init__(**kwargs)
        self.size = int(size)
        self.dim = int(dim)
        self.seed = int(seed)
        self.stream = int(stream)

        def init(shape, dtype=None):
            x = tf.random.stateless_normal(shape, seed=[self.seed, self.stream])
            return tf.math.l2_normalize(x, axis=1)

        # ONLY_FIRST_REPLICA: every replica writes the same gathered keys; the first
        # replica's write is broadcast (TF_NOTES: SUM doubles the queue).
        self.queue = self.add_weight(
            shape=(self.size, self.dim), initializer=init, dtype="float32",
            trainable=False, autocast=False, aggregation="only_first_replica",
            name="queue")
        self.pointer = self.add_weight(
            shape=(), initializer="zeros", dtype="int32", trainable=False,
            autocast=False, aggregation="only_first_replica", name="pointer")

    def read(self):
        """``[K, d]`` snapshot of the queue, taken before this step's enqueue."""
        return tf.identity(tf.convert_to_tensor(self.queue))

    @staticmethod
    def gather(keys):
        """``keys`` ``[B_local, d]`` of every replica, ``[B_global, d]`` float32 in
        replica order, gradient stopped: the block :meth:`enqueue` writes."""
        keys = tf.stop_gradient(tf.cast(keys, tf.float32))
        context = tf.distribute.get_replica_context()
        if context is not None:
            rows, dim = keys.shape
            keys = context.all_gather(keys, axis=0)
            if not tf.executing_eagerly():  # all_gather drops the static shape
                replicas = context.num_replicas_in_sync
                keys.set_shape([None if rows is None else rows * replicas, dim])
        return keys

    def enqueue(self, keys, gathered=False):
        """Gathers ``keys`` ``[B_local, d]`` from all replicas and writes them.

        The gathered block is written at the pointer (wrapping around modulo K) and
        the pointer advances by the global batch size.  Gradient is stopped.  With
        ``gathered``, ``keys`` already is :meth:`gather`'s block.
        """
        if not gathered:
            keys = self.gather(keys)
        n = keys.shape[0]
        if n is not None and n > self.size:
            raise ValueError(f"cannot enqueue {n} keys into a queue of {self.size}")
        count = tf.shape(keys)[0]
        index = (self.pointer + tf.range(count)) % self.size
        self.queue.value.scatter_update(tf.IndexedSlices(keys, index))
        self.pointer.assign((self.pointer + count) % self.size)

    def get_config(self):
        return {**super().get_config(), "size": self.size, "dim": self.dim,
                "seed": self.seed, "stream": self.stream}
