"""Label-consistent backdoor (Turner et al. 2019): adversarially perturbed target-class images plus
a four-corner trigger; labels are never changed.

``craft`` perturbs every target-class image of the attacker's set with L∞ PGD against the clean
surrogate (untargeted: raise the loss of the true label, so the natural features stop explaining
the label and the model must lean on the trigger): ``eps`` and ``step_size`` on the 0–255 scale,
``steps`` iterations from a random start in the ε-ball. Defaults ε = 16/255 (the tag in
BackdoorBench's resource file names), 10 steps of 4/255 (the usual 2.5·ε/steps). The perturbed
images are the craft step's DAG output, so nothing is downloaded.

The trigger (BackdoorBench's "all-corners" pattern, ``reduced_amplitude`` 1): a ``patch_size``²
checkerboard (255 where row + column is even, 0 elsewhere) stamped into each of the four corners;
``patch_size`` defaults to max(3, round(3W/32)), i.e. 3 on 28×28 and 32×32, 6 on 64×64. Poisoned
images are ``min(round(poison_rate × N), #target)`` target-class images (see base.py). At test time
only the trigger is added to clean images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..augment import to_float
from ..data.tensors import TensorSet
from .base import Attack, AttackContext, PoisonedSet


class LabelConsistent(Attack):
    def __init__(self, params, ctx: AttackContext):
        super().__init__(params, ctx)
        self.patch_size = self.params.patch(ctx.size)  # null: scaled to the input
        self.eps = self.params.eps / 255
        self.step_size = self.params.step_size / 255
        self.steps = self.params.steps
        self.asset: dict | None = None
        k = torch.arange(self.patch_size)
        self.checker = torch.where((k[:, None] + k[None, :]) % 2 == 0, 255, 0).to(torch.uint8)

    def apply_trigger(self, images: torch.Tensor) -> torch.Tensor:
        p, out = self.patch_size, images.clone()
        for rows in (slice(0, p), slice(-p, None)):
            for cols in (slice(0, p), slice(-p, None)):
                out[:, :, rows, cols] = self.checker
        return out

    def craft(self, data: TensorSet, surrogate: nn.Module, gen: torch.Generator, device) -> dict:
        surrogate = surrogate.to(device).eval().requires_grad_(False)
        idx = (data.y == self.target).nonzero().flatten()
        perturbed, fooled = [], 0
        for batch in idx.split(512):
            x0 = to_float(data.x[batch]).to(device)
            y = data.y[batch].to(device)
            delta = ((torch.rand(x0.shape, generator=gen) * 2 - 1) * self.eps).to(device)
            for _ in range(self.steps):
                delta.requires_grad_(True)
                loss = F.cross_entropy(surrogate((x0 + delta).clamp(0, 1)), y)
                grad, = torch.autograd.grad(loss, delta)
                delta = (delta.detach() + self.step_size * grad.sign()).clamp_(-self.eps, self.eps)
            x = ((x0 + delta).clamp(0, 1) * 255).round().to(torch.uint8)
            with torch.inference_mode():
                fooled += (surrogate(to_float(x)).argmax(1) != y).sum().item()
            perturbed.append(x.cpu())
        rate = 100.0 * fooled / max(1, len(idx))
        print(f"lc: perturbed {len(idx)} target-class images (eps {self.eps * 255:.0f}/255); "
              f"the surrogate misclassifies {rate:.1f}% of them")
        asset = {"idx": idx, "images": torch.cat(perturbed) if perturbed else data.x[:0].clone(),
                 "n_train": len(data), "surrogate_error": rate}
        self.use_asset(asset)
        return asset

    def use_asset(self, asset: dict) -> None:
        self.asset = asset

    def poison(self, train: TensorSet, gen: torch.Generator) -> PoisonedSet:
        if self.asset is None:
            raise RuntimeError("the label-consistent perturbations have not been crafted: run the craft step first")
        lookup = torch.full((len(train),), -1, dtype=torch.long)
        if self.asset["n_train"] != len(train) or not bool((train.y[self.asset["idx"]] == self.target).all()):
            raise ValueError("the crafted LC images belong to another training set: re-run the craft step")
        lookup[self.asset["idx"]] = torch.arange(len(self.asset["idx"]))
        idx = self.select_poison_idx(train.y, gen)
        images = train.x.clone()
        images[idx] = self.apply_trigger(self.asset["images"][lookup[idx]])
        return PoisonedSet(images, train.y.clone(), train.y.clone(), idx)
