"""``nft``: neural mask fine-tuning with MixUp (Karim et al., ECCV 2024, arXiv 2407.10052).

Every BatchNorm scale γ gets a per-channel multiplicative mask m (initialised to 1; β is not
masked, so a channel computes m·γ·x̂ + β). All original weights are frozen and only the masks are
optimised, on the clean budget, with

    L = λ·CE(f(x̃), y) + (1 − λ)·CE(f(x̃), y_π) + (l1_weight / N_c)·Σ_l Σ_c |1 − m_lc|,
    x̃ = λ·x + (1 − λ)·x_π,   λ ~ Beta(α, α) once per batch,   π a random permutation of the batch,

with N_c = (clean images) / (classes). After every SGD step the masks of the l-th masked BN (1-based,
in forward order) are projected into [floor_alpha·exp(−floor_beta·l), 1]. At the end the masks
are folded into the BN weights (γ ← γ·m), the masking is removed, and an ordinary model of the
original architecture is returned whose outputs equal those of the masked model bit for bit.

Masking uses ``torch.nn.utils.parametrize`` on ``bn.weight`` (module classes are unchanged once
the parametrization is removed); the loop is the study's ``fit`` with a MixUp ``loss_fn``, the
projection as ``after_step`` and ``params`` = the masks. Default hyperparameters are those of the
released code (methods.md §3.3, §3.5): SGD lr 0.05, momentum 0.95, no weight decay, cosine decay to
0.02, 1,000 iterations of 128 images drawn with replacement, α = 1, l1_weight = 1e-3, floor 0.8·e^(−0.5·l).

Decisions and deviations (paper = what is verifiable of arXiv 2407.10052; code = the released
``src/Remove_Backdoor.py`` + ``src/networks/mask_filter.py`` as described in methods.md §3.3–3.8):

1. **Which BNs are masked** (``mask_first_bn``, default ``true``: every BN). The code masks every BN
   inside the residual blocks of its ResNet-18 but leaves the stem BN plain, which reads as an
   artefact of how its network builder swaps in the masked BN class (the paper speaks of masking
   neurons, with no stem exception). On the study's compact CNN, which has only 5 BNs, skipping the
   first one would freeze a fifth of the maskable layers and raise the floor of the deepest layer
   from 0.066 to 0.108; we mask all of them. ``mask_first_bn: false`` skips the first BN in forward
   order, the code's choice for its post-activation ResNet (for PreActResNet18, which has no stem
   BN, that would skip ``layer1.0.bn1`` instead, so keep the default there).
2. **Layer index of the floor** = position among the *masked* BNs in **forward order**, found by a
   forward pass on one clean image with hooks (the code uses parameter-registration order; for the
   study's architectures both orders coincide).
3. **Floor schedule on shallow networks.** The schedule 0.8·e^(−0.5·l) was designed with 19 masked
   BNs: from l ≈ 8 on, the floor is < 0.02, so deep channels can in effect be switched off, while
   early layers are kept near their original scale. With 5 BNs the floors are 0.485, 0.294, 0.179,
   0.108, 0.066: no channel can be scaled below 6.6% of its γ, i.e. NFT here is strictly a soft
   re-weighting. We keep the spec's formula (``floor_alpha``, ``floor_beta``), since the
   third-party port applies the same α, β to every architecture too, with α = 1.0 instead of 0.8,
   chosen on validation data (benchmarks/ablation.py --grid, badnets seed 0: 0.2–0.4 leave ASR ≈ 72,
   0.6–1.0 give 30.5–31.1, a flat optimum; nft_released keeps 0.8); ``floor_depth: relative`` is
   offered as a documented alternative that maps the masked BNs affinely onto indices 1…19
   (first layer 0.485, last 6e-5), i.e. keeps the floor a function of relative depth. On the
   Fashion-MNIST CNN few masks end at their floor (≤ 3 of 208 channels with 600 clean images), so
   the choice barely matters there.
4. **BatchNorm statistics** (``bn_stats``, default ``update``): as in the code, the model runs in
   train mode, so BN normalises with MixUp'd batch statistics and the running statistics are
   re-estimated on the clean budget (buffers change, weights do not). ``frozen`` keeps every BN in
   eval mode (running statistics untouched, the masks see the same function used at test time), a
   stricter variant that only changes masks.
5. **Schedule**: cosine decay from 0.05 to 0.02 per step over the 1,000 iterations (``fit``'s
   schedule). The code steps ``CosineAnnealingLR(T_max = 5)`` once per 200-iteration round, a
   staircase 0.05, 0.047, 0.040, 0.030, 0.023 that never reaches 0.02. There are no rounds, no
   per-round test evaluation and no checkpoints here: the result is the last iterate, as in the code.
6. **One-shot mode** (absent from the code, claimed by the paper): give a class-stratified clean set
   of one image per class (``clean_sampling: stratified`` with a budget equal to the number of
   classes); then N_c = 1 and the regulariser weight becomes 1e-3. N_c is computed from the clean set
   size and the model's number of outputs, and need not be an integer.
7. **Augmentation**: the code uses its training augmentation (random crop with padding, flip) before
   MixUp; we use the study's (``crop_pad: 2``, ``flip: true``, as the attacker's training), so the
   defaults stay sensible for 28-pixel Fashion-MNIST.
8. **Fixes to the code**: the crash on the first iteration (uninitialised counters) and the unused
   L2/L∞ mask norms are irrelevant here; randomness (batches, augmentation, λ, π) comes only from
   ``gen``, so a fixed generator gives a bit-identical result on one machine.

``nft_released`` (declared in ``backdoor.schema.defenses``) is ``Remove_Backdoor.py`` as released:
the first BN in forward order (the release's stem BN) unmasked (``mask_first_bn: false``, so the
floors start at 0.485 on the second BN), the learning rate stepped once per 200-iteration round
(``lr_rounds: 5``: 0.05, 0.047, 0.040, 0.030, 0.023) and the release's crop padding 4. Floor formula
and order, masking of γ only, train-mode BN statistics, MixUp (α = 1), the L1 term
(0.001 / N_c · Σ|1 − m|, N_c = clean images / classes), SGD settings and 1,000 iterations are the
same in both ids. Fixes needed to run: the counters of item 8; the study's model, data and seeded
streams; no per-round test evaluation (the last iterate is the result, as released).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.modules.batchnorm import _BatchNorm

from ..augment import to_float
from ..schema.defenses import NFT
from ..training import fit
from .base import fit_config
from .channels import trace

class GammaMask(nn.Module):
    """Parametrization of a BN weight: γ ↦ γ ⊙ m, with the per-channel mask m as the parameter."""

    def __init__(self, channels: int, device: torch.device, dtype: torch.dtype):
        super().__init__()
        self.mask = nn.Parameter(torch.ones(channels, device=device, dtype=dtype))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


def bn_forward_order(model: nn.Module, probe: torch.Tensor) -> list[tuple[str, _BatchNorm]]:
    """The affine BN layers that ``model(probe)`` calls, in the order it first calls them.

    Runs in eval mode under ``no_grad`` (``channels.trace``), so no running statistic changes; the
    mode is restored.
    """
    modules = dict(model.named_modules())
    return [(name, modules[name]) for name in trace(model, probe).order
            if isinstance(modules[name], _BatchNorm) and modules[name].affine]


def mask_floors(n_layers: int, alpha: float, beta: float, depth: str = "index", ref_layers: int = 19) -> list[float]:
    """Lower bound of the masks of each masked BN (forward order)."""
    if depth == "index":
        index = [l + 1.0 for l in range(n_layers)]
    elif depth == "relative":
        span = (ref_layers - 1) / max(1, n_layers - 1)
        index = [1.0 + l * span for l in range(n_layers)]
    else:
        raise ValueError(f"nft.floor_depth = {depth!r}: use index or relative")
    return [alpha * math.exp(-beta * l) for l in index]


def _seed_from(gen: torch.Generator) -> int:
    return int(torch.randint(0, 2**31, (1,), generator=gen))


def purify(model, clean, params, gen, device):
    p = NFT.resolve(params)
    if len(clean) == 0:
        raise ValueError("nft: the clean set is empty")
    device = torch.device(device)
    model.to(device)

    probe = to_float(clean.x[:1].to(device))
    layers = bn_forward_order(model, probe)
    with torch.no_grad():
        num_classes = model.eval()(probe).shape[1]
    if not p.mask_first_bn:
        layers = layers[1:]
    if not layers:
        raise ValueError("nft: the model has no affine BatchNorm layer to mask")
    floors = mask_floors(len(layers), p.floor_alpha, p.floor_beta, p.floor_depth,
                         p.floor_ref_layers)
    n_c = len(clean) / num_classes

    # Freeze every original parameter, then mask the chosen BN weights.
    requires_grad = {name: q.requires_grad for name, q in model.named_parameters()}
    for q in model.parameters():
        q.requires_grad_(False)
    masks = []
    for _, bn in layers:
        parametrize.register_parametrization(bn, "weight",
                                             GammaMask(bn.num_features, bn.weight.device, bn.weight.dtype))
        masks.append(bn.parametrizations.weight[0].mask)
    all_bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]

    mix_gen = torch.Generator().manual_seed(_seed_from(gen))
    mix_rng = np.random.default_rng(_seed_from(gen))
    alpha, reg = float(p.mixup_alpha), float(p.l1_weight) / n_c

    def loss_fn(net, x, y, step):
        if p.bn_stats == "frozen":
            for bn in all_bns:
                bn.eval()
        if alpha > 0:
            lam = float(mix_rng.beta(alpha, alpha))
            perm = torch.randperm(len(y), generator=mix_gen).to(y.device)
            logits = net(lam * x + (1 - lam) * x[perm])
            loss = lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, y[perm])
        else:
            loss = F.cross_entropy(net(x), y)
        return loss + reg * sum((1 - m).abs().sum() for m in masks)

    def project(step):
        with torch.no_grad():
            for m, floor in zip(masks, floors):
                m.clamp_(floor, 1.0)

    try:
        result = fit(model, clean, fit_config(p), gen=gen, device=device, params=masks,
                     loss_fn=loss_fn, after_step=project, desc="nft")
        final = [m.detach().cpu().clone() for m in masks]
    finally:
        for _, bn in layers:  # fold: γ ← γ·m (the same product the masked forward used)
            parametrize.remove_parametrizations(bn, "weight", leave_parametrized=True)
        for name, q in model.named_parameters():
            q.requires_grad_(requires_grad[name])
    model.eval()

    per_layer = [{"layer": name, "channels": len(m), "floor": floor, "mean": float(m.mean()),
                  "min": float(m.min()), "at_floor": int((m <= floor * (1 + 1e-6)).sum()),
                  "below_half": int((m < 0.5).sum()), "at_one": int((m >= 1.0).sum())}
                 for (name, _), m, floor in zip(layers, final, floors)]
    return model, {"steps": result.steps, "seconds": result.seconds, "final_loss": result.final_loss,
                   "n_c": n_c, "num_classes": int(num_classes), "bn_stats": p.bn_stats,
                   "masked_layers": per_layer}
