"""BYOL (Grill et al. 2020), the non-contrastive baseline.

``L = byol_mse(q(g(f(x1))), g_t(f_t(x2))) + byol_mse(q(g(f(x2))), g_t(f_t(x1)))``
with the asymmetric ``byol_a`` / ``byol_b`` views.  The momentum schedule (cosine
from m0 to 1) is set by the flagfiles, not here.
"""

import dataclasses

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
        self.build_tower(predictor=True)

    def view_specs(self):
        size = self.run_config.data.image_size
        return views.byol_a(size) + views.byol_b(size)

    def forward(self, views_, step):
        """``online1``/``online2``: the online forwards of the views (``prediction``
        ``q(g(f(x)))``); ``z1``/``z2``: target projections ``g_t(f_t(x))``."""
        x1, x2 = views_
        out = {"online1": self.forward_online(x1)}
        out["z2"] = self.forward_target(x2, step, ("projection",))["projection"]
        out["z1"] = self.forward_target(x1, step, ("projection",))["projection"]
        out["online2"] = self.forward_online(x2)
        return out

    def objective(self, out, step):
        p1 = out["online1"]["prediction"]
        loss = (byol_mse(p1, out["z2"])
                + byol_mse(out["online2"]["prediction"], out["z1"]))
        return {"loss": loss, "byol": loss, "embedding_std": embedding_std(p1)}
