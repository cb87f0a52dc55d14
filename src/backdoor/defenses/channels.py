"""Channel bookkeeping shared by the pruning defenses (``fp``, ``clp``, ``fmp``, ``sibp``, ``anp``,
``rnp``) and by the layer choices of ``nad`` and ``nft``.

Everything is found by tracing one forward pass, so no defense hard-codes module names:

- ``trace``: every module that ran, in the order its forward *finished*, with its output shape and,
  for each ``Conv2d``, the ``BatchNorm2d`` layers whose input is exactly that conv's output tensor
  (conv → BN directly; a conv that feeds a residual sum has none);
- ``zero_channels`` / ``ChannelMask``: remove output channels of a conv and/or a BN (filter, bias,
  γ, β; each part can be kept) and keep them at zero during fine-tuning (``after_step`` of
  ``training.fit``);
- ``largest_passing``: the validation scan of the pruning defenses: try candidate prunings in
  order on the model (restored after each) and keep the last one before the first whose validation
  accuracy falls below (1 − ``max_drop``)·(unpruned validation accuracy).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

import torch
from torch import nn

from ..data.tensors import TensorSet
from ..metrics import accuracy

C = TypeVar("C")


@dataclass
class Trace:
    order: list[str] = field(default_factory=list)          # module names, by forward completion
    shapes: dict[str, tuple] = field(default_factory=dict)  # name -> output shape (first call)
    conv_bns: dict[str, list[str]] = field(default_factory=dict)  # conv (execution order) -> its BNs

    @property
    def conv_bn(self) -> dict[str, str | None]:
        """Conv name (execution order) -> the first BN that normalises its output, or None."""
        return {c: (bns[0] if bns else None) for c, bns in self.conv_bns.items()}


@torch.no_grad()
def trace(model: nn.Module, x: torch.Tensor) -> Trace:
    """Run ``model`` once on ``x`` in eval mode (its mode is restored) and record what ran."""
    names = {m: n for n, m in model.named_modules() if n}
    out = Trace()
    conv_outputs: dict[int, tuple[str, torch.Tensor]] = {}
    handles = []

    def post(module, inputs, output):
        name = names[module]
        if name in out.shapes or not isinstance(output, torch.Tensor):
            return
        out.order.append(name)
        out.shapes[name] = tuple(output.shape)
        if isinstance(module, nn.Conv2d):
            out.conv_bns[name] = []
            conv_outputs[id(output)] = (name, output)  # keep the tensor alive: ids are not reused

    def pre_bn(module, inputs):
        hit = conv_outputs.get(id(inputs[0]))
        if hit is not None and hit[1] is inputs[0] and names[module] not in out.conv_bns[hit[0]]:
            out.conv_bns[hit[0]].append(names[module])

    for module in names:
        handles.append(module.register_forward_hook(post))
        if isinstance(module, nn.BatchNorm2d):
            handles.append(module.register_forward_pre_hook(pre_bn))
    was_training = model.training
    model.eval()
    try:
        model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return out


def probe_input(model: nn.Module, size: int = 32, batch: int = 2) -> torch.Tensor:
    """A synthetic all-0.5 input for tracing (no data): channels from the first conv."""
    param = next(model.parameters())
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    return torch.full((batch, first.in_channels, size, size), 0.5, dtype=param.dtype, device=param.device)


def channel_index(idx, device: torch.device | str | None = None) -> torch.Tensor:
    """Channel indices as a long tensor: from a list/tensor of indices or a bool mask (True = pick)."""
    if isinstance(idx, torch.Tensor) and idx.dtype == torch.bool:
        idx = torch.nonzero(idx).flatten()
    return torch.as_tensor(idx, dtype=torch.long, device=device)


@torch.no_grad()
def zero_channels(conv: nn.Conv2d | None, bn: nn.BatchNorm2d | None, idx, *,
                  conv_bias: bool = True, bn_beta: bool = True) -> None:
    """Zero output channels ``idx`` (indices or a bool mask): the filters of ``conv`` (and its bias
    unless ``conv_bias`` is false) and γ (and β unless ``bn_beta`` is false) of ``bn``; either
    module may be None."""
    ref = conv if conv is not None else bn
    if ref is None:
        return
    idx = channel_index(idx, ref.weight.device)
    if idx.numel() == 0:
        return
    if conv is not None:
        conv.weight[idx] = 0
        if conv_bias and conv.bias is not None:
            conv.bias[idx] = 0
    if bn is not None and bn.affine:
        bn.weight[idx] = 0
        if bn_beta:
            bn.bias[idx] = 0


class ChannelMask:
    """``after_step`` hook: re-zero pruned channels after every optimiser step (a hard mask).

    ``ChannelMask(model, {conv name: channels}, conv_bn)`` masks each conv with its BN (``conv_bn``
    as from ``trace``); ``add`` registers any other (conv, BN, channels) triple with the options of
    ``zero_channels``. Calling it zeroes every registered channel; it is false when nothing is masked.
    """

    def __init__(self, model: nn.Module | None = None, pruned: dict[str, list[int]] | None = None,
                 conv_bn: dict[str, str | None] | None = None):
        self.items: list[tuple] = []
        if pruned:
            modules = dict(model.named_modules())
            conv_bn = conv_bn or {}
            for c, ks in pruned.items():
                self.add(modules[c], modules[conv_bn[c]] if conv_bn.get(c) else None, ks)

    def add(self, conv: nn.Conv2d | None, bn: nn.BatchNorm2d | None, idx, *,
            conv_bias: bool = True, bn_beta: bool = True) -> "ChannelMask":
        ref = conv if conv is not None else bn
        idx = channel_index(idx, ref.weight.device)
        if idx.numel():
            self.items.append((conv, bn, idx, conv_bias, bn_beta))
        return self

    def __bool__(self) -> bool:
        return bool(self.items)

    def __call__(self, step: int | None = None) -> None:
        for conv, bn, idx, conv_bias, bn_beta in self.items:
            zero_channels(conv, bn, idx, conv_bias=conv_bias, bn_beta=bn_beta)


def largest_passing(model: nn.Module, val: TensorSet, candidates: Iterable[C],
                    prune: Callable[[C], None], max_drop: float,
                    ) -> tuple[C | None, list[tuple[C, float]], float]:
    """Scan ``candidates`` in order: ``prune(c)`` modifies ``model``, its validation accuracy is
    measured, and the model is restored. Stops at the first candidate whose accuracy falls below
    (1 − ``max_drop``)·base, base = the unpruned model's validation accuracy.

    Returns (last candidate that passed, or None; [(candidate, accuracy)] as scanned; base).
    ``model``'s state_dict is restored on return.
    """
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    base = accuracy(model, val)
    floor = (1 - max_drop) * base
    chosen, curve = None, []
    try:
        for c in candidates:
            prune(c)
            acc = accuracy(model, val)
            curve.append((c, acc))
            model.load_state_dict(saved)
            if acc < floor:
                break
            chosen = c
    finally:
        model.load_state_dict(saved)
    return chosen, curve, base
