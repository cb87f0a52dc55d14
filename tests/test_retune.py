"""The re-tuning attack (analysis.retune): a model that never had a backdoor stays near its floor, a
backdoored one lightly fine-tuned on clean data re-learns it from 5 poisoned images; the draw is the
defense's clean draw and seeded; bad settings are refused naming the key."""

from __future__ import annotations

import copy

import pytest
import torch
import yaml

from backdoor import steps
from backdoor.analysis.retune import poisoned_images, retune_attack
from backdoor.data.tensors import TensorSet
from backdoor.io import load_tensors, save_tensors
from backdoor.models import build_model
from backdoor.schema import ParamsError
from backdoor.schema.study import Retune
from backdoor.training import FitConfig, fit
from conftest import ROOT

SIZE, POOL, BUDGET = 12, 200, 100


def bars(n: int, gen: torch.Generator) -> TensorSet:
    """Learnable 12×12 images: class c is a bright bar on row c (columns 0–8) over dim noise; the
    bottom-right 3×3 corner, where the badnets patch goes, holds noise only."""
    y = torch.randint(0, 10, (n,), generator=gen)
    x = torch.randint(0, 60, (n, 1, SIZE, SIZE), generator=gen, dtype=torch.uint8)
    x[torch.arange(n), 0, y, :9] = 200
    return TensorSet(x, y)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """prepared + the badnets and benign poisoned files, written and read as the DAG's steps do."""
    root = tmp_path_factory.mktemp("retune")
    gen = torch.Generator().manual_seed(0)
    train, test = bars(1400, gen), bars(300, gen)
    order = torch.randperm(len(train), generator=gen)
    prepared = {"dataset": "tiny", "num_classes": 10, "mean": [0.2], "std": [0.3],
                "train_x": train.x, "train_y": train.y, "test_x": test.x, "test_y": test.y,
                "pool_idx": order[:POOL].sort().values, "attacker_idx": order[POOL:].sort().values}
    save_tensors(prepared, root / "prepared.pt")
    for ident, params in (("badnets", {"type": "badnets", "poison_rate": 0.1}), ("benign", {"type": "benign"})):
        steps.poison(str(root / "prepared.pt"), str(root / f"{ident}.pt"), ident, params)
    return {k: load_tensors(root / f"{k}.pt") for k in ("prepared", "badnets", "benign")}


def trained(prepared, poisoned, epochs=8):
    torch.manual_seed(0)
    model = build_model("cnn", 1, 10, prepared["mean"], prepared["std"], width=8)
    fit(model, steps.training_set(prepared, poisoned), FitConfig(lr=0.05, epochs=epochs, batch_size=64),
        gen=torch.Generator().manual_seed(1), log=lambda _: None)
    return model


def asr(model, prepared, poisoned):
    from backdoor.metrics import evaluate

    return evaluate(model, *steps.test_sets(prepared, poisoned))


def test_benign_stays_low_while_the_backdoored_model_relearns(files):
    prepared, badnets = files["prepared"], files["badnets"]
    benign = trained(prepared, files["benign"])
    backdoored = trained(prepared, badnets)
    assert asr(backdoored, prepared, badnets)["asr"] > 90
    # "purified" lightly: fine-tuned on the defender's clean draw of the run
    clean = steps.select_clean(prepared, BUDGET, "random", steps.clean_generator(BUDGET, 0, 0))
    purified = copy.deepcopy(backdoored)
    fit(purified, clean, FitConfig(lr=0.05, epochs=10, batch_size=32), gen=torch.Generator().manual_seed(2),
        log=lambda _: None)
    before = asr(purified, prepared, badnets)

    # 10 epochs of the 105 images at 128 a batch = 10 steps, nearer the study's 25 (605 images × 5
    # epochs). At the release's 5 epochs (5 steps here) the outcome rested on the CPU's kernels: one
    # draw re-learned to 99.6 on an AMD EPYC, to 42 on an AMX Xeon (10-42 over four draws there).
    assert before["asr"] < 50, before  # the light fine-tuning hid the backdoor (ASR 0 here) ...
    floors, afters = [], []
    for draw in range(4):  # four draws of the 5 poisoned images
        settings = {"poisoned": 5, "epochs": 10, "seed": draw}
        _, floor = retune_attack(prepared, badnets, benign, budget=BUDGET, seed=0, settings=settings)
        _, after = retune_attack(prepared, badnets, purified, budget=BUDGET, seed=0, settings=settings)
        assert floor["p_acc"] > 80 and after["p_acc"] > 80
        assert after["n_clean"] == BUDGET and after["poisoned"] == 5 and after["steps"] == 10
        floors.append(floor["p_asr"])
        afters.append(after["p_asr"])
    # ... the purified one re-learns it (AMX Xeon: 88-100), the benign model barely (0-17), draw by draw
    gaps = [a - f for a, f in zip(afters, floors)]
    assert sum(afters) / 4 > 80 and sum(floors) / 4 < 20 and min(gaps) > 40, (floors, afters)
    # the originals are untouched (the attack runs on a copy)
    assert asr(purified, prepared, badnets) == before


def test_poisoned_draw_is_seeded_and_from_the_poisoned_images(files):
    prepared, badnets = files["prepared"], files["badnets"]
    a = poisoned_images(prepared, badnets, 5, torch.Generator().manual_seed(0))
    b = poisoned_images(prepared, badnets, 5, torch.Generator().manual_seed(0))
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and len(a) == 5
    assert (a.y == 0).all() and (a.x[:, :, -3:, -3:] == 255).all()  # relabelled, and carrying the patch
    assert len(poisoned_images(prepared, badnets, 0, torch.Generator())) == 0
    with pytest.raises(ValueError, match="analysis.retune.poisoned"):
        poisoned_images(prepared, badnets, len(badnets["poison_idx"]) + 1, torch.Generator())
    with pytest.raises(ValueError, match="analysis.retune.poisoned"):
        poisoned_images(prepared, files["benign"], 1, torch.Generator())


def test_same_run_same_result(files):
    prepared, badnets = files["prepared"], files["badnets"]
    model = build_model("cnn", 1, 10, prepared["mean"], prepared["std"], width=4)
    _, a = retune_attack(prepared, badnets, model, budget=BUDGET, seed=1, settings={"epochs": 1})
    _, b = retune_attack(prepared, badnets, model, budget=BUDGET, seed=1, settings={"epochs": 1})
    assert {k: v for k, v in a.items() if k != "retune_s"} == {k: v for k, v in b.items() if k != "retune_s"}


def test_declaration_defaults_and_ranges():
    s = Retune.of({})
    assert (s.enabled, s.poisoned, s.epochs, s.lr, s.momentum, s.batch_size) == (False, 5, 5, 0.01, 0.9, 128)
    for key, value in (("poisoned", -1), ("epochs", 0), ("lr", 0.0), ("enabled", "yes"), ("seed", -1)):
        with pytest.raises(ParamsError, match=rf"retune\.{key}"):
            Retune.of({key: value})


def params_yaml(**retune):
    config = yaml.safe_load((ROOT / "params.yaml").read_text())
    config["analysis"]["retune"].update(retune)
    return config


def test_params_refuse_bad_retune_settings_before_any_job():
    from backdoor import params

    params.validate(params_yaml())  # as shipped: disabled
    with pytest.raises(ParamsError, match=r"analysis\.retune\.poisoned: -1 is out of range"):
        params.validate(params_yaml(poisoned=-1))
    with pytest.raises(ParamsError, match=r"analysis\.retune\.poisoned: 5501 is more than attack 'badnets'") as err:
        params.validate(params_yaml(enabled=True, poisoned=5501))
    assert "sig" in str(err.value)  # 0.08 × 55,000 = 4,400 < 5,501 too
    config = params_yaml(enabled=True, poisoned=9)
    config["splits"].update(train_limit=5100, clean_pool=5000)  # 100 attacker images: badnets 10, sig 8
    with pytest.raises(ParamsError, match=r"analysis\.retune\.poisoned: 9 is more than attack 'sig'.*= 8") as err:
        params.validate(config)
    assert "'badnets'" not in str(err.value)
    config["analysis"]["retune"]["enabled"] = False
    params.validate(config)  # disabled: not checked
    params.validate(params_yaml(enabled=True, poisoned=4400))


def test_metrics_csv_joins_the_retuned_runs_and_the_floor_and_the_report_shows_them(tmp_path):
    from backdoor import plots, tables
    from backdoor.io import write_json

    runs, tuned, floor = [], [], []
    for attack in ("benign", "badnets"):
        for defense in ("none", "ft"):
            for seed in (0, 1):
                ids = {"dataset": "toy", "model": "cnn", "attack": attack, "defense": defense, "clean_budget": 50,
                       "seed": seed, "defense_seed": 0}
                runs.append(tmp_path / f"{attack}-{defense}-{seed}.json")
                write_json({**ids, "acc": 80.0 + seed, "asr": 90.0 if defense == "none" else 10.0 + seed, "ra": 5.0,
                            "der": 50.0}, runs[-1])
                if attack != "benign":
                    tuned.append(tmp_path / f"t-{attack}-{defense}-{seed}.json")
                    write_json({**ids, "p_acc": 79.0, "p_asr": 95.0 - seed, "p_ra": 1.0}, tuned[-1])
        if attack != "benign":
            for seed in (0, 1):
                floor.append(tmp_path / f"f-{attack}-{seed}.json")
                write_json({"dataset": "toy", "model": "cnn", "attack": attack, "defense": "(benign floor)",
                            "clean_budget": 50, "seed": seed, "defense_seed": 0, "p_acc": 81.0, "p_asr": 2.0 + seed},
                           floor[-1])
    frame = tables.write_metrics_csv(runs, tmp_path / "metrics.csv", retune_paths=tuned, floor_paths=floor)
    assert frame.loc[frame.attack == "benign", "p_asr"].isna().all()
    badnets = frame[frame.attack == "badnets"]
    assert badnets["p_asr"].tolist() == [95.0, 94.0, 95.0, 94.0] and badnets["p_asr_floor"].tolist() == [2.0, 3.0] * 2
    report = tables.markdown_report(frame)
    assert "P-ASR (ASR after the re-tuning attack" in report and "badnets 2.50 [2.00, 3.00]" in report
    plain = tables.write_metrics_csv(runs, tmp_path / "plain.csv")  # without re-tuning: no extra columns
    assert "p_asr" not in plain.columns and "P-ASR" not in tables.markdown_report(plain)
    plots.save(plots.retune_figure(frame), [tmp_path / "retune.png"])
    assert (tmp_path / "retune.png").stat().st_size > 10_000
