"""Weighted k-nearest-neighbour monitor (InstDisc, Wu et al. 2018; MoCo / solo-learn).

For a query ``q`` and a bank of labelled features ``(b_i, y_i)``, all L2-normalised::

    s_i        = q . b_i                                   (cosine similarity)
    N_k(q)     = indices of the k largest s_i
    score_c(q) = sum_{i in N_k(q)} exp(s_i / tau) * [y_i == c]
    prediction = argmax_c score_c(q)

Defaults ``k = 200``, ``tau = 0.1`` (``docs/METHODS.md``, "Evaluation protocols").

Memory: queries are processed ``batch_size`` at a time and the bank
``bank_chunk`` rows at a time; the top-k of each bank chunk is merged with the
running top-k, so at most a ``[batch_size, bank_chunk]`` similarity block exists
(never ``[Nq, Nb]``). The default chunk of 65536 holds a 60k-image bank at once.
If ``k`` exceeds the bank size, ``k`` is clamped to the bank size (every bank
entry votes). Ties in similarity are broken by ``tf.math.top_k`` (lower index
first within a chunk); ties in class score by the lower class index.
"""

from __future__ import annotations

import weakref
from typing import Iterable

import numpy as np
import tensorflow as tf

from tfssl.errors import UserError

__all__ = ["knn_predict", "knn_accuracy", "extract_features"]


@tf.function
def _chunk_topk(queries, bank, bank_labels, k: int):
    """Top-k of one bank chunk. ``queries [b, D]``, ``bank [n, D]`` (normalised),
    ``bank_labels [n]`` -> ``(similarities [b, k'], labels [b, k'])``, ``k' = min(k, n)``."""
    sim = tf.matmul(queries, bank, transpose_b=True)                     # [b, n]
    values, indices = tf.math.top_k(sim, k=min(k, bank.shape[0]))
    return values, tf.gather(bank_labels, indices)


@tf.function
def _merge_topk(values_a, labels_a, values_b, labels_b, k: int):
    """Top-k of the union of two candidate sets ``[b, ka]`` and ``[b, kb]``."""
    values = tf.concat([values_a, values_b], axis=1)
    labels = tf.concat([labels_a, labels_b], axis=1)
    values, pos = tf.math.top_k(values, k=min(k, values.shape[1]))
    return values, tf.gather(labels, pos, batch_dims=1)


@tf.function
def _vote(values, labels, num_classes: int, temperature):
    """``scores[b, c] = sum_j exp(values[b, j] / tau) * [labels[b, j] == c]`` -> ``[b, C]``.

    A segment sum instead of a ``[b, k, C]`` one-hot, so 1000 classes stay cheap.
    """
    weights = tf.exp(values / temperature)                              # [b, k]
    rows = tf.shape(values)[0]
    segment = (tf.range(rows, dtype=tf.int64)[:, None] * num_classes
               + tf.cast(labels, tf.int64))                             # [b, k]
    flat = tf.math.unsorted_segment_sum(tf.reshape(weights, [-1]), tf.reshape(segment, [-1]),
                                        num_segments=tf.cast(rows, tf.int64) * num_classes)
    return tf.reshape(flat, [rows, num_classes])


def knn_predict(query_features, bank_features, bank_labels, num_classes: int, k: int = 200,
                temperature: float = 0.1, batch_size: int = 256,
                bank_chunk: int = 65536) -> np.ndarray:
    """Weighted kNN class scores (formula in the module docstring).

    Args:
        query_features: ``[Nq, D]`` float features (normalised here).
        bank_features: ``[Nb, D]`` float features (normalised here).
        bank_labels: ``[Nb]`` integer labels in ``[0, num_classes)``.
        num_classes: ``C``.
        k: number of neighbours; clamped to ``Nb`` when larger.
        temperature: ``tau`` > 0.
        batch_size: queries per chunk.
        bank_chunk: bank rows per similarity block.

    Returns:
        ``float32 [Nq, C]`` scores ``sum exp(s / tau)`` over the neighbours of each class.

    Raises:
        UserError: empty bank, mismatched shapes, or non-positive ``k``/``temperature``/sizes.
    """
    query = tf.math.l2_normalize(tf.cast(tf.convert_to_tensor(query_features), tf.float32), -1)
    bank = tf.math.l2_normalize(tf.cast(tf.convert_to_tensor(bank_features), tf.float32), -1)
    labels = tf.cast(tf.convert_to_tensor(bank_labels), tf.int64)
    num_bank = int(bank.shape[0])
    if num_bank == 0:
        raise UserError("kNN needs a non-empty feature bank")
    if query.shape.rank != 2 or bank.shape.rank != 2 or query.shape[1] != bank.shape[1]:
        raise UserError(f"kNN features must be [N, D] with equal D, got query {query.shape} "
                        f"and bank {bank.shape}")
    if labels.shape != (num_bank,):
        raise UserError(f"bank labels must have shape [{num_bank}], got {labels.shape}")
    if k <= 0 or temperature <= 0 or batch_size <= 0 or bank_chunk <= 0 or num_classes <= 0:
        raise UserError(f"kNN needs k, temperature, batch_size, bank_chunk, num_classes > 0; got "
                        f"{k}, {temperature}, {batch_size}, {bank_chunk}, {num_classes}")
    k = min(int(k), num_bank)
    chunks = [(bank[i:i + bank_chunk], labels[i:i + bank_chunk])
              for i in range(0, num_bank, bank_chunk)]
    tau = tf.constant(temperature, tf.float32)
    scores = []
    for start in range(0, int(query.shape[0]), batch_size):
        q = query[start:start + batch_size]
        values, top_labels = _chunk_topk(q, chunks[0][0], chunks[0][1], k)
        for feats, labs in chunks[1:]:
            v, lab = _chunk_topk(q, feats, labs, k)
            values, top_labels = _merge_topk(values, top_labels, v, lab, k)
        scores.append(_vote(values, top_labels, num_classes, tau).numpy())
    if not scores:
        return np.zeros((0, num_classes), np.float32)
    return np.concatenate(scores, axis=0)


def knn_accuracy(query_features, query_labels, bank_features, bank_labels, num_classes: int,
                 k: int = 200, temperature: float = 0.1, batch_size: int = 256,
                 bank_chunk: int = 65536) -> dict[str, float]:
    """Top-1 / top-5 accuracy (percent) of :func:`knn_predict`'s scores.

    A query is top-n correct when its label is among the ``min(n, C)`` classes with
    the highest score (ties: lower class index first; with few neighbours, classes
    with score 0 can fill the top 5, as in MoCo's and solo-learn's monitors).

    Args:
        query_features: ``[Nq, D]``; query_labels: ``[Nq]`` ints.
        bank_features, bank_labels, num_classes, k, temperature, batch_size,
            bank_chunk: as in :func:`knn_predict`.

    Returns:
        ``{"top1": float, "top5": float}`` in ``[0, 100]``.
    """
    query_labels = np.asarray(query_labels).astype(np.int64).reshape(-1)
    scores = knn_predict(query_features, bank_features, bank_labels, num_classes, k=k,
                         temperature=temperature, batch_size=batch_size, bank_chunk=bank_chunk)
    if scores.shape[0] != query_labels.shape[0]:
        raise UserError(f"{scores.shape[0]} query features but {query_labels.shape[0]} labels")
    if scores.shape[0] == 0:
        raise UserError("kNN accuracy needs at least one query")
    ranking = np.argsort(-scores, axis=1, kind="stable")                    # [Nq, C]
    hits = ranking == query_labels[:, None]
    return {"top1": float(100.0 * hits[:, :1].any(axis=1).mean()),
            "top5": float(100.0 * hits[:, :5].any(axis=1).mean())}


_FORWARDS = weakref.WeakKeyDictionary()


def _inference_function(backbone):
    """The backbone's pooled features in inference mode, one ``tf.function`` per
    backbone (traced once per batch shape, not again at every evaluation)."""
    if backbone not in _FORWARDS:
        @tf.function(reduce_retracing=True)
        def forward(images):
            return backbone(images, training=False)["pooled"]

        _FORWARDS[backbone] = forward
    return _FORWARDS[backbone]


def extract_features(backbone, dataset: Iterable) -> tuple[np.ndarray, np.ndarray]:
    """Pooled backbone features of a labelled dataset, in inference mode.

    Args:
        backbone: callable ``backbone(images, training=False) -> {"pooled": [B, C], ...}``
            (``models.resnet.build_backbone``).
        dataset: iterable of ``(images float [B, H, W, 3], labels int [B])`` batches.

    Returns:
        ``(features float32 [N, C], labels int64 [N])`` in dataset order.
    """
    forward = _inference_function(backbone)
    features, labels = [], []
    for images, batch_labels in dataset:
        features.append(np.asarray(forward(images), dtype=np.float32))
        labels.append(np.asarray(batch_labels).astype(np.int64).reshape(-1))
    if not features:
        raise UserError("feature extraction got an empty dataset")
    return np.concatenate(features, axis=0), np.concatenate(labels, axis=0)
