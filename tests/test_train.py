"""End to end on real Fashion-MNIST: files, exact resume, export in a fresh process."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import tiny_config
from tfssl.errors import UserError
from tfssl.trainer import load_config, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def state(model):
    return [w.numpy() for w in model.weights] + [
        v.numpy() for v in model.optimizer.variables]


def test_resume_is_exact_and_run_dir_is_complete(tmp_path):
    config = tiny_config(tmp_path / "a", "ressl", epochs=2, steps=2,
                         warmup_steps=2)
    summary, straight = train(config, verbose=0)
    assert summary["step"] == 4

    config_b = tiny_config(tmp_path / "b", "ressl", epochs=2, steps=2,
                           warmup_steps=2)
    train(config_b, verbose=0, stop_at_step=1)
    _, resumed = train(config_b, verbose=0)
    for a, b in zip(state(straight), state(resumed)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(straight.queue.read(), resumed.queue.read())

    run = tmp_path / "a"
    assert load_config(str(run)) == config
    records = [json.loads(l) for l in open(run / "metrics.jsonl")]
    assert [r["epoch"] for r in records] == [0, 1, 2]
    assert {"loss", "relation", "learning_rate", "momentum", "images_per_sec",
            "knn_top1"} <= set(records[-1])
    assert os.listdir(run / "tb") and os.path.isdir(run / "checkpoints")


def test_model_dir_of_another_method_is_refused(tmp_path):
    train(tiny_config(tmp_path, "moco_v2", steps=1), verbose=0)
    with pytest.raises(UserError, match="holds a moco_v2 run"):
        train(tiny_config(tmp_path, "byol", steps=1), verbose=0)


def test_export_reloads_in_a_fresh_process(tmp_path):
    config = tiny_config(tmp_path / "run", "moco_v2", steps=1)
    _, model = train(config, verbose=0)
    export_dir = tmp_path / "export"
    env = dict(os.environ, PYTHONPATH=ROOT)
    subprocess.run([sys.executable, "-m", "tfssl.export", f"--model_dir={tmp_path/'run'}",
                    f"--export_dir={export_dir}"], check=True, env=env, cwd=ROOT,
                   capture_output=True, timeout=300)
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28, 1), np.uint8)
    np.save(tmp_path / "x.npy", images)
    script = (
        "import numpy as np, tensorflow as tf, sys\n"
        f"m = tf.saved_model.load({str(export_dir)!r})\n"
        "f = m.signatures['serving_default']\n"
        f"out = f(images=tf.constant(np.load({str(tmp_path / 'x.npy')!r})))\n"
        f"np.save({str(tmp_path / 'emb.npy')!r}, out['embedding'].numpy())\n"
        f"np.save({str(tmp_path / 'feat.npy')!r}, out['features'].numpy())\n")
    subprocess.run([sys.executable, "-c", script], check=True, env=env,
                   capture_output=True, timeout=300)
    x = tf.image.grayscale_to_rgb(tf.cast(images, tf.float32) / 255.0)
    expected = model.backbone(x, training=False)["pooled"].numpy()
    np.testing.assert_allclose(np.load(tmp_path / "feat.npy"), expected, atol=1e-5)
    emb = np.load(tmp_path / "emb.npy")
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
