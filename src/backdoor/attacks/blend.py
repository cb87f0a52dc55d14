"""Blend (Chen et al. 2017): x' = round((1 − α)·x + α·p) over the whole image.

As in the FIP/NFT code, the default pattern p is seeded uniform noise (one value per pixel and
channel, drawn from ``pattern_seed``), α = 0.2 at train and test. ``image`` names an optional
user-supplied picture (any format Pillow reads), resized to the input size, used as p instead
(BackdoorBench's Hello-Kitty blend).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .base import Attack, AttackContext


def load_pattern_image(path: str, channels: int, size: int) -> torch.Tensor:
    if not Path(path).is_file():
        raise FileNotFoundError(f"attacks.<id>.image = {path!r}: no such file; give a path to an image "
                                "or leave it null for the seeded noise pattern")
    img = Image.open(path).convert("L" if channels == 1 else "RGB").resize((size, size), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(arr.copy())


class Blend(Attack):
    def __init__(self, params, ctx: AttackContext):
        super().__init__(params, ctx)
        self.alpha = self.params.alpha
        if self.params.image:
            self.pattern = load_pattern_image(self.params.image, ctx.channels, ctx.size)
        else:
            gen = torch.Generator().manual_seed(self.params.pattern_seed)
            self.pattern = torch.randint(0, 256, (ctx.channels, ctx.size, ctx.size), generator=gen,
                                         dtype=torch.uint8)

    def apply_trigger(self, images: torch.Tensor) -> torch.Tensor:
        mixed = (1 - self.alpha) * images.float() + self.alpha * self.pattern.float()
        return mixed.round_().clamp_(0, 255).to(torch.uint8)
