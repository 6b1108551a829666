"""The run directory's rules, each with the fault that broke it.

A run directory is never modified by a refused command, never shared by two live
runs, never loses a checkpoint it had; every failure a user can cause or meet is
one line naming the file or flag and the fix (exit code 2 at the command line).
"""

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import tiny_config
from tfssl import checkpoints, run_dir
from tfssl.errors import UserError
from tfssl.trainer import load_trained_model, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHOD = "ressl"


def config_for(model_dir, **overrides):
    values = dict(steps=2, checkpoint_every_steps=1, warmup_steps=2)
    values.update(overrides)
    return tiny_config(model_dir, METHOD, **values)


def state(model):
    return ([w.numpy() for w in model.weights]
            + [v.numpy() for v in model.optimizer.variables])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-step run (checkpoints at steps 1 and 2) and its final state."""
    path = tmp_path_factory.mktemp("finished") / "run"
    _, model = train(config_for(path), verbose=0)
    return path, state(model)


@pytest.fixture
def run(finished, tmp_path):
    """A private copy of the finished run."""
    path = tmp_path / "run"
    shutil.copytree(finished[0], path)
    return path


def snapshot(path):
    """Every file under ``path`` with its content hash (the lock file aside)."""
    out = {}
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            if name != run_dir.LOCK_FILE:
                out[os.path.relpath(full, path)] = hashlib.sha256(
                    open(full, "rb").read()).hexdigest()
    return out


def rows(path):
    return [json.loads(line) for line in open(path / "metrics.jsonl")]


def cli(module, *args, timeout=300):
    env = dict(os.environ, PYTHONPATH=ROOT, CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def one_error_line(done):
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr[-3000:]
    return errors[0]


@contextlib.contextmanager
def read_only_copy(src, tmp_path):
    """``src`` copied onto a read-only file system (a tmpfs remounted ro, as root),
    or into a folder without write permission (other users); else skip."""
    mount = tmp_path / "ro"
    mount.mkdir()
    if os.geteuid() == 0:
        if subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(mount)],
                          capture_output=True).returncode != 0:
            pytest.skip("read-only file system: mount is not permitted here")
        try:
            shutil.copytree(src, mount / "run")
            subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
            yield mount / "run"
        finally:
            subprocess.run(["umount", str(mount)], capture_output=True)
    else:
        shutil.copytree(src, mount / "run")
        for root, dirs, _ in os.walk(mount):
            os.chmod(root, 0o555)
        try:
            yield mount / "run"
        finally:
            for root, dirs, _ in os.walk(mount):
                os.chmod(root, 0o755)


# --------------------------------------------- D1, D3, D4: refused resumes change nothing


@pytest.mark.parametrize("overrides, named", [
    ({"queue": 128}, "--queue_size: run 64, this command 128"),
    ({"backbone": "resnet18"}, "--backbone: run resnet10, this command resnet18"),
    ({"width": 0.25}, "--width: run 0.125, this command 0.25"),
    ({"predictor": False}, "--ressl_predictor: run true, this command false"),
    ({"weight_decay": 1e-3}, "--weight_decay"),
])
def test_a_refused_resume_names_the_setting_and_changes_nothing(run, overrides, named):
    before = snapshot(run)
    with pytest.raises(UserError) as error:
        train(config_for(run, epochs=2, **overrides), verbose=0)
    assert named in str(error.value) and "\n" not in str(error.value)
    assert "use another --model_dir" in str(error.value)
    assert snapshot(run) == before


def test_settings_that_may_change_on_resume(run):
    """More epochs, other logging and checkpoint intervals: the run continues."""
    summary, _ = train(config_for(run, epochs=2, log_every_steps=2, knn_k=10,
                                  checkpoint_every_steps=3), verbose=0)
    assert summary["step"] == 4
    assert json.load(open(run / "config.json"))["train"]["epochs"] == 2


def test_a_checkpoint_that_does_not_match_is_refused_even_without_config(run):
    os.remove(run / "config.json")
    before = snapshot(run)
    with pytest.raises(UserError, match="does not match the model"):
        train(config_for(run, predictor=False), verbose=0)
    assert snapshot(run) == before


def test_a_refused_resume_at_the_command_line(run):
    out = cli("tfssl.train", "--flagfile=configs/fashion_mnist/quickstart.flags",
              f"--model_dir={run}", "--backbone=resnet10", "--width=0.25",
              "--global_batch_size=16", "--queue_size=64", "--epochs=1",
              "--steps_per_epoch=2")
    line = one_error_line(out)
    assert "holds a run with other settings" in line and "--width" in line


# --------------------------------------------- D2: unwritable places


def test_model_dir_that_is_a_file(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(UserError, match="is a file, not a directory"):
        train(config_for(path), verbose=0)


def test_read_only_run_is_refused_before_any_work(run, tmp_path, monkeypatch):
    from tfssl import trainer
    from tfssl.evaluate import EvalConfig, evaluate

    with read_only_copy(run, tmp_path) as ro:
        with pytest.raises(UserError, match="not writable"):
            train(config_for(ro, epochs=2), verbose=0)

        def no_work(*args, **kwargs):
            raise AssertionError("evaluate loaded the model before refusing")

        with monkeypatch.context() as patch:  # refused before the probe trains
            patch.setattr(trainer, "load_trained_model", no_work)
            with pytest.raises(UserError, match="cannot be written"):
                evaluate(EvalConfig(model_dir=str(ro), protocol="linear"))
        from tfssl.export import export

        with pytest.raises(UserError, match="--export_dir=.* is not writable"):
            export(str(ro))


def test_export_dir_that_is_a_file_or_holds_other_files(run, tmp_path):
    from tfssl.export import export

    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(UserError, match="is a file"):
        export(str(run), str(path))
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="holds no SavedModel"):
        export(str(run), str(other))
    assert os.listdir(other) == ["notes.txt"]


# --------------------------------------------- D5, D6: damaged checkpoints


def _damage(prefix, how):
    data = f"{prefix}.data-00000-of-00001"
    if how == "truncated data":
        os.truncate(data, os.path.getsize(data) // 3)
    elif how == "flipped bit in data":
        raw = bytearray(open(data, "rb").read())
        raw[len(raw) // 2] ^= 0x10
        open(data, "wb").write(bytes(raw))
    elif how == "truncated index":
        os.truncate(f"{prefix}.index", os.path.getsize(f"{prefix}.index") // 2)
    elif how == "empty index":
        open(f"{prefix}.index", "w").close()


DAMAGE = ["truncated data", "flipped bit in data", "truncated index", "empty index"]


def _small_checkpoints(directory, steps=(1, 2)):
    """Checkpoints of two variables holding ``step`` at each of ``steps``."""
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(a=tf.Variable(np.zeros(4096, np.float32)),
                            b=tf.Variable(0, dtype=tf.int64)), str(directory), 5)
    for step in steps:
        manager.checkpoint.a.assign(np.full(4096, step, np.float32))
        manager.checkpoint.b.assign(step)
        manager.save(checkpoint_number=step)


def _fresh_checkpoint():
    return tf.train.Checkpoint(a=tf.Variable(np.zeros(4096, np.float32)),
                               b=tf.Variable(0, dtype=tf.int64))


@pytest.mark.parametrize("how", DAMAGE)
def test_each_kind_of_damage_is_unreadable_and_the_older_checkpoint_is_used(tmp_path,
                                                                            how):
    _small_checkpoints(tmp_path)
    _damage(str(tmp_path / "ckpt-2"), how)
    made = []

    def make(names):
        made.append(_fresh_checkpoint())
        return made[-1]

    restored, unreadable = checkpoints.restore_newest(make, str(tmp_path))
    assert restored.endswith("ckpt-1")
    assert [os.path.basename(p) for p, _ in unreadable] == ["ckpt-2"]
    assert made[-1].b.numpy() == 1 and (made[-1].a.numpy() == 1).all()


def test_a_damaged_latest_checkpoint_falls_back_and_resumes_exactly(finished, run):
    ckpts = run / "checkpoints"
    _damage(str(ckpts / "ckpt-2"), "flipped bit in data")
    # Read-only commands use the older checkpoint and change nothing.
    before = snapshot(run)
    model = load_trained_model(config_for(run))
    assert model.restored_from.endswith("ckpt-1")
    assert snapshot(run) == before
    # Training moves the damaged one aside, trains step 2 again: same final state.
    summary, resumed = train(config_for(run), verbose=0)
    assert summary["step"] == 2
    for a, b in zip(finished[1], state(resumed)):
        np.testing.assert_array_equal(a, b)
    assert sorted(os.listdir(ckpts / "corrupt")) == [
        "ckpt-2.data-00000-of-00001", "ckpt-2.index"]
    assert [os.path.basename(p) for p in checkpoints.list_checkpoints(str(ckpts))] == [
        "ckpt-1", "ckpt-2"]
    # The epoch's row averages both steps, as the uninterrupted run's does.
    straight = rows(finished[0])
    again = rows(run)
    assert [r["step"] for r in again] == [0, 2]
    for key in ("loss", "relation", "info_nce", "learning_rate"):
        assert again[-1][key] == straight[-1][key]


def test_every_checkpoint_unreadable_is_refused(run):
    for prefix in ("ckpt-1", "ckpt-2"):
        _damage(str(run / "checkpoints" / prefix), "truncated index")
    before = snapshot(run)
    with pytest.raises(UserError, match="every checkpoint in .* is unreadable"):
        train(config_for(run), verbose=0)
    assert snapshot(run) == before


STATE_DAMAGE = [b"garbage {{{\n", b"\xff\xfe\x00", b"",
                b'model_checkpoint_path: "ckpt-7"\n']


@pytest.mark.parametrize("content", STATE_DAMAGE)
def test_an_unreadable_state_file_is_kept_aside_and_rewritten(tmp_path, content):
    _small_checkpoints(tmp_path, steps=(1, 2, 3))
    (tmp_path / "checkpoint").write_bytes(content)
    done = checkpoints.repair(str(tmp_path))
    # Unparsable content is kept as checkpoint.corrupt; a readable file that lists
    # other checkpoints (none, or one that is gone) is only rewritten.
    assert done and (tmp_path / "checkpoint.corrupt").exists() == (
        content in (b"garbage {{{\n", b"\xff\xfe\x00"))
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-3")
    # A manager on the repaired folder keeps every checkpoint and rotates as usual.
    manager = tf.train.CheckpointManager(_fresh_checkpoint(), str(tmp_path), 3)
    assert [os.path.basename(p) for p in manager.checkpoints] == [
        "ckpt-1", "ckpt-2", "ckpt-3"]
    manager.save(checkpoint_number=4)
    assert [os.path.basename(p) for p in checkpoints.list_checkpoints(str(tmp_path))] == [
        "ckpt-2", "ckpt-3", "ckpt-4"]


def test_an_unreadable_state_file_loses_no_checkpoint(run):
    ckpts = run / "checkpoints"
    (ckpts / "checkpoint").write_bytes(b"garbage {{{\n")
    summary, _ = train(config_for(run, epochs=2), verbose=0)
    assert summary["step"] == 4  # resumed at step 2, not restarted at 0
    names = checkpoints.list_checkpoints(str(ckpts))
    assert [os.path.basename(p) for p in names] == ["ckpt-2", "ckpt-3", "ckpt-4"]
    assert tf.train.latest_checkpoint(str(ckpts)).endswith("ckpt-4")
    assert (ckpts / "checkpoint.corrupt").read_bytes() == b"garbage {{{\n"


def test_interrupted_saves_are_cleaned_up(run):
    stale = run / "checkpoints" / "ckpt-9_temp"
    stale.mkdir()
    (stale / "part-00000-of-00001.data-00000-of-00001.tempstate1").write_bytes(b"x")
    train(config_for(run), verbose=0)
    assert not stale.exists()


def test_a_resume_drops_metrics_rows_of_steps_it_trains_again(run):
    """A crash between the epoch-end row and its checkpoint leaves a row the resumed
    run would write again."""
    shutil.rmtree(run / "checkpoints")
    os.makedirs(run / "checkpoints")
    summary, _ = train(config_for(run), verbose=0)
    assert [r["step"] for r in rows(run)] == [0, 2]


# --------------------------------------------- D7: disk full


def test_disk_full_during_a_checkpoint_is_one_line(tmp_path, monkeypatch):
    def full(self, *args, **kwargs):
        raise tf.errors.ResourceExhaustedError(
            None, None, "ckpt-1_temp/part-00000.data.tempstate1; No space left on device")

    monkeypatch.setattr(tf.train.CheckpointManager, "save", full)
    with pytest.raises(UserError) as error:
        train(config_for(tmp_path / "run"), verbose=0)
    message = str(error.value)
    assert "No space left on device" in message and "re-run the same command" in message
    assert "\n" not in message


def test_disk_full_at_the_command_line(tmp_path):
    """A real full disk: a 1 MiB tmpfs (skipped where mounting is not allowed)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
            capture_output=True).returncode != 0:
        pytest.skip("needs to mount a small tmpfs")
    try:
        out = cli("tfssl.train", "--flagfile=configs/fashion_mnist/quickstart.flags",
                  f"--model_dir={mount / 'run'}", "--global_batch_size=16",
                  "--queue_size=64", "--epochs=1", "--steps_per_epoch=1",
                  "--knn_train_examples=64", "--knn_eval_examples=32",
                  "--projector_examples=0")
        line = one_error_line(out)
        assert "No space left on device" in line
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


# --------------------------------------------- D8: non-finite values


@pytest.mark.parametrize("flag, value", [("weight_decay", 1e39),
                                         ("base_learning_rate", float("inf")),
                                         ("momentum", float("nan"))])
def test_values_beyond_float32_are_refused(flag, value):
    from tfssl import config as config_lib

    config = tiny_config("/tmp/unused", METHOD, **{flag: value})
    with pytest.raises(UserError, match=f"--{flag}=.*float32"):
        config_lib.validate_run(config, "ressl_")


def test_an_overflowing_effective_learning_rate_is_refused():
    from tfssl import config as config_lib

    config = tiny_config("/tmp/unused", METHOD, base_learning_rate=3e38, batch=1024,
                         queue=1024)
    with pytest.raises(UserError, match="overflows float32"):
        config_lib.validate_run(config, "ressl_")


def test_non_finite_weights_are_never_saved(tmp_path):
    weights = tf.Variable([1.0, np.inf])
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(w=weights),
                                         str(tmp_path), max_to_keep=3)
    with pytest.raises(UserError, match="non-finite by step 7 .*nothing was saved"):
        checkpoints.save(manager, 7, [weights], "Lower --base_learning_rate.")
    assert os.listdir(tmp_path) == []


def test_weights_that_turn_non_finite_stop_the_run_before_a_save(tmp_path, monkeypatch):
    """The loss may stay finite for a step after the weights overflow."""
    original = checkpoints.non_finite
    calls = []

    def second_save_sees_inf(variables):
        calls.append(1)
        if len(calls) == 2:
            variables[0].assign(tf.fill(variables[0].shape, np.inf))
        return original(variables)

    monkeypatch.setattr(checkpoints, "non_finite", second_save_sees_inf)
    with pytest.raises(UserError, match="non-finite by step 2"):
        train(config_for(tmp_path / "run", steps=3), verbose=0)
    assert [os.path.basename(p) for p in checkpoints.list_checkpoints(
        str(tmp_path / "run" / "checkpoints"))] == ["ckpt-1"]


# --------------------------------------------- D9: one live run per directory


def test_a_second_run_on_a_live_directory_is_refused(tmp_path):
    path = tmp_path / "run"
    with run_dir.RunLock(str(path)):
        with pytest.raises(UserError, match="in use by another training run .*pid"):
            train(config_for(path), verbose=0)
        assert os.listdir(path) == [run_dir.LOCK_FILE]
    with run_dir.RunLock(str(path)):  # free again once the first one ends
        pass


def test_a_refused_new_run_leaves_no_directory(tmp_path):
    path = tmp_path / "a" / "b"
    with pytest.raises(UserError):
        train(config_for(path, warmup_epochs=10.0), verbose=0)
    assert not (tmp_path / "a").exists()


# --------------------------------------------- D10: serving


def test_serving_checks_its_input_and_takes_empty_batches(run, tmp_path):
    from tfssl.export import export

    path = export(str(run), str(tmp_path / "export"))
    export(str(run), path)  # a SavedModel there is replaced
    loaded = tf.saved_model.load(path)
    default, floats = (loaded.signatures[k] for k in ("serving_default", "serving_float"))
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28, 1), np.uint8)
    a = default(images=tf.constant(images))["features"].numpy()
    b = floats(images=tf.constant(images / 255.0, tf.float32))["features"].numpy()
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for signature, dtype in ((default, tf.uint8), (floats, tf.float32)):
        empty = signature(images=tf.zeros([0, 28, 28, 1], dtype))
        assert empty["embedding"].shape == (0, a.shape[1])
        for shape in ([28, 28, 1], [2, 28, 28, 3], [2, 32, 32, 1]):
            with pytest.raises(tf.errors.InvalidArgumentError,
                               match=r"takes .* images \[N, 28, 28, 1\]"):
                signature(images=tf.zeros(shape, dtype))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"values in \[0, 1\]"):
        floats(images=tf.constant(images, tf.float32))


# --------------------------------------------- minors


def test_a_warm_up_longer_than_the_run_names_the_flags(tmp_path):
    with pytest.raises(UserError, match=r"--warmup_epochs=10 \(20 steps\) is longer "
                                        r"than the run \(--epochs=1 x 2 steps"):
        train(config_for(tmp_path / "run", warmup_epochs=10.0), verbose=0)


def test_a_signal_during_set_up_stops_at_once(tmp_path):
    args = [sys.executable, "-m", "tfssl.train",
            "--flagfile=configs/fashion_mnist/quickstart.flags",
            f"--model_dir={tmp_path}", "--backbone=resnet10", "--width=0.125",
            "--global_batch_size=16", "--queue_size=64", "--epochs=1",
            "--steps_per_epoch=50"]
    proc = subprocess.Popen(args, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not (
            tmp_path / "config.json").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # set-up: kNN at initialisation, tracing
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2, stderr[-2000:]
    assert "before the first step" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "checkpoints").exists()
