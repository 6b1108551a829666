"""Frozen, typed run configuration.

Only the entry points read flags (``tfssl/flags.py``); they build a
:class:`RunConfig` that everything below receives explicitly.  Every field carries
its help text and a validity check in ``metadata``, so the flag definitions, the
checks and the JSON written to the run directory all come from this one place.
"""

import dataclasses
import json
import math
from typing import Any

from tfssl.errors import UserError

# ---------------------------------------------------------------------------
# Field helpers: a default, a help text and a check, in one place.


def positive(v):
    return None if v > 0 else "must be > 0"


def non_negative(v):
    return None if v >= 0 else "must be >= 0"


def probability(v):
    return None if 0.0 <= v <= 1.0 else "must be in [0, 1]"


def unit_open(v):
    return None if 0.0 <= v < 1.0 else "must be in [0, 1)"


def autotune_or_positive(v):
    return None if v == -1 or v >= 1 else "must be -1 (AUTOTUNE) or >= 1"


def one_of(*choices):
    def check(v):
        return None if v in choices else f"must be one of {', '.join(map(str, choices))}"

    check.choices = choices
    return check


def _backbone_name(v):
    resnets = ("resnet10", "resnet18", "resnet34", "resnet50")
    if v in resnets or (v.startswith("keras:") and len(v) > len("keras:")):
        return None
    return f"must be one of {', '.join(resnets)} or keras:NAME (keras.applications)"


def option(default, help, check=None, flag_prefix=None):
    """A dataclass field with its flag help text and validity check.

    ``flag_prefix`` overrides the prefix its class's flags get (a method's
    ``flag_prefix``): ReCo's params hold MoCo-v2's fields (``--moco_...``) and its
    own (``--reco_...``) in one class.
    """
    metadata = {"help": help, "check": check}
    if flag_prefix is not None:
        metadata["flag_prefix"] = flag_prefix
    return dataclasses.field(default=default, metadata=metadata)


def flag_name(field, prefix=""):
    """The flag (without ``--``) of a config dataclass ``field`` under ``prefix``."""
    return field.metadata.get("flag_prefix", prefix) + field.name


def flag_names(cls, prefix=""):
    """``{field name: flag name}`` of the dataclass (or instance) ``cls``."""
    return {f.name: flag_name(f, prefix) for f in dataclasses.fields(cls)}


FLOAT32_MAX = 3.4028234663852886e38


def representable(v):
    """Floats must be finite and within float32 range (the model computes in float32)."""
    if isinstance(v, float) and not (math.isfinite(v) and abs(v) <= FLOAT32_MAX):
        return "must be a finite number within float32 range (|x| <= 3.4e38)"
    return None


def validate(obj, prefix=""):
    """Runs every field's check; raises :class:`UserError` naming the flag."""
    for f in dataclasses.fields(obj):
        check = f.metadata.get("check")
        value = getattr(obj, f.name)
        if value is None:
            continue
        values = value if isinstance(value, tuple) else (value,)
        problem = next(filter(None, map(representable, values)), None)
        if problem is None and check is not None:
            problem = check(value)
        if problem:
            raise UserError(f"--{flag_name(f, prefix)}={value} {problem}.")


# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DataConfig:
    dataset: str = option("fashion_mnist", "Dataset name (see docs/GUIDE.md, \"Data\").")
    data_dir: str | None = option(
        None, "Directory of the dataset files (Debian IDX files, tfds data_dir or "
        "image folder root).")
    pretrain_split: str = option("train", "Split used for pretraining.")
    eval_split: str = option("test", "Split used as kNN queries.")
    folder_labels: str = option(
        "subfolders", "--dataset=image_folder: 'subfolders' (each sub-folder of the "
        "split is a class) or 'none' (every image under it, recursively, unlabeled: "
        "the kNN monitor then needs --eval_data_dir).", one_of("subfolders", "none"))
    eval_data_dir: str | None = option(
        None, "Labelled data for the kNN monitor and tfssl.evaluate when --data_dir "
        "has none (same --dataset; image folders read with class sub-folders). "
        "Default: --data_dir.")
    image_size: int = option(28, "Side of the (global) training views in pixels.",
                             positive)
    num_parallel_calls: int = option(
        -1, "Parallel map calls in tf.data (-1 = AUTOTUNE).", autotune_or_positive)
    examples_per_call: int = option(
        4, "In-memory datasets: examples augmented per tf.data map call (the largest "
        "of this, 2 and 1 that divides the per-replica batch). More amortises "
        "tf.data's per-call cost; larger groups take longer to trace when the "
        "pipeline is built. The views do not depend on it.", positive)
    augment_on: str = option(
        "host", "Where the views' pixel work runs: 'host' (tf.data) or 'device' (in "
        "the replica step, batched, on the accelerator; tf.data then only decodes "
        "and draws the random parameters). The views agree to float rounding "
        "(1e-5), not bit for bit.", one_of("host", "device"))


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    backbone: str = option(
        "resnet18", "Backbone architecture: resnet10/18/34/50, or keras:NAME for any "
        "keras.applications architecture (e.g. keras:MobileNetV3Small; built with "
        "include_top=False, weights=None; --stem and --width do not apply).",
        _backbone_name)
    stem: str = option("cifar", "ResNet stem: cifar (3x3/1, no max-pool) or "
                       "imagenet (7x7/2 + max-pool).", one_of("cifar", "imagenet"))
    width: float = option(1.0, "Width multiplier of the backbone channels.",
                          positive)
    batch_norm: str = option(
        "auto", "BatchNorm across replicas: sync (statistics all-reduced), shuffle "
        "(MoCo's shuffling BN of the momentum encoder), local (per-replica), or auto "
        "(the method's default: shuffle for moco_v2, sync for the others). With one "
        "replica every choice is plain BN.", one_of("auto", "sync", "shuffle", "local"))
    fused_batch_norm: bool = option(
        True, "Run each BN's training pass (when not synchronised) as TensorFlow's "
        "fused kernel; --nofused_batch_norm uses Keras' own ops (same results to "
        "float32 rounding).")
    proj_hidden_dim: int = option(512, "Projector hidden width.", positive)
    proj_dim: int = option(128, "Projector output dimension.", positive)
    proj_layers: int = option(2, "Projector depth (Dense layers).", positive)
    pred_hidden_dim: int = option(512, "Predictor hidden width.", positive)


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    optimizer: str = option("sgd", "Optimizer.", one_of("sgd", "lars", "adamw"))
    base_learning_rate: float = option(
        0.06, "Learning rate for a global batch of 256; the effective rate is "
        "base * global_batch_size / 256 (logged).", positive)
    weight_decay: float = option(5e-4, "Weight decay (not applied to BN and "
                                 "biases).", non_negative)
    sgd_momentum: float = option(0.9, "SGD / LARS momentum.", unit_open)
    lars_eta: float = option(0.001, "LARS trust coefficient.", positive)
    warmup_epochs: float = option(10.0, "Linear learning-rate warm-up epochs.",
                                  non_negative)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    method: str = option("ressl", "Self-supervised method.")
    global_batch_size: int = option(256, "Batch size summed over replicas.",
                                    positive)
    epochs: int = option(200, "Training epochs.", positive)
    steps_per_epoch: int = option(
        0, "Cap on steps per epoch for short runs (0 = a full pass).",
        non_negative)
    seed: int = option(0, "Seed of initialisation, data order and augmentation.")
    strategy: str = option("default", "Distribution strategy.",
                           one_of("default", "mirrored", "multi_worker", "tpu"))
    tpu: str = option("", "TPU name or address for --strategy=tpu.")
    cpu_devices: int = option(
        0, "Split the CPU into N logical devices (N > 1) so that --strategy="
        "mirrored runs N replicas on a machine without accelerators.",
        non_negative)
    momentum: float = option(0.99, "Base momentum m0 of the EMA target network.",
                             probability)
    momentum_schedule: str = option(
        "constant", "EMA momentum schedule: constant, or cosine from m0 to 1.",
        one_of("constant", "cosine"))
    ema_bn: bool = option(False, "EMAN: the momentum networks' BN runs in "
                          "inference mode on moving statistics that are the EMA of "
                          "the online ones (else: batch statistics).")
    queue_size: int = option(4096, "Queue length K (a multiple of the global "
                             "batch).", positive)
    jit_compile: bool = option(False, "Compile the training step with XLA.")
    mixed_precision: str = option(
        "none", "Keras dtype policy of the model: none (float32), mixed_float16 "
        "(with dynamic loss scaling) or mixed_bfloat16. Variables, BN statistics, "
        "losses, queues and the EMA stay float32.",
        one_of("none", "mixed_float16", "mixed_bfloat16"))
    knn_every_epochs: int = option(0, "Run the kNN monitor every N epochs (0 = "
                                   "only at the end).", non_negative)
    knn_k: int = option(200, "kNN neighbours.", positive)
    knn_temperature: float = option(0.1, "kNN vote temperature.", positive)
    knn_train_examples: int = option(
        0, "Use only the first N training examples as the kNN bank (0 = all).",
        non_negative)
    knn_eval_examples: int = option(
        0, "Use only the first N evaluation examples as kNN queries (0 = all).",
        non_negative)
    projector_examples: int = option(
        2000, "Evaluation examples exported to TensorBoard's embedding projector at "
        "the end (0 = none).", non_negative)
    rankme_examples: int = option(
        512, "Images (the first of the kNN query split, else of the training data) "
        "whose pooled features' RankMe, a label-free quality signal, is logged every "
        "--log_every_steps and at each epoch end (0 = off).", non_negative)
    checkpoint_every_steps: int = option(500, "Checkpoint interval in steps.",
                                         positive)
    keep_checkpoints: int = option(3, "Checkpoints kept.", positive)
    log_every_steps: int = option(50, "TensorBoard scalar interval in steps (and the "
                                  "progress-line interval when stdout is not a "
                                  "terminal).",
                                  positive)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything a run needs.  ``method_params`` is the method's own dataclass."""
    model_dir: str
    data: DataConfig
    model: ModelConfig
    optim: OptimConfig
    train: TrainConfig
    method_params: Any

    # Derived quantities, computed in one place.
    def total_steps(self, steps_per_epoch):
        return self.train.epochs * steps_per_epoch

    def learning_rate(self):
        """Effective peak learning rate: ``base · B / 256`` (linear scaling)."""
        return self.optim.base_learning_rate * self.train.global_batch_size / 256.0

    def warmup_steps(self, steps_per_epoch):
        return int(math.floor(self.optim.warmup_epochs * steps_per_epoch))

    def to_dict(self):
        d = dataclasses.asdict(self)
        d["method_params"] = dataclasses.asdict(self.method_params)
        return d

    def to_json(self):
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d, params_cls):
        def build(klass, values):
            names = {f.name for f in dataclasses.fields(klass)}
            return klass(**{k: _tuples(v) for k, v in values.items() if k in names})

        return cls(model_dir=d["model_dir"], data=build(DataConfig, d["data"]),
                   model=build(ModelConfig, d["model"]),
                   optim=build(OptimConfig, d["optim"]),
                   train=build(TrainConfig, d["train"]),
                   method_params=build(params_cls, d["method_params"]))


def _tuples(v):
    return tuple(v) if isinstance(v, list) else v


def validate_run(config, params_prefix):
    """Checks every part of ``config``; raises :class:`UserError`."""
    for part in (config.data, config.model, config.optim, config.train):
        validate(part)
    validate(config.method_params, params_prefix)
    lr = config.learning_rate()
    if representable(lr):
        raise UserError(
            f"--base_learning_rate={config.optim.base_learning_rate} x "
            f"--global_batch_size={config.train.global_batch_size}/256 = {lr:g} "
            "overflows float32; use a smaller --base_learning_rate.")
    problems = getattr(config.method_params, "problems", None)
    message = problems() if problems else None
    if message:
        raise UserError(message)
