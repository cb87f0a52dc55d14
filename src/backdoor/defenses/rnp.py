"""``rnp``: Reconstructive Neuron Pruning (Li et al., ICML 2023), clean-room reimplementation.

1. **Unlearn.** A copy of the backdoored model is trained by gradient *ascent* on the clean data
   (SGD on −CE, lr 0.01, momentum 0.9, weight decay 5e-4, batch 128, BN in train mode) until the
   accuracy of the current batch falls to ``clean_threshold`` (0.2) or ``unlearn_iterations`` (200)
   is reached. (The paper checks the accuracy accumulated over an epoch; with a 480-image training
   part an epoch-long window lagged by ~4 steps during which the unbounded ascent loss exploded —
   recovery then started from CE ≈ 100 and never recovered — so the check is per batch.) Clean
   features are destroyed; the backdoor features, which clean data barely exercise, survive.
2. **Recover.** The unlearned copy is frozen; a mask m ∈ [0, 1] (init 1) per BatchNorm2d channel
   (the same mask hooks as ``anp``) is learned by minimising CE on the clean data (SGD lr 0.2,
   momentum 0.9, constant lr, ``recover_iterations`` 100 ≈ the paper's 20 epochs of a 1% budget at
   batch 128). Recovering clean accuracy re-enables clean neurons; neurons that were only
   needed by the backdoor keep low masks.
3. **Prune** the ORIGINAL model: the selected low-mask channels get γ = β = 0.

Selection — validation only: the clean budget is split once (``val_fraction`` 0.2, held out from
both unlearning and recovery). Default (``prune_by: number``): the largest number of lowest-mask
channels (1, 2, …, ``max_prune``·total, ``max_prune`` 0.5, stopping at the first failure) whose
pruning keeps the original model's validation accuracy ≥ (1 − ``max_acc_drop``)·(its unpruned
validation accuracy). ``prune_by: threshold``: t is the largest value
of ``thresholds`` (0, 0.05, …, 0.9) such that every threshold up to it keeps that accuracy (the
same rule as ``anp``), channels with m < t are pruned. ``threshold: <float>`` fixes t instead (the
paper's threshold pruning uses 0.2 by default).

Both loops run through ``training.fit``. The unlearning loop stops early through ``fit``'s
``after_step`` hook (returning True); the momentum state is discarded with the copy.

Deviations: while masks are learned, BN normalises with batch statistics and leaves the running
statistics untouched (``recover_batch_stats`` true; the released code uses train mode, which also
updates them; false: the unlearned model's running statistics); γ and β zeroed on pruning (not
only the mask on γ); iteration counts instead of epochs so the cost does not depend on the budget;
the number of pruned channels (or the threshold) is selected on a validation split rather than
fixed; augmentation (crop 2, flip) as in ``ft``. BackdoorBench's RNP runs with 1% clean data — the
same as our 600-image budget.

Settings (``defenses.<id>``) and their defaults: ``backdoor.schema.defenses.RNP``.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from ..models import copy_model
from ..schema.defenses import RNP
from ..training import fit
from .anp import BNMasks, frozen, prune_channels, prune_info, select_threshold
from .base import fit_config, split_validation
from .channels import largest_passing

def lowest(masks: dict[str, torch.Tensor], count: int) -> dict[str, torch.Tensor]:
    """The ``count`` channels with the lowest mask values over all layers (stable order on ties)."""
    names = [n for n, m in masks.items() for _ in range(len(m))]
    local = [i for m in masks.values() for i in range(len(m))]
    order = torch.sort(torch.cat(list(masks.values())), stable=True).indices[:count].tolist()
    sel = {n: torch.zeros(len(m), dtype=torch.bool) for n, m in masks.items()}
    for k in order:
        sel[names[k]][local[k]] = True
    return sel


def select_count(model, masks, val, max_prune: float, max_acc_drop: float):
    """Largest number of lowest-mask channels (1, 2, …, max_prune·total, stopping at the first
    failure) whose pruning keeps validation accuracy ≥ (1 − max_acc_drop)·base."""
    total = sum(len(m) for m in masks.values())
    chosen, curve, base = largest_passing(
        model, val, range(1, int(max_prune * total) + 1),
        lambda count: prune_channels(model, lowest(masks, count)), max_acc_drop)
    return (0 if chosen is None else chosen), {str(count): acc for count, acc in curve}, base


def purify(model, clean, params, gen, device):
    p = RNP.of(params)
    start = time.perf_counter()
    train, val = split_validation(clean, p.val_fraction, gen)
    model.to(device)
    unlearned = copy_model(model)

    # 1. unlearn: gradient ascent until the running clean accuracy drops to clean_threshold
    hits: list[float] = []
    state = {"stopped_early": False}

    def ascent(m, x, y, step):
        logits = m(x)
        hits.append((logits.argmax(1) == y).float().mean().item())
        return -F.cross_entropy(logits, y)

    def stop_check(step):
        state["stopped_early"] = hits[-1] <= p.clean_threshold
        return state["stopped_early"]

    cfg = fit_config(p, lr=p.unlearn_lr, weight_decay=p.unlearn_weight_decay,
                     iterations=p.unlearn_iterations, schedule="constant")
    unlearn = fit(unlearned, train, cfg, gen=gen, device=device, loss_fn=ascent, after_step=stop_check,
                  desc="rnp-unlearn")
    unlearn_acc = hits[-1]

    # 2. recover: masks on the frozen unlearned model
    masker = BNMasks(unlearned, batch_stats=p.recover_batch_stats)

    def recover(m, x, y, step):
        m.eval()
        return F.cross_entropy(m(x), y)

    cfg = fit_config(p, iterations=p.recover_iterations, schedule="constant", weight_decay=0.0)
    try:
        with frozen(unlearned):
            result = fit(unlearned, train, cfg, gen=gen, device=device, params=masker.mask_list(),
                         loss_fn=recover, after_step=lambda s: masker.clip(), desc="rnp-recover")
    finally:
        masker.detach()
    masks = masker.values()
    del unlearned

    # 3. prune the original model
    model.eval()
    if p.threshold is not None:
        threshold, curve, base = float(p.threshold), {}, None
        sel = {n: m < threshold for n, m in masks.items()}
    elif p.prune_by == "threshold":
        threshold, curve, base = select_threshold(model, masks, val, p.thresholds, p.max_acc_drop)
        sel = {n: m < threshold for n, m in masks.items()}
    else:
        threshold = None
        count, curve, base = select_count(model, masks, val, p.max_prune, p.max_acc_drop)
        sel = lowest(masks, count)
    prune_channels(model, sel)
    info = prune_info(masks, threshold if threshold is not None else -1.0)
    info["layers"] = {n: torch.nonzero(v).flatten().tolist() for n, v in sel.items()}
    info["pruned_total"] = int(sum(int(v.sum()) for v in sel.values()))
    info.update(unlearn_steps=unlearn.steps, unlearn_stopped_early=state["stopped_early"],
                unlearn_running_acc=unlearn_acc, recover_steps=result.steps,
                recover_final_loss=result.final_loss, val_acc_unpruned=base,
                val_acc_by_threshold=curve, val_size=len(val), seconds=time.perf_counter() - start)
    return model, info
