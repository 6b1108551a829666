"""Saves a trained run's monitor pictures (LEWEL's alignment maps) as PNG files.

    python tools/draw_maps.py --model_dir=runs/lewel_b [--out=docs/img/lewel_maps.png]

Draws what TensorBoard shows under ``lewel/alignment_maps`` for the run's newest
checkpoint: the first 8 evaluation images, each beside 4 of its alignment maps
(the first map of each channel group; red = weight, each map stretched from its
minimum to its maximum). A method without monitor pictures is refused.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tfssl  # noqa: E402,F401  (oneDNN default before TensorFlow loads)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--out", default=None,
                        help="PNG path (default: <model_dir>/alignment_maps.png)")
    args = parser.parse_args(argv)

    import tensorflow as tf

    from tfssl.data import pipeline
    from tfssl.errors import UserError
    from tfssl.trainer import MONITOR_IMAGES, load_config, load_trained_model, run_source

    try:
        config = load_config(args.model_dir)
        model = load_trained_model(config)
        source = run_source(config, config.data.eval_split)
        images = next(iter(pipeline.eval_dataset(
            source, config.data.image_size, MONITOR_IMAGES, limit=MONITOR_IMAGES)))[0]
        pictures = model.monitor_images(images)
        if not pictures:
            raise UserError(f"--method={config.train.method} draws no monitor "
                            "pictures (LEWEL's lewel_b and lewel_m do).")
        out = args.out or os.path.join(args.model_dir, "alignment_maps.png")
        for i, (name, picture) in enumerate(sorted(pictures.items())):
            path = out if i == 0 else f"{os.path.splitext(out)[0]}_{i}.png"
            png = tf.io.encode_png(tf.cast(tf.clip_by_value(picture[0], 0, 1) * 255,
                                           tf.uint8))
            tf.io.write_file(path, png)
            print(f"{name}: {path} (step {int(model.steps_taken.numpy())})")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
