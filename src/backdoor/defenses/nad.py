"""``nad``: Neural Attention Distillation (Li et al., ICLR 2021).

1. **Teacher**: a copy of the backdoored model fine-tuned on the clean budget with cross-entropy
   (``teacher_iterations`` 250, otherwise ``ft``'s settings).
2. **Student**: the backdoored model itself, trained on the clean budget with

       L = CE(f_s(x), y) + Σ_i β_i · AT(F_s^i(x), F_t^i(x)),

   where, for a feature map F (B, C, H, W), the attention map is A(F) = Σ_c |F_c|^p (p = 2),
   flattened and divided by its L2 norm, and AT = mean over batch and positions of
   (A(F_s) − A(F_t))². The teacher is frozen and in eval mode.

Layers (``layers``: ``auto`` or a list of module names). NAD distils the outputs of the
3 residual groups of a WRN (BackdoorBench: ``layer2``–``layer4`` of PreActResNet18, the last 3
resolution stages). ``auto`` applies that rule to any model from one traced forward pass: for each
spatial size > 1, the last module (ignoring BatchNorm, activations and pooling) to finish at that
size is the stage output, and the last ``n_layers`` (3) stages are used. On the compact CNN that
is the output (after BN + ReLU) of conv block 1 (28×28), conv block 3 (14×14) and conv block 5
(7×7): ``body.features.0``, ``body.features.3``, ``body.features.6``; on PreActResNet18 it is
``body.layer2``, ``body.layer3``, ``body.layer4``.

β (``betas``): BackdoorBench's 500 / 1000 / 1000 for the 3 stages, shallow to deep; with fewer
stages the last ``n`` are used.

Budget: SGD lr 1e-2, momentum 0.9, wd 5e-4, cosine, batch 128, crop 2 + flip for both stages;
teacher ``teacher_iterations`` 250 (≈ 8 s), student ``iterations`` 500 (≈ 20 s: one extra teacher
forward per step) on 2 CPU cores for the compact CNN. BackdoorBench: teacher 10 epochs, erasing
100 epochs over 2,500 CIFAR images (≈ 100 and 1,000 steps); the paper: teacher 10 epochs, erasing
20 epochs at batch 64 (≈ 400 and 800 steps). We keep the paper's 1 : 2 teacher : student ratio and
``ft``'s 500 student steps, so NAD's cost stays comparable with ``ft``.

Deviations: iteration counts (above); the generic stage choice for non-ResNet models; the paper's
step-decayed lr 0.1 is replaced by BackdoorBench's lr 0.01 with a cosine schedule.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..augment import to_float
from ..schema.defenses import NAD
from ..training import fit
from ..device import memory_format
from .base import fit_config
from .channels import trace

_NOT_STAGES = (nn.modules.batchnorm._BatchNorm, nn.ReLU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Identity,
               nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Dropout)


def stage_outputs(model: nn.Module, x: torch.Tensor, n: int) -> list[str]:
    """Names of the modules ending the last ``n`` spatial-resolution stages (see module docstring)."""
    modules = dict(model.named_modules())
    t = trace(model, x)
    last_at: dict[tuple, str] = {}
    for name in t.order:
        shape = t.shapes[name]
        if len(shape) != 4 or shape[2] * shape[3] <= 1 or isinstance(modules[name], _NOT_STAGES):
            continue
        if name == "normalize" or name.endswith(".normalize"):
            continue
        last_at.pop(shape[2:], None)
        last_at[shape[2:]] = name  # re-insert: dict order = order in which stages end
    stages = list(last_at.values())
    return stages[-n:]


def attention(fm: torch.Tensor, p: float) -> torch.Tensor:
    a = fm.abs().pow(p).sum(1).flatten(1)
    return a / (a.norm(dim=1, keepdim=True) + 1e-8)


def at_loss(fs: torch.Tensor, ft: torch.Tensor, p: float) -> torch.Tensor:
    return (attention(fs, p) - attention(ft, p)).pow(2).mean()


class _Features:
    def __init__(self, model: nn.Module, names: list[str]):
        modules = dict(model.named_modules())
        self.out: dict[str, torch.Tensor] = {}
        self.handles = [modules[n].register_forward_hook(
            lambda m, i, o, n=n: self.out.__setitem__(n, o)) for n in names]

    def remove(self):
        for h in self.handles:
            h.remove()


def purify(model, clean, params, gen, device):
    cfg = NAD.of(params)
    model.to(device, memory_format=memory_format(model))
    if cfg.layers == "auto":
        layers = stage_outputs(model, to_float(clean.x[:2].to(device)), int(cfg.n_layers))
    else:
        layers = list(cfg.layers)
    betas = [float(b) for b in cfg.betas][-len(layers):]
    if len(betas) != len(layers):
        raise ValueError(f"nad: {len(layers)} layers but {len(cfg.betas)} betas")

    teacher = copy.deepcopy(model)
    t_result = fit(teacher, clean, fit_config(cfg, iterations=int(cfg.teacher_iterations), epochs=None),
                   gen=gen, device=device, desc="nad-teacher")
    teacher.eval()
    for q in teacher.parameters():
        q.requires_grad_(False)

    s_feats, t_feats = _Features(model, layers), _Features(teacher, layers)
    p = float(cfg.p)

    def loss_fn(net, x, y, step):
        logits = net(x)
        with torch.no_grad():
            teacher(x)
        loss = F.cross_entropy(logits, y)
        for name, beta in zip(layers, betas):
            loss = loss + beta * at_loss(s_feats.out[name], t_feats.out[name], p)
        return loss

    try:
        result = fit(model, clean, fit_config(cfg), gen=gen, device=device, loss_fn=loss_fn, desc="nad")
    finally:
        s_feats.remove()
        t_feats.remove()
    return model, {"layers": layers, "betas": betas, "teacher_steps": t_result.steps,
                   "teacher_final_loss": t_result.final_loss, "steps": result.steps,
                   "final_loss": result.final_loss}
