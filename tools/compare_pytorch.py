"""tfssl vs PyTorch + lightly: training-step and input-pipeline throughput.

    python tools/compare_pytorch.py [--methods=moco_v2,byol,smog] [--batch=64]
        [--image_size=32] [--threads=2] [--steps=10] [--warmup=3] [--rounds=2]
        [--venv=.venv-compare] [--skip_pipeline] [--skip_backbone]
        [--pipeline_batches=100] [--jit_compile] [--mixed_precision=mixed_bfloat16]

Run it with the project's Python (``.venv/bin/python``; it imports nothing heavy
itself). It creates the compare venv if missing (``python -m venv`` + ``pip install
-r tools/compare_requirements.txt``: torch, torchvision and lightly at exact
versions, about 5.5 GB) and then, for each round and each method, alternates

* ours: ``tools/benchmark.py --flagfile=configs/cifar10/<method>.flags
  --synthetic_data --global_batch_size=B --image_size=S --threads=T
  --num_parallel_calls=T [--jit_compile]`` in the project venv (oneDNN kernels
  unless ``TF_ENABLE_ONEDNN_OPTS=0`` is set): the whole step on
  a fixed in-memory batch, median of ``--steps`` after ``--warmup``; and the
  method's ``tf.data`` views over the same synthetic images with ``T`` parallel
  map calls;
* theirs: ``tools/_lightly_step.py`` in the compare venv, given ours' JSON record so
  that every size and hyper-parameter (projector widths, queue, temperature,
  momentum, optimizer, groups, ...) and the view recipe are ours (its docstring
  says what each side computes per step and what differs): the lightly step timed
  the same way, then torchvision transforms of the same recipe through a
  ``DataLoader(num_workers=T)``.

Then, as a reference row, the bare backbone (ResNet of the flagfiles, CIFAR stem)
forward + backward: ours plain, theirs, ours with XLA.
``--mixed_precision=mixed_bfloat16`` runs both sides in bfloat16 compute: ours with
``--mixed_precision=mixed_bfloat16`` (float32 variables, losses, softmax, queues),
theirs under ``torch.autocast("cpu", dtype=torch.bfloat16)`` around the forward
passes and the loss (backward and optimizer outside it, float32 parameters).
Every child is a separate
process with ``OMP_NUM_THREADS=T`` (TensorFlow: intra- and inter-op pools ``T``;
torch: ``set_num_threads(T)``, ``set_num_interop_threads(T)``). The medians over
rounds are printed as a table (ratio = ours / theirs: above 1, ours is faster) and
as one JSON line per method (``"compare": method``; the backbone row's is
``"backbone"``). Timings on a shared machine are noisy: use several rounds and
nothing else running.
"""

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "tools")
BENCHMARK = os.path.join(TOOLS, "benchmark.py")
LIGHTLY_STEP = os.path.join(TOOLS, "_lightly_step.py")
REQUIREMENTS = os.path.join(TOOLS, "compare_requirements.txt")
METHODS = ("moco_v2", "byol", "smog")
#: ours' --mixed_precision -> theirs' --autocast
MIXED_PRECISION = {"none": "none", "mixed_bfloat16": "bfloat16"}
STAMP = ".compare-requirements.sha256"


def _bool_flag(parser, name, default, help_text):
    """``--name`` / ``--no-name`` / absl's ``--noname``."""
    parser.add_argument(f"--{name}", action=argparse.BooleanOptionalAction,
                        default=default, help=help_text)
    parser.add_argument(f"--no{name}", dest=name, action="store_false",
                        help=argparse.SUPPRESS)


def _methods(text):
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown method(s) {', '.join(unknown)}; known: {', '.join(METHODS)}")
    return names


def _positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="tfssl vs PyTorch + lightly throughput (see the module docstring).")
    p.add_argument("--methods", type=_methods, default=list(METHODS),
                   help="Comma-separated: " + ",".join(METHODS))
    p.add_argument("--batch", type=_positive, default=64)
    p.add_argument("--image_size", type=_positive, default=32)
    p.add_argument("--threads", type=_positive, default=2)
    p.add_argument("--steps", type=_positive, default=10, help="Timed steps.")
    p.add_argument("--warmup", type=_non_negative, default=3,
                   help="Untimed steps first.")
    p.add_argument("--rounds", type=_positive, default=2)
    p.add_argument("--pipeline_batches", type=_positive, default=100,
                   help="Batches timed through each input pipeline (20 gave "
                        "round-to-round spreads of 2,100-3,600 img/s here).")
    p.add_argument("--synthetic_examples", type=_positive, default=2048)
    p.add_argument("--venv", default=os.path.join(ROOT, ".venv-compare"),
                   help="The compare venv (created if missing).")
    p.add_argument("--ours_python", default=None,
                   help="Python of the project venv (default: .venv/bin/python, "
                   "else this interpreter).")
    p.add_argument("--config_dir", default=os.path.join(ROOT, "configs", "cifar10"),
                   help="Where <method>.flags are read from.")
    p.add_argument("--timeout", type=_positive, default=3600,
                   help="Seconds allowed to one child process.")
    _bool_flag(p, "jit_compile", False, "Ours with XLA (the method steps; default: "
               "TensorFlow's graph with oneDNN kernels, faster on CPUs).")
    _bool_flag(p, "skip_pipeline", False, "Leave out the input pipelines.")
    _bool_flag(p, "skip_backbone", False, "Leave out the bare backbone row.")
    _bool_flag(p, "channels_last", False, "Theirs in torch.channels_last.")
    p.add_argument("--mixed_precision", choices=MIXED_PRECISION, default="none",
                   help="Both sides' compute dtype: ours --mixed_precision, theirs "
                   "torch.autocast (bfloat16).")
    args = p.parse_args(argv)
    if args.synthetic_examples < args.batch:
        p.error(f"--synthetic_examples={args.synthetic_examples} must be >= "
                f"--batch={args.batch}")
    return args


# ---------------------------------------------------------------- pure helpers


def median(values):
    """Median of the non-None values, None if there are none."""
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def ratio(ours, theirs, digits=2):
    """``ours / theirs`` rounded, None when either is missing or ``theirs`` is 0."""
    if ours is None or theirs is None or theirs == 0:
        return None
    return round(ours / theirs, digits)


def parse_json_line(text):
    """The last line of ``text`` that is a JSON object; ValueError if none."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                return value
    raise ValueError("no JSON line in the output")


def _fmt(value, digits=1):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def format_table(headers, rows):
    """A Markdown table; numbers right-aligned, None shown as ``-``."""
    cells = [[_fmt(v, 2 if "ratio" in h else 1) for h, v in zip(headers, row)]
             for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]

    def line(items, numeric):
        parts = [(s.rjust(w) if n else s.ljust(w))
                 for s, w, n in zip(items, widths, numeric)]
        return "| " + " | ".join(parts) + " |"

    numeric = [i > 0 for i in range(len(headers))]
    out = [line(headers, [False] * len(headers)),
           "| " + " | ".join("-" * w for w in widths) + " |"]
    out += [line(r, numeric) for r in cells]
    return "\n".join(out)


def method_summary(method, ours_runs, theirs_runs, ours_pipes=(), theirs_pipes=()):
    """Medians over rounds and the ratios of one method (a JSON-ready dict)."""
    ours = median(r.get("train_images_per_sec") for r in ours_runs)
    theirs = median(r.get("train_images_per_sec") for r in theirs_runs)
    ours_pipe = median(r.get("pipeline_images_per_sec") for r in ours_pipes)
    theirs_pipe = median(r.get("pipeline_images_per_sec") for r in theirs_pipes)
    return {"compare": method,
            "ours_images_per_sec": ours, "theirs_images_per_sec": theirs,
            "ratio": ratio(ours, theirs),
            "ours_pipeline_images_per_sec": ours_pipe,
            "theirs_pipeline_images_per_sec": theirs_pipe,
            "pipeline_ratio": ratio(ours_pipe, theirs_pipe),
            "ours_runs": [r.get("train_images_per_sec") for r in ours_runs],
            "theirs_runs": [r.get("train_images_per_sec") for r in theirs_runs]}


def backbone_summary(plain_runs, xla_runs, theirs_runs):
    plain = median(r.get("train_images_per_sec") for r in plain_runs)
    xla = median(r.get("train_images_per_sec") for r in xla_runs)
    theirs = median(r.get("train_images_per_sec") for r in theirs_runs)
    return {"compare": "backbone", "ours_plain_images_per_sec": plain,
            "ours_xla_images_per_sec": xla, "theirs_images_per_sec": theirs,
            "ratio_plain": ratio(plain, theirs), "ratio_xla": ratio(xla, theirs),
            "ours_plain_runs": [r.get("train_images_per_sec") for r in plain_runs],
            "ours_xla_runs": [r.get("train_images_per_sec") for r in xla_runs],
            "theirs_runs": [r.get("train_images_per_sec") for r in theirs_runs]}


STEP_HEADERS = ["method", "ours img/s", "lightly img/s", "ratio"]
PIPE_HEADERS = ["views of", "ours tf.data img/s", "torch DataLoader img/s",
                "pipeline ratio"]


def summary_tables(summaries, backbone=None):
    """The printed tables (train step; pipeline; bare backbone) as one string."""
    steps = [[s["compare"], s["ours_images_per_sec"], s["theirs_images_per_sec"],
              s["ratio"]] for s in summaries]
    if backbone:
        steps.append(["backbone fwd+bwd (plain)", backbone["ours_plain_images_per_sec"],
                      backbone["theirs_images_per_sec"], backbone["ratio_plain"]])
        steps.append(["backbone fwd+bwd (XLA)", backbone["ours_xla_images_per_sec"],
                      backbone["theirs_images_per_sec"], backbone["ratio_xla"]])
    parts = [format_table(STEP_HEADERS, steps)]
    pipes = [[s["compare"], s["ours_pipeline_images_per_sec"],
              s["theirs_pipeline_images_per_sec"], s["pipeline_ratio"]]
             for s in summaries if s["ours_pipeline_images_per_sec"] is not None
             or s["theirs_pipeline_images_per_sec"] is not None]
    if pipes:
        parts.append(format_table(PIPE_HEADERS, pipes))
    return "\n\n".join(parts)


def ours_command(args, method, python, bare_backbone=False, jit_compile=None):
    """The benchmark.py command line of ours for ``method``."""
    jit = args.jit_compile if jit_compile is None else jit_compile
    cmd = [python, BENCHMARK,
           f"--flagfile={os.path.join(args.config_dir, method + '.flags')}",
           "--synthetic_data", f"--synthetic_examples={args.synthetic_examples}",
           f"--global_batch_size={args.batch}", f"--image_size={args.image_size}",
           f"--threads={args.threads}", f"--num_parallel_calls={args.threads}",
           f"--timed_steps={args.steps}", f"--warmup_steps={args.warmup}",
           "--jit_compile" if jit else "--nojit_compile",
           f"--mixed_precision={args.mixed_precision}"]
    if bare_backbone:
        cmd.append("--bare_backbone")
    if bare_backbone or args.skip_pipeline:
        cmd.append("--pipeline_batches=0")
    else:
        cmd.append(f"--pipeline_batches={args.pipeline_batches}")
    return cmd


def theirs_command(args, method, python, mode, spec_path=None):
    """The _lightly_step.py command line (``mode``: step, backbone, pipeline)."""
    cmd = [python, LIGHTLY_STEP, f"--mode={mode}", f"--method={method}",
           f"--batch={args.batch}", f"--image_size={args.image_size}",
           f"--threads={args.threads}", f"--steps={args.steps}",
           f"--warmup={args.warmup}", f"--pipeline_batches={args.pipeline_batches}",
           f"--synthetic_examples={args.synthetic_examples}"]
    if spec_path:
        cmd.append(f"--spec_json={spec_path}")
    if args.channels_last:
        cmd.append("--channels_last")
    if mode != "pipeline":
        cmd.append(f"--autocast={MIXED_PRECISION[args.mixed_precision]}")
    return cmd


def child_env(threads):
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    return env


# ---------------------------------------------------------------- processes


def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def ensure_venv(venv, requirements=REQUIREMENTS, base_python=None):
    """The compare venv's python, creating / completing the venv when needed.

    The venv is (re)installed when its stamp (the SHA-256 of the requirements file)
    is missing or differs; an existing venv is reused as it is otherwise.
    """
    python = os.path.join(venv, "bin", "python")
    stamp = os.path.join(venv, STAMP)
    want = _sha256(requirements)
    if os.path.exists(python) and os.path.exists(stamp):
        with open(stamp) as f:
            if f.read().strip() == want:
                return python
    if not os.path.exists(python):
        cmd = [base_python or sys.executable, "-m", "venv", venv]
        print("creating the compare venv: " + " ".join(cmd), file=sys.stderr)
        subprocess.run(cmd, check=True, stdout=sys.stderr)
    cmd = [python, "-m", "pip", "install", "-r", requirements]
    print("installing: " + " ".join(cmd) + "  (torch + lightly, ~5.5 GB)",
          file=sys.stderr)
    subprocess.run(cmd, check=True, stdout=sys.stderr)  # stdout: the results only
    with open(stamp, "w") as f:
        f.write(want + "\n")
    return python


def run_child(cmd, env, timeout):
    """Runs ``cmd``; returns its JSON line (dict) or ``{"error": ...}``."""
    started = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s: {' '.join(cmd)}"}
    wall = round(time.perf_counter() - started, 1)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        return {"error": f"exit {done.returncode}: " + " / ".join(tail),
                "wall_seconds": wall}
    try:
        record = parse_json_line(done.stdout)
    except ValueError:
        return {"error": "no JSON line: " + done.stdout[-300:], "wall_seconds": wall}
    record["wall_seconds"] = wall
    return record


def _say(text):
    print(text, file=sys.stderr, flush=True)


def _describe(label, record, key="train_images_per_sec"):
    if "error" in record:
        return f"{label}: ERROR {record['error']}"
    text = f"{label}: {_fmt(record.get(key))} img/s"
    if key == "train_images_per_sec" and record.get("pipeline_images_per_sec"):
        text += f" (pipeline {_fmt(record['pipeline_images_per_sec'])} img/s)"
    return text + f" [{record.get('wall_seconds')} s]"


def main(argv=None):
    args = parse_args(argv)
    ours_python = args.ours_python or (
        os.path.join(ROOT, ".venv", "bin", "python")
        if os.path.exists(os.path.join(ROOT, ".venv", "bin", "python"))
        else sys.executable)
    theirs_python = ensure_venv(args.venv)
    env = child_env(args.threads)
    spec_dir = tempfile.mkdtemp(prefix="tfssl_compare_")
    runs = {m: {"ours": [], "theirs": [], "theirs_pipe": []} for m in args.methods}
    bb = {"plain": [], "xla": [], "theirs": []}
    errors = []

    def ok(record, label):
        if "error" in record:
            errors.append(f"{label}: {record['error']}")
            return False
        return True

    for r in range(args.rounds):
        tag = f"round {r + 1}/{args.rounds}"
        for method in args.methods:
            ours = run_child(ours_command(args, method, ours_python), env, args.timeout)
            _say(_describe(f"{tag} {method} ours", ours))
            if not ok(ours, f"{tag} {method} ours"):
                continue
            runs[method]["ours"].append(ours)
            spec = os.path.join(spec_dir, f"{method}.json")
            with open(spec, "w") as f:
                f.write(json.dumps(ours) + "\n")
            theirs = run_child(
                theirs_command(args, method, theirs_python, "step", spec), env,
                args.timeout)
            _say(_describe(f"{tag} {method} lightly", theirs))
            if ok(theirs, f"{tag} {method} lightly"):
                runs[method]["theirs"].append(theirs)
            if not args.skip_pipeline:
                pipe = run_child(theirs_command(args, method, theirs_python, "pipeline",
                                                spec), env, args.timeout)
                _say(_describe(f"{tag} {method} torch pipeline", pipe,
                               "pipeline_images_per_sec"))
                if ok(pipe, f"{tag} {method} torch pipeline"):
                    runs[method]["theirs_pipe"].append(pipe)
        if not args.skip_backbone:  # ours plain, theirs, ours XLA
            method = args.methods[0] if args.methods else "moco_v2"
            plain = run_child(ours_command(args, method, ours_python,
                                           bare_backbone=True, jit_compile=False),
                              env, args.timeout)
            _say(_describe(f"{tag} backbone ours plain", plain))
            spec = None
            if ok(plain, f"{tag} backbone ours plain"):
                bb["plain"].append(plain)
                spec = os.path.join(spec_dir, "backbone.json")
                with open(spec, "w") as f:
                    f.write(json.dumps(plain) + "\n")
            theirs = run_child(theirs_command(args, method, theirs_python, "backbone",
                                              spec), env, args.timeout)
            _say(_describe(f"{tag} backbone torch", theirs))
            if ok(theirs, f"{tag} backbone torch"):
                bb["theirs"].append(theirs)
            xla = run_child(ours_command(args, method, ours_python, bare_backbone=True,
                                         jit_compile=True), env, args.timeout)
            _say(_describe(f"{tag} backbone ours XLA", xla))
            if ok(xla, f"{tag} backbone ours XLA"):
                bb["xla"].append(xla)

    shutil.rmtree(spec_dir, ignore_errors=True)
    summaries = [method_summary(m, runs[m]["ours"], runs[m]["theirs"],
                                runs[m]["ours"], runs[m]["theirs_pipe"])
                 for m in args.methods]
    backbone = None if args.skip_backbone else backbone_summary(
        bb["plain"], bb["xla"], bb["theirs"])
    setting = {"batch": args.batch, "image_size": args.image_size,
               "threads": args.threads, "steps": args.steps, "warmup": args.warmup,
               "rounds": args.rounds, "jit_compile": args.jit_compile,
               "channels_last": args.channels_last,
               "mixed_precision": args.mixed_precision}
    versions = {}
    for m in args.methods:
        for rec in runs[m]["theirs"][:1] + runs[m]["ours"][:1]:
            for k in ("tensorflow", "torch", "torchvision", "lightly"):
                if k in rec:
                    versions[k] = rec[k]
    print(f"batch {args.batch}, {args.image_size} px, {args.threads} threads, "
          f"median of {args.steps} timed steps after {args.warmup}, median over "
          f"{args.rounds} round(s); ours {'with' if args.jit_compile else 'without'} "
          f"XLA; compute {'bfloat16' if args.mixed_precision != 'none' else 'float32'}"
          f"; ratio = ours / theirs. " + ", ".join(
              f"{k} {v}" for k, v in sorted(versions.items())))
    print()
    print(summary_tables(summaries, backbone))
    print()
    for s in summaries + ([backbone] if backbone else []):
        print(json.dumps({**s, **setting, **versions}))
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
