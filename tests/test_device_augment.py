"""--augment_on=device: the batched in-step views equal the tf.data path's views
(within float rounding), eagerly and under XLA, for in-memory and streamed sources,
in the training step and under two replicas."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import fashion_batch, tiny_config
from tests.test_pipeline import folder_source
from tfssl.data import augment, device_augment, pipeline, sources, views
from tfssl.trainer import build_model, distributed_pretrain_dataset, make_train_function

# Measured: <= 2.5e-5 at 96 px with antialiased downscaling and blur (XLA), ~1e-6 at
# 28 px; the resize and the blur sum in another order, the hue rotation is
# rgb_to_hsv / hsv_to_rgb rather than the fused AdjustHue kernel.
TOL = 1e-4


def host_and_device(images, specs, seed=3, crop=False):
    """Host views and the device views of the same examples and seeds."""
    seeds = [tf.constant([seed, i], tf.int64) for i in range(len(images))]
    host = [views.make_views(tf.constant(im), specs, s) for im, s in zip(images, seeds)]
    made = [views.make_view_params(tf.constant(im), specs, s, crop=crop)
            for im, s in zip(images, seeds)]
    batch = tf.nest.map_structure(lambda *xs: tf.stack(xs), *made)
    host = tuple(np.stack([h[v] for h in host]) for v in range(len(specs)))
    return host, batch


def test_batched_resized_crop_equals_the_host_crop():
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(6, 30, 40, 3)).astype(np.float32)
    # Downscaled, upscaled, exactly the output size, one axis each way, whole image.
    boxes = np.array([[2, 3, 25, 30], [5, 1, 6, 9], [0, 0, 16, 16], [4, 10, 26, 8],
                      [0, 0, 30, 40], [14, 24, 16, 16]], np.int32)
    got = device_augment.resized_crop(tf.constant(images), tf.constant(boxes), 16).numpy()
    for image, box, out in zip(images, boxes, got):
        want = augment.resized_crop(tf.constant(image), tf.constant(box), 16).numpy()
        np.testing.assert_allclose(out, want, atol=1e-5)
    # A box of the output size is its pixels, unchanged.
    np.testing.assert_allclose(got[2], images[2, :16, :16], atol=1e-6)


@pytest.mark.parametrize("shape,specs", [
    ((28, 28, 1), views.strong(32) + views.weak(32)),
    ((40, 30, 3), views.byol_a(64) + views.byol_b(64)),  # blur p 1, solarize
    ((96, 96, 3), views.multi_crop(96, 48, 1, 1)),  # antialiased downscaling
])
def test_device_views_equal_host_views_eagerly_and_under_xla(shape, specs):
    images = np.random.default_rng(1).integers(0, 256, (6,) + shape, dtype=np.uint8)
    host, batch = host_and_device(images, specs)
    compiled = tf.function(lambda b: device_augment.apply_views(b, specs),
                           jit_compile=True)
    for got in (device_augment.apply_views(batch, specs), compiled(batch)):
        for want, view, spec in zip(host, got, specs):
            assert view.shape == (6, spec.size, spec.size, 3)
            np.testing.assert_allclose(view.numpy(), want, atol=TOL)


def test_every_op_is_exercised_and_skipped_ops_leave_the_graph():
    """Over 16 examples each random op both fires and does not (so the
    equivalence above covers both branches); a spec without an op draws False."""
    spec = views.byol_b(64)[0]
    params = [views.sample_view_params([40, 30, 3], spec, tf.constant([0, i], tf.int64))
              for i in range(16)]
    for op in ("flip", "jitter", "gray", "solarize"):
        fired = {bool(p[op]) for p in params}
        assert fired == {True, False}, op
    plain = views.sample_view_params([40, 30, 3], views.weak(32)[0], tf.constant([0, 1]))
    assert not any(bool(plain[op]) for op in ("jitter", "gray", "blur", "solarize"))


def test_pipeline_device_batches_make_the_host_pipelines_views():
    src = sources.from_array(fashion_batch(32))
    specs = views.strong(28) + views.weak(28)
    host = next(iter(pipeline.pretrain_dataset(src, specs, 16, seed=1)))
    batch = next(iter(pipeline.pretrain_dataset(src, specs, 16, seed=1,
                                                augment_on="device")))
    assert batch["image"].dtype == tf.uint8 and batch["image"].shape == (16, 28, 28, 1)
    for want, got in zip(host, device_augment.apply_views(batch, specs)):
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=TOL)


def test_streamed_images_of_varying_size_are_cropped_on_the_host(tmp_path):
    """JPEGs of different sizes: the host decodes (by window) and crops, the device
    does the rest; the views equal the host path's."""
    src, _ = folder_source(tmp_path)
    specs = views.strong(16) + views.weak(16)
    host = next(iter(pipeline.pretrain_dataset(src, specs, 4, seed=2)))
    batch = next(iter(pipeline.pretrain_dataset(src, specs, 4, seed=2,
                                                augment_on="device")))
    assert "image" not in batch and len(batch["crops"]) == 2
    for want, got in zip(host, device_augment.apply_views(batch, specs)):
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=TOL)


def test_a_training_step_on_device_views_equals_the_host_step(tmp_path, mirrored):
    """One step from the device path (one device, and two replicas) gives the host
    path's losses: the replica step makes its own views."""
    src = sources.from_array(fashion_batch(32))
    logs = {}
    for mode, strategy in (("host", tf.distribute.get_strategy()),
                           ("device", tf.distribute.get_strategy()),
                           ("device", mirrored)):
        config = tiny_config(tmp_path / mode, "moco_v2", batch=8, queue=16,
                             batch_norm="sync", augment_on=mode)
        tf.keras.utils.set_random_seed(0)
        model = build_model(config, strategy, 10, (0.5,) * 3, (0.5,) * 3)
        iterator = iter(distributed_pretrain_dataset(
            strategy, src, model.input_view_specs(), config, 0))
        step = make_train_function(model, strategy)
        logs[(mode, strategy.num_replicas_in_sync)] = {
            k: float(v) for k, v in step(iterator).items()}
    want = logs[("host", 1)]
    for key in ("loss", "embedding_std"):
        for got in (logs[("device", 1)], logs[("device", 2)]):
            assert got[key] == pytest.approx(want[key], rel=1e-4), key


def test_augment_on_is_checked():
    with pytest.raises(ValueError, match="augment_on"):
        pipeline.pretrain_dataset(sources.from_array(fashion_batch(8)), views.weak(28),
                                  4, augment_on="gpu")
    assert dataclasses.replace(tiny_config("/tmp/x"), model_dir="/tmp/x").data.augment_on \
        == "host"
