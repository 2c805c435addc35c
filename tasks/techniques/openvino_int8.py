"""openvino_int8: NNCF post-training quantization of an ONNX variant into an OpenVINO IR (int8
weights, FakeQuantize on activations), calibrated on the calib split."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal

from tasks.config import PositiveInt
from tasks.data import Preprocess, Split
from tasks.errors import VariantError, brief
from tasks.io import atomic_dir
from tasks.quiet import held_back
from tasks.runtimes.base import normalize
from tasks.runtimes.openvino import RUNTIME as OPENVINO
from tasks.technique import Technique, TechniqueConfig
from tasks.techniques.context import BuildContext
from tasks.variant import (
    VariantRecord,
    model_path,
    read_record,
    record_built,
)

MODEL_FILE = OPENVINO.model_file


class OpenvinoInt8Config(TechniqueConfig):
    technique: Literal["openvino_int8"]
    calibration_samples: PositiveInt = 300  # NNCF's own default subset size
    # performance: symmetric int8 weights and activations (NNCF's default for CNNs); mixed:
    # asymmetric activations, a better fit for activations that are not centred on zero
    preset: Literal["performance", "mixed"] = "performance"
    fast_bias_correction: bool = True  # false: NNCF's slower, more exact bias correction


def build(context: BuildContext, config: OpenvinoInt8Config) -> VariantRecord:
    """The variant from its source's ONNX model, calibrated on the calib split."""
    return quantize(
        context.name,
        config,
        context.source_dir,
        context.split("calib"),
        context.preprocess(),
        context.out_dir,
    )


def quantize(
    name: str,
    cfg: OpenvinoInt8Config,
    source_dir: Path,
    calib: Split,
    preprocess: Preprocess,
    out_dir: Path,
) -> VariantRecord:
    """Read the source variant's ONNX model into OpenVINO, quantize it with NNCF, save the IR."""
    source = read_record(source_dir)
    if source.runtime != "onnxruntime":
        raise VariantError(
            f"{name}: source '{source.name}' is {source.runtime}, expected an ONNX model"
        )
    if source.input is None or source.output is None:  # an ok ONNX variant records both
        raise VariantError(f"{name}: source '{source.name}' records no input/output tensor")
    onnx_file = model_path(source_dir, source)
    # NNCF calibrates on what the model is fed: batches of one, normalised as the runtime does
    samples = normalize(calib.x[: cfg.calibration_samples], source)
    with atomic_dir(out_dir) as staging:
        fake_quantize = _quantize_to_ir(onnx_file, samples, cfg, staging / MODEL_FILE)
        return record_built(
            staging,
            name=name,
            settings=cfg.model_dump(),
            source=source,
            preprocess=preprocess,
            runtime="openvino",
            model_file=MODEL_FILE,
            extra={
                "openvino": version("openvino"),
                "nncf": version("nncf"),
                "calibration_samples": len(samples),
                "fake_quantize_ops": fake_quantize,
            },
        )


def _quantize_to_ir(onnx_file: Path, samples: Any, cfg: OpenvinoInt8Config, xml_file: Path) -> int:
    """Write the quantized IR (xml + bin); returns how many FakeQuantize ops it holds."""
    with _telemetry_off():
        import nncf
        import openvino as ov
    try:
        # NNCF's progress bars and INFO lines go to the convert log (`--verbose` shows them)
        with held_back():
            # Core.read_model runs the same ONNX frontend as openvino.convert_model, without the
            # converter's usage telemetry (sent unless a file in $HOME opts out)
            model = ov.Core().read_model(str(onnx_file))
            quantized = nncf.quantize(
                model,
                nncf.Dataset([samples[i : i + 1] for i in range(len(samples))]),
                preset=nncf.QuantizationPreset(cfg.preset),
                subset_size=len(samples),
                fast_bias_correction=cfg.fast_bias_correction,
                model_type=None,
            )
            # the weights are int8 already; fp16 compression would only touch the float rest
            ov.save_model(quantized, str(xml_file), compress_to_fp16=False)
    except Exception as exc:  # OpenVINO and NNCF raise their own types naming the failing op
        raise VariantError(
            f"openvino_int8: NNCF could not quantize {onnx_file.name} ({brief(exc, last_line=True)})"
        ) from None
    fake_quantize = sum(op.get_type_name() == "FakeQuantize" for op in quantized.get_ops())
    if not fake_quantize:
        raise VariantError(
            f"openvino_int8: NNCF inserted no quantizer into {onnx_file.name} (no int8 op found)"
        )
    return int(fake_quantize)


@contextlib.contextmanager
def _telemetry_off() -> Iterator[None]:
    """While NNCF is first imported: its usage telemetry (Google Analytics, on unless opted out)
    is made a stub when NNCF_CI is set, and openvino_telemetry declines when CI is; both are read
    only then, so the process's environment is left as it was afterwards."""
    if "nncf" in sys.modules:
        yield
        return
    saved = {key: os.environ.get(key) for key in ("NNCF_CI", "CI")}
    os.environ.update({"NNCF_CI": "1", "CI": "true"})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


TECHNIQUE = Technique(
    name="openvino_int8",
    config=OpenvinoInt8Config,
    starts_from="onnx",
    runtime="openvino",
    produces_onnx=False,
    build=build,
)
