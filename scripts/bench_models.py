"""The benchmark CNNs (the compute-bound 2-D one, the MNIST-1D-style 1-D one), shared by bptrain,
the hand-written loop and the Lightning loop.

bptrain reaches them through ``model.class_path: bench_models.SmallCNN`` (or ``SmallCNN1d``;
the benchmark puts ``scripts/`` on PYTHONPATH): a class_path module keeps every side on exactly
the same network.
"""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """Two conv blocks (conv 3x3, ReLU, 2x2 max-pool) and a linear head, for 1x28x28-like images."""

    def __init__(
        self, in_channels: int = 1, image_size: int = 28, num_classes: int = 10, width: int = 16
    ) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Linear(2 * width * (image_size // 4) ** 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class SmallCNN1d(nn.Module):
    """The MNIST-1D paper's small convolutional baseline: three strided 1-D convolutions (25
    channels, ReLU) and a linear head, for (N, 1, 40) signals. Tiny: its step is overhead-bound."""

    def __init__(
        self, in_channels: int = 1, length: int = 40, num_classes: int = 10, width: int = 25
    ) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(in_channels, width, 5, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(width, width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(width, width, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        out = length
        for kernel in (5, 3, 3):
            out = (out + 2 - kernel) // 2 + 1
        self.head = nn.Linear(width * out, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))
