"""Input-aware dynamic backdoor: deterministic crafting, sample-specific triggers, poisoned-set layout."""

import pytest
import torch

from backdoor.attacks.base import AttackContext
from backdoor.attacks.input_aware import Generator, InputAware
from backdoor.data.tensors import TensorSet
from conftest import tiny_cnn

CTX = AttackContext(num_classes=10, channels=1, size=28)
FAST = {"epochs": 1, "mask_epochs": 1, "batch_size": 32, "poison_rate": 0.1, "target": 0}


def data(n=128, channels=1, size=28, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return TensorSet(torch.randint(0, 256, (n, channels, size, size), generator=gen, dtype=torch.uint8),
                     torch.arange(n) % 10)


def crafted(params=None, seed=0):
    attack = InputAware({**FAST, **(params or {})}, CTX)
    asset = attack.craft(data(), tiny_cnn(), torch.Generator().manual_seed(seed), "cpu")
    return attack, asset


def mean_mask(attack, images):
    with torch.inference_mode():
        return attack.mask_generator(images.float() / 255).mean().item()


@pytest.fixture(scope="module")
def craft_once():
    torch.set_num_threads(1)
    return crafted()


def test_craft_is_deterministic_and_leaves_the_surrogate_alone(craft_once):
    attack, asset = craft_once
    surrogate = tiny_cnn()
    before = {k: v.clone() for k, v in surrogate.state_dict().items()}
    again = InputAware(dict(FAST), CTX).craft(data(), surrogate, torch.Generator().manual_seed(0), "cpu")
    for key in ("pattern_generator", "mask_generator"):
        assert asset[key].keys() == again[key].keys()
        assert all(torch.equal(asset[key][k], again[key][k]) for k in asset[key])
        assert all(v.device.type == "cpu" for v in asset[key].values())
    for k, v in surrogate.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert 0 <= asset["craft_acc"] <= 100 and 0 <= asset["craft_asr"] <= 100
    assert asset["craft_eval_images"] == 12  # min(1000, 128 // 10) held out
    other = InputAware(dict(FAST), CTX).craft(data(), tiny_cnn(), torch.Generator().manual_seed(1), "cpu")
    assert not torch.equal(next(iter(asset["pattern_generator"].values())),
                           next(iter(other["pattern_generator"].values())))


def test_apply_trigger_is_uint8_sample_specific_and_round_trips_through_the_asset(craft_once, tmp_path):
    attack, asset = craft_once
    x = data(16, seed=3).x
    out = attack.apply_trigger(x)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert (out != x).any() and torch.equal(x, data(16, seed=3).x)
    torch.save(asset, tmp_path / "asset.pt")
    fresh = InputAware(dict(FAST), CTX)
    fresh.use_asset(torch.load(tmp_path / "asset.pt"))
    assert torch.equal(fresh.apply_trigger(x), out)
    # the trigger is computed from each image: x + m(x)(g(x) − x), rounded
    with torch.inference_mode():
        xf = x.float() / 255
        expected = xf + fresh.mask_generator(xf) * (fresh.pattern_generator(xf) - xf)
    assert torch.equal(out, expected.mul(255).round().clamp(0, 255).to(torch.uint8))


def test_apply_trigger_before_craft_or_use_asset_raises():
    with pytest.raises(RuntimeError, match="craft.*use_asset"):
        InputAware({}, CTX).apply_trigger(data(2).x)


def test_mask_pretraining_pushes_masks_toward_the_density():
    x = data(64, seed=5).x
    start, _ = crafted({"mask_epochs": 0, "epochs": 0})
    trained, _ = crafted({"mask_epochs": 3, "epochs": 0})
    assert mean_mask(trained, x) < mean_mask(start, x)
    assert 0 <= mean_mask(trained, x) <= 1


def test_poison_relabels_exactly_the_poisoned_and_keeps_cross_labels(craft_once):
    attack, _ = craft_once
    train = data(200, seed=7)
    poisoned = attack.poison(train, torch.Generator().manual_seed(0))
    idx = poisoned.poison_idx
    assert len(idx) == 20 and len(set(idx.tolist())) == 20 and torch.equal(idx, idx.sort().values)
    assert (poisoned.labels[idx] == 0).all()
    assert torch.equal(poisoned.original_labels, train.y)
    assert torch.equal(poisoned.images[idx], attack.apply_trigger(train.x[idx]))
    rest = torch.ones(200, dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(poisoned.labels[rest], train.y[rest])  # cross samples keep their labels
    changed = rest & (poisoned.images != train.x).flatten(1).any(1)
    assert 1 <= changed.sum() <= 20  # ≈ cross_ratio × 20 cross samples, the rest untouched
    cross = changed.nonzero().flatten()
    # cross samples carry another image's trigger, not their own
    assert not torch.equal(poisoned.images[cross], attack.apply_trigger(train.x[cross]))
    again = attack.poison(train, torch.Generator().manual_seed(0))
    assert torch.equal(again.images, poisoned.images) and torch.equal(again.poison_idx, idx)


def test_poison_cross_count_and_all_to_all(craft_once):
    _, asset = craft_once
    attack = InputAware({**FAST, "poison_rate": 0.2, "cross_ratio": 0.5, "all_to_all": True}, CTX)
    attack.use_asset(asset)
    train = data(100, seed=8)
    poisoned = attack.poison(train, torch.Generator().manual_seed(2))
    idx = poisoned.poison_idx
    assert len(idx) == 20 and torch.equal(poisoned.labels[idx], (train.y[idx] + 1) % 10)
    rest = torch.ones(100, dtype=torch.bool)
    rest[idx] = False
    assert (rest & (poisoned.images != train.x).flatten(1).any(1)).sum() <= 10
    none = InputAware({**FAST, "cross_ratio": 0.0}, CTX)
    none.use_asset(asset)
    p = none.poison(train, torch.Generator().manual_seed(2))
    untouched = torch.ones(100, dtype=torch.bool)
    untouched[p.poison_idx] = False
    assert torch.equal(p.images[untouched], train.x[untouched])


def test_triggered_test_excludes_target_class(craft_once):
    attack, _ = craft_once
    test = data(30, seed=9)
    bd = attack.triggered_test(test)
    assert len(bd) == 27 and (bd.y_true != 0).all() and (bd.y_target == 0).all()
    assert torch.equal(bd.x, attack.apply_trigger(test.x[test.y != 0]))


@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32), (3, 64)])
def test_generators_keep_the_image_shape(channels, size):
    x = torch.rand(2, channels, size, size)
    pattern, mask = Generator(channels, channels)(x), Generator(channels, 1, threshold=True)(x)
    assert pattern.shape == x.shape and mask.shape == (2, 1, size, size)
    assert pattern.min() >= 0 and pattern.max() <= 1 and mask.min() >= 0 and mask.max() <= 1


def test_invalid_params_are_refused():
    with pytest.raises(ValueError, match="cross_ratio"):
        InputAware({"poison_rate": 0.6, "cross_ratio": 1.0}, CTX)
    with pytest.raises(ValueError, match="mask_density"):
        InputAware({"mask_density": 0}, CTX)


def constant_asset(mask_logit: float, pattern_logit: float) -> dict:
    """Generators whose last conv outputs constants: mask ≈ 1 (or 0) everywhere, pattern 0.5 + tanh/2."""
    g, m = Generator(1, 1), Generator(1, 1, threshold=True)
    for net, bias in ((g, pattern_logit), (m, mask_logit)):
        last = net.decoder
        torch.nn.init.zeros_(last.weight)
        torch.nn.init.constant_(last.bias, bias)
    return {"pattern_generator": g.state_dict(), "mask_generator": m.state_dict()}


def test_poison_gives_exactly_round_cross_ratio_times_count_cross_samples():
    attack = InputAware({"poison_rate": 0.1, "cross_ratio": 1.0, "target": 3}, CTX)
    attack.use_asset(constant_asset(mask_logit=5.0, pattern_logit=0.0))  # full mask, pattern 128
    train = TensorSet(torch.zeros(200, 1, 28, 28, dtype=torch.uint8), torch.arange(200) % 10)
    poisoned = attack.poison(train, torch.Generator().manual_seed(4))
    idx = poisoned.poison_idx
    changed = (poisoned.images != train.x).flatten(1).any(1)
    assert len(idx) == 20 and changed.sum() == 40 and changed[idx].all()
    assert (poisoned.images[changed] == 128).all() and (poisoned.images[~changed] == 0).all()
    assert (poisoned.labels[idx] == 3).all()
    cross = changed.clone()
    cross[idx] = False
    assert torch.equal(poisoned.labels[cross], train.y[cross])
    assert torch.equal(poisoned.labels[~changed], train.y[~changed])


def test_diversity_has_finite_gradients_for_identical_outputs():
    from backdoor.attacks.input_aware import diversity

    x1, x2 = torch.rand(4, 1, 8, 8), torch.rand(4, 1, 8, 8)
    out = torch.zeros(4, 1, 8, 8, requires_grad=True)
    diversity(x1, x2, out, out.detach().clone()).backward()
    assert torch.isfinite(out.grad).all()
