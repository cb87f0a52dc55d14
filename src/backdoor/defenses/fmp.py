"""``fmp``: Adversarial Feature Map Pruning (FMP, ICLR 2024; arXiv 2307.11565), methods.md §4.

Clean-room reimplementation of the released ``defense/fgsm-feature.py`` algorithm (methods.md §4.3)
with the bugs of §4.5 fixed. Four stages:

1. **Sensitivity batch.** ``sensitivity_batch`` (32) clean images, drawn at random from the
   defender's clean budget and augmented like the fine-tuning batches (the released code takes the
   first batch of its training loader). Random start ``x0 = clip(x + alpha·s, 0, 1)`` with
   ``s ∈ {−1, +1}`` uniform per element.
2. **Per-feature-map FGSM ("feature reverse generation").** For every output channel k of every
   ``nn.Conv2d`` ℓ: ``J = MSE(F_ℓk(x), F_ℓk(x0))`` (mean over batch and positions) and one ascent
   step ``x_adv = clip(x0 + eps·sign(∇_x0 J), 0, 1)``; the score ``s_ℓk`` is the accuracy of the
   model on ``x_adv`` (true labels). A feature map whose isolated perturbation breaks the
   classifier is the FMP notion of a backdoor feature map.
3. **Prune**, per conv layer, the ``n_ℓ`` lowest-scoring maps: zero the conv filter (and its bias),
   and ``γ`` (and ``β``) of the BatchNorm that normalises exactly that conv's output.
4. **Fine-tune** every parameter with SGD (lr 0.01, momentum 0.9, no weight decay, cosine to
   1e-4, batch 256) through ``training.fit``; a hard mask (``after_step``) keeps the pruned
   entries at zero.

Efficiency. The cost is Σ_ℓ C_ℓ × (forward to ℓ + backward + full forward) on the batch. The
feature maps are batched through the batch dimension: the random start is replicated once per
feature map of a chunk (``chunk_images`` images per pass), each replica's loss only involves its
own channel, and since the model runs in eval mode the replicas do not interact, so one backward
gives all the per-map input gradients at once (sign() makes the per-replica sum of losses
equivalent to separate losses). The forward of stage 2 stops at layer ℓ (a hook raises), so the
gradient pass never runs the layers after ℓ. On the compact CNN at width 16 (208 maps, 28×28
inputs) this takes ≈ 3.5 s on one CPU thread (up to ≈ 10 s on a loaded machine), against ≈ 25 s
for the 240 fine-tuning steps.

Settings (``defenses.<id>``, declared in ``backdoor.schema.defenses.FMP``; the fit keys go to ``fit``):

- ``sensitivity_batch`` 32, ``alpha`` 0.02, ``eps`` 0.06: the authors' FMT config for CIFAR-10
  (methods.md §4.4). ``eps`` is 0.06 and not the 1/255 of the Dunnett et al. port: 0.06 is the only
  value that comes from the authors' own files, the port admits it never saw them, and at
  1/255 (below the 0.02 random start) one step barely moves the accuracy on 32 images, so most
  scores tie and the ranking degenerates into the tie-break (measured on the BadNets compact CNN:
  4 of 5 layers had only two score values, 29/32 and 30/32).
- ``prune_ratio`` 1/64 and ``rounding`` ``ceil``: ``n_ℓ = ceil(C_ℓ · ratio)``. On PreActResNet18
  (64–512 channels, all multiples of 64) ceil equals the released floor, so the paper's 75 pruned
  maps are unchanged; on the compact CNN (16–64 channels) floor would prune nothing in the three
  narrow layers (only 2 of 208 maps in total), ceil prunes one map per layer (5 of 208).
  ``rounding: floor`` reproduces the released count, ``round`` is also accepted.
- ``zero_bn_beta`` true, ``hard_mask`` true (see deviations). ``chunk_images`` 1024 bounds the
  images per sensitivity pass (memory; 1024 was also faster than 2048–4096 on CPU).
- fine-tuning: ``lr`` 1e-2, ``min_lr`` 1e-4, ``momentum`` 0.9, ``weight_decay`` 0, ``batch_size``
  256, ``crop_pad`` 2, ``flip`` true and ``iterations`` 240 (or ``epochs``, as in the released code).

Clean data. FMP's default is a class-balanced 10% of the training set (6,000 Fashion-MNIST images);
the study gives every defense the same ``clean_budget`` (600 by default, 1%) and FMP uses exactly
that, so defenses are compared on equal data. The fine-tuning length is fixed in iterations rather
than epochs so that it does not collapse with the small budget: 240 batches of 256 is the number of
SGD steps the released setting (10 epochs, batch 256) takes on 10% of Fashion-MNIST
(10 · ⌈6000 / 256⌉ = 240). Set ``clean_sampling: stratified`` to mimic the class-balanced subset.

Deviations from the released code, and why:

- **Pixel space.** The model takes [0, 1] pixels (normalisation is its first layer); the random
  start and FGSM step are clamped to [0, 1] in pixel space. The released code normalises twice
  and clamps normalised tensors (methods.md §4.5.1), which we consider a bug.
- **Scores keyed by module name**, and pruning looks scores up by the same name, so the
  execution-order vs registration-order mismatch of the released code (shortcut convs of
  PreActResNet18 get the wrong rank lists, §4.5.2) cannot happen.
- **Which BN.** A conv's BN is found by tracing one forward pass: a ``BatchNorm2d`` whose input
  *is* that conv's output tensor (conv → BN directly: every conv of the compact CNN, and the stem
  conv and each block's conv1 in PreActResNet18). A conv that feeds a residual sum (block conv2,
  shortcut convs) has no BN of its own; only its filter is zeroed, since zeroing the BN after the
  sum would also silence the skip path's channel. The released code zeroes ``γ`` of the BN
  registered after the last visited conv (only approximately that conv's BN, §4.5.3).
- **β zeroed too** (``zero_bn_beta``; the released code leaves β, so a pruned map becomes the
  constant ReLU(β) rather than being removed; the third-party port zeroes both).
- **Hard mask** during fine-tuning (``hard_mask``): pruned filters, biases, γ and β are reset to
  zero after every step, matching the paper's "prune, then fine-tune". ``hard_mask: false`` drops
  the mask as the released code does. For a conv followed directly by its BN and a ReLU (every
  conv of the compact CNN) nothing can regrow anyway: γ = 0 blocks the gradient to the filter, the
  all-zero normalised input blocks the gradient to γ, and with β = 0 the ReLU's zero slope at 0
  blocks the gradient to β, so hard and released masks give bit-identical models (tested). The
  mask matters for convs that feed a residual sum (PreActResNet18 block conv2 and shortcuts),
  whose filters do regrow without it (tested).
- **Eval-mode sensitivity.** Stage 2 runs with BN in eval mode (running statistics), which the
  batching over feature maps needs (train-mode BN would mix replicas through batch statistics) and
  which makes a map's score independent of the other images in the pass.
- **Tie-break.** With 32 images scores are multiples of 1/32 and ties are common; ties are broken
  by the higher mean cross-entropy on the perturbed batch, then by the lower channel index (the
  released argsort breaks them arbitrarily).
- **Sensitivity batch** drawn with the defense's generator from the clean budget (reproducible),
  not "the first batch of a shuffled loader"; the pgd variant (§4.3) is not implemented (broken).
- **Fine-tuning length** in iterations (see Clean data); weight decay 0 and min_lr 1e-4 as released.

Measured (Fashion-MNIST, compact CNN, 600 clean images, one thread): FMP does **not** reach the
study target; ASR stays ≈ 66–93% (BadNets) and ≈ 96–98% (Blend) over three defense seeds, about
what the same fine-tuning alone gives. Diagnosis: the per-map score is uncorrelated with a map's
role in the backdoor (Spearman −0.17…+0.11 per layer between the score and the test ASR after
zeroing that single map alone, a diagnostic that uses test data and was never used to choose
anything). The ε-ball (≤ 0.08) cannot express a saturated 3×3 patch (Δ ≈ 1) and, for Blend, the
perturbed accuracy floors at 2/32 for most maps. The pruning budget is not the bottleneck: zeroing
the single most backdoor-relevant map per layer (5 maps, chosen with test data) already drops the
BadNets ASR to 4.3% before any fine-tuning.

``fmp_released`` (declared in ``backdoor.schema.defenses``) is the released choice on the points
that change the result: ``rounding: floor`` (⌊C/64⌋ maps: none in the compact CNN's 16- and
32-channel layers, one in each 64-channel layer), ``zero_bn_beta: false`` (γ only, β kept),
``hard_mask: false`` (no mask while fine-tuning) and crop padding 4. Kept as in ``fmp``, because
the release cannot run as is (no ``utils/``, no configs, v1/v2 API mix, methods.md §4.9) and these
are the fixes needed to run it on the study's models: pixel-space inputs (no double normalisation),
scores keyed by module name (no effect on the compact CNN, whose execution and registration orders
agree), the BN that follows each conv, the sensitivity batch drawn from the clean budget, the
tie-break, and the fine-tuning length in iterations.

``info`` reports, per conv (by module name), the channel count, the pruned channels, their scores,
the BN that was zeroed, every score, and timings.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from ..augment import augment, to_float
from ..data.tensors import TensorSet
from ..schema.defenses import FMP
from ..training import fit
from ..device import memory_format
from .base import fit_config
from .channels import ChannelMask, trace

class _Stop(Exception):
    """Raised by a forward hook to end a forward pass once the wanted layer has run."""


def conv_layers(model: nn.Module) -> dict[str, nn.Conv2d]:
    """Every ``nn.Conv2d`` of the model by module name (registration order)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def _forward_to(model: nn.Module, conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Run ``model`` on ``x`` only as far as ``conv`` and return that conv's output."""
    box = []

    def hook(module, inputs, output):
        box.append(output)
        raise _Stop

    handle = conv.register_forward_hook(hook)
    try:
        model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not box:
        raise RuntimeError("the conv layer did not run in the forward pass")
    return box[0]


def feature_map_scores(model: nn.Module, convs: dict[str, nn.Conv2d], x: torch.Tensor, y: torch.Tensor,
                       alpha: float, eps: float, gen: torch.Generator,
                       chunk_images: int = 1024) -> dict[str, dict[str, torch.Tensor]]:
    """Per-feature-map FGSM: {conv name: {"acc": (C,), "loss": (C,)}} on the perturbed batch.

    ``model`` must be in eval mode; ``x`` holds float pixels in [0, 1].
    """
    b = len(x)
    start = torch.randint(0, 2, x.shape, generator=gen).to(x.device, x.dtype) * 2 - 1
    x0 = (x + alpha * start).clamp_(0, 1)
    refs = {}
    with torch.no_grad():
        handles = [conv.register_forward_hook(
            lambda m, i, o, name=name: refs.__setitem__(name, o.detach().clone()))
            for name, conv in convs.items()]
        try:
            model(x)
        finally:
            for h in handles:
                h.remove()
    per_chunk = max(1, chunk_images // b)
    scores = {}
    for name, conv in convs.items():
        ref = refs[name]
        channels = ref.shape[1]
        acc, loss = torch.empty(channels), torch.empty(channels)
        for c0 in range(0, channels, per_chunk):
            ks = torch.arange(c0, min(channels, c0 + per_chunk), device=x.device)
            g = len(ks)
            x_rep = x0.repeat(g, 1, 1, 1).contiguous(memory_format=memory_format(model)).requires_grad_(True)
            out = _forward_to(model, conv, x_rep)
            out = out.reshape(g, b, *out.shape[1:])[torch.arange(g, device=x.device), :, ks]  # (g, b, H, W)
            target = ref[:, ks].transpose(0, 1)  # (g, b, H, W)
            objective = (out - target).pow(2).mean(dim=(1, 2, 3)).sum()
            (grad,) = torch.autograd.grad(objective, x_rep)
            with torch.no_grad():
                x_adv = (x_rep + eps * grad.sign()).clamp_(0, 1)
                logits = model(x_adv)
                y_rep = y.repeat(g)
                acc[c0:c0 + g] = (logits.argmax(1) == y_rep).float().view(g, b).mean(1).cpu()
                loss[c0:c0 + g] = F.cross_entropy(logits, y_rep, reduction="none").view(g, b).mean(1).cpu()
        scores[name] = {"acc": acc, "loss": loss}
    return scores


def n_to_prune(channels: int, ratio: float, rounding: str) -> int:
    raw = channels * ratio
    if rounding == "ceil":
        n = math.ceil(raw - 1e-9)
    elif rounding == "floor":
        n = math.floor(raw + 1e-9)
    elif rounding == "round":
        n = math.floor(raw + 0.5)
    else:
        raise ValueError(f"fmp.rounding: {rounding!r} is not one of ceil, floor, round")
    return max(0, min(channels, n))


def select(acc: torch.Tensor, loss: torch.Tensor, n: int) -> list[int]:
    """The ``n`` lowest-accuracy channels; ties → higher loss first, then lower index."""
    order = sorted(range(len(acc)), key=lambda k: (acc[k].item(), -loss[k].item(), k))
    return sorted(order[:n])


def purify(model, clean: TensorSet, params, gen, device):
    p = FMP.resolve(params)
    t0 = time.perf_counter()
    fmt = memory_format(model)  # NHWC where safe: ≈ 1.4× faster convs on CPU
    model.to(device, memory_format=fmt).eval()
    convs = conv_layers(model)
    if not convs:
        raise ValueError("fmp: the model has no Conv2d layer to prune")

    # 1. sensitivity batch: random clean images, augmented like the fine-tuning data, random start
    n = min(int(p.sensitivity_batch), len(clean))
    idx = torch.randperm(len(clean), generator=gen)[:n]
    x = to_float(clean.x[idx].to(device))
    aug_gen = torch.Generator(device=device).manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    x = augment(x, int(p.crop_pad), bool(p.flip), aug_gen).contiguous(memory_format=fmt)
    y = clean.y[idx].to(device)
    with torch.no_grad():
        batch_acc = (model(x).argmax(1) == y).float().mean().item()

    # 2. per-feature-map FGSM scores, keyed by module name
    scores = feature_map_scores(model, convs, x, y, float(p.alpha), float(p.eps), gen,
                                int(p.chunk_images))
    bns = trace(model, x[:2]).conv_bns
    t_scores = time.perf_counter() - t0

    # 3. prune: conv filter (+bias) and the (γ, β) of the BN that normalises that conv's output
    mask = ChannelMask()
    layers = {}
    modules = dict(model.named_modules())
    for name, conv in convs.items():
        acc, loss = scores[name]["acc"], scores[name]["loss"]
        k = n_to_prune(conv.out_channels, float(p.prune_ratio), p.rounding)
        chosen = select(acc, loss, k)
        mask.add(conv, None, chosen)
        for bn_name in bns.get(name, []):
            mask.add(None, modules[bn_name], chosen, bn_beta=bool(p.zero_bn_beta))
        layers[name] = {"channels": conv.out_channels, "pruned": chosen,
                        "pruned_scores": [acc[c].item() for c in chosen], "bn": bns.get(name, [])}
    mask()

    # 4. fine-tune every parameter; the hard mask keeps pruned entries at zero
    cfg = fit_config(p)
    result = fit(model, clean, cfg, gen=gen, device=device,
                 after_step=mask if p.hard_mask and mask else None, desc="fmp")
    total = time.perf_counter() - t0
    return model, {
        "layers": layers,
        "n_pruned": sum(len(v["pruned"]) for v in layers.values()),
        "n_feature_maps": sum(v["channels"] for v in layers.values()),
        "scores": {name: s["acc"].tolist() for name, s in scores.items()},
        "sensitivity_batch": n, "sensitivity_batch_acc": batch_acc,
        "eps": float(p.eps), "alpha": float(p.alpha), "hard_mask": bool(p.hard_mask),
        "seconds_scores": t_scores, "seconds_total": total,
        "steps": result.steps, "final_loss": result.final_loss,
    }
