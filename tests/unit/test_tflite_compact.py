"""tasks.tflite_convert.compact on a real per-channel int8 LiteRT model: smaller by the repeated
zero-point vectors, the same model bit for bit, tensor data still 16-byte aligned."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.tflite_convert import compact

CHANNELS = (16, 16, 16, 32)  # three layers share a channel count: their zero points can be one


@pytest.fixture(scope="module")
def int8_model() -> bytes:
    """Four per-channel int8 convs (random weights), full-integer, as TensorFlow converts them."""
    import tensorflow as tf

    rng = np.random.default_rng(3)
    kernels, c_in = [], 3
    for c_out in CHANNELS:
        kernels.append(rng.normal(0, 0.3, (3, 3, c_in, c_out)).astype(np.float32))
        c_in = c_out

    class Net(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 12, 12, 3], tf.float32)])
        def __call__(self, x: tf.Tensor) -> tf.Tensor:
            for kernel in kernels:
                x = tf.nn.relu(tf.nn.conv2d(x, kernel, 1, "SAME") + 0.1)
            return tf.reduce_mean(x, axis=(1, 2))

    net = Net()
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [net.__call__.get_concrete_function()], net
    )
    samples = rng.normal(0, 1, (16, 1, 12, 12, 3)).astype(np.float32)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([s] for s in samples)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return bytes(converter.convert())


def _outputs(content: bytes) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content, num_threads=1)  # XNNPACK, the default
    interpreter.allocate_tensors()
    source, sink = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    rng, outputs = np.random.default_rng(0), []
    for _ in range(16):
        interpreter.set_tensor(source["index"], rng.integers(-128, 128, (1, 12, 12, 3), np.int8))
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(sink["index"]).copy())
    return np.stack(outputs)


def _zero_point_vectors(content: bytes) -> tuple[int, set[int]]:
    """(zero points stored per tensor, summed; positions of the distinct vectors holding them)."""
    from ai_edge_litert import schema_py_generated as schema

    graph = schema.Model.GetRootAsModel(content, 0).Subgraphs(0)
    stored, positions = 0, set()
    for i in range(graph.TensorsLength()):
        quantization = graph.Tensors(i).Quantization()
        if quantization is not None and quantization.ZeroPointLength() > 1:
            stored += quantization.ZeroPointLength()
            table = quantization._tab
            positions.add(table.Vector(table.Offset(10)))  # the zero_point field
    return stored, positions


def test_compact_drops_repeated_zero_points_and_keeps_the_model_bit_for_bit(
    int8_model: bytes,
) -> None:
    compacted = compact(int8_model)
    # weights and biases of each conv carry a zero point per output channel: 2 x 80, int64
    stored, before = _zero_point_vectors(int8_model)
    assert stored == 2 * sum(CHANNELS)
    _, after = _zero_point_vectors(compacted)
    assert len(before) == 2 * len(CHANNELS)
    assert len(after) == len(set(CHANNELS))  # one vector of zeros per channel count
    saved = len(int8_model) - len(compacted)
    assert saved >= 8 * (2 * sum(CHANNELS) - sum(set(CHANNELS))), saved
    assert np.array_equal(_outputs(compacted), _outputs(int8_model))


def test_compacted_tensor_data_stays_16_byte_aligned_and_compacts_once(int8_model: bytes) -> None:
    from ai_edge_litert import schema_py_generated as schema

    compacted = compact(int8_model)
    model = schema.Model.GetRootAsModel(compacted, 0)
    starts = []
    for i in range(model.BuffersLength()):
        table = model.Buffers(i)._tab
        if model.Buffers(i).DataLength():
            starts.append(table.Vector(table.Offset(4)))
    assert len(starts) >= 2 * len(CHANNELS)  # kernels and biases at least
    assert all(start % 16 == 0 for start in starts), starts
    assert compact(compacted) == compacted  # nothing left to share: returned as it is


def test_models_whose_buffers_live_outside_the_flatbuffer_are_left_alone(
    int8_model: bytes,
) -> None:
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(int8_model), 0)
    model.buffers[-1].offset, model.buffers[-1].size = len(int8_model), 1
    builder = flatbuffers.Builder(len(int8_model))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    external = bytes(builder.Output())
    assert compact(external) == external
