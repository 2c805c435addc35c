"""export: torch model → ONNX fp32, checked against torch's own outputs."""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tasks.arrays import Array
from tasks.data import Preprocess, load_preprocess, load_split
from tasks.errors import ModelError, brief
from tasks.io import atomic_dir
from tasks.models import count_macs_params
from tasks.runtimes.onnxruntime import RUNTIME as ONNX_RUNTIME
from tasks.train import load_baseline, predict
from tasks.variant import (
    TensorSpec,
    VariantRecord,
    data_fields,
    finished_record,
    preprocess_fields,
    save_torch_model,
    write_record,
)

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OPSET = 17
MODEL_FILE = ONNX_RUNTIME.model_file
# torch's TorchScript exporter keeps its state in module globals (GLOBALS.in_onnx_export): two
# exports at once in one process (variants built in parallel threads) break each other
_EXPORT_LOCK = threading.Lock()


@dataclass(frozen=True)
class ExportCheck:
    max_abs_diff: float
    agreement: float


def export_onnx(model: nn.Module, preprocess: Preprocess, path: Path) -> None:
    """Write an fp32 ONNX model with a dynamic batch dimension."""
    example = torch.zeros(1, *preprocess.input_shape)
    with _EXPORT_LOCK, warnings.catch_warnings():
        # torch flags the TorchScript-based exporter as legacy; it is the one that needs no
        # extra packages and handles fx GraphModules from .pt2 programs.
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                model.eval(),
                (example,),
                str(path),
                dynamo=False,
                opset_version=OPSET,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
        except Exception as exc:  # unsupported op names surface in the message
            raise ModelError(f"export: ONNX export failed ({brief(exc)})") from None


def check_onnx(path: Path, model: nn.Module, x: Array, atol: float = 1e-3) -> ExportCheck:
    """Run the ONNX file in ONNX Runtime and compare with torch on the same inputs."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    try:
        onnx_logits = session.run(None, {INPUT_NAME: x})[0]
    except Exception as exc:  # ONNX Runtime's errors carry no type worth telling apart
        raise ModelError(
            f"export: the ONNX model does not run on a batch of {len(x)} in ONNX Runtime "
            f"({brief(exc)}); the exported graph fixes the batch size (a reshape/view with the "
            "batch as a number, written so in the model or frozen by the export)"
        ) from None
    torch_logits = predict(model, x)
    diff = float(np.abs(onnx_logits - torch_logits).max())
    agreement = float((onnx_logits.argmax(1) == torch_logits.argmax(1)).mean())
    scale = max(1.0, float(np.abs(torch_logits).max()))
    if diff > atol * scale:
        raise ModelError(
            f"export: ONNX output differs from torch by {diff:.3g} (> {atol * scale:.3g})"
        )
    return ExportCheck(max_abs_diff=diff, agreement=agreement)


def onnx_record(
    name: str,
    technique: str,
    source: str | None,
    preprocess: Preprocess,
    macs: int | None,
    params: int,
    settings: dict[str, Any] | None = None,
    parent_sha256: str | None = None,
    baseline_sha256: str | None = None,
    extra: dict[str, Any] | None = None,
) -> VariantRecord:
    """variant.json for an fp32 ONNX model produced by this module's `export_onnx`."""
    c, h, w = preprocess.input_shape
    return VariantRecord(
        name=name,
        technique=technique,
        status="ok",
        source=source,
        runtime="onnxruntime",
        model_file=MODEL_FILE,
        input=TensorSpec(INPUT_NAME, [None, c, h, w], "float32", layout="NCHW"),
        output=TensorSpec(OUTPUT_NAME, [None, preprocess.num_classes], "float32"),
        preprocess=preprocess_fields(preprocess),
        data=data_fields(preprocess),
        settings=settings or {},
        macs=macs,
        params=params,
        parent_sha256=parent_sha256,
        baseline_sha256=baseline_sha256,
        extra=extra or {},
    )


# the export's equivalence check compares outputs image by image: a few hundred images tell what
# 10,000 do (a real test set at 96 px took a minute in torch and ONNX Runtime, 3 GB an activation)
EXPORT_CHECK_IMAGES = 256


def write_onnx_variant(
    model: nn.Module,
    preprocess: Preprocess,
    check_x: Array,
    out_dir: Path,
    save_torch: bool = False,
    **record_fields: Any,
) -> VariantRecord:
    """Export `model`, check it against torch, and write the variant directory atomically;
    save_torch: the torch module too, for torch-starting variants built from this one."""
    macs, params = count_macs_params(model, preprocess.input_shape)
    with atomic_dir(out_dir) as staging:
        export_onnx(model, preprocess, staging / MODEL_FILE)
        check = check_onnx(staging / MODEL_FILE, model, check_x[:EXPORT_CHECK_IMAGES])
        record = onnx_record(preprocess=preprocess, macs=macs, params=params, **record_fields)
        extra = record.extra | {"onnx_max_abs_diff": check.max_abs_diff}
        if save_torch and (torch_file := save_torch_model(staging, model)):
            extra["torch_file"] = torch_file
        record = finished_record(staging, record, extra=extra)
        write_record(staging, record)
    return record


def export_baseline(
    baseline_dir: Path, baseline_sha256: str, data_dir: Path, out_dir: Path
) -> VariantRecord:
    """The baseline as ONNX fp32: the reference every variant is compared with."""
    preprocess = load_preprocess(data_dir)
    test_x = preprocess.normalize(load_split(data_dir, "test").x)
    return write_onnx_variant(
        load_baseline(baseline_dir),
        preprocess,
        test_x,
        out_dir,
        name="baseline",
        technique="baseline",
        source=None,
        parent_sha256=baseline_sha256,
    )
