"""The README's Python API example, run as written, and the API's checks."""

import os
import re

import numpy as np
import pytest
import tensorflow as tf

from tfssl import api
from tfssl.data import sources
from tfssl.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_example():
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text.split("### Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(readme_example(), "README.md", "exec"), scope)  # noqa: S102
    assert scope["summary"]["step"] == 4
    features = scope["features"]
    assert features.shape == (256, scope["model"].feature_dim)
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, rtol=1e-5)
    loaded = tf.saved_model.load(str(tmp_path / "runs/api_demo/saved_model"))
    served = loaded.signatures["serving_default"](
        images=tf.constant(scope["images"][:256]))["embedding"].numpy()
    np.testing.assert_allclose(served, features, rtol=1e-4, atol=1e-5)


def test_config_overrides_and_user_data_checks(tmp_path):
    c = api.make_config("cifar10/ressl", model_dir=str(tmp_path), epochs=3,
                        ressl_tau_t=0.05, jit_compile=True)
    assert (c.train.epochs, c.method_params.tau_t, c.train.jit_compile) == (3, 0.05, True)
    with pytest.raises(UserError, match="--epochs=0 must be > 0"):
        api.make_config(None, model_dir=str(tmp_path), epochs=0)
    with pytest.raises(UserError, match="nope"):
        api.make_config(None, model_dir=str(tmp_path), nope=1)
    with pytest.raises(UserError, match=r"\[N, H, W, C\] with C 1 or 3"):
        sources.from_array(np.zeros((4, 8, 8), np.uint8))
    with pytest.raises(UserError, match="floats in \\[0, 1\\]"):
        sources.from_array(np.full((2, 8, 8, 3), 2.0, np.float32))
    images = np.random.default_rng(0).random((6, 8, 8, 3)).astype(np.float32)
    ds = tf.data.Dataset.from_tensor_slices((images, np.arange(6) % 2))
    src = sources.from_dataset(ds)
    assert src.in_memory and src.num_classes == 2 and src.images.dtype == np.uint8
    np.testing.assert_array_equal(src.images, np.round(images * 255).astype(np.uint8))
