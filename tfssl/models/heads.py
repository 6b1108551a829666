"""MLP heads (projector ``g``, predictor ``q``) as functional Keras models.

``build_mlp`` returns a functional ``keras.Model`` with input ``[B, input_dim]``:

    for each hidden dim:  Dense (no bias if BN follows) -> BN -> ReLU
    then:                 Dense(output_dim) [-> BN if last_bn]

Pixel-wise application (LEWEL's projector on every position of a feature map). A
functional model checks the *rank* of its input, so ``mlp(x)`` with ``x`` of shape
``[B, H, W, d]`` raises ``ValueError``. Use :func:`apply_mlp_pixelwise`, which
reshapes ``[..., d] -> [N, d]``, applies the same model object (same weights) and
reshapes back. Because every Dense acts on the last axis and BN normalises over
every row of the flat matrix, this is exactly "Dense on the last axis, BN over
``B*H*W`` positions" - the semantics of ``axis=-1`` BN applied to the rank-4 tensor
(a test checks the two agree). :func:`apply_mlp_global_and_pixelwise` runs the pooled
vectors and the pixels through one call so that BN statistics are taken over
``B * (1 + H*W)`` rows, as LEWEL specifies.

Layer names: ``fc{i}``, ``bn{i}``, ``relu{i}`` for hidden layer ``i`` (from 0), and
``fc{n}`` / ``bn{n}`` for the output layer, ``n = len(hidden_dims)``; deterministic,
so online and target copies match by position and by name.
"""

from __future__ import annotations

import numbers
from typing import Sequence

import keras

from tfssl.errors import UserError
from tfssl.models.batch_norm import BatchNormalization


def _check_dim(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise UserError(f"MLP {what} must be a positive int, got {value!r}")
    return int(value)


def build_mlp(input_dim: int, hidden_dims: Sequence[int], output_dim: int, *,
              batch_norm: bool = True, last_bn: bool = False, last_bn_affine: bool = True,
              sync_bn: bool = False, use_bias_with_bn: bool = False,
              bn_momentum: float = 0.9, bn_epsilon: float = 1e-5,
              fused_bn: bool = True, model_name: str = "mlp") -> keras.Model:
    """Builds an MLP head.

    Args:
        input_dim: Features ``d`` of the input.
        hidden_dims: Width of each hidden layer (may be empty: a single linear layer).
        output_dim: Features of the output.
        batch_norm: BN after every hidden Dense (before the ReLU).
        last_bn: BN on the output (SMoG's projector); BYOL/MoCo use none.
        last_bn_affine: Whether the output BN has gamma/beta (``center``/``scale``).
        sync_bn: ``BatchNormalization(synchronized=...)`` for every BN.
        use_bias_with_bn: Keep the bias of a Dense that is followed by BN (it is
            redundant; off by default). A Dense not followed by BN always has a bias.
        bn_momentum: Keras BN momentum (0.9 == torch's 0.1).
        bn_epsilon: BN epsilon.
        fused_bn: TensorFlow's fused BN kernel in training where it applies
            (``tfssl.models.batch_norm``); False: Keras' own ops.
        model_name: Name of the returned model.

    Returns:
        ``keras.Model``: ``[B, input_dim] -> [B, output_dim]``. For any rank use
        :func:`apply_mlp_pixelwise`.

    Raises:
        UserError: a non-positive dimension.
    """
    input_dim = _check_dim(input_dim, "input_dim")
    output_dim = _check_dim(output_dim, "output_dim")
    hidden_dims = [_check_dim(h, "hidden dim") for h in hidden_dims]

    def bn(x, name, affine=True):
        return BatchNormalization(
            axis=-1, momentum=bn_momentum, epsilon=bn_epsilon, synchronized=sync_bn,
            fused=fused_bn,
            center=affine, scale=affine, name=name)(x)

    inputs = keras.Input(shape=(input_dim,), dtype="float32", name="features")
    x = inputs
    for i, dim in enumerate(hidden_dims):
        x = keras.layers.Dense(dim, use_bias=(not batch_norm) or use_bias_with_bn,
                               name=f"fc{i}")(x)
        if batch_norm:
            x = bn(x, f"bn{i}")
        x = keras.layers.ReLU(name=f"relu{i}")(x)
    n = len(hidden_dims)
    x = keras.layers.Dense(output_dim, use_bias=(not last_bn) or use_bias_with_bn,
                           name=f"fc{n}")(x)
    if last_bn:
        x = bn(x, f"bn{n}", affine=last_bn_affine)
    return keras.Model(inputs, x, name=model_name)


def projector(input_dim: int, hidden_dim: int, output_dim: int, *, num_layers: int = 2,
              **mlp_kwargs) -> keras.Model:
    """Projector ``g``: ``num_layers`` Dense layers, hidden ones of width ``hidden_dim``.

    Sizes (docs/methods/): MoCo-v2/ReSSL small data 2 layers; ReSSL/BYOL ImageNet
    4096 -> 256; SMoG 2048 -> 128 with ``last_bn=True``; the multi-network method
    ``num_layers=3``.

    Args:
        input_dim: Backbone feature dim (``resnet.feature_dim``).
        hidden_dim: Width of every hidden layer.
        output_dim: Embedding dim.
        num_layers: Number of Dense layers (>= 1).
        **mlp_kwargs: Forwarded to :func:`build_mlp` (``model_name`` defaults to
            ``"projector"``).

    Returns:
        ``keras.Model`` ``[B, input_dim] -> [B, output_dim]``.
    """
    if (isinstance(num_layers, bool) or not isinstance(num_layers, numbers.Integral)
            or num_layers < 1):
        raise UserError(f"projector num_layers must be an int >= 1, got {num_layers!r}")
    mlp_kwargs.setdefault("model_name", "projector")
    return build_mlp(input_dim, [hidden_dim] * (num_layers - 1), output_dim, **mlp_kwargs)


def predictor(input_dim: int, hidden_dim: int, output_dim: int | None = None,
              **mlp_kwargs) -> keras.Model:
    """Predictor ``q``: 2-layer MLP (Dense-BN-ReLU-Dense), output dim = input dim.

    Args:
        input_dim: Embedding dim of the projector output.
        hidden_dim: Hidden width (BYOL 4096; a bottleneck smaller than
            ``input_dim`` for the multi-network method).
        output_dim: Defaults to ``input_dim``.
        **mlp_kwargs: Forwarded to :func:`build_mlp` (``model_name`` defaults to
            ``"predictor"``).

    Returns:
        ``keras.Model`` ``[B, input_dim] -> [B, output_dim]``.
    """
    mlp_kwargs.setdefault("model_name", "predictor")
    return build_mlp(input_dim, [hidden_dim],
                     input_dim if output_dim is None else output_dim, **mlp_kwargs)


def apply_mlp_pixelwise(mlp: keras.Model, x, training=None):
    """Applies a flat MLP on the last axis of a tensor of any rank >= 2.

    ``[..., d] -> reshape [N, d] -> mlp -> [N, d_out] -> reshape [..., d_out]`` with
    ``N`` the product of the leading dims. In training mode BN statistics are over
    all ``N`` rows (for a feature map: ``B*H*W`` positions). Works on eager tensors,
    inside ``tf.function`` with unknown ``H, W``, and on symbolic ``KerasTensor``s.

    Args:
        mlp: A model from :func:`build_mlp` (input ``[N, d]``).
        x: ``[..., d]``, e.g. a feature map ``[B, H, W, d]``.
        training: Forwarded to ``mlp``.

    Returns:
        ``[..., d_out]``.
    """
    d = x.shape[-1]
    shape = keras.ops.shape(x)
    y = mlp(keras.ops.reshape(x, (-1, d)), training=training)
    return keras.ops.reshape(y, (-1, *shape[1:-1], y.shape[-1]))


def apply_mlp_global_and_pixelwise(mlp: keras.Model, pooled, feature_map, training=None):
    """One MLP call on pooled vectors and on every pixel, BN over ``B*(1+H*W)`` rows.

    LEWEL applies the projector to ``GAP(F)`` and to every position of ``F`` with
    shared weights and shared batch statistics; concatenating the rows before the
    call gives exactly that.

    Args:
        mlp: A model from :func:`build_mlp` (input ``[N, d]``).
        pooled: ``[B, d]``.
        feature_map: ``[B, H, W, d]``.
        training: Forwarded to ``mlp``.

    Returns:
        ``(z [B, d_out], maps [B, H, W, d_out])``.
    """
    d = feature_map.shape[-1]
    _, h, w, _ = keras.ops.shape(feature_map)
    hw = None if (h is None or w is None) else h * w  # None only for KerasTensors
    # [B, 1 + H*W, d]: row 0 of every example is its pooled vector.
    pixels = keras.ops.reshape(feature_map, (-1, hw, d))
    rows = keras.ops.concatenate([keras.ops.expand_dims(pooled, 1), pixels], axis=1)
    y = mlp(keras.ops.reshape(rows, (-1, d)), training=training)
    y = keras.ops.reshape(y, (-1, None if hw is None else 1 + hw, y.shape[-1]))
    return y[:, 0], keras.ops.reshape(y[:, 1:], (-1, h, w, y.shape[-1]))
