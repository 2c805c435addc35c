"""low_rank: truncated-SVD factorization of conv and linear layers, fine-tuned, exported to ONNX.

A k×k conv (out ← in) becomes a k×k conv to r channels then a 1×1 conv to out; a linear layer
becomes two linears through r features. r comes from `rank_ratio` of the full rank, or from an
`energy` threshold on the singular values. A layer is left as it is where the factorized pair
would not need fewer MACs. Depthwise/grouped convs are left too.

torch is imported where it is used: the technique table is read where torch is not installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal, cast

from pydantic import Field

from tasks.config import Fraction, PositiveInt
from tasks.errors import VariantError
from tasks.technique import Technique, TechniqueConfig
from tasks.techniques.context import BuildContext
from tasks.variant import VariantRecord

if TYPE_CHECKING:
    import torch
    from torch import nn


class LowRankConfig(TechniqueConfig):
    technique: Literal["low_rank"]
    rank_ratio: Fraction = 0.35  # r = rank_ratio × min(out, in·k·k), at least 1
    # keep this fraction of each weight's squared singular values instead (null: rank_ratio)
    energy: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    layers: Literal["conv", "conv_linear"] = "conv_linear"
    finetune_epochs: Annotated[int, Field(ge=0)] = 4
    lr: Annotated[float, Field(gt=0)] = 1e-3
    batch_size: PositiveInt = 64


def build(context: BuildContext, config: LowRankConfig) -> VariantRecord:
    """The source's torch model with its layers factorized and fine-tuned, as ONNX."""
    from tasks.export import write_onnx_variant
    from tasks.models import count_macs_params

    model = context.editable_source_model("low-rank factorization")
    source = context.source_record()
    preprocess = context.preprocess()
    before_macs, before_params = count_macs_params(model, preprocess.input_shape)
    factorized = factorize(model, config)
    after_macs, after_params = count_macs_params(model, preprocess.input_shape)
    if not factorized:
        raise VariantError(
            f"{context.name}: no conv/linear layer of this model needs fewer MACs at rank_ratio "
            f"{config.rank_ratio}" + (f" / energy {config.energy}" if config.energy else "")
        )
    print(
        f"{context.name}: {len(factorized)} layers factorized; MACs "
        f"{(before_macs or 0) / 1e6:.2f}M → {(after_macs or 0) / 1e6:.2f}M, params "
        f"{before_params:,} → {after_params:,}",
        flush=True,
    )
    context.fine_tune(model, config.finetune_epochs, config.batch_size, config.lr)
    baseline_sha = context.baseline_sha256()
    return write_onnx_variant(
        model,
        preprocess,
        preprocess.normalize(context.split("test").x),
        context.out_dir,
        name=context.name,
        technique="low_rank",
        source=source.name,
        settings=config.model_dump(),
        parent_sha256=source.model_sha256 or baseline_sha,
        baseline_sha256=source.baseline_sha256 or baseline_sha,
        save_torch=True,
        extra={
            "macs_before": before_macs,
            "params_before": before_params,
            "factorized": factorized,
        },
    )


def choose_rank(singular: torch.Tensor, full: int, config: LowRankConfig) -> int:
    import torch

    if config.energy is not None:
        energy = torch.cumsum(singular**2, 0) / torch.sum(singular**2)
        return int(torch.searchsorted(energy, torch.tensor(config.energy)).item()) + 1
    return max(1, round(config.rank_ratio * full))


def factorize(model: nn.Module, config: LowRankConfig) -> dict[str, int]:
    """Replace, in place, each layer whose factorized pair needs fewer MACs; returns the rank
    chosen for each replaced layer, by module name."""
    from torch import nn

    kinds: tuple[type, ...] = (nn.Conv2d,) if config.layers == "conv" else (nn.Conv2d, nn.Linear)
    chosen: dict[str, int] = {}
    for name, layer in list(model.named_modules()):
        if not isinstance(layer, kinds) or (isinstance(layer, nn.Conv2d) and layer.groups != 1):
            continue
        replacement, rank = _factorized(cast("nn.Conv2d | nn.Linear", layer), config)
        if replacement is None:
            continue
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, replacement)
        chosen[name] = rank
    return chosen


def _factorized(
    layer: nn.Conv2d | nn.Linear, config: LowRankConfig
) -> tuple[nn.Module | None, int]:
    """The two-layer replacement of a Conv2d/Linear at its chosen rank (None: no MAC saving)."""
    import torch
    from torch import nn

    weight = layer.weight.detach()
    out = weight.shape[0]
    matrix = weight.reshape(out, -1)  # conv: out × (in·k·k), as the im2col product sees it
    fan_in = matrix.shape[1]
    full = min(out, fan_in)
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    rank = min(choose_rank(s, full, config), full)
    # per output position: r·fan_in + out·r MACs against out·fan_in
    if rank * (fan_in + out) >= out * fan_in:
        return None, rank
    root = torch.sqrt(s[:rank])
    first_w = root[:, None] * vh[:rank]  # r × fan_in
    second_w = u[:, :rank] * root[None, :]  # out × r
    bias = layer.bias.detach() if layer.bias is not None else None
    if isinstance(layer, nn.Linear):
        first: nn.Module = nn.Linear(layer.in_features, rank, bias=False)
        second: nn.Module = nn.Linear(rank, out, bias=bias is not None)
        cast("torch.Tensor", first.weight).data.copy_(first_w)
        cast("torch.Tensor", second.weight).data.copy_(second_w)
    else:
        conv_args = (layer.kernel_size, layer.stride, layer.padding, layer.dilation)
        first = nn.Conv2d(layer.in_channels, rank, *conv_args, bias=False)  # type: ignore[arg-type]
        second = nn.Conv2d(rank, out, 1, bias=bias is not None)
        first.weight.data.copy_(first_w.reshape(rank, *weight.shape[1:]))
        second.weight.data.copy_(second_w.reshape(out, rank, 1, 1))
    if bias is not None:
        cast("torch.Tensor", second.bias).data.copy_(bias)
    return nn.Sequential(first, second), rank


TECHNIQUE = Technique(
    name="low_rank",
    config=LowRankConfig,
    starts_from="torch",
    runtime="onnxruntime",
    produces_onnx=True,
    produces_torch=True,
    build=build,
    uses=("tasks.export", "tasks.models", "tasks.train"),
)
