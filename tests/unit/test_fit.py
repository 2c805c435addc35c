"""fit's last step: batch-norm statistics measured again on training images under the final
weights, not the running averages training leaves (torchvision's MobileNetV3 keeps them with
momentum 0.01: after pruning and fine-tuning they still described the unpruned net)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tasks.data import Preprocess, Split
from tasks.train import FitSettings, fit

PREPROCESS = Preprocess(image_size=8, channels=3, num_classes=2, mean=[0.0] * 3, std=[1.0] * 3)


def _data(count: int, seed: int) -> Split:
    rng = np.random.default_rng(seed)
    x = (0.6 + 0.4 * rng.random((count, 3, 8, 8))).astype(np.float32)  # far from BN's 0 / 1
    return Split(x=x, y=rng.integers(0, 2, count).astype(np.int64))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 1),
        nn.BatchNorm2d(4, momentum=0.01),  # as slow as torchvision's MobileNetV3
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    )


def _exact_statistics(model: nn.Module, split: Split) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        features = model[0](torch.from_numpy(PREPROCESS.normalize(split.x)))
    return features.mean((0, 2, 3)), features.var((0, 2, 3))


@pytest.mark.parametrize("recalibrate", [True, False])
def test_batch_norm_statistics_are_those_of_the_final_weights(
    recalibrate: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    train, val = _data(256, 0), _data(64, 1)
    model = _model()
    settings = FitSettings(2, 32, 1e-2, augment=False, recalibrate_norms=recalibrate)

    fit(model, train, val, PREPROCESS, settings, seed=0, label="fit")

    mean, var = _exact_statistics(model, train)
    norm = model[1]
    printed = capsys.readouterr().out
    if recalibrate:  # every training image (256 < NORM_IMAGES), 8 batches of 32: exact mean
        torch.testing.assert_close(norm.running_mean, mean, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(norm.running_var, var, rtol=0.05, atol=1e-4)
        assert norm.momentum == 0.01  # the model's own setting, kept
        assert "batch-norm statistics of 1 layers measured again on 256 training images" in printed
    else:  # 16 steps at momentum 0.01 moved the running mean a sixth of the way
        assert (norm.running_mean - mean).abs().max() > 0.3 * mean.abs().max()
        assert "batch-norm statistics" not in printed


def test_a_model_without_batch_norm_is_left_as_it_is(capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))
    fit(model, _data(64, 0), _data(16, 1), PREPROCESS, FitSettings(1, 32, 1e-3), 0, "fit")
    assert "batch-norm statistics" not in capsys.readouterr().out
