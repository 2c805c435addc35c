"""tasks.idx and the idx data source: tiny IDX files written here, read back, and broken on
purpose (bad magic, truncated, corrupt gzip, missing) with one-line errors naming the file."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from tasks.config import DataConfig, SplitFractions
from tasks.data import prepare
from tasks.errors import DataError
from tasks.idx import DEBIAN_HINT, idx_files, idx_sha256, read_idx
from tasks.lineage import data_lineage


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape
    )
    return header + array.astype(np.uint8).tobytes()


def _write_idx_dir(root: Path, per_class: int = 6, gz: bool = True, size: int = 6) -> Path:
    """A Fashion-MNIST-shaped directory: 4 classes, pixel value = 40 * class (+ noise)."""
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("t10k", per_class // 2)):
        labels = np.repeat(np.arange(4), count).astype(np.uint8)
        images = labels[:, None, None] * 40 + rng.integers(0, 10, (len(labels), size, size))
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            name = f"{split}-{kind}-ubyte"
            payload = _idx_bytes(array)
            if gz:
                (root / f"{name}.gz").write_bytes(gzip.compress(payload))
            else:
                (root / name).write_bytes(payload)
    return root


def test_reads_images_and_labels_gzipped_or_plain(tmp_path: Path) -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "plain").write_bytes(_idx_bytes(images))
    (tmp_path / "packed.gz").write_bytes(gzip.compress(_idx_bytes(images)))
    for name in ("plain", "packed.gz"):
        read = read_idx(tmp_path / name, "images")
        assert read.shape == (2, 3, 4)
        assert read.dtype == np.uint8
        assert np.array_equal(read, images)
    labels = read_idx(_write(tmp_path / "l", _idx_bytes(np.array([3, 1, 4]))), "labels")
    assert labels.tolist() == [3, 1, 4]


def _write(path: Path, payload: bytes) -> Path:
    path.write_bytes(payload)
    return path


def _message(path: Path, kind: str = "images") -> str:
    with pytest.raises(DataError) as info:
        read_idx(path, kind)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message, message
    return message


def test_bad_magic_truncated_and_corrupt_files_name_the_file(tmp_path: Path) -> None:
    good = _idx_bytes(np.zeros((3, 4, 4), dtype=np.uint8))
    assert "magic number 00000c03" in _message(_write(tmp_path / "f", b"\0\0\x0c\x03" + good[4:]))
    assert "magic number 504b0304" in _message(_write(tmp_path / "zip", b"PK\x03\x04rest"))
    assert "an empty file" in _message(_write(tmp_path / "empty", b""))
    assert "47 bytes for shape (3, 4, 4); expected 64" in _message(
        _write(tmp_path / "short", good[:47])
    )
    assert "1 dimension(s); images need 3" in _message(
        _write(tmp_path / "labels", _idx_bytes(np.zeros(5)))
    )
    cut = gzip.compress(good)[:-12]
    assert "corrupt or truncated gzip" in _message(_write(tmp_path / "cut.gz", cut))
    assert "IDX file not found" in _message(tmp_path / "absent")


def test_missing_directory_and_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"is not a directory of IDX files$"):
        idx_files(tmp_path / "nowhere")
    _write_idx_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\[\.gz\]: IDX file not found$"):
        idx_files(tmp_path)


def test_debian_path_missing_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks import idx

    # the Debian location, pointed somewhere that is surely absent
    monkeypatch.setattr(idx, "DEBIAN_FASHION_MNIST", Path("/nonexistent/fashion-mnist"))
    with pytest.raises(DataError) as info:
        idx_files(Path("/nonexistent/fashion-mnist"))
    assert DEBIAN_HINT in str(info.value)
    assert "apt-get install -y dataset-fashion-mnist" in str(info.value)


def test_idx_source_uses_t10k_as_test_and_subsamples_every_class(tmp_path: Path) -> None:
    _write_idx_dir(tmp_path, per_class=20)
    cfg = DataConfig(
        source="idx",
        path=str(tmp_path),
        image_size=8,
        channels=3,
        normalize="imagenet",
        splits=SplitFractions(train=0.6, calib=0.2, val=0.1, test=0.1),
    )
    prepared = prepare(cfg, seed=0, root=Path("/"))
    sizes = prepared.preprocess.split_sizes
    assert sizes["test"] == 40  # the whole t10k file: 4 classes x 10
    assert sizes["train"] + sizes["calib"] + sizes["val"] == 80  # the whole train file
    assert sizes["calib"] == 4 * 5  # per class: round(20 * 0.8/0.9) - round(20 * 0.6/0.9)
    test = prepared.splits["test"]
    assert test.x.shape == (40, 3, 8, 8)
    assert np.array_equal(test.x[:, 0], test.x[:, 2])  # grey replicated to 3 channels
    # class 3's pixels are 120..129 of 255 before a bilinear resize that keeps their range
    assert 120 / 255 - 1e-6 <= test.x[test.y == 3].min() <= test.x[test.y == 3].max() <= 130 / 255
    assert prepared.preprocess.mean == [0.485, 0.456, 0.406]

    small = prepare(cfg.model_copy(update={"max_samples": 20}), seed=0, root=Path("/"))
    assert small.preprocess.split_sizes["test"] == 20
    assert np.bincount(small.splits["test"].y).tolist() == [5, 5, 5, 5]  # classes in turn
    assert sum(small.preprocess.split_sizes.values()) == 40


def test_lineage_hashes_the_idx_files_content(tmp_path: Path) -> None:
    _write_idx_dir(tmp_path, gz=False)
    cfg = DataConfig(source="idx", path=str(tmp_path), normalize="imagenet")
    before = data_lineage(cfg, Path("/"))
    assert before["data_sha256"] == idx_sha256(tmp_path)
    assert before["data_files"]["t10k/labels"] == "t10k-labels-idx1-ubyte"
    labels = tmp_path / "t10k-labels-idx1-ubyte"
    payload = bytearray(labels.read_bytes())
    payload[-1] ^= 1  # one test label changed
    labels.write_bytes(bytes(payload))
    assert data_lineage(cfg, Path("/"))["data_sha256"] != before["data_sha256"]
