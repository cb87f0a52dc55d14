"""BadNets (Gu et al. 2017) as in BackdoorBench: a white square patch in the bottom-right corner.

Default 3×3 at 0 px from the edges (rows/cols H−3..H−1 on 32×32 CIFAR, 25..27 on 28×28
Fashion-MNIST). ``patch_size`` scales it for larger inputs (BackdoorBench's resize gives ≈6×6 on
64×64 Tiny-ImageNet); every channel of the patch is set to ``value``. ``position: center`` puts the
patch in the middle of the image instead, over the object (a probe of why Fashion-MNIST's zero
corners keep the backdoor out of reach of clean data; not a BackdoorBench setting).
"""

from __future__ import annotations

import torch

from .base import Attack, AttackContext


class BadNets(Attack):
    def __init__(self, params, ctx: AttackContext):
        super().__init__(params, ctx)
        self.patch_size = self.params.patch_size
        self.value = self.params.value
        start = ctx.size - self.patch_size if self.params.position == "corner" else (ctx.size - self.patch_size) // 2
        self.rows = self.cols = slice(start, start + self.patch_size)

    def apply_trigger(self, images: torch.Tensor) -> torch.Tensor:
        out = images.clone()
        out[:, :, self.rows, self.cols] = self.value
        return out
