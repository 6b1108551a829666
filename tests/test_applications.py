"""``--backbone=keras:NAME``: a keras.applications architecture under every method,
trained and served from the command line."""

import os
import subprocess
import sys

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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = "MobileNetV3Small"


def test_every_method_takes_a_step_on_a_keras_application(tmp_path):
    for method in METHODS.names():
        config = tiny_config(tmp_path / method, method, batch=8, queue=32,
                             backbone=f"keras:{NAME}", image_size=64)
        model = build_model(config, tf.distribute.get_strategy(), 10, (0.5,) * 3,
                            (0.5,) * 3)
        assert model.feature_dim == 576
        logs = model.train_step(real_views(model, 8))
        assert np.isfinite(float(logs["loss"])), method
    bns = [l for l in model.backbone.get_layer(NAME.lower()).layers
           if isinstance(l, keras.layers.BatchNormalization)]
    assert len(bns) == 34 and all(isinstance(b, batch_norm.BatchNormalization)
                                  for b in bns)  # ours: fused, sync, freezable


def test_unknown_application_is_named():
    with pytest.raises(UserError, match="keras:MobileNetV9 is not in keras.applications"):
        applications.build_application("MobileNetV9")


def test_command_line_trains_and_exports_a_keras_backbone(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT, CUDA_VISIBLE_DEVICES="")

    def run(module, *args):
        return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)

    out = run("tfssl.train", "--flagfile=configs/fashion_mnist/quickstart.flags",
              f"--model_dir={tmp_path}", f"--backbone=keras:{NAME}", "--image_size=32",
              "--global_batch_size=16", "--queue_size=64", "--epochs=1",
              "--steps_per_epoch=2", "--knn_train_examples=64", "--knn_eval_examples=32")
    assert out.returncode == 0, out.stderr[-2000:]
    out = run("tfssl.export", f"--model_dir={tmp_path}")
    assert out.returncode == 0, out.stderr[-2000:]
    served = tf.saved_model.load(str(tmp_path / "export")).signatures["serving_default"](
        images=tf.zeros([2, 32, 32, 1], tf.uint8))
    assert served["features"].shape == (2, 576)
