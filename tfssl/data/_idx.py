"""IDX files (the MNIST / Fashion-MNIST format) and verified reading of gzip files.

IDX layout (big-endian): two zero bytes, one type byte, one byte ``ndim``, then
``ndim`` uint32 dimensions, then the row-major payload.  Only the type codes of the
original specification are accepted.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib

import numpy as np

from tfssl.errors import UserError

# Type byte -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

# (realpath, size, mtime_ns) -> True once a file's checksum has been verified, so
# every file is hashed at most once per process (re-hashed if it changes on disk).
_VERIFIED: dict[tuple, bool] = {}


def parse_idx(data: bytes, name: str, hint: str = "") -> np.ndarray:
    """Parses the (decompressed) bytes of one IDX file.

    Args:
      data: the whole file content.
      name: file name used in error messages.
      hint: sentence appended to error messages saying how to fix the file.

    Returns:
      A native-endian array of the shape the header declares, e.g. uint8
      ``[N, 28, 28]`` for images or ``[N]`` for labels.

    Raises:
      UserError: bad magic number, unknown type code, or a payload whose length
        does not match the declared dimensions.
    """
    def bad(what: str) -> UserError:
        return UserError(f"{name}: malformed IDX file ({what}){'; ' + hint if hint else ''}")

    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise bad(f"bad magic number 0x{data[:4].hex()}")
    if data[2] not in _IDX_DTYPES:
        raise bad(f"unknown type code 0x{data[2]:02x}")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise bad(f"header declares {ndim} dimensions but the file has {len(data)} bytes")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[data[2]]
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise bad(f"dimensions {dims} need {expected} bytes, file has {len(data)}")
    array = np.frombuffer(data, dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str, hint: str = "") -> np.ndarray:
    """Reads an IDX file, gunzipping it when the name ends in ``.gz`` (no checksum)."""
    with open(path, "rb") as f:
        raw = f.read()
    data = gunzip(raw, path, hint) if path.endswith(".gz") else raw
    return parse_idx(data, os.path.basename(path), hint)


def gunzip(raw: bytes, path: str, hint: str) -> bytes:
    """Decompresses gzip bytes; a truncated or damaged stream is a UserError."""
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError.
        raise UserError(f"{path} is corrupt or truncated ({e}); {hint}") from e


def read_verified_gz(path: str, sha256_gz: str, sha256_payload: str, hint: str) -> bytes:
    """Returns the decompressed content of ``path`` after checking its checksum.

    The file is accepted when the SHA-256 of the ``.gz`` bytes equals
    ``sha256_gz`` or, for the same data compressed differently (e.g. upstream's
    downloads instead of Debian's), when the SHA-256 of the decompressed bytes
    equals ``sha256_payload``.  The verdict is cached per process.

    Raises:
      UserError: naming ``path``, when it is unreadable, corrupt or mismatches.
    """
    try:
        st = os.stat(path)
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror}); {hint}") from e
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    verified = _VERIFIED.get(key, False)
    if not verified and hashlib.sha256(raw).hexdigest() == sha256_gz:
        verified = True
    data = gunzip(raw, path, hint)
    if not verified and hashlib.sha256(data).hexdigest() != sha256_payload:
        raise UserError(f"{path} fails its SHA-256 check (corrupt or a different file); {hint}")
    _VERIFIED[key] = True
    return data
