"""Wall-clock cost of one SMoG reset (k-means re-grouping + momentum reset), as JSON.

    python tools/smog_reset_cost.py --flagfile=configs/cifar10/smog.flags \
        [--repeats=5 --smog_n_groups=... --smog_cache_size=... --backbone=...]

Every training flag applies (nothing is written; no data is read: the cache holds
its seeded random unit rows, and the k-means cost does not depend on the content
since the Lloyd iteration count is fixed). Builds the SMoG model and times, each as
the median of ``--repeats`` runs after one untimed (tracing) run:

* ``reset_ms``: ``after_step`` at a reset step minus ``after_step`` at an ordinary
  step, i.e. what a reset adds to its training step;
* ``kmeans_ms``: k-means++ seeding + Lloyd on the full cache alone;
* ``target_copy_ms``: the hard copy online -> momentum networks alone.
"""

import os
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
flags.DEFINE_integer("repeats", 5, "Timed runs of each measurement (median).")


def _median_ms(fn, repeats):
    fn()  # trace
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def main(argv):
    import json

    import tensorflow as tf

    from tfssl.errors import UserError
    from tfssl.methods import groups as groups_lib
    from tfssl.trainer import build_model, make_strategy

    if not FLAGS.model_dir:
        FLAGS.model_dir = tempfile.mkdtemp(prefix="tfssl_smog_reset_")
    config = tfssl_flags.run_config_from_flags(FLAGS)
    if config.train.method != "smog":
        raise UserError(f"--method={config.train.method}: this tool times SMoG's reset.")
    p, t = config.method_params, config.train
    if not p.reset_interval:
        raise UserError("--smog_reset_interval=0: there is no reset to time.")
    strategy = make_strategy(t.strategy, t.tpu, t.cpu_devices)
    model = build_model(config, strategy, 1000, (0.5,) * 3, (0.5,) * 3)

    def sync():  # forces the work to finish (accelerators run asynchronously)
        model.momentum_pairs[-1].target.weights[-1].numpy()
        return int(model.groups.resets.numpy())

    @tf.function
    def after_step(step):
        strategy.run(model.after_step, args=(step,))

    @tf.function
    def kmeans():
        return groups_lib.kmeans(model.cache.read(), p.n_groups, p.kmeans_iters,
                                 tf.constant([0, 0], tf.int64))[0]

    @tf.function
    def copy_targets():
        for pair in model.momentum_pairs:
            pair.reset()

    due = tf.constant(p.reset_interval - 1, tf.int64)
    ordinary = tf.constant(p.reset_interval, tf.int64)
    with_reset = _median_ms(lambda: (after_step(due), sync()), FLAGS.repeats)
    without = _median_ms(lambda: (after_step(ordinary), sync()), FLAGS.repeats)
    record = {
        "device": (tf.config.list_logical_devices("GPU") or
                   tf.config.list_logical_devices("CPU"))[0].name,
        "threads": os.cpu_count(), "replicas": strategy.num_replicas_in_sync,
        "backbone": config.model.backbone, "n_groups": p.n_groups,
        "cache_rows": model.cache.size, "dim": config.model.proj_dim,
        "kmeans_iters": p.kmeans_iters, "reset_target": p.reset_target,
        "repeats": FLAGS.repeats,
        "reset_ms": round(with_reset - without, 2),
        "after_step_with_reset_ms": round(with_reset, 2),
        "after_step_without_reset_ms": round(without, 2),
        "kmeans_ms": round(_median_ms(lambda: kmeans().numpy(), FLAGS.repeats), 2),
        "target_copy_ms": round(_median_ms(lambda: (copy_targets(), sync()),
                                           FLAGS.repeats), 2),
    }
    print(json.dumps(record))


if __name__ == "__main__":
    run_main(main)
