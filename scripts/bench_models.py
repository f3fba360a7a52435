"""The small CNN the compute-bound benchmark trains, shared by bptrain and the hand-written loop.

bptrain reaches it through ``model.class_path: bench_models.SmallCNN`` (the benchmark puts
``scripts/`` on PYTHONPATH). It predates bptrain's built-in ``cnn`` model and stays because a
class_path module keeps both sides on exactly the same network.
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
