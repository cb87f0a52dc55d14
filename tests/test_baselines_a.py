"""Baseline defenses ftsam, fp, nad, clp: what is trained, what is pruned, data use, determinism."""

from __future__ import annotations

import pytest
import torch

import backdoor.defenses.fp as fp_module
from backdoor.defenses import clp, fp, ftsam, get_defense, nad
from backdoor.training import FitConfig, fit
from conftest import tiny_cnn as tiny_model, tiny_data

FAST = {
    "ftsam": dict(iterations=4, batch_size=16),
    "fp": dict(iterations=4, batch_size=16),
    "nad": dict(iterations=4, teacher_iterations=3, batch_size=16),
    "clp": dict(),
}


def run(kind, params=None, seed=0, model=None, data=None):
    model = model if model is not None else tiny_model()
    data = data if data is not None else tiny_data()
    return get_defense(kind)(model, data, {"type": kind, **FAST[kind], **(params or {})},
                             torch.Generator().manual_seed(seed), torch.device("cpu"))


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


# --- the training hook -------------------------------------------------------------------------

def test_fit_grad_fn_default_path_unchanged_and_hook_used():
    data = tiny_data()
    cfg = FitConfig(lr=0.05, iterations=3, batch_size=8)
    a, b = tiny_model(), tiny_model()
    fit(a, data, cfg, gen=torch.Generator().manual_seed(0), log=lambda *_: None)

    calls = []

    def plain(model, x, y, step, loss_fn):
        calls.append(step)
        loss = loss_fn(model, x, y, step)
        loss.backward()
        return loss

    fit(b, data, cfg, gen=torch.Generator().manual_seed(0), grad_fn=plain, log=lambda *_: None)
    assert calls == [0, 1, 2] and same(a, b)


def test_sam_step_restores_weights_and_uses_perturbed_gradient():
    model, data = tiny_model(), tiny_data()
    x, y = data.x[:8].float() / 255, data.y[:8]
    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    loss_fn = ftsam.smoothed_ce(0.1)
    model.train()
    ftsam.sam_grad_fn(params, rho=2.0)(model, x, y, 0, loss_fn)
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(params, before))
    sam_grads = [p.grad.clone() for p in params]
    model.zero_grad()
    loss_fn(model, x, y, 0).backward()
    assert not all(torch.allclose(g, p.grad) for g, p in zip(sam_grads, params))


# --- what each defense trains / prunes ---------------------------------------------------------

@pytest.mark.parametrize("kind", ["ftsam", "nad"])
def test_finetuning_defenses_train_every_parameter(kind):
    model = tiny_model()
    original = tiny_model()
    out, info = run(kind, model=model)
    assert info["steps"] == FAST[kind]["iterations"]
    changed = [not torch.equal(p, q) for p, q in zip(out.parameters(), original.parameters())]
    assert all(changed)


def test_nad_layers_are_the_last_three_stages_and_teacher_is_separate():
    model = tiny_model()
    out, info = run("nad", model=model)
    assert out is model
    assert info["layers"] == ["body.features.0", "body.features.3", "body.features.6"]
    assert info["betas"] == [500.0, 1000.0, 1000.0] and info["teacher_steps"] == 3
    assert not any(m._forward_hooks for m in model.modules())  # hooks removed


def test_nad_attention_map_is_normalised():
    a = nad.attention(torch.randn(3, 5, 4, 4), 2.0)
    assert a.shape == (3, 16) and torch.allclose(a.norm(dim=1), torch.ones(3))
    fm = torch.randn(2, 3, 4, 4)
    assert nad.at_loss(fm, fm, 2.0).item() == 0


def test_fp_prunes_last_conv_and_pruned_channels_stay_zero():
    out, info = run("fp", params={"iterations": 6, "acc_drop": 1.0})  # never stops early
    assert info["last_conv"] == "body.features.6.0" and info["bn"] == "body.features.6.1"
    assert info["pruned_count"] == len(info["pruned"]) == int(0.95 * 16)
    ks = info["pruned"]
    modules = dict(out.named_modules())
    assert modules["body.features.6.0"].weight[ks].abs().sum() == 0
    assert modules["body.features.6.1"].weight[ks].abs().sum() == 0
    assert modules["body.features.6.1"].bias[ks].abs().sum() == 0
    kept = [k for k in range(16) if k not in ks]
    assert modules["body.features.6.0"].weight[kept].abs().sum() > 0
    # pruned in increasing order of mean activation
    act = torch.tensor(info["mean_activation"])
    assert act[ks].max() <= act[kept].min()


def test_fp_stops_on_validation_split_of_clean(monkeypatch):
    seen = []
    real = fp_module.split_validation

    def spy(clean, fraction, gen):
        train, val = real(clean, fraction, gen)
        seen.append((len(clean), len(train), len(val)))
        return train, val

    monkeypatch.setattr(fp_module, "split_validation", spy)
    data = tiny_data(50)
    _, info = run("fp", data=data, params={"acc_drop": 0.0})
    assert seen == [(50, 40, 10)] and info["val_size"] == 10
    # acc_drop 0: stops at the first count whose validation accuracy falls below the unpruned one
    curve = info["curve"]
    assert all(c["val_acc"] >= info["val_acc_unpruned"] for c in curve[1:info["pruned_count"] + 1])
    if info["pruned_count"] < len(curve) - 1:
        assert curve[info["pruned_count"] + 1]["val_acc"] < info["val_acc_unpruned"]


def test_clp_prunes_outlier_channel_without_reading_data():
    model = tiny_model()
    conv = dict(model.named_modules())["body.features.5.0"]
    with torch.no_grad():
        conv.weight[3] *= 50  # a channel with a huge Lipschitz bound

    class NoData:
        def __getattr__(self, name):
            raise AssertionError(f"clp read clean.{name}")

        def __len__(self):
            raise AssertionError("clp read len(clean)")

    before = {k: v.clone() for k, v in model.state_dict().items()}
    out, info = clp.purify(model, NoData(), {"type": "clp"}, torch.Generator().manual_seed(0),
                           torch.device("cpu"))
    layer = info["layers"]["body.features.5.0"]
    assert 3 in layer["pruned"]
    modules = dict(out.named_modules())
    assert conv.weight[3].abs().sum() == 0
    assert modules["body.features.5.1"].weight[3] == 0 and modules["body.features.5.1"].bias[3] == 0
    # only pruned channels changed
    pruned = {(f"{name}.weight", k) for name, lay in info["layers"].items() for k in lay.get("pruned", [])}
    pruned |= {(f"{lay['bn']}.{w}", k) for lay in info["layers"].values() for k in lay.get("pruned", [])
               for w in ("weight", "bias")}
    for key, value in out.state_dict().items():
        for k in range(value.shape[0] if value.ndim else 0):
            if (key, k) not in pruned:
                assert torch.equal(value[k], before[key][k]), (key, k)


def test_clp_uclc_is_bn_scaled_spectral_norm():
    model = tiny_model()
    modules = dict(model.named_modules())
    conv, bn = modules["body.features.2.0"], modules["body.features.2.1"]
    uclc = clp.channel_lipschitz(conv, bn)
    k = 1
    scale = bn.weight[k].abs() / torch.sqrt(bn.running_var[k] + bn.eps)
    expect = torch.linalg.svdvals((conv.weight[k] * scale).reshape(conv.in_channels, -1))[0]
    assert torch.allclose(uclc[k], expect, atol=1e-5)


# --- data use and determinism ------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["ftsam", "fp", "nad", "clp"])
def test_never_reads_test_data(kind, monkeypatch):
    """The defense gets only ``clean``; the evaluation helpers must not be called."""
    import backdoor.metrics as metrics
    import backdoor.steps as steps

    def boom(*a, **k):
        raise AssertionError("test data read")

    monkeypatch.setattr(metrics, "evaluate", boom)
    monkeypatch.setattr(metrics, "attack_metrics", boom)
    monkeypatch.setattr(steps, "test_sets", boom)
    run(kind)


@pytest.mark.parametrize("kind", ["ftsam", "fp", "nad", "clp"])
def test_deterministic_for_fixed_generator(kind):
    a, info_a = run(kind, seed=3)
    b, info_b = run(kind, seed=3)
    assert same(a, b)
    if kind != "clp":
        c, _ = run(kind, seed=4)
        assert not same(a, c)


def test_registered():
    assert get_defense("ftsam") is ftsam.purify and get_defense("fp") is fp.purify
    assert get_defense("nad") is nad.purify and get_defense("clp") is clp.purify
