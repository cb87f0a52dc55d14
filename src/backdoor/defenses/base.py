"""The defense contract and what defenses share.

``purify(model, clean, params, gen, device) -> (model, info)``

- ``model``: the backdoored model (a copy the defense may modify in place);
- ``clean``: the defender's clean images, ``clean_budget`` of them from the pool, disjoint from the
  attacker's training data; never the test set, never the attack;
- ``params``: the defense's resolved settings (``backdoor.schema.defenses``; a partial mapping is
  resolved by the module);
- ``info``: a JSON-able dict of what the defense did (pruned channels, thresholds, …).

Any threshold or model selection must use ``split_validation`` on the clean budget, never test data.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from ..data.tensors import TensorSet
from ..training import FitConfig


class Defense(Protocol):
    def __call__(self, model: nn.Module, clean: TensorSet, params: dict, gen: torch.Generator,
                 device: torch.device) -> tuple[nn.Module, dict]: ...


def split_validation(clean: TensorSet, fraction: float, gen: torch.Generator) -> tuple[TensorSet, TensorSet]:
    """Carve a validation split from the defense's own clean budget: (train part, validation part)."""
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction {fraction} must be in (0, 1)")
    order = torch.randperm(len(clean), generator=gen)
    n_val = max(1, round(fraction * len(clean)))
    return clean.subset(order[n_val:]), clean.subset(order[:n_val])


def fit_config(params: dict, **overrides) -> FitConfig:
    """The FitConfig a defense's params describe (lr, iterations/epochs, batch_size, augmentation…)."""
    return FitConfig.from_params(params, **overrides)
