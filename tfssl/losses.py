"""Loss functions: pure functions of tensors, no state, no flags.

Every function computes in float32 (inputs are cast), returns the mean over the
local batch as a scalar, and documents the equation it implements. In-batch losses
read the replica context to take their negatives from the global batch.  Gradient
stopping of targets is done here, where the equation says ``sg``, so a caller
cannot forget it.
"""

import tensorflow as tf


def l2_normalize(x, axis=-1):
    """``x / max(||x||, 1e-12)`` along ``axis`` (float32), as ``F.normalize``."""
    return tf.math.l2_normalize(tf.cast(x, tf.float32), axis=axis, epsilon=1e-24)


def info_nce(query, positive, negatives, temperature):
    """InfoNCE against a bank of negatives (MoCo, He et al. 2020, eq. 1).

    ``L = -mean_i log( exp(q_i·k_i/τ) / (exp(q_i·k_i/τ) + Σ_j exp(q_i·n_j/τ)) )``

    Args:
      query: ``[B, d]``, L2-normalised.
      positive: ``[B, d]``, L2-normalised; gradient is stopped (it is a key).
      negatives: ``[K, d]``, L2-normalised (a queue); gradient is stopped.
      temperature: τ > 0.

    Returns:
      Scalar float32, the mean over the batch.
    """
    query = tf.cast(query, tf.float32)
    positive = tf.stop_gradient(tf.cast(positive, tf.float32))
    negatives = tf.stop_gradient(tf.cast(negatives, tf.float32))
    l_pos = tf.reduce_sum(query * positive, axis=-1, keepdims=True)  # [B, 1]
    l_neg = tf.matmul(query, negatives, transpose_b=True)  # [B, K]
    logits = tf.concat([l_pos, l_neg], axis=1) / temperature
    return tf.reduce_mean(tf.reduce_logsumexp(logits, axis=1) - logits[:, 0])


def info_nce_in_batch(query, keys, temperature, gradient="query"):
    """InfoNCE with in-batch negatives over the **global** batch.

    ``L = -mean_i log( exp(q_i·k_i/τ) / Σ_j exp(q_i·k_j/τ) )``, ``j`` over every
    row of the global batch: in a replica context with more than one replica the
    keys of all replicas are gathered (replica order) and the positive of local row
    ``i`` is global row ``r·B + i`` (``r`` the replica id, ``B`` the local batch).
    The value is the mean over the local rows, so with the base step's
    ``loss / replicas`` and summed gradients, value and gradient equal the
    one-device ones for any replica count (``all_gather``'s gradient returns each
    replica its keys' share).

    Args:
      query: ``[B, d]``, L2-normalised, or ``[..., B, d]``: several queries per key
        row (the loss is then the mean over all of them; the multi-network
        method's combined patch targets).
      keys: ``[B, d]``, L2-normalised (the local rows).
      temperature: τ > 0.
      gradient: the side the gradient flows to: ``"query"`` (keys stopped, as a
        momentum key; the default), ``"keys"`` (query stopped: the softmax side,
        over which the normaliser runs) or ``"both"``.

    Returns:
      Scalar float32.
    """
    if gradient not in ("query", "keys", "both"):
        raise ValueError(f"gradient must be query, keys or both; got {gradient!r}")
    query = tf.cast(query, tf.float32)
    keys = tf.cast(keys, tf.float32)
    if gradient == "query":
        keys = tf.stop_gradient(keys)
    elif gradient == "keys":
        query = tf.stop_gradient(query)
    rows = tf.shape(keys)[0]
    context = tf.distribute.get_replica_context()
    offset = 0
    if context is not None and context.num_replicas_in_sync > 1:
        offset = tf.cast(context.replica_id_in_sync_group, tf.int32) * rows
        keys = context.all_gather(keys, axis=0)
    if query.shape.rank != 2:
        query = tf.reshape(query, [-1, query.shape[-1]])  # [n·B, d]
    logits = tf.matmul(query, keys, transpose_b=True) / temperature  # [n·B, B_global]
    labels = offset + tf.tile(tf.range(rows), [tf.shape(query)[0] // rows])
    positive = tf.gather(logits, labels, axis=1, batch_dims=1)
    return tf.reduce_mean(tf.reduce_logsumexp(logits, axis=1) - positive)


def relation_ce(student_logits, teacher_logits, student_temperature,
                teacher_temperature):
    """Relational cross-entropy H(p_t, p_s) (ReSSL, eqs. 3-5).

    ``p_s = softmax(s/τs)``, ``p_t = softmax(sg(t)/τt)``,
    ``L = -mean_i Σ_k p_t[i,k] · log p_s[i,k]``.  This is ``KL(p_t || p_s)`` up to
    the teacher entropy ``H(p_t)``, a constant for the student (paper eq. 5).

    Args:
      student_logits: ``[B, K]`` similarities of the student to the K anchors.
      teacher_logits: ``[B, K]`` similarities of the teacher; gradient stopped.
      student_temperature: τs.
      teacher_temperature: τt (ReSSL requires τt < τs: a sharper target).

    Returns:
      Scalar float32.
    """
    s = tf.cast(student_logits, tf.float32) / student_temperature
    t = tf.stop_gradient(tf.cast(teacher_logits, tf.float32)) / teacher_temperature
    p_t = tf.nn.softmax(t, axis=-1)
    return tf.reduce_mean(-tf.reduce_sum(p_t * tf.nn.log_softmax(s, axis=-1), -1))


def byol_mse(prediction, target):
    """BYOL regression loss ``2 - 2·cos(p, sg(z))`` (Grill et al. 2020, eq. 2).

    Args:
      prediction: ``[B, d]`` online prediction (any norm).
      target: ``[B, d]`` target projection (any norm); gradient stopped.

    Returns:
      Scalar float32, in ``[0, 4]``.
    """
    p = l2_normalize(prediction)
    z = tf.stop_gradient(l2_normalize(target))
    return tf.reduce_mean(2.0 - 2.0 * tf.reduce_sum(p * z, axis=-1))


def entropy(logits, temperature):
    """Mean entropy (nats) of ``softmax(logits/τ)`` over the batch; ``[B, K]`` in."""
    logp = tf.nn.log_softmax(tf.cast(logits, tf.float32) / temperature, axis=-1)
    return tf.reduce_mean(-tf.reduce_sum(tf.exp(logp) * logp, axis=-1))
