"""The pretraining loop: strategy, checkpoints, logs, kNN monitor.

The per-step work is the model's ``train_step`` (``methods/base.py``); this module
only drives it: one ``tf.function`` runs ``strategy.run(model.train_step)`` on the
next distributed batch, and the host loop around it owns progress, TensorBoard,
``metrics.jsonl``, checkpoints (every ``--checkpoint_every_steps`` and at each
epoch end), the kNN monitor, NaN detection and SIGTERM/SIGINT handling.
"""

import json
import math
import os
import shutil
import signal
import tempfile
import time

import keras
import tensorflow as tf

from tfssl import monitoring, optim, schedules
from tfssl.data import pipeline
from tfssl.data.sources import load_source
from tfssl.errors import UserError
from tfssl.evaluation import knn
from tfssl.methods import get_method
from tfssl.models import precision

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"


def split_cpu(count):
    """Splits the first CPU into ``count`` logical devices (before TF starts)."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu) or [None]
    if len(current) == count:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError:
        raise UserError(f"--cpu_devices={count}: TensorFlow was already initialised "
                        f"with {len(current)} CPU device(s).") from None


def make_strategy(name, tpu="", cpu_devices=0):
    """``default`` | ``mirrored`` | ``multi_worker`` (from TF_CONFIG) | ``tpu``."""
    if cpu_devices > 1:
        split_cpu(cpu_devices)
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if cpu_devices > 1 and not tf.config.list_physical_devices("GPU"):
            return tf.distribute.MirroredStrategy(
                [f"CPU:{i}" for i in range(cpu_devices)])
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise UserError("--strategy=multi_worker needs the TF_CONFIG environment "
                            "variable (see README: Scaling).")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise UserError(f"--strategy={name} is not one of default, mirrored, "
                    "multi_worker, tpu.")


def is_chief(strategy):
    """Whether this process writes the run (checkpoints, logs, kNN): always, except
    on the non-chief workers of a multi-worker run."""
    return bool(getattr(strategy.extended, "should_checkpoint", True))


def distributed_pretrain_dataset(strategy, source, specs, config, start_step):
    """The pretraining stream, split per worker and replica (``pipeline``)."""
    t = config.train

    def dataset_fn(input_context):
        return pipeline.pretrain_dataset(
            source, specs, t.global_batch_size, seed=t.seed, start_step=start_step,
            num_parallel_calls=config.data.num_parallel_calls,
            examples_per_call=config.data.examples_per_call,
            input_context=input_context)

    return strategy.distribute_datasets_from_function(dataset_fn)


def check_run_dir(config):
    """Writes ``config.json``; refuses a directory holding another method's run."""
    os.makedirs(config.model_dir, exist_ok=True)
    path = os.path.join(config.model_dir, CONFIG_FILE)
    if os.path.exists(path):
        with open(path) as f:
            try:
                previous = json.load(f)
            except json.JSONDecodeError:
                raise UserError(f"{path} is not valid JSON; remove it or use another "
                                "--model_dir.") from None
        old = previous.get("train", {}).get("method")
        if old != config.train.method:
            raise UserError(
                f"--model_dir={config.model_dir} holds a {old} run; --method="
                f"{config.train.method} would overwrite it. Use another --model_dir.")
        old = previous.get("train", {}).get("mixed_precision", "none")
        new = config.train.mixed_precision
        if (old == "mixed_float16") != (new == "mixed_float16") and os.path.isdir(
                os.path.join(config.model_dir, "checkpoints")):
            raise UserError(
                f"--model_dir={config.model_dir} was trained with --mixed_precision="
                f"{old}; resuming with --mixed_precision={new} cannot restore the "
                "optimizer (mixed_float16 adds the loss-scale state). Resume with "
                f"--mixed_precision={old} or use another --model_dir.")
    with open(path, "w") as f:
        f.write(config.to_json())


def build_model(config, strategy, steps_per_epoch, mean, std):
    """The method model, compiled with its optimizer built on online variables.

    Layers are built under the ``--mixed_precision`` dtype policy (the previous
    global policy is restored afterwards); ``mixed_float16`` wraps the optimizer
    in a dynamic ``LossScaleOptimizer``.
    """

    method_cls = get_method(config.train.method)
    mixed = config.train.mixed_precision
    with strategy.scope(), precision.dtype_policy(mixed):
        model = method_cls(config, steps_per_epoch, mean=mean, std=std)
        total = config.total_steps(steps_per_epoch)
        lr = schedules.WarmupCosine(config.learning_rate(), total,
                                    config.warmup_steps(steps_per_epoch))
        o = config.optim
        optimizer = optim.build_optimizer(
            o.optimizer, lr, weight_decay=o.weight_decay, momentum=o.sgd_momentum,
            lars_eta=o.lars_eta)
        optimizer = precision.loss_scaled(optimizer, mixed)
        model.compile(optimizer=optimizer, jit_compile=False)
        model.build_optimizer_state()
    return model


def make_train_function(model, strategy, jit_compile=False):
    """``fn(iterator) -> logs``: one distributed step, logs averaged over replicas.

    The iterator is read outside the (optionally XLA-compiled) replica step:
    ``IteratorGetNext`` has no XLA kernel.
    """
    replica_step = tf.function(model.train_step, jit_compile=jit_compile or None)

    @tf.function
    def train_function(iterator):
        logs = strategy.run(replica_step, args=(next(iterator),))
        return {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None)
                for k, v in logs.items()}

    return train_function


class _StopRequest:
    """Turns SIGTERM/SIGINT into a flag the loop checks after every step."""

    def __init__(self):
        self.signal = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        self.signal = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def knn_eval(backbone, config, train_source, test_source):
    """Weighted kNN top-1/top-5 of ``backbone`` (train split as bank)."""
    size, t = config.data.image_size, config.train
    bank = pipeline.eval_dataset(train_source, size, 512, limit=t.knn_train_examples)
    queries = pipeline.eval_dataset(test_source, size, 512, limit=t.knn_eval_examples)
    bank_x, bank_y = knn.extract_features(backbone, bank)
    query_x, query_y = knn.extract_features(backbone, queries)
    return knn.knn_accuracy(query_x, query_y, bank_x, bank_y,
                            train_source.num_classes, k=t.knn_k,
                            temperature=t.knn_temperature)


def run_source(config, split):
    """``split`` of the run's dataset (image folders resized to the image size)."""
    return load_source(config.data.dataset, split, config.data.data_dir,
                       image_size=config.data.image_size)


def _append_jsonl(path, record):
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


def train(config, verbose=1, stop_at_step=None, strategy=None):
    """Pretrains (or resumes) the run described by ``config``.

    ``stop_at_step`` ends the run early with a checkpoint (as a SIGTERM would);
    re-running resumes exactly.  ``strategy`` overrides ``--strategy`` (library
    use: a process should hold one MirroredStrategy).

    Returns:
      A summary dict: final step, last epoch's mean losses, kNN results
      (``knn_init`` for the backbone at initialisation, ``knn`` at the end).
    """
    # The handlers go in first: a signal at any point after this is honoured at
    # the end of the next step (or of the first one).
    with _StopRequest() as stop:
        return _train(config, verbose, stop_at_step, strategy, stop)


def _train(config, verbose, stop_at_step, strategy, stop):
    t = config.train
    strategy = strategy or make_strategy(t.strategy, t.tpu, t.cpu_devices)
    chief = is_chief(strategy)
    if chief:
        check_run_dir(config)
    else:
        verbose = 0
    source = run_source(config, config.data.pretrain_split)
    spe = pipeline.steps_per_epoch(source, t.global_batch_size, t.steps_per_epoch)
    if spe < 1:
        raise UserError(f"--global_batch_size={t.global_batch_size} is larger than "
                        f"the {source.num_examples} examples of --dataset="
                        f"{config.data.dataset}.")
    model = build_model(config, strategy, spe, source.mean, source.std)

    # Every worker saves (saving is collective under MultiWorkerMirroredStrategy);
    # non-chief workers write to a scratch directory removed at the end, and every
    # worker resumes from the chief's checkpoints.
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    checkpoint_dir = os.path.join(config.model_dir, "checkpoints")
    scratch = None if chief else tempfile.mkdtemp(prefix="tfssl_worker_")
    manager = tf.train.CheckpointManager(
        checkpoint, checkpoint_dir if chief else scratch,
        max_to_keep=t.keep_checkpoints)
    latest = tf.train.latest_checkpoint(checkpoint_dir)
    if latest:
        checkpoint.restore(latest).assert_existing_objects_matched()
    # Checkpoints written before the model counted its steps hold only the
    # optimizer's count (equal to it without mixed_float16).
    step = max(int(model.steps_taken.numpy()), int(model.optimizer.iterations.numpy()))
    model.steps_taken.assign(step)
    try:
        return _train_loop(config, verbose, stop_at_step, strategy, stop, chief,
                           model, manager, source, spe, step)
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)


def _train_loop(config, verbose, stop_at_step, strategy, stop, chief, model,
                manager, source, spe, step):
    t = config.train
    total_steps = config.total_steps(spe)

    summary = {"step": step, "knn_init": None, "knn": None}
    knn_sources = None
    bank_source = run_source(config, "train") if chief else None
    if bank_source is not None and bank_source.num_classes:
        knn_sources = (bank_source, run_source(config, config.data.eval_split))

    metrics_path = os.path.join(config.model_dir, METRICS_FILE)
    if chief:
        writer = tf.summary.create_file_writer(os.path.join(config.model_dir, "tb"))
    else:
        writer = tf.summary.create_noop_writer()
    if step == 0 and chief:
        first = pipeline.pretrain_dataset(
            source, model.view_specs(), t.global_batch_size, seed=t.seed,
            examples_per_call=config.data.examples_per_call).take(1)
        monitoring.write_view_grid(writer, next(iter(first)), model.view_specs())
    if step == 0 and knn_sources:
        summary["knn_init"] = knn_eval(model.backbone, config, *knn_sources)
        _append_jsonl(metrics_path, {"epoch": 0, "step": 0,
                                     **{f"knn_{k}": v for k, v in
                                        summary["knn_init"].items()}})
        with writer.as_default(step=0):
            tf.summary.scalar("knn/top1", summary["knn_init"]["top1"])
    if verbose:
        print(f"learning rate: base {config.optim.base_learning_rate} x "
              f"{t.global_batch_size}/256 = {config.learning_rate():.5g} (peak); "
              f"{spe} steps/epoch, {total_steps} steps in all.")

    iterator = iter(distributed_pretrain_dataset(strategy, source, model.view_specs(),
                                                 config, step))
    train_function = make_train_function(model, strategy, t.jit_compile)

    while step < total_steps:
        epoch = step // spe
        bar = keras.utils.Progbar(spe, verbose=verbose,
                                  stateful_metrics=["learning_rate", "momentum"])
        sums, count, started = {}, 0, time.perf_counter()
        for _ in range(step % spe, spe):
            logs = {k: float(v) for k, v in train_function(iterator).items()}
            step += 1
            if not all(math.isfinite(v) for v in logs.values()):
                raise UserError(
                    f"the loss became non-finite at step {step} ({logs}); the "
                    f"last checkpoint ({manager.latest_checkpoint}) holds finite "
                    "weights. Lower --base_learning_rate or check the inputs.")
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
            if step % t.log_every_steps == 0 and chief:
                with writer.as_default(step=step):
                    for k, v in logs.items():
                        tf.summary.scalar(f"train/{k}", v)
                monitoring.write_method_summaries(writer, step, model.summaries())
            if step % t.checkpoint_every_steps == 0:
                manager.save(checkpoint_number=step)
            bar.update(step - epoch * spe, list(logs.items()))
            if stop_at_step is not None and step >= stop_at_step:
                manager.save(checkpoint_number=step)
                writer.flush()
                summary["step"] = step
                return summary, model
            if stop.signal is not None:
                manager.save(checkpoint_number=step)
                raise UserError(f"stopped by signal {stop.signal} at step {step}; "
                                "checkpoint written. Re-run the same command to "
                                "resume.")
        elapsed = time.perf_counter() - started
        record = {"epoch": epoch + 1, "step": step,
                  **{k: v / max(count, 1) for k, v in sums.items()},
                  "images_per_sec": count * t.global_batch_size / elapsed}
        if not chief:
            manager.save(checkpoint_number=step)
            continue
        due = (t.knn_every_epochs and (epoch + 1) % t.knn_every_epochs == 0)
        if knn_sources and (due or step >= total_steps):
            result = knn_eval(model.backbone, config, *knn_sources)
            summary["knn"] = result
            record.update({f"knn_{k}": v for k, v in result.items()})
            if verbose:
                print(f"epoch {epoch + 1}: kNN top-1 {result['top1']:.2f}%")
        with writer.as_default(step=step):
            tf.summary.scalar("train/images_per_sec", record["images_per_sec"])
            if "knn_top1" in record:
                tf.summary.scalar("knn/top1", record["knn_top1"])
        _append_jsonl(metrics_path, record)
        manager.save(checkpoint_number=step)
        summary["last_epoch"] = record
    if knn_sources and t.projector_examples:
        features, labels = knn.extract_features(model.backbone, pipeline.eval_dataset(
            knn_sources[1], config.data.image_size, 512, limit=t.projector_examples))
        monitoring.export_projector(os.path.join(config.model_dir, "tb"), features,
                                    labels)
    writer.flush()
    summary["step"] = step
    return summary, model


def load_trained_model(config, strategy=None):
    """Rebuilds the run's model and restores its latest checkpoint."""
    source = run_source(config, config.data.pretrain_split)
    spe = pipeline.steps_per_epoch(source, config.train.global_batch_size,
                                   config.train.steps_per_epoch)
    model = build_model(config, strategy or tf.distribute.get_strategy(),
                        max(spe, 1), source.mean, source.std)
    ckpt_dir = os.path.join(config.model_dir, "checkpoints")
    latest = tf.train.latest_checkpoint(ckpt_dir)
    if latest is None:
        raise UserError(f"no checkpoint in {ckpt_dir}; train first with "
                        f"python -m tfssl.train --model_dir={config.model_dir}.")
    tf.train.Checkpoint(model=model, optimizer=model.optimizer).restore(
        latest).expect_partial()
    return model



def load_config(model_dir):
    """The :class:`RunConfig` written by ``train`` into ``model_dir``."""
    from tfssl.config import RunConfig

    path = os.path.join(model_dir, CONFIG_FILE)
    if not os.path.exists(path):
        raise UserError(f"{path} not found: --model_dir must be a run directory "
                        "written by python -m tfssl.train.")
    with open(path) as f:
        try:
            d = json.load(f)
        except json.JSONDecodeError:
            raise UserError(f"{path} is not valid JSON.") from None
    method = get_method(d["train"]["method"])
    d["model_dir"] = model_dir
    return RunConfig.from_dict(d, method.params_cls)
