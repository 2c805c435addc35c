"""clustered: per-layer weight clustering (k-means) to `clusters` shared values, fine-tuned with
the centroids shared, exported to ONNX.

Batch norm is folded into the convolutions first: the ONNX export folds it anyway, and a
per-channel BN scale applied after clustering would turn 32 shared values into thousands.
The clustered weights stay fp32 in the ONNX file (every runtime reads them as they are); the
pay-off is in the compressed size (few distinct values entropy-code well) and in the int8
variants built from it.

torch is imported where it is used: the technique table is read where torch is not installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast

from pydantic import Field

from tasks.arrays import Array
from tasks.config import PositiveInt
from tasks.errors import VariantError
from tasks.technique import Technique, TechniqueConfig
from tasks.techniques.context import BuildContext
from tasks.variant import VariantRecord

if TYPE_CHECKING:
    import torch
    from torch import nn


class ClusteredConfig(TechniqueConfig):
    technique: Literal["clustered"]
    clusters: Annotated[int, Field(ge=2, le=256)] = 32
    layers: Literal["conv", "conv_linear"] = "conv"  # which layers share their weights
    init: Literal["kmeans++", "linear"] = "kmeans++"  # linear: evenly spaced over [min, max]
    finetune_epochs: Annotated[int, Field(ge=0)] = 2
    lr: Annotated[float, Field(gt=0)] = 3e-4
    batch_size: PositiveInt = 64


def build(context: BuildContext, config: ClusteredConfig) -> VariantRecord:
    """The source's torch model, BN folded, weights clustered and fine-tuned, as ONNX."""
    import torch

    from tasks.export import write_onnx_variant
    from tasks.models import count_macs_params

    model = context.editable_source_model("clustering")
    source = context.source_record()
    preprocess = context.preprocess()
    model = fold_batch_norm(model, context.name, preprocess.input_shape)
    macs, params = count_macs_params(model, preprocess.input_shape)
    layers = clustered_layers(model, config.layers)
    if not layers:
        raise VariantError(f"{context.name}: no Conv2d/Linear layer to cluster in this model")
    torch.manual_seed(context.seed)
    sharing = share_weights(layers, config.clusters, config.init, context.seed)
    context.fine_tune(model, config.finetune_epochs, config.batch_size, config.lr)
    unshare(sharing)
    baseline_sha = context.baseline_sha256()
    record = write_onnx_variant(
        model,
        preprocess,
        preprocess.normalize(context.split("test").x),
        context.out_dir,
        name=context.name,
        technique="clustered",
        source=source.name,
        settings=config.model_dump(),
        parent_sha256=source.model_sha256 or baseline_sha,
        baseline_sha256=source.baseline_sha256 or baseline_sha,
        save_torch=True,
        extra={
            "clustered_layers": len(layers),
            "clustered_weights": sum(_weight(m).numel() for m in layers),
            "macs_before": macs,
            "params_before": params,
        },
    )
    print(f"{context.name}: {len(layers)} layers clustered to ≤ {config.clusters} values each")
    return record


def _weight(layer: nn.Module) -> torch.Tensor:
    return cast("torch.Tensor", layer.weight)


def fold_batch_norm(model: nn.Module, name: str, input_shape: tuple[int, ...]) -> nn.Module:
    """Fuse, in place, each BatchNorm2d into the Conv2d whose output it reads (eval statistics;
    found by running the model, not by registration order), each fold kept only where the
    outputs on a random batch do not change. A batch norm that reads no conv's output (pre-activation, BN ->
    ReLU -> Conv, as in DenseNet) is left as it is, named: it scales activations, not the
    shared weights, and no export can fold it into a conv either."""
    import torch
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model.eval()
    probe = torch.randn(4, *input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(probe)
    candidates, alone = _conv_bn_pairs(model, probe)
    pairs = []
    for conv_name, bn_name in candidates:
        conv = cast("nn.Conv2d", model.get_submodule(conv_name))
        bn = cast("nn.BatchNorm2d", model.get_submodule(bn_name))
        _replace(model, conv_name, fuse_conv_bn_eval(conv, bn))
        _replace(model, bn_name, nn.Identity())
        if _changed(model, probe, expected):  # the conv's output is read elsewhere too (a
            _replace(model, conv_name, conv)  # DenseNet concatenates it): leave the pair
            _replace(model, bn_name, bn)
            alone.append(bn_name)
        else:
            pairs.append((conv_name, bn_name))
    if alone:
        print(
            f"{name}: batch norm left unfolded (it reads no conv's output: pre-activation): "
            + ", ".join(alone),
            flush=True,
        )
    if _changed(model, probe, expected):
        with torch.no_grad():
            diff = float((model(probe) - expected).abs().max())
        raise VariantError(
            f"{name}: folding batch norm into the convs changed the outputs by {diff:.3g}; "
            f"folded: {', '.join(f'{b} into {c}' for c, b in pairs)}"
        )
    return model


def _changed(model: nn.Module, probe: torch.Tensor, expected: torch.Tensor) -> bool:
    import torch

    with torch.no_grad():
        diff = float((model(probe) - expected).abs().max())
    return diff > 1e-3 * max(1.0, float(expected.abs().max()))


def _conv_bn_pairs(
    model: nn.Module, probe: torch.Tensor
) -> tuple[list[tuple[str, str]], list[str]]:
    """(conv, batch norm) module paths where the batch norm's input is the conv's output tensor
    itself, each conv used once, and the batch norms that read anything else."""
    import torch
    from torch import nn

    produced: dict[int, str] = {}  # id of a conv's output tensor → the conv's path
    pairs: list[tuple[str, str]] = []
    alone: list[str] = []
    touched: set[int] = set()  # outputs an in-place module changed after the conv
    alive: list[torch.Tensor] = []  # the outputs themselves: a freed tensor's id is reused
    handles = []

    def after_conv(path: str) -> Any:
        def hook(_: nn.Module, __: Any, output: torch.Tensor) -> None:
            alive.append(output)
            produced[id(output)] = path

        return hook

    def before_bn(path: str) -> Any:
        def hook(_: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            source = produced.get(id(inputs[0]))
            if source is not None and id(inputs[0]) not in touched:
                pairs.append((source, path))
                produced.pop(id(inputs[0]))
            else:
                alone.append(path)

        return hook

    def after_other(_: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        if inputs and isinstance(inputs[0], torch.Tensor) and output is inputs[0]:
            alive.append(output)
            touched.add(id(output))  # an in-place op (ReLU(inplace=True)) changed it

    for path, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(after_conv(path)))
        elif isinstance(module, nn.BatchNorm2d):
            handles.append(module.register_forward_pre_hook(before_bn(path)))
        elif not list(module.children()):
            handles.append(module.register_forward_hook(after_other))
    try:
        with torch.no_grad():
            model(probe)
    finally:
        for handle in handles:
            handle.remove()
    return pairs, alone


def _replace(model: nn.Module, dotted: str, new: nn.Module) -> None:
    parent, _, attr = dotted.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)


def clustered_layers(model: nn.Module, which: str) -> list[nn.Module]:
    from torch import nn

    kinds: tuple[type, ...] = (nn.Conv2d,) if which == "conv" else (nn.Conv2d, nn.Linear)
    return [m for m in model.modules() if isinstance(m, kinds)]


def kmeans_1d(values: Array, clusters: int, init: str, seed: int) -> tuple[Array, Array]:
    """Centroids and each value's centroid index (scikit-learn k-means on the scalar values)."""
    import numpy as np
    from sklearn.cluster import KMeans

    flat = values.reshape(-1, 1).astype(np.float64)
    k = min(clusters, len(np.unique(flat)))
    if init == "linear":
        start = np.linspace(flat.min(), flat.max(), k).reshape(-1, 1)
        km = KMeans(n_clusters=k, init=start, n_init=1, random_state=seed)
    else:
        km = KMeans(n_clusters=k, init="k-means++", n_init=3, random_state=seed)
    labels = km.fit_predict(flat)
    return km.cluster_centers_.reshape(-1).astype(np.float32), labels.astype(np.int64)


class _Shared:
    """A parametrization: the weight is centroids[labels]. Indexing makes each centroid's gradient
    the sum of its members' gradients, so fine-tuning keeps the sharing."""

    @staticmethod
    def make(centroids: torch.Tensor, labels: torch.Tensor) -> nn.Module:
        from torch import nn

        class Shared(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.centroids = nn.Parameter(centroids)
                self.register_buffer("labels", labels)

            def forward(self, original: torch.Tensor) -> torch.Tensor:
                labels = cast("torch.Tensor", self.labels)
                return self.centroids[labels].reshape(original.shape)

        return Shared()


def share_weights(layers: list[nn.Module], clusters: int, init: str, seed: int) -> list[nn.Module]:
    """Cluster each layer's weight and parametrize it by its centroids."""
    import torch
    from torch.nn.utils import parametrize

    for layer in layers:
        weight = _weight(layer).detach().cpu().numpy()
        centroids, labels = kmeans_1d(weight, clusters, init, seed)
        shared = _Shared.make(torch.from_numpy(centroids), torch.from_numpy(labels))
        parametrize.register_parametrization(layer, "weight", shared, unsafe=True)
    return layers


def unshare(layers: list[nn.Module]) -> None:
    """Bake centroids[labels] back into plain weights (the export sees ordinary layers)."""
    from torch.nn.utils import parametrize

    for layer in layers:
        parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)


def distinct_weight_values(onnx_path: Path, min_size: int = 64) -> dict[str, int]:
    """Distinct values of each weight initializer (≥ min_size elements, ≥ 2-D) of an ONNX file."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    counts = {}
    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        if array.ndim >= 2 and array.size >= min_size:
            counts[init.name] = len(np.unique(array))
    return counts


TECHNIQUE = Technique(
    name="clustered",
    config=ClusteredConfig,
    starts_from="torch",
    runtime="onnxruntime",
    produces_onnx=True,
    produces_torch=True,
    build=build,
    uses=("tasks.export", "tasks.models", "tasks.train"),
)
