"""Training-step and input-pipeline throughput of one configuration, as JSON.

    python tools/benchmark.py --flagfile=configs/fashion_mnist/quickstart.flags \
        [--method=M --backbone=B --width=W --image_size=S --global_batch_size=N \
         --jit_compile --timed_steps=10 --warmup_steps=3]

Every training flag applies (the run is never written: ``--model_dir`` defaults to a
temporary directory). Prints one JSON line:

* ``train_images_per_sec``: global batch / median wall time of a timed step, the
  whole step (forward, backward, optimizer, EMA update, queue) on a fixed batch
  already in memory, after ``--warmup_steps`` untimed steps (tracing);
* ``pipeline_images_per_sec``: source images per second through the real
  ``tf.data`` view pipeline of the method alone (batches pulled as fast as possible);
* ``peak_host_memory_mib``: peak resident memory of the process.
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
flags.DEFINE_integer("pipeline_batches", 20, "Batches timed through tf.data.")


def main(argv):
    import json

    import tensorflow as tf

    from tfssl.data import pipeline
    from tfssl.trainer import build_model, make_strategy, make_train_function, run_source

    if not FLAGS.model_dir:
        FLAGS.model_dir = tempfile.mkdtemp(prefix="tfssl_bench_")
    config = tfssl_flags.run_config_from_flags(FLAGS)
    t = config.train
    strategy = make_strategy(t.strategy, t.tpu, t.cpu_devices)
    source = run_source(config, config.data.pretrain_split)
    model = build_model(config, strategy, 1000, source.mean, source.std)
    specs = model.view_specs()
    dataset = pipeline.pretrain_dataset(source, specs, t.global_batch_size,
                                        seed=t.seed)

    batches = iter(dataset)
    next(batches)
    started = time.perf_counter()
    for _ in range(FLAGS.pipeline_batches):
        next(batches)
    pipe_rate = FLAGS.pipeline_batches * t.global_batch_size / (
        time.perf_counter() - started)

    fixed = next(iter(dataset))
    repeated = tf.data.Dataset.from_tensors(fixed).repeat()
    iterator = iter(strategy.experimental_distribute_dataset(repeated))
    step = make_train_function(model, strategy, t.jit_compile)
    for _ in range(FLAGS.warmup_steps):
        float(step(iterator)["loss"])
    times = []
    for _ in range(FLAGS.timed_steps):
        started = time.perf_counter()
        float(step(iterator)["loss"])
        times.append(time.perf_counter() - started)
    median = statistics.median(times)
    record = {
        "method": t.method, "backbone": config.model.backbone,
        "width": config.model.width, "image_size": config.data.image_size,
        "views": [s.size for s in specs], "global_batch_size": t.global_batch_size,
        "replicas": strategy.num_replicas_in_sync, "jit_compile": t.jit_compile,
        "threads": os.cpu_count(), "timed_steps": FLAGS.timed_steps,
        "step_seconds_median": round(median, 4),
        "step_seconds_min": round(min(times), 4),
        "train_images_per_sec": round(t.global_batch_size / median, 1),
        "pipeline_images_per_sec": round(pipe_rate, 1),
        "peak_host_memory_mib": round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(json.dumps(record))


if __name__ == "__main__":
    run_main(main)
