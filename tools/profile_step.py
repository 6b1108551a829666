"""Where a training step's time goes: op time per network part and per op type.

    python tools/profile_step.py --flagfile=configs/cifar10/byol.flags \
        --synthetic_data --global_batch_size=64 --image_size=32 --threads=2 \
        [--timed_steps=3 --warmup_steps=3] [--top=12] [--profile_dir=DIR]

Builds the step exactly as ``tools/benchmark.py`` does, with its flags (every
training flag applies; put ``--flagfile`` first, later flags override it;
``--pipeline_batches`` and ``--bare_backbone`` do not apply here), runs
``--warmup_steps``, times ``--timed_steps`` (median wall seconds, as the benchmark),
then traces as many more with ``tf.profiler`` and sums the executed ops' durations
from the trace, per step:

* **by part**: forward or gradient, times the Keras model the op belongs to
  (``backbone``, ``target_backbone``, ``projector``, ``predictor``, ...; a model
  called twice in the step, e.g. BYOL's two views, counts once), the optimizer
  (``momentum_sgd``, ``adamw``), the name scopes a method lists in
  ``profile_scopes`` (the multi-network method's ``patches``: its stop-gradient
  branch, backbone and projector included) and ``step`` for the rest of the step function
  (loss, EMA update, queue and group updates);
* **by op type** (``Conv2D``, ``Conv2DBackpropFilter``, ``Mean``, ...; oneDNN's
  ``_MklNative`` prefixes dropped).

Op times are summed over TensorFlow's inter-op threads: with ``--threads=2`` two
ops run at once, so the sum can reach twice the wall time. Under
``--jit_compile`` XLA fuses the step into clusters the trace cannot attribute to
parts, so the tool refuses it. Prints a table and one JSON line
(``"profile": method``).
"""

import collections
import glob
import json
import os
import re
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchmark  # noqa: E402  (defines the training and benchmark flags)
from absl import flags  # noqa: E402

from tfssl.cli import run_main  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("top", 12, "Op types listed in the table.")
flags.DEFINE_string("profile_dir", "", "Where the trace goes (default: a temporary "
                    "directory); open it with TensorBoard's profile plugin.")

_CALL_INDEX = re.compile(r"_\d+$")
_ONEDNN_PREFIX = re.compile(r"^_Mkl(Native)?")


def classify(event_name, parts):
    """``(part, op_type)`` of a trace event named ``scope/.../op:OpType``, or None.

    ``part`` is ``"forward <model>"`` / ``"gradient <model>"`` where the op's
    outermost scope, less its call index (``backbone_3`` -> ``backbone``), is one
    of ``parts`` (the method's sub-models and optimizer); ops in other scopes
    (loss, EMA, queue: ``l2_normalize``, ``mul``, ...) are ``"forward step"`` /
    ``"gradient step"``; ops outside the step function (iterator, cross-replica
    reduce) are ``"outside step"``.
    """
    if "::" in event_name or ":" not in event_name:
        return None  # executor bookkeeping, not an op
    name, op_type = event_name.rsplit(":", 1)
    op_type = _ONEDNN_PREFIX.sub("", op_type)
    scopes = name.split("/")
    if scopes[0] != "StatefulPartitionedCall":
        return "outside step", op_type
    while scopes and scopes[0] == "StatefulPartitionedCall":
        scopes = scopes[1:]
    direction = "forward"
    if scopes and scopes[0] == "gradient_tape":
        direction, scopes = "gradient", scopes[1:]
    part = _CALL_INDEX.sub("", scopes[0]) if len(scopes) > 1 else "step"
    return f"{direction} {part if part in parts else 'step'}", op_type


def op_times(trace_dir, steps, parts):
    """``(by_part, by_op)``: milliseconds per step summed from the XPlane trace."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"),
                             recursive=True))
    if not files:
        raise RuntimeError(f"no *.xplane.pb trace under {trace_dir}")
    space = xplane_pb2.XSpace()
    with open(files[-1], "rb") as f:
        space.ParseFromString(f.read())
    by_part, by_op = collections.Counter(), collections.Counter()
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        for line in plane.lines:
            if not line.name.startswith("tf_"):  # TensorFlow's executor threads
                continue
            for event in line.events:
                kind = classify(plane.event_metadata[event.metadata_id].name, parts)
                if kind is None:
                    continue
                ms = event.duration_ps / 1e9 / steps
                by_part[kind[0]] += ms
                by_op[kind[1]] += ms
    return by_part, by_op


def main(argv):
    benchmark.set_threads(FLAGS.threads)  # before TensorFlow runs any op

    import tensorflow as tf

    from tfssl.errors import UserError
    from tfssl.trainer import build_model, make_strategy

    if FLAGS.timed_steps < 1 or FLAGS.warmup_steps < 0 or FLAGS.top < 1:
        raise UserError("--timed_steps and --top must be >= 1, --warmup_steps >= 0.")
    if not FLAGS.model_dir:
        FLAGS.model_dir = tempfile.mkdtemp(prefix="tfssl_profile_")
    config = benchmark.tfssl_flags.run_config_from_flags(FLAGS)
    t = config.train
    if t.jit_compile:
        raise UserError("profile_step.py traces the op-by-op graph; XLA fuses the step "
                        "into clusters it cannot attribute. Drop --jit_compile.")
    strategy = make_strategy(t.strategy, t.tpu, t.cpu_devices)
    source = benchmark.benchmark_source(config)
    model = build_model(config, strategy, 1000, source.mean, source.std)
    fn = benchmark.fixed_batch_step(model, strategy, config, source)
    wall = statistics.median(benchmark.time_calls(fn, FLAGS.warmup_steps,
                                                  FLAGS.timed_steps))
    trace_dir = FLAGS.profile_dir or tempfile.mkdtemp(prefix="tfssl_trace_")
    tf.profiler.experimental.start(trace_dir)
    try:
        for _ in range(FLAGS.timed_steps):
            fn()
    finally:
        tf.profiler.experimental.stop()
    parts = ({layer.name for layer in model.layers} | {model.optimizer.name}
             | set(getattr(model, "profile_scopes", ())))
    by_part, by_op = op_times(trace_dir, FLAGS.timed_steps, parts)
    total = sum(by_part.values())
    if total <= 0:
        raise RuntimeError(f"the trace under {trace_dir} holds no TensorFlow op events")

    print(f"{t.method}: {wall:.3f} s per step (median of {FLAGS.timed_steps}), "
          f"op time {total / 1000:.3f} s per step summed over threads")
    print(f"{'ms/step':>9}  {'share':>6}  part")
    for part, ms in by_part.most_common():
        print(f"{ms:9.1f}  {ms / total:6.1%}  {part}")
    print(f"{'ms/step':>9}  {'share':>6}  op type")
    for op, ms in by_op.most_common(FLAGS.top):
        print(f"{ms:9.1f}  {ms / total:6.1%}  {op}")
    record = {
        "profile": t.method, "backbone": config.model.backbone,
        "image_size": config.data.image_size,
        "global_batch_size": t.global_batch_size, "threads": FLAGS.threads,
        "onednn": benchmark.onednn_enabled(), "step_seconds_median": round(wall, 4),
        "op_ms_per_step": round(total, 3),
        "by_part_ms": {k: round(v, 3) for k, v in by_part.most_common()},
        "by_op_ms": {k: round(v, 3) for k, v in by_op.most_common(FLAGS.top)},
        "trace_dir": trace_dir,
    }
    print(json.dumps(record))


if __name__ == "__main__":
    run_main(main)
