"""LEWEL: learning where to learn (Huang et al. 2022), ``lewel_b`` and ``lewel_m``.

One head on the backbone's last feature map ``F`` ``[B, H, W, C]`` (shared by both
variants, :meth:`LEWELHead.lewel_tower`)::

    z_g, M = g(GAP(F)), g(F)          one call, shared weights and BN statistics
                                       over B·(1 + H·W) rows
    A = softmax_HW(norm_d(M) / scale)  [B, HW, d]: d alignment maps, each summing
                                       to 1 over the positions
    y_k = Σ_p F[p, group(j)] · A[p, j·d/h + k]   for the h channel groups j of F
                                       -> d/h aligned representations of size C
    z_a = p(y)                         [B, d/h, c], BN over B·d/h rows

and ``L = (1−β)·L_g + β·L_a`` summed over the two view directions, the targets from
the momentum ``g_t, p_t`` (and ``f_t``) on the other view:

* ``lewel_b`` (BYOL): ``L_g = byol_mse(q(z_g), z_g')``, ``L_a = byol_mse(s(z_a),
  z_a')`` over all ``B·d/h`` aligned rows; predictors ``q`` (global) and ``s``
  (aligned). The authors' recipe uses EMAN (``--ema_bn``);
* ``lewel_m`` (MoCo): ``L_g = info_nce(z_g, z_g', Q, τ)`` against a queue of the
  second view's global keys (one global batch per step, as ``--moco_symmetric``),
  ``L_a`` an InfoNCE with in-batch negatives: aligned embedding ``k`` of image ``b``
  against the same ``k`` of every image of the **global** batch (gathered across
  replicas, so the loss does not depend on the replica count). Shuffling BN is its
  default, as MoCo's.

The channel order of ``y`` is the authors' ``ObjectNeck``: channel ``j·C/h + i`` of
every aligned representation comes from channel ``i`` of group ``j`` of ``F``,
pooled with map ``j·d/h + k``.
"""

import dataclasses
import math

import tensorflow as tf

from tfssl.config import non_negative, option, positive, probability
from tfssl.data import views
from tfssl.errors import UserError
from tfssl.losses import byol_mse, info_nce, l2_normalize
from tfssl.methods.base import MomentumMethod, register_method
from tfssl.models.heads import apply_mlp_global_and_pixelwise, apply_mlp_pixelwise
from tfssl.monitoring import embedding_std


@dataclasses.dataclass(frozen=True)
class LEWELParams:
    groups: int = option(4, "h: channel groups of the feature map (the authors' "
                         "--lewel-num-heads 4); must divide --proj_dim and the "
                         "backbone's channels.", positive)
    aligned_dim: int = option(0, "c: output of the aligned projector p (0 = "
                              "--proj_dim, the paper's d = c).", non_negative)
    scale: float = option(1.0, "Alignment-map scale: each pixel's normalised "
                          "d-vector is divided by it before the softmax over "
                          "positions.", positive)
    beta: float = option(0.5, "β: L = (1-β)·L_g + β·L_a.", probability)


@dataclasses.dataclass(frozen=True)
class LEWELMParams(LEWELParams):
    temperature: float = option(0.2, "LEWEL_M: InfoNCE temperature τ of both terms.",
                                positive)


# ---------------------------------------------------------------------------
# The head's pieces: pure functions of tensors.


def alignment_maps(heat, scale=1.0):
    """``softmax`` over positions of ``norm(heat) / scale``.

    Args:
      heat: ``[B, P, d]`` the projector's per-pixel outputs (``P = H·W``).
      scale: > 0.

    Returns:
      float32 ``[B, P, d]``; every map (fixed ``b``, channel) sums to 1 over ``P``.
    """
    return tf.nn.softmax(l2_normalize(heat) / scale, axis=1)


def aligned_pool(features, maps, groups):
    """The aligned representations of the authors' ``ObjectNeck``.

    Args:
      features: ``[B, P, C]`` the feature map's pixels.
      maps: ``[B, P, d]`` alignment maps.
      groups: h, dividing ``C`` and ``d``.

    Returns:
      float32 ``[B, d/h, C]``: row ``k``, channel ``j·C/h + i`` is
      ``Σ_p features[p, j·C/h + i] · maps[p, j·d/h + k]``.
    """
    features = tf.cast(features, tf.float32)
    b, p, c = features.shape
    d = maps.shape[-1]
    x = tf.reshape(features, [-1, p, groups, c // groups])
    a = tf.reshape(maps, [-1, p, groups, d // groups])
    y = tf.einsum("bpji,bpjk->bkji", x, a)  # [B, d/h, h, C/h]
    return tf.reshape(y, [-1, d // groups, c])


def map_entropy(maps):
    """Mean entropy (nats) of the maps over positions: ``ln P`` when uniform, 0 when
    a map sits on one pixel. ``maps`` ``[B, P, d]``."""
    maps = tf.stop_gradient(maps)
    return tf.reduce_mean(-tf.reduce_sum(maps * tf.math.log(maps + 1e-12), axis=1))


def info_nce_in_batch_grouped(query, keys, temperature):
    """InfoNCE per aligned index with the global batch's negatives.

    ``L = -mean_{b,k} log( exp(q_bk·t_bk/τ) / Σ_{b'} exp(q_bk·t_b'k/τ) )``, ``b'`` over
    every image of the global batch (keys all-gathered; labels offset by the
    replica's first row). Keys are stopped.

    Args:
      query: ``[B, n, c]`` unit rows; keys: ``[B, n, c]`` unit rows.
    """
    query = tf.cast(query, tf.float32)
    keys = tf.stop_gradient(tf.cast(keys, tf.float32))
    positive = tf.transpose(tf.reduce_sum(query * keys, -1)) / temperature  # [n, B]
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
        keys = context.all_gather(keys, axis=0)
    logits = tf.einsum("bnc,knc->nbk", query, keys) / temperature  # [n, B, B_global]
    return tf.reduce_mean(tf.reduce_logsumexp(logits, axis=2) - positive)


def draw_maps(images, maps, grid, columns=4, zoom=4):
    """A picture of alignment maps over their images.

    Args:
      images: ``[N, S, S, 3]`` in ``[0, 1]``.
      maps: ``[N, P, d]`` with ``P = grid[0]·grid[1]``.
      grid: ``(H, W)`` of the feature map.
      columns: maps shown per image: map ``j·d/columns`` (the first of each of
        ``columns`` equal channel blocks).
      zoom: nearest-neighbour upscaling of the whole picture.

    Returns:
      ``[1, N·S·zoom, (1 + columns)·S·zoom, 3]`` float32: each row an image, then
      the image under each map (red = where the map puts its weight; each map
      stretched from its own minimum to its maximum, so a near-uniform map shows
      its shape too: read its sharpness from ``map_entropy``).
    """
    images = tf.cast(images, tf.float32)
    n, s = images.shape[0], images.shape[1]
    d = maps.shape[-1]
    picked = tf.gather(maps, [j * d // columns for j in range(columns)], axis=2)
    picked = tf.reshape(picked, [n, grid[0], grid[1], columns])
    low = tf.reduce_min(picked, axis=[1, 2], keepdims=True)
    high = tf.reduce_max(picked, axis=[1, 2], keepdims=True)
    picked = (picked - low) / (high - low + 1e-12)
    up = tf.image.resize(picked, [s, s], method="bilinear")  # [N, S, S, cols]
    tiles = [images]
    red = tf.constant([1.0, 0.0, 0.0])
    for j in range(columns):
        m = up[..., j:j + 1] * 0.7
        tiles.append(images * (1.0 - m) + m * red)
    rows = tf.concat(tiles, axis=2)  # [N, S, (1+cols)·S, 3]
    picture = tf.reshape(rows, [1, n * s, (1 + columns) * s, 3])
    size = [n * s * zoom, (1 + columns) * s * zoom]
    return tf.image.resize(picture, size, method="nearest")


# ---------------------------------------------------------------------------
# The shared head and the two methods.


class LEWELHead(MomentumMethod):
    """The LEWEL networks and tower; subclasses add the predictors and the loss."""

    flag_prefix = "lewel_"
    projector_batch_norm = True  # paper: one hidden layer followed by BN and ReLU
    supports_shuffle_bn = True
    use_predictors = False

    def build_heads(self):
        m, p = self.run_config.model, self.params
        d, c_in = m.proj_dim, self.feature_dim
        h = p.groups
        if d % h or c_in % h:
            raise UserError(
                f"--lewel_groups={h} must divide --proj_dim={d} (the alignment maps) "
                f"and the backbone's {c_in} channels; use a common divisor such as "
                f"{math.gcd(d, c_in)}.")
        self.aligned_dim = p.aligned_dim or d
        self.build_tower(predictor=self.use_predictors)
        self.aligned_proj = self.mlp(c_in, [m.proj_hidden_dim], self.aligned_dim,
                                     "aligned_projector")
        self.target_aligned_proj = self.momentum_target(self.aligned_proj)
        self.aligned_pred = None
        if self.use_predictors:
            self.aligned_pred = self.mlp(self.aligned_dim, [m.pred_hidden_dim],
                                         self.aligned_dim, "aligned_predictor")

    def lewel_tower(self, x, backbone, proj, aligned_proj, training=True):
        """``{"global" [B, d], "aligned" [B, d/h, c], "maps" [B, HW, d],
        "grid": (H, W)}`` of ``x`` through ``f, g, p`` (compute dtype, maps float32)."""
        features = backbone(x, training=training)
        fmap = features["feature_map"]
        _, hh, ww, c = fmap.shape
        z_g, heat = apply_mlp_global_and_pixelwise(proj, features["pooled"], fmap,
                                                   training=training)
        maps = alignment_maps(tf.reshape(heat, [-1, hh * ww, heat.shape[-1]]),
                              self.params.scale)
        y = aligned_pool(tf.reshape(fmap, [-1, hh * ww, c]), maps, self.params.groups)
        z_a = apply_mlp_pixelwise(aligned_proj, y, training=training)
        return {"global": z_g, "aligned": z_a, "maps": maps, "grid": (hh, ww)}

    def online_tower(self, x):
        out = self.lewel_tower(x, self.backbone, self.proj, self.aligned_proj)
        if self.use_predictors:
            out["global_pred"] = self.pred(out["global"], training=True)
            out["aligned_pred"] = apply_mlp_pixelwise(self.aligned_pred,
                                                      out["aligned"], training=True)
        return out

    def target_tower(self, x, step):
        training = not self.run_config.train.ema_bn

        def fn(images):
            out = self.lewel_tower(images, self.target_backbone, self.target_proj,
                                   self.target_aligned_proj, training=training)
            return {"global": out["global"], "aligned": out["aligned"]}

        return self.momentum_forward(fn, x, step)

    def forward(self, views_, step):
        """``online1/2``: online towers of the two views; ``target1/2``: momentum
        towers (global and aligned embeddings only)."""
        x1, x2 = views_
        return {"online1": self.online_tower(x1), "target2": self.target_tower(x2, step),
                "target1": self.target_tower(x1, step),
                "online2": self.online_tower(x2)}

    def pair_losses(self, online, target, out):
        """``(L_g, L_a)`` of one view direction."""
        raise NotImplementedError

    def objective(self, out, step):
        beta = self.params.beta
        g1, a1 = self.pair_losses(out["online1"], out["target2"], out)
        g2, a2 = self.pair_losses(out["online2"], out["target1"], out)
        l_g, l_a = g1 + g2, a1 + a2
        return {"loss": (1.0 - beta) * l_g + beta * l_a, "global": l_g,
                "aligned": l_a, "map_entropy": map_entropy(out["online1"]["maps"]),
                "embedding_std": embedding_std(out["online1"]["global"])}

    def monitor_images(self, images):
        """``{"lewel/alignment_maps": picture}`` of the online maps of ``images``."""
        out = self.lewel_tower(images, self.backbone, self.proj, self.aligned_proj,
                               training=False)
        return {"lewel/alignment_maps": draw_maps(images, out["maps"], out["grid"],
                                                  columns=self.params.groups)}


@register_method("lewel_b")
class LEWELB(LEWELHead):
    """LEWEL_B: BYOL losses with predictors ``q`` (global) and ``s`` (aligned)."""

    params_cls = LEWELParams
    use_predictors = True

    def view_specs(self):
        size = self.run_config.data.image_size
        return views.byol_a(size) + views.byol_b(size)

    def pair_losses(self, online, target, out):
        c = self.aligned_dim
        l_g = byol_mse(online["global_pred"], target["global"])
        l_a = byol_mse(tf.reshape(online["aligned_pred"], [-1, c]),
                       tf.reshape(target["aligned"], [-1, c]))
        return l_g, l_a


@register_method("lewel_m")
class LEWELM(LEWELHead):
    """LEWEL_M: InfoNCE, queue negatives (global), in-batch negatives (aligned)."""

    params_cls = LEWELMParams
    default_batch_norm = "shuffle"

    def build_heads(self):
        super().build_heads()
        self.queue = self.memory_bank(self.run_config.model.proj_dim)

    def view_specs(self):
        return views.strong(self.run_config.data.image_size) * 2

    def forward(self, views_, step):
        out = super().forward(views_, step)
        out["queue"] = self.queue.read()
        return out

    def pair_losses(self, online, target, out):
        tau = self.params.temperature
        l_g = info_nce(l2_normalize(online["global"]), l2_normalize(target["global"]),
                       out["queue"], tau)
        l_a = info_nce_in_batch_grouped(l2_normalize(online["aligned"]),
                                        l2_normalize(target["aligned"]), tau)
        return l_g, l_a

    def commit(self, out, step):
        self.queue.enqueue(l2_normalize(out["target2"]["global"]))
