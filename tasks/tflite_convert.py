"""ONNX → TF SavedModel (onnx2tf) → LiteRT: the conversion every LiteRT technique shares.

onnx2tf writes the SavedModel and then runs TensorFlow's TFLiteConverter once per output it is
asked for: float32 and float16 always, dynamic-range int8 and full-integer int8 on request. A
technique picks one `Output`, gets that file back, and `write_litert_variant` stages it with its record.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tasks.arrays import Array
from tasks.data import Preprocess
from tasks.errors import VariantError, brief
from tasks.quiet import held_back
from tasks.runtimes.litert import RUNTIME as LITERT
from tasks.variant import (
    TensorSpec,
    VariantRecord,
    record_built,
)

MODEL_FILE = LITERT.model_file
# what onnx2tf calls each output: `<stem>_<suffix>.tflite`
Output = Literal["float32", "float16", "dynamic_range_quant", "full_integer_quant"]
_CONVERT_LOCK = threading.Lock()


@dataclass(frozen=True)
class Calibration:
    """Full-integer only: NHWC pixel samples (onnx2tf applies (x - mean) / std itself) and the
    dtype of the model's input and output tensors."""

    samples_file: Path
    io_dtype: Literal["int8", "float32"] = "int8"


@dataclass(frozen=True)
class Converted:
    """The .tflite a technique asked for, and the size of the float32 one onnx2tf wrote beside
    it from the same SavedModel: the like-for-like reference of its size."""

    tflite: Path
    float32_bytes: int


def convert(
    technique: str,
    onnx_file: Path,
    work_dir: Path,
    output: Output,
    input_name: str,
    preprocess: Preprocess,
    per_channel: bool = True,
    calibration: Calibration | None = None,
) -> Converted:
    """Run onnx2tf on `onnx_file` (a working copy) and return the `output` .tflite it wrote;
    `per_channel` sets the int8 outputs' weight scales (one per output channel, or one a tensor)."""
    if (output == "full_integer_quant") != (calibration is not None):
        raise ValueError("a full-integer model needs calibration; the other outputs take none")
    options: dict[str, Any] = {
        "quant_type": "per-channel" if per_channel else "per-tensor",
        "output_dynamic_range_quantized_tflite": output == "dynamic_range_quant",
    }
    if calibration is not None:
        options |= {
            "output_integer_quantized_tflite": True,
            "custom_input_op_name_np_data_path": [
                [input_name, str(calibration.samples_file), preprocess.mean, preprocess.std]
            ],
            "input_quant_dtype": calibration.io_dtype,
            "output_quant_dtype": calibration.io_dtype,
        }
    said = None
    try:
        # onnx2tf keeps global Keras/TF state: one conversion at a time in a process.
        # TensorFlow's chatter (importing it included) is held back: `--verbose` shows it.
        with _CONVERT_LOCK, held_back() as said, _variance_by_mul():
            import onnx2tf

            onnx2tf.convert(
                input_onnx_file_path=str(onnx_file),
                output_folder_path=str(work_dir / "tf"),
                non_verbose=True,
                **options,
            )
    # onnx2tf raises bare exceptions naming the failing op, or prints ERROR lines and calls
    # sys.exit(1): that must fail this variant, not end the night
    except (Exception, SystemExit) as exc:
        if isinstance(exc, SystemExit):
            detail = _said_error(said.text() if said else "") or f"it exited with {exc.code}"
        else:
            detail = _conversion_detail(exc)
        raise VariantError(
            f"{technique}: onnx2tf could not convert {onnx_file.name} ({detail})"
        ) from None
    produced = work_dir / "tf" / f"{onnx_file.stem}_{output}.tflite"
    float32 = work_dir / "tf" / f"{onnx_file.stem}_float32.tflite"
    flex = _select_tf_ops(produced if produced.exists() else float32)
    if flex:  # TensorFlow kernels the builtin LiteRT interpreter (and XNNPACK) do not have
        hint = "; ONNX Erf is an exact GELU: export nn.GELU(approximate='tanh')" * ("Erf" in flex)
        raise VariantError(
            f"{technique}: the converted model needs TensorFlow Select ops "
            f"({', '.join(f'Flex{op}' for op in flex)}) that LiteRT's builtin interpreter "
            f"cannot run{hint}"
        )
    if not produced.exists():  # onnx2tf logs (not raises) a failed dynamic-range conversion
        why = _said_error(said.text() if said else "")
        raise VariantError(
            f"{technique}: onnx2tf wrote no {output} model for {onnx_file.name}"
            + (f" ({why})" if why else "")
        )
    return Converted(produced, float32.stat().st_size)  # float32 is always written first


@contextlib.contextmanager
def _variance_by_mul() -> Iterator[None]:
    """tf.nn.moments, while onnx2tf converts, with the variance as mean((x - m) * (x - m)).

    onnx2tf builds LayerNormalization (a Keras layer) and InstanceNormalization on tf.nn.moments,
    whose SQUARED_DIFFERENCE has no int8 XNNPACK kernel: on an unseen MobileViT-style net its 3
    took 31% of the full-integer model's time, 19 us each where an int8 MUL took 2.5. SUB and MUL
    run in XNNPACK; the value is the same. Conversions hold _CONVERT_LOCK, so nothing else in
    the process builds TensorFlow graphs meanwhile."""
    import tensorflow as tf

    def moments(
        x: Any, axes: Any, shift: Any = None, keepdims: bool = False, name: Any = None
    ) -> tuple[Any, Any]:
        mean = tf.reduce_mean(x, axes, keepdims=True)
        centred = x - tf.stop_gradient(mean)
        variance = tf.reduce_mean(centred * centred, axes, keepdims=True)
        if not keepdims:
            mean, variance = tf.squeeze(mean, axes), tf.squeeze(variance, axes)
        return mean, variance

    namespaces = list({id(ns): ns for ns in (tf.nn, tf.compat.v2.nn)}.values())
    originals = [ns.moments for ns in namespaces]
    for namespace in namespaces:
        namespace.moments = moments
    try:
        yield
    finally:
        for namespace, original in zip(namespaces, originals, strict=True):
            namespace.moments = original


def _select_tf_ops(tflite_file: Path) -> list[str]:
    """The TensorFlow ops a .tflite file calls through the Flex delegate (custom ops named
    Flex<Op>), sorted; none for a model the builtin interpreter runs."""
    if not tflite_file.exists():
        return []
    names = re.findall(rb"Flex([A-Z][A-Za-z0-9]*)", tflite_file.read_bytes())
    return sorted({name.decode() for name in names})


def io_specs(tflite_file: Path) -> tuple[TensorSpec, TensorSpec]:
    """The model's input (NHWC) and output tensors as LiteRT reads them."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(tflite_file))
    return _spec(interpreter.get_input_details()[0], "NHWC"), _spec(
        interpreter.get_output_details()[0], None
    )


def _spec(detail: dict[str, Any], layout: str | None) -> TensorSpec:
    dtype = np.dtype(detail["dtype"]).name
    scale, zero_point = detail["quantization"]
    quantization = (
        {"scale": float(scale), "zero_point": int(zero_point)} if dtype == "int8" else None
    )
    shape = [None if dim < 0 else int(dim) for dim in detail["shape_signature"]]
    return TensorSpec(detail["name"], shape, dtype, layout=layout, quantization=quantization)


def write_litert_variant(
    converted: Converted,
    staging: Path,
    *,
    name: str,
    settings: dict[str, Any],
    source: VariantRecord,
    preprocess: Preprocess,
    extra: dict[str, Any],
) -> VariantRecord:
    """Compact the converted model into the variant directory being staged and write its record."""
    converted_bytes = converted.tflite.stat().st_size
    (staging / MODEL_FILE).write_bytes(compact(converted.tflite.read_bytes()))
    return record_built(
        staging,
        name=name,
        settings=settings,
        source=source,
        preprocess=preprocess,
        runtime="litert",
        model_file=MODEL_FILE,
        tensors=io_specs(staging / MODEL_FILE),
        extra={
            "onnx2tf": version("onnx2tf"),
            "float32_tflite_bytes": converted.float32_bytes,
            "converted_bytes": converted_bytes,
        }
        | extra,
    )


def compact(content: bytes) -> bytes:
    """The same LiteRT model with every identical small vector stored once.

    TensorFlow's converter writes each tensor's quantization parameters as vectors of their own,
    and LiteRT requires as many zero points (int64) as scales: a per-channel int8 model carries
    8 bytes of zeros per output channel of every weight and bias tensor (EfficientNet-Lite0:
    337 KB of its 3.97 MB). A flatbuffer may point many tables at one vector, so one vector of
    zeros serves every tensor with that many channels; tensor data keeps its 16-byte alignment.
    Models whose buffers live outside the flatbuffer (offset/size, over 2 GB) are returned as
    they are.
    """
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(content), 0)
    if any(buffer.offset for buffer in model.buffers or []):
        return content
    builder = _sharing_builder(len(content))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    packed = bytes(builder.Output())
    return packed if len(packed) < len(content) else content


def _sharing_builder(size: int) -> Any:
    """A flatbuffers.Builder whose numpy vectors up to 64 KiB are written once per content."""
    import flatbuffers

    class SharingBuilder(flatbuffers.Builder):
        def __init__(self, initial: int) -> None:
            super().__init__(initial)
            self.written: dict[tuple[str, bytes], int] = {}

        def CreateNumpyVector(self, x: Array) -> int:  # flatbuffers' name
            key = (x.dtype.str, x.tobytes()) if x.nbytes <= 1 << 16 else None
            if key is not None and key in self.written:
                return self.written[key]
            if x.dtype == np.uint8:  # tensor data: 16-byte aligned, as the converter writes it
                self.StartVector(1, x.size, 16)
                head = int(self.Head()) - x.nbytes
                self.head = head
                self.Bytes[head : head + x.nbytes] = x.tobytes()
                offset = int(self.EndVector())
            else:
                offset = int(super().CreateNumpyVector(x))
            if key is not None:
                self.written[key] = offset
            return offset

    return SharingBuilder(size)


# Keras wraps a layer's error between a header and the call's arguments: the cause is in between
_KERAS_FRAME = ("Exception encountered when calling layer", "Call arguments received", "•")


def _said_error(text: str) -> str | None:
    """onnx2tf's own ERROR lines (colour codes removed), joined: why it gave up."""
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text)
    errors = [line.split("ERROR:", 1)[1].strip() for line in plain.splitlines() if "ERROR:" in line]
    return brief(" ".join(e for e in errors if e)) if errors else None


def _conversion_detail(exc: BaseException) -> str:
    """The line of an onnx2tf/Keras error that says what went wrong."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    causes = [line for line in lines if not line.startswith(_KERAS_FRAME)]
    return brief(causes[0]) if causes else brief(exc, last_line=True)
