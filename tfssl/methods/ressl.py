"""ReSSL: relational self-supervised learning (Zheng et al. 2021).

Student: strong view(s) -> ``f, g`` (+ predictor ``q`` unless ``--ressl_predictor=
false``, the symmetric NeurIPS variant).  Teacher: one **weak** view -> ``f_t,
g_t`` (EMA).  With the queue ``Q`` of teacher embeddings (eqs. 3-5)::

    s = norm(z_s)·Qᵀ,  t = norm(z_t)·Qᵀ
    L_rel = H(softmax(t/τt), softmax(s/τs))          # KL up to H(p_t)
    α = min(step / warmup_steps, 1)                    # eq. 7, InfoNCE warm-up
    L = α·L_rel + (1−α)·info_nce(z_s, z_t, Q, τs)

Multi-crop: every student crop is matched against the one weak teacher crop and
the terms are averaged over crops.  The teacher embeddings are enqueued after the
logits are computed.
"""

import dataclasses

import tensorflow as tf

from tfssl import schedules
from tfssl.config import one_of, option, positive
from tfssl.data import views
from tfssl.losses import entropy, info_nce, l2_normalize, relation_ce
from tfssl.methods.base import MomentumMethod, register_method
from tfssl.monitoring import embedding_std


@dataclasses.dataclass(frozen=True)
class ReSSLParams:
    tau_s: float = option(0.1, "Student temperature τs.", positive)
    tau_t: float = option(0.04, "Teacher temperature τt (< τs: sharper target).",
                          positive)
    warmup_steps: int = option(
        0, "InfoNCE warm-up steps: α = min(step / warmup_steps, 1); 0 disables it.")
    predictor: bool = option(True, "Asymmetric predictor on the student (false: the "
                             "symmetric variant).")
    crops: str = option(
        "single", "Student crops: single (one strong crop) or five (the paper's "
        "5-size multi-crop, sizes and scales scaled from 224 px to --image_size).",
        one_of("single", "five"))

    def problems(self):
        if self.tau_t >= self.tau_s:
            return (f"--ressl_tau_t={self.tau_t} must be smaller than --ressl_tau_s="
                    f"{self.tau_s} (the teacher distribution must be sharper).")
        if self.warmup_steps < 0:
            return f"--ressl_warmup_steps={self.warmup_steps} must be >= 0."
        return None


def five_crops(image_size):
    """ReSSL's 5-size multi-crop scaled to ``image_size``.

    At 224 px this is exactly the paper's preset: sizes 224/192/160/128/96, min
    scales 0.14/0.117/0.095/0.073/0.05, max scales 1/0.86/0.715/0.571/0.429.
    """
    if image_size == 224:
        return views.ressl_imagenet_multicrop()
    specs = []
    for size, lo, hi in views.RESSL_IMAGENET_CROPS:
        side = max(8, int(round(size * image_size / 224)))
        specs.append(dataclasses.replace(views.strong(side)[0], crop_scale=(lo, hi)))
    return tuple(specs)


@register_method("ressl")
class ReSSL(MomentumMethod):
    params_cls = ReSSLParams
    flag_prefix = "ressl_"
    supports_shuffle_bn = True

    def build_heads(self):
        self.build_tower(predictor=self.params.predictor)
        self.queue = self.memory_bank(self.run_config.model.proj_dim)

    def view_specs(self):
        """``(weak teacher crop, student crop, [more student crops])``."""
        size = self.run_config.data.image_size
        if self.params.crops == "five":
            return views.weak(size) + five_crops(size)
        return views.weak(size) + views.strong(size)

    def teacher(self, x):
        """Teacher embeddings ``norm(g_t(f_t(x)))`` of ``x`` (no shuffling): float32 ``[B, d]``."""
        return self.target_embedding(x)

    def student(self, x):
        """``norm(q(g(f(x))))`` (or ``norm(g(f(x)))`` without predictor), float32."""
        return self.student_embedding(self.forward_online(x))

    def student_embedding(self, online):
        """The student embedding of an online forward's outputs."""
        if "prediction" in online:
            return l2_normalize(online["prediction"])
        return online["embedding"]

    def forward(self, views_, step):
        """``z_t``: teacher embeddings of the weak view; ``queue`` (read before this
        step's enqueue); ``online``: the online forward of each student crop and
        ``z_s`` their student embeddings (float32 ``[B, d]`` each)."""
        weak, students = views_[0], views_[1:]
        out = {"z_t": self.forward_target(weak, step)["embedding"],
               "queue": self.queue.read()}
        out["online"] = [self.forward_online(x) for x in students]
        out["z_s"] = [self.student_embedding(o) for o in out["online"]]
        return out

    def objective(self, out, step):
        p = self.params
        z_t, queue = out["z_t"], out["queue"]
        t_logits = _sim(z_t, queue)
        alpha = schedules.warmup_weight(step, p.warmup_steps)
        relation, nce = 0.0, 0.0
        for z_s in out["z_s"]:
            relation += relation_ce(_sim(z_s, queue), t_logits, p.tau_s, p.tau_t)
            if p.warmup_steps > 0:
                nce += info_nce(z_s, z_t, queue, p.tau_s)
        relation /= len(out["z_s"])
        nce /= len(out["z_s"])
        loss = alpha * relation + (1.0 - alpha) * nce
        return {"loss": loss, "relation": relation, "info_nce": nce, "alpha": alpha,
                "teacher_entropy": entropy(t_logits, p.tau_t),
                "embedding_std": embedding_std(out["z_s"][0])}

    def commit(self, out, step):
        self.queue.enqueue(out["z_t"])


def _sim(z, queue):
    """Cosine similarities ``[B, K]`` of unit rows ``z`` to the queue rows."""
    return tf.matmul(z, queue, transpose_b=True)
