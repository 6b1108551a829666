"""BYOL (Grill et al. 2020), the non-contrastive baseline.

``L = byol_mse(q(g(f(x1))), g_t(f_t(x2))) + byol_mse(q(g(f(x2))), g_t(f_t(x1)))``
with the asymmetric ``byol_a`` / ``byol_b`` views.  The momentum schedule (cosine
from m0 to 1) is set by the flagfiles, not here.
"""

import dataclasses

import tensorflow as tf

from tfssl.data import views
from tfssl.losses import byol_mse
from tfssl.methods.base import MomentumMethod, register_method
from tfssl.monitoring import embedding_std


@dataclasses.dataclass(frozen=True)
class BYOLParams:
    pass


@register_method("byol")
class BYOL(MomentumMethod):
    params_cls = BYOLParams
    flag_prefix = "byol_"
    supports_shuffle_bn = True

    def build_heads(self):
        self.proj = self.projector()
        self.pred = self.predictor()
        self.target_backbone = self.momentum_target(self.backbone)
        self.target_proj = self.momentum_target(self.proj)

    def view_specs(self):
        size = self.run_config.data.image_size
        return views.byol_a(size) + views.byol_b(size)

    def _predict(self, x):
        """``q(g(f(x)))`` in the compute dtype; ``byol_mse`` casts to float32."""
        return self.pred(self.proj(self.backbone(x, training=True)["pooled"],
                                   training=True), training=True)

    def _target(self, x):
        """``g_t(f_t(x))``, cast to float32: ``[B, d]``."""
        z = self.target_proj(self.target_backbone(x, training=True)["pooled"],
                             training=True)
        return tf.cast(z, tf.float32)

    def compute_losses(self, views_, step):
        x1, x2 = views_
        p1 = self._predict(x1)
        z2 = self.momentum_forward(self._target, x2, step)
        z1 = self.momentum_forward(self._target, x1, step, index=1)
        loss = byol_mse(p1, z2) + byol_mse(self._predict(x2), z1)
        return {"loss": loss, "byol": loss, "embedding_std": embedding_std(p1)}
