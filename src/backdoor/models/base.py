"""What every architecture shares: normalisation as the first layer, and checkpoints that know
their architecture."""

from __future__ import annotations

import torch
from torch import nn


class Normalize(nn.Module):
    """Maps [0, 1] pixels to standardised inputs, so attacks and defenses work in pixel space."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """``normalize`` → ``body``; takes float images in [0, 1]."""

    def __init__(self, body: nn.Module, mean, std):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.body = body

    def forward(self, x):
        return self.body(self.normalize(x))
