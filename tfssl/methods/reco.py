"""ReCo: relation-aware contrastive learning (Zhang et al.), as two
plug-in :class:`~tfssl.methods.base.Term` s on MoCo-v2 and on BYOL.

ReCo is not a network of its own: ``reco_moco_v2`` is :class:`MoCoV2` and
``reco_byol`` is :class:`BYOL`, each with two terms added to its loss::

    L = L_base + λ1·L_global + λ2·L_local

**Global distribution relation** (paper eq. 3). A third, weak view ``x_w`` goes
through the momentum network: keys ``k_w = norm(g_t(f_t(x_w)))``, kept in their own
queue ``Q_w`` (enqueued after the step, as the strong keys are in ``Q``)::

    L_global = H(softmax(k_w·Q_wᵀ / τ_tt), softmax(q·Q_wᵀ / τ_ot))

with the online query ``q`` of the first (strong) view.

**Local interpolation relation** (paper eqs. 4-6). A ratio ``r ~ Beta(α, α)`` and a
permutation ``π`` of the batch; CutMix pastes a box of ``x_k[π]`` into ``x_q``
(``r`` is then ``1 − box area / image area``), Mixup blends ``r·x_q + (1−r)·x_k[π]``.
The mixed image's online embedding ``v_mix`` is pulled towards the same mix of the
embeddings, ``t = sg(norm(r·q + (1−r)·k[π]))``:

* on MoCo-v2, ``L_local = info_nce(v_mix, t, Q, τ)`` against the strong-key queue,
  with MoCo's ``--moco_temperature`` (the authors' code uses one τ for both);
* on BYOL, ``L_local = byol_mse(q(v_mix), t)``: the predictor's output regresses
  onto the target, as BYOL's own loss does.

Which embedding plays ``q`` and ``k`` on each host (:meth:`ReCoMoCoV2.reco_query`,
:meth:`ReCoBYOL.reco_query`, ...): on MoCo-v2 the query and key of the paper; on BYOL
(the paper does not say) the normalised online **prediction** of ``x_q`` — the
online vector BYOL compares with the targets — and the target projection of
``x_k``.

**Mixing groups.** The authors permute within each GPU's batch and draw one ratio
and one box per GPU batch. Here the global batch is cut into fixed groups of
``--reco_group_size`` consecutive rows (default 32, the authors' per-GPU batch of
256 images on 8 GPUs); each group has its own permutation, ratio and box, drawn by
:func:`mixing_draws` from ``(--seed, step)`` for the whole global batch. A group
never spans two replicas (the size must divide the per-replica batch), so one
device computes exactly what N replicas compute, and a resumed run draws the
same numbers.

**XLA.** The draws use only integer stateless uniforms (identical bits with and
without XLA) and arithmetic on them; the Beta draw is Marsaglia-Tsang's gamma
sampler written out (``tf.random.stateless_gamma`` has no XLA kernel), whose
transcendental functions may round differently under XLA in the last bit.
"""

import dataclasses
import math
import typing

import tensorflow as tf

from tfssl.config import non_negative, one_of, option, positive
from tfssl.data import views
from tfssl.errors import UserError
from tfssl.losses import byol_mse, entropy, info_nce, l2_normalize, relation_ce
from tfssl.methods.base import Term, register_method
from tfssl.methods.byol import BYOL, BYOLParams
from tfssl.methods.moco_v2 import MoCoV2, MoCoV2Params

#: Random stream of the mixing draws (see ``MomentumMethod.random_seed``).
RECO_STREAM = 9173
#: Stateless-seed stream of the initial content of the weak-key queue ``Q_w``.
WEAK_QUEUE_STREAM = 7933
#: Candidates per Marsaglia-Tsang draw; with α >= 1 each is accepted with
#: probability > 0.95, so all of them are rejected with probability < 1e-10.
_GAMMA_TRIES = 8


@dataclasses.dataclass(frozen=True)
class ReCoParams:
    """ReCo's own hyper-parameters (flags ``--reco_*``, shared by both hosts)."""

    lambda_global: float = option(
        1.0, "λ1, weight of the global distribution relation term (paper Table II "
        "and the authors' code: 1.0). 0 removes the term, its weak view, its "
        "forward pass and its queue.", non_negative, flag_prefix="reco_")
    lambda_local: float = option(
        2.0, "λ2, weight of the local interpolation relation term (paper Table II's "
        "best: 2.0; the authors' code uses 1.0). 0 removes the term and the forward "
        "pass of the mixed images.", non_negative, flag_prefix="reco_")
    tau_online: float = option(
        0.1, "Global term: temperature τ_ot of the online query's relation to Q_w.",
        positive, flag_prefix="reco_")
    tau_target: float = option(
        0.04, "Global term: temperature τ_tt of the weak key's relation to Q_w "
        "(< --reco_tau_online: a sharper target).", positive, flag_prefix="reco_")
    mix: str = option(
        "cutmix", "Local term's image interpolation: cutmix (a box of the permuted "
        "key image pasted into the query image; r = 1 - box area; the authors' "
        "code) or mixup (pixel blend r·x_q + (1-r)·x_k[π]).",
        one_of("cutmix", "mixup"), flag_prefix="reco_")
    alpha: float = option(1.0, "Local term: r ~ Beta(α, α).", positive,
                          flag_prefix="reco_")
    group_size: int = option(
        32, "Local term: rows of the global batch that share one permutation, one "
        "ratio and one box (the authors' per-GPU batch; must divide the "
        "per-replica batch). The result does not depend on the replica count.",
        positive, flag_prefix="reco_")

    def problems(self):
        if self.lambda_global and self.tau_target >= self.tau_online:
            return (f"--reco_tau_target={self.tau_target} must be smaller than "
                    f"--reco_tau_online={self.tau_online} (the target relation must "
                    "be sharper).")
        return None


# ---------------------------------------------------------------------------
# Draws and mixing: pure functions of tensors.


class MixingDraws(typing.NamedTuple):
    """The local term's draws for the ``n`` groups of a global batch.

    Attributes:
      perm: int32 ``[n, G]``, a permutation of ``range(G)`` per group.
      lam: float32 ``[n]``, the Beta(α, α) draw of each group.
      box: int32 ``[n, 4]``, each group's CutMix box ``(y1, y2, x1, x2)``
        (rows ``y1 <= y < y2``, columns ``x1 <= x < x2``).
      ratio: float32 ``[n]``, each group's ``r``: ``1 − box area / image area``
        (CutMix) or ``lam`` (Mixup).
    """

    perm: tf.Tensor
    lam: tf.Tensor
    box: tf.Tensor
    ratio: tf.Tensor


def _uniform(shape, seed):
    """Uniform float32 in ``(0, 1)`` from integer draws (same bits under XLA)."""
    bits = tf.random.stateless_uniform(shape, seed, minval=0, maxval=1 << 23,
                                       dtype=tf.int32)
    return (tf.cast(bits, tf.float32) + 0.5) * (1.0 / (1 << 23))


def fold_seed(seed, i):
    """``fold_in(seed, i)`` with the sign bits cleared: XLA's stateless kernels
    read negative seed words otherwise than the CPU kernels do (a negative
    ``--seed`` or a fold's negative output would give other draws)."""
    seed = tf.random.experimental.stateless_fold_in(_non_negative(seed), i)
    return _non_negative(seed)


def _non_negative(seed):
    seed = tf.convert_to_tensor(seed)
    return tf.bitwise.bitwise_and(seed, tf.constant(0x7FFFFFFF, seed.dtype))


def stateless_gamma(shape, seed, alpha):
    """Gamma(α, 1) draws of ``shape`` (Marsaglia & Tsang 2000), float32.

    ``_GAMMA_TRIES`` candidates per draw, the first accepted is kept (the last if
    none is); α < 1 uses ``Gamma(α + 1)·U^(1/α)``. Normals by Box-Muller.
    """
    boost = alpha < 1.0
    a = alpha + 1.0 if boost else alpha
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    full = list(shape) + [_GAMMA_TRIES]
    u1, u2, u = (_uniform(full, fold_seed(seed, i)) for i in range(3))
    x = tf.sqrt(-2.0 * tf.math.log(u1)) * tf.cos(2.0 * math.pi * u2)
    v = (1.0 + c * x) ** 3
    safe_v = tf.maximum(v, 1e-30)
    accept = (v > 0) & (tf.math.log(u) < 0.5 * x * x + d - d * safe_v
                        + d * tf.math.log(safe_v))
    first = tf.argmax(tf.cast(accept, tf.int32), axis=-1, output_type=tf.int32)
    first = tf.where(tf.reduce_any(accept, -1), first, _GAMMA_TRIES - 1)
    g = d * tf.gather(safe_v, first, axis=-1, batch_dims=len(shape))
    if boost:
        g = g * _uniform(shape, fold_seed(seed, 3)) ** (1.0 / alpha)
    return g


def stateless_beta(shape, seed, alpha):
    """Symmetric Beta(α, α) draws: ``X / (X + Y)`` of two Gamma(α) draws."""
    x = stateless_gamma(shape, fold_seed(seed, 0), alpha)
    y = stateless_gamma(shape, fold_seed(seed, 1), alpha)
    total = x + y
    return tf.where(total > 0, x / tf.maximum(total, 1e-30), 0.5)


def cutmix_box(lam, cy, cx, size):
    """CutMix boxes as the authors' ``_rand_bbox``: side ``⌊size·√(1−λ)⌋``,
    centred at ``(cy, cx)``, half-sides ``side // 2`` on each side, clipped to
    the image.

    Returns:
      int32 ``[..., 4]``: ``(y1, y2, x1, x2)``.
    """
    side = tf.cast(tf.floor(size * tf.sqrt(tf.maximum(1.0 - lam, 0.0))), tf.int32)
    half = side // 2
    return tf.stack([tf.clip_by_value(cy - half, 0, size),
                     tf.clip_by_value(cy + half, 0, size),
                     tf.clip_by_value(cx - half, 0, size),
                     tf.clip_by_value(cx + half, 0, size)], axis=-1)


def box_ratio(box, size):
    """``r = 1 − box area / size²`` of ``box`` ``[..., 4]``: float32."""
    area = (box[..., 1] - box[..., 0]) * (box[..., 3] - box[..., 2])
    return 1.0 - tf.cast(area, tf.float32) / float(size * size)


def mixing_draws(seed, groups, group_size, image_size, alpha, mix="cutmix"):
    """Every draw of the local term for ``groups`` groups of ``group_size`` rows:
    a pure function of ``seed``, the same on every replica.

    Returns:
      :class:`MixingDraws`.
    """
    seed = fold_seed(seed, 0)
    keys = tf.random.stateless_uniform([groups, group_size], fold_seed(seed, 0),
                                       minval=0, maxval=(1 << 31) - 1,
                                       dtype=tf.int32)
    perm = tf.argsort(keys, axis=1, stable=True)
    lam = stateless_beta([groups], fold_seed(seed, 1), alpha)
    centre = tf.random.stateless_uniform([groups, 2], fold_seed(seed, 2), minval=0,
                                         maxval=image_size, dtype=tf.int32)
    box = cutmix_box(lam, centre[:, 0], centre[:, 1], image_size)
    ratio = box_ratio(box, image_size) if mix == "cutmix" else lam
    return MixingDraws(perm=perm, lam=lam, box=box, ratio=ratio)


def mix_batch(x_q, x_k, draws, first_group, mix="cutmix"):
    """Mixes a local batch with its groups' draws.

    Args:
      x_q, x_k: ``[b, S, S, C]`` query and key images (``b`` a multiple of ``G``).
      draws: :class:`MixingDraws` of the global batch.
      first_group: index of the local batch's first group in the global batch.
      mix: ``"cutmix"`` or ``"mixup"``.

    Returns:
      ``(x_mix [b, S, S, C], partner [b] int32, ratio [b] float32)``: the mixed
      images, the local row of ``x_k`` each row is mixed with, and its ``r``.
    """
    b, size = x_q.shape[0], x_q.shape[1]
    g = draws.perm.shape[1]
    n = b // g
    rows = lambda t: tf.slice(t, [first_group] + [0] * (t.shape.rank - 1),  # noqa: E731
                              [n] + t.shape[1:].as_list())
    perm, box, ratio = rows(draws.perm), rows(draws.box), rows(draws.ratio)
    partner = tf.reshape(perm + g * tf.range(n)[:, None], [b])
    other = tf.gather(x_k, partner)
    ratio = tf.repeat(ratio, g)
    if mix == "mixup":
        r = tf.cast(ratio, x_q.dtype)[:, None, None, None]
        return r * x_q + (1 - r) * other, partner, ratio
    pos = tf.range(size)
    inside_y = (pos >= box[:, 0:1]) & (pos < box[:, 1:2])  # [n, S]
    inside_x = (pos >= box[:, 2:3]) & (pos < box[:, 3:4])
    mask = tf.repeat(inside_y[:, :, None] & inside_x[:, None, :], g, axis=0)
    return tf.where(mask[..., None], other, x_q), partner, ratio


# ---------------------------------------------------------------------------
# The terms.


class GlobalRelation(Term):
    """``L_global``: the online query's relation to ``Q_w`` matches the weak key's."""

    name = "reco_global"

    def weight(self, method):
        return method.params.lambda_global

    def build(self, method):
        method.queue_w = method.memory_bank(method.run_config.model.proj_dim,
                                            name="queue_w", stream=WEAK_QUEUE_STREAM)

    def view_specs(self, method):
        return views.weak(method.run_config.data.image_size)

    def forward(self, method, views_, out, step):
        """``k_w``: momentum embeddings of the weak view; ``queue_w`` read before
        this step's enqueue."""
        x_w = views_[self.view_offset]
        return {"k_w": method.forward_target(x_w, step)["embedding"],
                "queue_w": method.queue_w.read()}

    def objective(self, method, out, step):
        p = method.params
        queue_w = out["queue_w"]
        s = tf.matmul(method.reco_query(out), queue_w, transpose_b=True)
        t = tf.matmul(out["k_w"], queue_w, transpose_b=True)
        return {self.name: relation_ce(s, t, p.tau_online, p.tau_target),
                "reco_target_entropy": entropy(t, p.tau_target)}

    def commit(self, method, out, step):
        method.queue_w.enqueue(out["k_w"])


class LocalInterpolation(Term):
    """``L_local``: the mixed image's embedding matches the mix of the embeddings."""

    name = "reco_local"

    def weight(self, method):
        return method.params.lambda_local

    def build(self, method):
        t = method.run_config.train
        g = method.params.group_size
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        local = t.global_batch_size // replicas
        if local % g:
            fit = max(d for d in range(1, min(g, local) + 1) if local % d == 0)
            raise UserError(
                f"--reco_group_size={g} must divide the per-replica batch "
                f"(--global_batch_size={t.global_batch_size} over {replicas} "
                f"replica(s) = {local} rows); use {fit}, or a batch that is a "
                f"multiple of {g} per replica.")

    def draws(self, method, step):
        p, t = method.params, method.run_config.train
        return mixing_draws(method.random_seed(step, RECO_STREAM),
                            t.global_batch_size // p.group_size, p.group_size,
                            method.run_config.data.image_size, p.alpha, p.mix)

    def mixed(self, method, x_q, x_k, step):
        """``(x_mix, partner, ratio, draws)`` of this replica's rows at ``step``."""
        draws = self.draws(method, step)
        n = x_q.shape[0] // method.params.group_size
        context = tf.distribute.get_replica_context()
        first = 0
        if context is not None and context.num_replicas_in_sync > 1:
            first = tf.cast(context.replica_id_in_sync_group, tf.int32) * n
        x_mix, partner, ratio = mix_batch(x_q, x_k, draws, first, method.params.mix)
        return x_mix, partner, ratio, draws

    def forward(self, method, views_, out, step):
        """``mix``: the online forward of the mixed images, the partner row of each
        row, its ratio ``r`` and the global batch's mean ``r``."""
        x_mix, partner, ratio, draws = self.mixed(method, views_[0], views_[1], step)
        return {"mix": {"online": method.forward_online(x_mix), "partner": partner,
                        "ratio": ratio,
                        "mean_ratio": tf.reduce_mean(draws.ratio)}}

    def objective(self, method, out, step):
        mix = out["mix"]
        q = tf.stop_gradient(method.reco_query(out))
        k = tf.gather(method.reco_key(out), mix["partner"])
        r = mix["ratio"][:, None]
        target = l2_normalize(r * q + (1.0 - r) * k)
        return {self.name: method.reco_local_loss(mix["online"], target, out),
                "reco_mix_ratio": mix["mean_ratio"]}

    def images(self, method, views_):
        x_mix, partner, _, _ = self.mixed(method, views_[0], views_[1], 0)
        return {"reco/mixed": x_mix, "reco/query": views_[0],
                "reco/partner": tf.gather(views_[1], partner)}


# ---------------------------------------------------------------------------
# The two methods: the hosts plus the terms and the hooks the terms read.


@dataclasses.dataclass(frozen=True)
class ReCoMoCoV2Params(MoCoV2Params, ReCoParams):
    pass


@dataclasses.dataclass(frozen=True)
class ReCoBYOLParams(BYOLParams, ReCoParams):
    pass


@register_method("reco_moco_v2")
class ReCoMoCoV2(MoCoV2):
    """MoCo-v2 + ReCo's relation terms (flags ``--moco_*`` and ``--reco_*``)."""

    params_cls = ReCoMoCoV2Params
    terms = (GlobalRelation, LocalInterpolation)

    def reco_query(self, out):
        """``q``: MoCo's query of the first view, float32 unit ``[B, d]``."""
        return out["q1"]

    def reco_key(self, out):
        """``k``: MoCo's keys of the second view."""
        return out["k2"]

    def reco_local_loss(self, online, target, out):
        return info_nce(online["embedding"], target, out["queue"],
                        self.params.temperature)


@register_method("reco_byol")
class ReCoBYOL(BYOL):
    """BYOL + ReCo's relation terms (flags ``--reco_*``)."""

    params_cls = ReCoBYOLParams
    terms = (GlobalRelation, LocalInterpolation)

    def reco_query(self, out):
        """``q``: the normalised online prediction of the first view."""
        return l2_normalize(out["online1"]["prediction"])

    def reco_key(self, out):
        """``k``: the normalised target projection of the second view."""
        return l2_normalize(out["z2"])

    def reco_local_loss(self, online, target, out):
        return byol_mse(online["prediction"], target)
