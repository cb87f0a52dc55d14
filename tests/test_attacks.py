"""Triggers change exactly the pixels they should; poisoned sets are consistent."""

import pytest
import torch

from backdoor.attacks import AttackContext, build_attack
from backdoor.data.tensors import TensorSet

CTX = AttackContext(num_classes=10, channels=1, size=28)


def data(n=200, channels=1, size=28, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return TensorSet(torch.randint(0, 200, (n, channels, size, size), generator=gen, dtype=torch.uint8),
                     torch.arange(n) % 10)


@pytest.mark.parametrize("channels,size,patch", [(1, 28, 3), (3, 32, 3), (3, 64, 6)])
def test_badnets_sets_exactly_the_bottom_right_square(channels, size, patch):
    attack = build_attack("badnets", {"patch_size": patch}, AttackContext(10, channels, size))
    x = data(8, channels, size).x
    out = attack.apply_trigger(x)
    changed = (out != x).any(0).any(0)  # (H, W) pixels changed in any image/channel
    expected = torch.zeros(size, size, dtype=torch.bool)
    expected[size - patch:, size - patch:] = True
    assert torch.equal(changed, expected)
    assert (out[:, :, size - patch:, size - patch:] == 255).all()
    assert torch.equal(x, data(8, channels, size).x)  # input untouched


def test_blend_is_the_rounded_convex_combination_with_a_seeded_pattern():
    attack = build_attack("blend", {"alpha": 0.2, "pattern_seed": 3}, CTX)
    again = build_attack("blend", {"alpha": 0.2, "pattern_seed": 3}, CTX)
    other = build_attack("blend", {"alpha": 0.2, "pattern_seed": 4}, CTX)
    assert torch.equal(attack.pattern, again.pattern) and not torch.equal(attack.pattern, other.pattern)
    x = data(4).x
    expected = (0.8 * x.float() + 0.2 * attack.pattern.float()).round().to(torch.uint8)
    assert torch.equal(attack.apply_trigger(x), expected)


def test_blend_with_a_user_image(tmp_path):
    from PIL import Image

    Image.new("RGB", (50, 40), (255, 0, 0)).save(tmp_path / "red.png")
    attack = build_attack("blend", {"alpha": 0.5, "image": str(tmp_path / "red.png")},
                          AttackContext(10, 3, 32))
    assert attack.pattern.shape == (3, 32, 32)
    assert attack.pattern[0].eq(255).all() and attack.pattern[1:].eq(0).all()
    with pytest.raises(ValueError, match="blend.image: .*missing.png': no such file"):
        build_attack("blend", {"image": str(tmp_path / "missing.png")}, CTX)


@pytest.mark.parametrize("kind", ["badnets", "blend"])
def test_poisoned_indices_labels_and_original_labels_are_consistent(kind):
    train = data(200)
    attack = build_attack(kind, {"poison_rate": 0.1, "target": 0}, CTX)
    poisoned = attack.poison(train, torch.Generator().manual_seed(0))
    idx = poisoned.poison_idx
    assert len(idx) == 20 and len(set(idx.tolist())) == 20 and torch.equal(idx, idx.sort().values)
    assert torch.equal(poisoned.original_labels, train.y)
    assert (poisoned.labels[idx] == 0).all()
    rest = torch.ones(200, dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(poisoned.labels[rest], train.y[rest])
    assert torch.equal(poisoned.images[rest], train.x[rest])
    assert torch.equal(poisoned.images[idx], attack.apply_trigger(train.x[idx]))
    again = attack.poison(train, torch.Generator().manual_seed(0))
    assert torch.equal(again.poison_idx, idx) and torch.equal(again.images, poisoned.images)


def test_all_to_all_shifts_labels_and_keeps_every_test_image():
    train = data(100)
    attack = build_attack("badnets", {"poison_rate": 0.5, "all_to_all": True}, CTX)
    poisoned = attack.poison(train, torch.Generator().manual_seed(1))
    idx = poisoned.poison_idx
    assert torch.equal(poisoned.labels[idx], (train.y[idx] + 1) % 10)
    test = attack.triggered_test(data(30))
    assert len(test) == 30 and torch.equal(test.y_target, (test.y_true + 1) % 10)


def test_triggered_test_set_excludes_the_target_class():
    test = data(100)
    triggered = build_attack("badnets", {"target": 3}, CTX).triggered_test(test)
    assert len(triggered) == 90 and (triggered.y_true != 3).all() and (triggered.y_target == 3).all()


def test_benign_poisons_nothing_and_probes_with_badnets():
    train = data(50)
    benign = build_attack("benign", {"probe": "badnets"}, CTX)
    poisoned = benign.poison(train, torch.Generator().manual_seed(0))
    assert len(poisoned.poison_idx) == 0 and torch.equal(poisoned.images, train.x)
    assert torch.equal(benign.apply_trigger(train.x), build_attack("badnets", {}, CTX).apply_trigger(train.x))


def test_bad_attack_parameters_are_named():
    with pytest.raises(KeyError, match="unknown attack type 'badnet'"):
        build_attack("badnet", {}, CTX)
    with pytest.raises(ValueError, match="target = 12"):
        build_attack("badnets", {"target": 12}, CTX)
    with pytest.raises(ValueError, match="patch_size"):
        build_attack("badnets", {"patch_size": 40}, CTX)
