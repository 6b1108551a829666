"""LEWEL's head against a numpy transcription of the authors' ``ObjectNeck`` and its
losses against numpy on the model's own outputs (LEWEL_B and LEWEL_M)."""

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import (tensorboard_events, tiny_config,
                           train_straight_and_resumed)
from tests.test_losses import np_info_nce
from tests.test_methods import real_views
from tfssl.config import validate_run
from tfssl.errors import UserError
from tfssl.methods import lewel
from tfssl.trainer import build_model

STRATEGY = tf.distribute.get_strategy()
rng = np.random.default_rng(0)


def make(tmp_path, method="lewel_b", **overrides):
    config = tiny_config(tmp_path, method, batch=8, queue=32, **overrides)
    return build_model(config, STRATEGY, 10, (0.5,) * 3, (0.5,) * 3)


def unit(x, axis=-1):
    return x / np.linalg.norm(x, axis=axis, keepdims=True)


def np_softmax(x, axis):
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def np_object_neck(x, heat, h, scale=1.0):
    """The authors' ObjectNeck.forward after the projection, channel-first:
    x ``[b, c, hw]`` features, heat ``[b, d, hw]`` -> ``[b, c, d/h]``."""
    b, c, hw = x.shape
    attn = heat / np.linalg.norm(heat, axis=1, keepdims=True)  # F.normalize(dim=1)
    attn = np_softmax(attn / scale, axis=2)
    attn = attn.reshape(b, h, -1, hw)
    xv = x.reshape(b, h, -1, hw)
    obj = xv @ attn.transpose(0, 1, 3, 2)  # (b, nH, c//nH, k)
    return obj.reshape(b, c, attn.shape[2])


@pytest.mark.parametrize("h, scale", [(4, 1.0), (2, 0.5), (1, 1.0)])
def test_aligned_pooling_is_the_authors_object_neck(h, scale):
    b, p, c, d = 3, 9, 16, 8
    feats = rng.normal(size=(b, p, c)).astype(np.float32)
    heat = rng.normal(size=(b, p, d)).astype(np.float32)
    maps = lewel.alignment_maps(heat, scale)
    np.testing.assert_allclose(maps.numpy().sum(axis=1), 1.0, rtol=1e-5)
    got = lewel.aligned_pool(feats, maps, h).numpy()  # [b, d/h, c]
    want = np_object_neck(feats.transpose(0, 2, 1), heat.transpose(0, 2, 1), h, scale)
    assert got.shape == (b, d // h, c)
    np.testing.assert_allclose(got, want.transpose(0, 2, 1), rtol=1e-4, atol=1e-5)


def test_uniform_maps_with_one_group_are_global_average_pooling():
    feats = rng.normal(size=(2, 16, 12)).astype(np.float32)
    maps = np.full((2, 16, 5), 1 / 16, np.float32)
    got = lewel.aligned_pool(feats, maps, 1).numpy()
    for k in range(5):
        np.testing.assert_allclose(got[:, k], feats.mean(axis=1), rtol=1e-5, atol=1e-6)
    # Uniform maps have the largest entropy, ln P; a one-pixel map has 0.
    assert float(lewel.map_entropy(maps)) == pytest.approx(np.log(16), rel=1e-5)
    one = np.zeros((1, 16, 1), np.float32)
    one[0, 3, 0] = 1.0
    assert float(lewel.map_entropy(one)) == pytest.approx(0.0, abs=1e-6)


def test_grouped_in_batch_info_nce_matches_numpy():
    q = unit(rng.normal(size=(6, 3, 8))).astype(np.float32)
    k = unit(rng.normal(size=(6, 3, 8))).astype(np.float32)
    # Query (b, j) against key (b', j) of every image b': the positive is b' = b.
    want = np.mean([-np.log(np.exp(q[i, j] @ k[i, j] / 0.2)
                            / np.exp(k[:, j] @ q[i, j] / 0.2).sum())
                    for j in range(3) for i in range(6)])
    got = float(lewel.info_nce_in_batch_grouped(q, k, 0.2))
    assert got == pytest.approx(want, rel=1e-5)


def np_head(model, x, online):
    """Global and aligned embeddings of ``x`` from the model's own F and g outputs,
    the maps and pooling done in numpy (the authors' ObjectNeck)."""
    backbone = model.backbone if online else model.target_backbone
    proj = model.proj if online else model.target_proj
    aligned_proj = model.aligned_proj if online else model.target_aligned_proj
    feats = backbone(x, training=True)
    fmap = feats["feature_map"].numpy()
    b, hh, ww, c = fmap.shape
    pixels = fmap.reshape(b, hh * ww, c)
    rows = np.concatenate([feats["pooled"].numpy()[:, None], pixels], 1)
    z = proj(rows.reshape(-1, c), training=True).numpy().reshape(b, 1 + hh * ww, -1)
    z_g, heat = z[:, 0], z[:, 1:]
    y = np_object_neck(pixels.transpose(0, 2, 1), heat.transpose(0, 2, 1),
                       model.params.groups).transpose(0, 2, 1)  # [b, d/h, c]
    n = y.shape[1]
    z_a = aligned_proj(y.reshape(b * n, c), training=True).numpy().reshape(b, n, -1)
    return z_g, z_a


def np_mse(p, z):
    return np.mean(2 - 2 * (unit(p) * unit(z)).sum(-1))


@pytest.mark.parametrize("method", ["lewel_b", "lewel_m"])
def test_loss_matches_numpy_on_the_models_outputs(tmp_path, method):
    model = make(tmp_path, method, beta=0.3)
    model.train_step(real_views(model, 8, seed=1))  # queue holds keys, weights moved
    x1, x2 = real_views(model, 8, seed=2)
    g1, a1 = np_head(model, x1, True)
    g2, a2 = np_head(model, x2, True)
    t1, ta1 = np_head(model, x1, False)
    t2, ta2 = np_head(model, x2, False)
    if method == "lewel_b":
        pred = lambda z: model.pred(z, training=True).numpy()  # noqa: E731
        apred = lambda z: model.aligned_pred(  # noqa: E731
            z.reshape(-1, z.shape[-1]), training=True).numpy()
        l_g = np_mse(pred(g1), t2) + np_mse(pred(g2), t1)
        l_a = (np_mse(apred(a1), ta2.reshape(-1, ta2.shape[-1]))
               + np_mse(apred(a2), ta1.reshape(-1, ta1.shape[-1])))
    else:
        queue = model.queue.read().numpy()
        l_g = (np_info_nce(unit(g1), unit(t2), queue, 0.2)
               + np_info_nce(unit(g2), unit(t1), queue, 0.2))

        def grouped(q, k):
            q, k = unit(q), unit(k)
            return np.mean([-np.log(np.exp(q[i, j] @ k[i, j] / 0.2)
                                    / np.exp(k[:, j] @ q[i, j] / 0.2).sum())
                            for j in range(q.shape[1]) for i in range(len(q))])

        l_a = grouped(a1, ta2) + grouped(a2, ta1)
    out = model.compute_losses((x1, x2), tf.constant(1, tf.int64))
    np.testing.assert_allclose(float(out["global"]), l_g, rtol=2e-4)
    np.testing.assert_allclose(float(out["aligned"]), l_a, rtol=2e-4)
    np.testing.assert_allclose(float(out["loss"]), 0.7 * l_g + 0.3 * l_a, rtol=2e-4)
    assert 0 < float(out["map_entropy"]) <= np.log(16) + 1e-5  # 4x4 feature map


def test_lewel_m_enqueues_the_second_views_global_keys(tmp_path):
    model = make(tmp_path, "lewel_m")
    x1, x2 = real_views(model, 8)
    t2, _ = np_head(model, x2, False)
    model.train_step((x1, x2))
    np.testing.assert_allclose(model.queue.read().numpy()[:8], unit(t2), atol=1e-5)


def test_eman_target_does_not_depend_on_the_batch(tmp_path):
    model = make(tmp_path, ema_bn=True)
    x1, _ = real_views(model, 8)
    full = model.target_tower(x1, tf.constant(0, tf.int64))
    half = model.target_tower(x1[:4], tf.constant(0, tf.int64))
    np.testing.assert_allclose(half["global"].numpy(), full["global"].numpy()[:4],
                               rtol=1e-4, atol=1e-5)
    plain = make(tmp_path / "plain")
    full = plain.target_tower(x1, tf.constant(0, tf.int64))
    half = plain.target_tower(x1[:4], tf.constant(0, tf.int64))
    assert not np.allclose(half["global"].numpy(), full["global"].numpy()[:4],
                           atol=1e-3)


def test_defaults_and_bad_combinations(tmp_path):
    with pytest.raises(UserError, match=r"--lewel_groups=3 must divide --proj_dim=16"):
        make(tmp_path, groups=3)
    with pytest.raises(UserError, match="--lewel_beta=1.5"):
        validate_run(tiny_config(tmp_path, "lewel_b", beta=1.5), "lewel_")
    with pytest.raises(UserError, match="--lewel_scale=0.0"):
        validate_run(tiny_config(tmp_path, "lewel_m", scale=0.0), "lewel_")
    p = lewel.LEWELMParams()
    assert (p.groups, p.scale, p.beta, p.temperature, p.aligned_dim) == (4, 1.0, 0.5,
                                                                        0.2, 0)
    model = make(tmp_path / "c", aligned_dim=8)
    assert model.aligned_proj.output_shape[-1] == 8


def test_resume_is_exact_and_tensorboard_draws_the_maps(tmp_path):
    train_straight_and_resumed(tmp_path, "lewel_m")
    acc = tensorboard_events(tmp_path / "a" / "tb")
    assert {"train/global", "train/aligned", "train/map_entropy",
            "lewel/alignment_maps"} <= set(acc.Tags()["tensors"])
    pictures = acc.Tensors("lewel/alignment_maps")
    assert len(pictures) == 2  # one per epoch
    picture = tf.io.decode_png(tf.make_ndarray(pictures[-1].tensor_proto)[2])
    # 8 images of 28 px, each beside its 4 maps, zoomed 4x.
    assert picture.shape == (8 * 28 * 4, 5 * 28 * 4, 3)
