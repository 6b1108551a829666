"""ResNet-18/34/50 backbones as functional Keras models.

``build_backbone`` returns a functional ``keras.Model`` that maps plain pixels
``float32 [B, H, W, 3]`` in ``[0, 1]`` to

    {"pooled": [B, C], "feature_map": [B, h, w, C]}

with ``C = feature_dim(name, width)``. The model's input is declared as
``(None, None, 3)``: any spatial size goes through the same model (multi-crop views
of several sizes share one set of weights); ``image_size`` is only validated
metadata. Output size follows torchvision exactly: every strided layer halves the
side rounding up (``ceil(H / 2)``), so a 32 px image gives a 4x4 map with the
``cifar`` stem, a 224 px image a 7x7 map and a 96 px image a 3x3 map with the
``imagenet`` stem.

Fidelity to torchvision (``torchvision.models.resnet``, v1.5: the stride of a
bottleneck sits on its 3x3 conv):

- Layer names are torchvision's module paths with ``.`` replaced by ``_``
  (``conv1``, ``bn1``, ``layer1_0_conv1``, ``layer2_0_downsample_0`` for the
  projection conv, ``layer2_0_downsample_1`` for its BN, ...), so two builds match
  weight-by-weight by position *and* by name, checkpoints are stable, and a
  torchvision ``state_dict`` maps over by renaming.
- Strided convolutions and the max-pool use explicit symmetric ``ZeroPadding2D``
  + ``valid`` padding (torch's ``padding=k//2``) instead of Keras' asymmetric
  ``"same"``; the pixel alignment is therefore the same as torch's. Zero padding
  before the max-pool is equivalent to torch's ``-inf`` padding because its input
  has just been through a ReLU.
- Convs have no bias and use ``kaiming_normal_(mode="fan_out",
  nonlinearity="relu")``: an untruncated normal with variance ``2 / fan_out``,
  ``fan_out = k * k * out_channels``. BN: gamma 1, beta 0;
  ``zero_init_residual=True`` zero-initialises the gamma of the last BN of every
  residual branch (Goyal et al.), as torchvision's flag does.
- Parameter counts (trainable weights only; Keras also stores BN moving statistics,
  torch calls them buffers): ResNet-18 ``imagenet`` stem 11,176,512, ``cifar`` stem
  11,168,832, ResNet-50 ``imagenet`` stem 23,508,032 (torchvision minus its ``fc``).

BN momentum is Keras' convention: ``moving = momentum * moving + (1 - momentum) *
batch``, so the default 0.9 equals torch's ``momentum=0.1``.
"""

from __future__ import annotations

import math
import numbers
from typing import Sequence

import keras

from tfssl.errors import UserError
from tfssl.models.batch_norm import BatchNormalization

BACKBONES = ("resnet10", "resnet18", "resnet34", "resnet50")
STEMS = ("cifar", "imagenet")

# name -> (block kind, blocks per stage)
_SPECS = {
    # ResNet-10 (one BasicBlock per stage) is for quick CPU runs and tests: the
    # same stem, widths and blocks as ResNet-18 at half the depth.
    "resnet10": ("basic", (1, 1, 1, 1)),
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}
_EXPANSION = {"basic": 1, "bottleneck": 4}
_BASE_WIDTHS = (64, 128, 256, 512)


@keras.saving.register_keras_serializable(package="tfssl")
class Normalize(keras.layers.Layer):
    """Per-channel ``(x - mean) / std`` with constant statistics; no weights.

    The mean and std are configuration, not variables, so the layer is never
    trained, never checkpointed and round-trips through ``get_config``. The
    arithmetic is exactly ``(x - mean) / std`` in the compute dtype (a division,
    not a multiplication by ``1 / std``), bit-identical to numpy in float32.

    Args:
        mean: Scalar or per-channel sequence, broadcast against the last axis.
        std: Scalar or per-channel sequence; every entry must be > 0.
        **kwargs: Standard ``keras.layers.Layer`` arguments (``name``, ``dtype``...).

    Call shapes:
        ``[..., C] -> [..., C]``.
    """

    def __init__(self, mean: float | Sequence[float] = 0.5,
                 std: float | Sequence[float] = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.mean = _as_float_list(mean, "mean")
        self.std = _as_float_list(std, "std")
        if len(self.mean) != len(self.std) and 1 not in (len(self.mean), len(self.std)):
            raise UserError(f"Normalize: mean {self.mean} and std {self.std} differ in length")
        if any(not s > 0 for s in self.std):
            raise UserError(f"Normalize: every std must be > 0, got {self.std}")

    def call(self, inputs):
        x = keras.ops.cast(inputs, self.compute_dtype)
        mean = keras.ops.convert_to_tensor(self.mean, dtype=self.compute_dtype)
        std = keras.ops.convert_to_tensor(self.std, dtype=self.compute_dtype)
        return (x - mean) / std

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"mean": list(self.mean), "std": list(self.std)})
        return config


@keras.saving.register_keras_serializable(package="tfssl")
class PointwiseConv2D(keras.layers.Conv2D):
    """A 1x1 ``valid`` convolution whose stride is taken by subsampling first.

    ``y = conv1x1(x[:, ::s, ::s, :])``, the same function, output shape and weights
    as ``Conv2D(filters, 1, strides=s, padding="valid")``, but oneDNN only ever sees
    stride-1 1x1 convolutions. Its kernels for the *strided* 1x1 case write past
    the end of their scratch buffer in the weight gradient when the input has
    fewer channels than the kernel's channel block (16 with AVX-512, 8 with AVX2;
    oneDNN 3.7 in TensorFlow 2.21, ``rtus`` workspace of
    ``jit_*_1x1_convolution_bwd_weights_t``): a heap corruption that surfaced as
    "double free or corruption" when fine-tuning a width-0.125 ResNet on AVX-512
    CPUs. ResNet shortcuts are the only strided 1x1 convolutions here.
    """

    def __init__(self, filters, strides=1, **kwargs):
        kwargs.pop("kernel_size", None)
        kwargs.pop("padding", None)
        super().__init__(filters, 1, strides=strides, padding="valid", **kwargs)
        if self.data_format != "channels_last":
            raise ValueError("PointwiseConv2D supports channels_last only.")

    def convolution_op(self, inputs, kernel):
        sh, sw = self.strides
        if (sh, sw) != (1, 1):
            inputs = inputs[:, ::sh, ::sw, :]
        return keras.ops.conv(inputs, kernel, strides=1, padding="valid",
                              dilation_rate=self.dilation_rate,
                              data_format=self.data_format)

    def get_config(self):
        config = super().get_config()
        for key in ("kernel_size", "padding"):
            config.pop(key, None)
        return config


def _as_float_list(value, what: str) -> list[float]:
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return [float(value)]
    try:
        out = [float(v) for v in value]
    except (TypeError, ValueError):
        raise UserError(f"Normalize: {what} must be a number or a sequence of numbers, "
                        f"got {value!r}") from None
    if not out:
        raise UserError(f"Normalize: {what} is empty")
    return out


def _channels(base: int, width: float) -> int:
    """``base * width`` rounded half up, at least 1 (64 * 0.25 -> 16)."""
    return max(1, int(math.floor(base * width + 0.5)))


def _validate(name: str, stem: str, width: float, image_size: int) -> None:
    if name not in _SPECS:
        raise UserError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}")
    if stem not in STEMS:
        raise UserError(f"unknown stem {stem!r}; known: {', '.join(STEMS)}")
    if (isinstance(width, bool) or not isinstance(width, numbers.Real)
            or not math.isfinite(width) or width <= 0):
        raise UserError(f"backbone width must be a finite number > 0 (e.g. 0.25, 0.5, 1, 2), "
                        f"got {width!r}")
    if (isinstance(image_size, bool) or not isinstance(image_size, numbers.Integral)
            or image_size < 1):
        raise UserError(f"image_size must be a positive int, got {image_size!r}")


def feature_dim(name: str, width: float = 1.0) -> int:
    """Channels ``C`` of ``"pooled"`` / ``"feature_map"``.

    Args:
        name: One of ``BACKBONES``.
        width: Width multiplier.

    Returns:
        ``round(512 * width) * expansion`` (expansion 4 for ResNet-50, else 1),
        e.g. 512 for ResNet-18, 2048 for ResNet-50, 128 for ResNet-18 at width 0.25.
    """
    _validate(name, "cifar", width, 1)
    kind, _ = _SPECS[name]
    return _channels(_BASE_WIDTHS[-1], width) * _EXPANSION[kind]


class _Builder:
    """Holds the layer hyper-parameters while the functional graph is wired."""

    def __init__(self, sync_bn: bool, bn_momentum: float, bn_epsilon: float,
                 zero_init_residual: bool, fused_bn: bool = True):
        self.sync_bn = sync_bn
        self.fused_bn = fused_bn
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        self.zero_init_residual = zero_init_residual

    def conv(self, x, filters: int, kernel: int, stride: int, name: str):
        """Bias-free conv with torch padding ``kernel // 2``; ``name`` is the conv's."""
        pad = kernel // 2
        if stride > 1 and pad > 0:
            x = keras.layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
            padding = "valid"
        else:  # stride 1, odd kernel: "same" is the symmetric torch padding
            padding = "same"
        return keras.layers.Conv2D(
            filters, kernel, strides=stride, padding=padding, use_bias=False,
            kernel_initializer=keras.initializers.VarianceScaling(
                scale=2.0, mode="fan_out", distribution="untruncated_normal"),
            name=name)(x)

    def bn(self, x, name: str, zero_gamma: bool = False):
        return BatchNormalization(
            axis=-1, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
            synchronized=self.sync_bn, fused=self.fused_bn,
            gamma_initializer="zeros" if zero_gamma else "ones", name=name)(x)

    def shortcut(self, x, filters: int, stride: int, prefix: str):
        if stride == 1 and x.shape[-1] == filters:
            return x
        x = PointwiseConv2D(
            filters, strides=stride, use_bias=False,
            kernel_initializer=keras.initializers.VarianceScaling(
                scale=2.0, mode="fan_out", distribution="untruncated_normal"),
            name=f"{prefix}_downsample_0")(x)
        return self.bn(x, f"{prefix}_downsample_1")

    def basic(self, x, planes: int, stride: int, prefix: str):
        """BasicBlock: 3x3(stride) - BN - ReLU - 3x3 - BN, + shortcut, ReLU."""
        identity = self.shortcut(x, planes, stride, prefix)
        y = self.conv(x, planes, 3, stride, f"{prefix}_conv1")
        y = self.bn(y, f"{prefix}_bn1")
        y = keras.layers.ReLU(name=f"{prefix}_relu1")(y)
        y = self.conv(y, planes, 3, 1, f"{prefix}_conv2")
        y = self.bn(y, f"{prefix}_bn2", zero_gamma=self.zero_init_residual)
        y = keras.layers.Add(name=f"{prefix}_add")([y, identity])
        return keras.layers.ReLU(name=f"{prefix}_relu2")(y)

    def bottleneck(self, x, planes: int, stride: int, prefix: str):
        """Bottleneck (v1.5): 1x1 - 3x3(stride) - 1x1 (x4), + shortcut, ReLU."""
        out = planes * _EXPANSION["bottleneck"]
        identity = self.shortcut(x, out, stride, prefix)
        y = self.conv(x, planes, 1, 1, f"{prefix}_conv1")
        y = self.bn(y, f"{prefix}_bn1")
        y = keras.layers.ReLU(name=f"{prefix}_relu1")(y)
        y = self.conv(y, planes, 3, stride, f"{prefix}_conv2")
        y = self.bn(y, f"{prefix}_bn2")
        y = keras.layers.ReLU(name=f"{prefix}_relu2")(y)
        y = self.conv(y, out, 1, 1, f"{prefix}_conv3")
        y = self.bn(y, f"{prefix}_bn3", zero_gamma=self.zero_init_residual)
        y = keras.layers.Add(name=f"{prefix}_add")([y, identity])
        return keras.layers.ReLU(name=f"{prefix}_relu3")(y)


def build_backbone(name: str = "resnet18", *, stem: str = "cifar", width: float = 1.0,
                   image_size: int = 32, mean: float | Sequence[float] = (0.5, 0.5, 0.5),
                   std: float | Sequence[float] = (0.5, 0.5, 0.5), sync_bn: bool = False,
                   bn_momentum: float = 0.9, bn_epsilon: float = 1e-5,
                   zero_init_residual: bool = False, fused_bn: bool = True,
                   model_name: str = "backbone") -> keras.Model:
    """Builds a ResNet backbone (no classifier) as a functional ``keras.Model``.

    Args:
        name: ``"resnet18"`` / ``"resnet34"`` (BasicBlock [2,2,2,2] / [3,4,6,3]) or
            ``"resnet50"`` (Bottleneck, expansion 4, [3,4,6,3]).
        stem: ``"cifar"``: 3x3 conv stride 1, BN, ReLU, no max-pool (inputs <= 64 px);
            ``"imagenet"``: 7x7 conv stride 2, BN, ReLU, 3x3 max-pool stride 2.
        width: Multiplier of the base widths 64/128/256/512 (rounded half up, >= 1).
        image_size: Nominal training resolution; metadata only, validated. The
            input accepts any ``H, W``.
        mean: Per-channel mean of the first (``Normalize``) layer.
        std: Per-channel std of the first (``Normalize``) layer.
        sync_bn: ``BatchNormalization(synchronized=...)``: batch statistics are
            all-reduced across replicas under a ``tf.distribute`` strategy.
        bn_momentum: Keras BN momentum (0.9 == torch's 0.1).
        bn_epsilon: BN epsilon (torch's 1e-5).
        zero_init_residual: Zero-init gamma of the last BN of every residual branch.
        fused_bn: Run each unsynchronised BN's training pass as TensorFlow's fused
            kernel (``tfssl.models.batch_norm``); False: Keras' own ops.
        model_name: Name of the returned model (e.g. ``"target_backbone"``); layer
            names do not depend on it.

    Returns:
        ``keras.Model``: ``float32 [B, H, W, 3]`` in ``[0, 1]`` ->
        ``{"pooled": [B, C], "feature_map": [B, h, w, C]}``, ``C = feature_dim(name,
        width)``; ``h = ceil(H / 8)`` (cifar) or ``ceil(H / 32)`` (imagenet). The
        layers follow the global Keras dtype policy at build time (weights are
        float32, mixed policies compute in float16 / bfloat16); both outputs are
        float32.

    Raises:
        UserError: unknown ``name`` / ``stem``, non-positive ``width`` or
            ``image_size``, bad ``mean`` / ``std``.
    """
    _validate(name, stem, width, image_size)
    kind, blocks = _SPECS[name]
    b = _Builder(bool(sync_bn), float(bn_momentum), float(bn_epsilon),
                 bool(zero_init_residual), bool(fused_bn))

    inputs = keras.Input(shape=(None, None, 3), dtype="float32", name="image")
    x = Normalize(mean, std, name="normalize")(inputs)
    stem_channels = _channels(_BASE_WIDTHS[0], width)
    if stem == "cifar":
        x = b.conv(x, stem_channels, 3, 1, "conv1")
        x = b.bn(x, "bn1")
        x = keras.layers.ReLU(name="relu")(x)
    else:
        x = b.conv(x, stem_channels, 7, 2, "conv1")
        x = b.bn(x, "bn1")
        x = keras.layers.ReLU(name="relu")(x)
        x = keras.layers.ZeroPadding2D(1, name="maxpool_pad")(x)
        x = keras.layers.MaxPooling2D(3, strides=2, padding="valid", name="maxpool")(x)

    block = b.basic if kind == "basic" else b.bottleneck
    for stage, (n_blocks, base) in enumerate(zip(blocks, _BASE_WIDTHS)):
        planes = _channels(base, width)
        for i in range(n_blocks):
            stride = 2 if (stage > 0 and i == 0) else 1
            x = block(x, planes, stride, f"layer{stage + 1}_{i}")

    # Outputs are float32 under any dtype policy (mixed precision computes the
    # body in float16 / bfloat16): pooling averages in float32, and features that
    # leave the backbone (kNN, export, probes) have one dtype.
    x = keras.layers.Activation("linear", dtype="float32", name="to_float32")(x)
    pooled = keras.layers.GlobalAveragePooling2D(dtype="float32", name="avgpool")(x)
    return keras.Model(inputs, {"pooled": pooled, "feature_map": x}, name=model_name)
