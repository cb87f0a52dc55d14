"""Loss-surface smoothness: the top Hessian eigenvalue λ_max and the Hessian trace Tr(H).

As FIP measured them (methods.md §2.8, PyHessian): the Hessian of the mean cross-entropy over one
fixed batch of clean training images with respect to every parameter, the model in eval mode (BN
uses its running statistics, so H is the Hessian of a fixed function). λ_max by power iteration on
Hessian-vector products, stopping when the Rayleigh quotient's relative change falls below ``tol``
(PyHessian's rule); Tr(H) by Hutchinson's estimator, the mean of vᵀHv over a fixed number of
Rademacher probes (E[vᵀHv] = Tr H), reported with its standard error — PyHessian instead stops when
two consecutive running means agree within ``tol``, which ends on a lucky probe as often as on a
settled mean. Always fp32: a Hessian in bf16 is mostly rounding error.

One gradient graph is built per model and every Hessian-vector product is a second backward through
it (≈ 2 backward passes each).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..augment import to_float
from ..device import fp32


@dataclass
class Smoothness:
    lambda_max: float
    trace_h: float
    trace_h_se: float  # standard error of the Hutchinson mean
    power_iterations: int
    trace_probes: int
    seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    return sum((x * y).sum() for x, y in zip(a, b))


class HessianVectorProduct:
    """v ↦ H v for the mean cross-entropy of ``model`` on (x, y), in eval mode, fp32."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        self.params = [p for p in model.parameters() if p.requires_grad]
        was_training = model.training
        model.eval()
        with fp32(x.device), torch.enable_grad():
            loss = F.cross_entropy(model(x), y)
            self.grads = torch.autograd.grad(loss, self.params, create_graph=True)
        model.train(was_training)

    def __call__(self, v: list[torch.Tensor]) -> list[torch.Tensor]:
        with fp32(v[0].device):
            return list(torch.autograd.grad(self.grads, self.params, grad_outputs=v, retain_graph=True))

    def rademacher(self, gen: torch.Generator) -> list[torch.Tensor]:
        return [torch.randint(0, 2, p.shape, generator=gen, device=gen.device).to(p).mul_(2).sub_(1)
                for p in self.params]


def lambda_max(hvp: HessianVectorProduct, gen: torch.Generator, iterations: int = 100,
               tol: float = 1e-3) -> tuple[float, int]:
    """The eigenvalue of largest magnitude of H (power iteration from a Rademacher start)."""
    v = hvp.rademacher(gen)
    norm = _dot(v, v).sqrt()
    v = [t / norm for t in v]
    eigenvalue = None
    for i in range(1, iterations + 1):
        hv = hvp(v)
        new = _dot(hv, v).item()  # Rayleigh quotient of the unit vector v
        norm = _dot(hv, hv).sqrt()
        if norm == 0:
            return 0.0, i
        v = [t / norm for t in hv]
        if eigenvalue is not None and abs(new - eigenvalue) <= tol * (abs(eigenvalue) + 1e-12):
            return new, i
        eigenvalue = new
    return eigenvalue, iterations


def hessian_trace(hvp: HessianVectorProduct, gen: torch.Generator, probes: int = 20) -> tuple[float, float]:
    """Hutchinson: the mean of vᵀHv over ``probes`` Rademacher vectors v, and its standard error."""
    if probes < 1:
        raise ValueError(f"probes must be ≥ 1, got {probes}")
    samples = torch.tensor([_dot(hvp(v), v).item() for v in (hvp.rademacher(gen) for _ in range(probes))],
                           dtype=torch.float64)
    se = samples.std().item() / probes ** 0.5 if probes > 1 else float("nan")
    return samples.mean().item(), se


def fixed_images(train_x: torch.Tensor, train_y: torch.Tensor, candidates: torch.Tensor, n: int,
                 seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same ``n`` clean training images for every model: a seeded draw from ``candidates``."""
    if n > len(candidates):
        raise ValueError(f"analysis.smoothness.images = {n} exceeds the {len(candidates)} candidate images")
    order = torch.randperm(len(candidates), generator=torch.Generator().manual_seed(seed))
    idx = candidates[order[:n]].sort().values
    return train_x[idx], train_y[idx]


def smoothness(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, power_iterations: int = 30,
               probes: int = 20, tol: float = 1e-2, seed: int = 0,
               device: torch.device | str = "cpu") -> Smoothness:
    """λ_max and Tr(H) (NaN with ``probes=0``) of ``model``'s cross-entropy on the uint8 ``images``."""
    start = time.perf_counter()
    model = model.to(device)
    x, y = to_float(images.to(device)), labels.to(device)
    hvp = HessianVectorProduct(model, x, y)
    gen = torch.Generator(device=x.device).manual_seed(seed)  # probes drawn where the model is
    top, iters = lambda_max(hvp, gen, power_iterations, tol)
    trace, se = hessian_trace(hvp, gen, probes) if probes else (float("nan"), float("nan"))
    return Smoothness(lambda_max=top, trace_h=trace, trace_h_se=se, power_iterations=iters, trace_probes=probes,
                      seconds=time.perf_counter() - start)
