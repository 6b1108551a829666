"""MoCo's shuffling BN (He et al. 2020, sec. 3.3) for a momentum (key) encoder.

With per-replica BN, the key encoder of a replica would normalise with the
statistics of exactly the examples whose queries that replica holds, which lets
the model "cheat" the pretext task through the batch statistics.  Shuffling BN
runs the key encoder on a random part of the global batch instead::

    X   = all_gather(x)                          [B_global, ...] (replica order)
    π   = permutation(B_global, seed)            identical on every replica
    c_r = X[π][r·B : (r+1)·B]                    this replica's chunk
    Y   = all_gather(fn(c_r))                    fn with local BN, [B_global, ...]
    out = Y[π⁻¹][r·B : (r+1)·B]                  this replica's rows, original order

``B`` is the local batch and ``r`` the replica id.  The permutation is a pure
function of the seed (the caller passes one made of ``(run seed, step)``), so every
replica draws the same one and a resumed run draws the same sequence.  It is
built from sorted stateless uniforms, not ``stateless_shuffle``, which has no XLA
kernel.
"""

import tensorflow as tf


def permutation(n, seed):
    """A permutation of ``range(n)``: int32 ``[n]``, a pure function of ``seed``.

    Args:
      n: length (Python int or scalar int tensor).
      seed: int ``[2]`` stateless seed.
    """
    keys = tf.random.stateless_uniform([n], seed=seed)
    return tf.argsort(keys, stable=True)


def _chunk(x, replica, size):
    """Rows ``[replica·size, (replica + 1)·size)`` of ``x``: ``[size, ...]``."""
    start = tf.cast(replica, tf.int32) * size
    return x[start:start + size]


def shuffled_apply(fn, x, seed):
    """``fn(x)`` with ``fn`` run on a shuffled chunk of the global batch.

    In a replica context with more than one replica, ``fn`` (the key encoder, BN
    in training mode, local statistics) sees ``B`` examples drawn from every
    replica by :func:`permutation`; the outputs are gathered back so that row
    ``i`` of the result is ``fn``'s output for row ``i`` of ``x``.  Otherwise it is
    ``fn(x)``.

    Args:
      fn: row-wise map ``[B, ...] -> out`` (batch statistics aside), where ``out``
        is a tensor or a nested structure (tuple, list, dict) of ``[B, ...]``
        tensors, e.g. LEWEL's global and aligned embeddings.
      x: local batch ``[B, ...]`` with a static ``B``, the same on every replica.
      seed: int ``[2]`` stateless seed, the same on every replica.

    Returns:
      ``fn``'s output for the local rows, every tensor ``[B, ...]`` in ``x``'s
      order, with ``fn``'s structure.
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return fn(x)
    size = x.shape[0]
    if size is None:
        raise ValueError("shuffled BN needs a static local batch size")
    replica = context.replica_id_in_sync_group
    everything = context.all_gather(x, axis=0)
    order = permutation(size * context.num_replicas_in_sync, seed)
    out = fn(_chunk(tf.gather(everything, order), replica, size))
    inverse = tf.math.invert_permutation(order)

    def restore(y):
        if y.shape.rank == 0 or y.shape[0] != size:
            raise ValueError(f"shuffled BN: every output of fn must have the batch's "
                             f"{size} rows first; got shape {y.shape}")
        return _chunk(tf.gather(context.all_gather(y, axis=0), inverse), replica,
                      size)

    return tf.nest.map_structure(restore, out)
