"""Export the pretrained backbone as a SavedModel for serving.

``python -m tfssl.export --model_dir=RUN --export_dir=OUT``

Two signatures, both returning ``embedding`` (L2-normalised pooled features) and
``features`` (pooled features), float32 ``[N, D]``:

* ``serving_default`` takes ``uint8 [N, H, W, C]`` images of the training size and
  channel count; scaling to [0, 1], grayscale to RGB and mean/std normalisation all
  happen inside the graph;
* ``serving_float`` takes ``float32 [N, H, W, C]`` images already in [0, 1].

A signature converts a NumPy argument to its own dtype (a float array passed to
``serving_default`` would be truncated to integers), so pick the signature by the
images' dtype. Inside the graph the images' shape is checked (a wrong rank, size or
channel count fails with a message naming the expected shape), ``serving_float``
checks the value range, and an empty batch returns ``[0, D]`` outputs without
running the backbone.

The SavedModel is written into a temporary folder beside ``--export_dir`` and moved
into place when complete; an existing SavedModel there is replaced, any other
non-empty folder is refused.
"""

from tfssl.cli import quiet_tensorflow, run_main

quiet_tensorflow()

from absl import flags  # noqa: E402

FLAGS = flags.FLAGS


def define_flags(flag_values=FLAGS):
    """``--model_dir`` and ``--export_dir`` (defined by ``main``, not at import, so
    that importing :func:`export` beside ``tfssl.train`` defines nothing twice)."""
    if "model_dir" not in flag_values:
        flags.DEFINE_string("model_dir", None, "Run directory written by tfssl.train.",
                            flag_values=flag_values)
    if "export_dir" not in flag_values:
        flags.DEFINE_string("export_dir", None, "Where to write the SavedModel "
                            "(default: MODEL_DIR/export). An existing SavedModel "
                            "there is replaced; any other non-empty directory is "
                            "refused.", flag_values=flag_values)

SAVED_MODEL_FILES = {"saved_model.pb", "variables", "assets", "fingerprint.pb",
                     "keras_metadata.pb"}


def build_serving_module(backbone, image_size, channels):
    """A ``tf.Module`` whose ``serve`` / ``serve_float`` are the signatures."""
    import tensorflow as tf

    shape = [image_size, image_size, channels]
    dim = int(backbone.output["pooled"].shape[-1])
    expected = f"[N, {image_size}, {image_size}, {channels}]"

    def checked(images, name, dtype):
        # Rank-safe without tf.cond (the signature's static rank 4 lets grappler
        # fold a rank test away): pad the runtime shape, then compare.
        actual = tf.shape(images)
        ok = tf.reduce_all(tf.equal(tf.pad(actual, [[0, 4]])[1:4], shape)) & tf.equal(
            tf.size(actual), 4)
        return tf.debugging.Assert(
            ok, [f"{name} takes {dtype} images {expected} (the training size and "
                 "channels); got shape", actual], summarize=8)

    class Serving(tf.Module):
        def __init__(self):
            super().__init__(name="tfssl_backbone")
            self.backbone = backbone

        def _outputs(self, x):
            def run():
                y = tf.image.grayscale_to_rgb(x) if channels == 1 else x
                return tf.cast(self.backbone(y, training=False)["pooled"], tf.float32)

            features = tf.cond(tf.shape(x)[0] > 0, run,
                               lambda: tf.zeros([0, dim], tf.float32))
            return {"embedding": tf.math.l2_normalize(features, axis=-1),
                    "features": features}

        @tf.function(input_signature=[tf.TensorSpec([None, *shape], tf.uint8,
                                                    name="images")])
        def serve(self, images):
            with tf.control_dependencies([checked(images, "serving_default", "uint8")]):
                x = tf.cast(images, tf.float32) / 255.0
            return self._outputs(x)

        @tf.function(input_signature=[tf.TensorSpec([None, *shape], tf.float32,
                                                    name="images")])
        def serve_float(self, images):
            # The range test runs after the shape check and on the flattened values:
            # a reduction over the static rank-4 axes fails on an input of another
            # rank, and could run first, replacing the shape check's message.
            shape_ok = checked(images, "serving_float", "float32")
            with tf.control_dependencies([shape_ok]):
                values = tf.reshape(images, [-1])
                in_range = tf.reduce_all((values >= 0.0) & (values <= 1.0))
            with tf.control_dependencies([shape_ok, tf.debugging.Assert(in_range, [
                    "serving_float takes values in [0, 1]; for 0-255 images use "
                    "serving_default with uint8"])]):
                x = tf.identity(images)
            return self._outputs(x)

    return Serving()


def check_export_dir(export_dir):
    """Refuses a file or a non-empty folder that is not a SavedModel (UserError)."""
    import os

    from tfssl.errors import UserError
    from tfssl.run_dir import check_writable_dir

    check_writable_dir(export_dir, "export_dir")
    if os.path.isdir(export_dir):
        entries = set(os.listdir(export_dir))
        if entries and not ("saved_model.pb" in entries and entries <= SAVED_MODEL_FILES):
            raise UserError(
                f"--export_dir={export_dir} is not empty and holds no SavedModel "
                f"({', '.join(sorted(entries)[:3])}...); pass an empty or new folder.")
    parent = os.path.dirname(os.path.abspath(export_dir))
    check_writable_dir(parent, "export_dir")


def export(model_dir, export_dir=None):
    """Writes the SavedModel; returns its directory."""
    import os
    import shutil

    import tensorflow as tf

    from tfssl.trainer import load_config, load_trained_model, run_source

    export_dir = export_dir or os.path.join(model_dir, "export")
    check_export_dir(export_dir)
    config = load_config(model_dir)
    model = load_trained_model(config)
    source = run_source(config, config.data.pretrain_split)
    channels = source.image_shape[-1] or 3
    module = build_serving_module(model.backbone, config.data.image_size, channels)
    export_dir = os.path.abspath(export_dir)
    staging = f"{export_dir}.tmp{os.getpid()}"
    old = f"{export_dir}.old{os.getpid()}"
    try:
        tf.saved_model.save(module, staging, signatures={
            "serving_default": module.serve, "serving_float": module.serve_float})
        if os.path.exists(export_dir):
            os.replace(export_dir, old)
        os.replace(staging, export_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return export_dir


def main(argv):
    from tfssl.errors import UserError

    if len(argv) > 1:
        raise UserError(f"unexpected arguments {argv[1:]}; flags look like --name=value.")
    if not FLAGS.model_dir:
        raise UserError("--model_dir is required.")
    path = export(FLAGS.model_dir, FLAGS.export_dir)
    print(f"SavedModel written to {path} (signatures serving_default: uint8 images, "
          "serving_float: float images in [0, 1] -> embedding, features)")


if __name__ == "__main__":
    define_flags()
    run_main(main)
