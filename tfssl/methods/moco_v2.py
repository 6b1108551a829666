"""MoCo-v2 (Chen et al. 2020), the contrastive baseline.

``L = info_nce(norm(g(f(x1))), sg(norm(g_t(f_t(x2)))), Q, τ)``; the keys are then
enqueued.  With ``--moco_symmetric`` the roles of the views are also swapped and the
two losses averaged; only the keys of ``x2`` are enqueued, so the queue still
advances one global batch per step (a deviation from MoCo-v3's symmetrisation,
which has no queue).

BN across replicas defaults to MoCo's shuffling BN of the key encoder
(``--batch_norm=auto`` = ``shuffle``, :mod:`tfssl.methods.shuffle_bn`).
"""

import dataclasses

from tfssl.config import option, positive
from tfssl.data import views
from tfssl.losses import info_nce
from tfssl.methods.base import MomentumMethod, register_method
from tfssl.monitoring import embedding_std


@dataclasses.dataclass(frozen=True)
class MoCoV2Params:
    temperature: float = option(0.2, "InfoNCE temperature τ.", positive)
    symmetric: bool = option(False, "Also swap the views and average the losses.")


@register_method("moco_v2")
class MoCoV2(MomentumMethod):
    params_cls = MoCoV2Params
    flag_prefix = "moco_"
    projector_batch_norm = False  # MoCo-v2's MLP head is Linear-ReLU-Linear.
    default_batch_norm = "shuffle"
    supports_shuffle_bn = True

    def build_heads(self):
        self.build_tower()
        self.queue = self.memory_bank(self.run_config.model.proj_dim)

    def view_specs(self):
        return views.strong(self.run_config.data.image_size) * 2

    def key(self, x):
        """Keys ``norm(g_t(f_t(x)))`` of ``x`` (no shuffling): float32 ``[B, d]``."""
        return self.target_embedding(x)

    def forward(self, views_, step):
        """``q1``/``k2`` (and ``q2``/``k1`` when symmetric): queries ``norm(g(f(x)))``
        and keys ``norm(g_t(f_t(x)))``, float32 ``[B, d]``; ``queue`` ``[K, d]``, the
        negatives as read before this step's enqueue; ``online1`` / ``online2`` the
        whole online forwards of the two views."""
        x1, x2 = views_
        out = {"queue": self.queue.read()}
        out["online1"] = self.forward_online(x1)
        out["q1"] = out["online1"]["embedding"]
        out["k2"] = self.forward_target(x2, step)["embedding"]
        if self.params.symmetric:
            out["online2"] = self.forward_online(x2)
            out["q2"] = out["online2"]["embedding"]
            out["k1"] = self.forward_target(x1, step)["embedding"]
        return out

    def objective(self, out, step):
        tau = self.params.temperature
        loss = info_nce(out["q1"], out["k2"], out["queue"], tau)
        if self.params.symmetric:
            loss = 0.5 * (loss + info_nce(out["q2"], out["k1"], out["queue"], tau))
        return {"loss": loss, "info_nce": loss, "embedding_std": embedding_std(out["q1"])}

    def commit(self, out, step):
        self.queue.enqueue(out["k2"])
