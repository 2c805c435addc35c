"""qat_int8: quantization-aware fine-tuning in torch, then a full-integer LiteRT int8 model.

Route: torch FX QAT (tasks/qat.py) with fake-quantization that mirrors LiteRT's int8 scheme —
per-output-channel symmetric int8 weights on the narrow range [-127, 127] (what the TFLite
converter writes), per-tensor asymmetric 8-bit activations, batch norm folded into the
convolutions while training. After fine-tuning,
batch-norm statistics and observers frozen for the last epochs, each QAT module becomes a plain
float conv/linear with the folded weights it was trained with (`to_float`), the fake-quant nodes
are dropped, and that float network goes through tflite_int8's own ONNX → onnx2tf full-integer
path, calibrated on the calib split. The converter then quantizes weights the network learned to
be robust to, on the same grid the fake-quantization used (per-channel max-abs).

Not the other routes: PT2E QAT (`prepare_qat_pt2e`, XNNPACKQuantizer) left torch.ao before torch
2.13 and torchao is not installed; `litert-torch` does not resolve with torch 2.13. A QDQ ONNX
export (route b) was not tried: onnx2tf's full-integer output is calibrated by the TF converter on
the calib split, so keeping the trained activation ranges would need a converter that reads
QDQ, which this stack does not have; here the converter re-calibrates activations (the QAT
observers were min/max on the same kind of data) and quantizes the QAT-trained weights. Where the
trained ranges must reach the int8 model (a network whose min/max calibration fails), use
qat_onnx_int8: the same training, exported as QDQ with its ranges, run as int8 by ONNX Runtime.

torch is imported where it is used: the technique table is read where torch is not installed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from tasks.config import PositiveInt
from tasks.data import Preprocess, Split
from tasks.qat_settings import QatTrainingConfig
from tasks.technique import Technique
from tasks.techniques.context import BuildContext
from tasks.variant import VariantRecord

if TYPE_CHECKING:
    from torch import nn


class QatInt8Config(QatTrainingConfig):
    technique: Literal["qat_int8"]
    int8_io: bool = True
    calibration_samples: PositiveInt = 200


def build(context: BuildContext, config: QatInt8Config) -> VariantRecord:
    """The baseline, fine-tuned with fake-quantization, as a full-integer LiteRT model.

    Built in a child process: torch.fx's symbolic trace (prepare_qat_fx) patches
    torch.nn.Module.__call__ for the whole process while it runs, and a variant training in
    another thread of the nightly then failed mid-forward ("module is not installed as a
    submodule"). In place in a Dask worker, which may not have children (see in_child_process).
    """
    from tasks.child_process import in_child_process

    return in_child_process(f"{context.name}'s build", _build_here, context, config)


def _build_here(context: BuildContext, config: QatInt8Config) -> VariantRecord:
    # the source's torch model: the baseline's, or a pruned/clustered variant's (int8 after
    # pruning lost 1.7-3.7 points post-training on EfficientNet-Lite0, where the baseline's lost
    # 0.15: QAT of the pruned model is the search's escalation for it)
    source = context.source_record()
    model = context.editable_source_model("quantization-aware training")
    return qat_quantize(
        context.name,
        config,
        model,
        context.split("train"),
        context.split("val"),
        context.split("calib"),
        context.split("test"),
        context.preprocess(),
        context.baseline_sha256(),
        context.seed,
        context.out_dir,
        source=source.name if source.technique != "baseline" else "baseline",
        parent_sha256=source.model_sha256 if source.technique != "baseline" else None,
    )


def qat_quantize(
    name: str,
    cfg: QatInt8Config,
    teacher: nn.Module,
    train: Split,
    val: Split,
    calib: Split,
    test: Split,
    preprocess: Preprocess,
    baseline_sha256: str | None,
    seed: int,
    out_dir: Path,
    source: str = "baseline",
    parent_sha256: str | None = None,
) -> VariantRecord:
    """QAT fine-tune a copy of `teacher` (the source's model: the baseline's or a variant's),
    then convert it with tflite_int8's full-integer path."""
    import shutil

    from tasks.export import write_onnx_variant
    from tasks.io import atomic_dir
    from tasks.models import count_macs_params
    from tasks.qat import prepare_qat, qat_finetune, to_float, weighted_qat_modules
    from tasks.runtimes.litert import RUNTIME as LITERT
    from tasks.techniques.tflite_int8 import TfliteInt8Config, quantize
    from tasks.variant import finished_record, write_record

    macs, params = count_macs_params(teacher, preprocess.input_shape)
    prepared = prepare_qat(teacher, preprocess, name)
    qat_finetune(prepared, cfg, train, val, preprocess, seed, name)
    folded = to_float(prepared)
    with tempfile.TemporaryDirectory(prefix="mp-qat-") as work:
        onnx_dir, tflite_dir = Path(work) / "onnx", Path(work) / "tflite"
        write_onnx_variant(
            folded,
            preprocess,
            preprocess.normalize(test.x),
            onnx_dir,
            name=f"{name}-float",
            technique="qat_int8",
            source=source,
            parent_sha256=parent_sha256 or baseline_sha256,
            baseline_sha256=baseline_sha256,
        )
        convert = TfliteInt8Config(
            technique="tflite_int8",
            source=f"{name}-float",
            int8_io=cfg.int8_io,
            calibration_samples=cfg.calibration_samples,
            per_channel=True,  # the grid the weights were fake-quantized on
        )
        converted = quantize(name, convert, onnx_dir, calib, preprocess, tflite_dir)
        with atomic_dir(out_dir) as staging:
            shutil.copyfile(tflite_dir / LITERT.model_file, staging / LITERT.model_file)
            record = finished_record(
                staging,
                converted,
                technique="qat_int8",
                source=source,
                settings=cfg.model_dump(),
                macs=macs,
                params=params,
                parent_sha256=parent_sha256 or baseline_sha256,
                baseline_sha256=baseline_sha256,
                extra=converted.extra | {"qat_layers": len(weighted_qat_modules(prepared))},
            )
            write_record(staging, record)
    return record


TECHNIQUE = Technique(
    name="qat_int8",
    config=QatInt8Config,
    starts_from="torch",
    runtime="litert",
    produces_onnx=False,
    build=build,
    uses=(
        "tasks.export",
        "tasks.models",
        "tasks.qat",
        "tasks.train",
        "tasks.techniques.tflite_int8",
        "tasks.tflite_convert",
        "tasks.int8_friendly",
    ),
)
