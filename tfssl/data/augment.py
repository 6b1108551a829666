"""Stateless per-example image augmentations in plain TensorFlow ops.

Every op works on one example (no batch axis), inside ``tf.data.Dataset.map`` and
inside ``tf.function``, with a static output shape and no Python in the hot path.

Randomness is stateless: a random op takes ``seed``, an int32/int64 tensor of shape
``[2]``, and derives sub-seeds with ``tf.random.experimental.stateless_fold_in``. Each
op is split into ``sample_*_params(seed, ...) -> params`` and a deterministic
transform ``op(image, params)``; ``random_*(image, seed, ...)`` composes the two
(STYLE.md point 9), so tests can pin parameters.

Images are float32 ``[H, W, 3]`` in ``[0, 1]`` unless stated. Semantics follow
torchvision (the reference code of MoCo-v2, BYOL re-implementations and ReSSL); the
deviations are noted where they occur.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import tensorflow as tf

from tfssl.errors import UserError

#: ITU-R BT.601 luma weights (torchvision uses 0.2989 for red; the 1e-4 difference
#: is below uint8 resolution).
GRAY_WEIGHTS = (0.299, 0.587, 0.114)


def fold(seed: tf.Tensor, data: int | tf.Tensor) -> tf.Tensor:
    """Derives an independent seed ``[2]`` from ``seed`` ``[2]`` and an integer."""
    return tf.random.experimental.stateless_fold_in(seed, data)


def _uniform(seed: tf.Tensor, shape: Sequence[int] = ()) -> tf.Tensor:
    return tf.random.stateless_uniform(shape, seed, dtype=tf.float32)


def sample_apply(seed: tf.Tensor, p: float) -> tf.Tensor:
    """Samples a bool scalar that is True with probability ``p``.

    ``u < p`` with ``u ~ U[0, 1)``: ``p = 0`` never applies, ``p = 1`` always does.
    """
    return _uniform(seed) < p


def apply_if(flag: tf.Tensor, fn, image: tf.Tensor) -> tf.Tensor:
    """Returns ``fn(image)`` where the bool scalar ``flag`` is True, else ``image``.

    ``tf.cond`` rather than ``tf.where`` so a skipped op (e.g. blur) costs nothing;
    both branches have the input's static shape, so the output shape stays static.
    """
    return tf.cond(flag, lambda: fn(image), lambda: tf.identity(image))


# ----------------------------------------------------------------------------- dtype


def to_float_rgb(image: tf.Tensor) -> tf.Tensor:
    """Converts ``[H, W, C]`` to float32 RGB ``[H, W, 3]`` in ``[0, 1]``.

    uint8 is divided by 255; float input is assumed to be in ``[0, 1]`` already.
    ``C == 1`` (and ``C == 2``, gray + alpha) is replicated to 3 channels so every
    backbone and recipe takes RGB (ARCHITECTURE.md, "Data contracts"); ``C == 4``
    drops alpha. An unknown static ``C`` is resolved in-graph.

    Raises:
        UserError: a static channel count outside 1..4.
    """
    image = tf.convert_to_tensor(image)
    if image.dtype == tf.uint8:
        image = tf.cast(image, tf.float32) / 255.0
    elif image.dtype.is_floating:
        image = tf.cast(image, tf.float32)
    else:
        image = tf.image.convert_image_dtype(image, tf.float32, saturate=True)
    channels = image.shape[-1]
    if channels is None:
        image = tf.cond(tf.shape(image)[-1] <= 2,
                        lambda: tf.repeat(image[..., :1], 3, axis=-1),
                        lambda: image[..., :3])
        image.set_shape(image.shape[:-1].concatenate([3]))
        return image
    if channels in (1, 2):
        return tf.repeat(image[..., :1], 3, axis=-1)
    if channels in (3, 4):
        return image[..., :3]
    raise UserError(f"images must have 1, 2, 3 or 4 channels, got shape {image.shape}")


#: The name ARCHITECTURE.md uses.
to_rgb = to_float_rgb


# ---------------------------------------------------------------- random resized crop


def sample_crop_box(seed: tf.Tensor, image_shape, scale=(0.2, 1.0),
                    ratio=(3 / 4, 4 / 3), attempts: int = 10) -> tf.Tensor:
    """Samples a crop box with torchvision ``RandomResizedCrop.get_params`` semantics.

    Area fraction ``~ U[scale]``, aspect ratio ``w/h`` log-uniform in ``ratio``,
    ``w = round(sqrt(area * r))``, ``h = round(sqrt(area / r))``; the first of
    ``attempts`` tries that fits is used, with a uniform integer offset. All attempts
    are sampled at once (no while_loop). If none fits, the fallback is torchvision's:
    the whole image, centre-cropped to the nearest ratio bound.

    Args:
        seed: int32/int64 ``[2]``.
        image_shape: ``[H, W, ...]`` (a ``tf.shape`` tensor or a list).
        scale: ``(lo, hi)`` fraction of the image area.
        ratio: ``(lo, hi)`` bounds on ``w / h``.
        attempts: number of tries before the fallback.

    Returns:
        int32 ``[4]``: ``(offset_y, offset_x, h, w)``.
    """
    h_img = tf.cast(image_shape[0], tf.float32)
    w_img = tf.cast(image_shape[1], tf.float32)
    u = _uniform(seed, [4, attempts])
    area = h_img * w_img * (scale[0] + (scale[1] - scale[0]) * u[0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = tf.exp(log_lo + (log_hi - log_lo) * u[1])
    w = tf.round(tf.sqrt(area * aspect))  # round half to even, like Python's round
    h = tf.round(tf.sqrt(area / aspect))
    fits = (w > 0) & (w <= w_img) & (h > 0) & (h <= h_img)
    y = tf.minimum(tf.floor(u[2] * (h_img - h + 1)), h_img - h)
    x = tf.minimum(tf.floor(u[3] * (w_img - w + 1)), w_img - w)
    # First fitting attempt. reduce_min over indices rather than argmax over the
    # mask because tf.argmax does not guarantee which tied index it returns.
    first = tf.reduce_min(tf.where(fits, tf.range(attempts), attempts))
    first = tf.minimum(first, attempts - 1)
    sampled = tf.stack([y[first], x[first], h[first], w[first]])

    in_ratio = w_img / h_img
    fb_w = tf.where(in_ratio > ratio[1], tf.round(h_img * ratio[1]), w_img)
    fb_h = tf.where(in_ratio < ratio[0], tf.round(w_img / ratio[0]), h_img)
    fallback = tf.stack([tf.floor((h_img - fb_h) / 2), tf.floor((w_img - fb_w) / 2),
                         fb_h, fb_w])
    return tf.cast(tf.where(tf.reduce_any(fits), sampled, fallback), tf.int32)


def resized_crop(image: tf.Tensor, box: tf.Tensor, size: int,
                 antialias: bool = True) -> tf.Tensor:
    """Crops ``box`` from ``image`` and resizes it bilinearly to ``[size, size]``.

    Uses half-pixel centres with edge clamping (torchvision's ``resize``), so a box
    of exactly ``size x size`` returns its pixels unchanged. ``tf.image.
    crop_and_resize`` was measured and rejected: its align-corners sampling differs
    from torchvision and, with half-pixel boxes, extrapolates zeros at the borders;
    slice + ``tf.image.resize`` was also faster (docs/BENCHMARKS.md, "Measurements
    behind design decisions").

    Args:
        image: ``[H, W, C]`` float32.
        box: int32 ``[4]`` ``(offset_y, offset_x, h, w)``.
        size: output side.
        antialias: antialias when downscaling, as PIL / torchvision do. Upscaling
            gives the same values either way (1e-7), so the cheaper plain bilinear
            kernel is used whenever the box is no larger than ``size``.

    Returns:
        float32 ``[size, size, C]`` clipped to ``[0, 1]``.
    """
    crop = image[box[0]:box[0] + box[2], box[1]:box[1] + box[3], :]  # keeps static C

    def resize(aa):
        return lambda: tf.image.resize(crop, [size, size], method="bilinear", antialias=aa)

    static_hw = image.shape[:2]
    never_down = static_hw.is_fully_defined() and max(static_hw) <= size
    if antialias and not never_down:  # skip the cond when no box can be larger than size
        out = tf.cond(tf.reduce_any(box[2:] > size), resize(True), resize(False))
    else:
        out = resize(False)()
    return tf.clip_by_value(out, 0.0, 1.0)


def random_resized_crop(image: tf.Tensor, seed: tf.Tensor, size: int, scale=(0.2, 1.0),
                        ratio=(3 / 4, 4 / 3), antialias: bool = True) -> tf.Tensor:
    """``resized_crop(image, sample_crop_box(seed, shape(image), ...), size)``."""
    box = sample_crop_box(seed, tf.shape(image), scale, ratio)
    return resized_crop(image, box, size, antialias)


# ---------------------------------------------------------------------- flip


def flip_left_right(image: tf.Tensor, do_flip: tf.Tensor) -> tf.Tensor:
    """Reverses the column axis of ``[H, W, C]`` where the bool scalar is True."""
    return apply_if(do_flip, lambda x: tf.reverse(x, axis=[1]), image)


def random_flip(image: tf.Tensor, seed: tf.Tensor, p: float = 0.5) -> tf.Tensor:
    """Horizontal flip with probability ``p``."""
    return flip_left_right(image, sample_apply(seed, p))


# ------------------------------------------------------------------ colour jitter


def luma(image: tf.Tensor) -> tf.Tensor:
    """``[..., 3] -> [..., 1]`` with ``GRAY_WEIGHTS``."""
    return tf.reduce_sum(image * tf.constant(GRAY_WEIGHTS, image.dtype), -1, keepdims=True)


def grayscale(image: tf.Tensor) -> tf.Tensor:
    """ITU-R 601 grayscale, replicated to 3 channels: ``[H, W, 3] -> [H, W, 3]``."""
    return tf.repeat(luma(image), 3, axis=-1)


def _blend(image, other, factor):
    return tf.clip_by_value(factor * image + (1.0 - factor) * other, 0.0, 1.0)


def adjust_brightness(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """``clip(x * factor)`` (torchvision multiplies; ``tf.image`` adds)."""
    return tf.clip_by_value(image * factor, 0.0, 1.0)


def adjust_contrast(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """Blends with the mean of the grayscale image: ``clip(f*x + (1-f)*mean(gray))``."""
    return _blend(image, tf.reduce_mean(luma(image)), factor)


def adjust_saturation(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """Blends with the grayscale image: ``clip(f*x + (1-f)*gray(x))``."""
    return _blend(image, grayscale(image), factor)


def adjust_hue(image: tf.Tensor, delta: tf.Tensor) -> tf.Tensor:
    """Rotates hue by ``delta`` turns (``delta`` in ``[-0.5, 0.5]``, torchvision's)."""
    return tf.clip_by_value(tf.image.adjust_hue(image, delta), 0.0, 1.0)


_JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


class JitterParams(NamedTuple):
    """Colour-jitter parameters of one example.

    Attributes:
        apply: bool ``[]``; False leaves the image unchanged.
        factors: float32 ``[4]``: brightness, contrast, saturation factors and hue delta.
        order: int32 ``[4]``: permutation of ``0..3`` (indices into ``factors``), the
            order in which the four adjustments run.
    """

    apply: tf.Tensor
    factors: tf.Tensor
    order: tf.Tensor


def sample_jitter_params(seed: tf.Tensor, strength=(0.4, 0.4, 0.4, 0.1),
                         p: float = 0.8) -> JitterParams:
    """Samples torchvision ``ColorJitter`` parameters inside ``RandomApply(p)``.

    Brightness, contrast and saturation factors ``~ U[max(0, 1-s), 1+s]``, hue delta
    ``~ U[-h, h]``, a uniformly random order of the four ops.

    Args:
        seed: int32/int64 ``[2]``.
        strength: ``(brightness, contrast, saturation, hue)``; hue in ``[0, 0.5]``.
        p: probability of applying the jitter at all.
    """
    b, c, s, h = (float(v) for v in strength)
    lo = tf.constant([max(0.0, 1 - b), max(0.0, 1 - c), max(0.0, 1 - s), -h])
    hi = tf.constant([1 + b, 1 + c, 1 + s, h])
    factors = lo + (hi - lo) * _uniform(fold(seed, 0), [4])
    order = tf.argsort(_uniform(fold(seed, 1), [4]), stable=True)
    return JitterParams(sample_apply(fold(seed, 2), p), factors, tf.cast(order, tf.int32))


def color_jitter(image: tf.Tensor, params: JitterParams) -> tf.Tensor:
    """Applies brightness/contrast/saturation/hue in ``params.order``, clipping to
    ``[0, 1]`` after each (torchvision clips inside each op).

    Four sequential ``tf.switch_case`` stages, each running only the chosen op.

    Args:
        image: float32 ``[H, W, 3]`` in ``[0, 1]``.
        params: from ``sample_jitter_params``.

    Returns:
        float32 ``[H, W, 3]`` in ``[0, 1]``.
    """

    def jitter(x):
        for stage in range(4):
            branches = [lambda op=op, k=k, x=x: op(x, params.factors[k])
                        for k, op in enumerate(_JITTER_OPS)]
            x = tf.switch_case(params.order[stage], branches)
        return x

    return apply_if(params.apply, jitter, image)


def random_color_jitter(image: tf.Tensor, seed: tf.Tensor, strength=(0.4, 0.4, 0.4, 0.1),
                        p: float = 0.8) -> tf.Tensor:
    """``color_jitter(image, sample_jitter_params(seed, strength, p))``."""
    return color_jitter(image, sample_jitter_params(seed, strength, p))


def random_grayscale(image: tf.Tensor, seed: tf.Tensor, p: float = 0.2) -> tf.Tensor:
    """``grayscale`` with probability ``p`` (3 channels out either way)."""
    return apply_if(sample_apply(seed, p), grayscale, image)


# ---------------------------------------------------------------------- blur


def blur_kernel_size(side: int) -> int:
    """Odd kernel size of about 10% of ``side``, at least 3 (224 -> 23, 96 -> 9, 32 -> 3)."""
    return max(3, int(0.1 * side) // 2 * 2 + 1)


def gaussian_kernel_1d(sigma: tf.Tensor, kernel_size: int) -> tf.Tensor:
    """Normalised ``exp(-x^2 / (2 sigma^2))`` for ``x = -r..r``: float32 ``[kernel_size]``."""
    radius = kernel_size // 2
    x = tf.range(-radius, radius + 1, dtype=tf.float32)
    k = tf.exp(-tf.square(x) / (2.0 * tf.square(tf.cast(sigma, tf.float32))))
    return k / tf.reduce_sum(k)


def _blur_matrix(kernel: tf.Tensor, n) -> tf.Tensor:
    """``[n, n]`` matrix ``M`` with ``(M @ x)[i] = sum_t kernel[t] * x[reflect(i + t - r)]``."""
    ks = tf.shape(kernel)[0]
    idx = tf.abs(tf.range(n)[:, None] + tf.range(ks)[None, :] - ks // 2)  # [n, ks]
    idx = tf.where(idx > n - 1, 2 * (n - 1) - idx, idx)  # reflect, edge not repeated
    rows = tf.broadcast_to(tf.range(n)[:, None], tf.shape(idx))
    coords = tf.reshape(tf.stack([rows, idx], -1), [-1, 2])
    # scatter_nd sums duplicate coordinates (taps that reflect onto the same pixel).
    return tf.scatter_nd(coords, tf.tile(kernel, [n]), tf.stack([n, n]))


def gaussian_blur(image: tf.Tensor, sigma: tf.Tensor, kernel_size: int | None = None) -> tf.Tensor:
    """Separable Gaussian blur with reflect padding (torchvision's ``gaussian_blur``).

    Each 1-D pass is a matmul with a banded ``[n, n]`` matrix that folds the reflect
    padding into its edge rows: the same result as a depthwise conv (within 1e-7) and
    much faster on CPU for large kernels (docs/BENCHMARKS.md, "Measurements behind
    design decisions").

    Args:
        image: float32 ``[H, W, C]`` (static ``H, W`` when ``kernel_size`` is None).
            Reflect padding needs ``H, W > kernel_size // 2``.
        sigma: float scalar.
        kernel_size: odd; defaults to ``blur_kernel_size(max(H, W))``.

    Returns:
        float32 ``[H, W, C]``.
    """
    if kernel_size is None:
        if image.shape[0] is None or image.shape[1] is None:
            raise ValueError("gaussian_blur needs a static image size or a kernel_size")
        kernel_size = blur_kernel_size(max(image.shape[0], image.shape[1]))
    if kernel_size % 2 != 1:
        raise ValueError(f"kernel_size must be odd, got {kernel_size}")
    k = gaussian_kernel_1d(sigma, kernel_size)
    h, w, c = tf.unstack(tf.shape(image))
    x = tf.reshape(_blur_matrix(k, h) @ tf.reshape(image, [h, w * c]), [h, w, c])
    x = tf.reshape(tf.transpose(x, [1, 0, 2]), [w, h * c])  # W to the front
    x = tf.transpose(tf.reshape(_blur_matrix(k, w) @ x, [w, h, c]), [1, 0, 2])
    return tf.ensure_shape(x, image.shape)


class BlurParams(NamedTuple):
    """Blur parameters of one example: ``apply`` bool ``[]``, ``sigma`` float32 ``[]``."""

    apply: tf.Tensor
    sigma: tf.Tensor


def sample_blur_params(seed: tf.Tensor, p: float = 0.5, sigma=(0.1, 2.0)) -> BlurParams:
    """``apply ~ Bernoulli(p)``, ``sigma ~ U[sigma]`` (SimCLR / MoCo-v2 / BYOL)."""
    s = sigma[0] + (sigma[1] - sigma[0]) * _uniform(fold(seed, 1))
    return BlurParams(sample_apply(fold(seed, 0), p), s)


def random_gaussian_blur(image: tf.Tensor, seed: tf.Tensor, p: float = 0.5, sigma=(0.1, 2.0),
                         kernel_size: int | None = None) -> tf.Tensor:
    """Gaussian blur with probability ``p`` and ``sigma ~ U[sigma]``."""
    params = sample_blur_params(seed, p, sigma)
    return apply_if(params.apply, lambda x: gaussian_blur(x, params.sigma, kernel_size), image)


# ------------------------------------------------------------------- solarize


def solarize(image: tf.Tensor, threshold: float = 0.5) -> tf.Tensor:
    """``x -> 1 - x`` where ``x >= threshold`` (torchvision ``RandomSolarize``)."""
    return tf.where(image >= threshold, 1.0 - image, image)


def random_solarize(image: tf.Tensor, seed: tf.Tensor, p: float = 0.2,
                    threshold: float = 0.5) -> tf.Tensor:
    """``solarize`` with probability ``p``."""
    return apply_if(sample_apply(seed, p), lambda x: solarize(x, threshold), image)
