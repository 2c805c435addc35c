"""The measuring process gets only the test images it uses: a real test set (10,000 RGB images at
96 px, 1 GiB as float32) does not fit edge-cpu's 2 GiB address-space cap, and the example's
edge-cpu benchmarks all failed with an allocation error before this."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tasks.benchmark import LATENCY_IMAGES, _images_for_measuring, _leading_images
from tasks.config import BenchmarkConfig


@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
def test_leading_images_are_the_first_rows_exactly(tmp_path: Path, dtype: type) -> None:
    x = (np.arange(300 * 3 * 5 * 5) % 251).astype(dtype).reshape(300, 3, 5, 5)
    np.savez(tmp_path / "images.npz", x=x)
    head = _leading_images(tmp_path / "images.npz", 70)
    assert head.dtype == x.dtype
    assert np.array_equal(head, x[:70])
    assert np.array_equal(_leading_images(tmp_path / "images.npz", 1000), x)  # fewer than asked


def test_measuring_file_holds_only_what_latency_and_throughput_use(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((500, 3, 8, 8), dtype=np.float32)
    np.savez(tmp_path / "test.npz", x=x)
    work = tmp_path / "work"
    work.mkdir()
    cfg = BenchmarkConfig(throughput_batch=100)
    with np.load(_images_for_measuring(tmp_path / "test.npz", cfg, work)) as trimmed:
        assert np.array_equal(trimmed["x"], x[:100])
    with np.load(_images_for_measuring(tmp_path / "test.npz", BenchmarkConfig(), work)) as trimmed:
        assert len(trimmed["x"]) == max(LATENCY_IMAGES, BenchmarkConfig().throughput_batch)
