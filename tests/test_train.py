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
            "knn_top1", "rankme"} <= set(records[-1])
    # RankMe of 32 query images' 64-d pooled features: between 1 and 32.
    assert 1.0 <= records[-1]["rankme"] <= 32.0
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


def test_tensorboard_holds_views_and_projector(tmp_path):
    config = tiny_config(tmp_path, "ressl", steps=1, projector_examples=32)
    train(config, verbose=0)
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(str(tmp_path / "tb"),
                                             size_guidance={"tensors": 0})
    acc.Reload()
    tags = set(acc.Tags()["tensors"])
    assert {"views/0_28px", "views/1_28px", "train/relation", "train/alpha",
            "train/teacher_entropy", "train/embedding_std", "knn/top1",
            "monitor/rankme"} <= tags
    assert (tmp_path / "tb" / "projector_config.pbtxt").exists()
    assert len(open(tmp_path / "tb" / "metadata.tsv").readlines()) == 32


def test_non_finite_loss_stops_and_keeps_the_finite_checkpoint(tmp_path, monkeypatch):
    from tfssl.methods.moco_v2 import MoCoV2

    original = MoCoV2.compute_losses

    def poisoned(self, views, step):
        terms = original(self, views, step)
        bad = tf.cast(step >= 2, tf.float32) * np.nan
        terms["loss"] = terms["loss"] + tf.where(step >= 2, bad, 0.0)
        return terms

    monkeypatch.setattr(MoCoV2, "compute_losses", poisoned)
    config = tiny_config(tmp_path, "moco_v2", steps=4, checkpoint_every_steps=1)
    with pytest.raises(UserError, match="non-finite at step 3"):
        train(config, verbose=0)
    latest = tf.train.latest_checkpoint(str(tmp_path / "checkpoints"))
    assert latest.endswith("-2")
    reader = tf.train.load_checkpoint(latest)
    for name in reader.get_variable_to_shape_map():
        value = reader.get_tensor(name)
        if np.issubdtype(np.asarray(value).dtype, np.floating):
            assert np.isfinite(value).all(), name


def test_checkpoints_move_between_mirrored_and_one_device(tmp_path, mirrored):
    from tfssl.trainer import load_trained_model

    config = tiny_config(tmp_path / "m", "moco_v2", batch=8, queue=16, steps=2)
    _, two = train(config, verbose=0, strategy=mirrored)
    one = load_trained_model(config)
    for a, b in zip(two.weights, one.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_array_equal(two.queue.read(), one.queue.read())

    config_b = tiny_config(tmp_path / "s", "moco_v2", batch=8, queue=16, steps=2)
    _, single = train(config_b, verbose=0)
    back = load_trained_model(config_b, strategy=mirrored)
    for a, b in zip(single.weights, back.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert int(back.optimizer.iterations.numpy()) == 2


def test_unlabeled_nested_folder_trains_and_monitors_with_eval_data_dir(tmp_path, capsys):
    """``--folder_labels=none``: every image under the folder (any depth) is a
    pretraining example; the kNN monitor is off with one line, or runs on a
    labelled ``--eval_data_dir``."""
    from tests.helpers import fashion_batch
    from tfssl.data.sources import load_source

    images = fashion_batch(48, seed=3)[..., 0]
    photos, labelled = tmp_path / "photos", tmp_path / "labelled"
    for i, image in enumerate(images):
        folder = photos / f"2026/{i % 3:02d}" if i % 2 else photos
        folder.mkdir(parents=True, exist_ok=True)
        png = tf.io.encode_png(np.stack([image] * 3, -1)).numpy()
        (folder / f"{i:03d}.png").write_bytes(png)
        for split in ("train", "test"):
            cls = labelled / split / f"class_{i % 2}"
            cls.mkdir(parents=True, exist_ok=True)
            (cls / f"{i:03d}.png").write_bytes(png)
    src = load_source("image_folder", "train", str(photos), image_size=28,
                      folder_labels="none")
    assert src.num_examples == 48 and src.num_classes == 0
    assert set(src.labels.tolist()) == {-1}

    def config(name, **extra):
        return tiny_config(tmp_path / name, "moco_v2", batch=16, queue=32, steps=2,
                           dataset="image_folder", data_dir=str(photos),
                           folder_labels="none", knn_train_examples=0,
                           knn_eval_examples=0, **extra)

    summary, _ = train(config("plain"), verbose=1)
    assert summary["step"] == 2 and summary["knn"] is None
    assert "kNN monitor off: the train split of" in capsys.readouterr().out
    summary, _ = train(config("monitored", eval_data_dir=str(labelled)), verbose=0)
    assert summary["knn"] is not None and 0 <= summary["knn"]["top1"] <= 100
