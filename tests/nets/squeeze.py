"""A SqueezeNet-style net: fire modules (a squeeze, two expands concatenated) and a 1x1-conv
classifier pooled to logits, as torchvision writes SqueezeNet 1.1."""

from __future__ import annotations

import torch
from torch import nn


class Fire(nn.Module):
    def __init__(self, cin, squeeze, expand):
        super().__init__()
        self.squeeze = nn.Sequential(nn.Conv2d(cin, squeeze, 1), nn.ReLU(inplace=True))
        self.e1 = nn.Sequential(nn.Conv2d(squeeze, expand, 1), nn.ReLU(inplace=True))
        self.e3 = nn.Sequential(nn.Conv2d(squeeze, expand, 3, padding=1), nn.ReLU(inplace=True))

    def forward(self, x):
        s = self.squeeze(x)
        return torch.cat([self.e1(s), self.e3(s)], 1)


class SqueezeNetStyle(nn.Module):
    """SqueezeNet 1.1's shape: a stem, fire modules (squeeze then two concatenated expands),
    and a 1x1 convolution as the classifier, pooled to logits."""

    def __init__(self, num_classes=10, in_channels=1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, stride=2),
            nn.ReLU(inplace=True),
            Fire(32, 8, 16),
            Fire(32, 8, 16),
            nn.MaxPool2d(2),
            Fire(32, 16, 32),
        )
        self.classifier = nn.Sequential(
            nn.Dropout(0.2),
            nn.Conv2d(64, num_classes, 1),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


def build(num_classes=10, in_channels=1):
    return SqueezeNetStyle(num_classes, in_channels)
