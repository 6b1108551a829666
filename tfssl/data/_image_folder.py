"""Scanning, validating and decoding a folder of image files (see ``sources.py``).

How unreadable files are handled, so that they are skipped and counted, never a
crash:

1. Header check, always: the first bytes of every file must be a JPEG, PNG, GIF or
   BMP signature.  Random bytes, text files with an image extension, empty or
   unreadable files fail here.  Cost: one 8-byte read per file.
2. Full decode, when the folder is loaded into memory (every image is decoded
   anyway) or has at most ``FULL_CHECK_MAX_FILES`` files: each file is decoded
   in a parallel ``tf.data`` map that carries the file's index, followed by
   ``ignore_errors``; the indices that come out are the good files.  This catches
   files with a valid header and a damaged body (e.g. truncated JPEGs).
3. Streaming datasets keep ``ignore_errors`` as a safety net: in a large folder
   (header check only) a file with a damaged body is dropped while streaming and
   is *not* in ``skipped``; ``num_examples`` then over-counts by that many.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
FULL_CHECK_MAX_FILES = 5000
TINY_SIDE = 8  # images with a side below this are kept (the crops upsample them)
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")


def scan(root: str, labels: str = "subfolders") -> tuple[list[str], np.ndarray, list[str]]:
    """Lists the image files under ``root``, sorted, with their labels.

    Every non-hidden sub-folder of ``root`` is a class (sorted names -> 0, 1, ...;
    empty ones too, so two folders with the same class names agree on indices);
    its images are found recursively.  Images directly in ``root`` get label -1.
    With ``labels="none"`` every image under ``root`` (recursively, sorted by path)
    has label -1 and there are no classes.

    Returns:
      (paths [N], labels int64 [N], class_names [num_classes]).
    """
    def images_in(directory: str, recursive: bool) -> list[str]:
        found = []
        for dirpath, dirnames, filenames in os.walk(directory):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if recursive else []
            found += [os.path.join(dirpath, f) for f in sorted(filenames)
                      if not f.startswith(".") and f.lower().endswith(EXTENSIONS)]
        return found

    if labels == "none":
        paths = images_in(root, recursive=True)
        return paths, np.full(len(paths), -1, np.int64), []
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    paths = images_in(root, recursive=False)
    labels = [-1] * len(paths)
    for index, name in enumerate(classes):
        found = images_in(os.path.join(root, name), recursive=True)
        paths += found
        labels += [index] * len(found)
    return paths, np.asarray(labels, np.int64), classes


def has_image_header(path: str) -> bool:
    """True when the file starts with a JPEG/PNG/GIF/BMP signature (False if unreadable)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return False
    return head.startswith(_SIGNATURES)


def decode(path: tf.Tensor) -> tf.Tensor:
    """Reads and decodes one file to uint8 ``[H, W, 3]`` (gray/alpha/palette -> RGB).

    GIFs give their first frame.  Raises inside ``tf.data`` on a damaged file.
    """
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def resize_center_crop(image: tf.Tensor, size: int) -> tf.Tensor:
    """Aspect-preserving resize (short side -> ``size``, bilinear, antialiased)
    then centre crop: uint8 ``[H, W, 3]`` -> uint8 ``[size, size, 3]``."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = size / tf.reduce_min(shape)
    new = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), size)
    resized = tf.image.resize(image, new, method="bilinear", antialias=True)
    top, left = (new[0] - size) // 2, (new[1] - size) // 2
    crop = resized[top:top + size, left:left + size]
    crop = tf.cast(tf.clip_by_value(tf.round(crop), 0.0, 255.0), tf.uint8)
    crop.set_shape([size, size, 3])
    return crop


def decode_all(paths: list[str], image_size: int | None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Decodes every file in parallel, dropping the ones that fail.

    Args:
      paths: N file names.
      image_size: if given, also returns the images resized/cropped to it.

    Returns:
      (kept indices int64 [M] ascending, original sizes int32 [M, 2] as (H, W),
      images uint8 [M, image_size, image_size, 3] or None).
    """
    def load(index, path):
        image = decode(path)
        out = (index, tf.shape(image)[:2])
        return out + (resize_center_crop(image, image_size),) if image_size else out

    ds = tf.data.Dataset.from_tensor_slices(
        (np.arange(len(paths), dtype=np.int64), tf.constant(paths, tf.string, [len(paths)])))
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.ignore_errors(log_warning=False).batch(256)
    parts = list(zip(*ds.as_numpy_iterator()))
    if not parts:  # nothing decoded
        empty = np.zeros([0, image_size, image_size, 3], np.uint8) if image_size else None
        return np.zeros([0], np.int64), np.zeros([0, 2], np.int32), empty
    images = np.concatenate(parts[2]) if image_size else None
    return np.concatenate(parts[0]), np.concatenate(parts[1]), images


def stream(paths: list[str], labels: np.ndarray) -> tf.data.Dataset:
    """``{"image": uint8 [H, W, 3], "label": int64}`` in file order; damaged files dropped."""
    ds = tf.data.Dataset.from_tensor_slices((tf.constant(paths, tf.string, [len(paths)]), labels))
    ds = ds.map(lambda p, y: {"image": decode(p), "label": y},
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.ignore_errors(log_warning=False)
