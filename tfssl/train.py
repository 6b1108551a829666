"""Pretrain a backbone: ``python -m tfssl.train --flagfile=... --model_dir=DIR``.

Re-running the same command resumes from the latest checkpoint in ``--model_dir``.
"""

from tfssl.cli import quiet_tensorflow, run_main

quiet_tensorflow()

from absl import flags  # noqa: E402

from tfssl import flags as tfssl_flags  # noqa: E402

FLAGS = flags.FLAGS
tfssl_flags.define_flags(FLAGS)


def main(argv):
    from tfssl.errors import UserError
    from tfssl.trainer import train

    if len(argv) > 1:
        raise UserError(f"unexpected arguments {argv[1:]}; flags look like --name=value.")
    config = tfssl_flags.run_config_from_flags(FLAGS)
    summary, _ = train(config)
    knn0, knn1 = summary.get("knn_init"), summary.get("knn")
    if knn0:
        print(f"kNN top-1 at initialisation: {knn0['top1']:.2f}%")
    if knn1:
        print(f"kNN top-1 after pretraining: {knn1['top1']:.2f}% "
              f"(top-5 {knn1['top5']:.2f}%)")
    print(f"run directory: {config.model_dir} (TensorBoard: tensorboard "
          f"--logdir={config.model_dir}/tb)")


if __name__ == "__main__":
    run_main(main)
