"""What every attack shares: poisoned-index selection, label maps, the triggered test set.

Contract (architecture.md): triggers act on uint8 pixels (N, C, H, W) before augmentation and
normalisation. ``poison_rate`` always counts the whole attacker training set: dirty-label attacks
draw ``round(poison_rate × N)`` indices uniformly from it (target class included, as BackdoorBench
does) and relabel them; clean-label attacks (SIG, LC) draw ``min(round(poison_rate × N), #target)``
images of the target class only (BackdoorBench's and backdoor-toolbox's count: at 0.1 on ten
balanced classes that is every target-class image) and keep their labels. All-to-all maps
y → (y + 1) mod K.

Attacks whose trigger or poisoned images are optimised against a model (TrojanNN, LC, input-aware)
are declared ``crafted=True`` (``backdoor.schema.attacks``): the DAG's craft step calls ``craft``
once with the attacker's clean surrogate model (the study's benign model) and saves what it returns;
the poison step hands that asset to ``use_asset`` before poisoning.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..data.tensors import TensorSet, TriggeredSet
from ..schema.attacks import ATTACKS
from ..schema.attacks import Attack as AttackParams


def declaration(cls: type) -> type[AttackParams]:
    """The declaration whose ``impl`` is the attack class ``cls``."""
    impl = f"{cls.__module__}:{cls.__qualname__}"
    return next(spec for spec in ATTACKS.values() if spec.impl == impl)


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
    """Base class: subclasses implement ``apply_trigger`` (and may override ``poison``).

    ``params`` is the attack's resolved declaration (``backdoor.schema.attacks``), which also says
    whether the attack is ``crafted`` (needs ``craft`` on a clean surrogate model, its own DAG step)
    and ``clean_label``; its checks against the dataset run here too."""

    def __init__(self, params: AttackParams, ctx: AttackContext):
        if not isinstance(params, AttackParams):  # a partial mapping (tests, direct use)
            params = declaration(type(self)).of(params)
        self.params = params
        self.ctx = ctx
        self.target = params.target
        self.all_to_all = params.all_to_all
        self.poison_rate = params.poison_rate
        problems = [f"{key} = {getattr(params, key)!r}: {msg}" for key, msg in params.check_data(ctx)]
        if problems:
            raise ValueError(f"attack {params.kind}: " + "; ".join(problems))

    @property
    def crafted(self) -> bool:
        return self.params.crafted

    @property
    def clean_label(self) -> bool:
        return self.params.clean_label

    # -- the trigger ---------------------------------------------------------------------------
    def apply_trigger(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- crafted attacks -----------------------------------------------------------------------
    def craft(self, data: TensorSet, surrogate: nn.Module, gen: torch.Generator,
              device: torch.device) -> dict:
        """Optimise what the attack needs against ``surrogate`` on the attacker's clean ``data``;
        returns a dict of tensors (and plain values) that ``use_asset`` accepts, and uses it."""
        raise NotImplementedError(f"{type(self).__name__} is not a crafted attack")

    def use_asset(self, asset: dict) -> None:
        """Load what ``craft`` returned (the poison step calls this before ``poison``)."""
        raise NotImplementedError(f"{type(self).__name__} is not a crafted attack")

    # -- labels --------------------------------------------------------------------------------
    def attacker_labels(self, labels: torch.Tensor) -> torch.Tensor:
        if self.all_to_all:
            return (labels + 1) % self.ctx.num_classes
        return torch.full_like(labels, self.target)

    # -- poisoning -----------------------------------------------------------------------------
    def select_poison_idx(self, labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        count = round(self.poison_rate * len(labels))
        if self.clean_label:  # at most every target-class image (see the module docstring)
            candidates = (labels == self.target).nonzero().flatten()
            count = min(count, len(candidates))
        else:
            candidates = torch.arange(len(labels))
        return candidates[torch.randperm(len(candidates), generator=gen)[:count]].sort().values

    @staticmethod
    def select_cross_idx(n: int, poison_idx: torch.Tensor, count: int, gen: torch.Generator) -> torch.Tensor:
        """``count`` sorted indices among the ``n`` images outside ``poison_idx``: the "cross" / noise
        samples of WaNet and input-aware, which carry a perturbed trigger and keep their labels."""
        rest = torch.ones(n, dtype=torch.bool)
        rest[poison_idx] = False
        others = rest.nonzero().flatten()
        return others[torch.randperm(len(others), generator=gen)[:count]].sort().values

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
