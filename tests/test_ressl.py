"""ReSSL against a numpy transcription of eqs. 3-5 and 7 on the model's own outputs."""

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import tiny_config
from tests.test_losses import np_info_nce, np_relation
from tests.test_methods import real_views
from tfssl import schedules
from tfssl.methods.ressl import five_crops
from tfssl.trainer import build_model

STRATEGY = tf.distribute.get_strategy()


def make(tmp_path, **overrides):
    config = tiny_config(tmp_path, "ressl", batch=8, queue=32, **overrides)
    return build_model(config, STRATEGY, 10, (0.5,) * 3, (0.5,) * 3)


def np_embeddings(model, views):
    weak, students = views[0], views[1:]
    z_t = model.encode(weak, model.target_backbone, model.target_proj).numpy()
    z_s = [model.student(x).numpy() for x in students]
    return z_t, z_s


@pytest.mark.parametrize("step, warmup, crops", [(0, 0, "single"), (3, 4, "single"),
                                                 (2, 4, "five")])
def test_loss_matches_numpy_transcription(tmp_path, step, warmup, crops):
    model = make(tmp_path, warmup_steps=warmup, crops=crops)
    views = real_views(model, 8)
    queue = model.queue.read().numpy()
    z_t, z_s = np_embeddings(model, views)
    # eqs. 3-5 per student crop, averaged over crops; eq. 7 with α = step/warmup.
    relation = np.mean([np_relation(z @ queue.T, z_t @ queue.T, 0.1, 0.04) for z in z_s])
    nce = np.mean([np_info_nce(z, z_t, queue, 0.1) for z in z_s]) if warmup else 0.0
    alpha = min(step / warmup, 1.0) if warmup else 1.0
    out = model.compute_losses(views, tf.constant(step, tf.int64))
    assert len(z_s) == (5 if crops == "five" else 1)
    np.testing.assert_allclose(float(out["relation"]), relation, rtol=1e-4)
    np.testing.assert_allclose(float(out["info_nce"]), nce, rtol=1e-4)
    np.testing.assert_allclose(float(out["alpha"]), alpha, rtol=1e-6)
    np.testing.assert_allclose(float(out["loss"]), alpha * relation + (1 - alpha) * nce,
                               rtol=1e-4)


def test_warmup_weight_table():
    table = {0: 0.0, 25: 0.25, 50: 0.5, 100: 1.0, 1000: 1.0}
    for step, alpha in table.items():
        assert schedules.warmup_weight(step, 100) == pytest.approx(alpha)
    assert schedules.warmup_weight(0, 0) == 1.0


def test_queue_holds_teacher_embeddings_of_the_weak_view(tmp_path):
    model = make(tmp_path)
    views = real_views(model, 8)
    z_t, z_s = np_embeddings(model, views)
    model.train_step(views)
    np.testing.assert_allclose(model.queue.read().numpy()[:8], z_t, atol=1e-5)
    assert not np.allclose(model.queue.read().numpy()[:8], z_s[0], atol=1e-3)
    specs = model.input_view_specs()
    assert specs[0].jitter_p == specs[0].blur_p == specs[0].gray_p == 0.0  # weak
    assert specs[1].jitter_p == 0.8  # strong


def test_predictor_only_on_the_student(tmp_path):
    model = make(tmp_path)
    onlines = [p.online for p in model.momentum_pairs]
    assert model.pred is not None and model.pred not in onlines
    assert {id(v) for v in model.pred.trainable_variables} <= {
        id(v) for v in model.online_variables}
    symmetric = make(tmp_path / "sym", predictor=False)
    assert symmetric.pred is None
    views = real_views(symmetric, 8)
    np.testing.assert_allclose(
        symmetric.student(views[1]).numpy(),
        symmetric.encode(views[1], symmetric.backbone, symmetric.proj).numpy(), atol=1e-6)


def test_five_crop_preset_is_the_paper_at_224_and_scaled_below():
    big = five_crops(224)
    assert [s.size for s in big] == [224, 192, 160, 128, 96]
    assert [s.crop_scale for s in big] == [(0.14, 1.0), (0.117, 0.86), (0.095, 0.715),
                                          (0.073, 0.571), (0.05, 0.429)]
    assert [s.size for s in five_crops(28)] == [28, 24, 20, 16, 12]


def test_teacher_temperature_must_be_sharper():
    from tfssl.errors import UserError
    from tfssl.methods.ressl import ReSSLParams

    assert "must be smaller" in ReSSLParams(tau_s=0.1, tau_t=0.1).problems()
    assert ReSSLParams().problems() is None
    with pytest.raises(UserError):
        from tfssl.config import validate_run
        validate_run(tiny_config("/tmp/x", "ressl", tau_t=0.2), "ressl_")
