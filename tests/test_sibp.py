"""SIBP: weight-statistic scores, thresholds, pruning, hard mask, rounds, determinism (fast, CPU)."""

from __future__ import annotations

import math

import pytest
import torch

from backdoor.data.tensors import TensorSet
from backdoor.defenses import get_defense, sibp
from backdoor.models import build_model, copy_model

FAST = {"type": "sibp", "epochs": 1, "batch_size": 32}


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    model = build_model("cnn", 1, 10, [0.5], [0.5], width=4)
    with torch.no_grad():  # a trained-looking spread of BN gains (fresh BNs all score 1)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model


def random_set(n: int = 64, seed: int = 0) -> TensorSet:
    g = torch.Generator().manual_seed(seed)
    return TensorSet(torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g),
                     torch.randint(0, 10, (n,), generator=g))


def plant_outlier(model, layer="body.features.5.0", channel=3, value=50.0):
    """One huge weight in one filter: that filter's standardised max |W|/σ stands out."""
    with torch.no_grad():
        dict(model.named_modules())[layer].weight[channel, 0, 1, 1] = value
    return layer, channel


def run(model, params, seed=0, clean=None):
    return sibp.purify(model, clean or random_set(), {**FAST, **params},
                       torch.Generator().manual_seed(seed), torch.device("cpu"))


# -- Step A -----------------------------------------------------------------------------------------

def test_conv_score_by_hand():
    w = torch.zeros(2, 1, 3, 3)
    w[0, 0, 0, 0] = 1.0  # one non-zero value among nine: σ = sqrt(8)/9, score = 9/sqrt(8)
    w[1, 0] = torch.tensor([[1.0, -1.0, 1.0], [-1.0, 1.0, -1.0], [1.0, -1.0, 1.0]])  # σ ≈ 0.994
    s = sibp.conv_scores(w)
    assert s[0].item() == pytest.approx(9 / math.sqrt(8), rel=1e-5)
    sigma = torch.tensor([1.0] * 5 + [-1.0] * 4).std(unbiased=False).item()
    assert s[1].item() == pytest.approx(1 / sigma, rel=1e-5)


def test_outlier_filter_is_flagged():
    model = tiny_model()
    layer, channel = plant_outlier(model)
    found = sibp.inspect(model, u=1.9)
    assert found["prune"][layer][channel]
    assert found["prune"][layer].sum() >= 1


def test_bn_score_uses_eps():
    model = tiny_model()
    bn = model.body.features[0][1]
    with torch.no_grad():
        bn.weight.fill_(2.0)
        bn.running_var.zero_()
    r = sibp.bn_scores(bn)
    assert torch.isfinite(r).all()
    assert r[0].item() == pytest.approx(2.0 / math.sqrt(bn.eps))


def test_sigma_zero_is_handled():
    # a constant kernel (σ = 0) contributes 0, an all-zero filter scores 0: no inf, no NaN
    w = torch.ones(3, 2, 3, 3)
    w[1] = 0
    assert torch.equal(sibp.conv_scores(w), torch.zeros(3))
    # 1×1 convs (PreAct-ResNet shortcuts) are skipped, the rest is finite
    torch.manual_seed(0)
    model = build_model("preact_resnet18", 1, 10, [0.5], [0.5], width=4)
    found = sibp.inspect(model, u=1.9)
    assert found["skipped"] and all(n.endswith("shortcut") for n in found["skipped"])
    assert not set(found["skipped"]) & set(found["prune"])
    assert math.isfinite(found["t_conv"]) and math.isfinite(found["t_bn"])


# -- Steps B and C ----------------------------------------------------------------------------------

def test_threshold_layers_change_thresholds():
    model = tiny_model()
    everything = sibp.inspect(model, u=1.0)
    first = sibp.inspect(model, u=1.0, threshold_layers=["body.features.0.*"])
    assert first["threshold_layers"] == ["body.features.0.0", "body.features.0.1"]
    assert first["t_conv"] != pytest.approx(everything["t_conv"])
    assert first["t_bn"] != pytest.approx(everything["t_bn"])
    # T_conv pools channels; T_bn averages per-layer means
    convs, bns, _ = sibp.scored_layers(model)
    assert everything["t_conv"] == pytest.approx(
        torch.cat([sibp.conv_scores(m.weight) for m in convs.values()]).mean().item())
    assert everything["t_bn"] == pytest.approx(
        torch.stack([sibp.bn_scores(m).mean() for m in bns.values()]).mean().item())
    with pytest.raises(ValueError, match="matches no"):
        sibp.inspect(model, u=1.0, threshold_layers=["no.such.layer"])
    with pytest.raises(ValueError, match="no BN layer"):  # T_bn undefined: no silent fallback to 1
        sibp.inspect(model, u=1.0, threshold_layers=["body.features.0.0"])


def test_coefficients_control_pruning():
    model = tiny_model()
    loose = sibp.inspect(model, u=0.0, conv_coef=0.0)
    strict = sibp.inspect(model, u=100.0, conv_coef=100.0)
    assert sum(int(m.sum()) for m in loose["prune"].values()) > 0
    assert sum(int(m.sum()) for m in strict["prune"].values()) == 0


# -- purify -----------------------------------------------------------------------------------------

def test_pruned_channels_are_zero_after_fine_tuning():
    model = tiny_model()
    layer, channel = plant_outlier(model)
    model, info = run(model, {"u": 0.5, "hard_mask": True})
    modules = dict(model.named_modules())
    pruned = info["rounds"][0]["pruned"]
    assert channel in pruned[layer]
    assert info["pruned_conv"] > 0 and info["pruned_bn"] > 0
    for name, channels in pruned.items():
        mod = modules[name]
        assert torch.all(mod.weight[channels] == 0)
        if isinstance(mod, torch.nn.BatchNorm2d):
            assert torch.all(mod.bias[channels] == 0)


def test_soft_mask_lets_conv_filters_regrow():
    model = tiny_model()
    layer, channel = plant_outlier(model)
    with torch.no_grad():  # the BN after it passes gradient through its ReLU (β > 0) …
        model.body.features[5][1].bias[channel] = 0.5
    model, info = run(model, {"hard_mask": False, "epochs": 2, "u": 100.0})  # … and is not pruned
    assert channel in info["rounds"][0]["pruned"][layer]
    assert dict(model.named_modules())[layer].weight[channel].abs().sum() > 0


def test_multi_round_schedule():
    model = tiny_model()
    plant_outlier(model)
    _, info = run(model, {"u": [1.9, 0.5], "epochs": [1, 2]})
    assert [r["u"] for r in info["rounds"]] == [1.9, 0.5]
    assert [r["steps"] for r in info["rounds"]] == [2, 4]  # 64 images, batch 32
    # later rounds never re-prune a channel already pruned (held at zero by the hard mask)
    first, second = (r["pruned"] for r in info["rounds"])
    for name in set(first) & set(second):
        assert not set(first[name]) & set(second[name])
    with pytest.raises(ValueError, match="rounds"):
        run(tiny_model(), {"u": [1.0, 2.0], "epochs": [1, 1, 1]})


def test_uses_only_the_clean_budget(monkeypatch):
    seen = []
    real_fit = sibp.fit

    def spy(model, data, *args, **kwargs):
        seen.append(data)
        return real_fit(model, data, *args, **kwargs)

    monkeypatch.setattr(sibp, "fit", spy)
    clean = random_set()
    run(tiny_model(), {"u": [1.9, 1.0], "epochs": [1, 1]}, clean=clean)
    assert seen and all(data is clean for data in seen)
    # identification is data-free: with no fine-tuning no data is touched at all
    seen.clear()
    _, info = run(tiny_model(), {"epochs": 0}, clean=clean)
    assert not seen and "steps" not in info["rounds"][0]


def test_deterministic_with_fixed_generator():
    base = tiny_model()
    plant_outlier(base)
    a, info_a = run(copy_model(base), {"u": 1.0}, seed=3)
    b, info_b = run(copy_model(base), {"u": 1.0}, seed=3)
    assert info_a == info_b
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


def test_registered_and_defaults():
    assert get_defense("sibp") is sibp.purify
    defaults = sibp.SIBP.of({})
    assert defaults.conv_coef == 0.5 and defaults.threshold_layers == "all"
    assert not isinstance(defaults.u, list)


# -- sibp_released ----------------------------------------------------------------------------------

def test_released_declaration():
    p = sibp.SIBP.resolve({"type": "sibp_released"})
    assert (p.u, p.conv_coef, p.epochs, p.threshold_layers, p.hard_mask) == (1.9, 0.5, 7, "released", False)
    assert (p.lr, p.momentum, p.weight_decay, p.batch_size, p.schedule) == (0.01, 0.9, 1.0e-4, 256, "constant")
    assert get_defense("sibp_released") is sibp.purify


def test_released_thresholds_fall_back_to_one_off_vgg_and_bn_score_has_no_eps():
    """The release pools T over VGG-16-BN's hard-coded features.12–38; with none of them (any other
    model) both thresholds are 1: prune conv c if s_c > mean + 0.5·std, BN c if r_c > mean + u·std,
    with r_c = |γ|/sqrt(running_var) (no eps)."""
    model = tiny_model()
    plant_outlier(model)
    with torch.no_grad():
        dict(model.named_modules())["body.features.6.1"].running_var[2] = 1e-3  # r ≈ 30: an outlier
    found = sibp.inspect(model, u=1.9, conv_coef=0.5, threshold_layers="released")
    assert found["t_conv"] == 1.0 and found["t_bn"] == 1.0 and found["threshold_layers"] == []
    convs, bns, _ = sibp.scored_layers(model)
    for name, conv in convs.items():
        s = sibp.conv_scores(conv.weight)
        assert torch.equal(found["prune"][name], s > s.mean() + 0.5 * s.std()), name
    for name, bn in bns.items():
        r = bn.weight.detach().abs() / bn.running_var.sqrt()
        assert torch.equal(found["prune"][name], r > r.mean() + 1.9 * r.std()), name
    assert found["prune"]["body.features.5.0"][3] and found["prune"]["body.features.6.1"][2]
    everything = sibp.inspect(model, u=1.9, conv_coef=0.5)  # the study's pooled thresholds prune less
    assert sum(int(m.sum()) for m in everything["prune"].values()) < sum(
        int(m.sum()) for m in found["prune"].values())


def test_released_thresholds_pool_the_vgg_layers_when_present():
    torch.manual_seed(0)
    layers = [torch.nn.Identity() for _ in range(14)] + [torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8),
                                                        torch.nn.Conv2d(8, 8, 3), torch.nn.BatchNorm2d(8)]
    vgg = torch.nn.Module()
    vgg.features = torch.nn.Sequential(*layers)
    vgg.stem = torch.nn.Conv2d(3, 8, 3)
    with torch.no_grad():
        vgg.features[15].weight.uniform_(0.5, 1.5)
        vgg.features[15].running_var.uniform_(0.5, 1.5)
    found = sibp.inspect(vgg, u=1.9, threshold_layers="released")
    assert found["threshold_layers"] == ["features.14", "features.16", "features.15", "features.17"]
    assert found["t_conv"] == pytest.approx(torch.cat([sibp.conv_scores(vgg.features[i].weight)
                                                       for i in (14, 16)]).mean().item())
    r = [(vgg.features[i].weight.abs() / vgg.features[i].running_var.sqrt()).mean() for i in (15, 17)]
    assert found["t_bn"] == pytest.approx(torch.stack(r).mean().item())


def test_released_is_deterministic_and_lets_channels_regrow():
    base = tiny_model()
    plant_outlier(base)
    a, info_a = run(copy_model(base), {"type": "sibp_released", "epochs": 1}, seed=2)
    b, info_b = run(copy_model(base), {"type": "sibp_released", "epochs": 1}, seed=2)
    assert info_a == info_b and not info_a["hard_mask"] and info_a["rounds"][0]["t_conv"] == 1.0
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
