"""Tests of tfssl.models: ResNet backbones and MLP heads."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.keras_harness import assert_config_complete, assert_roundtrip
from tfssl.errors import UserError
from tfssl.models import batch_norm, heads, resnet


def _images(batch, size, seed=0):
    return np.random.default_rng(seed).random((batch, size, size, 3), dtype=np.float32)


def _trainable_count(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def _submodel(model, layer_name):
    return keras.Model(model.input, model.get_layer(layer_name).output)


@pytest.fixture(scope="module")
def small_backbone():
    return resnet.build_backbone("resnet18", stem="cifar", width=0.125)


@pytest.fixture(scope="module")
def small_r50():
    return resnet.build_backbone("resnet50", stem="imagenet", width=0.125)


# ----------------------------------------------------------------------------- backbone


@pytest.mark.parametrize("name,stem,expected", [
    # torchvision totals minus fc: 11,689,512 - 513,000; 21,797,672 - 513,000;
    # 25,557,032 - 2,049,000. cifar stem: 7x7x3x64 -> 3x3x3x64 saves 7,680.
    ("resnet18", "imagenet", 11_176_512),
    ("resnet18", "cifar", 11_168_832),
    ("resnet34", "imagenet", 21_284_672),
    ("resnet50", "imagenet", 23_508_032),
])
def test_parameter_counts_match_torchvision(name, stem, expected):
    model = resnet.build_backbone(name, stem=stem)
    assert _trainable_count(model) == expected
    # The only non-trainable weights are BN moving mean/variance (torch buffers).
    bn_params = sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)
    bn_channels = sum(l.gamma.shape[0] for l in model.layers
                      if isinstance(l, keras.layers.BatchNormalization))
    assert bn_params == 2 * bn_channels
    assert model.output["pooled"].shape[-1] == resnet.feature_dim(name, 1.0)


def test_cifar_stem_output_shapes_at_32px():
    model = resnet.build_backbone("resnet18", stem="cifar", width=1.0)
    x = _images(2, 32)
    out = model(x, training=False)
    assert set(out) == {"pooled", "feature_map"}
    assert tuple(out["feature_map"].shape) == (2, 4, 4, 512)
    assert tuple(out["pooled"].shape) == (2, 512)
    np.testing.assert_allclose(out["pooled"], np.mean(out["feature_map"], axis=(1, 2)),
                               atol=1e-5)


def test_imagenet_stem_output_shapes(small_r50):
    model = resnet.build_backbone("resnet18", stem="imagenet", width=0.25, image_size=224)
    for size, expected in [(224, (1, 7, 7, 128)), (96, (1, 3, 3, 128))]:
        out = model(_images(1, size), training=False)
        assert tuple(out["feature_map"].shape) == expected
        assert tuple(out["pooled"].shape) == (1, 128)
    out = small_r50(_images(1, 64), training=False)
    assert tuple(out["feature_map"].shape) == (1, 2, 2, 256)


def test_width_multiplier_scales_channels(small_backbone, small_r50):
    assert [resnet.feature_dim("resnet18", w) for w in (0.125, 0.25, 0.5, 1, 2)] == [
        64, 128, 256, 512, 1024]
    assert [resnet.feature_dim("resnet50", w) for w in (0.25, 1)] == [512, 2048]
    assert resnet.feature_dim("resnet18", 0.001) == 1  # rounds, never below 1
    model = small_backbone  # width 0.125: 8/16/32/64
    assert model.get_layer("conv1").kernel.shape == (3, 3, 3, 8)
    for stage, channels in zip(range(1, 5), (8, 16, 32, 64)):
        assert model.get_layer(f"layer{stage}_1_conv2").kernel.shape[-1] == channels
    assert small_r50.get_layer("conv1").kernel.shape == (7, 7, 3, 8)
    assert small_r50.get_layer("layer1_0_conv1").kernel.shape == (1, 1, 8, 8)
    assert small_r50.get_layer("layer1_0_conv3").kernel.shape == (1, 1, 8, 32)
    assert small_r50.get_layer("layer4_2_conv3").kernel.shape == (1, 1, 64, 256)


def test_variable_input_size_same_model(small_backbone):
    """Multi-crop: global and local views go through the same weights."""
    assert small_backbone.input.shape == (None, None, None, 3)
    for size, side in [(32, 4), (16, 2), (33, 5), (8, 1)]:
        out = small_backbone(_images(2, size), training=False)
        assert tuple(out["feature_map"].shape) == (2, side, side, 64)
    traced = tf.function(lambda x: small_backbone(x, training=True)["pooled"],
                         input_signature=[tf.TensorSpec([None, None, None, 3])])
    assert traced(_images(2, 32)).shape == (2, 64)
    assert traced(_images(3, 16)).shape == (3, 64)
    assert traced.experimental_get_tracing_count() == 1


def test_normalize_is_exact_and_weightless():
    mean, std = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)
    x = _images(2, 5)
    layer = resnet.Normalize(mean, std)
    expected = (x - np.array(mean, np.float32)) / np.array(std, np.float32)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x)), expected)
    assert layer.weights == [] and layer.trainable_weights == []
    model = resnet.build_backbone(width=0.125, mean=mean, std=std)
    first = model.layers[1]
    assert isinstance(first, resnet.Normalize) and first.mean == list(mean)
    np.testing.assert_array_equal(_submodel(model, "normalize")(x), expected)
    assert_config_complete(resnet.Normalize, {"mean": [0.1, 0.2, 0.3], "std": [0.5, 0.25, 2.0]})
    with pytest.raises(UserError, match="std"):
        resnet.Normalize(0.5, (0.5, 0.0, 0.5))


def test_batchnorm_training_mode_normalises_batch():
    """Stem BN (fresh gamma 1 / beta 0): per-channel mean 0, std 1 before the ReLU."""
    model = resnet.build_backbone("resnet18", stem="cifar", width=0.125)
    x = _images(4, 16, seed=1)
    pre = keras.ops.convert_to_numpy(_submodel(model, "conv1")(x))
    probe = _submodel(model, "bn1")
    # Inference mode uses the moving statistics (fresh: mean 0, variance 1).
    np.testing.assert_allclose(probe(x, training=False), pre / np.sqrt(1.0 + 1e-5), atol=1e-6)
    y = keras.ops.convert_to_numpy(probe(x, training=True))
    np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(y.std(axis=(0, 1, 2)), 1.0, atol=1e-3)
    # Keras momentum 0.9 == torch 0.1: moving = 0.9 * moving + 0.1 * batch.
    np.testing.assert_allclose(model.get_layer("bn1").moving_mean,
                               0.1 * pre.mean(axis=(0, 1, 2)), atol=1e-6)


def test_batchnorm_settings_reach_every_bn_layer():
    model = resnet.build_backbone("resnet18", width=0.125, sync_bn=True, bn_momentum=0.99,
                                  bn_epsilon=1e-3)
    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert len(bns) == 1 + 8 * 2 + 3  # stem, 2 per block, 3 downsample projections
    for bn in bns:
        assert (bn.synchronized, bn.momentum, bn.epsilon, bn.axis) == (True, 0.99, 1e-3, -1)


def _bn_pair(shape, **kwargs):
    """A fused and a Keras BN with the same random gamma / beta / moving stats."""
    keras_bn = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, **kwargs)
    fused = batch_norm.BatchNormalization(momentum=0.9, epsilon=1e-5, **kwargs)
    keras_bn.build(shape)
    fused.build(shape)
    rng = np.random.default_rng(11)
    for a, b in zip(fused.weights, keras_bn.weights):
        value = rng.uniform(0.5, 1.5, size=a.shape).astype(np.float32)
        a.assign(value)
        b.assign(value)
    return fused, keras_bn


def _bn_outputs(layer, x):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * tf.sin(tf.cast(y, tf.float32)))
    grads = tape.gradient(loss, [x] + layer.trainable_weights)
    return [y] + grads + [layer.moving_mean, layer.moving_variance]


@pytest.mark.parametrize("shape,kwargs", [((8, 5, 5, 6), {}), ((16, 7), {}),
                                          ((16, 7), {"center": False, "scale": False})])
def test_fused_bn_equals_keras_bn(shape, kwargs):
    """Output, input / gamma / beta gradients and moving statistics (biased variance,
    momentum 0.9) of the fused kernel agree with Keras' ops to float32 rounding."""
    fused, keras_bn = _bn_pair(shape, **kwargs)
    x = tf.constant(np.random.default_rng(12).normal(1.0, 3.0, shape).astype(np.float32))
    initial = fused.moving_variance.numpy()
    assert fused._fused_applies(x, True, None)  # the fused kernel, not the fallback
    got, want = _bn_outputs(fused, x), _bn_outputs(keras_bn, x)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-4)
    # numpy: moving variance uses the biased batch variance, as Keras 3 does.
    axes = tuple(range(len(shape) - 1))
    np.testing.assert_allclose(fused.moving_variance,
                               0.9 * initial + 0.1 * x.numpy().var(axis=axes), rtol=1e-5)


def test_fused_bn_mixed_precision_and_fallbacks():
    fused, keras_bn = _bn_pair((4, 3, 3, 5), dtype="mixed_float16")
    x = tf.constant(np.random.default_rng(13).normal(size=(4, 3, 3, 5)), tf.float16)
    y = fused(x, training=True)
    assert y.dtype == tf.float16 and fused.moving_mean.dtype == tf.float32
    np.testing.assert_allclose(tf.cast(y, tf.float32), tf.cast(keras_bn(x, training=True),
                                                               tf.float32), atol=2e-3)
    assert fused._fused_applies(x, True, None)
    assert not fused._fused_applies(x, False, None)  # inference: Keras' ops
    synced = batch_norm.BatchNormalization(synchronized=True)
    assert not synced._fused_applies(x, True, None)
    assert not batch_norm.BatchNormalization(fused=False)._fused_applies(x, True, None)
    assert not batch_norm.BatchNormalization()._fused_applies(tf.zeros([2, 3, 4]), True,
                                                              None)


def test_backbone_and_heads_use_the_fused_flag():
    for fused in (True, False):
        model = resnet.build_backbone("resnet18", width=0.125, fused_bn=fused)
        mlp = heads.build_mlp(8, [16], 4, last_bn=True, fused_bn=fused)
        bns = [l for m in (model, mlp) for l in m.layers
               if isinstance(l, keras.layers.BatchNormalization)]
        assert len(bns) == 20 + 2
        assert all(isinstance(b, batch_norm.BatchNormalization) and b.fused == fused
                   for b in bns)


@pytest.mark.parametrize("name,last_bn", [("resnet18", "bn2"), ("resnet50", "bn3")])
def test_zero_init_residual(name, last_bn):
    model = resnet.build_backbone(name, width=0.125, zero_init_residual=True)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma = keras.ops.convert_to_numpy(layer.gamma)
            assert np.all(gamma == 0) == layer.name.endswith(f"_{last_bn}"), layer.name
    if name == "resnet18":  # identity block: output == input
        x = _images(2, 8)
        before = _submodel(model, "relu")(x, training=False)
        after = _submodel(model, "layer1_0_relu2")(x, training=False)
        np.testing.assert_array_equal(before, after)


def test_conv_init_is_kaiming_normal_fan_out():
    model = resnet.build_backbone("resnet18", width=1.0)
    kernel = keras.ops.convert_to_numpy(model.get_layer("layer4_1_conv2").kernel)
    expected_std = math.sqrt(2.0 / (3 * 3 * 512))  # fan_out = k*k*out_channels
    assert abs(kernel.std() / expected_std - 1.0) < 0.01
    assert abs(kernel.mean()) < 0.01 * expected_std
    assert np.abs(kernel).max() > 3 * expected_std  # untruncated, like torch
    assert all(not l.use_bias for l in model.layers if isinstance(l, keras.layers.Conv2D))


@pytest.mark.parametrize("kwargs,match", [
    ({"name": "resnet101"}, "resnet10, resnet18, resnet34, resnet50"),
    ({"stem": "vit"}, "cifar, imagenet"),
    ({"width": 0}, "width"),
    ({"width": -0.5}, "width"),
    ({"width": float("nan")}, "width"),
    ({"width": "1"}, "width"),
    ({"image_size": 0}, "image_size"),
])
def test_invalid_arguments_raise_user_error(kwargs, match):
    with pytest.raises(UserError, match=match):
        resnet.build_backbone(**kwargs)


def test_two_builds_match_by_name_and_copy_gives_identical_outputs():
    args = dict(name="resnet18", stem="cifar", width=0.125)
    online = resnet.build_backbone(**args, model_name="online")
    target = resnet.build_backbone(**args, model_name="target")
    assert [w.path for w in online.weights] == [w.path for w in target.weights]
    assert [w.shape for w in online.weights] == [w.shape for w in target.weights]
    assert "layer2_0_downsample_0/kernel" in [w.path for w in online.weights]
    x = _images(4, 16, seed=2)
    assert not np.allclose(online(x)["pooled"], target(x)["pooled"])  # fresh random init
    for a, b in zip(online.weights, target.weights):
        b.assign(a)
    for training in (False, True):
        a, b = online(x, training=training), target(x, training=training)
        for key in ("pooled", "feature_map"):
            np.testing.assert_array_equal(a[key], b[key])


def test_backbone_roundtrip(small_backbone, small_r50):
    clone = assert_roundtrip(small_backbone, _images(2, 16, seed=3))
    assert [l.name for l in clone.layers] == [l.name for l in small_backbone.layers]
    assert_roundtrip(small_r50, _images(1, 32, seed=4))


# ----------------------------------------------------------------------------- heads


def test_mlp_structure_dims_and_parameter_count():
    mlp = heads.build_mlp(512, [2048], 128)
    assert [l.name for l in mlp.layers[1:]] == ["fc0", "bn0", "relu0", "fc1"]
    assert not mlp.get_layer("fc0").use_bias and mlp.get_layer("fc1").use_bias
    # 512*2048 + 2*2048 (gamma, beta) + 2048*128 + 128
    assert _trainable_count(mlp) == 1_314_944
    assert tuple(mlp(np.zeros((3, 512), np.float32)).shape) == (3, 128)

    three = heads.projector(64, 32, 16, num_layers=3)
    assert [l.name for l in three.layers if isinstance(l, keras.layers.Dense)] == [
        "fc0", "fc1", "fc2"]
    assert [l.units for l in three.layers if isinstance(l, keras.layers.Dense)] == [32, 32, 16]
    pred = heads.predictor(16, 8)
    assert pred.name == "predictor" and pred.output.shape == (None, 16)

    plain = heads.build_mlp(8, [4], 2, batch_norm=False)
    assert not any(isinstance(l, keras.layers.BatchNormalization) for l in plain.layers)
    assert all(l.use_bias for l in plain.layers if isinstance(l, keras.layers.Dense))
    assert heads.build_mlp(8, [4], 2, use_bias_with_bn=True).get_layer("fc0").use_bias
    linear = heads.build_mlp(8, [], 2)
    assert [l.name for l in linear.layers[1:]] == ["fc0"]
    with pytest.raises(UserError, match="hidden dim"):
        heads.build_mlp(8, [0], 2)


def test_mlp_last_bn():
    x = np.random.default_rng(5).normal(3.0, 2.0, (64, 16)).astype(np.float32)
    mlp = heads.build_mlp(16, [32], 8, last_bn=True)
    assert not mlp.get_layer("fc1").use_bias  # BN follows
    y = keras.ops.convert_to_numpy(mlp(x, training=True))
    np.testing.assert_allclose(y.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.std(axis=0), 1.0, atol=1e-3)
    affine = mlp.get_layer("bn1")
    assert affine.gamma is not None and affine.beta is not None
    bare = heads.build_mlp(16, [32], 8, last_bn=True, last_bn_affine=False).get_layer("bn1")
    assert bare.gamma is None and bare.beta is None and bare.trainable_weights == []
    assert "bn1" not in [l.name for l in heads.build_mlp(16, [32], 8).layers]


def test_pixelwise_equals_per_pixel_flat_application_in_inference():
    mlp = heads.build_mlp(8, [16], 4, last_bn=True)
    mlp(np.random.default_rng(6).normal(size=(32, 8)).astype(np.float32), training=True)
    fmap = np.random.default_rng(7).normal(size=(2, 3, 4, 8)).astype(np.float32)
    with pytest.raises(ValueError):  # a functional model checks the input rank
        mlp(fmap)
    out = keras.ops.convert_to_numpy(heads.apply_mlp_pixelwise(mlp, fmap, training=False))
    assert out.shape == (2, 3, 4, 4)
    for b, i, j in np.ndindex(2, 3, 4):
        np.testing.assert_allclose(out[b, i, j], mlp(fmap[b, i, j][None])[0], atol=1e-6)


def test_pixelwise_training_bn_is_over_batch_and_positions():
    """Reshape-to-flat equals BN(axis=-1) applied to the rank-4 tensor directly."""
    mlp = heads.build_mlp(8, [16], 4, last_bn=True, last_bn_affine=False)
    fmap = np.random.default_rng(8).normal(1.0, 3.0, size=(2, 5, 3, 8)).astype(np.float32)
    out = keras.ops.convert_to_numpy(heads.apply_mlp_pixelwise(mlp, fmap, training=True))
    direct = fmap  # the same Dense layers, and fresh twins of the BN layers, on rank 4
    for layer in mlp.layers[1:]:
        if isinstance(layer, keras.layers.BatchNormalization):  # input_spec is ndim 2
            layer = type(layer).from_config(layer.get_config())
        direct = layer(direct, training=True)
    np.testing.assert_allclose(out, direct, atol=1e-5)
    np.testing.assert_allclose(out.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(0, 1, 2)), 1.0, atol=1e-3)

    traced = tf.function(lambda x: heads.apply_mlp_pixelwise(mlp, x, training=True),
                         input_signature=[tf.TensorSpec([None, None, None, 8])])
    np.testing.assert_allclose(traced(fmap), out, atol=1e-5)


def test_global_and_pixelwise_share_batch_statistics():
    mlp = heads.build_mlp(8, [16], 4, last_bn=True)
    rng = np.random.default_rng(9)
    pooled = rng.normal(size=(2, 8)).astype(np.float32)
    fmap = rng.normal(size=(2, 3, 3, 8)).astype(np.float32)
    z, maps = heads.apply_mlp_global_and_pixelwise(mlp, pooled, fmap, training=True)
    assert tuple(z.shape) == (2, 4) and tuple(maps.shape) == (2, 3, 3, 4)
    rows = np.concatenate([pooled[:, None], fmap.reshape(2, 9, 8)], axis=1).reshape(-1, 8)
    ref = keras.ops.convert_to_numpy(mlp(rows, training=True)).reshape(2, 10, 4)
    np.testing.assert_allclose(z, ref[:, 0], atol=1e-5)
    np.testing.assert_allclose(maps, ref[:, 1:].reshape(2, 3, 3, 4), atol=1e-5)


def test_mlp_roundtrip_and_copy():
    mlp = heads.build_mlp(8, [16, 12], 4, last_bn=True, last_bn_affine=False)
    x = np.random.default_rng(10).normal(size=(5, 8)).astype(np.float32)
    mlp(x, training=True)  # non-trivial moving statistics
    assert_roundtrip(mlp, x)
    twin = heads.build_mlp(8, [16, 12], 4, last_bn=True, last_bn_affine=False)
    assert [w.path for w in twin.weights] == [w.path for w in mlp.weights]
    for a, b in zip(mlp.weights, twin.weights):
        b.assign(a)
    np.testing.assert_array_equal(twin(x), mlp(x))


def test_harness_catches_a_forgotten_config_argument():
    class Forgetful(keras.layers.Layer):
        def __init__(self, scale=1.0, **kwargs):
            super().__init__(**kwargs)
            self.scale = scale

        def get_config(self):  # forgets "scale"
            return super().get_config()

        def call(self, x):
            return x * self.scale

    with pytest.raises(AssertionError, match="scale"):
        assert_config_complete(Forgetful, {"scale": 2.0})


@pytest.mark.parametrize("fused, synchronized", [(True, False), (False, False),
                                                 (True, True)])
def test_frozen_moving_statistics_keep_the_output_and_the_statistics(fused,
                                                                     synchronized):
    """Inside ``moving_statistics_frozen`` a training call gives the same output and
    gradients (batch statistics) but leaves the moving statistics untouched."""
    shape = (8, 3, 3, 5)
    layer = batch_norm.BatchNormalization(momentum=0.9, epsilon=1e-5, fused=fused,
                                          synchronized=synchronized)
    layer.build(shape)
    layer.moving_variance.assign(np.full([5], 0.7, np.float32))
    x = tf.constant(np.random.default_rng(14).normal(2.0, 3.0, shape).astype(np.float32))
    before = [layer.moving_mean.numpy(), layer.moving_variance.numpy()]
    with batch_norm.moving_statistics_frozen():
        assert batch_norm.statistics_frozen()
        frozen = _bn_outputs(layer, x)
    assert not batch_norm.statistics_frozen()
    np.testing.assert_array_equal(frozen[-2], before[0])
    np.testing.assert_array_equal(frozen[-1], before[1])
    with batch_norm.moving_statistics_frozen(False):  # a no-op context
        updating = _bn_outputs(layer, x)
    assert not np.allclose(updating[-1], before[1])
    for f, u in zip(frozen[:-2], updating[:-2]):
        np.testing.assert_allclose(f, u, rtol=1e-6, atol=1e-6)
