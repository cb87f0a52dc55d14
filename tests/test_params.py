"""params.yaml is validated before any job runs; messages name the key and the fix."""

import copy
from pathlib import Path

import pytest
import yaml

from backdoor import params as P

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow/schemas/params.schema.yaml"
SHIPPED = yaml.safe_load((ROOT / "params.yaml").read_text())


def check(mutate):
    config = copy.deepcopy(SHIPPED)
    mutate(config)
    with pytest.raises(P.ParamsError) as err:
        P.validate(config, SCHEMA)
    return str(err.value)


def test_shipped_params_are_valid():
    P.validate(copy.deepcopy(SHIPPED), SCHEMA)


def test_unknown_attack_id_names_the_key_and_the_known_ids():
    msg = check(lambda c: c["study"]["attacks"].append("badnet"))
    assert "study.attacks" in msg and "'badnet'" in msg and "badnets" in msg


def test_unknown_attack_type_lists_the_registered_types():
    msg = check(lambda c: c["attacks"].update(weird={"type": "weird"}) or c["study"]["attacks"].append("weird"))
    assert "attacks.weird.type" in msg and "blend" in msg


@pytest.mark.parametrize("rate", [0, 1, 1.5, -0.1])
def test_poison_rate_outside_the_open_unit_interval(rate):
    msg = check(lambda c: c["attack_defaults"].update(poison_rate=rate))
    assert "attack_defaults.poison_rate" in msg and "out of range" in msg


def test_per_attack_poison_rate_is_checked_too():
    msg = check(lambda c: c["attacks"]["badnets"].update(poison_rate=2.0))
    assert "attacks.badnets.poison_rate" in msg


def test_clean_budget_larger_than_the_pool():
    msg = check(lambda c: c["study"].update(clean_budgets=[600, 6000]))
    assert "study.clean_budgets" in msg and "6000" in msg and "splits.clean_pool = 5000" in msg


def test_unknown_dataset_lists_the_allowed_ones():
    msg = check(lambda c: c["study"].update(datasets=["imagenet"]))
    assert "study.datasets.0" in msg and "'imagenet'" in msg and "fashion_mnist, fashion_mnist_bg, mnist, cifar10, gtsrb" in msg


def test_float_written_the_pyyaml_way_is_explained():
    config = copy.deepcopy(SHIPPED)
    config["train"]["weight_decay"] = "5e-4"  # what PyYAML makes of 5e-4
    with pytest.raises(P.ParamsError, match=r"train.weight_decay: '5e-4' is a string.*5.0e-4"):
        P.validate(config, SCHEMA)


def test_misspelt_key_is_reported():
    msg = check(lambda c: c["splits"].update(clean_pol=10))
    assert "splits" in msg and "clean_pol" in msg


def test_unknown_defense_and_model_ids():
    assert "study.defenses" in check(lambda c: c["study"]["defenses"].append("magic"))
    assert "study.models" in check(lambda c: c["study"]["models"].append("vgg"))


def test_step_values_come_from_step_keys_only():
    """What a job reads must be covered by the keys its DVC stage tracks."""
    config = copy.deepcopy(SHIPPED)
    wc = {"dataset": "fashion_mnist", "model": "cnn", "attack": "badnets", "defense": "ft"}
    for step in ["download", "prepare", "poison", "train", "purify", "aggregate", "report"]:
        before = P.step_values(config, step, **wc)
        tracked = {k.split(".")[0] for k in P.step_keys(step, **wc)}
        for section in set(config) - tracked:  # change everything the stage does not track
            config2 = copy.deepcopy(config)
            config2[section] = "changed"
            try:
                after = P.step_values(config2, step, **wc)
            except (TypeError, KeyError, AttributeError):
                pytest.fail(f"{step} reads {section}, which its DVC stage does not track")
            assert after == before, (step, section)


def test_skip_removes_exactly_the_named_cells():
    config = copy.deepcopy(SHIPPED)
    config["study"].update(attacks=["badnets", "sig"], defenses=["none", "ft", "fp"],
                           skip=[{"attacks": ["sig"], "defenses": ["ft", "fp"]}])
    cells = {(r["attack"], r["defense"]) for r in P.study_runs(config)}
    assert cells == {("badnets", "none"), ("badnets", "ft"), ("badnets", "fp"), ("sig", "none")}
    config["study"]["skip"] = []
    assert len(P.study_runs(config)) == 6


def test_skip_with_an_undefined_id_is_named():
    msg = check(lambda c: c["study"].update(skip=[{"attacks": ["wanett"], "defenses": ["fp"]}]))
    assert "study.skip[0].attacks" in msg and "wanett" in msg


def test_surrogate_must_be_a_defined_model_trained_without_a_crafted_trigger():
    msg = check(lambda c: c["surrogate"].update(model="resnet"))
    assert "surrogate.model" in msg and "'resnet'" in msg
    msg = check(lambda c: c["surrogate"].update(attack="lc"))
    assert "surrogate.attack" in msg and "crafted" in msg
