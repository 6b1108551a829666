"""Image sources: Fashion-MNIST (Debian IDX files), tensorflow-datasets, image folders.

``load_source(name, split, data_dir)`` returns a :class:`Source`: metadata plus
either the whole split in memory (uint8 numpy arrays) or a ``make_dataset``
callable for streaming.  ``Source.as_dataset()`` hides the difference: both yield
``{"image": uint8 [H, W, C], "label": int64 []}`` in a fixed order, not shuffled,
not repeated.  Unlabeled examples have label -1.  Nothing is ever downloaded.

In memory by default when the split fits in ``IN_MEMORY_BYTES`` (Fashion-MNIST,
CIFAR, STL-10 train/test); streamed otherwise (STL-10 unlabeled, Imagenette,
ImageNet, large image folders).  ``in_memory=`` overrides the default.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from typing import Callable

import numpy as np
import tensorflow as tf

from tfssl.data import _idx
from tfssl.data import _image_folder as _folder
from tfssl.data.records import RecordFiles
from tfssl.errors import UserError

IN_MEMORY_BYTES = 1 << 30  # default limit for holding a split as uint8 numpy arrays
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian: dataset-fashion-mnist
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True, eq=False)
class Source:
    """One split of one dataset.

    Attributes:
      name, split: as passed to :func:`load_source`.
      num_examples: examples ``as_dataset()`` yields (image folders: see ``notes``).
      num_classes: classes of the labels; 0 when there are none (all labels -1).
      image_shape: native ``(H, W, C)``, C in {1, 3}; ``(None, None, 3)`` for
        variable-size sources.
      mean, std: 3-channel per-channel statistics in [0, 1] (grayscale replicated).
      images: uint8 ``[N, H, W, C]`` when in memory, else None (read-only).
      labels: int64 ``[N]`` when in memory, else None (read-only).
      make_dataset: when streaming, builds the ``tf.data.Dataset`` of
        ``{"image": uint8 [H, W, C], "label": int64 []}``.
      read: streaming sources with random access (image folders): a
        traceable ``fn(index int64 []) -> string []``, the encoded file of example
        ``index`` of ``as_dataset()``'s order (decoded to RGB); the pretraining
        stream then reads only the examples it keeps (``pipeline.pretrain_dataset``).
        None: sequential access only.
      records: streaming tfds sources stored as TFRecord files: the files, their
        lengths and how to get an example's encoded image (the pretraining stream
        then reads each worker's own files, ``tfssl.data.records``).
      skipped: files that could not be decoded and were left out (image folders).
      notes: human-readable remarks (how files were checked, aliases, ...).
    """

    name: str
    split: str
    num_examples: int
    num_classes: int
    image_shape: tuple
    mean: tuple
    std: tuple
    images: np.ndarray | None = dataclasses.field(repr=False)
    labels: np.ndarray | None = dataclasses.field(repr=False)
    make_dataset: Callable[[], tf.data.Dataset] | None = dataclasses.field(repr=False)
    skipped: int = 0
    notes: str = ""
    read: Callable[[tf.Tensor], tf.Tensor] | None = dataclasses.field(default=None,
                                                                      repr=False)
    records: RecordFiles | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self):
        if (self.images is None) == (self.make_dataset is None):
            raise ValueError("Source needs exactly one of images (in memory) or make_dataset")
        if self.images is not None:
            if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.labels is None:
                raise ValueError("in-memory images must be uint8 [N, H, W, C], got "
                                 f"{self.images.dtype} {self.images.shape}")
            if self.labels.shape != (self.num_examples,) or len(self.images) != self.num_examples:
                raise ValueError(f"{len(self.images)} images, labels {self.labels.shape}, "
                                 f"num_examples {self.num_examples}")

    @property
    def in_memory(self) -> bool:
        """True when ``images``/``labels`` hold the whole split."""
        return self.images is not None

    @property
    def random_access(self) -> bool:
        """True when example ``i`` can be read alone (in memory, or ``read``)."""
        return self.in_memory or self.read is not None

    def as_dataset(self) -> tf.data.Dataset:
        """``{"image": uint8 [H, W, C], "label": int64 []}``, fixed order, one pass."""
        if self.in_memory:
            return tf.data.Dataset.from_tensor_slices({"image": self.images, "label": self.labels})
        return self.make_dataset()


def _make(name, split, images, labels, in_memory, **fields) -> Source:
    """Source from numpy arrays; ``in_memory=False`` wraps them in ``make_dataset``."""
    images.setflags(write=False)
    labels.setflags(write=False)
    if in_memory is False:
        make = lambda: tf.data.Dataset.from_tensor_slices({"image": images, "label": labels})
        return Source(name, split, len(labels), images=None, labels=None, make_dataset=make,
                      **fields)
    return Source(name, split, len(labels), images=images, labels=labels, make_dataset=None,
                  **fields)


def _check_split(name: str, split: str, splits) -> None:
    if split not in splits:
        raise UserError(f"--dataset={name} has no split {split!r}; use one of {', '.join(splits)}")


# ---------------------------------------------------------------- Fashion-MNIST

_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# file -> (SHA-256 of the Debian .gz, SHA-256 of the decompressed IDX payload).
_FASHION_SHA256 = {
    "train-images-idx3-ubyte.gz": (
        "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
    "train-labels-idx1-ubyte.gz": (
        "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
    "t10k-images-idx3-ubyte.gz": (
        "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
    "t10k-labels-idx1-ubyte.gz": (
        "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
}
# Over all 60000 training images x 784 pixels, in [0, 1] (population std).
_FASHION_MEAN, _FASHION_STD = 0.2860406, 0.3530242
_FASHION_FIX = ("re-install it with `apt-get install --reinstall dataset-fashion-mnist` "
                "or pass --data_dir=DIR holding the four original IDX .gz files")


def _load_fashion_mnist(split, data_dir, in_memory, image_size) -> Source:
    """Fashion-MNIST from IDX files: images uint8 [N, 28, 28, 1], labels int64 [N], 10 classes.

    ``train`` has 60000 examples, ``test`` 10000.  Checksums are verified (once per
    file per process).
    """
    del image_size  # native 28x28; the pipeline's crops resize
    _check_split("fashion_mnist", split, _FASHION_FILES)
    directory = os.path.expanduser(data_dir) if data_dir else FASHION_MNIST_DIR
    arrays = []
    for file in _FASHION_FILES[split]:
        path = os.path.join(directory, file)
        if not os.path.isfile(path):
            raise UserError(f"{path} not found; install it with `apt-get install "
                            "dataset-fashion-mnist` or pass --data_dir=DIR holding the four "
                            "IDX .gz files")
        data = _idx.read_verified_gz(path, *_FASHION_SHA256[file], _FASHION_FIX)
        arrays.append(_idx.parse_idx(data, path, _FASHION_FIX))
    images, labels = arrays
    return _make("fashion_mnist", split, images[..., None], labels.astype(np.int64), in_memory,
                 num_classes=10, image_shape=(28, 28, 1),
                 mean=(_FASHION_MEAN,) * 3, std=(_FASHION_STD,) * 3)


# ---------------------------------------------------------- tensorflow-datasets


@dataclasses.dataclass(frozen=True)
class _Tfds:
    """How one of our names maps onto a tfds builder."""

    tfds_name: str
    splits: dict  # our split -> tfds splits concatenated in order
    mean: tuple
    std: tuple
    manual: str = ""  # non-empty: needs --data_dir and a manual download


_TRAIN_TEST = {"train": ("train",), "test": ("test",)}
_TRAIN_VAL = {"train": ("train",), "validation": ("validation",), "test": ("validation",)}
_TFDS = {
    "cifar10": _Tfds("cifar10", _TRAIN_TEST, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": _Tfds("cifar100", _TRAIN_TEST, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "stl10": _Tfds("stl10", {**_TRAIN_TEST, "unlabeled": ("unlabeled",),
                             "train+unlabeled": ("train", "unlabeled")},
                   (0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)),
    "imagenette": _Tfds("imagenette/full-size-v2", _TRAIN_VAL, IMAGENET_MEAN, IMAGENET_STD),
    "imagenette_320": _Tfds("imagenette/320px-v2", _TRAIN_VAL, IMAGENET_MEAN, IMAGENET_STD),
    "imagenette_160": _Tfds("imagenette/160px-v2", _TRAIN_VAL, IMAGENET_MEAN, IMAGENET_STD),
    "imagenet2012": _Tfds("imagenet2012", _TRAIN_VAL, IMAGENET_MEAN, IMAGENET_STD,
                          manual="put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar "
                                 "(from image-net.org) in DIR/downloads/manual, then "),
}


def _load_tfds(name, split, data_dir, in_memory, image_size) -> Source:
    """A prepared tfds dataset (never downloads).  Splits listed in ``_TFDS``;
    ``test`` is an alias of ``validation`` for the ImageNet family."""
    del image_size
    spec = _TFDS[name]
    _check_split(name, split, spec.splits)
    build = ("run `python -m tensorflow_datasets.scripts.download_and_prepare "
             f"--datasets={spec.tfds_name} --data_dir=DIR`"
             + ("" if spec.manual else " where there is internet"))
    if spec.manual and not data_dir:
        raise UserError(f"--dataset={name} needs --data_dir=DIR with the prepared tfds data; "
                        f"{spec.manual}{build}")
    try:
        import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    except ImportError as e:
        raise UserError(f"--dataset={name} needs `pip install tensorflow-datasets "
                        f"importlib_resources` ({e})") from e
    root = os.path.expanduser(data_dir) if data_dir else None
    builder = tfds.builder(spec.tfds_name, data_dir=root)

    def make() -> tf.data.Dataset:
        ds = None
        for part in spec.splits[split]:
            try:
                part_ds = builder.as_dataset(split=part, shuffle_files=False)
            except AssertionError as e:  # tfds' "could not find data in ..."
                raise UserError(f"tfds dataset {spec.tfds_name} is not prepared in "
                                f"{builder.data_dir}; {spec.manual}{build}, then pass "
                                "--data_dir=DIR") from e
            unlabeled = part == "unlabeled"
            part_ds = part_ds.map(lambda ex, u=unlabeled: {
                "image": ex["image"],
                "label": tf.constant(-1, tf.int64) if u else tf.cast(ex["label"], tf.int64)})
            ds = part_ds if ds is None else ds.concatenate(part_ds)
        return ds

    ds = make()
    num_examples = int(ds.cardinality())
    if num_examples < 0:
        num_examples = sum(builder.info.splits[p].num_examples for p in spec.splits[split])
    shape = tuple(builder.info.features["image"].shape)
    num_classes = builder.info.features["label"].num_classes
    fields = dict(num_classes=0 if split == "unlabeled" else num_classes, image_shape=shape,
                  mean=spec.mean, std=spec.std,
                  notes=f"tfds {spec.tfds_name} splits {'+'.join(spec.splits[split])}")
    fixed = None not in shape
    if in_memory is None:
        in_memory = fixed and num_examples * int(np.prod(shape)) <= IN_MEMORY_BYTES
    if in_memory and not fixed:
        raise UserError(f"--dataset={name} has images of varying size and cannot be held in "
                        "memory; stream it (in_memory=False)")
    if not in_memory:
        return Source(name, split, num_examples, images=None, labels=None, make_dataset=make,
                      records=_record_files(builder, spec.splits[split], shape), **fields)
    batches = list(tfds.as_numpy(ds.batch(1024)))
    images = np.concatenate([b["image"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])
    return _make(name, split, images, labels, True, **fields)


def _record_files(builder, parts, shape):
    """The TFRecord files of ``parts`` (whole files only), or None (another file
    format, or a split that reads part of a file)."""
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    if str(getattr(builder.info, "file_format", "")).lower().split(".")[-1] != "tfrecord":
        return None
    paths, lengths = [], []
    try:
        for part in parts:
            for f in builder.info.splits[part].file_instructions:
                if f.skip or f.take != f.examples_in_shard:
                    return None
                paths.append(str(f.filename))
                lengths.append(int(f.examples_in_shard))
    except (KeyError, AttributeError, TypeError):  # no split info (mocked data)
        return None
    if not paths or not tf.io.gfile.exists(paths[0]):
        return None
    features = builder.info.features
    channels = shape[-1] or 3

    def image(record):
        return features.deserialize_example(
            record, decoders={"image": tfds.decode.SkipDecoding()})["image"]

    return RecordFiles(tuple(paths), tuple(lengths), image, channels)


# ---------------------------------------------------------------- image folders

_SPLIT_DIRS = ("train", "test", "val", "validation", "unlabeled")


def _load_image_folder(split, data_dir, in_memory, image_size,
                       labels="subfolders") -> Source:
    """Images under ``data_dir`` (or ``data_dir/split`` when that folder exists).

    Sub-folders are classes (sorted); images directly in the root have label -1.
    Any size and channel layout is decoded to RGB uint8 ``[H, W, 3]``; images
    smaller than 8 px are kept (the crops upsample them).  Files that cannot be
    decoded are skipped and counted in ``skipped`` (see ``_image_folder``).

    With ``image_size`` the folder can be held in memory as uint8
    ``[N, image_size, image_size, 3]`` (aspect-preserving resize + centre crop);
    that is the default when it fits ``IN_MEMORY_BYTES``.  Otherwise the images
    stream at native size.
    """
    if not data_dir:
        raise UserError("--dataset=image_folder needs --data_dir=DIR, a folder of images "
                        "(optionally one sub-folder per class)")
    data_dir = os.path.expanduser(data_dir)
    if not os.path.isdir(data_dir):
        raise UserError(f"--data_dir={data_dir} is not a directory; pass a folder of images")
    root, notes = os.path.join(data_dir, split), []
    if not os.path.isdir(root):
        present = [d for d in _SPLIT_DIRS if os.path.isdir(os.path.join(data_dir, d))]
        if present:
            raise UserError(f"--data_dir={data_dir} has split folders {', '.join(present)} but no "
                            f"{split!r}; add {root} or pass the split folder itself as --data_dir")
        root = data_dir
        notes.append(f"no {split!r} sub-folder: split {split!r} is all of {data_dir}")
    paths, labels, classes = _folder.scan(root, labels)
    total = len(paths)
    if not total:
        raise UserError(f"--data_dir={root} holds no image files "
                        f"({' '.join(_folder.EXTENSIONS)}); put images in it or in one "
                        "sub-folder per class")
    if in_memory is None:
        in_memory = bool(image_size) and total * image_size**2 * 3 <= IN_MEMORY_BYTES
    if in_memory and not image_size:
        raise UserError("image_folder can be held in memory only at a fixed image_size; "
                        "pass image_size")
    candidates = np.asarray([i for i, p in enumerate(paths) if _folder.has_image_header(p)],
                            np.int64)
    images, sizes = None, None
    if in_memory or total <= _folder.FULL_CHECK_MAX_FILES:
        kept, sizes, images = _folder.decode_all([paths[i] for i in candidates],
                                                 image_size if in_memory else None)
        candidates = candidates[kept]
        notes.append("every file decoded at load time")
    else:
        notes.append("file headers checked only; files that fail to decode while streaming "
                     "are dropped and not counted in skipped")
    bad = sorted(set(range(total)) - set(candidates.tolist()))
    if bad:
        names = ", ".join(os.path.relpath(paths[i], root) for i in bad[:5])
        more = ", ..." if len(bad) > 5 else ""
        notes.append(f"skipped {len(bad)} unreadable files: {names}{more}")
        logging.getLogger(__name__).warning("image_folder %s: %s", root, notes[-1])
    if not len(candidates):
        raise UserError(f"none of the {total} image files under --data_dir={root} could be "
                        "decoded; replace them with valid JPEG/PNG/GIF/BMP files")
    if sizes is not None and (tiny := int(np.sum(sizes.min(axis=1) < _folder.TINY_SIDE))):
        notes.append(f"{tiny} images smaller than {_folder.TINY_SIDE} px "
                     "(kept; crops upsample them)")
    notes.append(f"{len(classes)} classes from sub-folders" if classes
                 else "no class sub-folders: labels -1")
    notes.append("mean/std are ImageNet's")
    paths, labels = [paths[i] for i in candidates], labels[candidates]
    fields = dict(num_classes=len(classes), mean=IMAGENET_MEAN, std=IMAGENET_STD,
                  skipped=len(bad), notes="; ".join(notes))
    if in_memory:
        return _make("image_folder", split, images, labels, True,
                     image_shape=(image_size, image_size, 3), **fields)
    files = tf.constant(paths, tf.string, [len(paths)])
    return Source("image_folder", split, len(paths), image_shape=(None, None, 3), images=None,
                  labels=None, make_dataset=lambda: _folder.stream(paths, labels),
                  read=lambda index: tf.io.read_file(tf.gather(files, index)), **fields)


# ------------------------------------------------------------ images given in Python


def from_array(images, labels=None, name="array") -> Source:
    """A :class:`Source` of images held in a NumPy array (the Python API).

    Args:
      images: ``[N, H, W, C]``, ``C`` in {1, 3}: uint8, or floats in [0, 1]
        (rounded to uint8).
      labels: optional int ``[N]`` (-1 where unknown).

    The mean and std are the images' own (per channel, gray replicated).

    Raises:
      UserError: another shape, or values outside [0, 1] for floats.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or not len(images):
        raise UserError(f"images must be [N, H, W, C] with C 1 or 3 and N > 0; got shape "
                        f"{images.shape}")
    if images.dtype != np.uint8:
        if not np.issubdtype(images.dtype, np.floating) or images.min() < 0 or (
                images.max() > 1):
            raise UserError("images must be uint8, or floats in [0, 1]; got "
                            f"{images.dtype} in [{images.min()}, {images.max()}]")
        images = np.round(images * 255.0).astype(np.uint8)
    labels = (np.full(len(images), -1, np.int64) if labels is None
              else np.asarray(labels, np.int64).reshape(-1))
    if len(labels) != len(images):
        raise UserError(f"{len(labels)} labels for {len(images)} images")
    pixels = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    mean, std = pixels.mean(axis=0), np.maximum(pixels.std(axis=0), 1e-3)
    if len(mean) == 1:
        mean, std = np.repeat(mean, 3), np.repeat(std, 3)
    known = labels[labels >= 0]
    return _make(name, "train", np.ascontiguousarray(images), labels, True,
                 num_classes=int(known.max()) + 1 if len(known) else 0,
                 image_shape=tuple(images.shape[1:]),
                 mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std),
                 notes="images given in Python")


def from_dataset(dataset, name="dataset") -> Source:
    """:func:`from_array` of a finite ``tf.data.Dataset`` of images (each element an
    image ``[H, W, C]``, an ``(image, label)`` pair or a ``{"image", "label"}``
    dict), read into memory once; the images must share one size."""
    images, labels = [], []
    for element in dataset.as_numpy_iterator():
        if isinstance(element, dict):
            image, label = element["image"], element.get("label", -1)
        elif isinstance(element, tuple):
            image, label = element[0], element[1] if len(element) > 1 else -1
        else:
            image, label = element, -1
        images.append(image)
        labels.append(label)
    if not images:
        raise UserError("the dataset is empty")
    if len({np.shape(i) for i in images}) > 1:
        raise UserError("the dataset's images differ in size; resize them to one size "
                        "first (e.g. tf.image.resize) or use --dataset=image_folder")
    return from_array(np.stack(images), np.asarray(labels), name)


# --------------------------------------------------------------------- registry

DATASETS: dict[str, Callable[..., Source]] = {
    "fashion_mnist": _load_fashion_mnist,
    **{name: functools.partial(_load_tfds, name) for name in _TFDS},
    "image_folder": _load_image_folder,
}


def known_datasets() -> tuple[str, ...]:
    """Sorted names accepted by :func:`load_source` (``--dataset``)."""
    return tuple(sorted(DATASETS))


def load_source(name: str, split: str, data_dir: str | None = None, *,
                in_memory: bool | None = None, image_size: int | None = None,
                folder_labels: str = "subfolders") -> Source:
    """Loads one split of a dataset; never downloads.

    Args:
      name: one of :func:`known_datasets` (the ``--dataset`` flag).
      split: e.g. ``train``, ``test``, ``unlabeled``, ``train+unlabeled`` (STL-10).
      data_dir: overrides where the files are (the ``--data_dir`` flag); required
        for ``image_folder`` and ``imagenet2012``.
      in_memory: force (True) or forbid (False) holding the split as numpy
        arrays; None picks by size (``IN_MEMORY_BYTES``).
      image_size: ``image_folder`` only: side of the square images held in
        memory.  Other sources keep their native size and ignore it.
      folder_labels: ``image_folder`` only: ``"subfolders"`` (classes) or
        ``"none"`` (every image under the split, recursively, unlabeled).

    Raises:
      UserError: unknown name or split, missing / corrupt / unprepared data.
    """
    if name not in DATASETS:
        raise UserError(f"--dataset={name!r} is unknown; choose one of "
                        f"{', '.join(known_datasets())}")
    if image_size is not None and image_size < 1:
        raise UserError(f"image_size must be a positive number of pixels, got {image_size}")
    if name == "image_folder":
        return _load_image_folder(split, data_dir, in_memory, image_size, folder_labels)
    return DATASETS[name](split, data_dir, in_memory, image_size)
