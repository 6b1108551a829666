"""Evaluate a pretrained run: ``python -m tfssl.evaluate --model_dir=DIR --protocol=P``.

Protocols (``docs/METHODS.md``, "Evaluation protocols"), all on the backbone of the latest
checkpoint in ``DIR``, training on ``--train_split`` and reporting top-1/top-5 on
``--eval_split`` (default: the run's):

* ``knn``: weighted kNN (cosine, ``k``, ``tau``; InstDisc), exactly the pretraining
  monitor ``tfssl.trainer.knn_eval``; ``--knn_k`` / ``--knn_temperature`` override the
  run's values.
* ``linear``: linear probe on the frozen backbone (``evaluation/linear.py``).
* ``semi``: fine-tune backbone + linear head on a class-balanced ``--semi_fraction``
  of the labels; the subset is written to ``DIR/semi_<fraction>_indices.txt``
  (``DIR/semi_<fraction>_first<N>_indices.txt`` with ``--train_examples=N``) and
  reused by later evaluations of the run.

Learning rates are given for a batch of 256 and scaled linearly (``base * B / 256``);
both values are logged and recorded. Each protocol writes ``DIR/eval_<protocol>.json``
(flags, resolved settings, results, checkpoint step) and prints one line, e.g.
``eval knn: top-1 81.23% top-5 99.01% (step 702, fashion_mnist test)``.

Flags are defined only when this module runs as ``__main__``; :func:`evaluate` takes
an explicit :class:`EvalConfig`.
"""

from tfssl.cli import quiet_tensorflow, run_main

quiet_tensorflow()

import dataclasses  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402

from absl import flags, logging  # noqa: E402

from tfssl.config import non_negative, one_of, option, positive, validate  # noqa: E402
from tfssl.errors import UserError  # noqa: E402
from tfssl.run_dir import check_writable_file, write_text  # noqa: E402

PROTOCOLS = ("knn", "linear", "semi")


def _fraction(v):
    return None if 0.0 < v <= 1.0 else "must be in (0, 1] (0.01 = 1% of the labels)"


def _zero_or_more(v):
    return None if v >= 0 else "must be >= 0 (0 = the run's value)"


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Every ``python -m tfssl.evaluate`` flag; field = flag of the same name."""

    model_dir: str = option(None, "Run directory written by python -m tfssl.train.")
    protocol: str = option(None, "Evaluation protocol.", one_of(*PROTOCOLS))
    train_split: str = option("train", "Labelled split the kNN bank / classifier uses.")
    eval_split: str = option("", "Split reported on (empty = the run's --eval_split).")
    eval_data_dir: str = option("", "Labelled data to evaluate on, e.g. for a run on "
                                "unlabeled images (empty = the run's --eval_data_dir, "
                                "else its --data_dir).")
    train_examples: int = option(0, "Use only the first N training examples (0 = all).",
                                 non_negative)
    eval_examples: int = option(0, "Use only the first N evaluation examples (0 = all).",
                                non_negative)
    seed: int = option(0, "Seed of the head initialisation, data order, augmentation and "
                       "the semi-supervised subset.")
    knn_k: int = option(0, "kNN neighbours (0 = the run's --knn_k).", _zero_or_more)
    knn_temperature: float = option(0.0, "kNN vote temperature (0 = the run's).",
                                    _zero_or_more)
    linear_epochs: int = option(100, "Linear-probe epochs.", positive)
    linear_lr: float = option(0.1, "Linear-probe learning rate for a batch of 256 "
                              "(effective: linear_lr * linear_batch_size / 256).", positive)
    linear_batch_size: int = option(256, "Linear-probe batch size.", positive)
    linear_schedule: str = option("cosine", "Linear-probe learning-rate schedule: cosine "
                                  "decay to 0, or step (x0.1 at 60% and 80% of the epochs).",
                                  one_of("cosine", "step"))
    precompute_features: bool = option(
        True, "Linear probe: extract centre-crop features once and train on them (no "
        "augmentation); false: random-resized-crop + flip through the frozen backbone "
        "every epoch.")
    semi_fraction: float = option(0.01, "Fraction of the training labels used for "
                                  "semi-supervised fine-tuning, in (0, 1].", _fraction)
    semi_epochs: int = option(0, "Fine-tuning epochs (0 = SimCLR's: 60 for fractions "
                              "<= 1%, 30 above).", non_negative)
    semi_lr_backbone: float = option(0.01, "Backbone learning rate for a batch of 256.",
                                     non_negative)
    semi_lr_head: float = option(0.1, "Head learning rate for a batch of 256.", non_negative)
    semi_batch_size: int = option(256, "Fine-tuning batch size.", positive)


def define_flags(flag_values=flags.FLAGS):
    """Defines one flag per :class:`EvalConfig` field (closed choices as enums)."""
    for f in dataclasses.fields(EvalConfig):
        args = (f.name, f.default, f.metadata["help"])
        choices = getattr(f.metadata.get("check"), "choices", None)
        if choices:
            flags.DEFINE_enum(*args[:2], choices, args[2], flag_values=flag_values)
        elif isinstance(f.default, bool):
            flags.DEFINE_bool(*args, flag_values=flag_values)
        elif isinstance(f.default, int):
            flags.DEFINE_integer(*args, flag_values=flag_values)
        elif isinstance(f.default, float):
            flags.DEFINE_float(*args, flag_values=flag_values)
        else:
            flags.DEFINE_string(*args, flag_values=flag_values)


def check_eval_config(cfg: EvalConfig) -> EvalConfig:
    """Validates every field; raises :class:`UserError` naming the flag."""
    if not cfg.model_dir:
        raise UserError("--model_dir is required (a run directory written by tfssl.train).")
    if not cfg.protocol:
        raise UserError(f"--protocol is required: one of {', '.join(PROTOCOLS)}.")
    validate(cfg)
    return cfg


def eval_config_from_flags(flag_values=flags.FLAGS) -> EvalConfig:
    """The validated :class:`EvalConfig` of the parsed flags."""
    return check_eval_config(EvalConfig(**{f.name: flag_values[f.name].value
                                           for f in dataclasses.fields(EvalConfig)}))


def semi_epochs(cfg: EvalConfig) -> int:
    """``--semi_epochs``, or SimCLR's 60 (fraction <= 1%) / 30 epochs when it is 0."""
    return cfg.semi_epochs or (60 if cfg.semi_fraction <= 0.01 else 30)


def subset_path(model_dir: str, fraction: float, train_examples: int = 0) -> str:
    """``DIR/semi_<fraction>_indices.txt`` (``..._first<N>_...`` for a capped pool)."""
    pool = f"_first{train_examples}" if train_examples else ""
    return os.path.join(model_dir, f"semi_{fraction:g}{pool}_indices.txt")


def summary_line(record: dict) -> str:
    """``eval knn: top-1 81.23% top-5 99.01% (step 702, fashion_mnist test)``."""
    r = record["results"]
    return (f"eval {record['protocol']}: top-1 {r['top1']:.2f}% top-5 {r['top5']:.2f}% "
            f"(step {record['step']}, {record['dataset']} {record['eval_split']})")


def _scaled(name, base, batch_size):
    from tfssl.optim import scaled_learning_rate

    lr = scaled_learning_rate(base, batch_size)
    logging.info("%s: base %g x %d/256 = %g", name, base, batch_size, lr)
    return lr


def _knn(cfg, run, backbone, train_source, eval_source):
    from tfssl.trainer import knn_eval

    t = dataclasses.replace(run.train, knn_k=cfg.knn_k or run.train.knn_k,
                            knn_temperature=cfg.knn_temperature or run.train.knn_temperature,
                            knn_train_examples=cfg.train_examples,
                            knn_eval_examples=cfg.eval_examples)
    results = knn_eval(backbone, dataclasses.replace(run, train=t), train_source, eval_source)
    settings = {"knn_k": t.knn_k, "knn_temperature": t.knn_temperature}
    return results, settings


def _linear(cfg, run, backbone, train_source, eval_source):
    from tfssl.evaluation import linear

    lr = _scaled("linear-probe learning rate", cfg.linear_lr, cfg.linear_batch_size)
    results = linear.linear_probe(
        backbone, train_source, eval_source, image_size=run.data.image_size,
        epochs=cfg.linear_epochs, lr=lr, batch_size=cfg.linear_batch_size,
        schedule=cfg.linear_schedule, precompute=cfg.precompute_features, seed=cfg.seed,
        train_examples=cfg.train_examples, eval_examples=cfg.eval_examples)
    return results, {"linear_lr_base": cfg.linear_lr, "linear_lr_effective": lr}


def _train_labels(source, limit):
    """``int64 [N]`` labels of the first ``limit`` (0 = all) training examples."""
    import numpy as np

    if source.in_memory:
        labels = source.labels
    else:  # one pass over a streaming split
        labels = np.fromiter((int(y) for y in source.as_dataset().map(
            lambda ex: ex["label"]).as_numpy_iterator()), np.int64)
    return np.asarray(labels[:limit] if limit else labels, np.int64)


def _semi(cfg, run, backbone, train_source, eval_source):
    from tfssl.evaluation import linear

    path = subset_path(cfg.model_dir, cfg.semi_fraction, cfg.train_examples)
    indices, reused = linear.load_or_make_subset(
        path, _train_labels(train_source, cfg.train_examples), cfg.semi_fraction, cfg.seed)
    epochs = semi_epochs(cfg)
    lr_backbone = _scaled("backbone learning rate", cfg.semi_lr_backbone, cfg.semi_batch_size)
    lr_head = _scaled("head learning rate", cfg.semi_lr_head, cfg.semi_batch_size)
    results = linear.semi_supervised(
        backbone, train_source, eval_source, indices, image_size=run.data.image_size,
        epochs=epochs, lr_backbone=lr_backbone, lr_head=lr_head,
        batch_size=cfg.semi_batch_size, seed=cfg.seed, eval_examples=cfg.eval_examples)
    settings = {"semi_epochs": epochs, "subset_file": path, "subset_reused": reused,
                "subset_size": int(indices.size), "semi_lr_backbone_effective": lr_backbone,
                "semi_lr_head_effective": lr_head}
    return results, settings


_PROTOCOLS = {"knn": _knn, "linear": _linear, "semi": _semi}


def evaluate(cfg: EvalConfig) -> dict:
    """Runs ``cfg.protocol`` on the latest checkpoint of ``cfg.model_dir``.

    Returns:
        The record written to ``DIR/eval_<protocol>.json``: ``protocol``, ``model_dir``,
        ``method``, ``checkpoint``, ``step``, ``dataset``, ``train_split``,
        ``eval_split``, ``flags`` (the :class:`EvalConfig`), ``settings`` (resolved
        values: kNN k/tau, effective learning rates, subset file, ...) and ``results``
        (``top1``, ``top5`` in percent, plus protocol-specific counts).

    Raises:
        UserError: bad flags, no run or no checkpoint in ``model_dir``, unlabelled splits.
    """

    from tfssl.trainer import load_config, load_trained_model, run_source

    check_eval_config(cfg)
    if not os.path.isdir(cfg.model_dir):
        raise UserError(f"--model_dir={cfg.model_dir} is not a directory; pass a run "
                        "directory written by python -m tfssl.train.")
    run = load_config(cfg.model_dir)
    if cfg.eval_data_dir:
        run = dataclasses.replace(run, data=dataclasses.replace(
            run.data, eval_data_dir=cfg.eval_data_dir))
    d = run.data
    eval_split = cfg.eval_split or d.eval_split
    sources = [run_source(run, split, evaluation=True)
               for split in (cfg.train_split, eval_split)]
    for source, flag in zip(sources, ("train_split", "eval_split")):
        if not source.num_classes:
            raise UserError(f"--dataset={d.dataset} split {source.split!r} has no labels; "
                            f"evaluation needs a labelled --{flag} (or --eval_data_dir="
                            "DIR with labelled images).")
    # Refuse before the (possibly long) evaluation if its record cannot be written.
    path = os.path.join(cfg.model_dir, f"eval_{cfg.protocol}.json")
    outputs = [path] + ([subset_path(cfg.model_dir, cfg.semi_fraction, cfg.train_examples)]
                        if cfg.protocol == "semi" else [])
    for output in outputs:
        try:
            check_writable_file(output, "model_dir")
        except UserError:
            raise UserError(f"{output} cannot be written (read-only run directory?): "
                            "tfssl.evaluate records its result in the run directory; "
                            "copy the run somewhere writable and evaluate the copy.") from None
    model = load_trained_model(run)
    checkpoint = model.restored_from
    step = int(model.optimizer.iterations.numpy())
    results, settings = _PROTOCOLS[cfg.protocol](cfg, run, model.backbone, *sources)
    record = {"protocol": cfg.protocol, "model_dir": cfg.model_dir,
              "method": run.train.method, "checkpoint": checkpoint, "step": step,
              "dataset": d.dataset, "train_split": cfg.train_split, "eval_split": eval_split,
              "flags": dataclasses.asdict(cfg), "settings": settings, "results": results}
    try:
        write_text(path, json.dumps(record, indent=2, sort_keys=True))
    except OSError as e:
        print(summary_line(record))
        raise UserError(f"could not write {path}: {os.strerror(e.errno or 0)}; the "
                        "result above is not saved.") from None
    return record


def main(argv):
    if len(argv) > 1:
        raise UserError(f"unexpected arguments {argv[1:]}; flags look like --name=value.")
    print(summary_line(evaluate(eval_config_from_flags(flags.FLAGS))))


if __name__ == "__main__":
    define_flags()
    run_main(main)
