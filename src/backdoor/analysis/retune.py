"""The re-tuning attack (RA; Min, Qin, Zhang, Shen & Cheng, NeurIPS 2024, arXiv 2410.09838).

A purified model is fine-tuned on the defender's clean set plus k poisoned training images of its
attack, then scored: its ASR is P-ASR (post-purification ASR). A purification that only hides the
backdoor re-learns it from a handful of poisoned images; a model that never had one (the benign
model, re-tuned with the same images: the floor) does not.

- the clean set is the draw the defense saw: ``steps.select_clean`` with ``steps.clean_generator``
  of the run (training seed, defense seed, budget);
- the k poisoned images are drawn without replacement from the attack's poisoned training images
  (``poison_idx`` of its poisoned file, as ``steps.training_set`` builds them: triggered, with the
  labels the attacker gave them), seeded by (attack, k, run, ``seed``), so every defense of a run and
  the benign floor get the same images;
- plain fine-tuning of every parameter through ``training.fit``: SGD, momentum 0.9, constant rate,
  ``epochs`` shuffled passes, cross-entropy, then ``metrics.evaluate``.

Defaults: the authors' release (``fine_tune/ft_poison.py``, README): k = 5, 5 epochs, lr 0.01, SGD
momentum 0.9, no weight decay, no schedule, batch 128. Deviations: the release *replaces* k of the
clean images by the poisoned ones (the set keeps its size), we add them (600 + 5 instead of 600:
the brief's and the paper's wording, and < 1% apart); the release augments the clean images only,
``fit`` augments whole batches, so we augment nothing by default (``crop_pad: 0``, ``flip: false``):
a flip would move a corner patch and weaken the attack the release runs.

``Params.check`` refuses a k larger than round(poison_rate × attacker images) of any study attack
before any job; for clean-label attacks the count is at most the target class's images, known only
from the data, so :func:`poisoned_images` refuses it when it runs.
"""

from __future__ import annotations

import time

import torch

from ..data.tensors import TensorSet
from ..schema.study import Retune


def poisoned_images(prepared: dict, poisoned: dict, k: int, gen: torch.Generator) -> TensorSet:
    """``k`` of the attack's poisoned training images (triggered, attacker's labels), drawn with ``gen``."""
    from ..steps import training_set

    pool = poisoned["poison_idx"]
    if k < 0:
        raise ValueError(f"analysis.retune.poisoned = {k}: must be ≥ 0")
    if k > len(pool):
        raise ValueError(f"analysis.retune.poisoned = {k}: attack {poisoned.get('attack')!r} poisoned only "
                         f"{len(pool)} training images")
    chosen = pool[torch.randperm(len(pool), generator=gen)[:k]].sort().values
    return training_set(prepared, poisoned).subset(chosen)


def retune(model, clean: TensorSet, extra: TensorSet, settings, gen: torch.Generator, device="cpu"):
    """Fine-tune ``model`` in place on ``clean`` ∪ ``extra`` (every parameter); returns fit's result."""
    from ..training import FitConfig, fit

    s = Retune.of(settings)
    data = TensorSet(torch.cat([clean.x, extra.x]), torch.cat([clean.y, extra.y]))
    cfg = FitConfig(lr=s.lr, epochs=s.epochs, batch_size=s.batch_size, momentum=s.momentum, schedule="constant",
                    crop_pad=s.crop_pad, flip=s.flip)
    return fit(model, data, cfg, gen=gen, device=device, desc="retune")


def retune_attack(prepared: dict, poisoned: dict, model, *, budget: int, seed: int, defense_seed: int = 0,
                  settings=None, clean_sampling: str = "random", device="cpu", precision: str = "fp32"):
    """The re-tuning attack on a copy of ``model`` (purified, or the benign floor) in run (``seed``,
    ``defense_seed``). Returns (re-tuned copy, record): the record holds ACC, ASR (P-ASR) and RA after
    re-tuning as ``p_acc``, ``p_asr``, ``p_ra`` (percent) and what was used (JSON-able)."""
    from ..device import autocast
    from ..metrics import evaluate
    from ..models import copy_model
    from ..steps import clean_generator, seed_generator, select_clean, test_sets

    s = Retune.of(settings)
    device = torch.device(device)
    clean = select_clean(prepared, budget, clean_sampling, clean_generator(budget, seed, defense_seed))
    parts = ("retune", poisoned["attack"], s.poisoned, seed, defense_seed, s.seed)
    extra = poisoned_images(prepared, poisoned, s.poisoned, seed_generator(*parts, "draw"))
    tuned = copy_model(model).to(device)
    start = time.perf_counter()
    with autocast(precision, device):
        result = retune(tuned, clean, extra, s, seed_generator(*parts, "fit"), device)
        scores = evaluate(tuned, *test_sets(prepared, poisoned))
    return tuned, {"p_acc": scores["acc"], "p_asr": scores["asr"], "p_ra": scores["ra"], "poisoned": s.poisoned,
                   "n_clean": len(clean), "steps": result.steps, "final_loss": result.final_loss,
                   "retune_s": time.perf_counter() - start}
