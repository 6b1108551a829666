"""Small configs and data for tests (tiny backbone, real Fashion-MNIST images)."""

import dataclasses

import numpy as np

from tfssl import config as config_lib
from tfssl.methods import get_method


def tiny_config(model_dir, method="moco_v2", *, batch=16, queue=64, epochs=1,
                steps=2, **overrides):
    """A RunConfig small enough for a unit test; ``overrides`` by field name."""
    params_cls = get_method(method).params_cls
    parts = {
        # One example per map call: 4 (the default) costs ~8 s more tracing per
        # pipeline; tests/test_pipeline.py covers the grouped calls.
        "data": config_lib.DataConfig(image_size=28, num_parallel_calls=2,
                                      examples_per_call=1),
        "model": config_lib.ModelConfig(backbone="resnet10", width=0.125, proj_hidden_dim=32, proj_dim=16,
                                        pred_hidden_dim=32),
        "optim": config_lib.OptimConfig(warmup_epochs=0.0),
        "train": config_lib.TrainConfig(
            method=method, global_batch_size=batch, queue_size=queue, epochs=epochs,
            steps_per_epoch=steps, knn_train_examples=256, knn_eval_examples=128,
            knn_k=20, log_every_steps=1),
        "method_params": params_cls(),
    }
    for key, value in overrides.items():
        for name, part in parts.items():
            if key in {f.name for f in dataclasses.fields(part)}:
                parts[name] = dataclasses.replace(part, **{key: value})
                break
        else:
            raise KeyError(key)
    return config_lib.RunConfig(model_dir=str(model_dir), **parts)


def fashion_batch(n, seed=0):
    """``n`` real Fashion-MNIST training images, uint8 [n, 28, 28, 1]."""
    from tfssl.data.sources import load_source

    src = load_source("fashion_mnist", "train")
    idx = np.random.default_rng(seed).choice(src.num_examples, n, replace=False)
    return src.images[idx]
