"""``benign``: the attack that poisons nothing, giving the clean reference model.

Its triggered test set uses the ``probe`` attack's trigger (default: badnets), so the benign row
reports how often a clean model maps that trigger to the target by chance.
"""

from __future__ import annotations

import torch

from ..data.tensors import TensorSet
from .base import Attack, AttackContext, PoisonedSet


class Benign(Attack):
    def __init__(self, params: dict, ctx: AttackContext):
        super().__init__(params, ctx)
        from . import build_attack  # the probe is any registered attack

        probe = params.get("probe", "badnets")
        if probe == "benign":
            raise ValueError("attacks.benign.probe must name a real attack, not benign")
        self.probe = build_attack(probe, {**params, "type": probe}, ctx)

    def apply_trigger(self, images: torch.Tensor) -> torch.Tensor:
        return self.probe.apply_trigger(images)

    def poison(self, train: TensorSet, gen: torch.Generator) -> PoisonedSet:
        return PoisonedSet(train.x.clone(), train.y.clone(), train.y.clone(),
                           torch.empty(0, dtype=torch.long))
