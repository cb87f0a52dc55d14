"""The DAG steps' library side: poisoned sets round-trip through their files; clean budgets come
from the defender's pool only."""

import pytest
import torch

from backdoor import steps
from backdoor.attacks import build_attack
from backdoor.data.tensors import TensorSet
from backdoor.io import load_tensors, save_tensors


def prepared(n=300, pool=100, seed=0):
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=gen)
    return {"dataset": "toy", "num_classes": 10, "mean": [0.5], "std": [0.5],
            "train_x": torch.randint(0, 200, (n, 1, 28, 28), generator=gen, dtype=torch.uint8),
            "train_y": torch.arange(n) % 10,
            "test_x": torch.randint(0, 200, (50, 1, 28, 28), generator=gen, dtype=torch.uint8),
            "test_y": torch.arange(50) % 10,
            "attacker_idx": order[pool:].sort().values, "pool_idx": order[:pool].sort().values}


def test_poisoned_file_reconstructs_the_poisoned_training_set(tmp_path):
    prep = prepared()
    save_tensors(prep, tmp_path / "prep.pt")
    params = {"type": "badnets", "target": 0, "poison_rate": 0.1, "seed": 0}
    steps.poison(str(tmp_path / "prep.pt"), str(tmp_path / "p.pt"), "badnets", params)
    stored = load_tensors(tmp_path / "p.pt")
    attack = build_attack("badnets", params, steps.attack_context(prep))
    attacker = TensorSet(prep["train_x"][prep["attacker_idx"]], prep["train_y"][prep["attacker_idx"]])
    expected = attack.poison(attacker, steps.seed_generator("poison", "badnets", 0))
    rebuilt = steps.training_set(prep, stored)
    assert torch.equal(rebuilt.x, expected.images) and torch.equal(rebuilt.y, expected.labels)
    assert torch.equal(stored["poison_idx"], expected.poison_idx)
    assert set(stored["poison_idx"].tolist()) <= set(stored["modified_idx"].tolist())
    clean_test, triggered = steps.test_sets(prep, stored)
    assert len(clean_test) == 50 and len(triggered) == 45 and (triggered.y_true != 0).all()


def test_clean_budget_comes_from_the_pool_only():
    prep = prepared()
    pool = set(prep["pool_idx"].tolist())
    clean = steps.select_clean(prep, 40, "random", torch.Generator().manual_seed(0))
    again = steps.select_clean(prep, 40, "random", torch.Generator().manual_seed(0))
    assert len(clean) == 40 and torch.equal(clean.x, again.x)
    pool_images = {bytes(prep["train_x"][i].flatten().tolist()) for i in pool}
    assert all(bytes(img.flatten().tolist()) in pool_images for img in clean.x)


def test_stratified_budget_has_equal_classes_and_bad_budgets_are_named():
    prep = prepared()
    clean = steps.select_clean(prep, 10, "stratified", torch.Generator().manual_seed(0))
    assert sorted(clean.y.tolist()) == list(range(10))
    with pytest.raises(ValueError, match="exceeds the defender's pool of 100"):
        steps.select_clean(prep, 101, "random", torch.Generator())
    with pytest.raises(ValueError, match="at least 10"):
        steps.select_clean(prep, 5, "stratified", torch.Generator())
    with pytest.raises(ValueError, match="clean_sampling = 'magic'"):
        steps.select_clean(prep, 5, "magic", torch.Generator())


def test_craft_then_poison_uses_the_crafted_trigger_and_needs_it(tmp_path):
    from conftest import tiny_cnn
    from backdoor.models import save_checkpoint

    prep = prepared()
    save_tensors(prep, tmp_path / "prep.pt")
    model = tiny_cnn(0)
    save_checkpoint(model, tmp_path / "benign.pt")
    params = {"type": "trojan", "target": 0, "poison_rate": 0.1, "seed": 0, "iterations": 3, "craft_images": 8}
    steps.craft(str(tmp_path / "prep.pt"), str(tmp_path / "benign.pt"), str(tmp_path / "asset.pt"), "trojan",
                params, "cpu")
    asset = load_tensors(tmp_path / "asset.pt")
    assert asset["pattern"].shape == (1, 7, 7) and asset["attack"] == "trojan"
    steps.poison(str(tmp_path / "prep.pt"), str(tmp_path / "p.pt"), "trojan", params, str(tmp_path / "asset.pt"))
    stored = load_tensors(tmp_path / "p.pt")
    images = steps.training_set(prep, stored).x[stored["poison_idx"]]
    assert (images[:, :, 18:25, 18:25] == asset["pattern"]).all()
    with pytest.raises(ValueError, match="craft step"):
        steps.poison(str(tmp_path / "prep.pt"), str(tmp_path / "q.pt"), "trojan", params)
    with pytest.raises(ValueError, match="has no craft step"):
        steps.craft(str(tmp_path / "prep.pt"), str(tmp_path / "benign.pt"), str(tmp_path / "b.pt"), "badnets",
                    {"type": "badnets"}, "cpu")
    assert not (tmp_path / "q.pt").exists() and not (tmp_path / "b.pt").exists()


def test_purify_refuses_a_checkpoint_of_another_architecture(tmp_path):
    from backdoor.models import build_model, save_checkpoint

    prep = prepared()
    save_tensors(prep, tmp_path / "prep.pt")
    save_checkpoint(build_model("cnn", 1, 10, [0.5], [0.5], width=4), tmp_path / "m.pt")
    with pytest.raises(ValueError, match="holds a 'cnn' model, but 'preact_resnet18' was asked for"):
        steps.purify(str(tmp_path / "prep.pt"), "unused", str(tmp_path / "m.pt"), "unused",
                     str(tmp_path / "out.pt"), str(tmp_path / "out.json"),
                     ids={"dataset": "toy", "model": "m", "attack": "a", "defense": "none"},
                     defense_params={"type": "none"}, budget=10, seed=0, device="cpu", precision="fp32",
                     arch="preact_resnet18")
    assert not (tmp_path / "out.pt").exists() and not (tmp_path / "out.json").exists()


def test_torch_threads_never_exceed_the_cpus(monkeypatch):
    import os

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("BACKDOOR_CORES_PER_THREAD", "4")  # snakemake --cores 8 on 2 CPUs
        steps.use_threads(4)
        assert torch.get_num_threads() == 1
        monkeypatch.setenv("BACKDOOR_CORES_PER_THREAD", "1")
        steps.use_threads(64)
        assert torch.get_num_threads() == os.cpu_count()
    finally:
        torch.set_num_threads(before)
