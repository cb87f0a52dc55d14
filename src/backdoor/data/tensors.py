"""In-memory labelled image sets: uint8 images (N, C, H, W) and int64 labels, nothing else."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TensorSet:
    x: torch.Tensor  # uint8 (N, C, H, W)
    y: torch.Tensor  # int64 (N,)

    def __post_init__(self):
        if self.x.dtype != torch.uint8 or self.x.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.x.dtype} {tuple(self.x.shape)}")
        if len(self.x) != len(self.y):
            raise ValueError(f"{len(self.x)} images but {len(self.y)} labels")

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: torch.Tensor) -> "TensorSet":
        return TensorSet(self.x[idx], self.y[idx])


@dataclass
class TriggeredSet:
    """Triggered test images with their true labels and the labels the attacker wants."""
    x: torch.Tensor
    y_true: torch.Tensor
    y_target: torch.Tensor

    def __len__(self) -> int:
        return len(self.y_true)
