"""Raw files → one tensor file per dataset with fixed, seeded splits.

Splits (indices into the official training set):
- ``attacker``: what the attacker trains on (and poisons);
- ``pool``: the defender's clean pool, disjoint from anything the attacker saw.
The official test set is the test set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .formats import READERS
from .registry import get_dataset


@dataclass
class SplitParams:
    clean_pool: int
    seed: int
    train_limit: int | None = None
    test_limit: int | None = None


def _subsample(n: int, limit: int | None, gen: torch.Generator) -> torch.Tensor:
    order = torch.randperm(n, generator=gen)
    return order if limit is None or limit >= n else order[:limit]


def raise_background(x: torch.Tensor, level: int, gen: torch.Generator) -> torch.Tensor:
    """max(x, noise) with uint8 noise uniform in 0..level: a textured, nonzero background."""
    return torch.maximum(x, torch.randint(0, level + 1, x.shape, generator=gen, dtype=torch.uint8))


def prepare(dataset: str, raw_dir: str | Path, split: SplitParams) -> dict:
    spec = get_dataset(dataset)
    train_x, train_y, test_x, test_y = READERS[spec.format](Path(raw_dir), spec.torchvision)
    gen = torch.Generator().manual_seed(split.seed)
    keep = _subsample(len(train_y), split.train_limit, gen)
    if split.clean_pool >= len(keep):
        raise ValueError(f"splits.clean_pool = {split.clean_pool} leaves no attacker training data: "
                         f"{dataset} has {len(keep)} training images here; choose a smaller pool.")
    pool, attacker = keep[:split.clean_pool].sort().values, keep[split.clean_pool:].sort().values
    test_keep = _subsample(len(test_y), split.test_limit, gen).sort().values
    test_x = test_x[test_keep].clone()
    mean, std = list(spec.mean), list(spec.std)
    if spec.background:
        noise_gen = torch.Generator().manual_seed(split.seed + 1)
        train_x, test_x = (raise_background(x, spec.background, noise_gen) for x in (train_x, test_x))
        pixels = train_x[attacker].float().div(255).transpose(0, 1).flatten(1)
        mean, std = pixels.mean(1).tolist(), pixels.std(1).tolist()
    return {
        "dataset": dataset,
        "num_classes": spec.num_classes,
        "mean": mean,
        "std": std,
        "train_x": train_x, "train_y": train_y,
        "test_x": test_x, "test_y": test_y[test_keep].clone(),
        "attacker_idx": attacker, "pool_idx": pool,
    }
