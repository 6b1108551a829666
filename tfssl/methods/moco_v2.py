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
        self.proj = self.projector()
        self.target_backbone = self.momentum_target(self.backbone)
        self.target_proj = self.momentum_target(self.proj)
        self.queue = self.memory_bank(self.run_config.model.proj_dim)

    def view_specs(self):
        return views.strong(self.run_config.data.image_size) * 2

    def key(self, x):
        """Keys ``norm(g_t(f_t(x)))``: float32 ``[B, d]``."""
        return self.encode(x, self.target_backbone, self.target_proj)

    def compute_losses(self, views_, step):
        x1, x2 = views_
        tau = self.params.temperature
        negatives = self.queue.read()
        q1 = self.encode(x1, self.backbone, self.proj)
        k2 = self.momentum_forward(self.key, x2, step)
        loss = info_nce(q1, k2, negatives, tau)
        if self.params.symmetric:
            q2 = self.encode(x2, self.backbone, self.proj)
            k1 = self.momentum_forward(self.key, x1, step, index=1)
            loss = 0.5 * (loss + info_nce(q2, k1, negatives, tau))
        self.queue.enqueue(k2)
        return {"loss": loss, "info_nce": loss, "embedding_std": embedding_std(q1)}
