"""qat_onnx_int8: the ranges QAT trained are the ones the deployed int8 model uses.

The QAT network is exported with its trained activation ranges and its weights on their int8
grid; ONNX Runtime runs it as int8 (fused QLinearConv/QGemm kernels) and scores what the
fake-quantized network scores, within noise, whether the ranges were learned (LSQ) or observed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn
from torch.ao.quantization import disable_observer

from tasks.data import Preprocess, Split, load_preprocess, load_split
from tasks.evaluate import evaluate
from tasks.io import read_json
from tasks.qat import prepare_qat, qat_finetune, to_qdq, weighted_qat_modules
from tasks.techniques import technique_named
from tasks.techniques.context import BuildContext
from tasks.techniques.qat_onnx_int8 import (
    QatOnnxInt8Config,
    export_qdq,
    int8_check,
    store_weights_as_int8,
)
from tasks.train import accuracy, load_baseline, predict

pytestmark = pytest.mark.slow  # three QAT fine-tunes of the tiny ResNet: about 2 minutes

# within noise: two images of the ~360 in the tiny test split
NOISE = 2 / 360


def _splits(workspace: Path) -> dict[str, Split]:
    return {n: load_split(workspace / "data", n) for n in ("train", "val", "calib", "test")}


@pytest.fixture(scope="module")
def tiny(tiny_workspace: Path) -> tuple[nn.Module, Preprocess, dict[str, Split]]:
    """The tiny trained ResNet (convs, batch norms, residual adds, a linear classifier)."""
    net = load_baseline(tiny_workspace / "models" / "baseline").eval()
    return net, load_preprocess(tiny_workspace / "data"), _splits(tiny_workspace)


@pytest.mark.parametrize("ranges", ["learned", "minmax"])
def test_the_int8_model_scores_what_its_fake_quantized_network_scores(
    tiny: tuple[nn.Module, Preprocess, dict[str, Split]], tmp_path: Path, ranges: str
) -> None:
    net, preprocess, splits = tiny
    config = QatOnnxInt8Config.model_validate(
        {"technique": "qat_onnx_int8", "source": "baseline", "ranges": ranges, "epochs": 3,
         "freeze_bn_after": 2, "freeze_observers_after": 2, "lr": 1e-3, "batch_size": 32}
    )  # fmt: skip
    prepared = prepare_qat(net, preprocess, "qat", config.ranges)
    qat_finetune(prepared, config, splits["train"], splits["val"], preprocess, 0, "qat")
    path = tmp_path / "model.onnx"
    export_qdq("qat", to_qdq(prepared), preprocess, path)
    stored = store_weights_as_int8(path)
    assert stored == len(weighted_qat_modules(prepared)) >= 10  # every conv and the classifier

    test_x, labels = preprocess.normalize(splits["test"].x), splits["test"].y
    fake_quantized = accuracy(predict(prepared.eval(), test_x), labels)
    check = int8_check(path, prepared, test_x)
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    deployed = accuracy(session.run(None, {"input": test_x})[0], labels)
    assert abs(deployed - fake_quantized) <= NOISE, (deployed, fake_quantized)
    assert deployed >= 0.8, deployed
    assert check.agreement >= 0.98 and check.int8_kernels >= stored - 1, check
    int8 = [i for i in onnx.load(str(path)).graph.initializer if i.data_type == 3]  # INT8
    weights = [i for i in int8 if len(i.dims) >= 2]  # (not the zero points)
    assert len(weights) == stored  # the weights, stored as int8
    floats = [i for i in onnx.load(str(path)).graph.initializer if i.data_type == 1]
    assert sum(np.prod(w.dims) for w in floats) < sum(np.prod(w.dims) for w in weights) / 4


def test_to_qdq_computes_what_the_fake_quantized_network_computes(
    tiny: tuple[nn.Module, Preprocess, dict[str, Split]],
) -> None:
    net, preprocess, splits = tiny
    prepared = prepare_qat(net, preprocess, "qat", "learned")
    with torch.no_grad():
        prepared.eval()(torch.from_numpy(preprocess.normalize(splits["train"].x[:64])))
    prepared.apply(disable_observer)  # as after the fine-tune: ranges fixed
    x = preprocess.normalize(splits["test"].x[:64])
    qdq, fake_quantized = predict(to_qdq(prepared), x), predict(prepared, x)
    # the same up to float rounding: BN folded before the weights' fake-quant, not after, moves
    # a value across a rounding boundary now and then (one output level, 3 of 640 logits here)
    assert (np.abs(qdq - fake_quantized) > 1e-5).mean() <= 0.02
    assert (qdq.argmax(1) == fake_quantized.argmax(1)).mean() >= 0.98


def test_builds_an_int8_onnx_variant_from_the_baseline(
    tiny_workspace: Path, tmp_path: Path
) -> None:
    variants = tmp_path / "variants"
    shutil.copytree(tiny_workspace / "variants" / "baseline", variants / "baseline")
    context = BuildContext(
        "qat_onnx_int8",
        0,
        variants / "baseline",
        variants / "qat_onnx_int8",
        data_dir=tiny_workspace / "data",
        baseline_dir=tiny_workspace / "models" / "baseline",
    )
    config = QatOnnxInt8Config(
        technique="qat_onnx_int8", source="baseline", epochs=1, freeze_bn_after=1,
        freeze_observers_after=1,
    )  # fmt: skip
    technique_named("qat_onnx_int8").build(context, config)
    record = read_json(variants / "qat_onnx_int8" / "variant.json")
    assert (record["runtime"], record["source"], record["extra"]["ranges"]) == (
        "onnxruntime",
        "baseline",
        "learned",
    )
    assert record["extra"]["int8_kernels"] >= 8 and record["extra"]["fake_quant_agreement"] >= 0.95
    size = (variants / "qat_onnx_int8" / record["model_file"]).stat().st_size
    # int8 weights; the graph's nodes weigh as much as a 20k-parameter model's weights do
    assert size < 0.6 * (variants / "baseline" / "model.onnx").stat().st_size
    metrics = evaluate(
        variants, ["baseline", "qat_onnx_int8"], load_split(tiny_workspace / "data", "test")
    )
    assert metrics.metrics["qat_onnx_int8"].accuracy is not None
    assert metrics.metrics["qat_onnx_int8"].accuracy >= 0.8
