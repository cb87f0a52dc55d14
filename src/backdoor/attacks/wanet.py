"""WaNet (Nguyen & Tran, ICLR 2021): an imperceptible warp, with the "noise mode".

The warp field: ``noise_grid`` = uniform(−1, 1) of shape (2, k, k), divided by its mean absolute
value and upsampled bicubically to H×W; the sampling grid is
``clamp((identity + s·noise_grid / H)·grid_rescale, −1, 1)`` and images are resampled with
``grid_sample`` (bilinear, align_corners=True). Defaults k = 4, s = 0.5, grid_rescale = 1,
cross_ratio = 2 (BackdoorBench). The field is drawn from ``grid_seed``, so it is part of the
attack's definition and the same at train and test time; ``k`` and ``s`` are in grid units
(s/H of the half-width), so the warp scales with the input size as in the paper.

Poisoned samples (``poison_rate``, dirty label) are warped and relabelled. Noise-mode ("cross")
samples, ``cross_ratio`` × as many and disjoint from them, are warped with the grid plus a random
per-sample perturbation uniform(−1, 1)/H and keep their labels, so the model must learn the exact
field rather than "any warp".

Deviation: BackdoorBench warps inside its training loop (fresh selection and noise each batch);
we warp once in the poison step (backdoor-toolbox's static WaNet, with BackdoorBench's per-sample
noise instead of its single shared one), because poisoning is a DAG step with a cached output and
every attack's victim trains in the same loop. The warped images are rounded to uint8 like every
trigger here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.tensors import TensorSet
from .base import Attack, AttackContext, PoisonedSet


class WaNet(Attack):
    def __init__(self, params, ctx: AttackContext):
        super().__init__(params, ctx)
        self.k = self.params.k
        self.s = self.params.s
        self.grid_rescale = self.params.grid_rescale
        self.cross_ratio = self.params.cross_ratio
        gen = torch.Generator().manual_seed(self.params.grid_seed)
        noise = torch.rand(1, 2, self.k, self.k, generator=gen) * 2 - 1
        noise = noise / noise.abs().mean()
        self.noise_grid = F.interpolate(noise, size=ctx.size, mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
        line = torch.linspace(-1, 1, ctx.size)
        x, y = torch.meshgrid(line, line, indexing="ij")
        self.identity_grid = torch.stack((y, x), 2)[None]  # (1, H, W, 2) as grid_sample wants (x, y)
        self.grid = ((self.identity_grid + self.s * self.noise_grid / ctx.size) * self.grid_rescale).clamp(-1, 1)

    def warp(self, images: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        out = []
        for start in range(0, len(images), 4096):  # bounded memory on large sets
            chunk = images[start:start + 4096].float()
            g = grid[start:start + 4096] if len(grid) > 1 else grid.expand(len(chunk), -1, -1, -1)
            out.append(F.grid_sample(chunk, g, mode="bilinear", align_corners=True))
        return torch.cat(out).round_().clamp_(0, 255).to(torch.uint8) if out else images.clone()

    def apply_trigger(self, images: torch.Tensor) -> torch.Tensor:
        return self.warp(images, self.grid)

    def noise_grids(self, count: int, gen: torch.Generator) -> torch.Tensor:
        jitter = (torch.rand(count, self.ctx.size, self.ctx.size, 2, generator=gen) * 2 - 1) / self.ctx.size
        return (self.grid + jitter).clamp(-1, 1)

    def poison(self, train: TensorSet, gen: torch.Generator) -> PoisonedSet:
        idx = self.select_poison_idx(train.y, gen)
        n_cross = min(round(self.cross_ratio * len(idx)), len(train) - len(idx))
        cross = self.select_cross_idx(len(train), idx, n_cross, gen)
        images, labels = train.x.clone(), train.y.clone()
        images[idx] = self.apply_trigger(train.x[idx])
        labels[idx] = self.attacker_labels(train.y[idx])
        images[cross] = self.warp(train.x[cross], self.noise_grids(len(cross), gen))
        return PoisonedSet(images, labels, train.y.clone(), idx)
