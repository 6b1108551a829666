"""Pretraining streams over record files (tfds datasets too large for memory).

A sequential source cannot read example ``i`` alone, so the random-access stream
of :mod:`tfssl.data.pipeline` does not apply. Instead each input pipeline streams
**its own files** and decodes only what it trains on:

* files ``i`` with ``i % P == p`` belong to pipeline ``p`` of ``P`` (the union over
  pipelines is the whole split, each example in exactly one pipeline's epoch);
* epoch ``e`` of a pipeline reads its files in the order of a shuffle seeded by
  ``(seed, e, p)``, then shuffles the records in consecutive windows of
  ``window`` records (each window seeded by ``(seed, e, p, window index)``);
* the example at a pipeline's local position ``q`` is augmented with the seed of
  virtual position ``q·P + p``.

Everything before decoding works on serialized records, so the stream is a pure
function of ``(seed, p, P, q)``: a run resumed with the same number of input
pipelines continues bit for bit. Resuming does not read what it skips: whole
epochs and whole files are skipped by arithmetic on the file lengths, and at most
one file's records (bytes, not decoded) plus one window are read to reach the start.
What is not kept: with ``P > 1`` a global batch holds other examples than one
process would see (each pipeline draws from its own files), unlike in-memory and
image-folder sources.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import tensorflow as tf

from tfssl.errors import UserError

#: Records shuffled together (the window of the epoch's record stream).
WINDOW = 10_000


@dataclasses.dataclass(frozen=True)
class RecordFiles:
    """The record files of one split.

    Attributes:
      paths: the files, in the split's order.
      lengths: records in each file.
      image: ``fn(serialized) -> encoded image bytes`` (the example's image field,
        not decoded).
      channels: channels to decode the images to (1 or 3).
    """

    paths: tuple
    lengths: tuple
    image: Callable[[tf.Tensor], tf.Tensor]
    channels: int = 3

    def __post_init__(self):
        if len(self.paths) != len(self.lengths) or not self.paths:
            raise ValueError(f"{len(self.paths)} files, {len(self.lengths)} lengths")


def _fold(seed, *values):
    seed = tf.stack([tf.constant(seed, tf.int64), tf.constant(0x4EC0, tf.int64)])
    for v in values:
        seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(v, tf.int64))
    return seed


def pipeline_files(files, pipeline_id, num_pipelines):
    """Indices of the files of pipeline ``pipeline_id`` (``i % P == p``).

    Raises:
      UserError: fewer files than input pipelines.
    """
    n = len(files.paths)
    if n < num_pipelines:
        raise UserError(
            f"the dataset has {n} record files but the run has {num_pipelines} input "
            "pipelines (workers); each worker reads its own files, so prepare the "
            "dataset with at least as many shards (tfds DownloadConfig(num_shards=...)) "
            "or use fewer workers.")
    return np.arange(pipeline_id, n, num_pipelines)


def file_order(seed, epoch, pipeline_id, own):
    """The pipeline's files ``own`` (indices) in epoch ``epoch``'s order: int64
    tensor (the same in eager and in graph code)."""
    return tf.random.experimental.stateless_shuffle(
        tf.constant(own, tf.int64), seed=_fold(seed, epoch, pipeline_id))


def _windows_shuffled(records, seed, epoch, pipeline_id, first_window=0):
    def shuffle(index, window):
        return tf.random.experimental.stateless_shuffle(
            window, seed=_fold(seed, epoch, pipeline_id, index))

    windows = records.batch(WINDOW).enumerate(start=first_window)
    return windows.map(shuffle).unbatch()


def _epoch(files, seed, epoch, pipeline_id, own):
    """Serialized records of one whole epoch, window-shuffled (graph code)."""
    paths = tf.gather(tf.constant(files.paths), file_order(seed, epoch, pipeline_id, own))
    return _windows_shuffled(tf.data.TFRecordDataset(paths), seed, epoch, pipeline_id)


def _epoch_from(files, seed, epoch, pipeline_id, own, first_record):
    """The same epoch from record ``first_record`` (a multiple of ``WINDOW``) on,
    reading only from the file that holds that record."""
    order = file_order(seed, epoch, pipeline_id, own).numpy()
    ends = np.cumsum(np.asarray(files.lengths, np.int64)[order])
    k = int(np.searchsorted(ends, first_record, side="right"))  # the file holding it
    within = first_record - (int(ends[k - 1]) if k else 0)
    paths = [files.paths[i] for i in order[k:]]
    records = tf.data.TFRecordDataset(paths[:1]).skip(within)
    if len(paths) > 1:
        records = records.concatenate(tf.data.TFRecordDataset(paths[1:]))
    return _windows_shuffled(records, seed, epoch, pipeline_id, first_record // WINDOW)


def record_stream(files, seed, start, pipeline_id=0, num_pipelines=1):
    """``(virtual position, serialized record)`` of one pipeline from its local
    position ``start`` on, forever (see the module docstring)."""
    own = pipeline_files(files, pipeline_id, num_pipelines)
    epoch_length = int(sum(files.lengths[i] for i in own))
    first_epoch, offset = divmod(int(start), epoch_length)
    window_start = offset // WINDOW * WINDOW
    head = _epoch_from(files, seed, first_epoch, pipeline_id, own, window_start)
    head = head.skip(offset - window_start)
    rest = tf.data.Dataset.range(first_epoch + 1, 2**62).flat_map(
        lambda e: _epoch(files, seed, e, pipeline_id, own))
    positions = tf.data.Dataset.range(start, 2**62).map(
        lambda q: q * num_pipelines + pipeline_id)
    return tf.data.Dataset.zip(positions, head.concatenate(rest))
