"""FST (feature shift tuning): the head is re-initialised and pushed away from the original, every
parameter trains, ‖w‖ stays at ‖w_ori‖, bad settings are refused naming the key."""

from __future__ import annotations

import pytest
import torch

import backdoor.defenses.fst as fst
from backdoor.defenses import get_defense
from backdoor.schema import ParamsError
from backdoor.schema.defenses import FST
from conftest import tiny_cnn, tiny_data

FAST = {"type": "fst", "epochs": 3, "batch_size": 16}


def run(model, clean, seed=0, **params):
    return fst.purify(model, clean, {**FAST, **params}, torch.Generator().manual_seed(seed), torch.device("cpu"))


def test_registered_and_declared():
    assert get_defense("fst") is fst.purify
    p = FST.of({})
    assert (p.lr, p.epochs, p.iterations, p.alpha, p.momentum, p.weight_decay) == (0.01, 10, None, 0.1, 0.9, 0.0)
    assert p.reinit and p.project


def test_every_parameter_trains_and_the_head_moves_away():
    model = tiny_cnn()
    head = fst.linear_head(model)
    w_ori = head.weight.detach().clone()
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    out, info = run(model, tiny_data(64), alpha=0.5)
    after = dict(out.named_parameters())
    assert all(not torch.equal(after[k].detach(), v) for k, v in before.items()), "a parameter did not train"
    w = fst.linear_head(out).weight.detach()
    # the norm constraint holds, and the inner product with the original head fell far below ‖w_ori‖²
    assert torch.linalg.vector_norm(w).item() == pytest.approx(torch.linalg.vector_norm(w_ori).item(), rel=1e-5)
    assert info["inner_product"] == pytest.approx(float((w * w_ori).sum()), rel=1e-5, abs=1e-6)
    assert info["inner_product"] < 0.5 * info["inner_product_original"]
    assert info["steps"] == 3 * 4


def test_penalty_lowers_the_inner_product():
    """Same seed, same data, head kept (no re-initialisation): α > 0 ends further from w_ori than α = 0,
    and the norm projection holds after every step."""
    data = tiny_data(64)
    _, plain = run(tiny_cnn(), data, alpha=0.0, reinit=False, lr=0.05)
    _, pushed = run(tiny_cnn(), data, alpha=2.0, reinit=False, lr=0.05)
    assert plain["inner_product_start"] == pytest.approx(plain["inner_product_original"], rel=1e-6)
    assert pushed["inner_product"] < plain["inner_product"]
    assert pushed["inner_product"] < pushed["inner_product_start"]
    assert pushed["cosine"] < plain["cosine"]


def test_projection_after_every_step(monkeypatch):
    norms = []
    real_fit = fst.fit

    def checking_fit(model, data, cfg, *, after_step, **kw):
        head = fst.linear_head(model)

        def check(step):
            after_step(step)
            norms.append(torch.linalg.vector_norm(head.weight.detach()).item())

        return real_fit(model, data, cfg, after_step=check, **kw)

    monkeypatch.setattr(fst, "fit", checking_fit)
    model = tiny_cnn()
    target = torch.linalg.vector_norm(fst.linear_head(model).weight.detach()).item()
    run(model, tiny_data(32), lr=1.0)
    assert len(norms) == 3 * 2 and all(n == pytest.approx(target, rel=1e-5) for n in norms)


def test_reinitialisation_is_seeded():
    a, _ = run(tiny_cnn(), tiny_data(32), seed=3, epochs=1)
    b, _ = run(tiny_cnn(), tiny_data(32), seed=3, epochs=1)
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), k


@pytest.mark.parametrize("key, value", [("alpha", -0.1), ("lr", 0.0), ("epochs", 0), ("reinit", "yes"),
                                        ("project", 1), ("momentum", 1.5)])
def test_bad_settings_refused_naming_the_key(key, value):
    with pytest.raises(ParamsError, match=rf"fst\.{key}"):
        FST.of({key: value})


def test_bad_setting_refused_in_params():
    from backdoor.schema.study import entry

    config = {"defenses": {"mine": {"type": "fst", "alpha": -1.0}}}
    with pytest.raises(ParamsError, match=r"defenses\.mine\.alpha"):
        entry(config, "defenses", "mine")
