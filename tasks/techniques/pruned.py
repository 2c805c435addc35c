"""pruned: structural channel pruning with torch-pruning, then fine-tuning, exported to ONNX.

torch is imported where it is used: the technique table is read where torch is not installed.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field

from tasks.config import Fraction, PositiveInt
from tasks.data import Preprocess, Split
from tasks.errors import VariantError, brief
from tasks.technique import Technique, TechniqueConfig
from tasks.techniques.context import BuildContext
from tasks.variant import VariantRecord

if TYPE_CHECKING:
    import torch
    from torch import nn

    from tasks.train import LossFn


class PrunedConfig(TechniqueConfig):
    technique: Literal["pruned"]
    ratio: Fraction = 0.4
    # keep a multiple of this many channels per layer (null: exactly ratio): CPU and GPU kernels
    # are vectorised over channel blocks, and odd counts throw most of the MAC savings away
    round_to: PositiveInt | None = 8
    # all: every prunable channel group; inner: only the channels inside residual blocks (the
    # expanded and depthwise layers of an inverted residual), leaving the width that every
    # residual Add of a stage shares: on MobileNet-style nets most MACs are inside the blocks
    scope: Literal["all", "inner"] = "all"
    finetune_epochs: Annotated[int, Field(ge=0)] = 3
    lr: Annotated[float, Field(gt=0)] = 1e-3
    batch_size: PositiveInt = 64
    # fine-tune against the unpruned source's soft targets as well as the labels (knowledge
    # distillation, Hinton et al.): weight of the soft term, 0 = labels only. On a pretrained
    # network the source knows more than a few epochs of labels can teach the pruned one again
    distill_alpha: Annotated[float, Field(ge=0, le=1)] = 0.0
    distill_temperature: Annotated[float, Field(gt=0)] = 4.0


def build(context: BuildContext, config: PrunedConfig) -> VariantRecord:
    """The pruned, fine-tuned source (the baseline or a torch-producing variant) as an ONNX
    variant that keeps its torch model."""
    teacher = context.source_model()
    if teacher is None:
        raise VariantError(f"{context.name}: pruning needs its source's torch model")
    source = context.source_record()
    return prune(
        context.name,
        config,
        teacher,
        context.split("train"),
        context.split("val"),
        context.split("test"),
        context.preprocess(),
        context.baseline_sha256(),
        context.seed,
        context.out_dir,
        source=source.name,
        parent_sha256=source.model_sha256 if source.technique != "baseline" else None,
    )


def prune_channels(
    model: nn.Module,
    preprocess: Preprocess,
    ratio: float,
    round_to: int | None = None,
    scope: str = "all",
) -> nn.Module:
    """Remove the lowest-magnitude channels of every prunable layer (the classifier is kept),
    or with scope "inner" of every layer whose channels no residual Add shares, leaving a
    multiple of `round_to` channels per layer when it is set."""
    import torch
    import torch_pruning as tp

    example = torch.zeros(1, *preprocess.input_shape)
    # whatever computes the model's output keeps its channels (they are the classes), found
    # from the graph: a 1x1-conv classifier (SqueezeNet) lost 4 of its 10 classes
    outputs = output_layers(model, example)
    kept: list[nn.Module] = list(outputs)
    _tolerate_unmapped_reshapes()
    with warnings.catch_warnings():
        # torch-pruning warns about layers it leaves alone and about every free parameter (a
        # layer scale) it prunes with its channels, as it should
        warnings.simplefilter("ignore")
        if scope == "inner":
            kept += residual_stream_layers(model, example)
        whole = misread_layers(model, example, kept)
        whole += breaking_layers(model, example, kept + whole, ratio, round_to)
        kept += whole
    if whole:
        names = {id(module): name for name, module in model.named_modules()}
        print(
            "channel pruning: left whole (pruning their channels would misread or break the model): "
            + ", ".join(names[id(m)] for m in whole),
            flush=True,
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = tp.pruner.MagnitudePruner(
            model,
            example,
            importance=tp.importance.MagnitudeImportance(p=2),
            pruning_ratio=ratio,
            ignored_layers=kept,
            round_to=round_to,
        )
        pruner.step()
    _check_output_kept(model, example, outputs)
    return model


def _check_output_kept(model: nn.Module, example: torch.Tensor, kept: list[nn.Module]) -> None:
    """The pruned model still runs and gives as many outputs as before: a pruning that broke it
    is this variant's one-line failure naming the layers it kept whole, not a crash later in
    fine-tuning ('The size of tensor a (8) must match the size of tensor b (4)')."""
    import torch

    names = {id(module): name for name, module in model.named_modules()}
    kept_names = ", ".join(names.get(id(m), type(m).__name__) for m in kept) or "none"
    try:
        with torch.no_grad():
            after = model.eval()(example)
    except (RuntimeError, IndexError, ValueError) as exc:
        raise VariantError(
            f"channel pruning broke the model's forward pass ({brief(exc)}); layers kept "
            f"whole: {kept_names}"
        ) from None
    widths = {kept_width(m) for m in kept}
    if isinstance(after, torch.Tensor) and widths and after.shape[-1] not in widths:
        raise VariantError(
            f"channel pruning changed the model's output to {tuple(after.shape)}; the layers "
            f"computing it ({kept_names}) have {sorted(widths)} outputs"
        )


def kept_width(module: nn.Module) -> int:
    from torch import nn

    return module.out_features if isinstance(module, nn.Linear) else int(module.out_channels)  # type: ignore[arg-type]


def output_layers(model: nn.Module, example: torch.Tensor) -> list[nn.Module]:
    """The Conv2d/Linear layers that compute the model's output: walking its autograd graph
    back from the output, the first such layers met on every path (through activations,
    pooling, reshapes, norms, additions), whatever their type or name."""
    import torch
    from torch import nn

    layers = {
        id(param): module
        for module in model.modules()
        if isinstance(module, nn.Conv2d | nn.Linear)
        for param in module.parameters(recurse=False)
    }
    frozen = [p for p in model.parameters() if not p.requires_grad]
    for param in frozen:  # an untrainable layer has no AccumulateGrad node to be found by
        param.requires_grad_(True)
    was_training = model.training
    try:
        model.eval()
        with torch.enable_grad():
            output = model(example)
        outputs = output if isinstance(output, tuple | list) else (output,)
        found: dict[int, nn.Module] = {}
        seen: set[int] = set()
        pending = [t.grad_fn for t in outputs if isinstance(t, torch.Tensor) and t.grad_fn]
        while pending:
            node = pending.pop()
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            children = [child for child, _ in node.next_functions if child is not None]
            owners = [
                layers[id(child.variable)]
                for child in children
                if hasattr(child, "variable") and id(child.variable) in layers
            ]
            if owners:  # a Conv2d/Linear's own op: stop here on this path
                found.update((id(m), m) for m in owners)
                continue
            pending.extend(children)
    finally:
        for param in frozen:
            param.requires_grad_(False)
        model.train(was_training)
    return list(found.values())


def breaking_layers(
    model: nn.Module,
    example: torch.Tensor,
    ignored: list[nn.Module],
    ratio: float,
    round_to: int | None,
) -> list[nn.Module]:
    """The layers whose pruning leaves a model that no longer runs, found by pruning copies of
    it one group at a time and running each step: a hand-written attention reshapes its tokens
    with sizes its forward computes from the input's width (`d // heads`, `3 * d`), which
    torch-pruning cannot see, and a pruned token width broke that reshape. Each pass that breaks
    leaves the group it broke at whole and starts again from a fresh copy."""
    import copy

    import torch
    import torch_pruning as tp

    names = {id(module): name for name, module in model.named_modules()}
    broken: list[str] = []
    while True:
        candidate = copy.deepcopy(model)
        modules = dict(candidate.named_modules())
        pruner = tp.pruner.MagnitudePruner(
            candidate,
            example,
            importance=tp.importance.MagnitudeImportance(p=2),
            pruning_ratio=ratio,
            ignored_layers=[modules[names[id(m)]] for m in ignored] + [modules[n] for n in broken],
            round_to=round_to,
        )
        candidate_names = {id(module): name for name, module in modules.items()}
        broke = None
        for group in pruner.step(interactive=True):
            group.prune()
            try:
                with torch.no_grad():
                    candidate(example)
            except Exception:  # any failure to run: this group broke it
                broke = candidate_names[id(group[0][0].target.module)]
                break
        if broke is None:
            original = dict(model.named_modules())
            return [original[name] for name in broken]
        if broke in broken:  # cannot happen for a model that runs unpruned: never loop on it
            raise VariantError(f"pruning breaks the model at {broke}, even left whole")
        broken.append(broke)


def misread_layers(
    model: nn.Module, example: torch.Tensor, ignored: list[nn.Module]
) -> list[nn.Module]:
    """The layers whose output channels torch-pruning's dependency graph maps onto channels that
    are not there, left whole: a hand-written attention's qkv Linear (its 3 x heads x head_dim
    outputs split by a reshape) was coupled with 144 input channels of a projection that has 48,
    and the pruner stopped with an IndexError. A group is trusted only when every index it
    would remove exists in the layer it removes it from."""
    import torch_pruning as tp
    from torch import nn

    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    importance = tp.importance.MagnitudeImportance(p=2)
    misread: list[nn.Module] = []
    for root, group in _groups(graph, ignored):
        if group is None:  # its indices could not even be followed: the root stays whole
            misread.append(root)
            continue
        fits = all(_indices_fit(graph, dep, idxs) for dep, idxs in group) and not any(
            _regroups_channels(dep.source) or _regroups_channels(dep.target) for dep, _ in group
        )
        if fits:
            try:
                importance(group)
            except (IndexError, RuntimeError):
                fits = False
        if not fits:
            misread += [
                dep.target.module
                for dep, _ in group
                if isinstance(dep.target.module, nn.Conv2d | nn.Linear)
                and graph.is_out_channel_pruning_fn(dep.handler)
            ]
    return misread


def _groups(graph: Any, ignored: list[nn.Module]) -> Iterator[tuple[nn.Module, Any]]:
    """Each Conv2d/Linear root's pruning group, as `DependencyGraph.get_all_groups` forms them,
    with None where forming it fails: its index mappings past an unmapped reshape can point
    beyond a split's sizes (IndexError), and one such root must not stop the others."""
    from torch import nn

    visited: set[int] = set()
    for module in list(graph.module2node):
        if module in ignored or not isinstance(module, nn.Conv2d | nn.Linear):
            continue
        pruner = graph.get_pruner_of_module(module)
        if pruner is None or pruner.get_out_channels(module) is None or id(module) in visited:
            continue
        try:
            group = graph.get_pruning_group(
                module, pruner.prune_out_channels, list(range(pruner.get_out_channels(module)))
            )
        except IndexError:
            visited.add(id(module))
            yield module, None
            continue
        targets = [
            dep.target.module for dep, _ in group if graph.is_out_channel_pruning_fn(dep.handler)
        ]
        visited.update(id(m) for m in targets)
        if not any(m in ignored for m in targets):
            yield module, group


def _tolerate_unmapped_reshapes() -> None:
    """torch-pruning builds its dependency graph with a division by the channels it infers on
    each side of a reshape, and stops (ZeroDivisionError) where it infers none: torchvision's
    ShuffleNetV2 shuffles channels with a view to (b, 2, c/2, h, w), a transpose and a view
    back. Such a reshape is marked instead, and `misread_layers` leaves every group that passes
    through it, or through a transpose of a reshaped map (the shuffle itself), whole. Installed
    once for the process, not around each prune: pruned and distilled prune in threads at once."""
    from torch_pruning.dependency import index_mapping

    mapped = index_mapping.update_reshape_index_mapping
    if getattr(mapped, "modelpress_tolerant", False):
        return

    def tolerant(graph: Any, node: Any) -> None:
        try:
            mapped(graph, node)
        except ZeroDivisionError:
            node.modelpress_unmapped = True

    tolerant.modelpress_tolerant = True  # type: ignore[attr-defined]
    index_mapping.update_reshape_index_mapping = tolerant


def _regroups_channels(node: Any) -> bool:
    """A reshape torch-pruning could not map, or a transpose/permute of a reshaped map: the
    channels after it are the ones before it in an order its index mapping does not follow."""
    if getattr(node, "modelpress_unmapped", False):
        return True
    grad_fn = str(getattr(node, "grad_fn", "")).lstrip("<")
    if not grad_fn.startswith(("TransposeBackward", "PermuteBackward")):
        return False
    return any(
        str(getattr(n, "grad_fn", ""))
        .lstrip("<")
        .startswith(("ViewBackward", "ReshapeAliasBackward", "UnsafeViewBackward"))
        for n in node.inputs
    )


def _indices_fit(graph: Any, dep: Any, idxs: list[int]) -> bool:
    """Every channel index `dep` would prune exists in its layer (a Conv2d/Linear/norm)."""
    from torch import nn

    layer = dep.target.module
    if not idxs:
        return True
    out = graph.is_out_channel_pruning_fn(dep.handler)
    if isinstance(layer, nn.Conv2d):
        count = layer.out_channels if out else layer.in_channels
    elif isinstance(layer, nn.Linear):
        count = layer.out_features if out else layer.in_features
    elif isinstance(layer, nn.BatchNorm2d | nn.BatchNorm1d):
        count = layer.num_features
    elif isinstance(layer, nn.LayerNorm | nn.GroupNorm):
        count = layer.weight.shape[0] if layer.weight is not None else max(idxs) + 1
    else:
        return True
    return max(idxs) < count


def residual_stream_layers(model: nn.Module, example: torch.Tensor) -> list[nn.Module]:
    """The Conv2d/Linear layers whose output channels are summed with another tensor's: pruning
    one of them prunes every layer of its stage's residual stream at once."""
    import torch_pruning as tp
    from torch import nn

    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    layers: list[nn.Module] = []
    for group in graph.get_all_groups(root_module_types=[nn.Conv2d, nn.Linear]):
        deps = [dep for dep, _ in group]
        modules = {d.target.module for d in deps} | {d.source.module for d in deps}
        # x + y of two tensors; an add of a constant (a decomposed hard-swish's x + 3) joins
        # nothing, nor does the addmm of a Linear on an NHWC map (ConvNeXt's MLP)
        if any(
            isinstance(m, tp.ops._ElementWiseOp)
            and str(m._grad_fn).lstrip("<").startswith("AddBackward")
            and len(graph.module2node[m].inputs) >= 2
            for m in modules
        ):
            # the layers that write the summed channels; the next block's expand conv only
            # reads them, and its own output is inner
            layers += [
                d.target.module
                for d in deps
                if isinstance(d.target.module, nn.Conv2d | nn.Linear)
                and graph.is_out_channel_pruning_fn(d.handler)
            ]
    return list({id(m): m for m in layers}.values())


def prune(
    name: str,
    cfg: PrunedConfig,
    teacher: nn.Module,
    train: Split,
    val: Split,
    test: Split,
    preprocess: Preprocess,
    baseline_sha256: str | None,
    seed: int,
    out_dir: Path,
    source: str = "baseline",
    parent_sha256: str | None = None,
) -> VariantRecord:
    """Prune a copy of the baseline to cfg.ratio, fine-tune it, and write the ONNX variant."""
    import copy

    import torch

    from tasks.export import write_onnx_variant
    from tasks.models import count_macs_params, modularize
    from tasks.train import FitSettings, fit

    model = copy.deepcopy(teacher)
    if isinstance(model, torch.fx.GraphModule):  # a user's .pt2 program: give it real layers
        model = modularize(model)
    before_macs, before_params = count_macs_params(model, preprocess.input_shape)
    model = prune_channels(model, preprocess, cfg.ratio, cfg.round_to, cfg.scope)
    after_macs, after_params = count_macs_params(model, preprocess.input_shape)
    if after_macs is None or before_macs is None or after_macs >= before_macs:
        raise VariantError(
            f"{name}: torch-pruning removed no channels from this model "
            f"({type(teacher).__name__}); it found no prunable Conv2d/Linear layers"
        )
    print(
        f"{name}: MACs {before_macs / 1e6:.1f}M → {after_macs / 1e6:.1f}M, params {before_params:,} → {after_params:,}"
    )
    if cfg.finetune_epochs:
        settings = FitSettings(cfg.finetune_epochs, cfg.batch_size, cfg.lr)
        fit(model, train, val, preprocess, settings, seed, name, loss_fn=_loss(cfg, teacher))
    return write_onnx_variant(
        model,
        preprocess,
        preprocess.normalize(test.x),
        out_dir,
        name=name,
        technique="pruned",
        source=source,
        settings=cfg.model_dump(),
        parent_sha256=parent_sha256 or baseline_sha256,
        save_torch=True,
        baseline_sha256=baseline_sha256,
        extra={"macs_before": before_macs, "params_before": before_params},
    )


def _loss(cfg: PrunedConfig, teacher: nn.Module) -> LossFn | None:
    """The fine-tuning loss: labels only (None), or distilled from the unpruned source."""
    if cfg.distill_alpha == 0:
        return None
    import torch

    from tasks.train import distillation_loss

    teacher.eval()

    def loss_fn(logits: torch.Tensor, labels: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = teacher(inputs)
        return distillation_loss(
            logits, teacher_logits, labels, cfg.distill_temperature, cfg.distill_alpha
        )

    return loss_fn


TECHNIQUE = Technique(
    name="pruned",
    config=PrunedConfig,
    starts_from="torch",
    runtime="onnxruntime",
    produces_onnx=True,
    produces_torch=True,
    build=build,
    uses=("tasks.export", "tasks.models", "tasks.train", "tasks.techniques.distilled"),
)
