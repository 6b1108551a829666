"""Batched view transforms for ``--augment_on=device``: the pixel work of the view
recipes, run inside the replica step (on the accelerator, under XLA if asked).

The host keeps what is cheap or cannot be batched: it decodes, draws every random
parameter of every view from the example's seed exactly as the ``tf.data`` path
does (:func:`tfssl.data.views.make_view_params`), and, for sources whose images
differ in size, crops and resizes. The device then applies, to a whole batch,

* the random resized crop of fixed-size images as two resampling matrices per
  view (``R_y · image · R_xᵀ``), the weights of ``tf.image.resize``'s bilinear /
  antialiased triangle kernel restricted to the crop box;
* flip, colour jitter in each example's own order, grayscale, Gaussian blur with
  each example's sigma (banded reflect-padded matrices, as on the host) and
  solarize, each selected per example with ``tf.where``.

The views equal the ``tf.data`` path's within float rounding (max abs difference
1e-5 on [0, 1] pixels, tested eagerly and under XLA), not bit for bit: the resize
sums in another order and the hue rotation is ``rgb_to_hsv`` / ``hsv_to_rgb``
rather than the fused ``AdjustHue`` kernel.

A batch for the device (``pipeline.pretrain_dataset(..., augment_on="device")``) is
a dict: ``"params"``, a tuple with one dict of batched parameters per view
(:func:`tfssl.data.views.sample_view_params`), and either ``"image"`` (uint8
``[B, H, W, C]``, in-memory sources: one image serves every view) or ``"crops"``
(float32 ``[B, size, size, 3]`` per view, cropped on the host).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

from tfssl.data import augment


def is_device_batch(data) -> bool:
    """Whether ``data`` is a batch for :func:`apply_views` rather than views."""
    return isinstance(data, dict) and "params" in data


def _resample_matrix(offset, length, in_size: int, size: int, antialias: bool):
    """``[B, size, in_size]`` weights: row ``i`` samples output pixel ``i`` of the crop
    ``[offset, offset + length)`` resized to ``size`` (``tf.image.resize`` bilinear
    with half-pixel centres; triangle kernel widened by ``length / size`` when
    downscaling with ``antialias``; weights renormalised inside the crop)."""
    offset = tf.cast(offset, tf.float32)[:, None, None]
    length = tf.cast(length, tf.float32)[:, None, None]
    inv_scale = length / float(size)
    sample = offset + (tf.range(size, dtype=tf.float32)[None, :, None] + 0.5) * inv_scale
    pixel = tf.range(in_size, dtype=tf.float32)[None, None, :] + 0.5
    width = tf.maximum(inv_scale, 1.0) if antialias else tf.ones_like(inv_scale)
    weight = tf.maximum(0.0, 1.0 - tf.abs(pixel - sample) / width)
    inside = (pixel >= offset) & (pixel < offset + length)
    weight = tf.where(inside, weight, 0.0)
    return weight / tf.reduce_sum(weight, axis=-1, keepdims=True)


def resized_crop(images: tf.Tensor, boxes: tf.Tensor, size: int,
                 antialias: bool = True) -> tf.Tensor:
    """Batched :func:`tfssl.data.augment.resized_crop`.

    Args:
        images: float32 ``[B, H, W, C]`` (static ``H``, ``W``).
        boxes: int32 ``[B, 4]`` ``(offset_y, offset_x, h, w)``.
        size: output side.
        antialias: as the host op (which antialiases both axes when either side
            of the box exceeds ``size``; per axis this is the same weights).

    Returns:
        float32 ``[B, size, size, C]`` clipped to ``[0, 1]``.
    """
    height, width = images.shape[1], images.shape[2]
    if height is None or width is None:
        raise ValueError("device resized_crop needs images of a static size")
    boxes = tf.cast(boxes, tf.int32)
    rows = _resample_matrix(boxes[:, 0], boxes[:, 2], height, size, antialias)
    cols = _resample_matrix(boxes[:, 1], boxes[:, 3], width, size, antialias)
    out = tf.einsum("bih,bhwc->biwc", rows, images)
    out = tf.einsum("bjw,biwc->bijc", cols, out)
    return tf.clip_by_value(out, 0.0, 1.0)


def _select(flags, yes, no):
    """Per-example ``where``: ``flags`` bool ``[B]``."""
    return tf.where(tf.reshape(flags, [-1, 1, 1, 1]), yes, no)


def _per_example(values):
    return tf.reshape(values, [-1, 1, 1, 1])


def _hue(images, delta):
    hsv = tf.image.rgb_to_hsv(images)
    hue = tf.math.floormod(hsv[..., :1] + _per_example(delta), 1.0)
    return tf.clip_by_value(tf.image.hsv_to_rgb(tf.concat([hue, hsv[..., 1:]], -1)),
                            0.0, 1.0)


def color_jitter(images, apply, factors, order):
    """Batched :func:`tfssl.data.augment.color_jitter`: four stages, stage ``s``
    running op ``order[b, s]`` on example ``b``.

    Brightness, contrast and saturation are one per-example affine map of each stage,
    ``clip(f·x + c·luma(x) + d)`` (brightness ``c = d = 0``; contrast ``c = 0``,
    ``d = (1 - f)·mean luma``; saturation ``c = 1 - f``, ``d = 0``), which computes
    the host's values exactly (the zero terms add nothing); hue runs on the batch
    and is selected where it is the stage's op.
    """
    def stage(s, x):
        chosen = order[:, s]
        f = _per_example(tf.gather(factors, chosen, batch_dims=1))
        gray = augment.luma(x)
        mean = tf.reduce_mean(gray, axis=[1, 2, 3], keepdims=True)
        zero = tf.zeros_like(f)
        c = tf.where(_per_example(tf.equal(chosen, 2)), 1.0 - f, zero)
        d = tf.where(_per_example(tf.equal(chosen, 1)), (1.0 - f) * mean, zero)
        affine = tf.clip_by_value(f * x + c * gray + d, 0.0, 1.0)
        return s + 1, _select(tf.equal(chosen, 3), _hue(x, factors[:, 3]), affine)

    # A loop, not four unrolled stages: XLA would fuse the stages into one kernel
    # that recomputes each earlier stage for every use of its output.
    _, x = tf.while_loop(lambda s, x: s < 4, stage, (tf.constant(0), images))
    return _select(apply, x, images)


def _reflect_taps(n: int, kernel_size: int) -> np.ndarray:
    """``[kernel_size, n, n]`` 0/1: tap ``t`` of output ``i`` reads input
    ``reflect(i + t - r)`` (the edge pixel not repeated, as on the host)."""
    idx = np.abs(np.arange(n)[:, None] + np.arange(kernel_size)[None, :] - kernel_size // 2)
    idx = np.where(idx > n - 1, 2 * (n - 1) - idx, idx)
    taps = np.zeros((kernel_size, n, n), np.float32)
    for t in range(kernel_size):
        taps[t, np.arange(n), idx[:, t]] = 1.0
    return taps


def gaussian_blur(images, sigma):
    """Batched :func:`tfssl.data.augment.gaussian_blur`, one sigma per example
    (square images; kernel ``blur_kernel_size(side)``)."""
    side = images.shape[1]
    kernel_size = augment.blur_kernel_size(side)
    radius = kernel_size // 2
    x = tf.range(-radius, radius + 1, dtype=tf.float32)[None, :]
    kernel = tf.exp(-tf.square(x) / (2.0 * tf.square(tf.cast(sigma, tf.float32)[:, None])))
    kernel = kernel / tf.reduce_sum(kernel, axis=-1, keepdims=True)  # [B, ks]
    matrix = tf.einsum("bt,tij->bij", kernel, tf.constant(_reflect_taps(side, kernel_size)))
    out = tf.einsum("bih,bhwc->biwc", matrix, images)
    return tf.einsum("bjw,biwc->bijc", matrix, out)


def photometric(views: tf.Tensor, params: dict, spec) -> tf.Tensor:
    """Flip, jitter, grayscale, blur and solarize of a batch of cropped views, in
    the host's order; an op the spec leaves out is not in the graph."""
    x = views
    if spec.flip_p > 0:
        x = _select(params["flip"], tf.reverse(x, axis=[2]), x)
    if spec.jitter_p > 0 and any(spec.jitter):
        x = color_jitter(x, params["jitter"], params["jitter_factors"],
                         params["jitter_order"])
    if spec.gray_p > 0:
        x = _select(params["gray"], augment.grayscale(x), x)
    if spec.blur_p > 0:
        x = _select(params["blur"], gaussian_blur(x, params["blur_sigma"]), x)
    if spec.solarize_p > 0:
        x = _select(params["solarize"], augment.solarize(x), x)
    return x


def apply_views(batch: dict, specs: Sequence) -> tuple:
    """The views of a device batch: a tuple of float32 ``[B, size, size, 3]``, one
    per spec, equal to the ``tf.data`` path's within float rounding."""
    specs = tuple(specs)
    params = tuple(batch["params"])
    if len(params) != len(specs):
        raise ValueError(f"the batch has parameters of {len(params)} views, the method "
                         f"takes {len(specs)}")
    if "crops" in batch:
        crops = tuple(batch["crops"])
    else:
        images = augment.to_float_rgb(batch["image"])
        crops = tuple(resized_crop(images, p["box"], spec.size)
                      for p, spec in zip(params, specs))
    return tuple(photometric(c, p, spec) for c, p, spec in zip(crops, params, specs))
