"""Architectures accept 1- or 3-channel inputs of every registered size; checkpoints know their arch."""

import pytest
import torch

from backdoor.models import build_model, copy_model, load_checkpoint, save_checkpoint


@pytest.mark.parametrize("arch,extra", [("cnn", {"width": 8}), ("preact_resnet18", {"width": 8})])
@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32), (3, 64), (1, 32)])
def test_forward_shapes(arch, extra, channels, size):
    model = build_model(arch, channels, 43, [0.5] * channels, [0.25] * channels, **extra).eval()
    assert model(torch.rand(2, channels, size, size)).shape == (2, 43)


def test_preact_resnet18_has_the_standard_size():
    model = build_model("preact_resnet18", 3, 10, [0.5] * 3, [0.25] * 3)
    assert 11.0e6 < sum(p.numel() for p in model.parameters()) < 11.4e6


def test_checkpoint_round_trip_and_architecture_check(tmp_path):
    model = build_model("cnn", 1, 10, [0.3], [0.3], width=4).eval()
    save_checkpoint(model, tmp_path / "m.pt")
    loaded = load_checkpoint(tmp_path / "m.pt", expect_arch="cnn").eval()
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(model(x), loaded(x))
    assert torch.equal(copy_model(model).eval()(x), model(x))
    with pytest.raises(ValueError, match="holds a 'cnn' model, but 'preact_resnet18'"):
        load_checkpoint(tmp_path / "m.pt", expect_arch="preact_resnet18")
    torch.save({"weights": 1}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not a checkpoint written by this study"):
        load_checkpoint(tmp_path / "foreign.pt")


def test_unknown_architecture_is_named():
    with pytest.raises(KeyError, match="unknown architecture 'resnet'"):
        build_model("resnet", 1, 10, [0.5], [0.5])
