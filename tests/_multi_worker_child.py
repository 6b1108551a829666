"""One worker of the multi-worker test (``tests/test_multi_worker.py``).

    TF_CONFIG=... python -m tests._multi_worker_child MODEL_DIR OUT.npz METHOD [...]

Trains each METHOD for ``STEPS`` steps under ``MultiWorkerMirroredStrategy`` (one
strategy for all of them) and saves every variable of every model to ``OUT.npz``
as ``<method>/model|optimizer/<index>`` (see ``variables``).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tests.helpers import tiny_config  # noqa: E402
from tfssl import trainer  # noqa: E402

STEPS = 3
BATCH = 8


def variables(model):
    """``{"model/<i>": ..., "optimizer/<i>": ...}``: every variable of the method
    model (weights, BN statistics, targets, queues, groups) and of the optimizer,
    by creation order (Keras' generated names depend on what else the process
    built; the order does not)."""
    out = {f"model/{i:04d}": v.numpy() for i, v in enumerate(model.variables)}
    out.update({f"optimizer/{i:04d}": v.numpy()
                for i, v in enumerate(model.optimizer.variables)})
    return out


def main(model_dir, out_path, *methods):
    strategy = trainer.make_strategy("multi_worker")
    arrays = {}
    for method in methods:
        config = tiny_config(os.path.join(model_dir, method), method, batch=BATCH,
                             queue=16, steps=STEPS, knn_train_examples=64,
                             knn_eval_examples=32, projector_examples=0)
        _, model = trainer.train(config, verbose=0, stop_at_step=STEPS,
                                 strategy=strategy)
        for key, value in variables(model).items():
            arrays[f"{method}/{key}"] = value
    np.savez(out_path, **arrays)


if __name__ == "__main__":
    tf.get_logger().setLevel("ERROR")
    main(*sys.argv[1:])
