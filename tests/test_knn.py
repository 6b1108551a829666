"""Weighted kNN against a numpy transcription of InstDisc's vote, and planted examples."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfssl.errors import UserError
from tfssl.evaluation import knn


def numpy_weighted_knn(query, bank, bank_labels, num_classes, k, tau):
    """scores[q, c] = sum over the k most cosine-similar bank rows of exp(s / tau) [y == c]."""
    query = query / np.linalg.norm(query, axis=1, keepdims=True)
    bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    sim = query.astype(np.float64) @ bank.T.astype(np.float64)
    k = min(k, bank.shape[0])
    scores = np.zeros((query.shape[0], num_classes))
    for i, row in enumerate(sim):
        top = np.argsort(-row)[:k]
        for j in top:
            scores[i, bank_labels[j]] += np.exp(row[j] / tau)
    return scores


def _random(seed=0, nq=37, nb=300, dim=16, num_classes=7):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(nq, dim)).astype(np.float32),
            rng.normal(size=(nb, dim)).astype(np.float32) * 3.0,   # scale: normalised inside
            rng.integers(0, num_classes, size=nb), num_classes)


@pytest.mark.parametrize("k,tau", [(20, 0.1), (200, 0.07), (1, 0.5)])
def test_scores_match_numpy_transcription(k, tau):
    query, bank, labels, c = _random()
    got = knn.knn_predict(query, bank, labels, c, k=k, temperature=tau, batch_size=16)
    want = numpy_weighted_knn(query, bank, labels, c, k, tau)
    assert got.shape == (query.shape[0], c) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_bank_chunk_merge_equals_unchunked():
    query, bank, labels, c = _random(seed=1)
    whole = knn.knn_predict(query, bank, labels, c, k=50, batch_size=10)
    for chunk in (7, 64, 299):  # chunks smaller than k, larger than k, ragged last chunk
        chunked = knn.knn_predict(query, bank, labels, c, k=50, batch_size=10, bank_chunk=chunk)
        np.testing.assert_allclose(chunked, whole, rtol=1e-5)


def test_planted_example_exact_top1():
    # Two tight clusters along e0 and e1; queries near each cluster.
    bank = np.array([[1, 0.01], [1, -0.01], [0.98, 0.05], [0.01, 1], [-0.02, 1], [0.04, 0.99]],
                    np.float32)
    bank_labels = np.array([0, 0, 0, 1, 1, 1])
    query = np.array([[1, 0.1], [0.1, 1], [0.9, 0.2], [0.3, 1.0]], np.float32)
    query_labels = np.array([0, 1, 0, 0])  # last one planted wrong
    acc = knn.knn_accuracy(query, query_labels, bank, bank_labels, num_classes=2, k=3)
    assert acc == {"top1": 75.0, "top5": 100.0}
    scores = knn.knn_predict(query, bank, bank_labels, 2, k=3)
    np.testing.assert_array_equal(scores.argmax(1), [0, 1, 0, 1])
    # With k = 3 every neighbour of query 0 is in cluster 0: class-1 score is exactly 0.
    assert scores[0, 1] == 0.0 and scores[0, 0] > 0


def test_k1_gives_nearest_neighbour_label():
    query, bank, labels, c = _random(seed=2)
    qn = query / np.linalg.norm(query, axis=1, keepdims=True)
    bn = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    nearest = labels[np.argmax(qn @ bn.T, axis=1)]
    scores = knn.knn_predict(query, bank, labels, c, k=1)
    np.testing.assert_array_equal(scores.argmax(1), nearest)
    assert ((scores > 0).sum(1) == 1).all()
    acc = knn.knn_accuracy(query, nearest, bank, labels, c, k=1)
    assert acc["top1"] == 100.0


def test_k_larger_than_bank_is_clamped():
    query, bank, labels, c = _random(seed=3, nb=12)
    big = knn.knn_predict(query, bank, labels, c, k=200)
    exact = knn.knn_predict(query, bank, labels, c, k=12)
    np.testing.assert_allclose(big, exact, rtol=1e-6)
    # Every bank entry votes: the total weight is the sum over the whole bank.
    qn = query / np.linalg.norm(query, axis=1, keepdims=True)
    bn = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    np.testing.assert_allclose(big.sum(1), np.exp(qn @ bn.T / 0.1).sum(1), rtol=1e-5)
    chunked = knn.knn_predict(query, bank, labels, c, k=200, bank_chunk=5)
    np.testing.assert_allclose(chunked, exact, rtol=1e-5)


def test_top5_at_least_top1_and_in_range():
    query, bank, labels, c = _random(seed=4, num_classes=10)
    rng = np.random.default_rng(4)
    acc = knn.knn_accuracy(query, rng.integers(0, c, size=query.shape[0]), bank, labels, c,
                           k=20, batch_size=8)
    assert set(acc) == {"top1", "top5"}
    assert 0.0 <= acc["top1"] <= acc["top5"] <= 100.0


def test_invalid_inputs():
    query, bank, labels, c = _random()
    with pytest.raises(UserError):
        knn.knn_predict(query, bank[:0], labels[:0], c)
    with pytest.raises(UserError):
        knn.knn_predict(query[:, :5], bank, labels, c)
    with pytest.raises(UserError):
        knn.knn_predict(query, bank, labels, c, k=0)
    with pytest.raises(UserError):
        knn.knn_accuracy(query, labels[:3], bank, labels, c)


def test_extract_features_uses_pooled_output_in_inference_mode():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = keras.layers.BatchNormalization()(x)
    fmap = keras.layers.ReLU()(x)
    pooled = keras.layers.GlobalAveragePooling2D()(fmap)
    backbone = keras.Model(inputs, {"pooled": pooled, "feature_map": fmap})
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(10, 8, 8, 3)).astype(np.float32)
    labels = rng.integers(0, 3, size=10).astype(np.int32)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)  # ragged last batch
    feats, labs = knn.extract_features(backbone, dataset)
    assert feats.shape == (10, 4) and feats.dtype == np.float32
    assert labs.dtype == np.int64
    np.testing.assert_array_equal(labs, labels)
    expected = backbone(images, training=False)["pooled"].numpy()
    np.testing.assert_allclose(feats, expected, rtol=1e-5, atol=1e-6)
