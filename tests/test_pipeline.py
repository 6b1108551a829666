"""The pretraining stream: a pure function of (seed, start step)."""

import dataclasses

import numpy as np
import tensorflow as tf

from tfssl.data import pipeline, views
from tfssl.data.sources import Source


def toy_source(n=10, size=8):
    images = np.stack([np.full((size, size, 1), i * 10, np.uint8) for i in range(n)])
    return Source(name="toy", split="train", num_examples=n, num_classes=n,
                  image_shape=(size, size, 1), mean=(0.5,) * 3, std=(0.5,) * 3,
                  images=images, labels=np.arange(n, dtype=np.int64),
                  make_dataset=None)


def batches(ds, count):
    return [tuple(v.numpy() for v in b) for b in ds.take(count)]


def test_each_epoch_visits_every_example_once():
    stream = pipeline._index_stream(10, seed=3, start_position=0)
    idx = np.array([int(i) for _, i in stream.take(30)])
    for epoch in range(3):
        assert sorted(idx[epoch * 10:(epoch + 1) * 10]) == list(range(10))
    assert not np.array_equal(idx[:10], idx[10:20])  # reshuffled per epoch


def test_resume_rebuilds_the_remaining_stream_exactly():
    src, specs = toy_source(), views.strong(8) * 2
    full = batches(pipeline.pretrain_dataset(src, specs, 4, seed=1), 6)
    resumed = batches(pipeline.pretrain_dataset(src, specs, 4, seed=1, start_step=4),
                      2)
    for a, b in zip(full[4:], resumed):
        for va, vb in zip(a, b):
            np.testing.assert_array_equal(va, vb)


def test_stream_is_deterministic_and_seed_dependent():
    src, specs = toy_source(), views.weak(8) + views.strong(8)
    a = batches(pipeline.pretrain_dataset(src, specs, 4, seed=5), 2)
    b = batches(pipeline.pretrain_dataset(src, specs, 4, seed=5), 2)
    c = batches(pipeline.pretrain_dataset(src, specs, 4, seed=6), 2)
    np.testing.assert_array_equal(a[1][0], b[1][0])
    assert not np.array_equal(a[1][1], c[1][1])
    assert a[0][0].shape == (4, 8, 8, 3) and a[0][0].dtype == np.float32


def test_multi_crop_views_have_their_own_sizes():
    specs = views.multi_crop(8, 4, n_global=2, n_local=2)
    out = batches(pipeline.pretrain_dataset(toy_source(), specs, 2), 1)[0]
    assert [v.shape[1] for v in out] == [8, 8, 4, 4]


def test_eval_dataset_is_ordered_and_centre_cropped():
    src = toy_source()
    images, labels = next(iter(pipeline.eval_dataset(src, 8, 5)))
    np.testing.assert_array_equal(labels.numpy(), np.arange(5))
    np.testing.assert_allclose(images.numpy()[3], 30 / 255.0, rtol=1e-6)
    big = pipeline.eval_transform(tf.zeros((40, 60, 3), tf.uint8), 32)
    assert big.shape == (32, 32, 3)


def test_steps_per_epoch_drops_the_remainder_and_caps():
    src = toy_source(10)
    assert pipeline.steps_per_epoch(src, 4) == 2
    assert pipeline.steps_per_epoch(src, 4, cap=1) == 1


def test_streaming_sources_resume_exactly_too():
    images = toy_source().images

    def make_dataset():
        return tf.data.Dataset.from_tensor_slices(
            {"image": images, "label": np.arange(10, dtype=np.int64)})

    src = Source(name="toy", split="train", num_examples=10, num_classes=10,
                 image_shape=(8, 8, 1), mean=(0.5,) * 3, std=(0.5,) * 3, images=None,
                 labels=None, make_dataset=make_dataset)
    assert not src.in_memory
    specs = views.strong(8)
    full = batches(pipeline.pretrain_dataset(src, specs, 4, seed=2), 5)
    resumed = batches(pipeline.pretrain_dataset(src, specs, 4, seed=2, start_step=3), 2)
    for a, b in zip(full[3:], resumed):
        np.testing.assert_array_equal(a[0], b[0])


def test_input_pipelines_split_each_global_batch_in_order():
    # 2 workers x 2 replicas, global batch 8: worker w's k-th per-replica batch of
    # step s is examples s*8 + w*4 + k*2 ... + 2 of the single-process stream.
    src, specs = toy_source(), views.strong(8)
    full = batches(pipeline.pretrain_dataset(src, specs, 8, seed=2, start_step=1), 3)
    for worker in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2,
                                             input_pipeline_id=worker,
                                             num_replicas_in_sync=4)
        ds = pipeline.pretrain_dataset(src, specs, 8, seed=2, start_step=1,
                                       input_context=context)
        got = batches(ds, 6)
        for step in range(3):
            for replica in range(2):
                lo = worker * 4 + replica * 2
                np.testing.assert_array_equal(got[step * 2 + replica][0],
                                              full[step][0][lo:lo + 2])


def test_grouped_map_calls_give_the_views_of_one_example_per_call():
    # In-memory sources augment several examples per map call; every batch size
    # (groups of 4, 2, 1) gives exactly the views of one example per call.
    src, specs = toy_source(), views.strong(8) + views.weak(8)
    images = tf.constant(src.images)
    for batch in (8, 6, 3):
        reference = pipeline._index_stream(src.num_examples, 4, batch).map(
            lambda p, i: views.make_views(tf.gather(images, i), specs,
                                          pipeline._example_seed(4, p)))
        want = batches(reference.batch(batch), 3)
        got = batches(pipeline.pretrain_dataset(src, specs, batch, seed=4,
                                                start_step=1), 3)
        for a, b in zip(got, want):
            for va, vb in zip(a, b):
                np.testing.assert_array_equal(va, vb)


def test_index_stream_starts_at_any_position_as_the_straight_stream():
    n, seed = 7, 3
    reference = np.concatenate([pipeline.epoch_order(n, seed, e).numpy()
                                for e in range(10)])
    for start in (0, 5, 7, 20, 48):
        got = [(int(p), int(i)) for p, i in
               pipeline._index_stream(n, seed, start).take(9)]
        assert got == [(p, int(reference[p])) for p in range(start, start + 9)]


def folder_source(tmp_path, n=12):
    """An image folder of ``n`` JPEGs of varying sizes, streamed (random access),
    with a counter of the examples it read."""
    from tfssl.data.sources import load_source

    rng = np.random.default_rng(0)
    for i in range(n):
        image = rng.integers(0, 256, size=(20 + i, 24 + 2 * i, 3), dtype=np.uint8)
        (tmp_path / f"{i:02d}.jpg").write_bytes(tf.io.encode_jpeg(image).numpy())
    src = load_source("image_folder", "train", str(tmp_path), in_memory=False)
    assert src.random_access and not src.in_memory and src.num_examples == n
    reads = []

    def counted(index):
        tf.py_function(lambda i: reads.append(int(i)), [index], [])
        return src.read(index)

    return dataclasses.replace(src, read=counted), reads


def test_random_access_pipelines_read_only_their_share(tmp_path):
    """Two input pipelines read disjoint halves of the stream, whose union is one
    pipeline's: each example is decoded by the pipeline that keeps it only."""
    src, reads = folder_source(tmp_path)
    specs = views.strong(16)
    full = batches(pipeline.pretrain_dataset(src, specs, 8, seed=2, start_step=1,
                                             num_parallel_calls=1), 3)
    got = []
    for worker in range(2):
        del reads[:]
        context = tf.distribute.InputContext(num_input_pipelines=2,
                                             input_pipeline_id=worker,
                                             num_replicas_in_sync=2)
        ds = pipeline.pretrain_dataset(src, specs, 8, seed=2, start_step=1,
                                       input_context=context, num_parallel_calls=1)
        got.append(batches(ds, 3))
        # 3 batches of 4 rows: 12 reads and whatever prefetch ran ahead, never the
        # other pipeline's rows (a shared stream would have read 24 and more).
        assert 12 <= len(reads) < 24
    for step in range(3):
        np.testing.assert_array_equal(
            np.concatenate([got[0][step][0], got[1][step][0]]), full[step][0])


def test_random_access_resume_reads_nothing_it_skips(tmp_path):
    src, reads = folder_source(tmp_path)
    specs = views.strong(16)
    full = batches(pipeline.pretrain_dataset(src, specs, 4, seed=1), 6)
    resumed = batches(pipeline.pretrain_dataset(src, specs, 4, seed=1, start_step=4),
                      2)
    for a, b in zip(full[4:], resumed):
        np.testing.assert_array_equal(a[0], b[0])
    # A position far beyond the folder (250,000 epochs of 12 images): only the
    # consumed examples (and prefetch) are read, and the views are those of the
    # straight stream's positions (their seeds and epoch orders).
    del reads[:]
    late = 3_000_000 // 4
    got = batches(pipeline.pretrain_dataset(src, specs, 4, seed=1, start_step=late,
                                            num_parallel_calls=1), 1)[0][0]
    assert len(reads) < 40
    order = pipeline.epoch_order(12, 1, 3_000_000 // 12).numpy()
    for row, position in enumerate(range(3_000_000, 3_000_004)):
        image = tf.io.decode_jpeg(src.read(tf.constant(order[position % 12])))
        seed = pipeline._example_seed(1, tf.constant(position, tf.int64))
        want = views.make_views(image, specs, seed)[0]
        np.testing.assert_array_equal(got[row], want.numpy())
