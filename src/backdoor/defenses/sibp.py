"""``sibp``: self-inspecting backdoor purification — prune outlier channels found from weight
statistics alone, then fine-tune on the clean budget (methods.md §5).

Source and status
-----------------
Implemented from the specification in methods.md §5.3/§5.9, which was written from the released
repository (``liminghaoya/SIBP``) alone: **no paper, venue or arXiv id could be found**, so there
is no published equation, hyper-parameter table or result to check against. No code was copied.

Algorithm (one round; a schedule is several rounds)
---------------------------------------------------
A. Scores, from weights only (no data):

   - conv, weight ``W`` (C_out × C_in × k × k), output channel c:
     ``s_c = max_{i,j} |W[c,i,j]| / σ_{c,i}`` with σ_{c,i} the population std of the k² kernel
     values of input channel i — the largest standardised weight magnitude in the filter;
   - BN: ``r_c = |γ_c| / sqrt(running_var_c + eps)`` — the channel's gain in eval mode.

B. Thresholds from the ``threshold_layers`` set (the repo's "PGN" layers):
   ``T_conv`` = mean of s_c over all channels of those convs (pooled);
   ``T_bn`` = mean over those BN layers of their per-layer mean r_c.

C. In **every** scored conv/BN layer (statistics within the layer, unbiased std):
   prune conv channel c if ``s_c > mean + conv_coef · T_conv · std`` (zero its filter; a conv bias
   is kept, as released); prune BN channel c if ``r_c > mean + u · T_bn · std`` (zero γ_c and β_c).

D. Fine-tune every parameter with cross-entropy: SGD lr 0.01, momentum 0.9, weight decay 1e-4,
   batch 256, constant LR, the study's augmentation (``crop_pad``/``flip``), ``epochs`` passes
   over the clean budget, through ``training.fit`` (its ``after_step`` hook holds the hard mask).

``u`` and ``epochs`` (and ``conv_coef``) may be lists: round j re-scores the model left by round
j − 1 with ``u[j]``, prunes, and fine-tunes ``epochs[j]`` epochs; a scalar is used in every round.

Deviations from the released code, and why
------------------------------------------
1. **One attack-agnostic default** (``u = 1.9``, ``epochs = 10``). The repo ships u and epochs
   hand-tuned per attack and dataset (``SIBP_config.py``), i.e. with attack knowledge a defender
   does not have. 1.9 is the most frequent value in that file (3 of the 6 CIFAR-10 entries:
   badnet, blend and trojan's first round; the CIFAR-10 values span 1.2–2.2); it was fixed
   before any evaluation here and not tuned on test data. With T_bn ≈ 1.65 (our compact CNNs)
   u = 1.9 means "BN gain more than ≈ 3 std above its layer mean", which rarely fires.
   Epochs: the repo fine-tunes 5–7 epochs of 1,000 images at batch 256 (≈ 20–28 SGD steps);
   10 epochs of our 600-image budget is 30 steps (≈ 6,000 images), the same order of work and
   a few seconds on a CPU.
2. **The layer set is a parameter** (``threshold_layers``: ``"all"`` or a list of module names
   or fnmatch patterns). The repo hard-codes VGG-16-BN names and silently falls back to T = 1
   when none matches (any ResNet). Here a pattern that matches nothing, or a set without any
   conv (or any BN) layer, is an error, and the default is every scored conv/BN layer: non-VGG
   models have no published PGN set, and "all" needs no attack knowledge.
3. **σ = 0.** 1×1 convs (k² = 1; e.g. PreAct-ResNet shortcuts) have σ ≡ 0, which made the
   repo's score inf/nan and silently disabled pruning there; here they are **skipped**
   explicitly (not scored, not pruned, not in T_conv) and listed in ``info``. In a k × k kernel,
   an input-channel slice with σ = 0 (all values equal, e.g. an already zeroed filter)
   contributes Z = 0: no value stands out of a constant kernel.
4. **BN eps.** ``r_c`` uses ``running_var + eps`` (the module's own eps), so a channel whose
   variance collapsed (its input filter was pruned) gives a finite score, not inf.
5. **Conv and BN coefficients are separate parameters** (``conv_coef``, default 0.5 as
   released; ``u``). The repo's "u" is only the BN coefficient.
6. **Hard mask** (``hard_mask``, default **true**): after every SGD step the pruned conv
   filters and BN γ/β are set back to zero, so fine-tuning cannot regrow the channels the
   inspection flagged. The repo lets them regrow (``hard_mask: false`` reproduces that; then
   every round re-scores all channels and re-zeroes whatever it flags). Rationale: the short
   fine-tuning is there to recover clean accuracy around the pruned network, and regrowing a
   flagged channel undoes the pruning with no clean-data signal that this is safe. Regrowth is
   also partly an artefact: a zeroed filter in front of a BN gives that BN a batch variance of
   0, whose backward pass scales the filter's gradient by 1/sqrt(eps).
7. **Later rounds ignore channels already pruned** (hard mask only): they are excluded from the
   layer statistics and thresholds, because a dead channel's score (0 for a zeroed filter,
   |γ|/sqrt(eps) for a BN whose input died) would distort the mean and std.
8. Seeded and deterministic (the repo's seeding is commented out): fine-tuning batches and
   augmentation come from ``gen``. MultiStepLR milestones are dropped: as released they are
   never reached, so the LR is constant anyway.

``sibp_released`` (declared in ``backdoor.schema.defenses``) is ``defense.py::SIBP`` +
``fine_training.py`` as released, with ``SIBP_config.py``'s CIFAR-10 badnet entry (u 1.9, 7 epochs;
its blend entry is 5 epochs: set ``epochs: 5`` for that reading): ``threshold_layers: released``
pools T over the hard-coded VGG-16-BN names ``features.12`` … ``features.38`` and falls back to
T_conv = T_bn = 1 when none exists (every model of the study), so a conv filter is pruned when
s_c > mean + 0.5·std of its layer; r_c = |γ|/sqrt(running_var) without eps; no hard mask (pruned
channels may regrow); crop padding 4. Fixes needed to run: the ``ACF`` import, the hard-coded
paths and renames, and the seeding (methods.md §5.8) do not apply here; 1×1 convs (σ ≡ 0, inf/nan
scores that prune nothing as released) are skipped, which prunes nothing either; the fine-tuning uses
the study's clean budget (600 images, the README says 1,000).

Nothing here reads test data or the attack: identification uses weights only, fine-tuning uses
the clean budget only.

What we observed (Fashion-MNIST, compact CNN, 600 clean images; not used to set defaults)
------------------------------------------------------------------------------------------
The defaults prune ≈ 9–10 conv filters and no BN channel, and leave ASR above 90 % for BadNets
and Blend. The channels whose activations the trigger shifts most (measured on the attacker's
poisoned training images, for diagnosis only) sit mid-pack in both weight rankings: a benign
model has as many "outlier" filters, i.e. the weight statistics do not single out the backdoor
channels of these models.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

import torch
from torch import nn

from ..schema.defenses import SIBP
from ..training import fit
from .base import fit_config
from .channels import ChannelMask

# -- Step A: scores ---------------------------------------------------------------------------------

def conv_scores(weight: torch.Tensor) -> torch.Tensor:
    """s_c = max over (input channel, kernel position) of |W| / σ, σ the population std of the k²
    values of one input channel's kernel; slices with σ = 0 contribute 0."""
    w = weight.detach().float().flatten(2)  # (C_out, C_in/groups, k²)
    sigma = w.std(dim=2, unbiased=False, keepdim=True)
    z = torch.where(sigma > 0, w.abs() / sigma.clamp_min(torch.finfo(w.dtype).tiny), torch.zeros_like(w))
    return z.flatten(1).amax(dim=1)


def bn_scores(bn: nn.BatchNorm2d, eps: bool = True) -> torch.Tensor:
    """r_c = |γ_c| / sqrt(running_var_c + eps) (``eps=False``: the release's |γ_c| / sqrt(running_var_c))."""
    var = bn.running_var.detach().float()
    return bn.weight.detach().float().abs() / torch.sqrt(var + bn.eps if eps else var)


def scored_layers(model: nn.Module) -> tuple[dict[str, nn.Conv2d], dict[str, nn.BatchNorm2d], list[str]]:
    """(convs with k² > 1, affine BNs with running stats, skipped convs) by qualified name."""
    convs, bns, skipped = {}, {}, []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d):
            if mod.weight[0, 0].numel() > 1:
                convs[name] = mod
            else:
                skipped.append(name)
        elif isinstance(mod, nn.BatchNorm2d) and mod.affine and mod.running_var is not None:
            bns[name] = mod
    return convs, bns, skipped


# The release's hard-coded "PGN" layers: module names of backdoor-toolbox's VGG-16-BN.
RELEASED_PGN = tuple(f"features.{i}" for i in range(12, 39))


def select_layers(names: list[str], spec) -> list[str]:
    """The names matched by ``spec`` ("all", "released" or a list of names / fnmatch patterns)."""
    if spec in (None, "all"):
        return list(names)
    if spec == "released":  # exact VGG names (under the study's model wrapper); may match nothing
        return [n for n in names if any(n == g or n.endswith("." + g) for g in RELEASED_PGN)]
    if isinstance(spec, str):
        spec = [spec]
    chosen = []
    for pattern in spec:
        hits = [n for n in names if fnmatchcase(n, pattern)]
        if not hits:
            raise ValueError(f"sibp.threshold_layers: {pattern!r} matches no conv/BN layer; "
                             f"scored layers: {', '.join(names)}")
        chosen += [n for n in hits if n not in chosen]
    return chosen


# -- Steps B and C: thresholds and pruning ---------------------------------------------------------

def _outliers(scores: torch.Tensor, alive: torch.Tensor, coef: float, t: float) -> torch.Tensor:
    """Channels (among ``alive``) whose score exceeds mean + coef · t · std of the live channels."""
    live = scores[alive]
    if live.numel() < 2:
        return torch.zeros_like(alive)
    return alive & (scores > live.mean() + coef * t * live.std())


def inspect(model: nn.Module, u: float, conv_coef: float = 0.5, threshold_layers="all",
            masks: dict[str, torch.Tensor] | None = None) -> dict:
    """Steps A–C without touching the model: thresholds and the channels to prune per layer.

    ``masks`` (name → bool tensor, True = already pruned) removes dead channels from statistics.
    """
    masks = masks or {}
    released = threshold_layers == "released"
    convs, bns, skipped = scored_layers(model)
    names = list(convs) + list(bns)
    chosen = set(select_layers(names, threshold_layers))

    def alive(name, n):
        return ~masks[name] if name in masks else torch.ones(n, dtype=torch.bool)

    for kind, layers in (("conv", convs), ("BN", bns)):
        if layers and not chosen & set(layers) and not released:
            raise ValueError(f"sibp.threshold_layers selects no {kind} layer, so T_{kind.lower()} "
                             "is undefined (the released code silently used 1); add one of: "
                             + ", ".join(layers))
    s = {n: conv_scores(m.weight).cpu() for n, m in convs.items()}
    r = {n: bn_scores(m, eps=not released).cpu() for n, m in bns.items()}
    conv_pool = [s[n][alive(n, len(s[n]))] for n in convs if n in chosen]
    bn_means = [r[n][alive(n, len(r[n]))].mean() for n in bns if n in chosen]
    conv_pool = torch.cat(conv_pool) if conv_pool else torch.empty(0)
    t_conv = conv_pool.mean().item() if conv_pool.numel() else (1.0 if released else float("nan"))
    bn_means = [v for v in bn_means if torch.isfinite(v)]
    t_bn = torch.stack(bn_means).mean().item() if bn_means else (1.0 if released else float("nan"))
    prune = {**{n: _outliers(s[n], alive(n, len(s[n])), conv_coef, t_conv) for n in convs},
             **{n: _outliers(r[n], alive(n, len(r[n])), u, t_bn) for n in bns}}
    return {"t_conv": t_conv, "t_bn": t_bn, "prune": prune, "skipped": skipped,
            "threshold_layers": [n for n in names if n in chosen],
            "kinds": {**{n: "conv" for n in convs}, **{n: "bn" for n in bns}}}


def channel_mask(model: nn.Module, masks: dict[str, torch.Tensor]) -> ChannelMask:
    """The hard mask of the pruned channels (True = pruned): conv filters (a conv bias is kept, as
    released) and BN γ/β; calling it zeroes them."""
    modules = dict(model.named_modules())
    mask = ChannelMask()
    for name, sel in masks.items():
        mod = modules[name]
        if isinstance(mod, nn.BatchNorm2d):
            mask.add(None, mod, sel)
        else:
            mask.add(mod, None, sel, conv_bias=False)
    return mask


def _schedule(params: dict) -> list[tuple[float, float, int]]:
    def as_list(key):
        v = params[key]
        return list(v) if isinstance(v, (list, tuple)) else [v]

    us, coefs, epochs = as_list("u"), as_list("conv_coef"), as_list("epochs")
    rounds = max(len(us), len(coefs), len(epochs))
    for key, vals in (("u", us), ("conv_coef", coefs), ("epochs", epochs)):
        if len(vals) not in (1, rounds):
            raise ValueError(f"sibp.{key}: {len(vals)} values but the schedule has {rounds} rounds; "
                             "give one value or one per round")
    pick = lambda vals, j: vals[j if len(vals) > 1 else 0]  # noqa: E731
    out = [(float(pick(us, j)), float(pick(coefs, j)), int(pick(epochs, j))) for j in range(rounds)]
    if any(e < 0 for _, _, e in out):
        raise ValueError(f"sibp.epochs must be ≥ 0, got {params['epochs']}")
    return out


# -- Step D and the rounds -------------------------------------------------------------------------

def purify(model, clean, params, gen, device):
    p = SIBP.resolve(params)
    model.to(device)
    hard = bool(p.hard_mask)
    masks: dict[str, torch.Tensor] = {}
    rounds_info = []
    for j, (u, coef, epochs) in enumerate(_schedule(p)):
        found = inspect(model, u, coef, p.threshold_layers, masks if hard else None)
        # hard mask: dead channels are out of the statistics, so everything flagged is new;
        # soft: every channel is re-scored and whatever is flagged is zeroed again (as released)
        new = found["prune"]
        for n, m in new.items():
            masks[n] = masks[n] | m if n in masks else m.clone()
        channel_mask(model, new)()
        record = {
            "round": j, "u": u, "conv_coef": coef, "epochs": epochs,
            "t_conv": found["t_conv"], "t_bn": found["t_bn"],
            "pruned": {n: torch.nonzero(m).flatten().tolist() for n, m in new.items() if m.any()},
        }
        for kind in ("conv", "bn"):
            record[f"pruned_{kind}"] = sum(len(v) for n, v in record["pruned"].items()
                                           if found["kinds"][n] == kind)
        if epochs > 0:
            after = channel_mask(model, masks) if hard else None
            result = fit(model, clean, fit_config(p, epochs=epochs, iterations=None), gen=gen,
                         device=device, after_step=after, desc=f"sibp round {j + 1}")
            record.update(steps=result.steps, final_loss=result.final_loss)
        rounds_info.append(record)
    info = {
        "rounds": rounds_info,
        "hard_mask": hard,
        "skipped_convs": found["skipped"],
        "threshold_layers": found["threshold_layers"],
        # distinct channels pruned in any round (with hard_mask: false they may have regrown)
        "pruned_conv": sum(int(m.sum()) for n, m in masks.items() if found["kinds"][n] == "conv"),
        "pruned_bn": sum(int(m.sum()) for n, m in masks.items() if found["kinds"][n] == "bn"),
        "scored_channels": sum(len(m) for m in found["prune"].values()),
    }
    return model, info
