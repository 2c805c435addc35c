"""IDX files (the MNIST / Fashion-MNIST format), gzipped or not: read, check, locate.

An IDX file is two zero bytes, a type byte (0x08: unsigned byte), the number of dimensions,
one big-endian uint32 per dimension, then the values. Images are (N, rows, cols) uint8, labels
(N,) uint8. A directory holds the official split: train-* (60,000) and t10k-* (10,000).
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from pathlib import Path

import numpy as np

from tasks.arrays import Array
from tasks.errors import DataError
from tasks.io import sha256_file

# file stem per (official split, kind); the file is <stem> or <stem>.gz
IDX_STEMS: dict[tuple[str, str], str] = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("t10k", "images"): "t10k-images-idx3-ubyte",
    ("t10k", "labels"): "t10k-labels-idx1-ubyte",
}
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
DEBIAN_HINT = "install it with `apt-get update && apt-get install -y dataset-fashion-mnist`"
_UBYTE = 0x08
_NDIM = {"images": 3, "labels": 1}


def idx_files(directory: Path) -> dict[tuple[str, str], Path]:
    """The four IDX files of `directory` (plain or .gz), or a DataError naming the missing one."""
    directory = Path(directory)
    hint = f"; {DEBIAN_HINT}" if directory.resolve() == DEBIAN_FASHION_MNIST else ""
    if not directory.is_dir():
        raise DataError(f"data.path: {directory} is not a directory of IDX files{hint}")
    found = {}
    for key, stem in IDX_STEMS.items():
        candidates = [directory / stem, directory / f"{stem}.gz"]
        present = [path for path in candidates if path.is_file()]
        if not present:
            raise DataError(f"{directory / stem}[.gz]: IDX file not found{hint}")
        found[key] = present[0]
    return found


def idx_sha256(directory: Path) -> str:
    """One sha256 over the four IDX files' names and contents (the data's cache key)."""
    digest = hashlib.sha256()
    for key, path in sorted(idx_files(directory).items()):
        name = "/".join(key).encode()
        digest.update(len(name).to_bytes(8, "big") + name + bytes.fromhex(sha256_file(path)))
    return digest.hexdigest()


def read_idx(path: Path, kind: str) -> Array:
    """Read one IDX file of unsigned bytes: `kind` "images" (N, H, W) or "labels" (N,)."""
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _UBYTE:
        found = raw[:4].hex() or "an empty file"
        raise DataError(
            f"{path}: not an IDX file of unsigned bytes (magic number {found}; expected 0000 08 0n)"
        )
    ndim = raw[3]
    if ndim != _NDIM[kind]:
        raise DataError(f"{path}: IDX file has {ndim} dimension(s); {kind} need {_NDIM[kind]}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise DataError(
            f"{path}: {len(raw)} bytes for shape {shape}; expected {expected} (truncated or padded)"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def read_idx_split(directory: Path, split: str) -> tuple[Array, Array]:
    """Images (N, H, W) uint8 and labels (N,) int64 of one official split ("train"/"t10k")."""
    files = idx_files(directory)
    images = read_idx(files[(split, "images")], "images")
    labels = read_idx(files[(split, "labels")], "labels")
    if len(images) != len(labels):
        raise DataError(
            f"{files[(split, 'labels')]}: {len(labels)} labels for {len(images)} images in "
            f"{files[(split, 'images')].name}; expected one label per image"
        )
    return images, labels.astype(np.int64)


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: IDX file not found") from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(f"{path}: corrupt or truncated gzip ({type(exc).__name__})") from None
