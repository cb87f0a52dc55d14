"""``ftsam``: fine-tuning with sharpness-aware minimisation (FT-SAM; Zhu, Wei, Zha & Wu, ICCV 2023).

Every parameter is fine-tuned on the clean budget with label-smoothed cross-entropy (``label_smoothing``
0.1), but each SGD step uses the gradient at an adversarially perturbed point of weight space:

1. g = ∇L(w) on the batch;
2. ε = ρ · T² g / ‖T g‖₂ with T = |w| + η elementwise (adaptive SAM, ``adaptive`` true), or
   ε = ρ · g / ‖g‖₂ (plain SAM, ``adaptive`` false); the norm is over all trained parameters;
3. g' = ∇L(w + ε) on the same batch (BatchNorm running statistics frozen for this second pass, so
   they are updated once per step as in ordinary training); w ← SGD step with g' from w.

FT-SAM's point is that backdoor neurons have large weight norms: the adaptive (norm-scaled)
perturbation hits them hardest, so minimising the worst-case loss around w shrinks them. ρ = 2 is
BackdoorBench's CIFAR-10 default (8 for GTSRB/Tiny); a ρ that large only makes sense with the
adaptive, weight-scaled neighbourhood (ASAM-style; η = 0.01 as in ASAM), which is how we read the
paper. ``adaptive: false`` gives plain SAM (then ρ should be ~0.05).

Implementation: ``training.fit``'s ``grad_fn`` hook (two forward/backward passes per step), so the
batches, augmentation, SGD and cosine schedule are exactly those of ``ft``.

Budget: SGD lr 1e-2, momentum 0.9, wd 5e-4, cosine, batch 128, crop 2 + flip, ``iterations`` 500 —
the same steps as ``ft`` (≈ 15 s), so ≈ 30 s with the doubled passes on 2 CPU cores for the compact
CNN. BackdoorBench runs 100 epochs over 2,500 CIFAR images at batch 256 (≈ 1,000 steps); we count
iterations so the cost does not depend on the 600-image budget, and keep parity with ``ft`` so the
comparison isolates the SAM step.

Deviations: iteration count (above); AMP off (CPU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..schema.defenses import FTSAM
from ..training import fit
from .base import fit_config

def smoothed_ce(smoothing: float):
    def loss_fn(model, x, y, step):
        return F.cross_entropy(model(x), y, label_smoothing=smoothing)
    return loss_fn


def sam_grad_fn(params: list[nn.Parameter], rho: float, adaptive: bool = True, eta: float = 0.01):
    """A ``training.fit`` ``grad_fn`` taking a (adaptive) SAM gradient for ``params``."""

    def grad_fn(model, x, y, step, loss_fn):
        loss = loss_fn(model, x, y, step)
        loss.backward()
        with torch.no_grad():
            ps = [p for p in params if p.grad is not None]
            scale = [p.abs() + eta if adaptive else None for p in ps]
            tg = [p.grad * s if adaptive else p.grad for p, s in zip(ps, scale)]  # T g
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tg]))
            factor = rho / (norm + 1e-12)
            eps = [(t * s if adaptive else t) * factor for t, s in zip(tg, scale)]  # ρ T² g / ‖T g‖
            for p, e in zip(ps, eps):
                p.add_(e)
        bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        momenta = [m.momentum for m in bns]
        for m in bns:
            m.momentum = 0.0  # running stats were updated by the first pass
        try:
            for p in ps:
                p.grad = None
            loss_fn(model, x, y, step).backward()
        finally:
            for m, mom in zip(bns, momenta):
                m.momentum = mom
            with torch.no_grad():
                for p, e in zip(ps, eps):
                    p.sub_(e)
        return loss.detach()

    return grad_fn


def purify(model, clean, params, gen, device):
    cfg = FTSAM.of(params)
    trained = [p for p in model.parameters() if p.requires_grad]
    result = fit(model, clean, fit_config(cfg), gen=gen, device=device,
                 loss_fn=smoothed_ce(float(cfg.label_smoothing)),
                 grad_fn=sam_grad_fn(trained, float(cfg.rho), bool(cfg.adaptive), float(cfg.eta)),
                 desc="ftsam")
    return model, {"steps": result.steps, "final_loss": result.final_loss, "rho": cfg.rho,
                   "adaptive": cfg.adaptive}
