"""params.yaml is checked before any job runs: every problem at once, each naming its key (and line),
the known keys and the closest match; the declarations are the defaults."""

import copy
from pathlib import Path

import pytest
import yaml

from backdoor import params as P
from backdoor import schema

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = yaml.safe_load((ROOT / "params.yaml").read_text())


def problems(mutate) -> str:
    config = copy.deepcopy(SHIPPED)
    mutate(config)
    with pytest.raises(P.ParamsError) as err:
        P.validate(config, None)
    return str(err.value)


def test_shipped_params_are_valid_and_the_library_is_not_needed_for_them():
    params = P.validate(copy.deepcopy(SHIPPED), ROOT / "params.yaml")
    assert params.defenses["fip"].eta_f == 5.0e-2 and params.study.datasets == ["fashion_mnist"]


def test_unknown_attack_id_names_the_key_and_the_known_ids():
    msg = problems(lambda c: c["study"]["attacks"].append("badnet"))
    assert "study.attacks" in msg and "'badnet'" in msg and "badnets" in msg


def test_unknown_attack_type_lists_the_registered_types_and_the_closest():
    msg = problems(lambda c: c["attacks"].update(weird={"type": "blnd"}) or c["study"]["attacks"].append("weird"))
    assert "attacks.weird.type" in msg and "did you mean 'blend'" in msg and "badnets" in msg


@pytest.mark.parametrize("rate", [0, 1, 1.5, -0.1])
def test_poison_rate_outside_the_open_unit_interval(rate):
    msg = problems(lambda c: c["attack_defaults"].update(poison_rate=rate))
    assert "attack_defaults.poison_rate" in msg and "out of range" in msg


def test_clean_budget_larger_than_the_pool():
    msg = problems(lambda c: c["study"].update(clean_budgets=[600, 6000]))
    assert "study.clean_budgets" in msg and "6000" in msg and "splits.clean_pool = 5000" in msg


def test_unknown_dataset_lists_the_allowed_ones():
    msg = problems(lambda c: c["study"].update(datasets=["imagenet"]))
    assert "study.datasets[0]" in msg and "'imagenet'" in msg and "fashion_mnist, mnist, cifar10, gtsrb, tiny_imagenet, fashion_mnist_bg" in msg


def test_float_written_the_pyyaml_way_is_explained():
    msg = problems(lambda c: c["train"].update(weight_decay="5e-4"))  # what PyYAML makes of 5e-4
    assert "train.weight_decay: '5e-4' is a string" in msg and "5.0e-4" in msg


def test_misspelt_key_names_the_known_keys_and_the_closest():
    msg = problems(lambda c: c["defenses"]["ft"].update(weight_decai=0.1))
    assert "defenses.ft.weight_decai: unknown key for a defense of type 'ft' (did you mean 'weight_decay'?)" in msg
    assert "known keys: batch_size, clean_sampling, crop_pad" in msg


def test_quoted_boolean_is_refused_not_read_as_true():
    msg = problems(lambda c: c["defenses"]["fip"].update(released="false"))
    assert "defenses.fip.released: 'false' is a string, not a boolean" in msg


def test_every_problem_of_a_file_is_reported_at_once_schema_and_semantic():
    def mutate(c):
        c["defenses"]["fip"]["eta_f"] = "abc"
        c["study"]["attacks"].append("badnet")
        c["attacks"]["badnets"]["target"] = 10
        c["trian"] = {}
    msg = problems(mutate)
    assert "4 problems" in msg
    for key in ["defenses.fip.eta_f", "study.attacks", "attacks.badnets.target", "trian"]:
        assert key in msg


def test_omitted_keys_take_the_declared_defaults():
    config = copy.deepcopy(SHIPPED)
    config["defenses"]["fip"] = {}
    config["attacks"]["badnets"] = {}
    config["train"], config["splits"] = {}, {}
    params = P.validate(config, None)
    assert params.defenses["fip"] == schema.DEFENSES["fip"].of({})
    assert params.attacks["badnets"].patch_size == 3 and params.train.epochs == 5
    assert params.splits.clean_pool == 5000


def test_a_section_dvc_tracks_must_be_present_even_if_empty():
    msg = problems(lambda c: c.pop("train"))
    assert "train: missing: DVC stages track `train`" in msg and "write `train: {}`" in msg
    config = copy.deepcopy(SHIPPED)
    del config["train"]
    assert schema.resolve(config).train.epochs == 5  # the declarations themselves do not need it


def test_epochs_replace_the_default_iterations_and_both_is_an_error():
    assert schema.DEFENSES["ft"].of({"epochs": 3}).iterations is None
    msg = problems(lambda c: c["defenses"]["ft"].update(epochs=3, iterations=100))
    assert "defenses.ft.iterations: give either epochs or iterations, not both" in msg


def test_attack_defaults_are_inherited_and_named_when_wrong():
    config = copy.deepcopy(SHIPPED)
    config["attack_defaults"]["target"] = 3
    assert P.validate(config, None).attacks["blend"].target == 3
    msg = problems(lambda c: c["attack_defaults"].update(target=10))
    assert "attack_defaults.target: 10 is not a class of fashion_mnist (0..9)" in msg


def test_lines_are_named_when_the_config_is_the_file(tmp_path):
    text = (ROOT / "params.yaml").read_text().replace("  ft: {}", "  ft: {weight_decai: 0.1}")
    path = tmp_path / "params.yaml"
    path.write_text(text)
    line = next(i for i, l in enumerate(text.splitlines(), 1) if "weight_decai" in l)
    with pytest.raises(P.ParamsError, match=rf"line {line}: defenses.ft.weight_decai"):
        P.validate(yaml.safe_load(text), path)


def test_yaml_syntax_error_and_duplicate_key_name_their_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("study:\n  datasets: [fashion_mnist\ndevice: cpu\n")
    with pytest.raises(P.ParamsError, match=r"line 3: \(YAML syntax\)"):
        P.check_syntax(path)
    path.write_text("device: cpu\nprecision: fp32\ndevice: auto\n")
    with pytest.raises(P.ParamsError, match=r"line 3: device: given twice \(lines 1 and 3\)"):
        P.check_syntax(path)
    path.write_text("data:\n  allow_network: no\n")
    with pytest.raises(P.ParamsError, match=r"line 2: data.allow_network: 'no': write true or false"):
        P.check_syntax(path)


def test_step_values_come_from_step_keys_only():
    """What a job reads must be covered by the keys its DVC stage tracks."""
    config = copy.deepcopy(SHIPPED)
    wc = {"dataset": "fashion_mnist", "model": "cnn", "attack": "badnets", "defense": "ft"}
    for step in ["download", "prepare", "poison", "craft", "train", "purify", "aggregate", "report"]:
        before = P.step_values(config, step, **wc)
        tracked = {k.split(".")[0] for k in P.step_keys(step, **wc)}
        for section in set(config) - tracked:  # change everything the stage does not track
            config2 = copy.deepcopy(config)
            config2[section] = "changed"
            try:
                after = P.step_values(config2, step, **wc)
            except (TypeError, KeyError, AttributeError, P.ParamsError):
                pytest.fail(f"{step} reads {section}, which its DVC stage does not track")
            assert after == before, (step, section)


def test_step_values_are_plain_and_complete():
    values = P.step_values(SHIPPED, "purify", model="cnn", defense="fip_released")
    assert values["defense"]["type"] == "fip_released" and values["defense"]["released"] is True
    assert values["defense"]["probes"] == 20 and values["arch"] == "cnn"  # a declared default
    assert values["defense"]["crop_pad"] == 4  # the released augmentation, declared on fip_released
    assert schema.DEFENSES["fip"].resolve(values["defense"]).released


def test_skip_removes_exactly_the_named_cells():
    config = copy.deepcopy(SHIPPED)
    config["study"].update(attacks=["badnets", "sig"], defenses=["none", "ft", "fp"], seeds=[0],
                           skip=[{"attacks": ["sig"], "defenses": ["ft", "fp"]}])
    cells = {(r["attack"], r["defense"]) for r in P.study_runs(config)}
    assert cells == {("badnets", "none"), ("badnets", "ft"), ("badnets", "fp"), ("sig", "none")}
    config["study"]["skip"] = []
    assert len(P.study_runs(config)) == 6


def test_skip_by_clean_budget_gives_each_method_its_own_budget():
    config = copy.deepcopy(SHIPPED)
    config["study"].update(attacks=["badnets"], defenses=["none", "fip", "fmp"], clean_budgets=[500, 2500],
                           skip=[{"clean_budgets": [2500], "defenses": ["fip"]},
                                 {"clean_budgets": [500], "defenses": ["fmp"]}])
    cells = {(r["defense"], r["budget"]) for r in P.study_runs(config)}
    assert cells == {("none", 500), ("none", 2500), ("fip", 500), ("fmp", 2500)}
    msg = problems(lambda c: c["study"].update(skip=[{"clean_budgets": [601], "defenses": ["fp"]}]))
    assert "study.skip[0].clean_budgets" in msg and "601" in msg


def test_skip_with_an_undefined_id_is_named():
    msg = problems(lambda c: c["study"].update(skip=[{"attacks": ["wanett"], "defenses": ["fp"]}]))
    assert "study.skip[0].attacks" in msg and "wanett" in msg


def test_surrogate_must_be_a_defined_model_trained_without_a_crafted_trigger():
    crafted = {"attacks": ["badnets", "trojan"]}  # the surrogate is checked when an attack is crafted
    msg = problems(lambda c: (c["study"].update(crafted), c["surrogate"].update(model="resnet")))
    assert "surrogate.model" in msg and "'resnet'" in msg
    msg = problems(lambda c: (c["study"].update(crafted), c["surrogate"].update(attack="lc")))
    assert "surrogate.attack" in msg and "crafted" in msg


def test_declarations_are_importable_without_torch():
    import subprocess
    import sys

    code = ("import sys; sys.path.insert(0, 'src'); from backdoor import params, schema; "
            "params.validate(__import__('yaml').safe_load(open('params.yaml'))); "
            "assert 'torch' not in sys.modules, 'torch imported'; print(len(schema.DEFENSES))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == 19  # 15 types + the released twins of fip, nft, fmp, sibp


def test_every_declared_setting_has_a_meaning():
    for family in (schema.ATTACKS, schema.DEFENSES, schema.MODELS):
        for kind, cls in family.items():
            for name, f in schema.declared(cls).items():
                assert f.metadata.get("doc"), f"{kind}.{name} has no one-line meaning"


def test_a_mirror_lacking_files_is_announced_before_the_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data/raw here: the download step will run
    config = copy.deepcopy(SHIPPED)
    config["data"]["mirror"] = str(tmp_path / "mirror")
    (tmp_path / "mirror").mkdir()
    (notice,) = P.notices(P.validate(config, None))
    assert f"data.mirror = {tmp_path / 'mirror'} holds no train-images-idx3-ubyte.gz" in notice
    config["data"]["mirror"] = None
    assert P.notices(P.validate(config, None)) == []
