"""FMP (adversarial feature map pruning): pruning bookkeeping, hard mask, scores, determinism."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from backdoor.defenses import fmp, get_defense
from backdoor.defenses.channels import trace
from backdoor.models import copy_model
from conftest import tiny_cnn as tiny_model, tiny_data

FAST = dict(iterations=6, batch_size=16, sensitivity_batch=8)


def run(params=None, seed=0, model=None, data=None):
    model = model if model is not None else tiny_model()
    data = data if data is not None else tiny_data()
    return fmp.purify(model, data, {"type": "fmp", **FAST, **(params or {})},
                      torch.Generator().manual_seed(seed), torch.device("cpu"))


def pruned_tensors(model, info, with_beta=True):
    modules = dict(model.named_modules())
    for name, layer in info["layers"].items():
        ks = layer["pruned"]
        yield f"{name}.weight", modules[name].weight[ks]
        for bn in layer["bn"]:
            yield f"{bn}.weight", modules[bn].weight[ks]
            if with_beta:
                yield f"{bn}.bias", modules[bn].bias[ks]


def test_registered():
    assert get_defense("fmp") is fmp.purify


def test_pruned_maps_stay_zero_after_finetuning_with_hard_mask():
    # a high learning rate and weight decay would move any entry that the mask does not hold
    model, info = run({"lr": 0.5, "weight_decay": 1e-2, "iterations": 10})
    assert info["hard_mask"] and info["n_pruned"] == 5
    for name, values in pruned_tensors(model, info):
        assert values.numel() > 0 and torch.count_nonzero(values) == 0, name


def test_pruned_map_output_is_zero():
    model, info = run()
    model.eval()
    captured = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: captured.__setitem__(n, o))
             for n, m in model.named_modules() if n in {l["bn"][0] for l in info["layers"].values()}]
    with torch.no_grad():
        model(torch.rand(4, 1, 12, 12))
    for h in hooks:
        h.remove()
    for name, layer in info["layers"].items():
        out = captured[layer["bn"][0]]
        assert torch.count_nonzero(out[:, layer["pruned"]]) == 0, name


def test_without_hard_mask_conv_bn_relu_cannot_regrow():
    """Released behaviour (no mask) on conv → BN → ReLU: a zero filter behind a zero γ gets no
    gradient, nor does γ (its normalised input is 0), nor β (ReLU'(0) = 0): identical to the mask."""
    hard, _ = run({"lr": 0.5, "iterations": 10})
    soft, info = run({"hard_mask": False, "lr": 0.5, "iterations": 10})
    for name, values in pruned_tensors(soft, info):
        assert torch.count_nonzero(values) == 0, name
    for (n, a), b in zip(hard.state_dict().items(), soft.state_dict().values()):
        assert torch.equal(a, b), n


def test_released_bn_gamma_only_keeps_beta():
    model, info = run({"hard_mask": False, "zero_bn_beta": False})
    modules = dict(model.named_modules())
    for name, values in pruned_tensors(model, info, with_beta=False):
        assert torch.count_nonzero(values) == 0, name
    assert any(torch.count_nonzero(modules[l["bn"][0]].bias[l["pruned"]]) > 0
               for l in info["layers"].values())


def test_residual_filters_regrow_only_without_hard_mask():
    """Convs feeding a residual sum have no BN of their own: only the hard mask holds them at 0."""
    data = tiny_data()
    params = {"lr": 0.2, "iterations": 4}
    hard, info = run(params, model=tiny_model(arch="preact_resnet18"), data=data)
    soft, info_soft = run({**params, "hard_mask": False}, model=tiny_model(arch="preact_resnet18"), data=data)
    assert info["layers"] == info_soft["layers"]
    residual = [n for n, l in info["layers"].items() if not l["bn"]]
    assert "body.layer2.0.shortcut" in residual and "body.layer1.0.conv2" in residual
    for model, should_be_zero in ((hard, True), (soft, False)):
        modules = dict(model.named_modules())
        nonzero = [torch.count_nonzero(modules[n].weight[info["layers"][n]["pruned"]]).item()
                   for n in residual]
        assert (sum(nonzero) == 0) == should_be_zero


def test_number_pruned_per_layer():
    _, info = run()  # ceil(C / 64) = 1 for the 4-16 channel layers
    assert {n: len(l["pruned"]) for n, l in info["layers"].items()} == {
        "body.features.0.0": 1, "body.features.2.0": 1, "body.features.3.0": 1,
        "body.features.5.0": 1, "body.features.6.0": 1}
    _, info = run({"prune_ratio": 0.25})
    assert [len(l["pruned"]) for l in info["layers"].values()] == [1, 2, 2, 4, 4]
    assert [l["channels"] for l in info["layers"].values()] == [4, 8, 8, 16, 16]
    _, info = run({"rounding": "floor"})  # the released floor(C / 64) prunes nothing below 64 channels
    assert info["n_pruned"] == 0


def test_n_to_prune_rounding():
    r = 1 / 64
    assert [fmp.n_to_prune(c, r, "floor") for c in (16, 32, 64, 128, 256, 512)] == [0, 0, 1, 2, 4, 8]
    assert [fmp.n_to_prune(c, r, "ceil") for c in (16, 32, 64, 128, 256, 512)] == [1, 1, 1, 2, 4, 8]
    assert fmp.n_to_prune(16, 0.0, "ceil") == 0
    with pytest.raises(ValueError):
        fmp.n_to_prune(16, r, "nearest")


def test_lowest_scores_are_pruned():
    _, info = run({"prune_ratio": 0.25})
    for name, layer in info["layers"].items():
        scores = torch.tensor(info["scores"][name])
        kept = [k for k in range(layer["channels"]) if k not in layer["pruned"]]
        assert max(scores[layer["pruned"]]) <= min(scores[kept]), name


def test_select_ties():
    acc = torch.tensor([0.5, 0.25, 0.25, 0.75])
    loss = torch.tensor([1.0, 1.0, 2.0, 0.0])
    assert fmp.select(acc, loss, 1) == [2]  # tie at 0.25 → higher loss
    assert fmp.select(acc, loss, 3) == [0, 1, 2]


def test_everything_is_trainable():
    before = tiny_model()
    model, info = run(model=copy_model(before))
    assert all(p.requires_grad for p in model.parameters())
    after, prev = dict(model.named_parameters()), dict(before.named_parameters())
    for name in ("body.classifier.weight", "body.features.6.0.weight", "body.features.0.0.weight",
                 "body.features.3.1.weight"):
        assert not torch.equal(after[name], prev[name]), f"{name} was not fine-tuned"
    # unpruned filters moved too, pruned ones are zero
    conv = after["body.features.5.0.weight"]
    keep = [k for k in range(16) if k not in info["layers"]["body.features.5.0"]["pruned"]]
    assert not torch.equal(conv[keep], prev["body.features.5.0.weight"][keep])


def test_scores_keyed_by_module_name():
    model, info = run()
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert list(info["scores"]) == convs == list(info["layers"])
    for name in convs:
        assert len(info["scores"][name]) == dict(model.named_modules())[name].out_channels
        assert all(0.0 <= s <= 1.0 for s in info["scores"][name])
    # the BN that normalises each conv's output is the one right after it
    assert {n: l["bn"] for n, l in info["layers"].items()} == {
        n: [n[:-1] + "1"] for n in convs}


def test_residual_net_bn_tracing_and_name_keyed_scores():
    model = tiny_model(arch="preact_resnet18").eval()
    convs = fmp.conv_layers(model)
    x = torch.rand(4, 1, 12, 12)
    bns = trace(model, x[:2]).conv_bns
    assert bns["body.conv1"] == ["body.layer1.0.bn1"]
    assert bns["body.layer2.0.conv1"] == ["body.layer2.0.bn2"]
    assert bns["body.layer2.0.conv2"] == [] and bns["body.layer2.0.shortcut"] == []
    # the shortcut runs before conv1 but is registered after conv2: its scores must be its own
    y = torch.randint(0, 10, (4,))
    names = ["body.layer2.0.conv1", "body.layer2.0.conv2", "body.layer2.0.shortcut"]
    together = fmp.feature_map_scores(model, convs, x, y, 0.02, 0.06, torch.Generator().manual_seed(1))
    for name in names:
        alone = fmp.feature_map_scores(model, {name: convs[name]}, x, y, 0.02, 0.06,
                                       torch.Generator().manual_seed(1))
        assert torch.equal(alone[name]["loss"], together[name]["loss"]), name
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_batched_scores_equal_one_map_per_pass():
    model = tiny_model().eval()
    convs = fmp.conv_layers(model)
    x, y = torch.rand(8, 1, 12, 12), torch.randint(0, 10, (8,))
    batched = fmp.feature_map_scores(model, convs, x, y, 0.02, 0.06, torch.Generator().manual_seed(3), 1024)
    single = fmp.feature_map_scores(model, convs, x, y, 0.02, 0.06, torch.Generator().manual_seed(3), 8)
    for name in convs:
        assert torch.equal(batched[name]["acc"], single[name]["acc"]), name
        assert torch.allclose(batched[name]["loss"], single[name]["loss"], atol=1e-5), name


def test_no_hooks_left_and_clean_data_untouched():
    data = tiny_data()
    x_before, y_before = data.x.clone(), data.y.clone()
    model, _ = run(data=data)
    assert torch.equal(data.x, x_before) and torch.equal(data.y, y_before)
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks


def test_never_gets_test_data(monkeypatch):
    """purify sees only the clean budget: every loader or scorer of test data is booby-trapped."""
    import backdoor.io
    import backdoor.metrics
    import backdoor.steps

    def trap(*a, **k):
        raise AssertionError("fmp touched test data or the evaluation code")

    for mod, name in [(backdoor.steps, "test_sets"), (backdoor.io, "load_tensors"),
                      (backdoor.metrics, "evaluate"), (backdoor.metrics, "accuracy"),
                      (backdoor.metrics, "predict"), (backdoor.metrics, "attack_metrics")]:
        monkeypatch.setattr(mod, name, trap)
    data = tiny_data()
    seen = []
    model = tiny_model()
    model.normalize.register_forward_pre_hook(lambda m, i: seen.append(i[0].detach()))
    run(model=model, data=data)
    assert seen and all(float(t.min()) >= 0.0 and float(t.max()) <= 1.0 for t in seen)


def test_deterministic_with_fixed_generator():
    m1, i1 = run(seed=7)
    m2, i2 = run(seed=7)
    for (n, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), n
    strip = lambda i: {k: v for k, v in i.items() if not k.startswith("seconds")}
    assert strip(i1) == strip(i2)
    m3, _ = run(seed=8)
    assert not all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m3.state_dict().values()))


def test_epochs_instead_of_iterations():
    params = {"type": "fmp", "epochs": 2, "batch_size": 16, "sensitivity_batch": 8}
    _, info = fmp.purify(tiny_model(), tiny_data(), params, torch.Generator().manual_seed(0),
                         torch.device("cpu"))  # 48 images → 3 batches per epoch
    assert info["steps"] == 6


# -- fmp_released -----------------------------------------------------------------------------------

def test_fmp_released_floor_rounding_gamma_only_no_mask():
    """The released fgsm-feature.py: ⌊C/64⌋ maps per conv (none below 64 channels), γ zeroed but
    β kept, no mask while fine-tuning; at 64 channels one map is pruned."""
    from backdoor.schema.defenses import FMP

    p = FMP.resolve({"type": "fmp_released"})
    assert (p.rounding, p.zero_bn_beta, p.hard_mask, p.prune_ratio) == ("floor", False, False, 1 / 64)
    assert (p.sensitivity_batch, p.alpha, p.eps, p.lr, p.min_lr, p.momentum, p.batch_size) == (
        32, 0.02, 0.06, 0.01, 1.0e-4, 0.9, 256)
    assert get_defense("fmp_released") is fmp.purify
    _, info = run({"type": "fmp_released"})  # width 4: 4–16 channels
    assert info["n_pruned"] == 0
    from backdoor.models import build_model
    torch.manual_seed(0)
    wide = build_model("cnn", 1, 10, [0.5], [0.5], width=16)  # 16, 32, 32, 64, 64 channels
    with torch.no_grad():
        for m in wide.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.bias.uniform_(0.1, 0.2)
    model, info = run({"type": "fmp_released", "iterations": 1, "lr": 1e-6}, model=wide)
    counts = {n: len(l["pruned"]) for n, l in info["layers"].items()}
    assert counts == {"body.features.0.0": 0, "body.features.2.0": 0, "body.features.3.0": 0,
                      "body.features.5.0": 1, "body.features.6.0": 1}
    modules = dict(model.named_modules())
    for name in ("body.features.5.0", "body.features.6.0"):
        (k,) = info["layers"][name]["pruned"]
        bn = modules[info["layers"][name]["bn"][0]]
        assert bn.weight[k] == 0 and bn.bias[k] > 0.09


def test_fmp_released_is_deterministic():
    a, info_a = run({"type": "fmp_released", "rounding": "ceil"}, seed=4)
    b, info_b = run({"type": "fmp_released", "rounding": "ceil"}, seed=4)
    assert info_a["layers"] == info_b["layers"]
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), k
