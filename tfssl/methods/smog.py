"""SMoG: synchronous momentum grouping (Pang et al. 2022).

Online ``f, g`` (projector with BN on its output) + predictor ``q``; momentum
``f_t, g_t``; group features ``G`` ``[K, d]`` (:mod:`tfssl.methods.groups`).  For
an online crop ``a`` paired with a target (global) crop ``b``::

    h_a = g(f(x_a))     z_a = norm(h_a)     p_a = q(h_a)     z_b = norm(g_t(f_t(x_b)))
    c   = argmax(z_b·Gᵀ)                                                 (eq. 4, assign)
    G'  = norm(β·G + (1−β)·mean{z_a : c}) on assigned rows, global sums  (eq. 4, update)
    L   = CE(norm(p_a)·G'ᵀ / τ, c)                                       (eq. 3)

``G'`` keeps its gradient path through the batch's ``(1−β)·mean`` term; ``G``
stores ``sg(G')``.  β follows ``linear_ramp(step, 1.0, β, T)`` (paper) or is
constant.  Every ``reset_interval`` steps (after the EMA update, in the graph):
k-means on the cache of online features of the last interval re-groups ``G`` and the
momentum networks are hard-reset to the online ones.  With ``init=kmeans`` the
groups are k-means of the first step's features (inside the compiled step 0).

Decisions the paper leaves open (docs/methods/smog.md lists them too):

* ``p = q(h)`` on the *un-normalised* projection (the predictor is stacked on the
  projection head, as the paper and BYOL do); only ``z`` is normalised.
* View roles: ``symmetric=false`` (default, the paper's alternation) swaps which
  BYOL recipe the online branch sees by step parity; ``symmetric=true`` uses both
  directions every step with one group update from both online global crops.
* Multi-crop (``crops=6``: 2 global + 4 local at ~3/7 of the side): assignments come
  only from the momentum branch on the global crops; every online crop is paired
  with the target global crop of the *other* recipe (``byol_a`` crops with the
  ``byol_b`` global and vice versa; under alternation every crop with the one target
  global).  Only the online *global* crops update ``G`` and fill the cache (local
  crops see 5-20% of the image; the groups model global-view features).  Crops of
  one size go through the networks as one batch (BN over all of them).
"""

import dataclasses

import tensorflow as tf

from tfssl import schedules
from tfssl.config import non_negative, one_of, option, positive, probability
from tfssl.data import views
from tfssl.errors import UserError
from tfssl.losses import l2_normalize
from tfssl.methods import groups as groups_lib
from tfssl.methods.base import MomentumMethod, register_method
from tfssl.methods.memory_bank import MemoryBank, check_queue_size
from tfssl.monitoring import embedding_std

#: Automatic cache size cap (rows): min(reset_interval x rows per step, this).
MAX_AUTO_CACHE = 65536


@dataclasses.dataclass(frozen=True)
class SMoGParams:
    n_groups: int = option(300, "Number of groups K (paper: 3000 on ImageNet; 300 for "
                           "CIFAR-size data).", positive)
    temperature: float = option(0.1, "Temperature τ of the group contrast.", positive)
    beta: float = option(0.99, "Group momentum β: the end of the linear schedule from "
                         "1.0, or the constant.", probability)
    beta_schedule: str = option("linear", "β schedule: linear (1.0 -> --smog_beta over "
                                "training, paper) or constant.",
                                one_of("linear", "constant"))
    init: str = option("kmeans", "Group initialisation: kmeans (on the first step's "
                       "online features, in the graph) or random unit vectors.",
                       one_of("kmeans", "random"))
    kmeans_iters: int = option(10, "Lloyd iterations of the in-graph k-means (after "
                               "k-means++ seeding).", non_negative)
    reset_interval: int = option(300, "Every N steps: re-group by k-means on the "
                                 "cached features and hard-reset the momentum network "
                                 "(0 disables).", non_negative)
    reset_target: bool = option(True, "Also hard-reset the momentum network at each "
                                "reset (paper Table 7b: needed).")
    cache_size: int = option(0, "Rows of the feature cache for the reset k-means; 0 = "
                             "min(reset_interval x rows per step, 65536), a multiple "
                             "of --global_batch_size.", non_negative)
    symmetric: bool = option(False, "Both view directions every step (false: the "
                             "paper's alternation of the view roles by step parity).")
    crops: int = option(2, "Crops: 2 (two global views) or 6 (2 global + 4 local at "
                        "~3/7 of --image_size; multi-crop).", one_of(2, 6))

    def problems(self):
        if self.beta_schedule == "constant" and self.beta >= 1.0:
            return ("--smog_beta=1.0 with --smog_beta_schedule=constant freezes the "
                    "groups and cuts the gradient path through them; use < 1.")
        if self.cache_size and not self.reset_interval and self.init == "random":
            return ("--smog_cache_size is set but nothing reads the cache "
                    "(--smog_reset_interval=0 and --smog_init=random).")
        return None


def local_crop_size(image_size):
    """Local crop side: 96/224 = 3/7 of the global side (at least 8 px)."""
    return max(8, int(round(image_size * 3 / 7)))


def cache_rows(params, global_batch):
    """Feature-cache rows (0: no cache); raises :class:`UserError` on a bad size.

    One step enqueues ``rows = B`` (alternating) or ``2B`` (symmetric) online global
    features.  The cache must hold one step (the k-means init reads it) and, with
    resets, at most ``reset_interval`` steps (so it is full at the first reset).
    """
    rows = (2 if params.symmetric else 1) * global_batch
    interval = params.reset_interval
    if not interval and params.init != "kmeans":
        return 0
    if not params.cache_size:
        if not interval:
            return rows
        return max(rows, min(interval * rows, MAX_AUTO_CACHE) // global_batch
                   * global_batch)
    size = params.cache_size
    check_queue_size(size, global_batch, "--smog_cache_size")
    if size < rows or (interval and size > interval * rows):
        raise UserError(
            f"--smog_cache_size={size} must be between one step ({rows} rows) and "
            f"--smog_reset_interval steps ({interval * rows} rows).")
    return size


@register_method("smog")
class SMoG(MomentumMethod):
    params_cls = SMoGParams
    flag_prefix = "smog_"
    supports_shuffle_bn = True

    def build_heads(self):
        p, m, t = self.params, self.run_config.model, self.run_config.train
        self.build_tower(predictor=True, projector_last_bn=True)
        self.groups = groups_lib.GroupFeatures(p.n_groups, m.proj_dim, seed=t.seed,
                                               name="group_features")
        size = cache_rows(p, t.global_batch_size)
        self.cache = (MemoryBank(size, m.proj_dim, seed=t.seed, name="feature_cache")
                      if size else None)

    def view_specs(self):
        """Globals ``byol_a, byol_b``; with ``crops=6`` then locals ``a, b, a, b``."""
        size = self.run_config.data.image_size
        if self.params.crops == 6:
            return views.multi_crop(size, local_crop_size(size), 2, 4,
                                    base=("byol_a", "byol_b"), global_scale=(0.2, 1.0),
                                    local_scale=(0.05, 0.2))
        return views.byol_a(size) + views.byol_b(size)

    # -- pieces -------------------------------------------------------------------

    def beta_at(self, step):
        """β at ``step``: ``1 + (β − 1)·min(step/T, 1)`` (linear) or ``β``."""
        p = self.params
        if p.beta_schedule == "constant":
            return schedules.constant(step, p.beta)
        return schedules.linear_ramp(step, 1.0, p.beta, self.total_steps)

    def roles(self, views_, step):
        """``(online crops, target crops, pairing)``: online crop ``i`` uses the
        assignment of target crop ``pairing[i]``; the first online crops are the
        global ones (those update ``G``)."""
        g0, g1 = views_[0], views_[1]
        local = tuple(views_[2:])
        if self.params.symmetric:
            online = (g0, g1) + local
            return online, (g0, g1), [1 - i % 2 for i in range(len(online))]
        even = tf.equal(tf.cast(step, tf.int64) % 2, 0)
        xa, xb = tf.cond(even, lambda: (g0, g1), lambda: (g1, g0))
        return (xa,) + local, (xb,), [0] * (1 + len(local))

    @staticmethod
    def _project(crops, backbone, proj):
        """``g(f(x))`` per crop; consecutive crops of one size share one forward (BN
        over all of them)."""
        out, i = [], 0
        while i < len(crops):
            j = i + 1
            while j < len(crops) and crops[j].shape[1] == crops[i].shape[1]:
                j += 1
            x = tf.concat(crops[i:j], 0) if j - i > 1 else crops[i]
            h = MomentumMethod.tower_forward(x, backbone, proj)["projection"]
            out += tf.split(h, j - i) if j - i > 1 else [h]
            i = j
        return out

    def _target_embeddings(self, crops, step):
        """``norm(g_t(f_t(x)))`` per target crop (float32 ``[B, d]`` each); the
        crops (all global, one size) share one momentum-encoder forward."""
        z = self.forward_target(tf.concat(crops, 0), step)["embedding"]
        return tf.split(z, len(crops))

    def _kmeans(self, x, step):
        p = self.params
        return groups_lib.kmeans(x, p.n_groups, p.kmeans_iters,
                                 self.random_seed(step))[0]

    # -- the method ---------------------------------------------------------------

    def forward(self, views_, step):
        """``h``/``z``/``pred``: per online crop the projection ``g(f(x))``, its
        normalisation and the prediction ``q(h)`` (one predictor forward per crop);
        ``z_t``: per
        target crop ``norm(g_t(f_t(x)))``; ``groups``: ``G`` as read (the k-means of
        this step's features at step 0 with ``init=kmeans``); ``cache_rows``: the
        gathered online global features the commit enqueues."""
        p = self.params
        step = tf.cast(step, tf.int64)
        online, target, pairing = self.roles(views_, step)
        n_global = 2 if p.symmetric else 1
        out = {"pairing": pairing, "n_global": n_global}
        out["h"] = self._project(online, self.backbone, self.proj)
        # Normalised per crop, after the split (on the joint batch the row sums
        # round differently).
        out["z"] = [l2_normalize(x) for x in out["h"]]
        out["pred"] = [self.pred(x, training=True) for x in out["h"]]
        out["z_t"] = self._target_embeddings(target, step)
        # View-major and gathered: the same rows as on one device.
        if self.cache is not None:
            out["cache_rows"] = [MemoryBank.gather(zg) for zg in out["z"][:n_global]]
        current = self.groups.read()
        if p.init == "kmeans":
            latest = tf.concat(out["cache_rows"], 0)
            current = tf.cond(tf.equal(step, 0),
                              lambda: self._kmeans(latest, step), lambda: current)
        out["groups"] = current
        return out

    def objective(self, out, step):
        """The group contrast (eq. 3) against ``G'`` of the synchronous update (eq.
        4); adds ``new_groups`` and ``counts`` to ``out`` for the commit."""
        p = self.params
        step = tf.cast(step, tf.int64)
        n_global, z = out["n_global"], out["z"]
        assigned = [groups_lib.assign_groups(x, out["groups"]) for x in out["z_t"]]
        labels = [assigned[k] for k in out["pairing"]]
        beta = self.beta_at(step)
        new_groups, counts = groups_lib.synchronous_update(
            out["groups"], tf.concat(z[:n_global], 0),
            tf.concat(labels[:n_global], 0), beta)
        out["new_groups"], out["counts"] = new_groups, counts

        ce, accuracy = 0.0, 0.0
        for pred, label in zip(out["pred"], labels):
            term, logits = groups_lib.group_cross_entropy(pred, new_groups, label,
                                                          p.temperature)
            ce += term
            hit = tf.equal(tf.argmax(logits, 1, output_type=tf.int32), label)
            accuracy += tf.reduce_mean(tf.cast(hit, tf.float32))
        ce /= len(out["pred"])
        accuracy /= len(out["pred"])
        return {"loss": ce, "group_ce": ce, "beta": beta, "group_acc": accuracy,
                "groups_used": tf.reduce_sum(tf.cast(counts > 0, tf.float32)),
                "embedding_std": embedding_std(z[0])}

    def commit(self, out, step):
        """Enqueues the online global features, stores ``sg(G')``, counts."""
        step = tf.cast(step, tf.int64)
        for rows in out.get("cache_rows", ()):
            self.cache.enqueue(rows, gathered=True)
        self.groups.write(out["new_groups"])
        window = self.params.reset_interval or self.total_steps + 1
        self.groups.count(out["counts"], tf.equal(step % window, 0))

    def after_step(self, step):
        """At the end of every ``reset_interval``-th step: k-means on the cache -> ``G``,
        and (``reset_target``) momentum networks := online networks."""
        p = self.params
        if not p.reset_interval:
            return None
        step = tf.cast(step, tf.int64)
        due = tf.equal((step + 1) % p.reset_interval, 0)
        if p.reset_target:
            def reset():
                for pair in self.momentum_pairs:  # NONE-aggregated: cond-safe
                    pair.reset()
                return tf.constant(True)

            tf.cond(due, reset, lambda: tf.constant(False))
        current = self.groups.read()
        self.groups.write(tf.cond(due, lambda: self._kmeans(self.cache.read(), step),
                                  lambda: current))
        self.groups.resets.assign_add(tf.cast(due, tf.int32))
        return None

    def summaries(self):
        """Occupancy = global assignments per group since the last reset (a window of
        at most ``reset_interval`` steps; not an EMA), its entropy (nats, max
        ``log K``), the number of groups with no assignment in that window, resets."""
        counts = tf.convert_to_tensor(self.groups.window_counts)
        return {"smog/occupancy": counts,
                "smog/occupancy_entropy": groups_lib.occupancy_entropy(counts),
                "smog/empty_groups": tf.reduce_sum(tf.cast(counts == 0, tf.float32)),
                "smog/resets": tf.cast(tf.convert_to_tensor(self.groups.resets),
                                       tf.float32)}
