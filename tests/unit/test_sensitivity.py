"""Per-layer int8 sensitivity, float_fallback (mixed precision) and the calibration study, on the
tiny digits baseline: one onnx2tf SavedModel serves the module."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tasks import litert_debugger as debugger
from tasks import sensitivity
from tasks.calibration_study import calibration_study, study_sizes
from tasks.data import Preprocess, Split, load_preprocess, load_split
from tasks.errors import ConfigError
from tasks.publish import build_facts
from tasks.review import study_markdown
from tasks.techniques.tflite_int8 import TfliteInt8Config, quantize, saved_model

# quantization-debugger runs and LiteRT conversions, 10-30 s each: `make test`, not test-fast
pytestmark = pytest.mark.slow

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
    return debugger.nhwc(split.x[:n], preprocess.mean, preprocess.std)


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
    candidates = {layer.name for layer in debugger.by_error(ranking.layers)[:3]}
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
    # the order float_fallback: k uses is named beside it, and each layer's p50 cost is timed
    assert sorted(row.error_rank for row in ranking.rows) == [1, 2, 3]
    by_error = [layer.name for layer in debugger.by_error(ranking.layers)]
    for row in ranking.rows:
        assert by_error[row.error_rank - 1] == row.name
        assert row.latency_low is not None and row.latency_high is not None
        assert 0.2 < row.latency_low <= row.latency_ratio <= row.latency_high < 5
        assert row.recovered_low <= row.recovered_points

    paths = sensitivity.write_ranking(ranking, tmp_path / "tflite_int8")
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
    markdown = paths["md"].read_text()
    assert markdown.count("\n| ") == 1 + 3  # the header and one row per layer
    assert "| error rank |" in markdown and "**Conclusion:** " in markdown
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
    assert len(debugger.float_ops(content)) == 2
    assert len(record.extra["float_layers"]) == 2
    assert record.extra["calibration_samples"] == 64
    assert record.input is not None and record.input.dtype == "int8"  # int8 I/O kept
    facts = build_facts(record)
    assert facts["float_layers"] == record.extra["float_layers"]
    assert facts["settings"]["float_fallback"] == 2 and facts["calibration_samples"] == 64


def test_named_float_layers_and_a_bad_name(converted: tuple[Path, Split, Preprocess]) -> None:
    model_dir, calib, preprocess = converted
    x = _x(calib, preprocess, 32)
    calibrated = debugger.calibrated_model(model_dir, x)
    layers = debugger.layer_errors(calibrated, x, per_channel=True)
    field = "variants.tflite_int8.float_fallback"
    kept = debugger.float_layers(["conv_2d_1"], layers, field)
    assert [layer.name for layer in kept] == ["conv_2d_1"]
    content = debugger.quantized_model(calibrated, True, True, [kept[0].tensor])
    assert debugger.float_ops(content) == ["CONV_2D"]
    assert debugger.float_ops(debugger.quantized_model(calibrated, True, True)) == []

    with pytest.raises(ConfigError) as error:
        debugger.float_layers(["conv_2d_99"], layers, field)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(field) and "'conv_2d_99'" in message
    assert "conv_2d_" in message.split("include", 1)[1]  # lists valid names
    with pytest.raises(ConfigError, match="quantized layers"):
        debugger.float_layers(len(layers) + 1, layers, field)


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


def _row(name: str, error_rank: int, recovered: float, low: float) -> sensitivity.LayerSensitivity:
    return sensitivity.LayerSensitivity(
        name, "CONV_2D", 1.0, 0.9, 1.0, 2.0, recovered, 0.95, error_rank, low, 1.43, 1.40, 1.46
    )


def _ranking(rows: list[sensitivity.LayerSensitivity]) -> sensitivity.Ranking:
    return sensitivity.Ranking("int8", "val", 180, 0.95, 0.99, 0.95, 5.0, 0.95, rows, [])


def test_the_conclusion_says_what_to_set() -> None:
    noise = _ranking([_row("conv_2d_0", 1, 0.56, -0.8), _row("conv_2d_2", 2, 0.0, -1.0)])
    assert sensitivity.conclusion(noise).startswith("no layer needs float")
    assert "+0.56 pt" in sensitivity.conclusion(noise)
    # the layer that really recovers is second by own error: float_fallback: 1 would miss it
    real = _ranking([_row("conv_2d_2", 2, 3.0, 1.2), _row("conv_2d_0", 1, 0.5, -0.9)])
    said = sensitivity.conclusion(real)
    assert "keep conv_2d_2 in float (`float_fallback: [conv_2d_2]`)" in said
    assert "p50 cost +43% (+40…+46%)" in said
    assert "`float_fallback: 1` would keep conv_2d_0 (by own error), not these: name them" in said


def test_the_calibration_conclusion_names_the_fewest_samples_within_noise() -> None:
    from tasks.calibration_study import CalibrationPoint, CalibrationStudy, conclusion

    def point(size: int, low: float, high: float) -> CalibrationPoint:
        return CalibrationPoint(size, (low + high) / 2, low, high, 0.5, -0.5, 1.5, 0.99)

    flat = CalibrationStudy(
        "int8",
        "test",
        719,
        0.95,
        180,
        0.98,
        [point(32, 0.90, 0.95), point(64, 0.95, 0.985), point(180, 0.955, 0.99)],
    )
    assert conclusion(flat).startswith("64 samples are enough")
    rising = CalibrationStudy(
        "int8", "test", 719, 0.95, 180, 0.98, [point(32, 0.80, 0.85), point(180, 0.95, 0.99)]
    )
    assert conclusion(rising).startswith("180 samples are the fewest")


def test_float_fallback_auto_adds_layers_until_val_meets_the_target(
    tiny_workspace: Path, tmp_path: Path
) -> None:
    calib = load_split(tiny_workspace / "data", "calib")
    val = load_split(tiny_workspace / "data", "val")
    preprocess = load_preprocess(tiny_workspace / "data")
    source = tiny_workspace / "variants" / "baseline"
    easy = CFG.model_copy(update={"float_fallback": "auto", "auto_max_drop": 100.0})
    record = quantize("auto", easy, source, calib, preprocess, tmp_path / "easy", val)
    auto = record.extra["float_fallback_auto"]
    assert auto["reached"] and auto["kept"] == [] and len(auto["steps"]) == 1
    assert record.extra["float_layers"] == []
    # calibrated on blank images the ranges are far too narrow: a drop of 0 is out of reach
    never = CFG.model_copy(
        update={"float_fallback": "auto", "auto_max_drop": 0.0, "max_float_layers": 2}
    )
    blank = Split(x=np.zeros_like(calib.x), y=calib.y)
    record = quantize("auto", never, source, blank, preprocess, tmp_path / "never", val)
    auto = record.extra["float_fallback_auto"]
    assert auto["steps"][0]["drop_points"] > 0.0, auto["steps"][0]
    assert auto["judged_on"] == "point estimate"  # val of the tiny data cannot certify 0 points
    assert len(auto["kept"]) == len(auto["steps"]) - 1 <= 2
    assert auto["kept"] == auto["order"][: len(auto["kept"])]
    content = (tmp_path / "never" / record.model_file).read_bytes()  # type: ignore[operator]
    assert len(debugger.float_ops(content)) == len(auto["kept"])
    assert auto["reached"] == (auto["steps"][-1]["drop_points"] <= 0.0)


def test_the_study_tools_work_from_the_nightlys_own_workspace(
    tiny_workspace: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Right after `make run` there is no data/ folder: the tools read the newest run's
    workspace.json (what the nightly writes) instead of failing on data/calib.npz."""
    import sys

    from tasks import calibration_study
    from tasks.workspace import write_pointer
    from tests import processes
    from tests.helpers import write_params

    params = write_params(tmp_path)
    variant = tmp_path / "work" / "variants" / "baseline-abc"
    variant.parent.mkdir(parents=True)
    variant.symlink_to(tiny_workspace / "variants" / "baseline", target_is_directory=True)
    run_dir = tmp_path / "work" / "runs" / "20261207T000000Z"
    run_dir.mkdir(parents=True)
    write_pointer(run_dir, params, str(tiny_workspace / "data"), {"baseline": str(variant)})
    checkout = tmp_path / "checkout"  # no data/ here, as after make run
    checkout.mkdir()
    workdir = ["--workdir", str(tmp_path / "work")]

    done = processes.run(
        [sys.executable, "-m", "tasks.sensitivity", *workdir, "--top", "2", "--samples", "60"],
        cwd=checkout,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "**Conclusion:** " in done.stdout
    # not built in that run: written in the run's folder
    assert (run_dir / "tflite_int8.sensitivity.md").is_file()

    monkeypatch.chdir(checkout)
    calibration_study._main(
        calibration_study._arguments([*workdir, "--sizes", "8", "64", "--samples", "60"])
    )
    shown = capsys.readouterr().out
    assert "**Conclusion:** " in shown
    assert (run_dir / "tflite_int8.calibration.md").read_text().count("\n| ") == 1 + 2
    # nothing at all to read: one line saying where it looked
    from tasks.errors import DataError
    from tasks.workspace import study_inputs

    with pytest.raises(DataError, match=r"neither data/calib\.npz"):
        study_inputs(None, None, None, tmp_path / "elsewhere")
