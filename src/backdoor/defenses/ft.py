"""``ft``: vanilla fine-tuning of every parameter on the clean budget (the simplest baseline).

SGD with momentum and a cosine schedule over ``iterations`` batches drawn with replacement, with
the same on-device augmentation as training. BackdoorBench fine-tunes for epochs over 5% of the
training data; with a 1% budget we count iterations instead so the cost does not depend on the
budget.
"""

from __future__ import annotations

from ..schema.defenses import FT
from ..training import fit
from .base import fit_config


def purify(model, clean, params, gen, device):
    p = FT.of(params)
    result = fit(model, clean, fit_config(p), gen=gen, device=device, desc="ft")
    return model, {"steps": result.steps, "final_loss": result.final_loss}
