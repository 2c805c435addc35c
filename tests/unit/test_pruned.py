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
