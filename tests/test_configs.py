"""Every shipped flagfile parses into a valid RunConfig with the papers' numbers."""

import glob
import os

import pytest
from absl import flags

from tfssl import flags as tfssl_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGFILES = sorted(glob.glob(os.path.join(ROOT, "configs", "*", "*.flags")))


def parse(path, *extra):
    fv = flags.FlagValues()
    tfssl_flags.define_flags(fv)
    cwd = os.getcwd()
    os.chdir(ROOT)  # flagfiles use repo-root-relative paths
    try:
        fv(["prog", f"--flagfile={path}", "--model_dir=/tmp/unused", *extra])
    finally:
        os.chdir(cwd)
    return tfssl_flags.run_config_from_flags(fv)


@pytest.mark.parametrize("path", [p for p in FLAGFILES if "/common/" not in p],
                         ids=lambda p: os.path.relpath(p, ROOT))
def test_flagfile_is_valid(path):
    config = parse(path)
    assert open(path).readline().strip().startswith("--flagfile=configs/")
    if "quickstart" not in path:
        assert os.path.basename(path).startswith(config.train.method)
    assert config.train.queue_size % config.train.global_batch_size == 0


def test_ressl_numbers_from_the_paper():
    c = parse("configs/cifar10/ressl.flags")
    p = c.method_params
    assert (p.tau_s, p.tau_t, p.predictor) == (0.1, 0.04, True)
    assert (c.train.queue_size, c.train.momentum, c.optim.weight_decay) == (
        4096, 0.99, 5e-4)
    assert c.learning_rate() == pytest.approx(0.06)
    assert parse("configs/stl10/ressl.flags").train.queue_size == 16384
    assert parse("configs/stl10/ressl.flags").data.image_size == 64
    big = parse("configs/imagenet2012/ressl.flags")
    assert big.optim.optimizer == "lars"
    assert big.learning_rate() == pytest.approx(0.6 * 1024 / 256)
    assert (big.train.queue_size, big.train.momentum_schedule) == (65536, "cosine")


def test_later_flags_override_the_flagfile():
    c = parse("configs/cifar10/moco_v2.flags", "--queue_size=8192", "--epochs=3")
    assert (c.train.queue_size, c.train.epochs) == (8192, 3)


def test_reco_and_lewel_numbers_from_the_papers():
    c = parse("configs/imagenet2012/reco_moco_v2.flags")
    p = c.method_params
    assert (c.optim.optimizer, c.optim.weight_decay, c.train.queue_size,
            c.train.momentum, p.temperature) == ("sgd", 5e-4, 65536, 0.999, 0.2)
    assert c.learning_rate() == pytest.approx(0.03)
    assert (p.lambda_global, p.lambda_local, p.tau_online, p.tau_target, p.mix,
            p.alpha) == (1.0, 2.0, 0.1, 0.04, "cutmix", 1.0)
    b = parse("configs/imagenet2012/lewel_b.flags")
    assert (b.optim.optimizer, b.optim.weight_decay, b.train.ema_bn,
            b.train.momentum, b.train.momentum_schedule) == (
        "lars", 1.5e-6, True, 0.98, "cosine")
    assert b.learning_rate() == pytest.approx(3.6)  # at B 1024
    assert (b.model.proj_dim, b.method_params.groups, b.method_params.beta) == (
        256, 4, 0.5)
    m = parse("configs/imagenet2012/lewel_m.flags")
    assert (m.optim.weight_decay, m.train.momentum, m.model.proj_dim,
            m.method_params.temperature) == (1e-4, 0.999, 128, 0.2)
    assert m.learning_rate() == pytest.approx(0.06)
