"""Two worker processes on localhost under MultiWorkerMirroredStrategy.

Both workers must end with identical variables (weights, momentum targets, queue,
SMoG group features, optimizer state), equal to one process training the same
global batch: with two in-process replicas every variable agrees; on one device
(plain instead of synchronised BN: different float rounding, which the sharp
teacher softmax amplifies to ~1% in the stem's SGD momentum after 3 steps) the
model's variables agree. The one-device run computes its BN with Keras' ops
(``fused_batch_norm=False``), as synchronised BN does: the fused kernel's rounding
moves the stem's weights by up to 6e-4 after 3 steps, past this test's tolerance.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests import _multi_worker_child as child
from tests.helpers import METHOD_CASES, tiny_config
from tfssl import trainer

# A queue (ReSSL) and group features (SMoG): METHOD_CASES' multi_worker entries.
METHODS = tuple(name for name, case in METHOD_CASES.items() if case.multi_worker)
TIMEOUT_S = 300
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
from scaling import free_ports  # noqa: E402  (tools/scaling.py launches workers too)


def run_workers(tmp_path):
    """Runs both workers to the end; returns their ``.npz`` results."""
    workers = [f"127.0.0.1:{p}" for p in free_ports(2)]
    procs, outs = [], []
    for index in range(2):
        env = dict(os.environ, PYTHONPATH=ROOT, TF_CONFIG=json.dumps({
            "cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}))
        out = tmp_path / f"worker{index}.npz"
        log = open(tmp_path / f"worker{index}.log", "w")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tests._multi_worker_child", str(tmp_path / "run"),
             str(out), *METHODS], cwd=ROOT, env=env, stdout=log,
            stderr=subprocess.STDOUT))
        outs.append(out)
    try:
        for proc in procs:
            proc.wait(timeout=TIMEOUT_S)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for index, proc in enumerate(procs):
        log = (tmp_path / f"worker{index}.log").read_text()[-3000:]
        assert proc.returncode == 0, f"worker {index} failed:\n{log}"
    return [np.load(out) for out in outs]


def single_process(model_dir, method, strategy=None):
    config = tiny_config(model_dir, method, batch=child.BATCH, queue=16,
                         steps=child.STEPS, knn_train_examples=64,
                         knn_eval_examples=32, projector_examples=0,
                         fused_batch_norm=False)
    _, model = trainer.train(config, verbose=0, stop_at_step=child.STEPS,
                             strategy=strategy)
    return child.variables(model)


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
    """``(results of worker 0 and 1, the directory they ran in)``."""
    root = tmp_path_factory.mktemp("multi_worker")
    return run_workers(root), root


def by_method(npz, method):
    return {k[len(method) + 1:]: npz[k] for k in npz.files if k.startswith(method + "/")}


def assert_close(expected, actual, prefix=""):
    keys = sorted(k for k in expected if k.startswith(prefix))
    assert keys and keys == sorted(k for k in actual if k.startswith(prefix))
    for key in keys:
        assert expected[key].shape == actual[key].shape, key
        np.testing.assert_allclose(actual[key], expected[key], rtol=1e-3, atol=1e-4,
                                   err_msg=key)


@pytest.mark.parametrize("method", METHODS)
def test_two_workers_agree_with_each_other_and_one_process(workers, tmp_path,
                                                           mirrored, method):
    first, second = (by_method(r, method) for r in workers[0])
    assert sorted(first) == sorted(second) and first
    for key in first:
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)

    assert_close(single_process(tmp_path / "two", method, mirrored), first)
    # One device (plain BN) rounds differently from synchronised BN. For ReSSL the
    # model's variables still agree to 1e-4 + 0.1%; SMoG's argmax group assignments
    # amplify the rounding (on an AVX-512 CPU its stem weights and cached features
    # moved by up to 2e-3 after 3 steps), so it is held to the strict comparison
    # above only.
    if method != "smog":
        assert_close(single_process(tmp_path / "one", method), first,
                     prefix="model/")


def test_chief_alone_writes_the_run(workers):
    run = workers[1] / "run"
    assert sorted(p.name for p in run.iterdir()) == sorted(METHODS)
    files = {p.name for p in (run / "ressl").iterdir()}
    assert {"config.json", "checkpoints", "tb", "metrics.jsonl"} <= files
    ckpts = (run / "ressl" / "checkpoints").glob("ckpt-*.index")
    assert [p.name for p in ckpts] == [f"ckpt-{child.STEPS}.index"]
