"""Precision: ``auto`` picks bf16 only on hardware with bf16 units; under bf16 autocast the master
weights stay fp32, and the parts whose math needs fp32 (the per-sample Fisher, Fast FIP's spectral
reconstruction and folding) give exactly their fp32 results."""

import pytest
import torch

from backdoor import device as D
from backdoor import steps
from backdoor.defenses import fast_fip, fip
from backdoor.io import read_record, save_tensors
from backdoor.training import FitConfig, fit
from conftest import tiny_cnn, tiny_data

BF16 = D.autocast("bf16", "cpu")


def test_auto_is_bf16_only_where_the_cpu_has_bf16_units(monkeypatch):
    monkeypatch.setattr(D, "cpu_flags", lambda: frozenset({"avx512f", "avx2"}))
    assert D.resolve_precision("auto", "cpu") == "fp32"
    for flag in ("amx_bf16", "avx512_bf16"):
        monkeypatch.setattr(D, "cpu_flags", lambda flag=flag: frozenset({"avx512f", flag}))
        assert D.resolve_precision("auto", "cpu") == "bf16"
    assert D.resolve_precision("fp32", "cpu") == "fp32" and D.resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="precision: 'fp16'"):
        D.resolve_precision("fp16", "cpu")


def test_bf16_runs_convolutions_in_bf16_and_keeps_fp32_master_weights():
    model, data = tiny_cnn(0), tiny_data(64)
    seen = []
    model.body.features[0][0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with BF16:
        result = fit(model, data, FitConfig(lr=0.05, iterations=4, batch_size=16), gen=torch.Generator().manual_seed(0),
                     log=lambda *_: None)
    assert seen and set(seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert result.steps == 4 and torch.isfinite(torch.tensor(result.final_loss))


def test_bf16_forwards_see_the_weights_as_they_are_now():
    """A job runs inside one autocast context: each forward must use the current weights, not a copy
    cached at the first forward (with autocast's cache a model trained under bf16 never learned)."""
    model, x = tiny_cnn(0).eval(), torch.rand(8, 1, 28, 28)
    with BF16:
        before = model(x)
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1:  # the weights autocast casts to bf16 (convolutions, the classifier)
                    p.mul_(-1)
        after = model(x)
    assert not torch.allclose(before, after)


def test_bf16_training_lowers_the_loss_like_fp32():
    data = tiny_data(256)
    finals = {}
    for precision in ("fp32", "bf16"):
        model = tiny_cnn(0)
        with D.autocast(precision, "cpu"):
            result = fit(model, data, FitConfig(lr=0.05, iterations=60, batch_size=32, crop_pad=0, flip=False),
                         gen=torch.Generator().manual_seed(0), log=lambda *_: None)
        finals[precision] = (result.losses[0], sum(result.losses[-10:]) / 10)
    (start, fp32), (_, bf16) = finals["fp32"], finals["bf16"]
    assert fp32 < start - 0.2 and abs(bf16 - fp32) < 0.25 * (start - fp32), finals  # random labels: slow


def test_the_fisher_diagonal_is_computed_in_fp32_under_bf16():
    model, data = tiny_cnn(0), tiny_data(12)
    named = dict(model.named_parameters())
    ref = fip.fisher_diagonal(model, named, data, "cpu", batch_size=5)
    with BF16:
        got = fip.fisher_diagonal(model, named, data, "cpu", batch_size=5)
    assert all(torch.equal(ref[n], got[n]) for n in named)


def test_fast_fip_reconstruction_and_folding_are_fp32_under_bf16():
    model = tiny_cnn(0).eval()
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.dim() > 1}
    with BF16:
        fast_fip.attach_spectral_shifts(model)
        shifted = {n: m.weight for n, m in model.named_modules() if isinstance(m, fast_fip.SHIFTED)}
        assert all(w.dtype == torch.float32 for w in shifted.values())
        fast_fip.fold_spectral_shifts(model)
    for name, w in model.named_parameters():
        if name in weights:
            assert w.dtype == torch.float32 and torch.allclose(w, weights[name], atol=1e-5), name


def test_the_purify_step_records_precision_and_threads(tmp_path):
    from test_steps import prepared

    from backdoor.models import save_checkpoint

    prep = prepared()
    save_tensors(prep, tmp_path / "prep.pt")
    steps.poison(str(tmp_path / "prep.pt"), str(tmp_path / "p.pt"), "badnets",
                 {"type": "badnets", "target": 0, "poison_rate": 0.1, "seed": 0})
    save_checkpoint(tiny_cnn(0), tmp_path / "m.pt")
    (tmp_path / "m.json").write_text('{"acc": 50.0, "asr": 50.0, "ra": 10.0}')
    for precision in ("fp32", "bf16"):
        out = tmp_path / f"{precision}.json"
        steps.purify(str(tmp_path / "prep.pt"), str(tmp_path / "p.pt"), str(tmp_path / "m.pt"), str(tmp_path / "m.json"),
                     str(tmp_path / f"{precision}.pt"), str(out), ids={"attack": "badnets", "defense": "ft"},
                     defense_params={"type": "ft", "lr": 0.01, "iterations": 2, "batch_size": 8}, budget=20, seed=0,
                     device="cpu", precision=precision)
        row = read_record(out)  # threads are a timing: in the .time.json beside it
        assert row["precision"] == precision and row["threads"] == torch.get_num_threads() == 1


def test_precision_is_a_parameter_of_every_step_it_changes():
    from backdoor.params import step_keys

    for step in ("craft", "train", "purify"):
        assert "precision" in step_keys(step, dataset="d", model="m", attack="a", defense="x")
    for step in ("download", "prepare", "poison", "smoothness", "aggregate", "report"):  # fp32 or no torch math
        assert "precision" not in step_keys(step, dataset="d", model="m", attack="a", defense="x")
