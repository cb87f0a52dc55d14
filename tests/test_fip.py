"""FIP and Fast FIP: the objective's pieces, the spectral-shift parametrisation, the contract."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from backdoor.data.tensors import TensorSet
from backdoor.defenses import fast_fip, fip, get_defense
from backdoor.models import build_model

QUICK = {"iterations": 6, "batch_size": 8, "trace_every": 2, "probes": 4}


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model("cnn", 1, 10, [0.5], [0.5], width=4)
    with torch.no_grad():  # non-trivial BN statistics and affine parameters
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


def random_set(n: int = 32, size: int = 16, seed: int = 0) -> TensorSet:
    g = torch.Generator().manual_seed(seed)
    return TensorSet(torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=g),
                     torch.randint(0, 10, (n,), generator=g))


def batch_gradient(model: nn.Module, data: TensorSet, create_graph: bool = True):
    params = list(model.parameters())
    logits = model(data.x.float() / 255)
    ll = fip.log_likelihood(logits, data.y)
    return params, torch.autograd.grad(ll, params, create_graph=create_graph)


# -- Hutchinson trace ----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_hutchinson_equals_the_explicit_quadratic_form(kind):
    g = [torch.randn(3, 2), torch.randn(4)]
    flat = torch.cat([t.flatten() for t in g])
    fisher = torch.outer(flat, flat)  # rank-1 empirical Fisher g gᵀ
    est = fip.hutchinson_trace(g, 5, torch.Generator().manual_seed(1), kind)
    gen = torch.Generator().manual_seed(1)  # replay the same probes
    v = torch.cat([fip._probe(t, 5, kind, gen).flatten(1) for t in g], 1)  # (5, 10)
    explicit = torch.einsum("ki,ij,kj->k", v, fisher, v).mean()
    assert torch.allclose(est, explicit, rtol=1e-5)
    if kind == "rademacher":
        assert set(v.unique().tolist()) == {-1.0, 1.0}


def test_hutchinson_is_unbiased_for_the_fisher_trace_of_a_small_model():
    model = tiny_model()
    params, g = batch_gradient(model, random_set(16))
    exact = sum(t.square().sum() for t in g)  # Tr(g gᵀ) = ‖g‖²
    est = fip.hutchinson_trace(g, 4000, torch.Generator().manual_seed(0))
    assert abs(est.item() - exact.item()) < 0.05 * exact.item()
    # differentiable: its gradient approaches ∇‖g‖² = 2 H g
    grad_est = torch.autograd.grad(est, params, retain_graph=True)
    grad_exact = torch.autograd.grad(exact, params)
    num = sum((a - b).square().sum() for a, b in zip(grad_est, grad_exact)).sqrt()
    den = sum(b.square().sum() for b in grad_exact).sqrt()
    assert num < 0.2 * den  # the gradient's error shrinks like 1/√m too, from a larger start


def test_hutchinson_on_a_quadratic_log_likelihood():
    torch.manual_seed(0)
    a = torch.randn(6, 6)
    a = a @ a.T
    b, theta = torch.randn(6), torch.randn(6, requires_grad=True)
    ll = -0.5 * theta @ a @ theta + b @ theta
    (g,) = torch.autograd.grad(ll, theta, create_graph=True)
    est = fip.hutchinson_trace([g], 20000, torch.Generator().manual_seed(0))
    closed = (b - a @ theta).square().sum()
    assert torch.allclose(est, closed, rtol=0.05)
    (d_est,) = torch.autograd.grad(est, theta)
    d_closed = -2 * a @ (b - a @ theta)
    assert torch.allclose(d_est, d_closed.detach(), rtol=0.1, atol=0.1 * d_closed.abs().max().item())


def test_log_likelihood_uses_gather_and_released_reproduces_the_bxb_mean():
    logits, y = torch.randn(5, 4), torch.tensor([0, 3, 3, 1, 2])
    logp = logits.log_softmax(1)
    assert torch.allclose(fip.log_likelihood(logits, y), logp[torch.arange(5), y].mean())
    bxb = torch.stack([torch.stack([logp[i, y[j]] for j in range(5)]) for i in range(5)]).mean()
    assert torch.allclose(fip.log_likelihood(logits, y, released=True), bxb)


# -- the released regulariser ---------------------------------------------------------------------

def test_released_projection_is_the_mis_indented_linear_sum_with_zero_mean():
    g = [torch.randn(3), torch.randn(2, 2), torch.randn(5)]
    m = fip.RELEASED_PROBES
    r = fip.released_projection(g, torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    v = [[torch.randn(t.shape, generator=gen) for t in g] for _ in range(m)]
    p = len(g)
    # R = (1/m) Σ_i Σ_k Σ_{j≤k} <g_j, v_ij> = Σ_j <g_j, (1/m) Σ_i (P − j) v_ij>  (j from 0)
    explicit = sum((g[j] * sum((p - j) * v[i][j] for i in range(m)) / m).sum() for j in range(p))
    assert torch.allclose(r, explicit, rtol=1e-5, atol=1e-6)
    gen = torch.Generator().manual_seed(4)
    draws = torch.stack([fip.released_projection(g, gen) for _ in range(1000)])
    assert abs(draws.mean()) < 4 * draws.std() / 1000 ** 0.5  # zero mean
    assert (draws < 0).any() and (draws > 0).any()
    trace = sum(t.square().sum() for t in g)
    hutch = torch.stack([fip.hutchinson_trace(g, 20, gen) for _ in range(1000)])
    assert (hutch >= 0).all() and abs(hutch.mean() - trace) < 0.1 * trace


def test_released_mode_runs_without_retainer():
    model, info = fip.purify(tiny_model(), random_set(), {**QUICK, "released": True},
                             torch.Generator().manual_seed(0), torch.device("cpu"))
    assert info["released"] and info["retainer_last"] is None and "fisher_mean" not in info


# -- Fisher diagonal and retainer -----------------------------------------------------------------

def test_fisher_diagonal_is_the_mean_squared_per_sample_gradient_in_eval_mode():
    model, data = tiny_model(), random_set(6)
    model.train()
    running = model.body.features[0][1].running_mean.clone()
    named = dict(model.named_parameters())
    fisher = fip.fisher_diagonal(model, named, data, "cpu", batch_size=4)
    assert model.training and torch.equal(model.body.features[0][1].running_mean, running)
    model.eval()
    expected = {n: torch.zeros_like(p) for n, p in named.items()}
    for i in range(len(data)):
        out = model(data.x[i:i + 1].float() / 255).log_softmax(1)[0, data.y[i]]
        for (n, p), gi in zip(named.items(), torch.autograd.grad(out, list(named.values()))):
            expected[n] += gi.square() / len(data)
    for n in named:
        assert torch.allclose(fisher[n], expected[n], rtol=1e-4, atol=1e-7), n


def test_retainer_penalty():
    p = nn.Parameter(torch.tensor([1.0, 2.0]))
    ret = fip.Retainer([p], [torch.tensor([3.0, 0.5])], eta_r=2.0)
    assert ret().item() == 0.0
    with torch.no_grad():
        p += torch.tensor([1.0, 2.0])
    assert ret().item() == pytest.approx(0.5 * 2.0 * (3.0 * 1 + 0.5 * 4))


# -- Fast FIP ------------------------------------------------------------------------------------

def test_fast_fip_trains_only_spectral_shifts_and_bn_affine():
    model = tiny_model()
    named = fast_fip.attach_spectral_shifts(model)
    expected = 0
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            w = m.parametrizations.weight.original
            expected += min(w.shape[0], w[0].numel())
        elif isinstance(m, nn.BatchNorm2d):
            expected += 2 * m.num_features
    assert sum(p.numel() for p in named.values()) == expected
    bn_params = {id(p) for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()}
    deltas = {id(m.delta) for m in model.modules() if isinstance(m, fast_fip.SpectralShift)}
    assert len(deltas) == 6  # 5 convolutions + the linear head
    for name, p in model.named_parameters():
        assert p.requires_grad == (id(p) in bn_params or id(p) in deltas), name
    assert {id(p) for p in named.values()} == bn_params | deltas
    classes = {n: type(m) for n, m in tiny_model().named_modules()}
    fast_fip.fold_spectral_shifts(model)
    assert {n: type(m) for n, m in model.named_modules()} == classes  # classes restored


def test_fast_fip_leaves_singular_vectors_biases_and_normalisation_alone():
    before = tiny_model()
    after, info = fast_fip.purify(tiny_model(), random_set(), {**QUICK, "lr": 0.05},
                                  torch.Generator().manual_seed(0), torch.device("cpu"))
    assert info["delta_abs_mean"] > 0
    old, new = dict(before.named_modules()), dict(after.named_modules())
    for name, m in old.items():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            w0 = m.weight.detach().reshape(m.weight.shape[0], -1).double()
            w1 = new[name].weight.detach().reshape(w0.shape[0], -1).double()
            u, s, vh = torch.linalg.svd(w0, full_matrices=False)
            core = u.T @ w1 @ vh.T  # diagonal: only the singular values moved
            off = core - torch.diag(torch.diagonal(core))
            assert off.abs().max() < 1e-4 * s.max(), name
            assert not torch.allclose(w0, w1), name
            if m.bias is not None:
                assert torch.equal(m.bias, new[name].bias), name
    assert torch.equal(before.normalize.mean, after.normalize.mean)


def test_folding_reproduces_outputs_and_gives_an_ordinary_model():
    model, x = tiny_model(), torch.rand(8, 1, 16, 16)
    keys = list(model.state_dict())
    fast_fip.attach_spectral_shifts(model)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, fast_fip.SpectralShift):
                m.delta.copy_(torch.randn_like(m.delta) * 0.5)  # some singular values clip at 0
    model.eval()
    shifted = model(x).detach()
    fast_fip.fold_spectral_shifts(model)
    folded = model(x).detach()
    assert torch.allclose(shifted, folded, rtol=1e-5, atol=1e-6)
    assert list(model.state_dict()) == keys
    assert all(p.requires_grad for p in model.parameters())
    assert not any(isinstance(m, fast_fip.SpectralShift) for m in model.modules())
    fresh = tiny_model(1)
    fresh.load_state_dict(model.state_dict())  # strict: same architecture and names
    assert torch.allclose(fresh.eval()(x), folded, rtol=1e-5, atol=1e-6)


def test_attaching_shifts_keeps_the_function():
    model, x = tiny_model(), torch.rand(4, 1, 16, 16)
    ref = model(x).detach()
    fast_fip.attach_spectral_shifts(model)
    assert torch.allclose(model(x), ref, rtol=1e-4, atol=1e-5)
    fast_fip.fold_spectral_shifts(model)
    assert torch.allclose(model(x), ref, rtol=1e-4, atol=1e-5)


# -- the defense contract ------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["fip", "fast_fip"])
def test_the_defense_reads_only_its_clean_budget(kind, monkeypatch):
    import backdoor.io
    import backdoor.metrics

    def forbidden(*args, **kwargs):
        raise AssertionError("the defense read evaluation data or files")

    for mod, name in ((backdoor.metrics, "evaluate"), (backdoor.metrics, "predict"),
                      (backdoor.metrics, "accuracy"), (backdoor.io, "load_tensors"), (torch, "load")):
        monkeypatch.setattr(mod, name, forbidden)
    assert list(inspect.signature(get_defense(kind)).parameters) == ["model", "clean", "params", "gen", "device"]
    clean = random_set()
    x, y = clean.x.clone(), clean.y.clone()
    model, info = get_defense(kind)(tiny_model(), clean, {**QUICK, "type": kind},
                                    torch.Generator().manual_seed(0), torch.device("cpu"))
    assert torch.equal(clean.x, x) and torch.equal(clean.y, y)
    assert info["steps"] == QUICK["iterations"]
    source = inspect.getsource(fip) + inspect.getsource(fast_fip)
    assert "test_x" not in source and "triggered" not in source.lower()


@pytest.mark.parametrize("kind", ["fip", "fast_fip"])
def test_a_fixed_generator_gives_identical_models(kind):
    def run(seed):
        model, _ = get_defense(kind)(tiny_model(), random_set(), dict(QUICK),
                                     torch.Generator().manual_seed(seed), torch.device("cpu"))
        return model.state_dict()

    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_trace_term_is_computed_every_k_steps_and_eta_f_zero_disables_it():
    data, gen = random_set(), torch.Generator
    _, info = fip.purify(tiny_model(), data, {**QUICK, "iterations": 7, "trace_every": 3},
                         gen().manual_seed(0), torch.device("cpu"))
    assert info["trace_first"] > 0 and info["steps"] == 7
    _, info = fip.purify(tiny_model(), data, {**QUICK, "eta_f": 0.0, "eta_r": 0.0},
                         gen().manual_seed(0), torch.device("cpu"))
    assert info["trace_first"] is None and info["retainer_last"] is None


def test_plain_cross_entropy_when_both_regularisers_are_off_matches_fit():
    from backdoor.defenses.base import fit_config
    from backdoor.training import fit

    data, params = random_set(), {**QUICK, "eta_f": 0.0, "eta_r": 0.0}
    ours, _ = fip.purify(tiny_model(), data, params, torch.Generator().manual_seed(0), torch.device("cpu"))
    ref = tiny_model()
    p = fip.FIP.of(params)
    fip_gen = torch.Generator().manual_seed(0)
    torch.randint(0, 2**31, (1,), generator=fip_gen)  # the probe seed fip draws first
    fit(ref, data, fit_config(p), gen=fip_gen, device="cpu",
        loss_fn=lambda m, x, y, s: F.cross_entropy(m(x), y), log=lambda s: None)
    assert all(torch.allclose(a, b) for a, b in zip(ours.state_dict().values(), ref.state_dict().values()))


# -- fip_released ---------------------------------------------------------------------------------

def test_fip_released_declaration_is_the_release_defaults():
    from backdoor.schema.defenses import FIP

    p = FIP.resolve({"type": "fip_released"})
    assert p.released and (p.lr, p.momentum, p.weight_decay, p.schedule) == (5.0e-3, 0.95, 0.0, "constant")
    assert (p.iterations, p.batch_size, p.trace_every, p.crop_pad, p.flip) == (2000, 128, 5, 4, True)
    assert p.eta_f == 5.0e-3  # the author's advice in FIP issue #2 (the CLI default 0.5 is "bad")
    assert get_defense("fip_released") is fip.purify


def test_fip_released_is_deterministic_and_registers_bn_statistics():
    def run(seed):
        model = tiny_model()
        model, info = fip.purify(model, random_set(), {"type": "fip_released", **QUICK},
                                 torch.Generator().manual_seed(seed), torch.device("cpu"))
        return model.state_dict(), info

    (a, info), (b, _) = run(0), run(0)
    assert info["released"] and info["retainer_last"] is None
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_batch_mean_fisher_is_the_squared_mean_gradient_of_the_bxb_log_likelihood():
    """The release's disabled estimator: per batch g = ∇ mean(log_softmax[:, y]) (B×B), F = mean g²;
    the forwards run in train mode. It is far smaller than the per-sample Fisher (≈ batch size)."""
    from backdoor.augment import augment
    from backdoor.defenses.base import fit_config
    from backdoor.schema.defenses import FIP

    data = random_set(200)
    cfg = fit_config(FIP.of({"crop_pad": 0, "flip": False}))
    model = tiny_model().train()
    named = dict(model.named_parameters())
    fisher = fip._registration_pass(model, data, cfg, torch.Generator().manual_seed(5), "cpu", named)
    model2 = tiny_model().train()
    gen = torch.Generator().manual_seed(5)
    expected = {n: torch.zeros_like(p) for n, p in model2.named_parameters()}
    for _ in range(5):
        idx = torch.randint(0, len(data), (100,), generator=gen)
        torch.randint(0, 2**31, (1,), generator=gen)  # the augmentation seed (no augmentation here)
        x = augment(data.x[idx].float() / 255, 0, False, torch.Generator())
        logp = model2(x).log_softmax(1)
        grads = torch.autograd.grad(logp[:, data.y[idx]].mean(), list(model2.parameters()))
        for n, g in zip(expected, grads):
            expected[n] += g.square() / 5
    for n in named:
        assert torch.allclose(fisher[n], expected[n], rtol=1e-4, atol=1e-9), n
    per_sample = fip.fisher_diagonal(tiny_model(), dict(tiny_model().named_parameters()), data, "cpu")
    assert sum(f.sum() for f in fisher.values()) < 0.5 * sum(f.sum() for f in per_sample.values())
