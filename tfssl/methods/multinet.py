"""Multi-network global/local contrastive learning (Li et al.), ``multinet``.

Three networks, only the first trained (the paper's Algorithm 1):

* **online** ``f_o, g_o, q``: the predictions ``p_i = q(g_o(f_o(x_i)))`` of the three
  views ``x1, x2, x3`` (one strong recipe); ``g_o`` has 3 layers with BN after each,
  ``q`` is a bottleneck;
* **momentum** ``f_m, g_m`` (EMA of ``f_o, g_o``, initialised from them):
  ``z_i = norm(g_m(f_m(x_i)))`` of ``x1`` and ``x2``, and a support queue ``Q`` of
  momentum embeddings of ``x1`` (enqueued after the lookups). The global targets are
  nearest neighbours, ``NN(z) = Q[argmax(z·Qᵀ)]``;
* **stop-gradient**: ``f_o, g_o`` themselves under stop-gradient (no variables of
  their own). ``x1`` and ``x3`` are divided into a 2×2 grid of patches, the pooled
  patch features averaged over every combination of ``k`` patches (C(4, k) combined
  features, :func:`combine`), then projected by ``g_o``: the local targets ``c_i``.

The loss is the pseudo-code's ``L(k, p)`` (:func:`contrast`): one row per target,
softmax over the predictions of the whole global batch, so the gradient reaches the
predictions::

    L_m = ½·[L(NN(z1), p2) + L(NN(z2), p1)]
    L_s = ½·[mean_i L(c1_i, p3) + mean_i L(c3_i, p1)]
    L   = L_s + λ·L_m                       λ 6, τ 1.0

λ weighs the momentum (global) term, as the paper's pseudo-code and its ablation's
text have it (its eq. 7 puts λ on the other term). The pairing is ours (the
pseudo-code leaves it open); each target is paired with another view's prediction,
as the authors' released code does.

BN: the patch forwards run the online BN layers in training mode (batch statistics of
the patches) but, by default, leave their moving statistics alone
(:func:`tfssl.models.batch_norm.moving_statistics_frozen`), so that kNN, the linear
probe and the exported backbone keep the statistics of full images.
``--multinet_patch_bn_updates`` lets the patches update them, as the authors' code
does.
"""

import dataclasses
import itertools
import math

import tensorflow as tf

from tfssl.config import non_negative, one_of, option, positive
from tfssl.data import views
from tfssl.losses import info_nce_in_batch, l2_normalize
from tfssl.methods.base import MomentumMethod, register_method
from tfssl.methods.reco import fold_seed
from tfssl.models.batch_norm import moving_statistics_frozen
from tfssl.monitoring import embedding_std

#: Random stream of the ``--multinet_one_combination`` draws.
COMBINATION_STREAM = 5113


@dataclasses.dataclass(frozen=True)
class MultinetParams:
    momentum_weight: float = option(
        6.0, "λ: L = L_s + λ·L_m, the weight of the momentum (global, "
        "nearest-neighbour) term (paper Table 2; the paper's pseudo-code and "
        "ablation put λ on this term, its eq. 7 on the other).", non_negative)
    temperature: float = option(1.0, "τ of both contrastive terms.", positive)
    combine_k: int = option(
        2, "k: patches of the 2x2 grid averaged into each combined feature "
        "(C(4, k) = 4, 6, 4, 1 combined features for k = 1, 2, 3, 4; paper "
        "Table 4).", one_of(1, 2, 3, 4))
    one_combination: bool = option(
        False, "Use one combined feature per split view, drawn at random each step "
        "(the paper's 'one embedding' ablation, Table 3), instead of all C(4, k).")
    patch_bn_updates: bool = option(
        False, "Let the patch forwards update the online network's BN moving "
        "statistics (the authors' code). Off: the patches are normalised with their "
        "batch statistics but the moving statistics stay those of full images, "
        "which kNN, the linear probe and export use.")


# ---------------------------------------------------------------------------
# The pieces: pure functions of tensors.


def divide(x):
    """The 2×2 grid of patches of ``x`` ``[B, S, S, C]`` (``S`` even).

    Returns:
      ``[4, B, S/2, S/2, C]``: top-left, top-right, bottom-left, bottom-right (row
      by row). The authors' ``_local_split`` lists them column by column; the loss,
      a mean over every combination, is the same either way.
    """
    h, w = x.shape[1] // 2, x.shape[2] // 2
    return tf.stack([x[:, :h, :w], x[:, :h, w:], x[:, h:, :w], x[:, h:, w:]])


def combinations(k):
    """The C(4, k) patch index tuples, in ``itertools.combinations`` order."""
    return list(itertools.combinations(range(4), k))


def combine(patch_features, k):
    """``[4, B, C]`` patch features -> ``[C(4, k), B, C]``: row ``i`` is the mean
    of the features of the patches in ``combinations(k)[i]``."""
    return tf.stack([tf.reduce_mean(tf.gather(patch_features, list(c)), axis=0)
                     for c in combinations(k)])


def nearest_neighbours(z, queue):
    """``(Q[argmax(z·Qᵀ)], argmax)`` of unit rows ``z`` ``[B, d]`` in the unit rows
    of ``queue`` ``[K, d]``."""
    index = tf.argmax(tf.matmul(z, queue, transpose_b=True), axis=1,
                      output_type=tf.int32)
    return tf.gather(queue, index), index


def contrast(targets, predictions, temperature):
    """The pseudo-code's ``L(k, p)``, averaged over the leading axes of ``targets``.

    ``L = mean_b [ logsumexp_{b'} (k_b·p_b'/τ) − k_b·p_b/τ ]`` with ``k = sg(norm(
    targets))``, ``p = norm(predictions)`` and ``b'`` over every row of the **global**
    batch: :func:`tfssl.losses.info_nce_in_batch` with the gradient on its key side
    (the predictions, gathered across replicas), so the loss and its gradient do not
    depend on the replica count.

    Args:
      targets: ``[..., B, d]`` (stopped).
      predictions: ``[B, d]``.
      temperature: τ > 0.
    """
    return info_nce_in_batch(l2_normalize(targets), l2_normalize(predictions),
                             temperature, gradient="keys")


def patch_grid(images, gap=2):
    """``[N, S, S, 3]`` -> ``[N, S + gap, S + gap, 3]``: the four patches of
    :func:`divide` in place, a white ``gap`` between them (TensorBoard)."""
    p = divide(tf.cast(images, tf.float32))
    n, h, w, c = p.shape[1:]
    white = tf.ones([n, h, gap, c])

    def row(a, b):
        return tf.concat([a, white, b], axis=2)

    top, bottom = row(p[0], p[1]), row(p[2], p[3])
    return tf.concat([top, tf.ones([n, gap, top.shape[2], c]), bottom], axis=1)


# ---------------------------------------------------------------------------
# The method.


@register_method("multinet")
class Multinet(MomentumMethod):
    """Online ``f_o, g_o, q``; momentum ``f_m, g_m`` + NN queue; stop-gradient
    ``f_o, g_o`` on 2×2 patches (see the module docstring)."""

    params_cls = MultinetParams
    flag_prefix = "multinet_"
    supports_shuffle_bn = True
    # tools/profile_step.py reports the stop-gradient branch's ops as their own part.
    profile_scopes = ("patches",)

    @classmethod
    def check_config(cls, config):
        size = config.data.image_size
        if size % 2:
            return (f"--image_size={size} must be even for --method=multinet (each "
                    f"view is divided into a 2x2 grid of patches); use {size + 1}.")
        return None

    def build_heads(self):
        self.build_tower(predictor=True, projector_last_bn=True)
        self.queue = self.memory_bank(self.run_config.model.proj_dim)
        self.n_combinations = math.comb(4, self.params.combine_k)

    def view_specs(self):
        return views.strong(self.run_config.data.image_size) * 3

    def local_targets(self, x, step, index):
        """Stop-gradient targets of view ``x``: ``[s, B, d]`` unit rows, ``s`` =
        C(4, k), or 1 with ``--multinet_one_combination`` (drawn with ``index``)."""
        p = self.params
        patches = divide(x)
        size = patches.shape[2:]
        frozen = moving_statistics_frozen(not p.patch_bn_updates)
        with tf.name_scope("patches"), frozen:
            pooled = self.backbone(tf.reshape(patches, [-1, *size]),
                                   training=True)["pooled"]
            pooled = tf.reshape(pooled, [4, -1, pooled.shape[-1]])
            combined = combine(pooled, p.combine_k)  # [s, B, C]
            if p.one_combination:
                seed = fold_seed(self.random_seed(step, COMBINATION_STREAM), index)
                pick = tf.random.stateless_uniform([1], seed, minval=0,
                                                   maxval=self.n_combinations,
                                                   dtype=tf.int32)
                combined = tf.gather(combined, pick)
            s = combined.shape[0]
            h = self.proj(tf.reshape(combined, [-1, combined.shape[-1]]),
                          training=True)
        return tf.stop_gradient(tf.reshape(l2_normalize(h), [s, -1, h.shape[-1]]))

    def forward(self, views_, step):
        """``p1..p3``: online predictions; ``z1, z2``: momentum embeddings; ``nn1,
        nn2`` (and ``nn_index1/2``): their nearest neighbours in the queue snapshot
        ``queue``; ``c1, c3``: local targets ``[s, B, d]`` of ``x1``, ``x3``."""
        x1, x2, x3 = views_
        queue = self.queue.read()
        out = {"queue": queue}
        for i, x in enumerate(views_, 1):
            out[f"p{i}"] = self.forward_online(x)["prediction"]
        for i, x in ((1, x1), (2, x2)):
            z = self.forward_target(x, step)["embedding"]
            out[f"z{i}"] = z
            out[f"nn{i}"], out[f"nn_index{i}"] = nearest_neighbours(z, queue)
        out["c1"] = self.local_targets(x1, step, 0)
        out["c3"] = self.local_targets(x3, step, 1)
        return out

    def objective(self, out, step):
        p = self.params
        tau = p.temperature
        l_m = 0.5 * (contrast(out["nn1"], out["p2"], tau)
                     + contrast(out["nn2"], out["p1"], tau))
        l_s = 0.5 * (contrast(out["c1"], out["p3"], tau)
                     + contrast(out["c3"], out["p1"], tau))
        agreement = tf.reduce_mean(tf.cast(
            tf.equal(out["nn_index1"], out["nn_index2"]), tf.float32))
        return {"loss": l_s + p.momentum_weight * l_m, "l_s": l_s, "l_m": l_m,
                "nn_agreement": agreement, "embedding_std": embedding_std(out["p1"])}

    def commit(self, out, step):
        self.queue.enqueue(out["z1"])

    def first_batch_images(self, views_):
        out = super().first_batch_images(views_)
        out["multinet/patches"] = patch_grid(views_[0])
        return out
