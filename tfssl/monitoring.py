"""What a run shows in TensorBoard beyond the per-step scalars.

* :func:`embedding_std` — the collapse indicator of SimSiam (Chen & He 2021, §4.1):
  the per-dimension standard deviation over the batch of L2-normalised embeddings,
  averaged over dimensions. A collapsed representation gives 0; embeddings spread
  uniformly on the sphere give about ``1/sqrt(d)``.
* :func:`rankme` — RankMe (Garrido et al. 2023), the effective rank of a feature
  matrix: a label-free quality signal (a representation that uses few directions
  scores low), logged for a fixed batch of images during training.
* :func:`write_view_grid` — each view recipe's augmented samples at the start.
* :func:`write_images` — a method's first-batch pictures (ReCo's mixed images).
* :func:`write_method_summaries` — a method's own extras (``model.summaries()``).
* :func:`export_projector` — test-set features for TensorBoard's projector.
"""

import os

import numpy as np
import tensorflow as tf


def embedding_std(z):
    """Collapse indicator of ``z`` ``[B_local, d]``: ``mean_d std_B(norm(z))``.

    Two passes over sums all-reduced across replicas (mean, then squared
    deviations; no gradient), so it reads the same on one device and on N replicas
    (the per-replica std averaged over replicas would not) and does not suffer the
    cancellation of ``E[z²] − E[z]²`` near collapse.
    """
    z = tf.math.l2_normalize(tf.stop_gradient(tf.cast(z, tf.float32)), axis=-1)
    n = _sum_over_replicas(tf.cast(tf.shape(z)[0], tf.float32))
    mean = _sum_over_replicas(tf.reduce_sum(z, 0)) / n
    var = _sum_over_replicas(tf.reduce_sum(tf.square(z - mean), 0)) / n
    return tf.reduce_mean(tf.sqrt(var))


def rankme(features, eps=1e-7):
    """RankMe of ``features`` ``[N, C]``: ``exp(-Σ_k p_k log p_k)`` with ``p_k =
    σ_k / Σ_j σ_j + ε`` over the singular values ``σ`` (Garrido et al. 2023, eq. 1).

    Between 1 and ``min(N, C)``; a matrix with ``r`` equal non-zero singular values
    scores ``r``. float32 scalar (computed in float64).
    """
    s = tf.linalg.svd(tf.cast(features, tf.float64), compute_uv=False)
    p = s / tf.maximum(tf.reduce_sum(s), 1e-300) + eps
    return tf.cast(tf.exp(-tf.reduce_sum(p * tf.math.log(p))), tf.float32)


def _sum_over_replicas(x):
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
        return context.all_reduce(tf.distribute.ReduceOp.SUM, x)
    return x


def write_view_grid(writer, views, specs, max_images=8):
    """Writes ``views/<i>_<size>px`` image summaries of one batch at step 0."""
    with writer.as_default(step=0):
        for i, (batch, spec) in enumerate(zip(views, specs)):
            tf.summary.image(f"views/{i}_{spec.size}px", batch[:max_images],
                             max_outputs=max_images,
                             description=f"view {i}: {spec}")


def write_images(writer, images, max_images=8, step=0):
    """Writes each ``{name: [N, H, W, C] in [0, 1]}`` batch as an image summary."""
    with writer.as_default(step=step):
        for name, batch in images.items():
            tf.summary.image(name, tf.clip_by_value(batch[:max_images], 0.0, 1.0),
                             max_outputs=max_images)


def write_method_summaries(writer, step, summaries):
    """Scalars for rank-0 values, histograms otherwise."""
    with writer.as_default(step=step):
        for name, value in summaries.items():
            value = tf.convert_to_tensor(value)
            if value.shape.rank == 0:
                tf.summary.scalar(name, value)
            else:
                tf.summary.histogram(name, value)


def export_projector(log_dir, features, labels):
    """Saves ``features`` ``[N, C]`` and their labels for the embedding projector."""
    from tensorboard.plugins import projector

    os.makedirs(log_dir, exist_ok=True)
    with open(os.path.join(log_dir, "metadata.tsv"), "w") as f:
        f.writelines(f"{int(label)}\n" for label in labels)
    embedding = tf.Variable(np.asarray(features, np.float32), name="embedding")
    tf.train.Checkpoint(embedding=embedding).save(os.path.join(log_dir, "embedding.ckpt"))
    config = projector.ProjectorConfig()
    entry = config.embeddings.add()
    entry.tensor_name = "embedding/.ATTRIBUTES/VARIABLE_VALUE"
    entry.metadata_path = "metadata.tsv"
    projector.visualize_embeddings(log_dir, config)
