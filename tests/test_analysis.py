"""Analyses: λ_max and Tr(H) against the exact Hessian of a tiny model (seeded, eval mode, fp32); where triggers land."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from backdoor.analysis import smoothness as S
from backdoor.augment import to_float
from backdoor.device import autocast
from conftest import tiny_data


def tiny_model():
    """conv · BN · ReLU · global pool · linear: ≈ 40 parameters, so the exact Hessian is instant."""
    from backdoor.models.base import Classifier

    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(1, 3, 3, bias=False), nn.BatchNorm2d(3), nn.ReLU(inplace=True),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 3))
    with torch.no_grad():
        body[1].weight.uniform_(0.5, 1.5)
        body[1].bias.uniform_(-0.2, 0.2)
        body[1].running_var.uniform_(0.5, 1.5)
    return Classifier(body, [0.5], [0.5])


def exact_hessian(model, images, labels) -> torch.Tensor:
    from torch.func import functional_call

    model.eval()
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    x = to_float(images)

    def loss(theta):
        parts, start = {}, 0
        for n, shape in zip(names, shapes):
            parts[n] = theta[start:start + shape.numel()].view(shape)
            start += shape.numel()
        return F.cross_entropy(functional_call(model, parts, (x,)), labels)

    return torch.autograd.functional.hessian(loss, flat, vectorize=True)


def data():
    d = tiny_data(24, seed=1, size=8)
    return d.x, d.y % 3


@pytest.fixture(scope="module")
def exact():
    model, (x, y) = tiny_model(), data()
    return exact_hessian(model, x, y)


def test_power_iteration_and_hutchinson_match_the_exact_hessian(exact):
    model, (x, y), h = tiny_model(), data(), exact
    eig = torch.linalg.eigvalsh(0.5 * (h + h.T))
    top = eig[eig.abs().argmax()].item()
    hvp = S.HessianVectorProduct(model, to_float(x), y)
    got, iters = S.lambda_max(hvp, torch.Generator().manual_seed(0), iterations=500, tol=1e-7)
    assert abs(got - top) < 1e-3 * abs(top), (got, top, iters)
    trace, se = S.hessian_trace(hvp, torch.Generator().manual_seed(0), probes=300)
    true = torch.trace(h).item()
    assert abs(trace - true) < 4 * se and se < 0.1 * abs(true), (trace, true, se)


def test_a_hessian_vector_product_is_the_exact_hessian_times_the_vector(exact):
    model, (x, y), h = tiny_model(), data(), exact
    hvp = S.HessianVectorProduct(model, to_float(x), y)
    v = hvp.rademacher(torch.Generator().manual_seed(3))
    got = torch.cat([t.flatten() for t in hvp(v)])
    assert torch.allclose(got, h @ torch.cat([t.flatten() for t in v]), rtol=1e-4, atol=1e-6)


def test_fixed_seed_gives_the_same_numbers_in_eval_mode_and_fp32_under_bf16():
    model, (x, y) = tiny_model(), data()
    model.train()
    bn = model.body[1]
    running = bn.running_mean.clone()
    a = S.smoothness(model, x, y, power_iterations=30, probes=5, seed=7)
    with autocast("bf16", "cpu"):
        b = S.smoothness(model, x, y, power_iterations=30, probes=5, seed=7)
    assert (a.lambda_max, a.trace_h, a.trace_h_se) == (b.lambda_max, b.trace_h, b.trace_h_se)
    assert model.training and torch.equal(bn.running_mean, running)
    c = S.smoothness(model, x, y, power_iterations=30, probes=5, seed=8)
    assert c.trace_h != a.trace_h and a.trace_probes == 5 and 1 <= a.power_iterations <= 30


def test_the_fixed_images_are_the_same_for_every_model_and_checked():
    train_x = torch.arange(50, dtype=torch.uint8).view(50, 1, 1, 1).expand(50, 1, 2, 2)
    train_y = torch.arange(50) % 10
    candidates = torch.arange(10, 50)
    x1, y1 = S.fixed_images(train_x, train_y, candidates, 8, seed=0)
    x2, _ = S.fixed_images(train_x, train_y, candidates, 8, seed=0)
    assert torch.equal(x1, x2) and len(x1) == 8 and (x1[:, 0, 0, 0] >= 10).all()
    try:
        S.fixed_images(train_x, train_y, candidates, 41, seed=0)
    except ValueError as err:
        assert "analysis.smoothness.images" in str(err)
    else:
        raise AssertionError("too many images must be refused")


def test_trigger_overlap_of_a_corner_patch_on_a_zero_background():
    from backdoor.analysis.trigger_overlap import trigger_overlap

    clean = torch.zeros(4, 1, 6, 6, dtype=torch.uint8)
    clean[:, :, 1:4, 1:4] = 100  # the object in the middle, zero background
    corner = clean.clone()
    corner[:, :, 4:, 4:] = 255
    r = trigger_overlap(clean, corner)
    assert r["changed"] == 4 / 36 and r["on_zero"] == 1.0 and r["active"] == 0.0 and r["images_active"] == 0.0
    center = clean.clone()
    center[:, :, 2:4, 2:4] = 255
    r = trigger_overlap(clean, center)
    assert r["on_zero"] == 0.0 and r["active"] == 1.0 and r["images_active"] == 1.0
