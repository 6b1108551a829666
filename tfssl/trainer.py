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
import sys
import tempfile
import time

import keras
import tensorflow as tf

from tfssl import checkpoints, console, monitoring, optim, run_dir, schedules
from tfssl import config as config_lib
from tfssl.data import pipeline
from tfssl.data.sources import load_source
from tfssl.errors import UserError
from tfssl.evaluation import knn
from tfssl.methods import MomentumMethod, get_method
from tfssl.models import precision

CONFIG_FILE = "config.json"
#: Evaluation images a method draws its monitor pictures on (LEWEL's maps).
MONITOR_IMAGES = 8
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
                            "variable (see docs/GUIDE.md, \"Launching on a cluster\").")
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
            input_context=input_context, augment_on=config.data.augment_on)

    return strategy.distribute_datasets_from_function(dataset_fn)


def check_run_dir(config, resuming):
    """Refuses a ``--model_dir`` whose run this command would change; writes nothing.

    Returns the run's previous configuration (a dict) or ``None`` for a new run.
    A resume (``resuming``: the directory has checkpoints) may change only what
    :data:`tfssl.run_dir.RESUMABLE` lists.
    """
    previous = run_dir.read_config_dict(config.model_dir, CONFIG_FILE)
    if previous is None:
        return None
    old = previous.get("train", {}).get("method")
    if old != config.train.method:
        raise UserError(
            f"--model_dir={config.model_dir} holds a {old} run; --method="
            f"{config.train.method} would overwrite it. Use another --model_dir.")
    if resuming:
        method = get_method(config.train.method)
        conflicts = run_dir.resume_conflicts(
            previous, config.to_dict(),
            config_lib.flag_names(method.params_cls, method.flag_prefix))
        if conflicts:
            shown = "; ".join(conflicts[:4]) + (
                f"; and {len(conflicts) - 4} more" if len(conflicts) > 4 else "")
            raise UserError(
                f"--model_dir={config.model_dir} holds a run with other settings "
                f"({shown}); resuming would mix two runs. Re-run with the run's "
                f"settings ({CONFIG_FILE}) or use another --model_dir.")
    return previous


def check_schedule(config, steps_per_epoch):
    """Names the flags when the warm-up is longer than the run."""
    total = config.total_steps(steps_per_epoch)
    warmup = config.warmup_steps(steps_per_epoch)
    if warmup > total:
        raise UserError(
            f"--warmup_epochs={config.optim.warmup_epochs:g} ({warmup} steps) is longer "
            f"than the run (--epochs={config.train.epochs} x {steps_per_epoch} steps = "
            f"{total} steps); lower --warmup_epochs to at most {config.train.epochs}.")


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
    """SIGTERM/SIGINT: during set-up, stop at once; once armed, stop after the step.

    Until the loop has completed a step, stopping at once loses nothing (the run
    resumes from its latest checkpoint), so a signal raises immediately; after
    :meth:`arm` it only sets a flag that the loop checks after every step, and the
    loop then writes a checkpoint and stops.
    """

    def __init__(self):
        self.signal = None
        self.armed = False
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def arm(self):
        self.armed = True

    def _handle(self, signum, frame):
        self.signal = signum
        if not self.armed:
            raise UserError(f"stopped by signal {signum} before the first step; "
                            "nothing was lost. Re-run the same command to start or "
                            "resume.")

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


def run_source(config, split, evaluation=False):
    """``split`` of the run's dataset (image folders resized to the image size).

    ``evaluation``: the labelled data of the kNN monitor and ``tfssl.evaluate``:
    ``--eval_data_dir`` when given (image folders then read with class
    sub-folders), else the training data.
    """
    d = config.data
    if evaluation and d.eval_data_dir:
        return load_source(d.dataset, split, d.eval_data_dir, image_size=d.image_size)
    return load_source(d.dataset, split, d.data_dir, image_size=d.image_size,
                       folder_labels=d.folder_labels)


def _append_jsonl(path, record):
    try:
        with open(path, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
    except OSError as e:
        raise UserError(f"could not write {path}: {os.strerror(e.errno or 0)}; free "
                        "space (or fix the permissions) and re-run the same command "
                        "to resume.") from None


def _trim_metrics(path, step):
    """Drops the ``metrics.jsonl`` rows of steps after ``step`` (every row at step
    0): they belong to steps that the resumed run trains again."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    keep = []
    for line in lines:
        try:
            row_step = json.loads(line).get("step", 0)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if step > 0 and row_step <= step:
            keep.append(line)
    if len(keep) != len(lines):
        run_dir.write_text(path, "".join(keep))


_NON_FINITE_HINT = "Lower --base_learning_rate or --weight_decay, or check the inputs."


class _Progress:
    """The running epoch's loss sums, step count and seconds, kept in checkpoints
    (one JSON string variable), so that after a resume the epoch's
    ``metrics.jsonl`` row averages every step of the epoch, as without the stop."""

    def __init__(self):
        self.variable = tf.Variable("{}", dtype=tf.string, trainable=False,
                                    name="progress")

    def load(self, step, steps_per_epoch):
        """``(sums, count, seconds)`` of ``step``'s epoch so far (empty if unknown)."""
        try:
            p = json.loads(self.variable.numpy().decode())
        except (json.JSONDecodeError, UnicodeDecodeError):
            p = {}
        if p.get("step") != step or step % steps_per_epoch == 0:
            return {}, 0, 0.0
        return dict(p["sums"]), int(p["count"]), float(p["seconds"])

    def store(self, step, sums, count, seconds):
        self.variable.assign(json.dumps({"step": step, "sums": sums, "count": count,
                                         "seconds": seconds}, sort_keys=True))


def train(config, verbose=1, stop_at_step=None, strategy=None, source=None):
    """Pretrains (or resumes) the run described by ``config``.

    ``stop_at_step`` ends the run early with a checkpoint (as a SIGTERM would);
    re-running resumes exactly.  ``strategy`` overrides ``--strategy`` (library
    use: a process should hold one MirroredStrategy). ``source`` (a
    :class:`tfssl.data.sources.Source`, e.g. ``sources.from_array``) replaces the
    configured dataset for pretraining; the kNN monitor is then off.

    The chief holds the run directory's lock for the whole call
    (:class:`tfssl.run_dir.RunLock`), and every check that can refuse the command
    (flags against the run's ``config.json``, the checkpoint against the model)
    runs before anything is written, so a refused command leaves the directory as
    it was.

    Returns:
      A summary dict: final step, last epoch's mean losses, kNN results
      (``knn_init`` for the backbone at initialisation, ``knn`` at the end).
    """
    # The handlers go in first: a signal during set-up stops at once, one during
    # the loop at the end of its step (with a checkpoint).
    with _StopRequest() as stop:
        t = config.train
        strategy = strategy or make_strategy(t.strategy, t.tpu, t.cpu_devices)
        if not is_chief(strategy):
            return _train(config, 0, stop_at_step, strategy, stop, None, source)
        with run_dir.RunLock(config.model_dir) as lock:
            return _train(config, verbose, stop_at_step, strategy, stop, lock, source)


def _checkpoint_factory(model, progress):
    """``fn(saved_names) -> tf.train.Checkpoint``: the objects a checkpoint holds
    (checkpoints of tfssl before 0.2 have no ``progress``)."""
    def make(names):
        parts = {"model": model, "optimizer": model.optimizer}
        if any(n.startswith("progress/") for n in names):
            parts["progress"] = progress.variable
        return tf.train.Checkpoint(**parts)

    return make


def _restore(model, progress, checkpoint_dir, chief):
    """Restores the newest readable checkpoint (if any) and returns its step; the
    chief moves unreadable newer ones to ``checkpoints/corrupt/`` and repairs the
    state file."""
    restored, unreadable = checkpoints.restore_newest(
        _checkpoint_factory(model, progress), checkpoint_dir)
    for prefix, reason in unreadable:
        where = f"moved to {checkpoints.QUARANTINE}/; " if chief else ""
        print(f"warning: {prefix} is unreadable ({reason}); {where}resuming from "
              f"{restored}.", file=sys.stderr)
    if chief and os.path.isdir(checkpoint_dir):
        checkpoints.quarantine(checkpoint_dir, [p for p, _ in unreadable])
        for line in checkpoints.repair(checkpoint_dir):
            print(f"warning: {line}.", file=sys.stderr)
    # Checkpoints written before the model counted its steps hold only the
    # optimizer's count (equal to it without mixed_float16).
    step = max(int(model.steps_taken.numpy()), int(model.optimizer.iterations.numpy()))
    model.steps_taken.assign(step)
    return step


def _train(config, verbose, stop_at_step, strategy, stop, lock, source=None):
    t = config.train
    chief = lock is not None
    checkpoint_dir = os.path.join(config.model_dir, "checkpoints")
    if chief:
        check_run_dir(config, resuming=checkpoints.has_checkpoints(checkpoint_dir))
    given = source is not None
    source = source or run_source(config, config.data.pretrain_split)
    spe = pipeline.steps_per_epoch(source, t.global_batch_size, t.steps_per_epoch)
    if spe < 1:
        raise UserError(f"--global_batch_size={t.global_batch_size} is larger than "
                        f"the {source.num_examples} examples of --dataset="
                        f"{config.data.dataset}.")
    check_schedule(config, spe)
    model = build_model(config, strategy, spe, source.mean, source.std)
    progress = _Progress()
    step = _restore(model, progress, checkpoint_dir, chief)
    # Nothing was written before this point; from here on the run owns the directory.
    if chief:
        try:
            run_dir.write_text(os.path.join(config.model_dir, CONFIG_FILE),
                               config.to_json())
            _trim_metrics(os.path.join(config.model_dir, METRICS_FILE), step)
        except OSError as e:
            raise UserError(f"could not write to --model_dir={config.model_dir}: "
                            f"{os.strerror(e.errno or 0)}.") from None
        lock.created = []

    # Every worker saves (saving is collective under MultiWorkerMirroredStrategy);
    # non-chief workers write to a scratch directory removed at the end, and every
    # worker resumes from the chief's checkpoints.
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer,
                                     progress=progress.variable)
    scratch = None if chief else tempfile.mkdtemp(prefix="tfssl_worker_")
    manager = tf.train.CheckpointManager(
        checkpoint, checkpoint_dir if chief else scratch,
        max_to_keep=t.keep_checkpoints)
    try:
        return _train_loop(config, verbose, stop_at_step, strategy, stop, chief,
                           model, manager, progress, source, spe, step, given)
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)


def _train_loop(config, verbose, stop_at_step, strategy, stop, chief, model,
                manager, progress, source, spe, step, given_source=False):
    t = config.train
    total_steps = config.total_steps(spe)
    state = model.weights + model.optimizer.variables

    summary = {"step": step, "knn_init": None, "knn": None}
    knn_sources = None
    bank_source = None
    if chief and given_source:
        if verbose:
            print("kNN monitor off: the run trains on images given in Python; evaluate "
                  "its backbone with tfssl.api.embed and your labels.")
    elif chief:
        bank_source = run_source(config, "train", evaluation=True)
    if bank_source is not None and bank_source.num_classes:
        knn_sources = (bank_source, run_source(config, config.data.eval_split,
                                               evaluation=True))
    elif bank_source is not None and verbose:
        where = config.data.eval_data_dir or config.data.data_dir or config.data.dataset
        print(f"kNN monitor off: the train split of {where} has no labels; pass "
              "--eval_data_dir=DIR (labelled images, one sub-folder per class) to "
              "monitor the run.")

    metrics_path = os.path.join(config.model_dir, METRICS_FILE)
    if chief:
        writer = tf.summary.create_file_writer(os.path.join(config.model_dir, "tb"))
    else:
        writer = tf.summary.create_noop_writer()
    if step == 0 and chief:
        first = pipeline.pretrain_dataset(
            source, model.input_view_specs(), t.global_batch_size, seed=t.seed,
            examples_per_call=config.data.examples_per_call).take(1)
        batch = next(iter(first))
        monitoring.write_view_grid(writer, batch, model.input_view_specs())
        monitoring.write_images(writer, model.first_batch_images(batch))
    rank = _rankme_function(config, model, knn_sources[1] if knn_sources else source,
                            chief)
    monitor_batch = None
    if chief and type(model).monitor_images is not MomentumMethod.monitor_images:
        eval_source = knn_sources[1] if knn_sources else source
        monitor_batch = next(iter(pipeline.eval_dataset(
            eval_source, config.data.image_size, MONITOR_IMAGES,
            limit=MONITOR_IMAGES)))[0]
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

    iterator = iter(distributed_pretrain_dataset(strategy, source, model.input_view_specs(),
                                                 config, step))
    train_function = make_train_function(model, strategy, t.jit_compile)

    def stop_here(sums, count, seconds):
        """A checkpoint of the running epoch, then the summary to return."""
        progress.store(step, sums, count, seconds)
        checkpoints.save(manager, step, state, _NON_FINITE_HINT)
        writer.flush()
        summary["step"] = step
        return summary, model

    while step < total_steps:
        epoch = step // spe
        bar = console.progress(spe, epoch + 1, t.log_every_steps, verbose,
                               stateful=["learning_rate", "momentum"])
        sums, count, before = progress.load(step, spe)
        started = time.perf_counter()
        for _ in range(step % spe, spe):
            logs = _one_step(train_function, iterator, stop, manager, step)
            step += 1
            count += 1
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + v
            _log_step(config, writer, model, step, logs, chief, rank)
            bar.update(step - epoch * spe, list(logs.items()))
            if step % spe == 0:
                break  # the epoch-end checkpoint below
            seconds = before + time.perf_counter() - started
            if step % t.checkpoint_every_steps == 0:
                progress.store(step, sums, count, seconds)
                checkpoints.save(manager, step, state, _NON_FINITE_HINT)
            if stop_at_step is not None and step >= stop_at_step:
                return stop_here(sums, count, seconds)
            if stop.signal is not None:
                stop_here(sums, count, seconds)
                raise UserError(f"stopped by signal {stop.signal} at step {step}; "
                                "checkpoint written. Re-run the same command to "
                                "resume.")
        record = {"epoch": epoch + 1, "step": step,
                  **{k: v / max(count, 1) for k, v in sums.items()},
                  "images_per_sec": count * t.global_batch_size / max(
                      before + time.perf_counter() - started, 1e-9)}
        if rank is not None:
            record["rankme"] = float(rank())
        if chief:
            due = (t.knn_every_epochs and (epoch + 1) % t.knn_every_epochs == 0)
            if knn_sources and (due or step >= total_steps):
                result = knn_eval(model.backbone, config, *knn_sources)
                summary["knn"] = result
                record.update({f"knn_{k}": v for k, v in result.items()})
                if verbose:
                    print(f"epoch {epoch + 1}: kNN top-1 {result['top1']:.2f}%")
            if monitor_batch is not None:
                monitoring.write_images(writer, model.monitor_images(monitor_batch),
                                        step=step)
            with writer.as_default(step=step):
                tf.summary.scalar("train/images_per_sec", record["images_per_sec"])
                if "knn_top1" in record:
                    tf.summary.scalar("knn/top1", record["knn_top1"])
        # Checkpoint before the row: after a crash between the two, the resumed
        # run keeps the row's step only if its checkpoint exists (_trim_metrics).
        progress.store(step, {}, 0, 0.0)
        checkpoints.save(manager, step, state, _NON_FINITE_HINT)
        if chief:
            _append_jsonl(metrics_path, record)
            summary["last_epoch"] = record
        if step < total_steps and stop_at_step is not None and step >= stop_at_step:
            writer.flush()
            summary["step"] = step
            return summary, model
        if step < total_steps and stop.signal is not None:
            raise UserError(f"stopped by signal {stop.signal} at step {step}; "
                            "checkpoint written. Re-run the same command to resume.")
    if knn_sources and t.projector_examples:
        features, labels = knn.extract_features(model.backbone, pipeline.eval_dataset(
            knn_sources[1], config.data.image_size, 512, limit=t.projector_examples))
        monitoring.export_projector(os.path.join(config.model_dir, "tb"), features,
                                    labels)
    writer.flush()
    summary["step"] = step
    return summary, model


def _one_step(train_function, iterator, stop, manager, step):
    """Runs one step; raises :class:`UserError` when a logged value is non-finite."""
    logs = {k: float(v) for k, v in train_function(iterator).items()}
    stop.arm()
    bad = sorted(k for k, v in logs.items() if not math.isfinite(v))
    if bad:
        raise UserError(
            f"the loss became non-finite at step {step + 1} ("
            + ", ".join(f"{k}={logs[k]}" for k in bad) + "); nothing was saved "
            f"after it: the latest checkpoint ({manager.latest_checkpoint}) holds the "
            f"last finite state. {_NON_FINITE_HINT}")
    return logs


def _log_step(config, writer, model, step, logs, chief, rank=None):
    if step % config.train.log_every_steps == 0 and chief:
        with writer.as_default(step=step):
            for k, v in logs.items():
                tf.summary.scalar(f"train/{k}", v)
            if rank is not None:
                tf.summary.scalar("monitor/rankme", rank())
        monitoring.write_method_summaries(writer, step, model.summaries())


def _rankme_function(config, model, source, chief):
    """``fn() -> RankMe`` of the pooled features of the first ``--rankme_examples``
    images of ``source`` (a fixed batch), or None (off, or not the chief)."""
    n = config.train.rankme_examples
    if not chief or not n:
        return None
    images = next(iter(pipeline.eval_dataset(source, config.data.image_size, n,
                                             limit=n)))[0]

    @tf.function
    def rank():
        return monitoring.rankme(model.backbone(images, training=False)["pooled"])

    return rank


def load_trained_model(config, strategy=None):
    """Rebuilds the run's model and restores its newest readable checkpoint.

    Reads only: an unreadable newer checkpoint is skipped with a warning (the next
    ``tfssl.train`` of the run moves it aside). The model's ``restored_from``
    attribute names the checkpoint used.
    """
    source = run_source(config, config.data.pretrain_split)
    spe = pipeline.steps_per_epoch(source, config.train.global_batch_size,
                                   config.train.steps_per_epoch)
    model = build_model(config, strategy or tf.distribute.get_strategy(),
                        max(spe, 1), source.mean, source.std)
    ckpt_dir = os.path.join(config.model_dir, "checkpoints")
    progress = _Progress()
    restored, unreadable = checkpoints.restore_newest(
        _checkpoint_factory(model, progress), ckpt_dir,
        what=f"the run in {config.model_dir}")
    for prefix, reason in unreadable:
        print(f"warning: {prefix} is unreadable ({reason}); using {restored}.",
              file=sys.stderr)
    if restored is None:
        raise UserError(f"no checkpoint in {ckpt_dir}; train first with "
                        f"python -m tfssl.train --model_dir={config.model_dir}.")
    model.restored_from = restored
    return model


def load_config(model_dir):
    """The :class:`RunConfig` written by ``train`` into ``model_dir``."""
    from tfssl.config import RunConfig

    path = os.path.join(model_dir, CONFIG_FILE)
    if not os.path.exists(path):
        raise UserError(f"{path} not found: --model_dir must be a run directory "
                        "written by python -m tfssl.train.")
    d = run_dir.read_config_dict(model_dir, CONFIG_FILE)
    method = get_method(d["train"]["method"])
    d["model_dir"] = model_dir
    return RunConfig.from_dict(d, method.params_cls)
