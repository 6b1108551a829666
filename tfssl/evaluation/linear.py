"""Linear probe and semi-supervised fine-tuning (``docs/METHODS.md``, "Evaluation protocols").

Linear probe, frozen backbone (BN in inference mode, no gradient into it)::

    f      = backbone(x, training=False)["pooled"]          [B, D]
    logits = f W + b                                        [B, C], W ~ N(0, 0.01^2), b = 0
    loss   = mean_i CE(softmax(logits_i), y_i)

trained with SGD momentum 0.9 (torch semantics, :class:`tfssl.optim.MomentumSGD`), no
weight decay, features not normalised (MoCo's / solo-learn's probe). Two input paths:

* ``precompute=True``: ``f`` of the centre crop (``pipeline.eval_transform``) of every
  training example is extracted once and the head trains on those fixed features
  (no augmentation; one backbone pass in all, so 100 epochs cost seconds).
* ``precompute=False``: every epoch streams random-resized-crop + flip views
  (``views.weak``: crop scale (0.2, 1), flip 0.5) through the frozen backbone.
  ``augment=False`` streams centre crops instead; that reproduces the precompute
  path batch for batch (a test checks it).

Semi-supervised fine-tuning: the backbone (BN in *training* mode, running statistics
updated) and a new linear head train together on a labelled subset
(:func:`balanced_subset`) with ``views.weak`` augmentation, SGD momentum 0.9, one
cosine-decayed learning rate for the backbone and another for the head, no weight
decay (SimCLR's fine-tuning uses no regulariser). The backbone is changed in place.

Learning rates, per optimizer step ``t`` of ``T = epochs * ceil(N / B)`` (``lr`` is the
effective rate; the entry point applies ``base * B / 256`` and logs both)::

    cosine: lr_t = lr * (1 + cos(pi * t / T)) / 2          (schedules.warmup_cosine_lr, W = 0)
    step:   lr_t = lr * 0.1 ** #{m : t >= m * ceil(N / B)}, m in {round(0.6 E), round(0.8 E)}

(``step`` is the 60/80-of-100-epoch schedule of the ReSSL/MoCo probes; repeated or
zero milestones of very short runs are merged / raised to epoch 1.)

Order and randomness: with an in-memory source epoch ``e`` visits the examples in the
order ``np.random.default_rng([seed, e]).permutation(N)`` (on both paths, hence the
equality above); a streaming source uses a shuffle buffer seeded from ``(seed, e)``.
The augmentation seed of the example at position ``p`` of epoch ``e`` is
``fold_in(fold_in([seed, 0xE7A1], e), p)``. Top-k accuracy: the label is among the
``min(k, C)`` largest logits (ties: lower class index first), in percent.
"""

from __future__ import annotations

import math
import os

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tfssl import optim, schedules
from tfssl.data import augment, pipeline
from tfssl.data import views as views_lib
from tfssl.errors import UserError
from tfssl.evaluation.knn import extract_features

__all__ = ["balanced_subset", "load_or_make_subset", "linear_probe", "semi_supervised",
           "lr_schedule", "topk_accuracy", "epoch_order", "SCHEDULES"]

SCHEDULES = ("cosine", "step")
EXTRACT_BATCH = 512        # batch of feature extraction and evaluation passes
MOMENTUM = 0.9
_AUG_SALT = 0xE7A1         # keeps evaluation augmentation seeds apart from pretraining's
_SHUFFLE_BUFFER = 10_000   # streaming sources only


# --------------------------------------------------------------------- subsets


def balanced_subset(labels, fraction: float, seed: int) -> np.ndarray:
    """A class-stratified random subset: ``max(1, round(fraction * n_c))`` of class ``c``.

    Every class with labelled examples keeps at least one; on a balanced split (CIFAR,
    STL-10, Fashion-MNIST) every class gets exactly the same count, e.g. 60 per class
    for 1% of Fashion-MNIST's 60000. Class ``c``'s members are drawn with
    ``np.random.default_rng([seed, c])``, independently of the other classes.
    Unlabelled examples (label -1) are never picked.

    Args:
        labels: ``int [N]`` class labels (``-1`` = unlabelled).
        fraction: in ``(0, 1]``.
        seed: integer seed.

    Returns:
        ``int64 [M]`` distinct indices into ``labels``, ascending.

    Raises:
        UserError: ``fraction`` outside ``(0, 1]`` or no labelled example.
    """
    if not 0.0 < fraction <= 1.0:
        raise UserError(f"--semi_fraction={fraction} must be in (0, 1] (0.01 = 1% labels).")
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    classes = np.unique(labels[labels >= 0])
    if classes.size == 0:
        raise UserError("the training split has no labelled examples to draw a subset from.")
    picked = []
    for c in classes:
        members = np.flatnonzero(labels == c)
        count = min(members.size, max(1, int(math.floor(fraction * members.size + 0.5))))
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(c)])
        picked.append(rng.choice(members, count, replace=False))
    return np.sort(np.concatenate(picked)).astype(np.int64)


def load_or_make_subset(path: str, labels, fraction: float, seed: int):
    """The subset stored in ``path`` (one index per line), or a new one written there.

    An existing file wins over ``fraction`` and ``seed`` (so every evaluation of a run
    uses the same labelled examples); delete it to draw again.

    Returns:
        ``(indices int64 [M], reused: bool)``.

    Raises:
        UserError: a file that is not one distinct labelled in-range index per line.
    """
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    fix = f"fix or delete {path} to draw a new subset"
    if os.path.exists(path):
        try:
            with open(path) as f:
                indices = np.asarray([int(line) for line in f if line.strip()], np.int64)
        except ValueError:
            raise UserError(f"{path} must hold one integer index per line; {fix}.") from None
        if indices.size == 0 or np.unique(indices).size != indices.size:
            raise UserError(f"{path} is empty or repeats an index; {fix}.")
        if indices.min() < 0 or indices.max() >= labels.size or (labels[indices] < 0).any():
            raise UserError(f"{path} has indices outside [0, {labels.size}) or of unlabelled "
                            f"examples; {fix}.")
        return indices, True
    indices = balanced_subset(labels, fraction, seed)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("".join(f"{i}\n" for i in indices))
    os.replace(tmp, path)
    return indices, False


# ------------------------------------------------------------------ utilities


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """Visiting order of ``n`` examples in ``epoch``: ``default_rng([seed, epoch])``."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch)]).permutation(n)


def lr_schedule(kind: str, lr: float, epochs: int, steps_per_epoch: int):
    """The ``cosine`` or ``step`` schedule of the module docstring (Keras schedule)."""
    total = epochs * steps_per_epoch
    if kind == "cosine":
        return schedules.WarmupCosine(lr, total, 0)
    if kind == "step":
        marks = sorted({max(1, int(math.floor(f * epochs + 0.5))) for f in (0.6, 0.8)})
        return schedules.StepDecay(lr, [m * steps_per_epoch for m in marks], 0.1)
    raise UserError(f"unknown learning-rate schedule {kind!r}; known: {', '.join(SCHEDULES)}")


def topk_accuracy(logits, labels) -> dict[str, float]:
    """``{"top1", "top5"}`` in percent: label among the ``min(k, C)`` largest scores."""
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    ranking = np.argsort(-np.asarray(logits), axis=1, kind="stable")          # [N, C]
    hits = ranking == labels[:, None]
    return {"top1": float(100.0 * hits[:, :1].any(axis=1).mean()),
            "top5": float(100.0 * hits[:, :5].any(axis=1).mean())}


def _pooled(backbone, images, training):
    """``backbone(images)["pooled"]`` as float32 ``[B, D]``."""
    return tf.cast(backbone(images, training=training)["pooled"], tf.float32)


def _cross_entropy(logits, labels):
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(labels, tf.int64), logits=logits))


def _head(num_classes: int, dim: int, seed: int) -> keras.layers.Dense:
    head = keras.layers.Dense(
        num_classes, kernel_initializer=keras.initializers.RandomNormal(stddev=0.01, seed=seed),
        bias_initializer="zeros", name="linear_head")
    head.build((None, dim))
    return head


def _sgd(schedule, variables):
    optimizer = optim.build_optimizer("sgd", schedule, weight_decay=0.0, momentum=MOMENTUM)
    optimizer.build(variables)
    return optimizer


def _check(train_source, eval_source, epochs, batch_size, **lrs) -> int:
    """Validates the arguments of a protocol; returns the number of classes."""
    for source in (train_source, eval_source):
        if not source.num_classes:
            raise UserError(f"--dataset={source.name} split {source.split!r} has no labels; "
                            "the evaluation protocols need labelled train and eval splits.")
    if epochs < 1 or batch_size < 1:
        raise UserError(f"evaluation needs epochs >= 1 and batch size >= 1, got {epochs}, "
                        f"{batch_size}.")
    for name, value in lrs.items():
        if not value >= 0:
            raise UserError(f"{name} must be >= 0, got {value}.")
    return int(train_source.num_classes)


def _epochs(source, indices, *, image_size, batch_size, seed, spec):
    """``epoch -> tf.data.Dataset`` of ``(images [B, S, S, 3], labels [B])`` batches.

    Examples ``indices`` of ``source`` (in-memory: visited in :func:`epoch_order`);
    ``spec`` is the :class:`views.ViewSpec` of the training view, None for centre crops.
    """
    base = tf.constant([seed, _AUG_SALT], tf.int64)

    @tf.function  # traced once per image shape, not once per epoch's dataset
    def view(image, epoch, position):
        if spec is None:
            return pipeline.eval_transform(image, image_size)
        return views_lib.apply_view(image, spec, augment.fold(augment.fold(base, epoch), position))

    indices = np.asarray(indices, np.int64)
    if source.in_memory:
        images, labels = tf.constant(source.images), tf.constant(source.labels)

        def epoch_dataset(epoch):
            order = indices[epoch_order(indices.size, seed, epoch)]
            ds = tf.data.Dataset.from_tensor_slices((np.arange(order.size), order))
            ds = ds.map(lambda p, i: (view(tf.gather(images, i), tf.constant(epoch, tf.int64), p),
                                      tf.gather(labels, i)),
                        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
        return epoch_dataset

    keep = np.zeros(source.num_examples, bool)
    keep[indices] = True
    keep = tf.constant(keep)

    def epoch_dataset(epoch):  # re-reads the split every epoch
        ds = source.as_dataset().enumerate().filter(
            lambda i, ex: tf.logical_and(tf.gather(keep, i), ex["label"] >= 0))
        shuffle_seed = int(np.random.default_rng([int(seed) & 0xFFFFFFFF, epoch]).integers(2**31))
        ds = ds.map(lambda i, ex: ex).shuffle(_SHUFFLE_BUFFER, seed=shuffle_seed).enumerate()
        ds = ds.map(lambda p, ex: (view(ex["image"], tf.constant(epoch, tf.int64), p),
                                   ex["label"]),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    return epoch_dataset


def _fit(step, epoch_dataset, epochs, what):
    """Runs ``step(x, y) -> loss`` over every batch of every epoch; last epoch's mean loss."""
    mean = float("nan")
    for epoch in range(epochs):
        total, count = 0.0, 0
        for x, y in epoch_dataset(epoch):
            n = int(y.shape[0])
            total, count = total + float(step(x, y)) * n, count + n
        mean = total / max(count, 1)
        logging.info("%s epoch %d/%d: loss %.4f", what, epoch + 1, epochs, mean)
    return mean


def _predict(fn, dataset):
    """``(logits [N, C], labels [N])`` of ``fn(images)`` over ``dataset``."""
    fn = tf.function(fn, reduce_retracing=True)
    logits, labels = [], []
    for images, y in dataset:
        logits.append(np.asarray(fn(images)))
        labels.append(np.asarray(y).astype(np.int64))
    if not logits:
        raise UserError("the evaluation split is empty.")
    return np.concatenate(logits), np.concatenate(labels)


# -------------------------------------------------------------------- protocols


def linear_probe(backbone, train_source, eval_source, *, image_size: int, epochs: int,
                 lr: float, batch_size: int = 256, schedule: str = "cosine",
                 precompute: bool = True, seed: int = 0, train_examples: int = 0,
                 eval_examples: int = 0, augment: bool = True) -> dict:
    """Trains a linear classifier on the frozen ``backbone`` and evaluates it.

    Args:
        backbone: ``backbone(images [B, S, S, 3] in [0, 1], training) -> {"pooled": [B, D]}``;
            not modified.
        train_source, eval_source: labelled :class:`tfssl.data.sources.Source`.
        image_size: ``S``, side of the views.
        epochs: passes over the training examples (``E``).
        lr: effective peak learning rate (already batch-scaled).
        batch_size: ``B``.
        schedule: ``"cosine"`` or ``"step"`` (module docstring).
        precompute: train on features of centre crops extracted once (True) or on
            augmented views through the backbone every epoch (False).
        seed: head initialisation, example order, augmentation.
        train_examples, eval_examples: use only the first N examples (0 = all).
        augment: with ``precompute=False``, False streams centre crops (tests).

    Returns:
        ``{"top1", "top5"}`` (percent, eval split) plus ``loss`` (last epoch's mean
        training loss), ``train_examples``, ``eval_examples``, ``steps``,
        ``num_classes``, ``feature_dim``.

    Raises:
        UserError: an unlabelled split, ``epochs``/``batch_size`` < 1, ``lr`` < 0,
            unknown ``schedule``.
    """
    num_classes = _check(train_source, eval_source, epochs, batch_size, lr=lr)
    lr_schedule(schedule, lr, epochs, 1)  # validates the name before any work
    eval_x, eval_y = extract_features(backbone, pipeline.eval_dataset(
        eval_source, image_size, EXTRACT_BATCH, limit=eval_examples))
    if precompute:
        train_x, train_y = extract_features(backbone, pipeline.eval_dataset(
            train_source, image_size, EXTRACT_BATCH, limit=train_examples))
        keep = train_y >= 0
        train_x, train_y = train_x[keep], train_y[keep]
        n = train_y.size

        def epoch_dataset(epoch):
            order = epoch_order(n, seed, epoch)
            return tf.data.Dataset.from_tensor_slices(
                (train_x[order], train_y[order])).batch(batch_size)
        encode = tf.identity
    else:
        pool = min(train_examples or train_source.num_examples, train_source.num_examples)
        indices = np.arange(pool)
        if train_source.in_memory:
            indices = indices[train_source.labels[:pool] >= 0]
        n = indices.size
        spec = views_lib.weak(image_size)[0] if augment else None
        epoch_dataset = _epochs(train_source, indices, image_size=image_size,
                                batch_size=batch_size, seed=seed, spec=spec)

        def encode(images):
            return _pooled(backbone, images, False)
    if n == 0:
        raise UserError("the linear probe has no labelled training examples.")

    steps_per_epoch = -(-n // batch_size)
    head = _head(num_classes, eval_x.shape[1], seed)
    optimizer = _sgd(lr_schedule(schedule, lr, epochs, steps_per_epoch),
                     head.trainable_variables)

    @tf.function(reduce_retracing=True)
    def step(x, y):
        features = tf.stop_gradient(encode(x))
        with tf.GradientTape() as tape:
            loss = _cross_entropy(head(features), y)
        grads = tape.gradient(loss, head.trainable_variables)
        optimizer.apply_gradients(zip(grads, head.trainable_variables))
        return loss

    loss = _fit(step, epoch_dataset, epochs, "linear probe")
    logits = np.concatenate([np.asarray(head(eval_x[i:i + EXTRACT_BATCH]))
                             for i in range(0, eval_y.size, EXTRACT_BATCH)])
    return {**topk_accuracy(logits, eval_y), "loss": loss, "train_examples": int(n),
            "eval_examples": int(eval_y.size), "steps": epochs * steps_per_epoch,
            "num_classes": num_classes, "feature_dim": int(eval_x.shape[1])}


def semi_supervised(backbone, train_source, eval_source, indices, *, image_size: int,
                    epochs: int, lr_backbone: float, lr_head: float, batch_size: int = 256,
                    seed: int = 0, eval_examples: int = 0) -> dict:
    """Fine-tunes ``backbone`` and a new linear head on ``indices``; evaluates both.

    Args:
        backbone: as in :func:`linear_probe`, but updated in place (weights, BN stats).
        indices: ``int [M]`` labelled training examples (:func:`balanced_subset`).
        epochs: passes over the subset.
        lr_backbone, lr_head: effective peak learning rates (cosine decay to 0).
        train_source, eval_source, image_size, batch_size, seed, eval_examples: as in
            :func:`linear_probe`.

    Returns:
        ``{"top1", "top5"}`` (percent, eval split, BN in inference mode) plus
        ``loss``, ``train_examples``, ``eval_examples``, ``steps``, ``num_classes``.

    Raises:
        UserError: an unlabelled split, bad sizes or learning rates, indices out of
            range.
    """
    num_classes = _check(train_source, eval_source, epochs, batch_size,
                         lr_backbone=lr_backbone, lr_head=lr_head)
    indices = np.asarray(indices, np.int64).reshape(-1)
    if indices.size == 0 or indices.min() < 0 or indices.max() >= train_source.num_examples:
        raise UserError(f"semi-supervised indices must be a non-empty subset of "
                        f"[0, {train_source.num_examples}).")
    epoch_dataset = _epochs(train_source, indices, image_size=image_size, batch_size=batch_size,
                            seed=seed, spec=views_lib.weak(image_size)[0])
    steps_per_epoch = -(-indices.size // batch_size)
    dim = int(_pooled(backbone, tf.zeros([1, image_size, image_size, 3]), False).shape[-1])
    head = _head(num_classes, dim, seed)
    backbone_vars = list(backbone.trainable_variables)
    head_vars = list(head.trainable_variables)
    opt_backbone = _sgd(lr_schedule("cosine", lr_backbone, epochs, steps_per_epoch),
                        backbone_vars)
    opt_head = _sgd(lr_schedule("cosine", lr_head, epochs, steps_per_epoch), head_vars)

    @tf.function(reduce_retracing=True)
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = _cross_entropy(head(_pooled(backbone, x, True)), y)
        grads = tape.gradient(loss, backbone_vars + head_vars)
        opt_backbone.apply_gradients(zip(grads[:len(backbone_vars)], backbone_vars))
        opt_head.apply_gradients(zip(grads[len(backbone_vars):], head_vars))
        return loss

    loss = _fit(step, epoch_dataset, epochs, "semi-supervised")
    logits, labels = _predict(lambda x: head(_pooled(backbone, x, False)), pipeline.eval_dataset(
        eval_source, image_size, EXTRACT_BATCH, limit=eval_examples))
    return {**topk_accuracy(logits, labels), "loss": loss, "train_examples": int(indices.size),
            "eval_examples": int(labels.size), "steps": epochs * steps_per_epoch,
            "num_classes": num_classes}
