"""Small configs and data for tests (tiny backbone, real Fashion-MNIST images)."""

import dataclasses

import numpy as np

from tfssl import config as config_lib
from tfssl.methods import get_method


def tiny_config(model_dir, method="moco_v2", *, batch=16, queue=64, epochs=1,
                steps=2, **overrides):
    """A RunConfig small enough for a unit test; ``overrides`` by field name."""
    params_cls = get_method(method).params_cls
    params = METHOD_CASES[method].params if method in METHOD_CASES else {}
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
            knn_k=20, log_every_steps=1,
            # RankMe at every logged step: 32 images keep it cheap in tests.
            rankme_examples=32),
        "method_params": params_cls(**params),
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


@dataclasses.dataclass(frozen=True)
class MethodCase:
    """How the shared step tests run one registered method (one entry per method).

    Attributes:
      default_batch_norm: what ``--batch_norm=auto`` must mean for it.
      xla: ``tiny_config`` overrides of the XLA test (small compile, and the
        periodic in-step work inside its steps).
      random_results: variable paths whose values come from random draws inside
        the step (XLA's stateless RNG gives other bits than the CPU kernels), checked
        for unit norm instead of equality under XLA.
      replica_test: ``None`` when ``tests/test_distributed.py`` checks one device
        against two replicas, else where that is checked instead: the file with a
        stricter version of the test, or the method whose case runs the same
        distributed code (a composed method's terms on the other base).
      xla_test: ``None`` when ``tests/test_xla.py`` compiles the method, else the
        methods whose cases compile the same code (a composed method's terms on the
        other base, and the base's own loss).
      multi_worker: trained by ``tests/test_multi_worker.py`` (two processes).
      params: method params :func:`tiny_config` sets (before its overrides).
    """

    default_batch_norm: str = "sync"
    xla: dict = dataclasses.field(default_factory=dict)
    random_results: tuple = ()
    replica_test: str = None
    xla_test: str = None
    multi_worker: bool = False
    params: dict = dataclasses.field(default_factory=dict)


# A new method adds one entry here; tests/test_methods.py checks every registered
# method has one.
METHOD_CASES = {
    "moco_v2": MethodCase(default_batch_norm="shuffle"),
    "byol": MethodCase(),
    "ressl": MethodCase(multi_worker=True),  # a queue
    # Group features; its replica test also runs symmetric roles and a reset.
    "smog": MethodCase(xla={"n_groups": 8, "init": "random", "reset_interval": 3},
                       random_results=("group_features/groups",),
                       replica_test="tests/test_smog.py", multi_worker=True),
    # Mixing groups of 4 rows: two per replica at the tests' batch of 8 on two.
    "reco_moco_v2": MethodCase(default_batch_norm="shuffle",
                               params={"group_size": 4}, replica_test="reco_byol"),
    # Not compiled in tests/test_xla.py: reco_moco_v2 compiles both terms' code (the
    # global term on BYOL at the tests' size is ill-conditioned anyway: the weak keys
    # in Q_w are nearly equal at initialisation and τ_tt = 0.04 makes the target near
    # one-hot, so a 1e-6 relative change of the weights moves the plain step's momentum
    # buffers as much as XLA's rounding does), byol the BYOL loss of the local term.
    "reco_byol": MethodCase(params={"group_size": 4},
                            xla_test="reco_moco_v2, byol"),
    # LEWELHead is compiled by lewel_m's case, BYOL's loss and predictors by byol's.
    "lewel_b": MethodCase(replica_test="lewel_m", xla_test="lewel_m, byol"),
    "lewel_m": MethodCase(default_batch_norm="shuffle"),
    "multinet": MethodCase(),
}


def method_case(name):
    return METHOD_CASES[name]


def train_straight_and_resumed(tmp_path, method, **overrides):
    """Trains 2 epochs of 2 steps straight (``tmp_path/a``) and with a stop after
    step 1 and a resume (``tmp_path/b``); asserts every weight and optimizer
    variable is equal bit for bit and returns the straight run's model."""
    from tfssl.trainer import train

    def config(name):
        return tiny_config(tmp_path / name, method, epochs=2, steps=2, **overrides)

    _, straight = train(config("a"), verbose=0)
    train(config("b"), verbose=0, stop_at_step=1)
    _, resumed = train(config("b"), verbose=0)
    for a, b in zip(straight.weights + straight.optimizer.variables,
                    resumed.weights + resumed.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    return straight


def tensorboard_events(log_dir):
    """A loaded ``EventAccumulator`` of ``log_dir`` (every tensor event kept)."""
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(str(log_dir), size_guidance={"tensors": 0})
    acc.Reload()
    return acc
