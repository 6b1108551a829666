"""The Python API: a run configuration in code, training on a registered dataset or
on your own images, embeddings of the trained backbone, a SavedModel.

    from tfssl import api

    config = api.make_config("cifar10/ressl", model_dir="runs/mine", epochs=20)
    summary, model = api.train(config)                    # the configured dataset
    summary, model = api.train(config, images=my_uint8)   # or your [N, H, W, C] array
    features = api.embed(model, my_uint8[:1000])          # [1000, C], L2-normalised
    api.export(model, "runs/mine/export", channels=3)

``api.train`` is ``tfssl.trainer.train``: the run directory, checkpoints, exact
resume and TensorBoard are the command line's.
"""

import numpy as np

from tfssl import configs as configs_lib
from tfssl.errors import UserError


def make_config(config=None, *, model_dir, **overrides):
    """A validated :class:`tfssl.config.RunConfig`.

    Args:
      config: a shipped flagfile by name (``"cifar10/ressl"``), a flagfile path, or
        None (every default: ReSSL on Fashion-MNIST).
      model_dir: the run directory.
      **overrides: flags by name without ``--`` (``epochs=3``, ``ressl_tau_t=0.04``,
        ``jit_compile=True``), applied after the flagfile.

    Raises:
      UserError: an unknown flag or a bad value (the command line's messages).
    """
    from absl import flags

    from tfssl import flags as tfssl_flags

    argv = ["tfssl"]
    if config:
        argv.append(f"--flagfile={config}" if config.endswith(".flags")
                    else f"--config={config}")
    argv.append(f"--model_dir={model_dir}")
    for name, value in overrides.items():
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, (list, tuple)):
            value = ",".join(map(str, value))
        argv.append(f"--{name}={value}")
    fv = flags.FlagValues()
    tfssl_flags.define_flags(fv)
    try:
        fv(configs_lib.expand_argv(argv))
    except flags.Error as e:
        raise UserError(str(e)) from None
    return tfssl_flags.run_config_from_flags(fv)


def train(config, images=None, labels=None, verbose=1):
    """Pretrains (or resumes) ``config``'s run; returns ``(summary, model)``.

    ``images``: a NumPy array ``[N, H, W, C]`` (uint8, or floats in [0, 1]) or a
    finite ``tf.data.Dataset`` of images to pretrain on instead of the configured
    dataset (``--image_size`` still sets the views' size; the kNN monitor is off).
    ``model.backbone`` is the trained backbone.
    """
    from tfssl.data import sources
    from tfssl.trainer import train as train_run

    source = None
    if images is not None:
        import tensorflow as tf

        source = (sources.from_dataset(images) if isinstance(images, tf.data.Dataset)
                  else sources.from_array(images, labels))
    return train_run(config, verbose=verbose, source=source)


def embed(model, images, batch_size=256, normalize=True, image_size=None):
    """Pooled backbone features of ``images`` (a NumPy array or ``tf.data.Dataset``
    of same-size images, uint8 or floats in [0, 1]), in inference mode: float32
    ``[N, C]``, L2-normalised unless ``normalize=False``. Images are resized and
    centre-cropped to the run's ``--image_size`` (or ``image_size``), as
    evaluation does.

    ``model``: what :func:`train` returned, or a backbone with ``image_size``.
    """
    import tensorflow as tf

    from tfssl.data import pipeline, sources
    from tfssl.evaluation.knn import extract_features

    backbone = getattr(model, "backbone", model)
    run_config = getattr(model, "run_config", None)
    size = image_size or (run_config.data.image_size if run_config else None)
    if not size:
        raise UserError("embed needs image_size= for a bare backbone (the model "
                        "api.train returned knows it)")
    source = (sources.from_dataset(images) if isinstance(images, tf.data.Dataset)
              else sources.from_array(images))
    features, _ = extract_features(backbone, pipeline.eval_dataset(source, size,
                                                                   batch_size))
    if normalize:
        features /= np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    return features


def export(model, export_dir, channels=3):
    """Writes the backbone of ``model`` (what :func:`train` returned) as the command
    line's SavedModel (``serving_default`` on uint8, ``serving_float`` on [0, 1]
    images of the run's size and ``channels``); returns the directory."""
    import os

    import tensorflow as tf

    from tfssl.export import build_serving_module, check_export_dir

    export_dir = os.path.abspath(export_dir)
    check_export_dir(export_dir)
    module = build_serving_module(model.backbone, model.run_config.data.image_size,
                                  channels)
    tf.saved_model.save(module, export_dir, signatures={
        "serving_default": module.serve, "serving_float": module.serve_float})
    return export_dir
