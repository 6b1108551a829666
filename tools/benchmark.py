"""Training-step and input-pipeline throughput of one configuration, as JSON.

    python tools/benchmark.py --method=M --backbone=B --image_size=S \
        --global_batch_size=N [--jit_compile] [--mixed_precision=P] \
        [--flagfile=configs/<dataset>/<method>.flags] [--width=W] \
        [--synthetic_data] [--threads=T] [--timed_steps=10 --warmup_steps=3] \
        [--pipeline_batches=20] [--bare_backbone]

Every training flag applies (the run is never written: ``--model_dir`` defaults to a
temporary directory). Prints one JSON line:

* ``train_images_per_sec``: global batch / median wall time of a timed step, the
  whole step (forward, backward, optimizer, EMA update, queue) on a fixed batch
  already in memory, after ``--warmup_steps`` untimed steps (tracing);
* ``pipeline_images_per_sec``: source images per second through the real
  ``tf.data`` view pipeline of the method alone (batches pulled as fast as possible,
  ``--num_parallel_calls`` map parallelism; null with ``--pipeline_batches=0``);
* ``peak_host_memory_mib``: peak resident memory of the process;
* ``view_specs`` (every field of each view's recipe) and ``config`` (the resolved
  run configuration), so that another implementation can be set up to do the same
  work (``tools/compare_pytorch.py`` reads both).

``--synthetic_data`` replaces the dataset by ``--synthetic_examples`` seeded uniform
random uint8 ``[S, S, 3]`` images held in memory (no files needed; the step is timed
on a fixed batch anyway, and the augmentation cost does not depend on the content).
``--threads=T`` sets TensorFlow's intra- and inter-op thread pools to ``T`` before
any op runs (0: TensorFlow's default, one per core).  ``--bare_backbone`` times the
backbone alone instead of the method: forward (training mode) + backward of
``mean(pooled²)`` on a fixed random batch, the gradients consumed by their global
norm (so that nothing is pruned), no optimizer; ``--jit_compile`` applies to it too.
"""

import os
import resource
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfssl.cli import quiet_tensorflow, run_main  # noqa: E402

quiet_tensorflow()

from absl import flags  # noqa: E402

from tfssl import flags as tfssl_flags  # noqa: E402

FLAGS = flags.FLAGS
tfssl_flags.define_flags(FLAGS)
flags.DEFINE_integer("timed_steps", 10, "Timed training steps.")
flags.DEFINE_integer("warmup_steps", 3, "Untimed steps first (tracing, caches).")
flags.DEFINE_integer("pipeline_batches", 20, "Batches timed through tf.data (0: skip "
                     "the pipeline measurement).")
flags.DEFINE_bool("synthetic_data", False, "Seeded random uint8 images in memory "
                  "instead of --dataset.")
flags.DEFINE_integer("synthetic_examples", 2048, "Images of --synthetic_data (at "
                     "least --global_batch_size).")
flags.DEFINE_integer("threads", 0, "TensorFlow intra- and inter-op threads (0: "
                     "TensorFlow's default).")
flags.DEFINE_bool("bare_backbone", False, "Time the backbone's forward + backward "
                  "alone instead of the method's step.")


def synthetic_images(n, size, seed=0):
    """``n`` seeded uniform random uint8 ``[size, size, 3]`` images (numpy).

    ``tools/_lightly_step.py`` makes the same array for the PyTorch side.
    """
    import numpy as np

    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3),
                                                dtype=np.uint8)


def synthetic_source(n, size, seed=0):
    """An in-memory :class:`tfssl.data.sources.Source` of synthetic images."""
    import numpy as np

    from tfssl.data.sources import Source

    images = synthetic_images(n, size, seed)
    labels = np.zeros((n,), np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return Source("synthetic", "train", n, num_classes=0,
                  image_shape=(size, size, 3), mean=(0.5,) * 3, std=(0.5,) * 3,
                  images=images, labels=labels, make_dataset=None,
                  notes="tools/benchmark.py --synthetic_data")


def set_threads(threads):
    """TensorFlow intra/inter-op pools (before the runtime starts); returns them."""
    import tensorflow as tf

    if threads > 0:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    return (tf.config.threading.get_intra_op_parallelism_threads(),
            tf.config.threading.get_inter_op_parallelism_threads())


def time_calls(fn, warmup, timed):
    """Runs ``fn`` ``warmup`` times, then returns the wall times of ``timed`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(timed):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def onednn_enabled():
    """Whether TensorFlow's CPU ops run oneDNN kernels (``TF_ENABLE_ONEDNN_OPTS``;
    tfssl turns them on unless the environment says 0)."""
    try:
        from tensorflow.python.util import _pywrap_util_port
        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):  # a TensorFlow without the query
        return None


def backbone_step_function(backbone, batch, jit_compile):
    """``fn() -> (loss, grad_norm)``: forward + backward of the bare backbone."""
    import tensorflow as tf

    variables = backbone.trainable_variables

    @tf.function(jit_compile=jit_compile or None)
    def step(x):
        with tf.GradientTape() as tape:
            pooled = tf.cast(backbone(x, training=True)["pooled"], tf.float32)
            loss = tf.reduce_mean(tf.square(pooled))
        grads = tape.gradient(loss, variables)
        return loss, tf.linalg.global_norm(grads)

    return lambda: [float(v) for v in step(batch)]


def benchmark_source(config):
    """The images the run reads: ``--synthetic_data`` or the configured dataset."""
    from tfssl.errors import UserError
    from tfssl.trainer import run_source

    t = config.train
    if not FLAGS.synthetic_data:
        return run_source(config, config.data.pretrain_split)
    if FLAGS.synthetic_examples < t.global_batch_size:
        raise UserError(f"--synthetic_examples={FLAGS.synthetic_examples} must be "
                        f">= --global_batch_size={t.global_batch_size}.")
    return synthetic_source(FLAGS.synthetic_examples, config.data.image_size, t.seed)


def fixed_batch_step(model, strategy, config, source):
    """``fn() -> loss``: the method's whole distributed training step on one fixed
    batch of its views (made once by the input pipeline), as ``tfssl.train`` runs it."""
    import tensorflow as tf

    from tfssl.data import pipeline
    from tfssl.trainer import make_train_function

    t = config.train
    fixed = next(iter(pipeline.pretrain_dataset(
        source, model.input_view_specs(), t.global_batch_size, seed=t.seed,
        num_parallel_calls=config.data.num_parallel_calls,
        examples_per_call=config.data.examples_per_call)))
    repeated = tf.data.Dataset.from_tensors(fixed).repeat()
    iterator = iter(strategy.experimental_distribute_dataset(repeated))
    step = make_train_function(model, strategy, t.jit_compile)
    return lambda: float(step(iterator)["loss"])


def main(argv):
    import dataclasses
    import json

    intra, inter = set_threads(FLAGS.threads)  # before TensorFlow runs any op

    import tensorflow as tf

    from tfssl.data import pipeline
    from tfssl.errors import UserError
    from tfssl.trainer import build_model, make_strategy

    if FLAGS.timed_steps < 1 or FLAGS.warmup_steps < 0 or FLAGS.pipeline_batches < 0:
        raise UserError("--timed_steps must be >= 1, --warmup_steps and "
                        "--pipeline_batches >= 0.")
    if not FLAGS.model_dir:
        FLAGS.model_dir = tempfile.mkdtemp(prefix="tfssl_bench_")
    config = tfssl_flags.run_config_from_flags(FLAGS)
    t = config.train
    size = config.data.image_size
    strategy = make_strategy(t.strategy, t.tpu, t.cpu_devices)
    source = benchmark_source(config)
    model = build_model(config, strategy, 1000, source.mean, source.std)
    specs = model.input_view_specs()

    pipe_rate = None
    if FLAGS.pipeline_batches and not FLAGS.bare_backbone:
        dataset = pipeline.pretrain_dataset(
            source, specs, t.global_batch_size, seed=t.seed,
            num_parallel_calls=config.data.num_parallel_calls,
            examples_per_call=config.data.examples_per_call)
        batches = iter(dataset)
        next(batches)
        started = time.perf_counter()
        for _ in range(FLAGS.pipeline_batches):
            next(batches)
        pipe_rate = FLAGS.pipeline_batches * t.global_batch_size / (
            time.perf_counter() - started)

    if FLAGS.bare_backbone:
        if strategy.num_replicas_in_sync > 1:
            raise UserError("--bare_backbone times one device: leave --strategy at "
                            "default.")
        batch = tf.random.stateless_uniform([t.global_batch_size, size, size, 3],
                                            [t.seed, 1])
        fn = backbone_step_function(model.backbone, batch, t.jit_compile)
    else:
        fn = fixed_batch_step(model, strategy, config, source)

    times = time_calls(fn, FLAGS.warmup_steps, FLAGS.timed_steps)
    median = statistics.median(times)
    record = {
        "side": "tfssl", "mode": "backbone" if FLAGS.bare_backbone else "step",
        "method": t.method, "backbone": config.model.backbone,
        "stem": config.model.stem, "width": config.model.width, "image_size": size,
        "views": [s.size for s in specs], "global_batch_size": t.global_batch_size,
        "replicas": strategy.num_replicas_in_sync, "jit_compile": t.jit_compile,
        "mixed_precision": getattr(t, "mixed_precision", None),
        "synthetic_data": FLAGS.synthetic_data,
        "threads": FLAGS.threads or os.cpu_count(), "intra_op_threads": intra,
        "inter_op_threads": inter, "cpu_count": os.cpu_count(),
        "num_parallel_calls": config.data.num_parallel_calls,
        "timed_steps": FLAGS.timed_steps, "warmup_steps": FLAGS.warmup_steps,
        "step_seconds_median": round(median, 4),
        "step_seconds_min": round(min(times), 4),
        "step_seconds": [round(x, 4) for x in times],
        "train_images_per_sec": round(t.global_batch_size / median, 1),
        "pipeline_images_per_sec": None if pipe_rate is None else round(pipe_rate, 1),
        "peak_host_memory_mib": round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "tensorflow": tf.__version__, "onednn": onednn_enabled(),
        "view_specs": [dataclasses.asdict(s) for s in specs],
        "config": config.to_dict(),
    }
    print(json.dumps(record))


if __name__ == "__main__":
    run_main(main)
