"""TrojanNN (Liu et al., NDSS 2018): a patch whose pixels are optimised to make chosen neurons fire.

The mask is a square of ``mask_size`` pixels, ``margin`` pixels from the bottom-right corner
(backdoor-toolbox's 8×8 square at rows/cols 21–28 of 32×32, scaled: ``mask_size`` = round(W/4) and
``margin`` = round(3W/32), i.e. 7 and 3 on 28×28, 16 and 6 on 64×64). ``craft`` picks the
``num_neurons`` neurons of the surrogate's penultimate layer (the inputs of its last linear layer)
with the largest total absolute weight to the output ("most connected") and optimises the patch's
pixels by projected sign-gradient descent (``iterations`` steps of ``step_size``, pixels kept in
[0, 1]) so that those neurons reach ``target_value``. The victim is then trained from scratch on the
poisoned set with the patch stamped and labels set to the target (BackdoorBench's recipe).

Deviations, and why: the patch is stamped (pixels replaced, as in TrojanNN and backdoor-toolbox)
rather than added as in BackdoorBench, whose uint8 cast before clipping can wrap around; the
neurons are driven while the patch sits on a fixed batch of the attacker's clean images (the inputs
the trigger will actually appear on) instead of on a blank canvas; the mask is a square because
BackdoorBench's apple-logo mask is a resource file we do not ship. Defaults: 2 neurons, target 100
(BackdoorBench), 500 iterations of step 0.01 on 128 images (BackdoorBench: 1,000 iterations) to
keep the craft step under a minute on a CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..augment import to_float
from ..data.tensors import TensorSet
from .base import Attack, AttackContext


def last_linear(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("the surrogate has no linear layer to take the penultimate neurons from")
    return linears[-1]


class Trojan(Attack):
    def __init__(self, params, ctx: AttackContext):
        super().__init__(params, ctx)
        self.mask_size, self.margin = self.params.mask_and_margin(ctx.size)  # null: scaled to the input
        self.num_neurons = self.params.num_neurons
        self.target_value = self.params.target_value
        self.iterations = self.params.iterations
        self.step_size = self.params.step_size
        self.craft_images = self.params.craft_images
        self.pattern: torch.Tensor | None = None  # uint8 (C, mask_size, mask_size), from craft/use_asset

    @property
    def region(self) -> tuple[slice, slice]:
        end = self.ctx.size - self.margin
        return slice(end - self.mask_size, end), slice(end - self.mask_size, end)

    def apply_trigger(self, images: torch.Tensor) -> torch.Tensor:
        if self.pattern is None:
            raise RuntimeError("the trojan trigger has not been crafted: run the craft step (use_asset) first")
        rows, cols = self.region
        out = images.clone()
        out[:, :, rows, cols] = self.pattern
        return out

    def craft(self, data: TensorSet, surrogate: nn.Module, gen: torch.Generator, device) -> dict:
        surrogate = surrogate.to(device).eval().requires_grad_(False)
        weights = last_linear(surrogate).weight.abs().sum(0)
        neurons = weights.topk(self.num_neurons).indices
        features = {}
        hook = last_linear(surrogate).register_forward_hook(lambda m, inp, out: features.update(x=inp[0]))
        pick = torch.randperm(len(data), generator=gen)[:self.craft_images]
        base = to_float(data.x[pick]).to(device)
        rows, cols = self.region
        pattern = torch.rand(self.ctx.channels, self.mask_size, self.mask_size, generator=gen).to(device)

        def neuron_loss(p: torch.Tensor) -> torch.Tensor:
            x = base.clone()
            x[:, :, rows, cols] = p
            surrogate(x)
            return F.mse_loss(features["x"][:, neurons], torch.full_like(features["x"][:, neurons], self.target_value))

        @torch.no_grad()
        def mean_activation(p: torch.Tensor) -> float:
            neuron_loss(p)  # fills features["x"]
            return features["x"][:, neurons].mean().item()

        try:
            start_activation = mean_activation(pattern)
            for _ in range(self.iterations):
                pattern.requires_grad_(True)
                grad, = torch.autograd.grad(neuron_loss(pattern), pattern)
                pattern = (pattern.detach() - self.step_size * grad.sign()).clamp_(0, 1)
            end_activation = mean_activation(pattern)
        finally:
            hook.remove()
        print(f"trojan: neurons {neurons.tolist()} mean activation {start_activation:.2f} → {end_activation:.2f} "
              f"(target {self.target_value})")
        asset = {"pattern": (pattern * 255).round().to(torch.uint8).cpu(), "neurons": neurons.cpu(),
                 "activation_before": start_activation, "activation_after": end_activation}
        self.use_asset(asset)
        return asset

    def use_asset(self, asset: dict) -> None:
        pattern = asset["pattern"]
        if pattern.shape != (self.ctx.channels, self.mask_size, self.mask_size):
            raise ValueError(f"the crafted trojan pattern has shape {tuple(pattern.shape)}, expected "
                             f"{(self.ctx.channels, self.mask_size, self.mask_size)}: re-run the craft step")
        self.pattern = pattern
