"""The training loop and on-device augmentation."""

import pytest
import torch

from backdoor.augment import random_crop, random_flip
from backdoor.data.tensors import TensorSet
from backdoor.models import build_model
from backdoor.training import FitConfig, fit


def test_random_crop_is_a_zero_filled_shift():
    x = torch.arange(2 * 1 * 5 * 5, dtype=torch.float32).view(2, 1, 5, 5) + 1
    out = random_crop(x, 2, torch.Generator().manual_seed(0))
    for img, src in zip(out, x):
        # Every output is the source shifted by (dy, dx) in [-2, 2] with zeros shifted in.
        found = False
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                shifted = torch.zeros_like(src)
                ys, xs = slice(max(0, -dy), 5 - max(0, dy)), slice(max(0, -dx), 5 - max(0, dx))
                yd, xd = slice(max(0, dy), 5 - max(0, -dy)), slice(max(0, dx), 5 - max(0, -dx))
                shifted[:, ys, xs] = src[:, yd, xd]
                found |= torch.equal(shifted, img)
        assert found


def test_random_flip_flips_about_half():
    x = torch.rand(1000, 1, 3, 3)
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = (out == x.flip(3)).flatten(1).all(1)
    same = (out == x).flatten(1).all(1)
    assert (flipped | same).all() and 400 < flipped.sum() < 600


def tiny_data(n=64):
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 2
    x = torch.randint(0, 60, (n, 1, 8, 8), generator=gen, dtype=torch.uint8)
    x[y == 1, :, :4] = 250  # class 1: bright top half
    return TensorSet(x, y)


def run(seed):
    torch.manual_seed(0)
    model = build_model("cnn", 1, 2, [0.5], [0.5], width=4)
    result = fit(model, tiny_data(), FitConfig(lr=0.1, epochs=3, batch_size=16, crop_pad=1, flip=True),
                 gen=torch.Generator().manual_seed(seed), log=lambda *_: None)
    return model, result


def test_fit_learns_and_is_deterministic():
    model, result = run(1)
    again, _ = run(1)
    other, _ = run(2)
    assert result.steps == 12 and result.final_loss < result.losses[0]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert not all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))


def test_fit_config_needs_exactly_one_length():
    with pytest.raises(ValueError, match="exactly one"):
        FitConfig(lr=0.1)
    with pytest.raises(ValueError, match="exactly one"):
        FitConfig(lr=0.1, epochs=1, iterations=1)
    assert FitConfig(lr=0.1, iterations=7).total_steps(1000) == 7
    assert FitConfig(lr=0.1, epochs=2, batch_size=10).total_steps(25) == 6


def test_cosine_schedule_ends_at_min_lr_and_hooks_run():
    model = build_model("cnn", 1, 2, [0.5], [0.5], width=4)
    seen = []
    cfg = FitConfig(lr=0.1, iterations=5, batch_size=8, min_lr=0.01)
    fit(model, tiny_data(), cfg, gen=torch.Generator().manual_seed(0), after_step=seen.append,
        log=lambda *_: None)
    assert seen == [0, 1, 2, 3, 4]


def test_after_step_can_stop_early_and_adam_trains():
    model = build_model("cnn", 1, 2, [0.5], [0.5], width=4)
    before = [p.detach().clone() for p in model.parameters()]
    cfg = FitConfig(lr=0.01, iterations=50, batch_size=8, optimizer="adam")
    result = fit(model, tiny_data(), cfg, gen=torch.Generator().manual_seed(0), after_step=lambda s: s == 2,
                 log=lambda *_: None)
    assert result.steps == 3
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.raises(ValueError, match="optimizer 'rmsprop'"):
        fit(model, tiny_data(), FitConfig(lr=0.01, iterations=1, optimizer="rmsprop"),
            gen=torch.Generator().manual_seed(0), log=lambda *_: None)
