"""``benign``: the attack that poisons nothing, giving the clean reference model.

Its triggered test set uses the ``probe`` attack's trigger (default: badnets), so the benign row
reports how often a clean model maps that trigger to the target by chance.
"""

from __future__ import annotations

import torch

from ..data.tensors import TensorSet
from ..schema import declared
from ..schema.attacks import AttackDefaults
from .base import Attack, AttackContext, PoisonedSet


class Benign(Attack):
    def __init__(self, params, ctx: AttackContext):
        super().__init__(params, ctx)
        from . import build_attack  # the probe is any registered attack, with its own defaults

        shared = {k: self.params[k] for k in declared(AttackDefaults)}
        self.probe = build_attack(self.params.probe, shared, ctx)

    def apply_trigger(self, images: torch.Tensor) -> torch.Tensor:
        return self.probe.apply_trigger(images)

    def poison(self, train: TensorSet, gen: torch.Generator) -> PoisonedSet:
        return PoisonedSet(train.x.clone(), train.y.clone(), train.y.clone(),
                           torch.empty(0, dtype=torch.long))
