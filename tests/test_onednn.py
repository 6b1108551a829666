"""tfssl turns on TensorFlow's oneDNN CPU kernels unless the environment says no."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PROBE = ("import tfssl, tensorflow; "
          "from tensorflow.python.util import _pywrap_util_port as p; "
          "print(bool(p.IsMklEnabled()))")


def _onednn_enabled(value):
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if value is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = value
    env.update(TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    done = subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1] == "True"


@pytest.mark.parametrize("value, expected", [(None, True), ("0", False)])
def test_onednn_default_and_opt_out(value, expected):
    assert _onednn_enabled(value) is expected


# --- oneDNN's strided 1x1 weight-gradient overflow (crashed fine-tuning on AVX-512) ---
#
# oneDNN 3.7 (TensorFlow 2.21) computes the weight gradient of a strided 1x1
# convolution through a workspace booked too small when the input has fewer
# channels than the kernel's block (16 with AVX-512, 8 with AVX2) and a thread's
# share of the batch starts inside an image (batch 5 on 2 threads): it writes past
# its scratch buffer, and the gradient comes out wrong. The backbones therefore
# subsample and then run a stride-1 1x1 convolution (resnet.PointwiseConv2D).


def test_no_strided_pointwise_convolution_in_any_backbone():
    import keras

    from tfssl.models.resnet import BACKBONES, STEMS, build_backbone

    for name in BACKBONES:
        for stem in STEMS:
            model = build_backbone(name, stem=stem, width=0.125, image_size=32)
            strided = [layer.name for layer in model.layers
                       if isinstance(layer, keras.layers.Conv2D)
                       and tuple(layer.kernel_size) == (1, 1)
                       and tuple(layer.strides) != (1, 1)
                       and type(layer).convolution_op is keras.layers.Conv2D.convolution_op]
            assert strided == [], (name, stem, strided)


@pytest.mark.parametrize("channels", [4, 8, 12])
def test_strided_pointwise_conv_and_its_weight_gradient_match_numpy(channels):
    """``PointwiseConv2D(stride 2)``: output of Keras' strided 1x1 conv, weight
    gradient of its numpy transcription ``dL/dW = x[:, ::2, ::2]^T dL/dy``. With
    ``Conv2D(1, strides=2)`` this fails on AVX2 at 4 channels (and, by the oneDNN
    source, on AVX-512 at 4, 8 and 12): the gradient is off by hundreds."""
    import keras
    import numpy as np
    import tensorflow as tf

    from tfssl.models.resnet import PointwiseConv2D

    x = tf.constant(np.random.default_rng(channels).standard_normal(
        (5, 28, 28, channels)), tf.float32)
    ours = PointwiseConv2D(16, strides=2, use_bias=False)
    ours.build(x.shape)
    reference = keras.layers.Conv2D(16, 1, strides=2, use_bias=False)
    reference.build(x.shape)
    reference.kernel.assign(ours.kernel)
    with tf.GradientTape() as tape:
        y = ours(x)
        loss = tf.reduce_sum(y * y)
    grad = tape.gradient(loss, ours.kernel).numpy()[0, 0]
    np.testing.assert_array_equal(y.numpy(), reference(x).numpy())
    sub = x.numpy()[:, ::2, ::2, :].reshape(-1, channels)
    expected = sub.T @ (2.0 * y.numpy().reshape(-1, 16))
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-3)


_FINE_TUNE = """
import numpy as np, tensorflow as tf
import tfssl
from tfssl.models.resnet import PointwiseConv2D, build_backbone
tf.config.threading.set_intra_op_parallelism_threads(2)
tf.config.threading.set_inter_op_parallelism_threads(2)
batches = (16, 5, 3, 7, 1, 13, 9, 11, 2, 6)
# The strided 1x1 weight gradient alone, at channel counts below oneDNN's block.
for channels, size in ((4, 56), (8, 28), (8, 56), (12, 28)):
    conv = PointwiseConv2D(16, strides=2, use_bias=False)
    conv.build((None, size, size, channels))

    @tf.function(reduce_retracing=True)
    def grad(x, conv=conv):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(conv(x) ** 2)
        return tape.gradient(loss, conv.kernel)

    for b in batches:
        grad(tf.random.normal([b, size, size, channels], seed=b))
# The semi-supervised fine-tune pattern: training-mode BN, SGD, a smaller last batch.
for width in (0.0625, 0.125):  # 4 and 8 channels into the first strided shortcut
    backbone = build_backbone("resnet10", width=width, image_size=28)
    opt = tf.keras.optimizers.SGD(0.01)

    @tf.function(reduce_retracing=True)
    def step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(backbone(x, training=True)["pooled"] ** 2)
        grads = tape.gradient(loss, backbone.trainable_variables)
        opt.apply_gradients(zip(grads, backbone.trainable_variables))
        return loss

    for b in (16, 5) + batches:
        step(tf.random.uniform([b, 28, 28, 3], seed=b))
print("survived")
"""


def test_backbone_fine_tune_writes_no_byte_past_onednn_buffers(tmp_path):
    """The pattern that aborted on AVX-512 (the semi-supervised fine-tune:
    training-mode BN, weight gradients, batches of 16 then 5, narrow shortcuts) run
    under an LD_PRELOAD guard that puts a no-access page after every scratch
    buffer, so an overflow anywhere in it is a segfault here, not a heap
    corruption that surfaces later or on another CPU."""
    import shutil

    compiler = shutil.which("cc") or shutil.which("gcc")
    if not compiler or not sys.platform.startswith("linux"):
        pytest.skip("needs a C compiler on Linux for the allocation guard")
    guard = tmp_path / "overflow_guard.so"
    subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-o", str(guard),
                    os.path.join(ROOT, "tests", "overflow_guard.c"), "-ldl"],
                   check=True, capture_output=True, timeout=120)
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2",
               LD_PRELOAD=str(guard))
    env.pop("TF_ENABLE_ONEDNN_OPTS", None)  # tfssl's default: oneDNN on
    done = subprocess.run([sys.executable, "-c", _FINE_TUNE], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "survived" in done.stdout, (
        f"exit {done.returncode}: {done.stderr[-2000:]}")
