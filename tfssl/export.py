"""Export the pretrained backbone as a SavedModel for serving.

``python -m tfssl.export --model_dir=RUN --export_dir=OUT``

The ``serving_default`` signature takes ``uint8 [None, H, W, C]`` images of the
training size and channel count and returns ``embedding`` (L2-normalised pooled
features) and ``features`` (pooled features); scaling to [0, 1], grayscale to RGB
and mean/std normalisation all happen inside the graph.
"""

from tfssl.cli import quiet_tensorflow, run_main

quiet_tensorflow()

from absl import flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "Run directory written by tfssl.train.")
flags.DEFINE_string("export_dir", None, "Where to write the SavedModel "
                    "(default: MODEL_DIR/export).")


def build_serving_module(backbone, image_size, channels):
    """A ``tf.Module`` whose ``serve`` is the serving signature."""
    import tensorflow as tf

    class Serving(tf.Module):
        def __init__(self):
            super().__init__(name="tfssl_backbone")
            self.backbone = backbone

        @tf.function(input_signature=[tf.TensorSpec(
            [None, image_size, image_size, channels], tf.uint8, name="images")])
        def serve(self, images):
            x = tf.cast(images, tf.float32) / 255.0
            if channels == 1:
                x = tf.image.grayscale_to_rgb(x)
            features = self.backbone(x, training=False)["pooled"]
            features = tf.cast(features, tf.float32)
            return {"embedding": tf.math.l2_normalize(features, axis=-1),
                    "features": features}

    return Serving()


def export(model_dir, export_dir=None):
    """Writes the SavedModel; returns its directory."""
    import os

    import tensorflow as tf

    from tfssl.trainer import load_config, load_trained_model, run_source

    config = load_config(model_dir)
    model = load_trained_model(config)
    source = run_source(config, config.data.pretrain_split)
    channels = source.image_shape[-1] or 3
    module = build_serving_module(model.backbone, config.data.image_size, channels)
    export_dir = export_dir or os.path.join(model_dir, "export")
    tf.saved_model.save(module, export_dir,
                        signatures={"serving_default": module.serve})
    return export_dir


def main(argv):
    from tfssl.errors import UserError

    if not FLAGS.model_dir:
        raise UserError("--model_dir is required.")
    path = export(FLAGS.model_dir, FLAGS.export_dir)
    print(f"SavedModel written to {path} (signature serving_default: uint8 images "
          "-> embedding, features)")


if __name__ == "__main__":
    run_main(main)
