"""Bit-for-bit fingerprints of a few training steps of every method.

    python tools/step_fingerprint.py [--steps=3] [--replicas=1|2] [--out=F.json]

For each case (a method and a few of its options) builds the model with the unit
tests' tiny backbone (``tests.helpers.tiny_config``), trains ``--steps`` steps on real Fashion-MNIST views (the training
pipeline, fixed seed) and prints one JSON line: the SHA-256 of every variable of
the model (weights, BN statistics, momentum targets, queues, group features) and of
the optimizer, and each step's logged values written as exact float hex. Two code
versions that print the same lines trained the same numbers, bit for bit. With
``--replicas=2`` the steps run under MirroredStrategy on two logical CPUs (MoCo-v2
then uses shuffling BN; the others synchronised BN).

A refactor that must not move results is checked by running this before and after
it on the same machine (results round differently on AVX2 and AVX-512 CPUs, so
compare runs of one machine only).
"""

import argparse
import hashlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tfssl  # noqa: E402,F401  (oneDNN default before TensorFlow loads)

CASES = {
    "moco_v2": {},
    "moco_v2_symmetric": {"method": "moco_v2", "symmetric": True},
    "byol": {},
    "ressl": {"warmup_steps": 2},
    "ressl_nopredictor_five": {"method": "ressl", "predictor": False,
                               "crops": "five"},
    "smog": {"n_groups": 8, "reset_interval": 2},
    "smog_symmetric_six": {"method": "smog", "n_groups": 8, "symmetric": True,
                           "crops": 6, "init": "random"},
    "reco_moco_v2": {"group_size": 4},
    "reco_byol_mixup": {"method": "reco_byol", "group_size": 4, "mix": "mixup"},
    "lewel_b": {},
    "lewel_m": {},
    "multinet": {},
    "multinet_one_k3_bn": {"method": "multinet", "one_combination": True,
                           "combine_k": 3, "patch_bn_updates": True},
}


def fingerprint(case, overrides, steps, strategy):
    import numpy as np
    import tensorflow as tf

    from tfssl import trainer
    from tfssl.data import pipeline
    from tfssl.data.sources import load_source

    from tests.helpers import tiny_config

    overrides = dict(overrides)
    method = overrides.pop("method", case)
    config = tiny_config("/tmp/unused", method, steps=4, momentum=0.9, **overrides)
    source = load_source("fashion_mnist", "train")
    model = trainer.build_model(config, strategy, 4, source.mean, source.std)
    dataset = pipeline.pretrain_dataset(source, model.input_view_specs(), 16, seed=0,
                                        examples_per_call=1)
    iterator = iter(strategy.experimental_distribute_dataset(dataset))
    step_fn = trainer.make_train_function(model, strategy)
    logs = []
    for _ in range(steps):
        values = step_fn(iterator)
        logs.append({k: float(np.float32(v)).hex() for k, v in sorted(values.items())})
    digest = hashlib.sha256()
    for v in list(model.variables) + list(model.optimizer.variables):
        digest.update(np.ascontiguousarray(v.numpy()).tobytes())
    return {"case": case, "variables": len(model.variables), "sha256":
            digest.hexdigest(), "logs": logs}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--replicas", type=int, default=1, choices=(1, 2))
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    import tensorflow as tf

    if args.replicas == 2:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        strategy = tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"])
    else:
        strategy = tf.distribute.get_strategy()
    lines = []
    for case in args.cases.split(","):
        line = json.dumps(fingerprint(case, CASES[case], args.steps, strategy))
        print(line, flush=True)
        lines.append(line)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
