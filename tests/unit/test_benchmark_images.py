"""The measuring process gets only the test images it uses: a real test set (10,000 RGB images at
96 px, 1 GiB as float32) does not fit edge-cpu's 2 GiB address-space cap, and the example's
edge-cpu benchmarks all failed with an allocation error before this."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tasks.benchmark import LATENCY_IMAGES
from tasks.config import BenchmarkConfig
from tasks.measuring_process import _leading_images, images_for_measuring


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
    with np.load(images_for_measuring(tmp_path / "test.npz", cfg, work)) as trimmed:
        assert np.array_equal(trimmed["x"], x[:100])
    with np.load(images_for_measuring(tmp_path / "test.npz", BenchmarkConfig(), work)) as trimmed:
        assert len(trimmed["x"]) == max(LATENCY_IMAGES, BenchmarkConfig().throughput_batch)


@pytest.mark.slow  # builds, measures and profiles every variant (~15 s)
def test_make_bench_writes_a_per_op_profile_of_each_variant(
    tiny_workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`make bench` (tasks.bench_all --ops): the latency table, each variant's speed against
    the baseline timed in one session, then where each variant's time goes per operator."""
    import json
    import shutil

    import yaml

    from tasks.bench_all import main
    from tasks.data import load_preprocess, load_split
    from tasks.techniques.tflite_int8 import TfliteInt8Config, quantize

    shutil.copytree(tiny_workspace / "variants" / "baseline", tmp_path / "variants" / "baseline")
    raw = yaml.safe_load((tiny_workspace / "params.yaml").read_text())
    raw["variants"] = {"int8": {"technique": "tflite_int8", "source": "baseline"}}
    raw["gates"]["per_variant"] = {}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    data = tiny_workspace / "data"
    config = TfliteInt8Config(technique="tflite_int8", source="baseline", calibration_samples=32)
    variants = tmp_path / "variants"
    quantize(
        "int8",
        config,
        variants / "baseline",
        load_split(data, "calib"),
        load_preprocess(data),
        variants / "int8",
    )
    out = tmp_path / "bench"
    main(
        [
            *("--params", str(tmp_path / "params.yaml"), "--variants", str(variants)),
            *("--data", str(data), "--out", str(out), "--ops"),
        ]
    )
    fp32 = json.loads((out / "ops" / "baseline.json").read_text())
    int8 = json.loads((out / "ops" / "int8.json").read_text())
    assert fp32["runtime"] == "onnxruntime" and "Conv" in {row["op"] for row in fp32["rows"]}
    assert int8["runtime"] == "litert"
    assert {"CONV_2D"} <= {row["op"] for row in int8["rows"] if row["dtype"] == "int8"}
    for profile in (fp32, int8):
        assert profile["threads"] == 1
        assert sum(row["percent"] for row in profile["rows"]) == pytest.approx(100, abs=1)
    printed = capsys.readouterr().out
    assert "baseline: onnxruntime" in printed and "int8: litert" in printed
    latest = json.loads((out / "latest.json").read_text())
    int8_rows = [row for row in latest["rows"] if row["variant"] == "int8"]
    assert int8_rows and all("baseline" in row["versus"] for row in int8_rows)
    assert "vs baseline (same session)" in printed
