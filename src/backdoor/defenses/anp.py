"""``anp``: Adversarial Neuron Pruning (Wu & Wang, NeurIPS 2021), clean-room reimplementation.

Neurons are the channels of every ``nn.BatchNorm2d`` (as in the paper). Each channel k of BN layer
ℓ gets a mask m ∈ [0, 1] (init 1) and two multiplicative noises δ, ξ ∈ [−ε, ε]; the BN output is

    γ·(m + δ)·x̂ + β·(1 + ξ)      (perturbed)    or    γ·m·x̂ + β      (natural).

Per iteration (one clean batch): the noises start uniform in [−ε, ε] and take ``anp_steps`` signed
gradient-ascent steps of size ε/steps on the cross-entropy (clipped to [−ε, ε]); then the masks take
one SGD step on ``α·CE_natural + (1 − α)·CE_perturbed`` and are clipped to [0, 1]. The model's own
weights are frozen. The mask loop runs through ``training.fit`` (``params`` = masks, ``loss_fn`` does
the noise step, ``after_step`` clips), SGD lr 0.2, momentum 0.9, constant lr, as in the paper.

Pruning: channels with m < t get γ = β = 0 (their output is exactly 0 before the ReLU).

Threshold choice — VALIDATION, never test. BackdoorBench sweeps t ∈ {0, 0.05, …, 0.9} and keeps the
threshold with the lowest *test* ASR subject to a test-ACC constraint (an oracle). Here the clean
budget is split (``val_fraction`` 0.2 → 120 of 600 images held out, never used for the masks); the
same grid is scanned upwards and the LARGEST threshold is kept such that every threshold up to it
keeps validation accuracy ≥ (1 − ``max_acc_drop``)·(unpruned validation accuracy), i.e. prune as
much as the clean accuracy allows (ASR is unknown to the defender, so "prune the most within an
accuracy bound" is the defender-side proxy for "lowest ASR within an accuracy bound"). Scanning
stops at the first violation, so one lucky high threshold cannot be picked over a failing middle.
``threshold: <float>`` skips the selection and prunes at that fixed value (paper's default 0.2).

Settings (``defenses.<id>``) and their defaults: ``backdoor.schema.defenses.ANP``.

Budget and deviations:

- **400 mask iterations instead of 2000.** One iteration costs ≈ 3 forward + 2 backward passes, so
  2000 iterations would take ≈ 3–5 min on 2 shared CPU cores with the compact CNN; 400 (≈ 100 epochs of the
  480-image training part) stays ≲ 60 s. Masks of backdoor neurons collapse within the first
  hundreds of iterations in the paper's curves; set ``iterations: 2000`` for the paper's length.
- **BN in eval mode** (running statistics) while the masks are learned: the masks then act on the
  same normalisation the deployed model uses and the running statistics are not touched by 600
  images (the released code runs BN in train mode).
- **γ and β zeroed** on pruning (the paper sets the mask, i.e. only γ, to 0, leaving a constant
  ReLU(β)); this removes the neuron completely. The validation sweep uses the same operation.
- **Threshold from a validation split** (above) instead of the test-set oracle.
- Augmentation (crop 2, flip) as in ``ft``; the paper trains masks with the training transforms.

``info``: chosen threshold, validation accuracies per threshold, pruned channels per BN layer,
mask statistics, timings.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from ..schema.defenses import ANP
from ..training import fit
from .base import fit_config, split_validation
from .channels import largest_passing, zero_channels

class BNMasks:
    """Per-channel masks (and optional ANP noise) on every BatchNorm2d, applied by forward hooks.

    While attached, every BN computes eval-mode batch norm with γ·(m + δ) and β·(1 + ξ)
    (δ = ξ = 0 unless ``perturb``). ``detach()`` removes the hooks.
    """

    def __init__(self, model: nn.Module, noise: bool = False, batch_stats: bool = False):
        self.batch_stats = batch_stats  # True: normalise with batch statistics (running stats untouched)
        self.bns = bn_layers(model)
        if not self.bns:
            raise ValueError("the model has no BatchNorm2d layer to mask")
        dev = next(model.parameters()).device
        self.masks = {n: torch.ones(m.num_features, device=dev, requires_grad=True)
                      for n, m in self.bns.items()}
        self.noise_w = {n: torch.zeros(m.num_features, device=dev, requires_grad=True)
                        for n, m in self.bns.items()} if noise else {}
        self.noise_b = {n: torch.zeros(m.num_features, device=dev, requires_grad=True)
                        for n, m in self.bns.items()} if noise else {}
        self.perturb = False
        self.handles = [m.register_forward_hook(self._hook(n)) for n, m in self.bns.items()]

    def _hook(self, name):
        def hook(module, inputs, output):
            w = module.weight * self.masks[name]
            b = module.bias
            if self.perturb:
                w = module.weight * (self.masks[name] + self.noise_w[name])
                b = module.bias * (1 + self.noise_b[name])
            if self.batch_stats:
                return F.batch_norm(inputs[0], None, None, w, b, True, 0.0, module.eps)
            return F.batch_norm(inputs[0], module.running_mean, module.running_var, w, b,
                                False, 0.0, module.eps)
        return hook

    def mask_list(self) -> list[torch.Tensor]:
        return list(self.masks.values())

    def noise_list(self) -> list[torch.Tensor]:
        return list(self.noise_w.values()) + list(self.noise_b.values())

    @torch.no_grad()
    def clip(self) -> None:
        for m in self.masks.values():
            m.clamp_(0, 1)

    def values(self) -> dict[str, torch.Tensor]:
        return {n: m.detach().cpu().clone() for n, m in self.masks.items()}

    def detach(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def frozen(model: nn.Module):
    """Context: model parameters do not require grad (masks only), restored afterwards."""
    class _Frozen:
        def __enter__(self):
            self.flags = [(p, p.requires_grad) for p in model.parameters()]
            for p, _ in self.flags:
                p.requires_grad_(False)

        def __exit__(self, *exc):
            for p, flag in self.flags:
                p.requires_grad_(flag)
    return _Frozen()


def bn_layers(model: nn.Module) -> dict[str, nn.BatchNorm2d]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}


def prune_channels(model: nn.Module, pruned: dict[str, torch.Tensor]) -> None:
    """Zero γ and β of the given channels (bool masks per BN layer name)."""
    bns = bn_layers(model)
    for name, sel in pruned.items():
        zero_channels(None, bns[name], sel)


def select_threshold(model: nn.Module, masks: dict[str, torch.Tensor], val, thresholds,
                     max_acc_drop: float) -> tuple[float, dict[str, float], float]:
    """Largest threshold (scanning upwards, stopping at the first failure) whose pruned model keeps
    validation accuracy ≥ (1 − max_acc_drop)·base. Returns (threshold, {t: val acc}, base acc).

    ``model`` is restored on return.
    """
    chosen, curve, base = largest_passing(
        model, val, sorted(float(t) for t in thresholds),
        lambda t: prune_channels(model, {n: m < t for n, m in masks.items()}), max_acc_drop)
    return (0.0 if chosen is None else chosen), {f"{t:.2f}": acc for t, acc in curve}, base


def prune_info(masks: dict[str, torch.Tensor], threshold: float) -> dict:
    layers = {n: {"channels": len(m), "pruned": torch.nonzero(m < threshold).flatten().tolist()}
              for n, m in masks.items()}
    allm = torch.cat(list(masks.values()))
    return {"threshold": threshold, "layers": layers,
            "pruned_total": int(sum(len(v["pruned"]) for v in layers.values())),
            "channels_total": len(allm),
            "mask_stats": {"min": float(allm.min()), "mean": float(allm.mean()),
                           "below_0.2": int((allm < 0.2).sum())}}


def purify(model, clean, params, gen, device):
    p = ANP.of(params)
    start = time.perf_counter()
    train, val = split_validation(clean, p.val_fraction, gen)
    model.to(device)
    masker = BNMasks(model, noise=p.eps > 0)
    noise_gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    eps, steps, alpha = float(p.eps), int(p.anp_steps), float(p.alpha)

    def loss_fn(m, x, y, step):
        m.eval()  # masks act on running statistics; no statistics update
        if eps > 0:
            with torch.no_grad():
                for z in masker.noise_list():
                    z.copy_((torch.rand(z.shape, generator=noise_gen) * 2 - 1).mul_(eps).to(z.device))
            masker.perturb = True
            for _ in range(steps):
                noises = masker.noise_list()
                grads = torch.autograd.grad(F.cross_entropy(m(x), y), noises)
                with torch.no_grad():
                    for z, g in zip(noises, grads):
                        z.add_(g.sign(), alpha=eps / steps).clamp_(-eps, eps)
            rob = F.cross_entropy(m(x), y)
            masker.perturb = False
            nat = F.cross_entropy(m(x), y)
            return alpha * nat + (1 - alpha) * rob
        return F.cross_entropy(m(x), y)

    try:
        with frozen(model):
            result = fit(model, train, fit_config(p), gen=gen, device=device, params=masker.mask_list(),
                         loss_fn=loss_fn, after_step=lambda s: masker.clip(), desc="anp")
    finally:
        masker.detach()
    masks = masker.values()
    if p.threshold is None:
        threshold, curve, base = select_threshold(model, masks, val, p.thresholds, p.max_acc_drop)
    else:
        threshold, curve, base = float(p.threshold), {}, None
    prune_channels(model, {n: m < threshold for n, m in masks.items()})
    model.eval()
    info = prune_info(masks, threshold)
    info.update(val_acc_unpruned=base, val_acc_by_threshold=curve, val_size=len(val),
                mask_steps=result.steps, final_loss=result.final_loss,
                seconds=time.perf_counter() - start)
    return model, info
