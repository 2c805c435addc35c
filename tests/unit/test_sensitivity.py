"""Per-layer int8 sensitivity, float_fallback (mixed precision) and the calibration study, on the
tiny digits baseline: one onnx2tf SavedModel serves the module."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tasks import sensitivity
from tasks.calibration_study import calibration_study, study_sizes
from tasks.data import Preprocess, Split, load_preprocess, load_split
from tasks.errors import ConfigError
from tasks.publish import build_facts
from tasks.review import study_markdown
from tasks.techniques.tflite_int8 import TfliteInt8Config, quantize, saved_model

CFG = TfliteInt8Config(technique="tflite_int8", source="baseline", calibration_samples=64)


@pytest.fixture(scope="module")
def converted(tiny_workspace: Path) -> Iterator[tuple[Path, Split, Preprocess]]:
    """The baseline's SavedModel (onnx2tf), the calib split and the preprocessing."""
    calib = load_split(tiny_workspace / "data", "calib")
    preprocess = load_preprocess(tiny_workspace / "data")
    with tempfile.TemporaryDirectory(prefix="mp-test-sensitivity-") as work:
        model_dir = saved_model(
            tiny_workspace / "variants" / "baseline", CFG, calib, preprocess, Path(work)
        )
        yield model_dir, calib, preprocess


def _x(split: Split, preprocess: Preprocess, n: int) -> np.ndarray:
    return sensitivity.nhwc(split.x[:n], preprocess.mean, preprocess.std)


def test_ranking_has_one_row_per_candidate_with_numbers_in_range(
    converted: tuple[Path, Split, Preprocess], tiny_workspace: Path, tmp_path: Path
) -> None:
    model_dir, calib, preprocess = converted
    val = load_split(tiny_workspace / "data", "val")
    ranking = sensitivity.rank_layers(
        "tflite_int8",
        model_dir,
        _x(calib, preprocess, 64),
        _x(val, preprocess, 120),
        val.y[:120],
        per_channel=True,
        int8_io=True,
        top=3,
    )
    assert len(ranking.rows) == 3
    assert len({row.name for row in ranking.rows}) == 3
    names = [layer.name for layer in ranking.layers]
    assert len(names) == len(set(names)) > 3  # every quantized layer is listed, named once
    candidates = {layer.name for layer in sensitivity.by_error(ranking.layers)[:3]}
    assert {row.name for row in ranking.rows} == candidates
    assert ranking.samples == 120
    assert 0.8 < ranking.fp32_accuracy <= 1.0  # a trained baseline, not a random one
    for row in ranking.rows:
        assert row.nrmse > 0
        assert 0.0 <= row.accuracy <= 1.0 and 0.9 <= row.agreement <= 1.0
        assert row.drop_points <= row.drop_upper <= 100.0
        expected = 100 * (row.accuracy - ranking.int8_accuracy)
        assert row.recovered_points == pytest.approx(expected)
    recovered = [row.recovered_points for row in ranking.rows]
    assert recovered == sorted(recovered, reverse=True)

    paths = sensitivity.write_ranking(ranking, tmp_path / "tflite_int8")
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
    assert paths["md"].read_text().count("\n| ") == 1 + 3  # the header and one row per layer
    study = study_markdown(tmp_path / "tflite_int8")
    assert study is not None and "`" + ranking.rows[0].name + "`" in study
    assert "data:image/png;base64," in study
    assert study_markdown(tmp_path / "other") is None


def test_float_fallback_keeps_exactly_k_layers_float_and_records_them(
    tiny_workspace: Path, tmp_path: Path
) -> None:
    calib = load_split(tiny_workspace / "data", "calib")
    preprocess = load_preprocess(tiny_workspace / "data")
    cfg = CFG.model_copy(update={"float_fallback": 2})
    record = quantize(
        "mixed", cfg, tiny_workspace / "variants" / "baseline", calib, preprocess, tmp_path / "v"
    )
    content = (tmp_path / "v" / record.model_file).read_bytes()  # type: ignore[operator]
    assert len(sensitivity.float_ops(content)) == 2
    assert len(record.extra["float_layers"]) == 2
    assert record.extra["calibration_samples"] == 64
    assert record.input is not None and record.input.dtype == "int8"  # int8 I/O kept
    facts = build_facts(record)
    assert facts["float_layers"] == record.extra["float_layers"]
    assert facts["settings"]["float_fallback"] == 2 and facts["calibration_samples"] == 64


def test_named_float_layers_and_a_bad_name(converted: tuple[Path, Split, Preprocess]) -> None:
    model_dir, calib, preprocess = converted
    x = _x(calib, preprocess, 32)
    calibrated = sensitivity.calibrated_model(model_dir, x)
    layers = sensitivity.layer_errors(calibrated, x, per_channel=True)
    field = "variants.tflite_int8.float_fallback"
    kept = sensitivity.float_layers(["conv_2d_1"], layers, field)
    assert [layer.name for layer in kept] == ["conv_2d_1"]
    content = sensitivity.quantized_model(calibrated, True, True, [kept[0].tensor])
    assert sensitivity.float_ops(content) == ["CONV_2D"]
    assert sensitivity.float_ops(sensitivity.quantized_model(calibrated, True, True)) == []

    with pytest.raises(ConfigError) as error:
        sensitivity.float_layers(["conv_2d_99"], layers, field)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(field) and "'conv_2d_99'" in message
    assert "conv_2d_" in message.split("include", 1)[1]  # lists valid names
    with pytest.raises(ConfigError, match="quantized layers"):
        sensitivity.float_layers(len(layers) + 1, layers, field)


def test_study_sizes_follow_the_data() -> None:
    assert study_sizes([32, 64, 128, 256, 512, 1000], 180) == [32, 64, 128, 180]
    assert study_sizes([32, 64], 1000) == [32, 64]
    assert study_sizes([64, 32, 32], 64) == [32, 64]


def test_calibration_study_gives_a_band_per_size(
    converted: tuple[Path, Split, Preprocess], tiny_workspace: Path
) -> None:
    model_dir, calib, preprocess = converted
    test = load_split(tiny_workspace / "data", "test")
    study = calibration_study(
        "tflite_int8",
        model_dir,
        _x(calib, preprocess, len(calib)),
        _x(test, preprocess, 150),
        test.y[:150],
        sizes=[8, 64, 10_000],
        per_channel=True,
        int8_io=True,
    )
    assert [p.size for p in study.points] == [8, 64, len(calib)]
    assert study.available == len(calib)
    for point in study.points:
        assert point.accuracy_low <= point.accuracy <= point.accuracy_high
        assert point.accuracy_high - point.accuracy_low > 0.01  # 150 samples: a real band
        assert point.drop_lower <= point.drop_points <= point.drop_upper
    # with the whole calib split int8 stays close to fp32 on this model
    assert study.points[-1].agreement >= 0.95
