"""``--backbone=keras:NAME``: a keras.applications architecture under every method,
trained and served from the command line."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import tiny_config
from tests.test_methods import real_views
from tfssl.errors import UserError
from tfssl.methods import METHODS
from tfssl.models import applications, batch_norm
from tfssl.trainer import build_model

NAME = "MobileNetV3Small"


def test_every_method_runs_on_a_keras_application(tmp_path):
    """Every method's forward and losses; a whole step (gradients, EMA, queue) for
    the two that use more of the backbone than its pooled vector (LEWEL's feature
    map, the multi-network patches under frozen BN statistics)."""
    for method in METHODS.names():
        config = tiny_config(tmp_path / method, method, batch=8, queue=32,
                             backbone=f"keras:{NAME}", image_size=64)
        model = build_model(config, tf.distribute.get_strategy(), 10, (0.5,) * 3,
                            (0.5,) * 3)
        assert model.feature_dim == 576
        views = real_views(model, 8)
        if method in ("lewel_m", "multinet"):
            logs = model.train_step(views)
        else:
            logs = model.compute_losses(views, tf.constant(0, tf.int64))
        assert np.isfinite(float(logs["loss"])), method
    bns = [l for l in model.backbone.get_layer(NAME.lower()).layers
           if isinstance(l, keras.layers.BatchNormalization)]
    assert len(bns) == 34 and all(isinstance(b, batch_norm.BatchNormalization)
                                  for b in bns)  # ours: fused, sync, freezable


def test_unknown_application_is_named():
    with pytest.raises(UserError, match="keras:MobileNetV9 is not in keras.applications"):
        applications.build_application("MobileNetV9")


def test_a_keras_backbone_is_exported_and_served(tmp_path):
    from tfssl import api

    config = tiny_config(tmp_path, "moco_v2", batch=8, queue=32,
                         backbone=f"keras:{NAME}", image_size=32)
    model = build_model(config, tf.distribute.get_strategy(), 10, (0.5,) * 3,
                        (0.5,) * 3)
    model.train_step(real_views(model, 8))
    path = api.export(model, str(tmp_path / "export"), channels=1)
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 1), np.uint8)
    served = tf.saved_model.load(path).signatures["serving_default"](
        images=tf.constant(images))
    want = model.backbone(tf.image.grayscale_to_rgb(
        tf.constant(images / 255.0, tf.float32)), training=False)
    np.testing.assert_allclose(served["features"].numpy(), want["pooled"].numpy(),
                               rtol=1e-4, atol=1e-5)
