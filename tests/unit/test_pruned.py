"""Pruning depthwise networks: EfficientNet-Lite0 and MobileNetV2 keep every depthwise conv's
groups equal to its channels, and the classifier's outputs, while their MACs drop."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from tasks.data import Preprocess
from tasks.models import count_macs_params
from tasks.pretrained import efficientnet_lite0, mobilenet_v2
from tasks.techniques.pruned import prune_channels

SMALL = Preprocess(image_size=32, channels=3, num_classes=10, mean=[0.0] * 3, std=[1.0] * 3)


def _depthwise(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]


@pytest.mark.parametrize(
    ("build", "depthwise_convs"),
    [(efficientnet_lite0, 16), (mobilenet_v2, 17)],
    ids=["efficientnet_lite0", "mobilenet_v2"],
)
def test_prunes_depthwise_networks_keeping_groups_and_classifier(
    build: Callable[..., nn.Module], depthwise_convs: int
) -> None:
    torch.manual_seed(0)
    model = build(num_classes=10, in_channels=3, image_size=32)
    before_macs, before_params = count_macs_params(model, SMALL.input_shape)
    assert len(_depthwise(model)) == depthwise_convs  # one per inverted residual block

    prune_channels(model, SMALL, ratio=0.3, round_to=8)

    after_macs, after_params = count_macs_params(model, SMALL.input_shape)
    assert before_macs is not None and after_macs is not None
    assert before_macs / after_macs >= 1.5, (before_macs, after_macs)
    assert before_params / after_params >= 1.5, (before_params, after_params)
    depthwise = _depthwise(model)
    assert len(depthwise) == depthwise_convs  # none turned into a grouped or dense conv
    for conv in depthwise:
        assert conv.groups == conv.in_channels == conv.out_channels, conv
        assert conv.out_channels % 8 == 0, conv  # round_to holds through the groups
    (classifier,) = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert classifier.out_features == 10
    with torch.no_grad():
        out = model.eval()(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


def test_distilled_fine_tuning_loss_follows_the_unpruned_source() -> None:
    from tasks.techniques.pruned import PrunedConfig, _loss

    torch.manual_seed(0)
    teacher = nn.Linear(4, 3)
    inputs, labels = torch.randn(8, 4), torch.randint(0, 3, (8,))
    # labels only by default
    assert _loss(PrunedConfig(technique="pruned", source="baseline"), teacher) is None

    loss_fn = _loss(PrunedConfig(technique="pruned", source="baseline", distill_alpha=0.7), teacher)
    assert loss_fn is not None
    hard = nn.functional.cross_entropy(teacher(inputs), labels)
    # a student that already matches its teacher pays only the label term's share
    same = loss_fn(teacher(inputs).detach().requires_grad_(), labels, inputs)
    assert float(same) == pytest.approx(0.3 * float(hard), rel=1e-5)
    # one that disagrees pays more, and the gradient reaches the student, not the teacher
    student_logits = torch.zeros(8, 3, requires_grad=True)
    loss = loss_fn(student_logits, labels, inputs)
    loss.backward()
    assert float(loss) > float(same)
    assert student_logits.grad is not None and teacher.weight.grad is None


@pytest.mark.parametrize(
    "build",
    [efficientnet_lite0, mobilenet_v2, "mobilenet_v3_style"],
    ids=["efficientnet_lite0", "mobilenet_v2", "mobilenet_v3_style"],
)
def test_inner_scope_keeps_every_residual_width(build: Callable[..., nn.Module] | str) -> None:
    """scope inner prunes inside the blocks only: every layer whose output a residual Add sums
    keeps its channels, while the expanded (depthwise) widths and the MACs shrink."""
    from tasks.mobilenets import mobilenet_v3_style
    from tasks.techniques.pruned import residual_stream_layers

    torch.manual_seed(0)
    if build == "mobilenet_v3_style":  # squeeze-excitation and hard-swish in its blocks
        model: nn.Module = mobilenet_v3_style(num_classes=10)
    else:
        assert callable(build)
        model = build(num_classes=10, in_channels=3, image_size=32)
    stream = residual_stream_layers(model, torch.zeros(1, *SMALL.input_shape))
    widths = [m.out_channels if isinstance(m, nn.Conv2d) else m.out_features for m in stream]
    # the project convs of every stage with a residual Add (at least two blocks each in these
    # nets, three stages or more), never a depthwise conv
    assert len(stream) >= 6 and not any(getattr(m, "groups", 1) > 1 for m in stream)
    before_dw = [c.out_channels for c in _depthwise(model)]
    before_macs, _ = count_macs_params(model, SMALL.input_shape)

    prune_channels(model, SMALL, ratio=0.5, round_to=8, scope="inner")

    after = [m.out_channels if isinstance(m, nn.Conv2d) else m.out_features for m in stream]
    assert after == widths  # the residual stream is untouched
    after_dw = [c.out_channels for c in _depthwise(model)]
    shrunk = sum(a < b for a, b in zip(after_dw, before_dw, strict=True))
    assert shrunk >= len(before_dw) - 1, (before_dw, after_dw)
    after_macs, _ = count_macs_params(model, SMALL.input_shape)
    assert before_macs is not None and after_macs is not None
    assert before_macs / after_macs >= 1.4, (before_macs, after_macs)
    with torch.no_grad():
        assert model.eval()(torch.rand(2, 3, 32, 32)).shape == (2, 10)


class _ConvNeXtBlock(nn.Module):
    """7x7 depthwise conv, channels-last LayerNorm, Linear MLP, a free layer-scale parameter."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.up, self.down = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.rand(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.dw(x).permute(0, 2, 3, 1))
        y = self.down(nn.functional.gelu(self.up(y), approximate="tanh")) * self.gamma
        return x + y.permute(0, 3, 1, 2)


class _ConvNeXt(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 4, stride=4)
        self.stem_norm = nn.LayerNorm(16)
        self.blocks = nn.Sequential(_ConvNeXtBlock(16), _ConvNeXtBlock(16))
        self.down = nn.Conv2d(16, 32, 2, stride=2)
        self.last = _ConvNeXtBlock(32)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_norm(self.stem(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.head(self.last(self.down(self.blocks(x))).mean((2, 3)))


@pytest.mark.parametrize("scope", ["all", "inner"])
def test_prunes_a_convnext_style_pt2_program(tmp_path: object, scope: str) -> None:
    """A user's torch.export program with LayerNorm and layer scale (found on an unseen
    ConvNeXt-style net: "unsupported layer for structural pruning: aten.layer_norm")."""
    from pathlib import Path

    from tasks.models import load_pt2, modularize

    torch.manual_seed(0)
    model = _ConvNeXt().eval()
    path = Path(str(tmp_path)) / "convnext.pt2"
    torch.export.save(torch.export.export(model, (torch.zeros(1, 3, 32, 32),)), str(path))
    layered = modularize(load_pt2(path))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(layered(x), model(x), atol=1e-5)
    before_macs, _ = count_macs_params(layered, SMALL.input_shape)

    prune_channels(layered, SMALL, ratio=0.5, round_to=8, scope=scope)

    after_macs, _ = count_macs_params(layered, SMALL.input_shape)
    assert before_macs is not None and after_macs is not None
    assert before_macs / after_macs >= 1.3, (before_macs, after_macs)
    hidden = [m.out_features for m in layered.modules() if isinstance(m, nn.Linear)][:-1:2]
    assert hidden == [32, 32, 64]  # every MLP's expanded width halved, in either scope
    gammas = [tuple(p.shape) for n, p in layered.named_parameters() if n.endswith("gamma")]
    norms = [m.normalized_shape for m in layered.modules() if isinstance(m, nn.LayerNorm)]
    if scope == "all":  # the residual widths too, each layer scale and norm with its channels
        assert gammas == [(8,), (8,), (16,)] and norms == [(8,), (8,), (8,), (16,)]
    else:
        assert gammas == [(16,), (16,), (32,)] and norms == [(16,), (16,), (16,), (32,)]
    with torch.no_grad():
        out = layered.eval()(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()


class _Attention(nn.Module):
    """Hand-written multi-head attention, as MobileViT-style nets write it: the qkv Linear's
    3 * d outputs split by a reshape whose sizes come from the input's width d."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = (qkv[0] @ qkv[1].transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ qkv[2]).transpose(1, 2).reshape(b, n, d))


class _TinyViTNet(nn.Module):
    """Conv stem, a MobileViT-style block (tokens from a 1x1 conv, a pre-norm transformer layer
    with a residual, back to a map and concatenated with its input), pooled linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.SiLU())
        self.to_tokens = nn.Conv2d(32, 48, 1)
        self.norm, self.attn = nn.LayerNorm(48), _Attention(48, heads=2)
        self.mlp = nn.Sequential(nn.Linear(48, 96), nn.SiLU(), nn.Linear(96, 48))
        self.from_tokens = nn.Conv2d(48, 32, 1)
        self.fuse = nn.Conv2d(64, 64, 3, 1, 1)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.to_tokens(x)
        b, d, h, w = y.shape
        tokens = y.flatten(2).transpose(1, 2)
        tokens = tokens + self.attn(self.norm(tokens))
        tokens = tokens + self.mlp(tokens)
        y = self.from_tokens(tokens.transpose(1, 2).reshape(b, d, h, w))
        return self.head(self.fuse(torch.cat([x, y], dim=1)).mean((2, 3)))


@pytest.mark.parametrize("scope", ["all", "inner"])
def test_hand_written_attention_is_left_whole_and_the_rest_is_pruned(
    scope: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """torch-pruning misreads the qkv split (it coupled qkv's 144 outputs with 144 inputs of a
    48-wide projection and stopped with an IndexError) and cannot see that the forward computes
    the head width from the token width: those layers stay whole, the model still runs, and
    every other layer is pruned."""
    torch.manual_seed(0)
    model = _TinyViTNet().eval()
    images = torch.rand(2, 3, 32, 32)
    _, before_params = count_macs_params(model, SMALL.input_shape)

    prune_channels(model, SMALL, ratio=0.5, round_to=8, scope=scope)

    assert "channel pruning: left whole" in capsys.readouterr().out
    assert (model.attn.qkv.in_features, model.attn.qkv.out_features) == (48, 144)
    assert (model.attn.proj.in_features, model.attn.proj.out_features) == (48, 48)
    assert model.stem[0].out_channels == 16 and model.mlp[0].out_features == 48
    assert model.fuse.out_channels == 32 and model.head.out_features == 10
    _, after_params = count_macs_params(model, SMALL.input_shape)
    assert before_params / after_params >= 1.5, (before_params, after_params)
    with torch.no_grad():
        out = model(images)
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_a_shufflenet_v2_style_net_prunes_inside_its_branches(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """torchvision's ShuffleNetV2 stopped torch-pruning's dependency graph (ZeroDivisionError in
    its reshape index mapping), and where the graph did build, it follows a channel shuffle's
    transpose as if it kept the order. The channels that pass through a shuffle stay whole; the
    inner width of every unit's branch (1x1, depthwise) is pruned, and the model runs."""
    from tests.unit.test_tflite_unseen_nets import shufflenet_v2_style

    model = shufflenet_v2_style(width=16)
    images = torch.rand(2, 3, 32, 32)
    _, before_params = count_macs_params(model, SMALL.input_shape)

    prune_channels(model, SMALL, ratio=0.5, round_to=8)

    assert "channel pruning: left whole" in capsys.readouterr().out
    for stage, half in ((model[3:6], 16), (model[6:9], 32)):
        for unit in stage[1:]:  # the stride-1 units: split, branch, concat, shuffle
            first, depthwise, last = unit.branch[0], unit.branch[3], unit.branch[5]
            assert (first.in_channels, last.out_channels) == (half, half)  # shuffled: whole
            assert first.out_channels == depthwise.out_channels == last.in_channels == half // 2
            assert depthwise.groups == depthwise.in_channels
    assert model[9].in_channels == 64 and model[-1].out_features == 4
    _, after_params = count_macs_params(model, SMALL.input_shape)
    assert after_params < before_params
    with torch.no_grad():
        out = model.eval()(images)
    assert out.shape == (2, 4) and torch.isfinite(out).all()


@pytest.mark.parametrize("round_to", [None, 8, 4])
@pytest.mark.parametrize("net", ["squeeze", "densenet"])
def test_a_conv_classifier_keeps_every_class(net: str, round_to: int | None) -> None:
    """A SqueezeNet-style 1x1-conv classifier had its output channels pruned: 10 classes became
    6 (round_to null), and distilled's student then crashed in fine-tuning."""
    import importlib

    from tasks.techniques.pruned import output_layers

    torch.manual_seed(0)
    model = importlib.import_module(f"tests.nets.{net}").build(num_classes=10, in_channels=1)
    gray = Preprocess(image_size=32, channels=1, num_classes=10, mean=[0.0], std=[1.0])
    (head,) = output_layers(model, torch.zeros(1, 1, 32, 32))
    assert isinstance(head, nn.Conv2d) and head.out_channels == 10
    before_macs, _ = count_macs_params(model, gray.input_shape)
    prune_channels(model, gray, ratio=0.4, round_to=round_to)
    after_macs, _ = count_macs_params(model, gray.input_shape)
    assert head.out_channels == 10
    assert before_macs is not None and after_macs is not None and after_macs < before_macs
    with torch.no_grad():
        assert model.eval()(torch.rand(2, 1, 32, 32)).shape == (2, 10)


def test_layers_of_an_imported_program_keep_the_users_module_paths() -> None:
    """A .pt2's functional layers became real ones named mp_layer175; every message about them
    (left whole, not folded) now names the user's own path."""
    from tasks.models import modularize
    from tests.nets.densenet import build

    program = torch.export.export(build().eval(), (torch.zeros(1, 1, 32, 32),))
    graph_module = torch.fx.GraphModule(program.module(), program.module().graph)
    names = [name for name, _ in modularize(graph_module).named_children()]
    assert {"features_0", "features_1_0_norm1", "features_1_1_conv1", "features_2"} <= set(names)
    assert not [name for name in names if name.startswith("mp_layer")]
