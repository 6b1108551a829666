"""Tests of tfssl.data.augment: pinned parameters against numpy, then the samplers."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tfssl.data import augment as A
from tfssl.errors import UserError

W601 = np.array([0.299, 0.587, 0.114], np.float32)


def _rand_image(h=24, w=20, seed=0):
    return np.random.default_rng(seed).random((h, w, 3), dtype=np.float32)


def _seeds(n, offset=0):
    return tf.stack([tf.range(offset, offset + n), tf.fill([n], 7)], axis=1)


def _map_seeds(fn, n, dtype=tf.float32, offset=0):
    """``fn(seed)`` for ``n`` seeds in one traced loop (fast), as numpy."""
    run = tf.function(lambda s: tf.map_fn(fn, s, fn_output_signature=dtype))
    return run(_seeds(n, offset)).numpy()


# ------------------------------------------------------------------ to_float_rgb


def test_to_float_rgb_replicates_gray_and_drops_alpha():
    gray = np.arange(28 * 28, dtype=np.int64).reshape(28, 28, 1) % 256
    out = A.to_float_rgb(tf.constant(gray.astype(np.uint8))).numpy()
    assert out.shape == (28, 28, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, np.repeat(gray / 255.0, 3, axis=-1), atol=1e-7)
    rgba = np.random.default_rng(0).integers(0, 256, (5, 6, 4)).astype(np.uint8)
    np.testing.assert_allclose(A.to_float_rgb(rgba).numpy(), rgba[..., :3] / 255.0, atol=1e-7)


def test_to_float_rgb_unknown_channels_in_graph():
    f = tf.function(A.to_float_rgb,
                    input_signature=[tf.TensorSpec([None, None, None], tf.uint8)])
    gray = np.full((4, 5, 1), 51, np.uint8)
    rgb = np.random.default_rng(1).integers(0, 256, (4, 5, 3)).astype(np.uint8)
    np.testing.assert_allclose(f(gray).numpy(), np.full((4, 5, 3), 0.2), atol=1e-7)
    np.testing.assert_allclose(f(rgb).numpy(), rgb / 255.0, atol=1e-7)
    assert f.get_concrete_function().structured_outputs.shape[-1] == 3


def test_to_float_rgb_rejects_five_channels():
    with pytest.raises(UserError, match="channels"):
        A.to_float_rgb(tf.zeros([4, 4, 5], tf.uint8))


# ------------------------------------------------------------------ crop


def _coord_image(h=40, w=50):
    """Channel 0 = row index, channel 1 = column index (as floats / 100)."""
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return np.stack([yy / 100, xx / 100, np.full_like(yy, 0.5)], -1).astype(np.float32)


def test_resized_crop_same_size_returns_the_box_pixels():
    img = _coord_image()
    out = A.resized_crop(tf.constant(img), tf.constant([5, 7, 20, 20]), 20).numpy()
    np.testing.assert_array_equal(out, img[5:25, 7:27])


@pytest.mark.parametrize("box,size", [((3, 4, 32, 32), 16), ((2, 9, 10, 10), 20),
                                      ((0, 0, 12, 30), 15)])
def test_resized_crop_samples_half_pixel_centres(box, size):
    # Bilinear resampling of a linear ramp is exact: output pixel k reads source
    # coordinate y0 + (k + 0.5) * h / size - 0.5, clamped to the box (torchvision).
    img = _coord_image()
    y0, x0, h, w = box
    out = A.resized_crop(tf.constant(img), tf.constant(box), size, antialias=False).numpy()
    k = np.arange(size)
    ys = np.clip(y0 + (k + 0.5) * h / size - 0.5, y0, y0 + h - 1) / 100
    xs = np.clip(x0 + (k + 0.5) * w / size - 0.5, x0, x0 + w - 1) / 100
    np.testing.assert_allclose(out[:, 0, 0], ys, atol=1e-6)
    np.testing.assert_allclose(out[0, :, 1], xs, atol=1e-6)


def test_resized_crop_antialias_only_matters_when_downscaling():
    img = tf.constant(_rand_image(40, 40))
    up = tf.constant([3, 4, 10, 12])
    np.testing.assert_allclose(A.resized_crop(img, up, 24).numpy(),
                               A.resized_crop(img, up, 24, antialias=False).numpy(), atol=1e-6)
    down = A.resized_crop(img, tf.constant([0, 0, 40, 40]), 10).numpy()
    # A 4x antialiased downscale averages ~4x4 blocks: much smoother than point sampling.
    assert down.std() < 0.6 * A.resized_crop(img, tf.constant([0, 0, 40, 40]), 10,
                                             antialias=False).numpy().std()


def test_crop_box_areas_and_ratios_within_bounds():
    scale, ratio, h_img, w_img = (0.2, 1.0), (3 / 4, 4 / 3), 200, 160
    boxes = _map_seeds(lambda s: A.sample_crop_box(s, [h_img, w_img], scale, ratio),
                       500, tf.int32)
    y, x, h, w = boxes.T.astype(np.float64)
    assert (y >= 0).all() and (x >= 0).all() and (y + h <= h_img).all() and (x + w <= w_img).all()
    # w, h are rounded from exact values, so allow +-0.5 on each side.
    area = h_img * w_img
    assert ((h + 0.5) * (w + 0.5) >= scale[0] * area).all()
    assert ((h - 0.5) * (w - 0.5) <= scale[1] * area).all()
    assert ((w + 0.5) / (h - 0.5) >= ratio[0]).all()
    assert ((w - 0.5) / (h + 0.5) <= ratio[1]).all()
    # The sampler actually spans the range (not stuck at one box).
    assert (h * w).min() < 0.3 * area and (h * w).max() > 0.8 * area
    assert len({tuple(b) for b in boxes}) > 450


def test_crop_box_falls_back_to_centre_crop_clipped_to_ratio():
    # Ratio (2, 3) with the whole area never fits a square image; torchvision's
    # fallback: in_ratio 1 < 2, so w = W, h = round(W / 2), centred.
    box = A.sample_crop_box(tf.constant([1, 2]), [60, 60], (1.0, 1.0), (2.0, 3.0)).numpy()
    np.testing.assert_array_equal(box, [15, 0, 30, 60])
    box = A.sample_crop_box(tf.constant([1, 2]), [60, 60], (1.0, 1.0), (0.25, 0.5)).numpy()
    np.testing.assert_array_equal(box, [0, 15, 60, 30])


def test_crop_box_is_stateless():
    shape = [100, 120]
    a = A.sample_crop_box(tf.constant([3, 4]), shape).numpy()
    b = A.sample_crop_box(tf.constant([3, 4], tf.int64), shape).numpy()
    c = A.sample_crop_box(tf.constant([3, 5]), shape).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


# ------------------------------------------------------------------ flip, apply-with-p


def test_flip_reverses_columns_exactly():
    img = _rand_image()
    np.testing.assert_array_equal(A.flip_left_right(img, tf.constant(True)).numpy(),
                                  img[:, ::-1])
    np.testing.assert_array_equal(A.flip_left_right(img, tf.constant(False)).numpy(), img)


@pytest.mark.parametrize("p,expected", [(0.0, 0.0), (1.0, 1.0)])
def test_sample_apply_extremes(p, expected):
    assert _map_seeds(lambda s: tf.cast(A.sample_apply(s, p), tf.float32), 300).mean() == expected


def test_sample_apply_frequency():
    freq = _map_seeds(lambda s: tf.cast(A.sample_apply(s, 0.5), tf.float32), 400).mean()
    assert abs(freq - 0.5) < 0.1  # 4 standard deviations
    freq = _map_seeds(lambda s: tf.cast(A.sample_apply(s, 0.2), tf.float32), 400).mean()
    assert abs(freq - 0.2) < 0.08


@pytest.mark.parametrize("op,p,transform", [
    (A.random_flip, 1.0, lambda x: x[:, ::-1]),
    (A.random_grayscale, 1.0, lambda x: np.repeat(x @ W601, 3).reshape(x.shape)),
    (A.random_solarize, 1.0, lambda x: np.where(x >= 0.5, 1 - x, x)),
    (A.random_flip, 0.0, lambda x: x),
    (A.random_grayscale, 0.0, lambda x: x),
    (A.random_solarize, 0.0, lambda x: x),
    (A.random_gaussian_blur, 0.0, lambda x: x),
    (A.random_color_jitter, 0.0, lambda x: x),
])
def test_random_ops_with_p_0_or_1(op, p, transform):
    img = _rand_image()
    for s in range(5):
        out = op(tf.constant(img), tf.constant([s, 11]), p=p).numpy()
        np.testing.assert_allclose(out, transform(img), atol=1e-6)


# ------------------------------------------------------------------ colour


def test_grayscale_matches_itu_601():
    img = _rand_image()
    out = A.grayscale(tf.constant(img)).numpy()
    expected = (img * W601).sum(-1, keepdims=True)
    np.testing.assert_allclose(out, np.repeat(expected, 3, -1), atol=1e-6)


@pytest.mark.parametrize("op,neutral", [(A.adjust_brightness, 1.0), (A.adjust_contrast, 1.0),
                                        (A.adjust_saturation, 1.0), (A.adjust_hue, 0.0)])
def test_neutral_factor_is_identity(op, neutral):
    img = _rand_image()
    np.testing.assert_allclose(op(tf.constant(img), neutral).numpy(), img, atol=1e-6)


def test_color_jitter_neutral_params_are_identity_in_any_order():
    img = _rand_image()
    params = A.JitterParams(tf.constant(True), tf.constant([1.0, 1.0, 1.0, 0.0]),
                            tf.constant([3, 1, 0, 2]))
    np.testing.assert_allclose(A.color_jitter(tf.constant(img), params).numpy(), img, atol=1e-6)


def test_adjustments_match_numpy():
    img = _rand_image()
    gray = (img * W601).sum(-1, keepdims=True)
    np.testing.assert_allclose(A.adjust_brightness(img, 1.3).numpy(),
                               np.clip(img * 1.3, 0, 1), atol=1e-6)
    np.testing.assert_allclose(A.adjust_contrast(img, 0.6).numpy(),
                               np.clip(0.6 * img + 0.4 * gray.mean(), 0, 1), atol=1e-6)
    np.testing.assert_allclose(A.adjust_saturation(img, 1.4).numpy(),
                               np.clip(1.4 * img + (1 - 1.4) * gray, 0, 1), atol=1e-6)
    np.testing.assert_allclose(A.adjust_saturation(img, 0.0).numpy(),
                               A.grayscale(img).numpy(), atol=1e-7)
    np.testing.assert_allclose(A.adjust_contrast(img, 0.0).numpy(),
                               np.full_like(img, gray.mean()), atol=1e-6)


def test_hue_rotation_of_primaries():
    red = tf.constant([[[1.0, 0.0, 0.0]]])
    np.testing.assert_allclose(A.adjust_hue(red, 1 / 3).numpy(), [[[0, 1, 0]]], atol=1e-5)
    np.testing.assert_allclose(A.adjust_hue(red, -1 / 3).numpy(), [[[0, 0, 1]]], atol=1e-5)
    np.testing.assert_allclose(A.adjust_hue(red, 0.5).numpy(), [[[0, 1, 1]]], atol=1e-5)


def test_color_jitter_follows_the_given_order():
    img = _rand_image()
    b, c = 1.5, 0.5

    def contrast(x):
        return np.clip(c * x + (1 - c) * (x * W601).sum(-1).mean(), 0, 1)

    def bright(x):
        return np.clip(x * b, 0, 1)

    for order, expected in [([0, 1, 2, 3], contrast(bright(img))),
                            ([1, 0, 3, 2], bright(contrast(img)))]:
        params = A.JitterParams(tf.constant(True), tf.constant([b, c, 1.0, 0.0]),
                                tf.constant(order))
        np.testing.assert_allclose(A.color_jitter(img, params).numpy(), expected, atol=1e-5)
    assert not np.allclose(contrast(bright(img)), bright(contrast(img)), atol=1e-3)


def test_jitter_params_ranges_and_random_order():
    strength = (0.4, 0.3, 0.2, 0.1)

    def sample(s):
        p = A.sample_jitter_params(s, strength, p=0.8)
        return tf.concat([p.factors, tf.cast(p.order, tf.float32),
                          tf.cast(p.apply, tf.float32)[None]], 0)

    out = _map_seeds(sample, 400)
    factors, orders, applied = out[:, :4], out[:, 4:8].astype(int), out[:, 8]
    lo = [0.6, 0.7, 0.8, -0.1]
    hi = [1.4, 1.3, 1.2, 0.1]
    assert (factors >= lo).all() and (factors <= hi).all()
    # Spread over the range (uniform): each factor's extremes are near the bounds.
    assert (factors.min(0) < np.array(lo) + 0.05).all()
    assert (factors.max(0) > np.array(hi) - 0.05).all()
    assert (np.sort(orders, 1) == np.arange(4)).all()  # permutations
    assert len({tuple(o) for o in orders}) == 24  # all 4! orders occur in 400 draws
    assert abs(applied.mean() - 0.8) < 0.08


def test_jitter_brightness_zero_strength_keeps_factor_one():
    p = A.sample_jitter_params(tf.constant([1, 2]), (0.0, 0.0, 0.0, 0.0))
    np.testing.assert_array_equal(p.factors.numpy(), [1, 1, 1, 0])


def test_random_color_jitter_changes_image_and_stays_in_range():
    img = _rand_image()
    out = A.random_color_jitter(img, tf.constant([0, 1]), p=1.0).numpy()
    assert out.min() >= 0 and out.max() <= 1
    assert np.abs(out - img).mean() > 1e-3


# ------------------------------------------------------------------ blur, solarize


def _np_kernel(sigma, ks):
    x = np.arange(ks) - ks // 2
    k = np.exp(-x ** 2 / (2 * sigma ** 2))
    return k / k.sum()


def _np_blur(img, sigma, ks):
    r, k = ks // 2, _np_kernel(sigma, ks)
    p = np.pad(img, [(r, r), (r, r), (0, 0)], mode="reflect")
    y = sum(k[t] * p[t:t + img.shape[0]] for t in range(ks))
    return sum(k[t] * y[:, t:t + img.shape[1]] for t in range(ks))


@pytest.mark.parametrize("side,expected", [(28, 3), (32, 3), (64, 7), (96, 9), (224, 23)])
def test_blur_kernel_size(side, expected):
    assert A.blur_kernel_size(side) == expected


def test_gaussian_kernel_matches_numpy_and_sums_to_one():
    k = A.gaussian_kernel_1d(1.3, 9).numpy()
    np.testing.assert_allclose(k, _np_kernel(1.3, 9), atol=1e-7)
    assert abs(k.sum() - 1) < 1e-6


@pytest.mark.parametrize("shape,sigma", [((24, 20, 3), 1.3), ((96, 96, 3), 2.0), ((7, 40, 3), 0.7)])
def test_gaussian_blur_matches_numpy_reflect_padding(shape, sigma):
    img = _rand_image(shape[0], shape[1])
    ks = A.blur_kernel_size(max(shape[:2]))
    np.testing.assert_allclose(A.gaussian_blur(img, sigma).numpy(), _np_blur(img, sigma, ks),
                               atol=1e-6)


def test_gaussian_blur_constant_stays_constant_and_small_sigma_is_identity():
    const = np.full((32, 32, 3), 0.37, np.float32)
    np.testing.assert_allclose(A.gaussian_blur(const, 1.7, 7).numpy(), const, atol=1e-6)
    img = _rand_image()
    np.testing.assert_allclose(A.gaussian_blur(img, 0.1, 5).numpy(), img, atol=1e-6)


def test_blur_params_range():
    sig = _map_seeds(lambda s: A.sample_blur_params(s, 1.0, (0.1, 2.0)).sigma, 300)
    assert sig.min() >= 0.1 and sig.max() <= 2.0 and sig.min() < 0.2 and sig.max() > 1.9


def test_solarize_matches_numpy():
    img = np.linspace(0, 1, 60, dtype=np.float32).reshape(4, 5, 3)
    np.testing.assert_allclose(A.solarize(img).numpy(), np.where(img >= 0.5, 1 - img, img))
    assert A.solarize(tf.constant([0.5])).numpy()[0] == 0.5  # threshold itself inverts


def test_ops_trace_with_static_shapes():
    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.float32),
                                  tf.TensorSpec([2], tf.int64)])
    def view(x, seed):
        x = A.random_resized_crop(x, A.fold(seed, 0), 24)
        x = A.random_flip(x, A.fold(seed, 1))
        x = A.random_color_jitter(x, A.fold(seed, 2))
        x = A.random_grayscale(x, A.fold(seed, 3))
        x = A.random_gaussian_blur(x, A.fold(seed, 4), 0.5)
        return A.random_solarize(x, A.fold(seed, 5), 0.5)

    assert view.get_concrete_function().structured_outputs.shape == (24, 24, 3)
    img = _rand_image(30, 40)
    a = view(img, tf.constant([1, 2], tf.int64)).numpy()
    np.testing.assert_array_equal(a, view(img, tf.constant([1, 2], tf.int64)).numpy())
    assert not np.array_equal(a, view(img, tf.constant([1, 3], tf.int64)).numpy())
    assert math.isclose(float(np.clip(a, 0, 1).sum()), float(a.sum()))
