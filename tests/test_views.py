"""Tests of tfssl.data.views: recipe numbers, validation, and views end to end."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from tfssl.data import augment, views
from tfssl.data.views import ViewSpec
from tfssl.errors import UserError

SEED = tf.constant([12, 34], tf.int64)


def _uint8(h=28, w=28, c=1, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, c)).astype(np.uint8)


def _plain(size, **changes):
    """A spec with every random op off and a whole-image crop: a deterministic view."""
    base = ViewSpec(size=size, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0,
                    jitter_p=0.0, gray_p=0.0, blur_p=0.0)
    return dataclasses.replace(base, **changes)


# ------------------------------------------------------------------ recipes


def test_strong_matches_moco_v2():
    (s,) = views.strong(96)
    assert s.size == 96 and s.crop_scale == (0.2, 1.0) and s.flip_p == 0.5
    assert s.jitter == (0.4, 0.4, 0.4, 0.1) and s.jitter_p == 0.8 and s.gray_p == 0.2
    assert s.blur_p == 0.5 and s.blur_sigma == (0.1, 2.0) and s.solarize_p == 0.0
    assert views.strong(32)[0].blur_p == 0.0  # off at <= 32 px
    assert views.strong(33)[0].blur_p == 0.5


def test_weak_is_crop_and_flip_only():
    (w,) = views.weak(32)
    assert w.crop_scale == (0.2, 1.0) and w.flip_p == 0.5
    assert w.jitter_p == w.gray_p == w.blur_p == w.solarize_p == 0.0


def test_byol_views():
    (a,), (b,) = views.byol_a(96), views.byol_b(96)
    for s in (a, b):
        assert s.jitter == (0.4, 0.4, 0.2, 0.1) and s.jitter_p == 0.8 and s.gray_p == 0.2
    assert (a.blur_p, a.solarize_p) == (1.0, 0.0)
    assert (b.blur_p, b.solarize_p) == (0.1, 0.2)
    assert views.byol_a(32)[0].blur_p == views.byol_b(32)[0].blur_p == 0.0
    assert views.byol_b(32)[0].solarize_p == 0.2


def test_recipes_registry_and_unknown_name():
    assert set(views.RECIPES) == {"strong", "weak", "byol_a", "byol_b"}
    assert views.get_recipe("weak", 64) == views.weak(64)
    with pytest.raises(UserError, match="byol_a, byol_b, strong, weak"):
        views.get_recipe("simclr", 32)


def test_multi_crop_counts_sizes_and_scales():
    specs = views.multi_crop(224, 96, 2, 6)
    assert len(specs) == 8
    assert [s.size for s in specs] == [224] * 2 + [96] * 6
    assert all(s.crop_scale == (0.2, 1.0) for s in specs[:2])
    assert all(s.crop_scale == (0.05, 0.2) for s in specs[2:])
    assert all(s.jitter_p == 0.8 and s.blur_p == 0.5 for s in specs)
    # Local crops follow the size rule of the base recipe: no blur at 32 px.
    assert views.multi_crop(64, 32, 1, 2)[-1].blur_p == 0.0


def test_multi_crop_cycles_base_recipes():
    specs = views.multi_crop(96, 48, 2, 4, base=("byol_a", "byol_b"),
                             global_scale=(0.3, 1.0), local_scale=(0.1, 0.3))
    assert [s.solarize_p for s in specs] == [0.0, 0.2, 0.0, 0.2, 0.0, 0.2]
    assert specs[0].crop_scale == (0.3, 1.0) and specs[-1].crop_scale == (0.1, 0.3)
    with pytest.raises(UserError, match="n_global"):
        views.multi_crop(96, 48, 0, 0)
    with pytest.raises(UserError, match="unknown view recipe"):
        views.multi_crop(96, 48, 1, 1, base="nope")


def test_ressl_imagenet_multicrop_preset():
    specs = views.ressl_imagenet_multicrop()
    assert [s.size for s in specs] == [224, 192, 160, 128, 96]
    assert [s.crop_scale for s in specs] == [(0.14, 1.0), (0.117, 0.86), (0.095, 0.715),
                                             (0.073, 0.571), (0.05, 0.429)]
    strong = views.strong(224)[0]
    for s in specs:
        assert dataclasses.replace(s, size=224, crop_scale=strong.crop_scale) == strong


@pytest.mark.parametrize("field,value", [
    ("size", 0), ("size", 2.5), ("flip_p", 1.5), ("jitter_p", -0.1), ("gray_p", 2),
    ("blur_p", -1), ("solarize_p", 1.01), ("crop_scale", (0.0, 1.0)),
    ("crop_scale", (0.5, 0.4)), ("crop_scale", (0.2, 1.2)), ("crop_scale", (0.2,)),
    ("crop_ratio", (4 / 3, 3 / 4)), ("jitter", (0.4, 0.4, 0.4, 0.6)),
    ("jitter", (0.4, -0.1, 0.4, 0.1)), ("blur_sigma", (0.0, 2.0)),
])
def test_viewspec_validation_names_the_field(field, value):
    kwargs = {"size": 32, field: value}
    with pytest.raises(UserError, match=f"ViewSpec.{field}"):
        ViewSpec(**kwargs)


def test_viewspec_normalises_sequences_and_is_hashable():
    s = ViewSpec(size=32, crop_scale=[0.3, 1], jitter=[0.4, 0.4, 0.4, 0.1], flip_p=1)
    assert s.crop_scale == (0.3, 1.0) and isinstance(s.jitter, tuple) and s.flip_p == 1.0
    assert hash(s) == hash(ViewSpec(size=32, crop_scale=(0.3, 1.0), flip_p=1.0))
    n = ViewSpec(size=np.int64(32), gray_p=np.float32(0.25))  # numpy scalars from flags/JSON
    assert type(n.size) is int and type(n.gray_p) is float and n.gray_p == 0.25


# ------------------------------------------------------------------ apply_view


def test_plain_view_is_the_image_as_floats():
    img = _uint8(c=3)
    out = views.apply_view(img, _plain(28), SEED).numpy()
    np.testing.assert_allclose(out, img / 255.0, atol=1e-6)


def test_pinned_view_ops_match_numpy():
    img = _uint8(c=3, seed=1)
    x = img / 255.0
    flipped = views.apply_view(img, _plain(28, flip_p=1.0), SEED).numpy()
    np.testing.assert_allclose(flipped, x[:, ::-1], atol=1e-6)
    gray = views.apply_view(img, _plain(28, gray_p=1.0), SEED).numpy()
    g = x @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(gray, np.repeat(g[..., None], 3, -1), atol=1e-6)
    sol = views.apply_view(img, _plain(28, solarize_p=1.0), SEED).numpy()
    np.testing.assert_allclose(sol, np.where(x >= 0.5, 1 - x, x), atol=1e-6)


def test_grayscale_uint8_input_gives_rgb_view():
    out = views.apply_view(_uint8(28, 28, 1), views.strong(32)[0], SEED)
    assert out.shape == (32, 32, 3) and out.dtype == tf.float32
    out = out.numpy()
    assert 0.0 <= out.min() and out.max() <= 1.0


def test_apply_view_is_stateless():
    img = _uint8(40, 40, 3)
    spec = views.byol_b(40)[0]
    a = views.apply_view(img, spec, SEED).numpy()
    np.testing.assert_array_equal(a, views.apply_view(img, spec, SEED).numpy())
    np.testing.assert_array_equal(
        a, views.apply_view(img, spec, tf.constant([12, 34], tf.int32)).numpy())
    assert not np.array_equal(a, views.apply_view(img, spec, tf.constant([12, 35])).numpy())


def test_each_op_has_its_own_seed():
    # Turning jitter off must not change the crop: the crop's seed is fold_in(seed, 0).
    img = _uint8(40, 40, 3)
    with_jitter = views.apply_view(img, ViewSpec(32, jitter_p=1.0, flip_p=0.0, gray_p=0.0,
                                                 blur_p=0.0), SEED)
    crop_only = views.apply_view(img, ViewSpec(32, jitter_p=0.0, flip_p=0.0, gray_p=0.0,
                                               blur_p=0.0), SEED)
    expected = augment.random_resized_crop(augment.to_float_rgb(img), augment.fold(SEED, 0), 32)
    np.testing.assert_array_equal(crop_only.numpy(), expected.numpy())
    assert not np.array_equal(with_jitter.numpy(), crop_only.numpy())


def test_make_views_folds_the_view_index():
    img = _uint8(36, 36, 3)
    specs = views.strong(32) * 2 + views.weak(24)
    out = views.make_views(img, specs, SEED)
    assert [tuple(v.shape) for v in out] == [(32, 32, 3), (32, 32, 3), (24, 24, 3)]
    for i, (v, spec) in enumerate(zip(out, specs)):
        ref = views.apply_view(img, spec, tf.random.experimental.stateless_fold_in(SEED, i))
        np.testing.assert_array_equal(v.numpy(), ref.numpy())
    assert not np.array_equal(out[0].numpy(), out[1].numpy())  # same spec, other seed


def test_make_views_in_tf_data_parallel_map_matches_eager():
    images = np.stack([_uint8(28, 28, 1, seed=s) for s in range(6)])
    specs = views.byol_a(48) + views.byol_b(48)

    def make(i, image):
        return views.make_views(image, specs, augment.fold(SEED, i))

    ds = tf.data.Dataset.from_tensor_slices(images).enumerate()
    ds = ds.map(make, num_parallel_calls=2).batch(3)
    assert [tuple(s.shape) for s in ds.element_spec] == [(None, 48, 48, 3)] * 2
    batches = list(ds)
    assert len(batches) == 2 and batches[0][0].shape == (3, 48, 48, 3)
    for i in (0, 4):
        ref = make(tf.constant(i, tf.int64), images[i])
        for v in range(2):
            np.testing.assert_allclose(batches[i // 3][v][i % 3].numpy(), ref[v].numpy(),
                                       atol=1e-6)


def test_apply_view_in_tf_function_has_static_shape():
    spec = views.strong(64)[0]
    f = tf.function(lambda x, s: views.apply_view(x, spec, s),
                    input_signature=[tf.TensorSpec([None, None, None], tf.uint8),
                                     tf.TensorSpec([2], tf.int64)])
    assert f.get_concrete_function().structured_outputs.shape == (64, 64, 3)
    img = _uint8(50, 70, 3)
    np.testing.assert_allclose(f(img, SEED).numpy(), views.apply_view(img, spec, SEED).numpy(),
                               atol=1e-6)


def test_views_from_jpeg_bytes_decode_only_the_window_and_equal_a_full_decode():
    """4:2:0 and 4:4:4 JPEGs of many sizes, two strong views and a multi-crop: the
    crop-window decode gives the views of the whole-image decode bit for bit; PNGs
    are decoded whole."""
    rng = np.random.default_rng(5)
    small = dataclasses.replace(views.strong(32)[0], crop_scale=(0.05, 0.2))
    recipes = ((small,),  # a window well inside the image: decode_and_crop_jpeg
               views.strong(32),
               views.strong(32) + views.byol_b(24) + views.multi_crop(32, 12, 1, 2))
    for trial in range(12):
        specs = recipes[trial % 3]
        h, w = (int(v) for v in rng.integers(60, 200, 2))
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        image = tf.image.resize(image[None], [h // 3 + 1, w // 3 + 1])
        image = tf.cast(tf.image.resize(image, [h, w])[0], tf.uint8)  # smooth-ish
        for encoded in (tf.io.encode_jpeg(image, quality=85),
                        tf.io.encode_jpeg(image, chroma_downsampling=False),
                        tf.io.encode_png(image)):
            seed = tf.constant([trial, 3], tf.int64)
            got = views.make_views_from_bytes(encoded, specs, seed)
            want = views.make_views(tf.io.decode_image(encoded, channels=3,
                                                       expand_animations=False),
                                    specs, seed)
            for g, w_ in zip(got, want):
                np.testing.assert_array_equal(g.numpy(), w_.numpy())
