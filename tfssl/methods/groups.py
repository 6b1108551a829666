"""SMoG's group features: the state object, eq. 4 as pure functions, in-graph k-means.

Shapes: ``K`` groups, ``d`` feature dimension, ``B`` samples, ``N`` cached features.
All features and group rows are L2-normalised; similarity is the inner product.

Momentum grouping (the SMoG paper, eq. 4; docs/methods/smog.md)::

    c_i      = argmax_k  z_t,i · g_k                     (the paper's "argmin" is a typo)
    g_k     <- norm( β·g_k + (1−β)·mean{ z_i : c_i = k } )   for groups with members
    g_k     <- g_k                                           for groups nobody chose

The per-group sums and counts are all-reduced across replicas, so the mean is over
the *global* batch and ``G`` is identical everywhere.  The new groups keep their
gradient path through the ``(1−β)·mean`` term (the "synchronous" in SMoG); the
stored variable receives the stop-gradient value.

k-means (initialisation and the periodic collapse guard) is spherical k-means run
in the graph: greedy k-means++ seeding on the cosine distance ``1 − x·c``, then Lloyd
iterations (assign by argmax similarity, centroid = normalised member sum; an empty
cluster keeps its centroid).  No sklearn, no host round trip.
"""

import math

import keras
import tensorflow as tf

from tfssl.losses import l2_normalize


# -- eq. 4 and the loss, pure functions ----------------------------------------------


def assign_groups(z, groups):
    """``c = argmax(z·Gᵀ)``: ``[B, d]``, ``[K, d]`` -> int32 ``[B]`` (ties: lowest k)."""
    sim = tf.matmul(tf.cast(z, tf.float32), tf.cast(groups, tf.float32),
                    transpose_b=True)
    return tf.argmax(sim, axis=1, output_type=tf.int32)


def group_sums(z, assignments, n_groups):
    """Per-group member sums ``[K, d]`` and counts ``[K]`` (float32), no Python loop."""
    z = tf.cast(z, tf.float32)
    sums = tf.math.unsorted_segment_sum(z, assignments, n_groups)
    counts = tf.math.unsorted_segment_sum(
        tf.ones_like(assignments, tf.float32), assignments, n_groups)
    return sums, counts


def momentum_update(groups, sums, counts, beta):
    """Eq. 4 given (global) sums and counts: ``[K, d]`` new unit rows.

    ``g_k <- norm(β·g_k + (1−β)·sums_k / counts_k)`` where ``counts_k > 0``, else
    ``g_k`` unchanged.  Differentiable in ``sums`` (the synchronous gradient path);
    ``groups`` is treated as a constant (gradient stopped).
    """
    groups = tf.stop_gradient(tf.cast(groups, tf.float32))
    beta = tf.cast(beta, tf.float32)
    used = counts[:, None] > 0
    mean = sums / tf.maximum(counts, 1.0)[:, None]
    moved = l2_normalize(beta * groups + (1.0 - beta) * mean)
    return tf.where(used, moved, groups)


def all_reduce_sum(x):
    """Sum over replicas (identity on one device).

    ``ReplicaContext.all_reduce`` is differentiable: the gradient of an all-sum is
    the all-sum of the upstream gradients, so every replica's loss back-propagates
    into every replica's contribution — after the base step sums the replicas'
    gradients, this is exactly the single-device gradient of the global batch.
    """
    context = tf.distribute.get_replica_context()
    if context is None:
        return x
    return context.all_reduce(tf.distribute.ReduceOp.SUM, x)


def synchronous_update(groups, z, assignments, beta):
    """Eq. 4 on the global batch: local ``z`` ``[B, d]``, ``assignments`` ``[B]``.

    Sums and counts go through one all-reduce (counts as an extra column).

    Returns:
      ``(new_groups [K, d]`` with gradient into ``z``, global ``counts [K])``.
    """
    n_groups = groups.shape[0]
    sums, counts = group_sums(z, assignments, n_groups)
    both = all_reduce_sum(tf.concat([sums, counts[:, None]], axis=1))
    sums, counts = both[:, :-1], tf.stop_gradient(both[:, -1])
    return momentum_update(groups, sums, counts, beta), counts


def group_cross_entropy(prediction, groups, assignments, temperature):
    """Group contrast (eq. 3): ``CE(norm(p)·Gᵀ / τ, c)``, mean over the batch.

    Args:
      prediction: ``[B, d]`` online prediction ``p`` (any norm).
      groups: ``[K, d]`` unit rows ``G_new`` (gradient flows into them).
      assignments: int ``[B]`` target groups ``c`` (from the momentum branch).
      temperature: τ.

    Returns:
      ``(loss, logits [B, K])``.
    """
    logits = tf.matmul(l2_normalize(prediction), groups, transpose_b=True) / temperature
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=assignments,
                                                        logits=logits)
    return tf.reduce_mean(ce), logits


def occupancy_entropy(counts):
    """Entropy (nats) of ``counts / sum(counts)``; 0 for no counts; max ``log K``."""
    counts = tf.cast(counts, tf.float32)
    p = counts / tf.maximum(tf.reduce_sum(counts), 1e-12)
    return -tf.reduce_sum(tf.where(p > 0, p * tf.math.log(tf.maximum(p, 1e-30)), 0.0))


# -- spherical k-means -----------------------------------------------------------------


def _fold(seed, i):
    return tf.random.experimental.stateless_fold_in(seed, i)


def kmeans_plus_plus(x, k, seed):
    """Greedy k-means++ seeds (sklearn's variant) on unit rows.

    For unit vectors ``||x − c||² = 2·(1 − x·c)``, so the k-means++ weight of a point
    is its cosine distance ``D = 1 − max_j x·c_j`` to the nearest seed.  The first
    seed is uniform; for each next seed ``2 + ⌊ln K⌋`` candidates are drawn with
    probability ``∝ D`` and the one that lowers ``Σ D`` most is kept (plain
    k-means++ puts two seeds in one cluster often enough that Lloyd cannot always
    recover).  Rows are picked with ``tf.gather``: a tensor index in ``x[i]`` is a
    compile-time constant for XLA, which would recompile the step for every seed.
    When every point is already (almost) a seed (``max D < 1e-4``, e.g.
    ``N < K`` at step 0) the remaining seeds are random unit vectors: they stay out
    of the way (cosine ≈ 0 to the data) until the first reset re-groups.

    Args:
      x: ``[N, d]`` unit rows.
      k: number of seeds ``K`` (Python int).
      seed: int ``[2]`` stateless seed.

    Returns:
      ``[K, d]`` unit rows.
    """
    x = tf.cast(x, tf.float32)
    n, d = tf.shape(x)[0], x.shape[-1]
    trials = 2 + int(math.log(k))
    seed = tf.cast(seed, tf.int64)
    first = tf.gather(x, tf.random.stateless_uniform([], _fold(seed, 0), maxval=n,
                                                     dtype=tf.int32))
    seeds = tf.TensorArray(tf.float32, size=k, element_shape=[d]).write(0, first)
    dist = tf.nn.relu(1.0 - tf.linalg.matvec(x, first))

    def body(i, seeds, dist):
        cdf = tf.cumsum(dist)  # inverse-CDF sampling ∝ D: O(N), not O(N·L)
        u = tf.random.stateless_uniform([trials], _fold(seed, i)) * cdf[-1]
        picks = tf.minimum(tf.searchsorted(cdf, u, side="right", out_type=tf.int32),
                           n - 1)
        candidates = tf.gather(x, picks)  # [L, d]
        new = tf.minimum(dist[:, None],
                         tf.nn.relu(1.0 - tf.matmul(x, candidates, transpose_b=True)))
        best = tf.argmin(tf.reduce_sum(new, 0), output_type=tf.int32)
        fallback = l2_normalize(tf.random.stateless_normal([d], _fold(seed, k + i)))
        spent = tf.reduce_max(dist) <= 1e-4
        c = tf.where(spent, fallback, tf.gather(candidates, best))
        dist = tf.where(spent, dist, tf.gather(new, best, axis=1))
        return i + 1, seeds.write(i, c), dist

    _, seeds, _ = tf.while_loop(lambda i, *_: i < k, body, (1, seeds, dist))
    return seeds.stack()


def lloyd(x, centroids, iterations):
    """``iterations`` spherical Lloyd steps; an empty cluster keeps its centroid.

    ``x`` ``[N, d]`` unit rows, ``centroids`` ``[K, d]`` -> ``[K, d]`` unit rows.
    Memory: one ``[N, K]`` similarity matrix per step.
    """
    x = tf.cast(x, tf.float32)
    k = centroids.shape[0]

    def body(i, c):
        sums, counts = group_sums(x, assign_groups(x, c), k)
        return i + 1, tf.where(counts[:, None] > 0, l2_normalize(sums), c)

    _, c = tf.while_loop(lambda i, _: i < iterations, body,
                         (tf.constant(0), tf.cast(centroids, tf.float32)))
    return c


def kmeans(x, k, iterations, seed):
    """Spherical k-means: ``[N, d]`` unit rows -> ``(centroids [K, d], c [N])``."""
    x = tf.stop_gradient(tf.cast(x, tf.float32))
    centroids = lloyd(x, kmeans_plus_plus(x, k, seed), iterations)
    return centroids, assign_groups(x, centroids)


# -- the state object ------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="tfssl")
class GroupFeatures(keras.layers.Layer):
    """SMoG's non-trainable state, identical on every replica.

    Weights (``add_weight``, so checkpoints and Keras weight files hold them; all
    ``ONLY_FIRST_REPLICA``: every replica computes the same value from all-reduced
    or all-gathered inputs, the first replica's write is kept):

    * ``groups`` ``[K, d]``: the group features ``G`` (seeded random unit rows until
      k-means replaces them);
    * ``window_counts`` ``[K]``: global assignments per group since the last reset
      (the TensorBoard occupancy);
    * ``resets``: number of periodic resets done.

    Writes happen outside ``tf.cond`` branches: under MirroredStrategy on CPU an
    ``ONLY_FIRST_REPLICA`` write is a ``merge_call``, which a cond branch forbids.

    Args:
      n_groups: K.
      dim: d.
      seed: seed of the random initial rows.
    """

    def __init__(self, n_groups, dim, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.n_groups = int(n_groups)
        self.dim = int(dim)
        self.seed = int(seed)

        def init(shape, dtype=None):
            return l2_normalize(tf.random.stateless_normal(shape, [self.seed, 2207]))

        def weight(name, shape, initializer, dtype="float32"):
            return self.add_weight(shape=shape, initializer=initializer, dtype=dtype,
                                   trainable=False, autocast=False,
                                   aggregation="only_first_replica", name=name)

        self.groups = weight("groups", (self.n_groups, self.dim), init)
        self.window_counts = weight("window_counts", (self.n_groups,), "zeros")
        self.resets = weight("resets", (), "zeros", "int32")

    def read(self):
        """``[K, d]`` snapshot of ``G`` (no gradient)."""
        return tf.identity(tf.convert_to_tensor(self.groups))

    def write(self, groups):
        """Stores ``sg(groups)``."""
        self.groups.assign(tf.stop_gradient(tf.cast(groups, tf.float32)))

    def count(self, counts, new_window):
        """Adds this step's global ``counts`` ``[K]``; ``new_window`` zeroes first."""
        old = tf.where(new_window, tf.zeros_like(self.window_counts),
                       tf.convert_to_tensor(self.window_counts))
        self.window_counts.assign(old + tf.stop_gradient(counts))

    def get_config(self):
        return {**super().get_config(), "n_groups": self.n_groups, "dim": self.dim,
                "seed": self.seed}
