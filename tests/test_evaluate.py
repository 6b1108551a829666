"""Evaluation protocols: subsets, linear probe on planted features, fine-tuning, CLI."""

import dataclasses
import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import tiny_config
from tfssl import schedules
from tfssl.data import pipeline
from tfssl.data.sources import Source
from tfssl.errors import UserError
from tfssl.evaluate import EvalConfig, check_eval_config, evaluate, subset_path, summary_line
from tfssl.evaluation import linear
from tfssl.evaluation.knn import extract_features
from tfssl.trainer import knn_eval, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUMMARY = re.compile(r"^eval (knn|linear|semi): top-1 \d+\.\d\d% top-5 \d+\.\d\d% "
                     r"\(step \d+, fashion_mnist test\)$")
# 8 colours, the corners of the RGB cube: linearly separable channel means.
CORNERS = np.array([[(c >> b) & 1 for b in range(3)] for c in range(8)], np.float32)


def planted_source(per_class, seed, split="train", num_classes=8):
    """8x8 images of class c: colour corner c (30 or 220 per channel) plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(8), per_class)).astype(np.int64)
    base = 30 + 190 * CORNERS[labels][:, None, None, :]
    images = np.clip(base + rng.integers(-15, 16, (labels.size, 8, 8, 3)), 0, 255)
    return Source("planted", split, labels.size, num_classes, (8, 8, 3), (0.5,) * 3,
                  (0.5,) * 3, images=images.astype(np.uint8),
                  labels=labels if num_classes else np.full_like(labels, -1),
                  make_dataset=None)


def mean_backbone():
    """Stand-in backbone: pooled = per-channel mean of the [0, 1] image."""
    x = keras.Input((None, None, 3))
    return keras.Model(x, {"pooled": keras.layers.GlobalAveragePooling2D()(x)})


def conv_backbone(seed=0):
    """A small trainable backbone with BN: 1x1 conv(16) - BN - ReLU - mean."""
    x = keras.Input((None, None, 3))
    y = keras.layers.Conv2D(16, 1, kernel_initializer=keras.initializers.GlorotUniform(seed))(x)
    y = keras.layers.ReLU()(keras.layers.BatchNormalization(momentum=0.9)(y))
    return keras.Model(x, {"pooled": keras.layers.GlobalAveragePooling2D()(y)})


def snapshot(model):
    return [w.numpy().copy() for w in model.weights]


# ------------------------------------------------------------------ subsets


def test_balanced_subset_sizes_determinism_and_classes():
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(10), 100))
    for fraction, per_class in ((0.01, 1), (0.1, 10), (1.0, 100)):
        idx = linear.balanced_subset(labels, fraction, seed=3)
        assert idx.dtype == np.int64 and np.all(np.diff(idx) > 0)  # sorted, distinct
        np.testing.assert_array_equal(np.bincount(labels[idx], minlength=10), [per_class] * 10)
    a = linear.balanced_subset(labels, 0.1, seed=3)
    np.testing.assert_array_equal(a, linear.balanced_subset(labels, 0.1, seed=3))
    assert not np.array_equal(a, linear.balanced_subset(labels, 0.1, seed=4))
    # Stratified on an imbalanced split; unlabelled (-1) examples are never drawn.
    skewed = np.concatenate([np.zeros(50), np.ones(200), -np.ones(30)]).astype(np.int64)
    idx = linear.balanced_subset(skewed, 0.1, seed=0)
    np.testing.assert_array_equal(np.bincount(skewed[idx]), [5, 20])
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(UserError, match="semi_fraction"):
            linear.balanced_subset(labels, bad, seed=0)


def test_subset_file_is_written_then_reused(tmp_path):
    labels = np.repeat(np.arange(4), 20)
    path = str(tmp_path / "semi_0.1_indices.txt")
    idx, reused = linear.load_or_make_subset(path, labels, 0.1, seed=1)
    assert not reused and len(idx) == 8
    assert open(path).read() == "".join(f"{i}\n" for i in idx)
    again, reused = linear.load_or_make_subset(path, labels, 0.5, seed=9)  # file wins
    assert reused
    np.testing.assert_array_equal(again, idx)
    open(path, "w").write("3\nx\n")
    with pytest.raises(UserError, match="one integer index per line"):
        linear.load_or_make_subset(path, labels, 0.1, seed=1)
    open(path, "w").write("3\n999\n")
    with pytest.raises(UserError, match="outside"):
        linear.load_or_make_subset(path, labels, 0.1, seed=1)
    assert subset_path("D", 0.01) == os.path.join("D", "semi_0.01_indices.txt")
    assert subset_path("D", 0.1, 500) == os.path.join("D", "semi_0.1_first500_indices.txt")


# ------------------------------------------------------------ small pieces


def test_topk_accuracy_and_schedules():
    logits = np.array([[0.1, 0.9, 0.0, 0.0, 0.0, 0.0, 0.0],
                       [0.9, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0],
                       [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])
    acc = linear.topk_accuracy(logits, [1, 1, 0])
    assert acc == {"top1": pytest.approx(100 / 3), "top5": pytest.approx(200 / 3)}
    step = linear.lr_schedule("step", 2.0, epochs=100, steps_per_epoch=10)
    assert [float(step(s)) for s in (0, 599, 600, 799, 800)] == pytest.approx(
        [2.0, 2.0, 0.2, 0.2, 0.02])
    cosine = linear.lr_schedule("cosine", 2.0, epochs=10, steps_per_epoch=10)
    assert [float(cosine(s)) for s in (0, 50, 100)] == pytest.approx([2.0, 1.0, 0.0], abs=1e-6)
    assert isinstance(linear.lr_schedule("step", 1.0, 1, 5), schedules.StepDecay)  # no 0 mark
    with pytest.raises(UserError, match="known: cosine, step"):
        linear.lr_schedule("linear", 1.0, 1, 1)


# --------------------------------------------------------- planted features


def test_linear_probe_separates_planted_features():
    train_src, eval_src = planted_source(32, 0), planted_source(16, 1, "test")
    out = linear.linear_probe(mean_backbone(), train_src, eval_src, image_size=8, epochs=15,
                              lr=2.0, batch_size=32, seed=0)
    assert out["top1"] == 100.0 and out["top5"] == 100.0
    assert out["train_examples"] == 256 and out["eval_examples"] == 128
    assert out["steps"] == 15 * 8 and out["feature_dim"] == 3 and out["num_classes"] == 8
    assert out["loss"] < 0.5  # started at log(8) = 2.08
    # Augmented views through the frozen backbone (crops of a flat colour keep it).
    aug = linear.linear_probe(mean_backbone(), train_src, eval_src, image_size=8, epochs=8,
                              lr=4.0, batch_size=32, seed=0, precompute=False,
                              train_examples=128)
    assert aug["top1"] == 100.0 and aug["train_examples"] == 128


def test_precomputed_features_are_the_centre_crop_forward_pass():
    src = planted_source(8, 2)
    backbone = conv_backbone()
    feats, labels = extract_features(backbone, pipeline.eval_dataset(src, 12, 512))
    crops = tf.stack([pipeline.eval_transform(im, 12) for im in src.images])
    np.testing.assert_allclose(feats, backbone(crops, training=False)["pooled"], atol=1e-6)
    np.testing.assert_array_equal(labels, src.labels)
    # Training on precomputed features == streaming the same centre crops, batch for batch.
    kwargs = dict(image_size=12, epochs=3, lr=0.5, batch_size=24, seed=5, schedule="step")
    pre = linear.linear_probe(backbone, src, src, precompute=True, **kwargs)
    before = snapshot(backbone)
    stream = linear.linear_probe(backbone, src, src, precompute=False, augment=False, **kwargs)
    for a, b in zip(before, snapshot(backbone)):  # frozen: weights and BN statistics
        np.testing.assert_array_equal(a, b)
    assert stream["loss"] == pytest.approx(pre["loss"], rel=1e-5)
    assert (stream["top1"], stream["top5"]) == (pre["top1"], pre["top5"])
    assert pre["top5"] >= pre["top1"]


def test_semi_supervised_fine_tunes_backbone_in_training_mode():
    train_src, eval_src = planted_source(40, 3), planted_source(16, 4, "test")
    indices = linear.balanced_subset(train_src.labels, 0.25, seed=0)  # 10 per class
    backbone = conv_backbone()
    before = snapshot(backbone)
    out = linear.semi_supervised(backbone, train_src, eval_src, indices, image_size=8,
                                 epochs=6, lr_backbone=0.05, lr_head=1.0, batch_size=16)
    assert out["train_examples"] == 80 and out["steps"] == 6 * 5
    assert out["top1"] == 100.0 and out["top5"] >= out["top1"]
    bn = next(l for l in backbone.layers if isinstance(l, keras.layers.BatchNormalization))
    assert not np.allclose(bn.moving_mean.numpy(), 0.0)  # BN ran in training mode
    assert not np.allclose(backbone.layers[1].kernel.numpy(), before[0])  # backbone learnt


def test_unlabelled_split_is_refused():
    labelled, unlabelled = planted_source(2, 0), planted_source(2, 0, num_classes=0)
    with pytest.raises(UserError, match="has no labels"):
        linear.linear_probe(mean_backbone(), unlabelled, labelled, image_size=8, epochs=1,
                            lr=0.1)
    with pytest.raises(UserError, match="has no labels"):
        linear.semi_supervised(mean_backbone(), labelled, unlabelled, [0], image_size=8,
                               epochs=1, lr_backbone=0.1, lr_head=0.1)


# ---------------------------------------------------------------- end to end


def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=ROOT, CUDA_VISIBLE_DEVICES="")
    return subprocess.Popen([sys.executable, "-m", "tfssl.evaluate", *args], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc):
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("evaluate") / "run"
    config = tiny_config(path, "moco_v2", steps=1)
    _, model = train(config, verbose=0)
    return path, config, model


def test_knn_and_linear_from_the_command_line(run_dir):
    path, config, model = run_dir
    caps = ["--train_examples=256", "--eval_examples=128"]
    knn_proc = run_cli(f"--model_dir={path}", "--protocol=knn", "--knn_k=10", *caps)
    lin_proc = run_cli(f"--model_dir={path}", "--protocol=linear", "--linear_epochs=1",
                       "--linear_batch_size=64", *caps)
    for protocol, proc in (("knn", knn_proc), ("linear", lin_proc)):
        code, out, err = finish(proc)
        assert code == 0, err
        assert len(out.strip().splitlines()) == 1 and SUMMARY.match(out.strip()), out
        record = json.load(open(path / f"eval_{protocol}.json"))
        assert out.strip() == summary_line(record)
        assert record["step"] == 1 and record["checkpoint"].endswith("ckpt-1")
        assert record["flags"]["train_examples"] == 256 and record["method"] == "moco_v2"
        r = record["results"]
        assert 0.0 <= r["top1"] <= r["top5"] <= 100.0
    knn_record = json.load(open(path / "eval_knn.json"))
    assert knn_record["settings"] == {"knn_k": 10, "knn_temperature": 0.1}
    from tfssl.data.sources import load_source
    t = dataclasses.replace(config.train, knn_k=10, knn_train_examples=256,
                            knn_eval_examples=128)
    expected = knn_eval(model.backbone, dataclasses.replace(config, train=t),
                        load_source("fashion_mnist", "train"), load_source("fashion_mnist", "test"))
    assert knn_record["results"] == pytest.approx(expected, abs=1e-9)
    lin = json.load(open(path / "eval_linear.json"))
    assert lin["settings"]["linear_lr_effective"] == pytest.approx(0.1 * 64 / 256)
    assert (lin["results"]["train_examples"], lin["results"]["eval_examples"],
            lin["results"]["steps"]) == (256, 128, 4)


def test_semi_writes_its_subset_and_record(run_dir):
    path, _, _ = run_dir
    cfg = EvalConfig(model_dir=str(path), protocol="semi", semi_fraction=0.1,
                     train_examples=200, eval_examples=64, semi_epochs=1, semi_batch_size=16)
    record = evaluate(cfg)
    from tfssl.data.sources import load_source
    labels = load_source("fashion_mnist", "train").labels[:200]
    expected = linear.balanced_subset(labels, 0.1, seed=0)
    file = path / "semi_0.1_first200_indices.txt"
    np.testing.assert_array_equal(np.loadtxt(file, dtype=np.int64), expected)
    assert record["settings"]["subset_file"] == str(file) and not record["settings"][
        "subset_reused"]
    assert record["results"]["train_examples"] == expected.size
    assert record["settings"]["semi_lr_head_effective"] == pytest.approx(0.1 * 16 / 256)
    assert json.load(open(path / "eval_semi.json")) == record
    assert SUMMARY.match(summary_line(record))


def test_bad_input(tmp_path):
    missing = run_cli(f"--model_dir={tmp_path}", "--protocol=knn")
    unknown = run_cli(f"--model_dir={tmp_path}", "--protocol=nope")
    for proc, code, message in ((missing, 2, "config.json not found"),
                                (unknown, None, "--protocol")):
        rc, _, err = finish(proc)
        assert rc == code if code else rc != 0
        assert "Traceback" not in err and message in err, err
        assert len([l for l in err.splitlines() if "error" in l.lower()]) == 1, err
    for kwargs, message in ((dict(semi_fraction=0.0), "--semi_fraction=0.0 must be in"),
                            (dict(semi_fraction=1.5), "--semi_fraction=1.5"),
                            (dict(protocol=None), "--protocol is required"),
                            (dict(protocol="svm"), "--protocol=svm must be one of"),
                            (dict(model_dir=""), "--model_dir is required")):
        cfg = dataclasses.replace(EvalConfig(model_dir=str(tmp_path), protocol="semi"),
                                  **kwargs)
        with pytest.raises(UserError, match=re.escape(message)):
            check_eval_config(cfg)
    untrained = tiny_config(tmp_path / "untrained")
    os.makedirs(untrained.model_dir)
    (tmp_path / "untrained" / "config.json").write_text(untrained.to_json())  # no checkpoint
    with pytest.raises(UserError, match="no checkpoint"):
        evaluate(EvalConfig(model_dir=str(tmp_path / "untrained"), protocol="knn"))
