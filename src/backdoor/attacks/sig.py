"""SIG (Barni et al. 2019): a clean-label sinusoidal signal, as BackdoorBench implements it.

x' = clip(x + Δ·sin(2π·j·f / W)) on the 0–255 scale, where j is the column index and W the image
width: vertical stripes, the same in every channel and at train and test time. Defaults Δ = 40,
f = 6 (BackdoorBench; backdoor-toolbox uses Δ = 30). Only target-class images are poisoned and their
labels kept; ``poison_rate`` counts the whole training set and is capped at the target class (see
base.py), so the default 0.1 poisons every target-class image, as BackdoorBench does.
Because the pattern depends only on j/W it scales with the input size unchanged.
"""

from __future__ import annotations

import math

import torch

from .base import Attack, AttackContext


class SIG(Attack):
    def __init__(self, params, ctx: AttackContext):
        super().__init__(params, ctx)
        self.delta = self.params.delta
        self.frequency = self.params.frequency
        columns = torch.arange(ctx.size, dtype=torch.float64)
        row = self.delta * torch.sin(2 * math.pi * columns * self.frequency / ctx.size)
        self.pattern = row.float().expand(ctx.size, ctx.size)  # (H, W): varies along the columns

    def apply_trigger(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() + self.pattern).round_().clamp_(0, 255).to(torch.uint8)
