"""Trojan, SIG, WaNet and LC: exact trigger pixels, poisoned counts and labels, determinism."""

import math

import pytest
import torch

from backdoor.attacks import AttackContext, build_attack
from backdoor.data.tensors import TensorSet
from conftest import tiny_cnn

CTX = AttackContext(num_classes=10, channels=1, size=28)


def data(n=200, channels=1, size=28, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return TensorSet(torch.randint(20, 200, (n, channels, size, size), generator=gen, dtype=torch.uint8),
                     torch.arange(n) % 10)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def surrogate():
    return tiny_cnn(0).eval()


def crafted(kind, params=None, train=None, ctx=CTX, seed=0):
    attack = build_attack(kind, {"target": 0, **(params or {})}, ctx)
    asset = attack.craft(train if train is not None else data(), surrogate(), gen(seed), torch.device("cpu"))
    return attack, asset


# -- SIG ---------------------------------------------------------------------------------------

def test_sig_adds_the_rounded_vertical_sinusoid_and_clips():
    attack = build_attack("sig", {"delta": 40, "frequency": 6}, CTX)
    x = data(4).x
    x[0, 0, 0, :] = 255  # a saturated row must clip, not wrap around
    out = attack.apply_trigger(x)
    j = torch.arange(28, dtype=torch.float64)
    expected = (x.double() + 40 * torch.sin(2 * math.pi * j * 6 / 28)).round().clamp(0, 255).to(torch.uint8)
    assert torch.equal(out, expected)
    assert (out[:, :, 5] - out[:, :, 9]).abs().sum() > 0 and torch.equal(out[0, 0, 0].max(), torch.tensor(255, dtype=torch.uint8))


def test_clean_label_attacks_poison_target_images_only_and_keep_labels():
    train = data(200)  # 20 images of class 0
    attack = build_attack("sig", {"poison_rate": 0.05, "target": 0}, CTX)
    poisoned = attack.poison(train, gen())
    assert len(poisoned.poison_idx) == 10 and (train.y[poisoned.poison_idx] == 0).all()
    assert torch.equal(poisoned.labels, train.y)
    capped = build_attack("sig", {"poison_rate": 0.5, "target": 0}, CTX).poison(train, gen())
    assert len(capped.poison_idx) == 20  # min(round(0.5 · 200), #target)
    with pytest.raises(ValueError, match="no all-to-all variant"):
        build_attack("sig", {"all_to_all": True}, CTX)


# -- WaNet -------------------------------------------------------------------------------------

def test_wanet_identity_warp_leaves_images_unchanged_and_the_field_is_seeded():
    x = data(6).x
    still = build_attack("wanet", {"s": 1e-9}, CTX)
    assert torch.equal(still.apply_trigger(x), x)
    a, b = build_attack("wanet", {"grid_seed": 1}, CTX), build_attack("wanet", {"grid_seed": 1}, CTX)
    c = build_attack("wanet", {"grid_seed": 2}, CTX)
    assert torch.equal(a.grid, b.grid) and not torch.equal(a.grid, c.grid)
    # s = 0.5 moves pixels by a fraction of a pixel: subtle, but it changes the image
    assert (a.apply_trigger(x) != x).any() and ((a.grid - a.identity_grid).abs().max() * 14) < 2


def test_wanet_poisons_relabels_and_adds_cross_samples_with_true_labels():
    train = data(200)
    attack = build_attack("wanet", {"poison_rate": 0.1, "cross_ratio": 2.0, "target": 0}, CTX)
    poisoned = attack.poison(train, gen())
    idx = poisoned.poison_idx
    assert len(idx) == 20 and (poisoned.labels[idx] == 0).all()
    assert torch.equal(poisoned.images[idx], attack.apply_trigger(train.x[idx]))
    rest = torch.ones(200, dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(poisoned.labels[rest], train.y[rest])
    changed_rest = (poisoned.images[rest] != train.x[rest]).flatten(1).any(1)
    assert 30 <= changed_rest.sum() <= 40  # the 40 noise-mode samples (a rare one may round back)
    again = attack.poison(train, gen())
    assert torch.equal(again.images, poisoned.images) and torch.equal(again.poison_idx, idx)


# -- Trojan ------------------------------------------------------------------------------------

def test_trojan_stamps_its_pattern_into_the_scaled_square_only():
    attack, asset = crafted("trojan", {"iterations": 3, "craft_images": 16})
    assert (attack.mask_size, attack.margin) == (7, 3)
    x = data(5).x
    out = attack.apply_trigger(x)
    changed = (out != x).any(0).any(0)
    expected = torch.zeros(28, 28, dtype=torch.bool)
    expected[18:25, 18:25] = True
    assert not (changed & ~expected).any()  # nothing outside the mask
    assert (out[:, :, 18:25, 18:25] == asset["pattern"]).all()
    for size, mask, margin in ((32, 8, 3), (64, 16, 6)):
        big = build_attack("trojan", {}, AttackContext(10, 3, size))
        assert (big.mask_size, big.margin) == (mask, margin)


def test_trojan_craft_raises_the_chosen_neurons_and_is_deterministic():
    attack, asset = crafted("trojan", {"iterations": 30, "step_size": 0.05, "craft_images": 32})
    assert asset["activation_after"] > asset["activation_before"]
    _, again = crafted("trojan", {"iterations": 30, "step_size": 0.05, "craft_images": 32})
    assert torch.equal(asset["pattern"], again["pattern"])
    fresh = build_attack("trojan", {}, CTX)
    with pytest.raises(RuntimeError, match="craft"):
        fresh.apply_trigger(data(2).x)
    fresh.use_asset(asset)
    assert torch.equal(fresh.apply_trigger(data(3).x), attack.apply_trigger(data(3).x))


def test_trojan_poisoned_set_is_consistent():
    attack, _ = crafted("trojan", {"iterations": 2, "craft_images": 8})
    train = data(200)
    poisoned = attack.poison(train, gen())
    assert len(poisoned.poison_idx) == 20 and (poisoned.labels[poisoned.poison_idx] == 0).all()
    test = attack.triggered_test(data(50))
    assert len(test) == 45 and (test.y_true != 0).all()


# -- LC ----------------------------------------------------------------------------------------

def test_lc_trigger_is_a_checkerboard_in_each_corner():
    attack = build_attack("lc", {}, CTX)
    x = data(3).x
    out = attack.apply_trigger(x)
    checker = torch.tensor([[255, 0, 255], [0, 255, 0], [255, 0, 255]], dtype=torch.uint8)
    for rows in (slice(0, 3), slice(25, 28)):
        for cols in (slice(0, 3), slice(25, 28)):
            assert (out[:, :, rows, cols] == checker).all()
    inner = torch.ones(28, 28, dtype=torch.bool)
    for r in (slice(0, 3), slice(25, 28)):
        for c in (slice(0, 3), slice(25, 28)):
            inner[r, c] = False
    assert torch.equal(out[:, :, inner], x[:, :, inner])
    assert build_attack("lc", {}, AttackContext(10, 3, 64)).patch_size == 6


def test_lc_craft_stays_in_the_eps_ball_and_poisons_target_images_with_labels_kept():
    train = data(200)
    attack, asset = crafted("lc", {"eps": 8, "step_size": 2, "steps": 3}, train=train)
    idx = asset["idx"]
    assert torch.equal(idx, (train.y == 0).nonzero().flatten())
    diff = asset["images"].int() - train.x[idx].int()
    assert diff.abs().max() <= 8 and diff.abs().max() > 0
    poisoned = attack.poison(train, gen())
    assert len(poisoned.poison_idx) == 20 and torch.equal(poisoned.labels, train.y)
    p = poisoned.poison_idx
    expected = attack.apply_trigger(asset["images"][torch.searchsorted(idx, p)])
    assert torch.equal(poisoned.images[p], expected)
    _, again = crafted("lc", {"eps": 8, "step_size": 2, "steps": 3}, train=train)
    assert torch.equal(again["images"], asset["images"])
    with pytest.raises(ValueError, match="another training set"):
        attack.poison(data(100), gen())


@pytest.mark.parametrize("kind", ["wanet", "trojan"])
def test_all_to_all_variants_shift_labels_and_keep_every_test_image(kind):
    params = {"all_to_all": True, **TINY_CRAFT.get(kind, {})}
    attack = build_attack(kind, params, CTX)
    if attack.crafted:
        attack.craft(data(), surrogate(), gen(), torch.device("cpu"))
    train = data(200)
    poisoned = attack.poison(train, gen())
    idx = poisoned.poison_idx
    assert len(idx) == 20 and torch.equal(poisoned.labels[idx], (train.y[idx] + 1) % 10)
    test = attack.triggered_test(data(30))
    assert len(test) == 30 and torch.equal(test.y_target, (test.y_true + 1) % 10)


TINY_CRAFT = {"trojan": {"iterations": 2, "craft_images": 8}, "lc": {"steps": 1},
              "input_aware": {"mask_epochs": 1, "epochs": 1, "batch_size": 32}}


@pytest.mark.parametrize("kind", ["badnets", "blend", "trojan", "sig", "wanet", "lc", "input_aware"])
def test_every_attack_poisons_the_stated_count_deterministically_and_tests_off_target(kind):
    train = data(200)  # 20 images per class

    def poisoned_once():
        attack = build_attack(kind, {"target": 0, "poison_rate": 0.05, **TINY_CRAFT.get(kind, {})}, CTX)
        if attack.crafted:
            attack.craft(train, surrogate(), gen(), torch.device("cpu"))
        return attack, attack.poison(train, gen(1))

    attack, first = poisoned_once()
    _, second = poisoned_once()
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    idx = first.poison_idx
    assert len(idx) == 10 and torch.equal(first.original_labels, train.y)
    if attack.clean_label:
        assert torch.equal(first.labels, train.y) and (train.y[idx] == 0).all()
    else:
        assert (first.labels[idx] == 0).all()
    rest = torch.ones(200, dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(first.labels[rest], train.y[rest])  # only poisoned samples are relabelled
    test = attack.triggered_test(data(50))
    assert len(test) == 45 and (test.y_true != 0).all() and (test.y_target == 0).all()
