"""Data sources: IDX parsing, the Debian Fashion-MNIST files, tfds (mocked), image folders."""

import gzip
import hashlib
import os
import shutil
import struct
import zlib

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tfssl.data import _idx
from tfssl.data import sources
from tfssl.data.sources import load_source
from tfssl.errors import UserError

FMNIST = sources.FASHION_MNIST_DIR
needs_fmnist = pytest.mark.skipif(
    not os.path.isfile(os.path.join(FMNIST, "t10k-labels-idx1-ubyte.gz")),
    reason="Debian package dataset-fashion-mnist not installed")
rng = np.random.default_rng(0)


def write_idx_gz(path, array, type_code=0x08):
    dims = struct.pack(">" + "I" * array.ndim, *array.shape)
    dtype = {0x08: ">u1", 0x0C: ">i4"}[type_code]
    payload = bytes([0, 0, type_code, array.ndim]) + dims + array.astype(dtype).tobytes()
    with gzip.open(path, "wb") as f:
        f.write(payload)


# ------------------------------------------------------------------------- IDX

def test_idx_round_trip_exact(tmp_path):
    images = rng.integers(0, 256, size=(3, 2, 4), dtype=np.uint8)
    labels = np.array([7, 0, 9], np.uint8)
    ints = np.array([[-5, 70000], [1, -2]], np.int32)  # big-endian multi-byte type
    write_idx_gz(tmp_path / "i.gz", images)
    write_idx_gz(tmp_path / "l.gz", labels)
    write_idx_gz(tmp_path / "n.gz", ints, type_code=0x0C)
    got = _idx.read_idx(str(tmp_path / "i.gz"))
    assert got.dtype == np.uint8 and got.shape == (3, 2, 4)
    np.testing.assert_array_equal(got, images)
    np.testing.assert_array_equal(_idx.read_idx(str(tmp_path / "l.gz")), labels)
    np.testing.assert_array_equal(_idx.read_idx(str(tmp_path / "n.gz")), ints)


@pytest.mark.parametrize("payload, what", [
    (b"\x01\x00\x08\x01\x00\x00\x00\x02ab", "bad magic"),
    (b"\x00\x00\x07\x01\x00\x00\x00\x02ab", "unknown type code"),
    (b"\x00\x00\x08\x03\x00\x00", "dimensions"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x05ab", "need 13 bytes"),
])
def test_idx_malformed_header(payload, what):
    with pytest.raises(UserError, match=f"bad.idx: malformed IDX file.*{what}"):
        _idx.parse_idx(payload, "bad.idx")


# ------------------------------------------------------- Fashion-MNIST (Debian)

@needs_fmnist
def test_fashion_mnist_real_files():
    for name, (gz_sha, _) in sources._FASHION_SHA256.items():
        with open(os.path.join(FMNIST, name), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == gz_sha, name
    for split, n in [("train", 60000), ("test", 10000)]:
        src = load_source("fashion_mnist", split)
        assert src.in_memory and src.num_examples == n and src.num_classes == 10
        assert src.images.shape == (n, 28, 28, 1) and src.images.dtype == np.uint8
        assert src.labels.shape == (n,) and src.labels.dtype == np.int64
        np.testing.assert_array_equal(np.bincount(src.labels, minlength=10), [n // 10] * 10)
        assert src.image_shape == (28, 28, 1) and len(src.mean) == len(src.std) == 3
        assert not src.images.flags.writeable
    x = src.images.astype(np.float64) / 255  # test split: close to the training statistics
    assert abs(x.mean() - src.mean[0]) < 0.01 and abs(x.std() - src.std[0]) < 0.01
    el = next(iter(src.as_dataset()))
    assert el["image"].dtype == tf.uint8 and el["label"].dtype == tf.int64
    assert int(el["label"]) == src.labels[0]
    streamed = load_source("fashion_mnist", "test", in_memory=False)
    assert not streamed.in_memory and streamed.num_examples == 10000
    first = next(iter(streamed.as_dataset()))
    np.testing.assert_array_equal(first["image"], src.images[0])


@pytest.fixture
def fmnist_copy(tmp_path):
    for name in sources._FASHION_FILES["test"]:
        shutil.copy(os.path.join(FMNIST, name), tmp_path / name)
    return tmp_path


@needs_fmnist
def test_fashion_mnist_flipped_byte(fmnist_copy):
    path = fmnist_copy / "t10k-labels-idx1-ubyte.gz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"t10k-labels-idx1-ubyte\.gz.*re-install"):
        load_source("fashion_mnist", "test", data_dir=str(fmnist_copy))


@needs_fmnist
def test_fashion_mnist_truncated(fmnist_copy):
    path = fmnist_copy / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:100000])
    with pytest.raises(UserError,
                       match=r"t10k-images-idx3-ubyte\.gz is corrupt or truncated.*re-install"):
        load_source("fashion_mnist", "test", data_dir=str(fmnist_copy))


@needs_fmnist
def test_fashion_mnist_wrong_data_fails_checksum(fmnist_copy):
    write_idx_gz(fmnist_copy / "t10k-labels-idx1-ubyte.gz", np.zeros(10000, np.uint8))
    with pytest.raises(UserError, match=r"t10k-labels-idx1-ubyte\.gz fails its SHA-256 check"):
        load_source("fashion_mnist", "test", data_dir=str(fmnist_copy))


@needs_fmnist
def test_fashion_mnist_recompressed_is_accepted(fmnist_copy):
    # The same IDX content gzipped differently (e.g. upstream's files) passes.
    path = fmnist_copy / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes()), compresslevel=1, mtime=0))
    labels = load_source("fashion_mnist", "test", data_dir=str(fmnist_copy)).labels
    np.testing.assert_array_equal(labels, load_source("fashion_mnist", "test").labels)


def test_fashion_mnist_missing(tmp_path):
    with pytest.raises(UserError, match=r"nope/t10k-images-idx3-ubyte\.gz not found.*"
                                        r"apt-get install dataset-fashion-mnist.*--data_dir"):
        load_source("fashion_mnist", "test", data_dir=str(tmp_path / "nope"))


def test_unknown_dataset_and_split():
    with pytest.raises(UserError, match=r"--dataset='mnist' is unknown; choose one of "
                                        r"cifar10, cifar100, fashion_mnist, image_folder"):
        load_source("mnist", "train")
    with pytest.raises(UserError, match=r"--dataset=fashion_mnist has no split 'unlabeled'; "
                                        r"use one of train, test"):
        load_source("fashion_mnist", "unlabeled")
    assert sources.known_datasets() == tuple(sorted(sources.DATASETS))


# ----------------------------------------------------------------- tfds (mocked)

def test_cifar10_mocked():
    with tfds.testing.mock_data(num_examples=6):
        src = load_source("cifar10", "train")
        assert src.in_memory and src.num_examples == 6 and src.num_classes == 10
        assert src.images.shape == (6, 32, 32, 3) and src.images.dtype == np.uint8
        assert src.labels.dtype == np.int64 and set(src.labels) <= set(range(10))
        assert src.mean == (0.4914, 0.4822, 0.4465)
        assert load_source("cifar100", "test").num_classes == 100


def test_stl10_mocked(monkeypatch):
    monkeypatch.setattr(sources, "IN_MEMORY_BYTES", 5 * 96 * 96 * 3)  # 5 images fit, 10 do not
    with tfds.testing.mock_data(num_examples=5):
        train = load_source("stl10", "train")
        assert train.images.shape == (5, 96, 96, 3) and train.num_classes == 10
        unlabeled = load_source("stl10", "unlabeled")
        assert unlabeled.num_classes == 0 and list(unlabeled.labels) == [-1] * 5
        both = load_source("stl10", "train+unlabeled", in_memory=True)
        assert both.num_examples == 10 and both.num_classes == 10 and both.images.shape[0] == 10
        assert (both.labels[:5] >= 0).all() and list(both.labels[5:]) == [-1] * 5
        streamed = load_source("stl10", "train+unlabeled")  # over IN_MEMORY_BYTES: streams
        assert not streamed.in_memory and streamed.num_examples == 10
        labels = [int(e["label"]) for e in streamed.as_dataset()]
        assert len(labels) == 10 and labels[5:] == [-1] * 5
    with pytest.raises(UserError, match=r"no split 'val'; use one of train, test, unlabeled, "
                                        r"train\+unlabeled"):
        load_source("stl10", "val")


def test_imagenette_streams_mocked():
    with tfds.testing.mock_data(num_examples=3):
        src = load_source("imagenette", "test")  # alias of validation
        assert not src.in_memory and src.image_shape == (None, None, 3) and src.num_examples == 3
        for el in src.as_dataset():
            assert el["image"].dtype == tf.uint8 and el["image"].shape[-1] == 3
        with pytest.raises(UserError, match="varying size"):
            load_source("imagenette", "train", in_memory=True)


def test_tfds_not_prepared(tmp_path):
    with pytest.raises(UserError, match=r"not prepared in .*download_and_prepare "
                                        r"--datasets=cifar10 --data_dir=DIR.*--data_dir"):
        load_source("cifar10", "test", data_dir=str(tmp_path))
    with pytest.raises(UserError, match=r"imagenet2012 needs --data_dir=DIR.*downloads/manual"):
        load_source("imagenet2012", "train")


# ----------------------------------------------------------------- image folders

def _chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def palette_png(indices, palette):
    """8-bit palette PNG (colour type 3), which tf.io.encode_png cannot write."""
    h, w = indices.shape
    rows = b"".join(b"\x00" + bytes(r) for r in indices.astype(np.uint8))
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 3, 0, 0, 0))
            + _chunk(b"PLTE", palette.astype(np.uint8).tobytes())
            + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b""))


def gif(indices, palette):
    """4-colour GIF; LZW stream of 3-bit literals with a clear code every 2 pixels
    so the code width never grows."""
    h, w = indices.shape
    codes = []
    for i, p in enumerate(indices.ravel()):
        codes += ([4] if i % 2 == 0 else []) + [int(p)]
    codes.append(5)
    bits = sum(c << (3 * i) for i, c in enumerate(codes))
    data = bits.to_bytes((3 * len(codes) + 7) // 8, "little")
    blocks = b"".join(bytes([len(data[i:i + 255])]) + data[i:i + 255]
                      for i in range(0, len(data), 255))
    return (b"GIF89a" + struct.pack("<HHBBB", w, h, 0xF1, 0, 0)
            + palette.astype(np.uint8).tobytes()
            + b"," + struct.pack("<HHHHB", 0, 0, w, h, 0) + b"\x02" + blocks + b"\x00;")


def bmp(rgb):
    h, w, _ = rgb.shape
    stride = (3 * w + 3) // 4 * 4
    rows = b"".join(rgb[y, :, ::-1].tobytes().ljust(stride, b"\x00") for y in range(h - 1, -1, -1))
    return (b"BM" + struct.pack("<IHHI", 54 + len(rows), 0, 0, 54)
            + struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, len(rows), 0, 0, 0, 0) + rows)


def png(array):
    return tf.io.encode_png(array).numpy()


@pytest.fixture
def folder(tmp_path):
    """class_a: 3 valid; class_b: 4 valid + 2 broken; empty_c: nothing; notes.txt ignored."""
    pal = rng.integers(0, 256, size=(4, 3), dtype=np.uint8)
    idx = rng.integers(0, 4, size=(6, 7))
    yy, xx = np.mgrid[0:10, 0:12]
    # smooth, so that JPEG stays close to it
    rgb = np.stack([yy * 25, xx * 20, 255 - yy * 10 - xx * 8], -1).astype(np.uint8)
    gray = rng.integers(0, 256, size=(9, 8, 1), dtype=np.uint8)
    rgba = rng.integers(0, 256, size=(5, 6, 4), dtype=np.uint8)
    files = {
        "class_a/rgb.JPG": tf.io.encode_jpeg(rgb, quality=95).numpy(),
        "class_a/gray.png": png(gray),
        "class_a/sub/bitmap.bmp": bmp(rgb),
        "class_b/gray_alpha.png": png(np.concatenate([gray, gray // 2], -1)),
        "class_b/palette.png": palette_png(idx, pal),
        "class_b/rgba.png": png(rgba),
        "class_b/tiny.gif": gif(idx[:3, :5], pal),
        "class_b/corrupt.jpg": b"\x00" + rng.integers(0, 256, 500, dtype=np.uint8).tobytes(),
        "class_b/text.png": b"this is not an image\n",
        "class_b/notes.txt": b"ignored: not an image extension",
        "class_b/.hidden.jpg": b"ignored: hidden",
    }
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    (tmp_path / "empty_c").mkdir()
    expected = {  # exact RGB pixels of the lossless files, in scan order
        "gray.png": np.repeat(gray, 3, -1), "bitmap.bmp": rgb,
        "gray_alpha.png": np.repeat(gray, 3, -1),
        "palette.png": pal[idx], "rgba.png": rgba[..., :3], "tiny.gif": pal[idx[:3, :5]]}
    return tmp_path, expected, rgb


def test_image_folder_streaming(folder):
    root, expected, rgb = folder
    src = load_source("image_folder", "train", str(root))
    assert not src.in_memory and src.image_shape == (None, None, 3)
    assert src.num_examples == 7 and src.skipped == 2 and src.num_classes == 3
    assert "corrupt.jpg" in src.notes and "text.png" in src.notes
    assert "3 images smaller than 8 px" in src.notes  # rgba 5x6, palette 6x7, gif 3x5
    els = list(src.as_dataset())
    assert len(els) == 7
    assert [int(e["label"]) for e in els] == [0, 0, 0, 1, 1, 1, 1]
    assert all(e["image"].dtype == tf.uint8 and e["image"].shape[-1] == 3 for e in els)
    # scan order: class_a/{gray.png, rgb.JPG, sub/bitmap.bmp}, class_b sorted
    names = ["gray.png", "rgb.JPG", "bitmap.bmp", "gray_alpha.png", "palette.png", "rgba.png",
             "tiny.gif"]
    got = dict(zip(names, [e["image"].numpy() for e in els]))
    for name, want in expected.items():
        np.testing.assert_array_equal(got[name], want, err_msg=name)
    assert got["rgb.JPG"].shape == (10, 12, 3)
    assert np.abs(got["rgb.JPG"].astype(int) - rgb).mean() < 8  # lossy


def test_image_folder_in_memory(folder):
    root, expected, _ = folder
    src = load_source("image_folder", "test", str(root), image_size=16)
    assert src.in_memory and src.image_shape == (16, 16, 3)
    assert src.images.shape == (7, 16, 16, 3) and src.images.dtype == np.uint8
    assert src.num_examples == 7 and src.skipped == 2
    np.testing.assert_array_equal(src.labels, [0, 0, 0, 1, 1, 1, 1])
    flat = (root / "flat")
    flat.mkdir()
    (flat / "x.png").write_bytes(png(np.full((4, 9, 3), 77, np.uint8)))
    (flat / "y.jpg").write_bytes(png(np.zeros((20, 20, 1), np.uint8)))  # PNG named .jpg: fine
    one = load_source("image_folder", "train", str(flat), image_size=8)
    assert one.num_classes == 0 and list(one.labels) == [-1, -1] and one.skipped == 0
    np.testing.assert_array_equal(one.images[0], np.full((8, 8, 3), 77, np.uint8))


def test_image_folder_damaged_body(tmp_path, monkeypatch):
    jpeg = tf.io.encode_jpeg(rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)).numpy()
    (tmp_path / "good.jpg").write_bytes(jpeg)
    (tmp_path / "cut.jpg").write_bytes(jpeg[:200])  # valid header, truncated body
    src = load_source("image_folder", "train", str(tmp_path))
    assert src.num_examples == 1 and src.skipped == 1 and len(list(src.as_dataset())) == 1
    # A large folder gets the header check only: the damaged file is dropped while
    # streaming, uncounted (documented), and never crashes the iteration.
    monkeypatch.setattr("tfssl.data._image_folder.FULL_CHECK_MAX_FILES", 0)
    src = load_source("image_folder", "train", str(tmp_path))
    assert src.num_examples == 2 and src.skipped == 0 and "headers checked only" in src.notes
    assert len(list(src.as_dataset())) == 1


def test_image_folder_user_errors(tmp_path):
    with pytest.raises(UserError, match="image_folder needs --data_dir"):
        load_source("image_folder", "train")
    with pytest.raises(UserError, match=r"--data_dir=.*missing is not a directory"):
        load_source("image_folder", "train", str(tmp_path / "missing"))
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "readme.txt").write_text("no images")
    with pytest.raises(UserError, match="holds no image files"):
        load_source("image_folder", "train", str(tmp_path))
    (tmp_path / "cls" / "bad.png").write_bytes(b"nope")
    with pytest.raises(UserError, match="none of the 1 image files"):
        load_source("image_folder", "train", str(tmp_path))
    with pytest.raises(UserError, match="fixed image_size"):
        load_source("image_folder", "train", str(tmp_path), in_memory=True)
    split_root = tmp_path / "splits"
    (split_root / "train" / "a").mkdir(parents=True)
    (split_root / "train" / "a" / "x.png").write_bytes(png(np.zeros((4, 4, 3), np.uint8)))
    assert load_source("image_folder", "train", str(split_root)).num_examples == 1
    with pytest.raises(UserError, match=r"has split folders train but no 'test'"):
        load_source("image_folder", "test", str(split_root))
