"""What every attack shares: poisoned-index selection, label maps, the triggered test set.

Contract (architecture.md): triggers act on uint8 pixels (N, C, H, W) before augmentation and
normalisation. Dirty-label attacks draw ``round(poison_rate × N)`` indices uniformly from the whole
training set (target class included, as BackdoorBench does) and relabel them; clean-label attacks
draw only from the target class and keep labels. All-to-all maps y → (y + 1) mod K.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.tensors import TensorSet, TriggeredSet


@dataclass
class AttackContext:
    """What an attack may know about the data it poisons."""
    num_classes: int
    channels: int
    size: int


@dataclass
class PoisonedSet:
    """The attacker's training set after poisoning."""
    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # labels trained on
    original_labels: torch.Tensor
    poison_idx: torch.Tensor  # sorted indices of the poisoned samples

    @property
    def train_set(self) -> TensorSet:
        return TensorSet(self.images, self.labels)


class Attack:
    """Base class: subclasses implement ``apply_trigger`` (and may override ``poison``)."""

    clean_label = False

    def __init__(self, params: dict, ctx: AttackContext):
        self.params = params
        self.ctx = ctx
        self.target = int(params.get("target", 0))
        self.all_to_all = bool(params.get("all_to_all", False))
        self.poison_rate = float(params.get("poison_rate", 0.1))
        if not 0 <= self.target < ctx.num_classes:
            raise ValueError(f"target = {self.target} is not a class of this dataset "
                             f"(0..{ctx.num_classes - 1})")

    # -- the trigger ---------------------------------------------------------------------------
    def apply_trigger(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- labels --------------------------------------------------------------------------------
    def attacker_labels(self, labels: torch.Tensor) -> torch.Tensor:
        if self.all_to_all:
            return (labels + 1) % self.ctx.num_classes
        return torch.full_like(labels, self.target)

    # -- poisoning -----------------------------------------------------------------------------
    def select_poison_idx(self, labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        count = round(self.poison_rate * len(labels))
        candidates = (labels == self.target).nonzero().flatten() if self.clean_label \
            else torch.arange(len(labels))
        if count > len(candidates):
            raise ValueError(f"poison_rate = {self.poison_rate} asks for {count} poisoned images but only "
                             f"{len(candidates)} are eligible (clean-label attacks poison target-class images)")
        return candidates[torch.randperm(len(candidates), generator=gen)[:count]].sort().values

    def poison(self, train: TensorSet, gen: torch.Generator) -> PoisonedSet:
        idx = self.select_poison_idx(train.y, gen)
        images, labels = train.x.clone(), train.y.clone()
        images[idx] = self.apply_trigger(train.x[idx])
        if not self.clean_label:
            labels[idx] = self.attacker_labels(train.y[idx])
        return PoisonedSet(images, labels, train.y.clone(), idx)

    def triggered_test(self, test: TensorSet) -> TriggeredSet:
        """Triggered test images; all-to-one excludes images whose true label is the target."""
        keep = torch.arange(len(test)) if self.all_to_all else (test.y != self.target).nonzero().flatten()
        return TriggeredSet(self.apply_trigger(test.x[keep]), test.y[keep].clone(),
                            self.attacker_labels(test.y[keep]))
