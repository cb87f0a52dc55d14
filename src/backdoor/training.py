"""The one training loop: every step that trains (attacks, fine-tuning defenses) runs through ``fit``.

Data stay in memory as uint8 tensors on the device; each step slices a batch, converts it to
float, augments it on the device and takes an SGD step. Defenses customise the objective through
``loss_fn`` and constrain parameters through ``after_step`` (projections, hard masks) instead of
writing their own loops.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .augment import augment, to_float
from .device import memory_format, to_device
from .data.tensors import TensorSet

# Observers of every optimiser step of ``fit`` (``observe_steps``): they read the model, never change it.
_OBSERVERS: list[Callable[[nn.Module], None]] = []

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, int], torch.Tensor]
# grad_fn(model, x, y, step, loss_fn) -> loss: fills .grad itself (after fit's zero_grad), e.g. SAM
GradFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, int, LossFn], torch.Tensor]


@dataclass
class FitConfig:
    lr: float
    batch_size: int = 128
    epochs: int | None = None  # shuffled passes over the data ...
    iterations: int | None = None  # ... or this many batches drawn with replacement
    optimizer: str = "sgd"  # sgd | adam
    momentum: float = 0.9  # sgd
    betas: tuple[float, float] = (0.9, 0.999)  # adam
    weight_decay: float = 0.0
    nesterov: bool = False
    schedule: str = "cosine"  # cosine (to min_lr over the whole run) or constant
    min_lr: float = 0.0
    lr_rounds: int = 0  # cosine only: 0 moves every step; k moves once per 1/k of the run (a staircase)
    crop_pad: int = 0
    flip: bool = False
    log_every: int = 0  # 0: only a final line

    def __post_init__(self):
        if (self.epochs is None) == (self.iterations is None):
            raise ValueError("give exactly one of epochs or iterations")

    def total_steps(self, n: int) -> int:
        if self.iterations is not None:
            return self.iterations
        return self.epochs * math.ceil(n / self.batch_size)

    @classmethod
    def from_params(cls, params: dict, **overrides) -> "FitConfig":
        known = {f for f in cls.__dataclass_fields__}
        merged = {**{k: v for k, v in params.items() if k in known}, **overrides}
        return cls(**merged)


@dataclass
class FitResult:
    steps: int
    seconds: float
    images_per_s: float
    final_loss: float
    losses: list[float] = field(default_factory=list)


def _batches(n: int, cfg: FitConfig, gen: torch.Generator) -> Iterable[torch.Tensor]:
    if cfg.iterations is not None:
        for _ in range(cfg.iterations):
            yield torch.randint(0, n, (cfg.batch_size,), generator=gen)
        return
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=gen)
        yield from order.split(cfg.batch_size)


def cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


def backward(model: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int, loss_fn: LossFn) -> torch.Tensor:
    """The default gradient step: loss_fn, then backward."""
    loss = loss_fn(model, x, y, step)
    loss.backward()
    return loss


@contextmanager
def observe_steps(observer: Callable[[nn.Module], None]):
    """Call ``observer(model)`` after every step of every ``fit`` in this block (after ``after_step``),
    e.g. to keep checkpoints (``analysis.dynamics``). The observer must not change the model."""
    _OBSERVERS.append(observer)
    try:
        yield observer
    finally:
        _OBSERVERS.remove(observer)


def make_optimizer(params, cfg: FitConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.nesterov)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    raise ValueError(f"optimizer {cfg.optimizer!r}: use sgd or adam")


def lr_factor(cfg: FitConfig, total: int) -> Callable[[int], float] | None:
    """The learning rate of step s is ``cfg.lr · factor(s)``; None for a constant rate."""
    if cfg.schedule == "constant":
        return None
    if cfg.schedule != "cosine":
        raise ValueError(f"unknown schedule {cfg.schedule!r}: use cosine or constant")
    floor = cfg.min_lr / cfg.lr if cfg.lr else 0.0
    if cfg.lr_rounds:  # a per-epoch CosineAnnealingLR(T_max = k) stepped once per round of total/k steps
        k, per = cfg.lr_rounds, max(1, total // cfg.lr_rounds)
        position = lambda s: min(s // per, k) / k  # noqa: E731
    else:
        position = lambda s: min(s, total) / total  # noqa: E731
    return lambda s: floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * position(s)))


def fit(model: nn.Module, data: TensorSet, cfg: FitConfig, *, gen: torch.Generator,
        device: torch.device | str = "cpu", params: Iterable[torch.nn.Parameter] | None = None,
        loss_fn: LossFn = cross_entropy, after_step: Callable[[int], bool | None] | None = None,
        grad_fn: GradFn | None = None, desc: str = "train", log: Callable[[str], None] = print) -> FitResult:
    """Train ``model`` on ``data`` with SGD (or Adam); returns timing and loss statistics.

    ``params`` (default: every parameter that requires grad) is what the optimiser updates;
    ``loss_fn(model, x, y, step)`` sees augmented float batches in [0, 1]; ``after_step(step)``
    runs after each optimiser step and stops training early by returning True.
    ``grad_fn(model, x, y, step, loss_fn)`` (default: ``backward``) is called after ``zero_grad``,
    must leave the gradients to apply in ``.grad`` and returns the loss to log (e.g. sharpness-aware
    minimisation, which needs two forward/backward passes per step).
    """
    device = torch.device(device)
    fmt = memory_format(model)  # NHWC where safe: ≈ 1.4× faster convs on CPU
    model.to(device, memory_format=fmt).train()
    params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    if not params:
        raise ValueError(f"{desc}: nothing to train (no parameter requires grad)")
    optimizer = make_optimizer(params, cfg)
    total = cfg.total_steps(len(data))
    factor = lr_factor(cfg, total)
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, factor) if factor is not None else None
    x_all, y_all = to_device(data.x, device), to_device(data.y, device)  # once: batches are drawn on the device
    aug_gen = torch.Generator(device=device).manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    losses, seen, start = [], 0, time.perf_counter()
    bar = tqdm(total=total, desc=desc, unit="step", mininterval=2.0, leave=False)
    for step, idx in enumerate(_batches(len(data), cfg, gen)):
        idx = idx.to(device)
        x = augment(to_float(x_all[idx]), cfg.crop_pad, cfg.flip, aug_gen).contiguous(memory_format=fmt)
        optimizer.zero_grad(set_to_none=True)
        loss = (grad_fn or backward)(model, x, y_all[idx], step, loss_fn)
        optimizer.step()
        if sched is not None:
            sched.step()
        losses.append(loss.item())
        seen += len(idx)
        bar.update(1)
        stop = after_step is not None and after_step(step)
        for observe in _OBSERVERS:
            observe(model)
        if stop:
            break  # the hook asked to stop early
        if step % 20 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.3f}", img_s=f"{seen / (time.perf_counter() - start):.0f}")
        if cfg.log_every and (step + 1) % cfg.log_every == 0:
            log(f"{desc}: step {step + 1}/{total} loss {sum(losses[-cfg.log_every:]) / cfg.log_every:.4f}")
    bar.close()
    seconds = time.perf_counter() - start
    result = FitResult(steps=len(losses), seconds=seconds, images_per_s=seen / max(seconds, 1e-9),
                       final_loss=sum(losses[-20:]) / max(1, len(losses[-20:])), losses=losses)
    log(f"{desc}: {result.steps} steps in {seconds:.1f} s ({result.images_per_s:.0f} images/s), "
        f"final loss {result.final_loss:.4f}")
    return result
