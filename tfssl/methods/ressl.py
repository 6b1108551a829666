"""ReSSL: relational self-supervised learning (Zheng et al., paper 001).

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
        self.proj = self.projector()
        self.pred = self.predictor() if self.params.predictor else None
        self.target_backbone = self.momentum_target(self.backbone)
        self.target_proj = self.momentum_target(self.proj)
        self.queue = self.memory_bank(self.run_config.model.proj_dim)

    def view_specs(self):
        """``(weak teacher crop, student crop, [more student crops])``."""
        size = self.run_config.data.image_size
        if self.params.crops == "five":
            return views.weak(size) + five_crops(size)
        return views.weak(size) + views.strong(size)

    def teacher(self, x):
        """``norm(g_t(f_t(x)))``: float32 ``[B, d]``."""
        return self.encode(x, self.target_backbone, self.target_proj)

    def student(self, x):
        """``norm(q(g(f(x))))`` (or ``norm(g(f(x)))`` without predictor), float32."""
        z = self.proj(self.backbone(x, training=True)["pooled"], training=True)
        if self.pred is not None:
            z = self.pred(z, training=True)
        return l2_normalize(z)

    def compute_losses(self, views_, step):
        weak, students = views_[0], views_[1:]
        p = self.params
        z_t = self.momentum_forward(self.teacher, weak, step)
        queue = self.queue.read()
        t_logits = _sim(z_t, queue)
        alpha = schedules.warmup_weight(step, p.warmup_steps)
        z_students = [self.student(x) for x in students]
        relation, nce = 0.0, 0.0
        for z_s in z_students:
            relation += relation_ce(_sim(z_s, queue), t_logits, p.tau_s, p.tau_t)
            if p.warmup_steps > 0:
                nce += info_nce(z_s, z_t, queue, p.tau_s)
        relation /= len(students)
        nce /= len(students)
        loss = alpha * relation + (1.0 - alpha) * nce
        self.queue.enqueue(z_t)
        return {"loss": loss, "relation": relation, "info_nce": nce, "alpha": alpha,
                "teacher_entropy": entropy(t_logits, p.tau_t),
                "embedding_std": embedding_std(z_students[0])}


def _sim(z, queue):
    """Cosine similarities ``[B, K]`` of unit rows ``z`` to the queue rows."""
    return tf.matmul(z, queue, transpose_b=True)
