"""Baselines ANP, I-BAU and RNP: what is trained, what is pruned, no test data, determinism."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from backdoor import training
from backdoor.defenses import DEFENSES, get_defense, ibau, rnp
from conftest import tiny_cnn as tiny_model, tiny_data as _tiny_data


def tiny_data(n: int = 40, seed: int = 0):
    return _tiny_data(n, seed)


FAST = {
    "anp": dict(iterations=5, batch_size=8),
    "ibau": dict(rounds=2, K=2, steps_per_round=2, pert_steps=2, batch_size=8),
    "rnp": dict(unlearn_iterations=5, recover_iterations=5, batch_size=8),
}


def run(kind, params=None, seed=0, model=None, data=None):
    model = model if model is not None else tiny_model()
    data = data if data is not None else tiny_data()
    return get_defense(kind)(model, data, {"type": kind, **FAST[kind], **(params or {})},
                             torch.Generator().manual_seed(seed), torch.device("cpu"))


def bns(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}


def test_registered():
    for kind in ("anp", "ibau", "rnp"):
        assert kind in DEFENSES and callable(get_defense(kind))


@pytest.mark.parametrize("kind", ["anp", "rnp"])
def test_pruning_only_zeroes_pruned_bn_channels(kind):
    before = tiny_model()
    # fixed threshold 1.01 prunes every channel whose mask < 1.01, i.e. all; use 0.999 after training
    model, info = run(kind, {"threshold": 0.5})
    after = bns(model)
    for name, m in bns(before).items():
        pruned = torch.tensor(info["layers"][name] if kind == "rnp" else info["layers"][name]["pruned"],
                              dtype=torch.long)
        keep = torch.ones(m.num_features, dtype=torch.bool)
        keep[pruned] = False
        assert torch.all(after[name].weight[pruned] == 0) and torch.all(after[name].bias[pruned] == 0)
        assert torch.equal(after[name].weight[keep], m.weight[keep])
        assert torch.equal(after[name].bias[keep], m.bias[keep])
    # everything else (convs, linear, running stats) untouched: masks are learned, weights frozen
    sd_b, sd_a = before.state_dict(), model.state_dict()
    for k in sd_b:
        if not any(k == f"{n}.weight" or k == f"{n}.bias" for n in bns(before)):
            assert torch.equal(sd_b[k], sd_a[k]), k


def test_anp_masks_move_and_threshold_from_validation():
    model, info = run("anp", {"iterations": 10})
    assert info["mask_stats"]["mean"] < 1.0  # masks were trained
    assert info["val_size"] == 8  # 20% of 40 clean images
    assert info["threshold"] in [round(0.05 * i, 2) for i in range(19)]
    assert "0.00" in info["val_acc_by_threshold"]
    # pruned channels are exactly the ones whose mask is below the chosen threshold
    total = sum(len(v["pruned"]) for v in info["layers"].values())
    assert total == info["pruned_total"]


def test_anp_prune_all_channels_zeroes_bns():
    model, info = run("anp", {"threshold": 1.01})
    for m in bns(model).values():
        assert torch.all(m.weight == 0) and torch.all(m.bias == 0)


def test_rnp_unlearns_then_prunes_original():
    model, info = run("rnp", {"unlearn_iterations": 3, "clean_threshold": -1.0})
    assert info["unlearn_steps"] == 3 and not info["unlearn_stopped_early"]
    assert info["recover_steps"] == 5
    assert 0 <= info["pruned_total"] <= int(0.5 * 56)
    model, info = run("rnp", {"clean_threshold": 1.0})  # any batch accuracy ≤ 1: stop after one step
    assert info["unlearn_steps"] == 1 and info["unlearn_stopped_early"]


def test_rnp_loops_run_through_fit_and_stop_via_after_step(monkeypatch):
    """Unlearning (SGD ascent) and recovery (masks only) are ``training.fit`` runs; the early stop
    is ``after_step`` returning True, so ``fit`` returns normally with the steps taken."""
    calls = []

    def spy(model, data, cfg, **kw):
        result = training.fit(model, data, cfg, **kw)
        calls.append((kw["desc"], cfg, kw.get("params"), result.steps))
        return result

    monkeypatch.setattr(rnp, "fit", spy)
    model, info = run("rnp", {"clean_threshold": 1.0})
    (d1, cfg1, params1, steps1), (d2, cfg2, params2, steps2) = calls
    assert d1 == "rnp-unlearn" and cfg1.optimizer == "sgd" and params1 is None and steps1 == 1
    assert d2 == "rnp-recover" and steps2 == 5 and len(params2) == len(bns(model))


def test_ibau_trains_all_parameters_and_bounds_delta():
    before = tiny_model()
    model, info = run("ibau", {"lr": 1e-2})
    changed = [k for k, v in before.state_dict().items()
               if v.dtype.is_floating_point and not torch.equal(v, model.state_dict()[k])]
    assert any("conv" in k or "features.0.0" in k for k in changed)
    assert "body.classifier.weight" in changed
    assert info["outer_steps"] == 4
    assert all(r["delta_norm"] <= 3.0 + 1e-4 for r in info["rounds"])


def test_ibau_outer_steps_run_through_fit_with_adam(monkeypatch):
    calls = []

    def spy(model, data, cfg, **kw):
        calls.append((cfg, kw))
        return training.fit(model, data, cfg, **kw)

    monkeypatch.setattr(ibau, "fit", spy)
    model, info = run("ibau")
    ((cfg, kw),) = calls  # one fit run over all rounds: one Adam state, as in the released code
    assert cfg.optimizer == "adam" and cfg.schedule == "constant" and cfg.iterations == 4
    assert kw["grad_fn"] is not None and kw["after_step"] is not None
    assert len(info["rounds"]) == 2 and all("outer_loss" in r for r in info["rounds"])


def test_ibau_hypergradient_matches_explicit_formula():
    """``hypergrad_fn`` leaves ∂_θL + (∂_θΦ)ᵀ v in .grad, v = Σ_{k≤K} ((∂_δΦ)ᵀ)^k ∂_δL."""
    torch.manual_seed(0)
    lin = nn.Linear(4, 3)
    x, y = 0.25 + 0.5 * torch.rand(5, 4), torch.randint(0, 3, (5,))
    delta = 0.05 * torch.randn(1, 4)  # x + δ stays inside [0, 1]: the clamp is the identity
    eta, reg, K = 0.1, 1e-3, 3
    loss_fn = lambda m, xb, yb, step: nn.functional.cross_entropy(m(xb), yb)  # noqa: E731
    lin.zero_grad(set_to_none=True)
    loss = ibau.hypergrad_fn(list(lin.parameters()), lambda: delta, eta, reg, K)(lin, x, y, 0, loss_fn)
    got = lin.weight.grad.clone()

    w0, b = lin.weight.detach(), lin.bias.detach()
    L = lambda d, w: nn.functional.cross_entropy((x + d) @ w.T + b, y)  # noqa: E731

    def phi(d, w):
        (gd,) = torch.autograd.grad(-L(d, w) + reg * d.pow(2).sum(), d, create_graph=True)
        return d - eta * gd

    d0 = delta.clone().requires_grad_(True)
    dl_dd = torch.autograd.functional.jacobian(lambda d: L(d, w0), d0).reshape(-1)
    J_d = torch.autograd.functional.jacobian(lambda d: phi(d, w0), d0, create_graph=False).reshape(4, 4)
    J_w = torch.autograd.functional.jacobian(lambda w: phi(d0, w), w0).reshape(4, -1)
    v, term = dl_dd.clone(), dl_dd.clone()
    for _ in range(K):
        term = J_d.T @ term
        v = v + term
    dl_dw = torch.autograd.functional.jacobian(lambda w: L(delta, w), w0).reshape(-1)
    expected = (dl_dw + J_w.T @ v).reshape_as(w0)
    assert torch.allclose(got, expected, atol=1e-6, rtol=1e-4)
    assert torch.isclose(loss, L(delta, w0))


@pytest.mark.parametrize("kind", ["anp", "ibau", "rnp"])
def test_deterministic_for_fixed_generator(kind):
    a, info_a = run(kind, seed=3)
    b, info_b = run(kind, seed=3)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    c, _ = run(kind, seed=4)
    assert any(not torch.equal(v, c.state_dict()[k]) for k, v in a.state_dict().items()) or kind != "ibau"


@pytest.mark.parametrize("kind", ["anp", "ibau", "rnp"])
def test_only_the_given_clean_set_is_read(kind):
    """The defense sees only ``clean``; the validation split is part of it; the data are not modified."""
    data = tiny_data()
    x0, y0 = data.x.clone(), data.y.clone()
    model, info = run(kind, data=data)
    assert torch.equal(data.x, x0) and torch.equal(data.y, y0)
    if kind != "ibau":
        assert info["val_size"] == round(0.2 * len(data))
