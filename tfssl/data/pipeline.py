"""tf.data pipelines for pretraining and evaluation.

Pretraining streams are a pure function of ``(seed, start_step)``:

* in-memory sources: epoch ``e`` visits the examples in the order
  ``stateless_shuffle(range(N), seed=(seed, e))``; the stream is continuous across
  epochs, so training step ``s`` consumes stream positions
  ``[s·B, (s+1)·B)`` and a resumed run rebuilds exactly the remaining stream;
* random-access streaming sources (image folders too large for memory): the same
  order, each example read from its file and decoded only by the input pipeline
  that keeps it; resuming costs one shuffle of ``range(N)``, whatever the position;
* record files (tfds datasets too large for memory): each input pipeline streams
  its own files, shuffled per epoch and in windows, resumed without reading what
  it skips (:mod:`tfssl.data.records`; exact for a fixed number of pipelines);
* other sequential sources: a seeded shuffle buffer and ``skip`` to the start
  position (exact as long as the source's order is, slower to resume).

The example at stream position ``p`` is augmented with seed ``fold_in(seed, p)``
(views: ``fold_in`` of that by view index), independent of batching, parallelism
and replica count.

Under ``tf.distribute`` each input pipeline (one per worker) keeps, of every global
batch, its own contiguous slice: pipeline ``i`` of ``P`` takes positions
``s·B + i·B/P … s·B + (i+1)·B/P − 1`` of step ``s`` and hands them to its replicas
in order. A global batch is therefore split across workers and replicas exactly as
one process would split it, so ``N`` workers train on the same examples, with the
same augmentation, as a single device with the same global batch.
"""

import tensorflow as tf

from tfssl.data import augment, records
from tfssl.data import views as views_lib

AUTOTUNE = tf.data.AUTOTUNE
_SHUFFLE_BUFFER = 10_000


def steps_per_epoch(source, global_batch_size, cap=0):
    """Whole batches per pass over ``source`` (at most ``cap`` when ``cap > 0``)."""
    steps = source.num_examples // global_batch_size
    return min(steps, cap) if cap else steps


def _example_seed(seed, position):
    base = tf.constant([seed, 0x5EED], dtype=tf.int64)
    return tf.random.experimental.stateless_fold_in(base, position)


def epoch_order(num_examples, seed, epoch):
    """Example indices of epoch ``epoch``: ``stateless_shuffle(range(N), (seed, epoch))``."""
    return tf.random.experimental.stateless_shuffle(
        tf.range(num_examples, dtype=tf.int64),
        seed=tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64)]))


def _index_stream(num_examples, seed, start_position):
    """(position, example index) pairs from ``start_position`` on, forever.

    The first epoch is sliced at the start offset, not skipped into: building the
    stream costs one shuffle of ``range(N)`` whatever the position (resume time does
    not grow with it).
    """
    n = num_examples
    first_epoch = start_position // n
    offset = start_position - first_epoch * n

    def epoch_indices(epoch):
        return tf.data.Dataset.from_tensor_slices(epoch_order(n, seed, epoch))

    head = tf.data.Dataset.from_tensor_slices(epoch_order(n, seed, first_epoch)[offset:])
    rest = tf.data.Dataset.range(first_epoch + 1, 2**62).flat_map(epoch_indices)
    positions = tf.data.Dataset.range(start_position, 2**62)
    return tf.data.Dataset.zip(positions, head.concatenate(rest))


def _shard_filter(global_batch_size, pipeline_id, num_pipelines):
    """Keeps stream positions in pipeline ``pipeline_id``'s slice of each batch."""
    per_pipeline = global_batch_size // num_pipelines

    def keep(position, *unused):
        return tf.equal((position % global_batch_size) // per_pipeline, pipeline_id)

    return keep


def pretrain_dataset(source, specs, global_batch_size, seed=0, start_step=0,
                     num_parallel_calls=AUTOTUNE, deterministic=True,
                     input_context=None, examples_per_call=4, augment_on="host"):
    """Batches of views for pretraining.

    Args:
      source: a :class:`tfssl.data.sources.Source`.
      specs: tuple of :class:`views.ViewSpec`, one per view.
      global_batch_size: examples per step over all replicas.
      seed: run seed.
      start_step: first training step this stream feeds (resume).
      input_context: a ``tf.distribute.InputContext`` (from
        ``strategy.distribute_datasets_from_function``): the dataset then holds
        this input pipeline's slice of every global batch, in per-replica batches.
      examples_per_call: in-memory sources: examples augmented per map call
        (the largest of this, 2 and 1 dividing the batch; the default is the fastest
        measured, docs/BENCHMARKS.md). Larger groups cost more tracing when the
        dataset is built; the views are the same for every value.
      augment_on: ``"host"``: the dataset makes the views. ``"device"``: it makes
        what :func:`tfssl.data.device_augment.apply_views` needs to make them in
        the replica step (every random parameter; the images, or for sources of
        varying image size the crops).

    Returns:
      An infinite ``tf.data.Dataset`` of tuples ``(view_0, ..., view_{V-1})``,
      each ``float32 [b, size_v, size_v, 3]`` (``augment_on="device"``: of device
      batches); ``b`` is the global batch, or the per-replica batch under
      ``input_context``.
    """
    if augment_on not in ("host", "device"):
        raise ValueError(f"augment_on must be 'host' or 'device', got {augment_on!r}")
    device = augment_on == "device"
    global_batch_size = int(global_batch_size)
    start = int(start_step) * global_batch_size
    batch_size, keep = global_batch_size, None
    if input_context is not None:
        batch_size = input_context.get_per_replica_batch_size(global_batch_size)
        if input_context.num_input_pipelines > 1:
            keep = _shard_filter(global_batch_size, input_context.input_pipeline_id,
                                 input_context.num_input_pipelines)
    parallel = AUTOTUNE if num_parallel_calls in (None, -1) else num_parallel_calls
    specs = tuple(specs)

    def make(position, image, crop=True):
        if device:
            return views_lib.make_view_params(image, specs, _example_seed(seed, position),
                                              crop=crop)
        return views_lib.make_views(image, specs, _example_seed(seed, position))

    if source.records is not None:
        # Record files (tfds): each input pipeline streams its own files.
        pipelines = input_context.num_input_pipelines if input_context else 1
        pipeline_id = input_context.input_pipeline_id if input_context else 0
        rec = source.records
        ds = records.record_stream(rec, seed, start // pipelines, pipeline_id, pipelines)
        ds = ds.map(lambda position, record: views_lib.make_views_from_bytes(
            rec.image(record), specs, _example_seed(seed, position), rec.channels,
            for_device=device),
            num_parallel_calls=parallel, deterministic=deterministic)
        return ds.batch(batch_size, drop_remainder=True).prefetch(AUTOTUNE)

    if source.read is not None:
        # Random access (image folders): the in-memory stream's order, each example
        # read and decoded only by the pipeline that keeps it (JPEGs: only the
        # window its views' crops need).
        ds = _index_stream(source.num_examples, seed, start)
        if keep is not None:
            ds = ds.filter(keep)
        ds = ds.map(lambda position, index: views_lib.make_views_from_bytes(
            source.read(index), specs, _example_seed(seed, position), for_device=device),
            num_parallel_calls=parallel, deterministic=deterministic)
        # A file with a damaged body (large folders are header-checked only) is
        # dropped here; the stream is exact when every file decodes.
        ds = ds.ignore_errors(log_warning=True)
        return ds.batch(batch_size, drop_remainder=True).prefetch(AUTOTUNE)

    if source.in_memory:
        images = tf.constant(source.images)
        ds = _index_stream(source.num_examples, seed, start)
        if keep is not None:
            ds = ds.filter(keep)
        # Several examples per map call amortise tf.data's per-call cost (function
        # run, executor set-up and completion; docs/BENCHMARKS.md).
        # The group divides the batch, so groups never straddle batches, and every
        # example is still made from its own position's seed: the views are
        # bit-identical to one example per call.
        group = next(g for g in (int(examples_per_call), 2, 1) if batch_size % g == 0)

        def make_group(positions, indices):
            made = [make(positions[j], tf.gather(images, indices[j]), crop=False)
                    for j in range(group)]
            return tf.nest.map_structure(lambda *parts: tf.stack(parts), *made)

        ds = ds.batch(group, drop_remainder=True)
        ds = ds.map(make_group, num_parallel_calls=parallel, deterministic=deterministic)
        return ds.rebatch(batch_size, drop_remainder=True).prefetch(AUTOTUNE)

    # Streaming sources: images of any size, one per map call.
    ds = source.as_dataset().map(lambda ex: ex["image"])
    ds = ds.shuffle(_SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True)
    ds = ds.repeat().enumerate().skip(start)
    if keep is not None:  # every worker reads (and decodes) the whole stream
        ds = ds.filter(keep)
    ds = ds.map(make, num_parallel_calls=parallel, deterministic=deterministic)
    return ds.batch(batch_size, drop_remainder=True).prefetch(AUTOTUNE)


def eval_transform(image, image_size):
    """Deterministic evaluation view: RGB float, resize shorter side, centre crop.

    ``uint8 [H, W, C]`` -> ``float32 [image_size, image_size, 3]`` in [0, 1].
    Images already at ``image_size`` pass through unchanged.
    """
    x = augment.to_float_rgb(image)
    shape = tf.shape(x)
    h, w = shape[0], shape[1]
    scale = tf.cast(image_size, tf.float32) / tf.cast(tf.minimum(h, w), tf.float32)
    new_h = tf.cast(tf.round(tf.cast(h, tf.float32) * scale), tf.int32)
    new_w = tf.cast(tf.round(tf.cast(w, tf.float32) * scale), tf.int32)
    x = tf.cond(tf.logical_and(tf.equal(h, image_size), tf.equal(w, image_size)),
                lambda: x,
                lambda: tf.image.resize(x, (new_h, new_w), antialias=True))
    x = tf.image.resize_with_crop_or_pad(x, image_size, image_size)
    return tf.clip_by_value(tf.ensure_shape(x, (image_size, image_size, 3)), 0., 1.)


def eval_dataset(source, image_size, batch_size, limit=0):
    """``(images float32 [B, S, S, 3], labels int64 [B])`` batches, in order."""
    if source.in_memory:
        images, labels = source.images, source.labels
        if limit:
            images, labels = images[:limit], labels[:limit]
        ds = tf.data.Dataset.from_tensor_slices((images, labels))
    else:
        ds = source.as_dataset().map(lambda ex: (ex["image"], ex["label"]))
        if limit:
            ds = ds.take(limit)
    ds = ds.map(lambda x, y: (eval_transform(x, image_size), tf.cast(y, tf.int64)),
                num_parallel_calls=AUTOTUNE)
    return ds.batch(batch_size).prefetch(AUTOTUNE)
