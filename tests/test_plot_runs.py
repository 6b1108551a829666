"""tools/plot_runs.py on run directories written here (config, metrics, TensorBoard)."""

import json
import os
import subprocess
import sys

import numpy as np
import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import plot_runs  # noqa: E402


def fake_run(path, method, seed, top1):
    os.makedirs(path / "tb")
    (path / "config.json").write_text(json.dumps({"train": {"method": method,
                                                             "seed": seed}}))
    rows = [{"epoch": e, "step": 10 * e, "knn_top1": t} for e, t in enumerate(top1)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    writer = tf.summary.create_file_writer(str(path / "tb"))
    with writer.as_default():
        for step in range(1, 31):
            tf.summary.scalar("train/loss", 5.0 / step, step=step)
    writer.close()


def test_plot_reads_the_runs_and_writes_a_png(tmp_path):
    fake_run(tmp_path / "a", "moco_v2", 0, [74.1, 77.6, 78.3, 78.7])
    fake_run(tmp_path / "b", "moco_v2", 1, [73.5, 77.0, 78.1, 78.5])
    label, method, seed, knn, curves = plot_runs.read_run(str(tmp_path / "b"), ["loss"])
    assert (label, method, seed) == ("moco_v2 (seed 1)", "moco_v2", 1)
    assert knn[-1] == (3, 78.5) and len(curves["loss"]) == 30
    assert curves["loss"][0] == (1, 5.0)
    out = tmp_path / "runs.png"
    done = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "plot_runs.py"),
                           str(tmp_path / "a"), str(tmp_path / "b"), f"--out={out}"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    image = tf.io.decode_png(out.read_bytes())
    assert image.shape[0] > 300 and image.shape[1] > 600
    assert np.asarray(image).std() > 5  # something was drawn
    bad = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "plot_runs.py"),
                          str(tmp_path), f"--out={out}"], capture_output=True, text=True)
    assert bad.returncode == 2 and "not a run directory" in bad.stderr
