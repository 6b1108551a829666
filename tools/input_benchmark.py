"""Input-pipeline figures of the streaming paths (issue 18), as JSON lines.

    python tools/input_benchmark.py --folder=/tmp/jpegs [--make=2000] \
        [--image_size=224] [--threads=1] [--batches=8]

* ``--make=N`` first writes N synthetic JPEGs of ImageNet-like sizes (sides
  drawn around 500 x 375, smooth content with texture, quality 90, 4:2:0) into
  ``--folder`` (kept; reused when it already holds them);
* ``images_per_sec``: source images per second through the pretraining stream of
  the folder (two ``strong`` views at ``--image_size``, the image-folder random-access
  path), once with the crop-window decode (``window``) and once decoding every
  image whole (``whole``: ``make_views`` on ``decode_image``), ``--threads`` threads
  (1: per core) and as many parallel map calls;
* ``reads_per_pipeline``: files read by one input pipeline of 1 and of 2 after 16
  global batches (``consumed`` rows, plus what its prefetch read ahead);
* ``resume_seconds``: time to the first batch of a stream started at position 0
  and at position 10^6;
* ``--device_augment``: instead of the above, the split that ``--augment_on=device``
  makes: ``images_per_sec`` of the host's share (``augment_on=device``: decode, draw
  the view parameters, crop; ``host``: the whole views, for comparison), then
  ``device_images_per_sec`` of :func:`tfssl.data.device_augment.apply_views` on
  those batches in a ``tf.function``, with and without XLA (on this machine's CPU:
  a GPU or TPU runs it far faster, and it then overlaps nothing on the host).
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make_folder(folder, n, seed=0):
    import numpy as np
    import tensorflow as tf

    os.makedirs(folder, exist_ok=True)
    have = [f for f in os.listdir(folder) if f.endswith(".jpg")]
    if len(have) >= n:
        return
    rng = np.random.default_rng(seed)
    for i in range(n):
        h = int(np.clip(rng.normal(375, 60), 200, 600))
        w = int(np.clip(rng.normal(500, 80), 250, 800))
        if rng.random() < 0.3:
            h, w = w, h
        low = rng.uniform(0, 255, (max(h // 24, 2), max(w // 24, 2), 3))
        x = tf.image.resize(low[None], [h, w], method="bicubic")[0]
        x = x + rng.normal(0, 12, (h, w, 3))  # texture
        x = tf.cast(tf.clip_by_value(x, 0, 255), tf.uint8)
        with open(os.path.join(folder, f"{i:06d}.jpg"), "wb") as f:
            f.write(tf.io.encode_jpeg(x, quality=90).numpy())


def rate(ds, batches, batch):
    it = iter(ds)
    next(it)  # tracing, first fill
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch / (time.perf_counter() - t)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--folder", required=True)
    p.add_argument("--make", type=int, default=0)
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--device_augment", action="store_true")
    args = p.parse_args()

    import tensorflow as tf

    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    if args.make:
        make_folder(args.folder, args.make)

    import dataclasses

    from tfssl.data import pipeline, views
    from tfssl.data.sources import load_source
    from tfssl.platform import cpu_summary

    src = load_source("image_folder", "train", args.folder, in_memory=False)
    specs = views.strong(args.image_size) * 2
    b, calls = args.batch, args.threads
    base = {"tool": "input_benchmark", "cpu": cpu_summary(), "threads": args.threads,
            "images": src.num_examples, "image_size": args.image_size, "batch": b}

    if args.device_augment:
        return device_augment_rates(src, specs, args, base)

    window = pipeline.pretrain_dataset(src, specs, b, seed=0, num_parallel_calls=calls)
    files = tf.constant(sorted(os.path.join(args.folder, f)
                               for f in os.listdir(args.folder) if f.endswith(".jpg")))

    def whole(position, index):
        image = tf.io.decode_image(tf.io.read_file(tf.gather(files, index)), channels=3,
                                   expand_animations=False)
        image.set_shape([None, None, 3])
        return views.make_views(image, specs, pipeline._example_seed(0, position))

    whole_ds = pipeline._index_stream(src.num_examples, 0, 0).map(
        whole, num_parallel_calls=calls).batch(b, drop_remainder=True).prefetch(2)
    for name, ds in (("window", window), ("whole", whole_ds), ("window", window),
                     ("whole", whole_ds)):
        print(json.dumps({**base, "measure": "images_per_sec", "decode": name,
                          "value": round(rate(ds, args.batches, b), 1)}), flush=True)

    for pipelines in (1, 2):
        reads = []

        def counted(index):
            tf.py_function(lambda: reads.append(1), [], [])
            return src.read(index)

        counting = dataclasses.replace(src, read=counted)
        context = tf.distribute.InputContext(pipelines, 0, pipelines)
        ds = pipeline.pretrain_dataset(counting, specs, b, seed=0, input_context=context,
                                       num_parallel_calls=1)
        it = iter(ds)
        for _ in range(16):
            next(it)
        time.sleep(1.0)  # let prefetch fill its buffer, the same for both
        print(json.dumps({**base, "measure": "reads_per_pipeline", "pipelines": pipelines,
                          "global_batches": 16, "consumed": 16 * b // pipelines,
                          "reads": len(reads)}), flush=True)

    for position in (0, 10**6):
        t = time.perf_counter()
        ds = pipeline.pretrain_dataset(src, specs, b, seed=0, start_step=position // b,
                                       num_parallel_calls=calls)
        next(iter(ds))
        print(json.dumps({**base, "measure": "resume_seconds", "position": position,
                          "value": round(time.perf_counter() - t, 3)}), flush=True)


def device_augment_rates(src, specs, args, base):
    import tensorflow as tf

    from tfssl.data import device_augment, pipeline

    b, calls = args.batch, args.threads
    for on in ("device", "host", "device", "host"):
        ds = pipeline.pretrain_dataset(src, specs, b, seed=0, num_parallel_calls=calls,
                                       augment_on=on)
        print(json.dumps({**base, "measure": "images_per_sec", "augment_on": on,
                          "value": round(rate(ds, args.batches, b), 1)}), flush=True)
    ds = pipeline.pretrain_dataset(src, specs, b, seed=0, num_parallel_calls=calls,
                                   augment_on="device")
    batches = [x for _, x in zip(range(args.batches), ds)]
    for jit in (False, True, False, True):
        fn = tf.function(lambda x: device_augment.apply_views(x, specs), jit_compile=jit)
        [v.numpy() for v in fn(batches[0])]  # trace and compile
        t = time.perf_counter()
        for x in batches:
            out = fn(x)
        [v.numpy() for v in out]
        print(json.dumps({**base, "measure": "device_images_per_sec", "jit_compile": jit,
                          "value": round(len(batches) * b / (time.perf_counter() - t), 1)}),
              flush=True)


if __name__ == "__main__":
    main()
