"""NFT (neural mask fine-tuning): only BN masks train, floors hold, folding is exact, one-shot works."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import backdoor.defenses.nft as nft
from backdoor.augment import to_float
from backdoor.data.tensors import TensorSet
from backdoor.defenses import get_defense
from backdoor.models import build_model, copy_model

FAST = {"type": "nft", "iterations": 15, "batch_size": 16}


def tiny_model(seed: int = 0, arch: str = "cnn", **kw) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model(arch, 1, 10, [0.5], [0.5], **({"width": 4} | kw))
    with torch.no_grad():  # non-trivial BN parameters and statistics, as in a trained model
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    return model


def random_set(n: int, seed: int = 0, size: int = 8, one_per_class: bool = False) -> TensorSet:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 1, size, size), generator=g, dtype=torch.uint8)
    y = torch.arange(n) % 10 if one_per_class else torch.randint(0, 10, (n,), generator=g)
    return TensorSet(x, y)


def run(model, clean, seed=0, **params):
    return nft.purify(model, clean, {**FAST, **params}, torch.Generator().manual_seed(seed), torch.device("cpu"))


def bns(model):
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def test_registered():
    assert get_defense("nft") is nft.purify


def test_only_masks_train_and_model_is_ordinary():
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gammas = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    out, info = run(model, random_set(64), lr=5.0, bn_stats="frozen")
    after = out.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        if key in gammas:
            continue
        assert torch.equal(after[key], value), f"{key} changed"
    changed = 0
    for (name, _), layer in zip(((n, m) for n, m in out.named_modules() if isinstance(m, nn.BatchNorm2d)),
                                info["masked_layers"]):
        assert layer["layer"] == name
        ratio = after[f"{name}.weight"] / before[f"{name}.weight"]
        assert ratio.min() >= layer["floor"] * (1 - 1e-6) and ratio.max() <= 1 + 1e-6
        changed += int((ratio < 1 - 1e-6).sum())
    assert changed > 0, "no mask moved"
    # an ordinary model again: original classes, no parametrization, gradients enabled as before
    for m in bns(out):
        assert type(m) is nn.BatchNorm2d and not parametrize.is_parametrized(m)
    assert all(p.requires_grad for p in out.parameters())
    assert not any("mask" in k or "parametrizations" in k for k in after)
    copy_model(out)  # loads into a fresh instance of the same architecture


def test_bn_stats_update_mode_changes_only_buffers_and_gammas():
    model = tiny_model()
    before = {k: v.clone() for k, v in model.named_parameters()}
    stats = {k: v.clone() for k, v in model.named_buffers() if "running_mean" in k}
    out, _ = run(model, random_set(64))  # default: train-mode BN as in the released code
    for key, value in out.named_parameters():
        if not (key.endswith(".weight") and value.ndim == 1):
            assert torch.equal(value, before[key]), key
    assert any(not torch.equal(dict(out.named_buffers())[k], v) for k, v in stats.items())


def test_floor_schedule_values():
    floors = nft.mask_floors(5, 0.8, 0.5)
    assert floors == pytest.approx([0.8 * math.exp(-0.5 * l) for l in range(1, 6)])
    assert floors[0] == pytest.approx(0.4852, abs=1e-4) and floors[-1] == pytest.approx(0.0657, abs=1e-4)
    rel = nft.mask_floors(5, 0.8, 0.5, "relative", 19)
    assert rel[0] == pytest.approx(floors[0]) and rel[-1] == pytest.approx(0.8 * math.exp(-9.5))
    assert nft.mask_floors(19, 0.8, 0.5, "relative", 19) == pytest.approx(nft.mask_floors(19, 0.8, 0.5))


def test_masks_respect_floor_after_every_step(monkeypatch):
    """A huge learning rate drives masks far out of range; the projection must catch every step."""
    seen = []
    real_fit = nft.fit

    def checking_fit(model, data, cfg, *, params, after_step, **kw):
        masks = list(params)

        def check(step):
            after_step(step)
            seen.append([(float(m.detach().min()), float(m.detach().max())) for m in masks])

        return real_fit(model, data, cfg, params=masks, after_step=check, **kw)

    monkeypatch.setattr(nft, "fit", checking_fit)
    _, info = run(tiny_model(), random_set(64), lr=50.0, l1_weight=0.0)
    floors = [layer["floor"] for layer in info["masked_layers"]]
    assert len(seen) == FAST["iterations"] and len(floors) == 5
    for step in seen:
        for (lo, hi), floor in zip(step, floors):
            assert floor - 1e-7 <= lo and hi <= 1.0
    assert any(layer["at_floor"] > 0 for layer in info["masked_layers"])


def test_first_bn_can_be_left_unmasked():
    model = tiny_model()
    first = bns(model)[0].weight.detach().clone()
    out, info = run(model, random_set(64), lr=5.0, mask_first_bn=False)
    assert len(info["masked_layers"]) == 4
    assert info["masked_layers"][0]["layer"] == "body.features.2.1"
    assert info["masked_layers"][0]["floor"] == pytest.approx(1.0 * math.exp(-0.5))  # nft's floor_alpha
    assert torch.equal(bns(out)[0].weight, first)


def test_folding_reproduces_masked_outputs_exactly(monkeypatch):
    probe = to_float(random_set(32, seed=5).x)
    masked = {}
    real_fit = nft.fit

    def recording_fit(model, data, cfg, **kw):
        result = real_fit(model, data, cfg, **kw)
        assert all(parametrize.is_parametrized(m) for m in bns(model))
        model.eval()
        with torch.no_grad():
            masked["out"] = model(probe.contiguous(memory_format=torch.channels_last))
        return result

    monkeypatch.setattr(nft, "fit", recording_fit)
    out, _ = run(tiny_model(), random_set(64), lr=5.0)
    with torch.no_grad():
        folded = out.eval()(probe.contiguous(memory_format=torch.channels_last))
    assert torch.equal(folded, masked["out"])


def test_one_sample_per_class():
    clean = random_set(10, one_per_class=True)
    out, info = run(tiny_model(), clean)
    assert info["n_c"] == 1.0 and info["num_classes"] == 10 and info["steps"] == FAST["iterations"]
    assert torch.isfinite(out(to_float(clean.x))).all()


def test_defense_sees_only_the_clean_set(monkeypatch):
    """Without augmentation and MixUp, every image the model is fed is one of the clean images;
    nothing is loaded from disk."""
    import backdoor.io

    def forbidden(*a, **k):
        raise AssertionError("the defense must not load anything")

    monkeypatch.setattr(backdoor.io, "load_tensors", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    clean = random_set(20, seed=3)
    allowed = to_float(clean.x).flatten(1)
    model = tiny_model()
    fed = []
    model.register_forward_pre_hook(lambda m, args: fed.append(args[0].detach().flatten(1).clone()))
    run(model, clean, mixup_alpha=0.0, crop_pad=0, flip=False)
    images = torch.cat(fed)
    assert len(images) > 0
    assert (images[:, None, :] == allowed[None, :, :]).all(-1).any(1).all()


def test_deterministic_for_a_fixed_generator():
    clean = random_set(64)
    a, info_a = run(tiny_model(), clean, seed=7)
    b, info_b = run(tiny_model(), clean, seed=7)
    c, _ = run(tiny_model(), clean, seed=8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert info_a["final_loss"] == info_b["final_loss"]
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


def test_preact_resnet_masks_every_bn_in_forward_order():
    model = tiny_model(arch="preact_resnet18", width=2)
    layers = nft.bn_forward_order(model, torch.rand(1, 1, 8, 8))
    names = [n for n, _ in layers]
    assert len(names) == 17 and names[0] == "body.layer1.0.bn1" and names[-1] == "body.bn"
    _, info = run(model, random_set(32), iterations=3)
    assert [layer["layer"] for layer in info["masked_layers"]] == names


# -- nft_released: the released Remove_Backdoor.py ---------------------------------------------------

def test_released_declaration_is_the_release_defaults():
    from backdoor.schema.defenses import NFT

    p = NFT.resolve({"type": "nft_released"})
    assert (p.lr, p.min_lr, p.momentum, p.weight_decay, p.iterations, p.batch_size) == (0.05, 0.02, 0.95, 0.0, 1000, 128)
    assert (p.mixup_alpha, p.l1_weight, p.floor_alpha, p.floor_beta, p.floor_depth) == (1.0, 1.0e-3, 0.8, 0.5, "index")
    assert (p.mask_first_bn, p.bn_stats, p.lr_rounds, p.crop_pad, p.flip) == (False, "update", 5, 4, True)
    assert get_defense("nft_released") is nft.purify


def test_released_floor_values_by_hand():
    """methods.md §3.3's table of 0.8·e^(−0.5·l) for the 19 masked BNs of the released ResNet-18."""
    floors = nft.mask_floors(19, 0.8, 0.5)
    table = {1: 0.485, 2: 0.294, 3: 0.179, 4: 0.108, 5: 0.066, 6: 0.040, 7: 0.024, 8: 0.015, 9: 0.0089,
             10: 0.0054, 12: 0.0020, 15: 0.00044, 19: 0.00006}
    for l, value in table.items():
        assert floors[l - 1] == pytest.approx(value, abs=0.6 * 10 ** math.floor(math.log10(value) - 1)), l


def test_released_schedule_is_the_per_round_staircase():
    """CosineAnnealingLR(T_max = 5, eta_min = 0.02) stepped after each 200-iteration round."""
    from backdoor.defenses.base import fit_config
    from backdoor.schema.defenses import NFT
    from backdoor.training import lr_factor

    cfg = fit_config(NFT.resolve({"type": "nft_released"}))
    factor = lr_factor(cfg, 1000)
    rates = [cfg.lr * factor(s) for s in range(1000)]
    assert [round(rates[200 * r], 5) for r in range(5)] == [0.05, 0.04714, 0.03964, 0.03036, 0.02286]
    assert len({round(r, 12) for r in rates[200:400]}) == 1 and min(rates) > 0.022
    smooth = lr_factor(fit_config(NFT.resolve({})), 1000)  # the study's nft: per step, reaching 0.02
    assert 0.05 * smooth(1000) == pytest.approx(0.02) and smooth(1) < smooth(0)


def test_released_leaves_the_first_bn_unmasked_with_shifted_floors():
    model = tiny_model()
    first = bns(model)[0]
    gamma = first.weight.detach().clone()
    out, info = run(model, random_set(64), type="nft_released", lr=5.0)
    names = [l["layer"] for l in info["masked_layers"]]
    assert len(names) == 4 and "body.features.0.1" not in names
    assert [round(l["floor"], 3) for l in info["masked_layers"]] == [0.485, 0.294, 0.179, 0.108]
    assert torch.equal(bns(out)[0].weight, gamma)


def test_released_is_deterministic():
    a, _ = run(tiny_model(), random_set(64), seed=3, type="nft_released")
    b, _ = run(tiny_model(), random_set(64), seed=3, type="nft_released")
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), k
