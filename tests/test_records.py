"""Record-file streams (tfds datasets too large for memory): per-pipeline files,
epoch and window shuffling, resume without reading what is skipped."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tfssl.data import pipeline, records, sources, views
from tfssl.errors import UserError

N, SHARDS = 30, 4


class Tiny(tfds.core.GeneratorBasedBuilder):
    """N JPEGs of varying sizes; the label is the example's id."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(num_classes=N)}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        rng = np.random.default_rng(0)
        for i in range(N):
            yield i, {"image": rng.integers(0, 256, (16 + i, 20, 3), dtype=np.uint8),
                      "label": i}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    builder = Tiny(data_dir=str(tmp_path_factory.mktemp("tfds")))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(num_shards=SHARDS))
    files = sources._record_files(builder, ["train"], (None, None, 3))
    assert files is not None and len(files.paths) == SHARDS and sum(files.lengths) == N
    return builder, files


def ids(builder, stream, count):
    """Example ids (labels) of the first ``count`` records of a record stream."""
    parse = builder.info.features.deserialize_example
    return [int(parse(r)["label"]) for _, r in stream.take(count)]


def test_every_epoch_visits_each_example_once_in_a_new_order(tiny):
    builder, files = tiny
    got = ids(builder, records.record_stream(files, seed=1, start=0), 3 * N)
    for e in range(3):
        assert sorted(got[e * N:(e + 1) * N]) == list(range(N))
    assert got[:N] != got[N:2 * N]


def test_pipelines_stream_disjoint_files_that_cover_the_split(tiny):
    builder, files = tiny
    seen = []
    for p in range(2):
        own = records.pipeline_files(files, p, 2)
        length = sum(files.lengths[i] for i in own)
        epoch = ids(builder, records.record_stream(files, 1, 0, p, 2), length)
        assert sorted(epoch) == sorted(set(epoch))
        seen += epoch
        positions = [int(q) for q, _ in records.record_stream(files, 1, 0, p, 2).take(3)]
        assert positions == [p, 2 + p, 4 + p]  # virtual positions q·P + p
    assert sorted(seen) == list(range(N))
    with pytest.raises(UserError, match="has 4 record files but the run has 5 input"):
        records.record_stream(files, 1, 0, 0, 5)


@pytest.mark.parametrize("window", [4, 10_000])
def test_resume_at_any_position_continues_the_stream(tiny, monkeypatch, window):
    monkeypatch.setattr(records, "WINDOW", window)
    builder, files = tiny
    straight = list(records.record_stream(files, 3, 0).take(4 * N))
    for start in (1, 5, 13, N, N + 7, 3 * N - 2):
        resumed = list(records.record_stream(files, 3, start).take(2 * N - 5
                                                                   if start < 2 * N else 2))
        for (qa, ra), (qb, rb) in zip(straight[start:], resumed):
            assert int(qa) == int(qb) and ra.numpy() == rb.numpy()


def test_a_late_position_is_reached_by_arithmetic(tiny):
    """Position 10⁶ (33,333 epochs in): the stream starts there at once and equals
    that epoch's records from the offset."""
    builder, files = tiny
    start = 10**6
    epoch, offset = divmod(start, N)
    own = records.pipeline_files(files, 0, 1)
    want = [r.numpy() for r in records._epoch(files, 7, epoch, 0, own)]
    got = [r.numpy() for _, r in records.record_stream(files, 7, start).take(N - offset)]
    assert got == want[offset:]


def test_pretraining_views_decode_only_the_pipelines_examples(tiny):
    builder, files = tiny
    decoded = []

    def counted(record):
        tf.py_function(lambda: decoded.append(1), [], [])
        return files.image(record)

    counting = records.RecordFiles(files.paths, files.lengths, counted)
    src = sources.Source("tiny", "train", N, num_classes=N, image_shape=(None, None, 3),
                         mean=(0.5,) * 3, std=(0.5,) * 3, images=None, labels=None,
                         make_dataset=lambda: None, records=counting)
    specs = views.strong(16)
    context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1,
                                         num_replicas_in_sync=2)
    ds = pipeline.pretrain_dataset(src, specs, 8, seed=2, start_step=3,
                                   input_context=context, num_parallel_calls=1)
    (batch,) = next(iter(ds))
    assert batch.shape == (4, 16, 16, 3)
    assert 4 <= len(decoded) < 16  # its 4 rows and prefetch, not the other pipeline's
    # Row j is the record at local position 3·4 + j, augmented with the seed of
    # virtual position (12 + j)·2 + 1 (the JPEG decoded whole here, only the crop
    # window in the pipeline: the same pixels).
    stream = list(records.record_stream(files, 2, 12, 1, 2).take(4))
    for j, (q, record) in enumerate(stream):
        assert int(q) == (12 + j) * 2 + 1
        image = tf.io.decode_jpeg(files.image(record), channels=3)
        want = views.make_views(image, specs, pipeline._example_seed(2, q))[0]
        np.testing.assert_array_equal(batch[j].numpy(), want.numpy())


def test_streamed_tfds_sources_carry_their_record_files(tiny, monkeypatch):
    import functools

    builder, files = tiny
    monkeypatch.setitem(sources._TFDS, "tiny", sources._Tfds(
        "tiny", {"train": ("train",)}, (0.5,) * 3, (0.5,) * 3))
    monkeypatch.setitem(sources.DATASETS, "tiny", functools.partial(sources._load_tfds,
                                                                    "tiny"))
    src = sources.load_source("tiny", "train", builder.data_dir.split("/tiny/")[0],
                              in_memory=False)
    assert src.records is not None and src.records.paths == files.paths
    assert src.records.lengths == files.lengths
    # Variable-size images stream by default.
    assert not sources.load_source("tiny", "train", builder.data_dir.split("/tiny/")[0],
                                   ).in_memory
