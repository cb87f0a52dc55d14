"""Batched, on-device augmentation of uint8 image batches: random crop with zero padding + flip."""

from __future__ import annotations

import torch


def to_float(x_uint8: torch.Tensor) -> torch.Tensor:
    return x_uint8.float().div_(255.0)


def random_crop(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Shift every image by an independent offset in [-pad, pad], filling with zeros."""
    if pad <= 0:
        return x
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen, device=gen.device).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen, device=gen.device).to(x.device)
    rows = (torch.arange(h, device=x.device)[None, :] + dy[:, None])  # (B, H)
    cols = (torch.arange(w, device=x.device)[None, :] + dx[:, None])  # (B, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    flip = (torch.rand(x.shape[0], generator=gen, device=gen.device) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def augment(x: torch.Tensor, crop_pad: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    x = random_crop(x, crop_pad, gen)
    return random_flip(x, gen) if flip else x
