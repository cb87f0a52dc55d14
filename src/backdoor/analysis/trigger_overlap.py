"""Where a trigger lands on clean data: does it overwrite pixels that clean images use?

For a set of clean images and their triggered versions (uint8, same order):

- ``changed``: the share of pixels the trigger changes;
- ``on_zero``: the share of the trigger's total change |T(x) − x| that falls on pixels which are
  exactly 0 in the clean image (Fashion-MNIST's background);
- ``active``: the share of changed pixels that are nonzero in the clean image;
- ``images_active``: the share of clean images with any nonzero pixel under their changed pixels.

A corner patch on Fashion-MNIST scores ``on_zero`` ≈ 1: no clean image activates those inputs, so
clean fine-tuning never exercises the units the trigger drives.
"""

from __future__ import annotations

import torch


def trigger_overlap(clean: torch.Tensor, triggered: torch.Tensor) -> dict[str, float]:
    if clean.shape != triggered.shape:
        raise ValueError(f"clean {tuple(clean.shape)} and triggered {tuple(triggered.shape)} images differ in shape")
    delta = (triggered.int() - clean.int()).abs().double()
    changed = delta > 0
    nonzero = clean > 0
    per_image = (changed & nonzero).flatten(1).any(1)
    total = delta.sum()
    return {
        "changed": changed.double().mean().item(),
        "on_zero": (delta * (~nonzero)).sum().div(total).item() if total > 0 else float("nan"),
        "active": (changed & nonzero).sum().div(changed.sum()).item() if changed.any() else float("nan"),
        "images_active": per_image.double().mean().item(),
    }


def clean_counterparts(test_x: torch.Tensor, test_y: torch.Tensor, target: int, all_to_all: bool) -> torch.Tensor:
    """The clean test images in the order of an attack's triggered test set (``Attack.triggered_test``)."""
    keep = torch.arange(len(test_y)) if all_to_all else (test_y != target).nonzero().flatten()
    return test_x[keep]
