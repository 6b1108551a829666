"""Entry points: bad input exits non-zero with a one-line message, no traceback."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(module, *args):
    env = dict(os.environ, PYTHONPATH=ROOT, CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def parse(*args):
    """Flags -> RunConfig in-process, as ``tfssl.train`` does before any work."""
    from absl import flags

    from tfssl import flags as tfssl_flags

    fv = flags.FlagValues()
    tfssl_flags.define_flags(fv)
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        fv(["prog", "--flagfile=configs/fashion_mnist/quickstart.flags",
            "--model_dir=/tmp/unused", *args])
    finally:
        os.chdir(cwd)
    return tfssl_flags.run_config_from_flags(fv)


@pytest.mark.parametrize("args, message", [
    (["--epochs=0"], "--epochs=0 must be > 0."),
    (["--ressl_tau_t=0.2"], "--ressl_tau_t=0.2 must be smaller than --ressl_tau_s=0.1"),
    (["--method=simclr"], "--method=simclr is not a known method; known: byol"),
    (["--model_dir="], "--model_dir is required"),
    (["--width=-1"], "--width=-1.0 must be > 0."),
    (["--num_parallel_calls=0"], "--num_parallel_calls=0 must be -1 (AUTOTUNE) or >= 1."),
])
def test_bad_flag_values_are_named(args, message):
    from tfssl.errors import UserError

    with pytest.raises(UserError) as error:
        parse(*args)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("args, message", [
    (["--dataset=nope"], "--dataset"),
    (["--data_dir=/nonexistent"], "/nonexistent"),
    (["--queue_size=1000"], "--queue_size=1000 must be a positive multiple of "
                            "--global_batch_size=256; use 768 or 1024."),
])
def test_bad_data_and_model_flags_are_named(tmp_path, args, message):
    from tfssl.errors import UserError
    from tfssl.trainer import train

    config = parse(*args)
    config = type(config)(**{**config.__dict__, "model_dir": str(tmp_path)})
    with pytest.raises(UserError) as error:
        train(config, verbose=0)
    assert message in str(error.value)


def test_a_bad_flag_exits_2_with_one_line_and_no_traceback(tmp_path):
    out = run("tfssl.train", "--flagfile=configs/fashion_mnist/quickstart.flags",
              f"--model_dir={tmp_path / 'run'}", "--queue_size=1000")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    lines = [l for l in out.stderr.splitlines() if "error" in l.lower()]
    assert lines == ["error: --queue_size=1000 must be a positive multiple of "
                     "--global_batch_size=256; use 768 or 1024."], out.stderr


def test_unknown_flag_in_a_flagfile(tmp_path):
    flagfile = tmp_path / "bad.flags"
    flagfile.write_text("--flagfile=configs/fashion_mnist/quickstart.flags\n"
                        "--no_such_flag=3\n")
    out = run("tfssl.train", f"--flagfile={flagfile}", f"--model_dir={tmp_path}")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "no_such_flag" in out.stderr


def test_export_without_a_run(tmp_path):
    out = run("tfssl.export", f"--model_dir={tmp_path}")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "config.json not found" in out.stderr


def test_mirrored_on_two_logical_cpus_from_the_command_line(tmp_path):
    out = run("tfssl.train", "--flagfile=configs/fashion_mnist/quickstart.flags",
              f"--model_dir={tmp_path}", "--strategy=mirrored", "--cpu_devices=2",
              "--backbone=resnet10", "--width=0.125", "--global_batch_size=32",
              "--queue_size=256", "--epochs=1", "--steps_per_epoch=2",
              "--knn_train_examples=256", "--knn_eval_examples=64")
    assert out.returncode == 0, out.stderr[-2000:]
    # Readable output when stdout is not a terminal: plain progress lines, no bar
    # redraws, no TensorFlow / absl INFO lines (C++ "I0000 ..." or absl "I1203 ...").
    assert "\r" not in out.stdout
    assert re.search(r"^epoch 1 step 2/2: loss \S+ ", out.stdout, re.M), out.stdout
    assert not re.search(r"^I\d{4} ", out.stdout + out.stderr, re.M), out.stderr[-2000:]
    import json
    config = json.load(open(tmp_path / "config.json"))
    assert config["train"]["strategy"] == "mirrored"
    records = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
    assert records[-1]["step"] == 2 and "knn_top1" in records[-1]


def test_sigterm_writes_a_checkpoint_and_exits_with_one_line(tmp_path):
    import signal
    import time

    args = [sys.executable, "-m", "tfssl.train",
            "--flagfile=configs/fashion_mnist/quickstart.flags",
            f"--model_dir={tmp_path}", "--backbone=resnet10", "--width=0.125",
            "--global_batch_size=32", "--queue_size=256", "--epochs=1",
            "--steps_per_epoch=500", "--knn_train_examples=64",
            "--knn_eval_examples=32", "--checkpoint_every_steps=2"]
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    ckpt_dir = tmp_path / "checkpoints"

    def saved():
        return sorted(int(f.split("-")[1].split(".")[0]) for f in os.listdir(ckpt_dir)
                      if f.endswith(".index")) if ckpt_dir.exists() else []

    # A checkpoint on disk means the loop is running (the signal handler is armed).
    while time.time() < deadline and proc.poll() is None and not saved():
        time.sleep(0.2)
    assert saved(), "the run wrote no checkpoint"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2, stderr[-2000:]
    match = re.search(r"stopped by signal 15 at step (\d+); checkpoint written", stderr)
    assert match and "Traceback" not in stderr, stderr[-2000:]
    step = int(match.group(1))
    assert 2 <= step < 500 and saved()[-1] == step
