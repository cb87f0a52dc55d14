"""Checkpoints along backdoor training and along a purification (FIP's Fig. 1 and Fig. 3).

A ``Trace`` watches every optimiser step of ``training.fit`` on one model (``training.observe_steps``)
and keeps a copy of its weights at the steps of ``schedule``: log-spaced (1, 2, 4, …) below ``every``,
then every ``every`` steps, plus the step-0 model and the final one. Steps count across all the
``fit`` calls of a run (SIBP's rounds, FMP's pruning then fine-tuning). A kept copy is the plain
architecture's state dict, with each parametrised weight (NFT's masks, Fast FIP's spectral shifts)
at its current value, so every checkpoint loads with ``models.load_checkpoint``'s spec; the
model being trained is only read, so the run's result is the same with and without a trace.
"""

from __future__ import annotations

import torch
from torch import nn

from ..training import observe_steps


def keep(step: int, every: int) -> bool:
    """Whether ``step`` (≥ 0) is on the schedule: 0, the powers of two below ``every``, multiples of it."""
    if step == 0 or step % every == 0:
        return True
    return step < every and step & (step - 1) == 0


def schedule(total: int, every: int) -> list[int]:
    """The kept steps of a run of ``total`` steps (the last one always)."""
    return sorted({s for s in range(total + 1) if keep(s, every)} | {total})


def plain_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s weights as the plain architecture holds them: each parametrised tensor as its
    current value (``module.weight``), the parametrisations' own tensors left out. Reads only."""
    modules = dict(model.named_modules())
    state = {}
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if ".parametrizations." not in f".{key}":
                state[key] = value.detach().cpu().clone()
                continue
            prefix, _, rest = f".{key}".partition(".parametrizations.")
            name, _, tail = rest.partition(".")
            if tail == "original":
                state[f"{prefix}.{name}".lstrip(".")] = getattr(modules[prefix.lstrip(".")], name).detach().cpu().clone()
    return state


class Trace:
    """Checkpoints of ``model`` at ``schedule(·, every)``; use as ``with trace.watching(): ...``."""

    def __init__(self, model: nn.Module, every: int):
        if every < 1:
            raise ValueError(f"checkpoint interval {every}: give a positive number of steps")
        self.model, self.every, self.step = model, int(every), 0
        self.steps: list[int] = [0]
        self.states: list[dict[str, torch.Tensor]] = [plain_state(model)]

    def _observe(self, model: nn.Module) -> None:
        if model is not self.model:  # an auxiliary model a defense trains (none of the seed methods)
            return
        self.step += 1
        if keep(self.step, self.every):
            self.steps.append(self.step)
            self.states.append(plain_state(model))

    def watching(self):
        return observe_steps(self._observe)

    def finish(self, final: nn.Module) -> None:
        """Keep the run's result (the model the step returns) as the last checkpoint."""
        state = plain_state(final)
        if self.steps[-1] == self.step:
            self.states[-1] = state  # the same step; the returned model may be folded or re-masked
        else:
            self.steps.append(self.step)
            self.states.append(state)

    def record(self, spec: dict, **extra) -> dict:
        return {"spec": spec, "steps": self.steps, "states": self.states, "every": self.every,
                "total_steps": self.step, **extra}
