"""The JSON Schema of params.yaml and the configuration reference are generated from the declarations
(src/backdoor/schema/), never stale, and check params.yaml and the profiles as an editor would."""

import copy
import json
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from backdoor.schema import export

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_FILE = ROOT / export.SCHEMA
FILES = [ROOT / "params.yaml", *sorted((ROOT / "profiles").glob("*.yaml"))]
SHIPPED = yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.fixture(scope="module")
def validator():
    schema = json.loads(SCHEMA_FILE.read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def test_committed_schema_and_reference_are_what_the_declarations_generate(tmp_path):
    assert export.main(["--root", str(tmp_path)]) == 0
    for rel in (export.SCHEMA, export.REFERENCE):
        assert (tmp_path / rel).read_text() == (ROOT / rel).read_text(), f"{rel} is stale: run `make schema`"
    assert export.render_schema() == export.render_schema()  # deterministic


def test_reference_names_every_declared_type_and_setting():
    page = (ROOT / export.REFERENCE).read_text()
    for family, registry in export.FAMILIES.items():
        for kind, cls in registry.items():
            assert f"{{#{family}-{kind.replace('_', '-')}}}" in page
            for name in export.declared(cls):
                assert f"| `{name}` |" in page


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_params_and_every_profile_are_valid_and_name_the_schema(validator, path):
    first = path.read_text().splitlines()[0]
    prefix = "# yaml-language-server: $schema="
    assert first.startswith(prefix), f"{path.name}: the first line must name the schema for editors"
    assert (path.parent / first.removeprefix(prefix)).resolve() == SCHEMA_FILE  # relative to the file
    config = yaml.safe_load(path.read_text())
    assert not list(validator.iter_errors(config))
    merged = copy.deepcopy(SHIPPED)  # a profile as Snakemake sees it: merged over params.yaml
    from snakemake.utils import update_config
    update_config(merged, config)
    assert not list(validator.iter_errors(merged))


def edited(path: str, value):
    config = copy.deepcopy(SHIPPED)
    *keys, last = path.split(".")
    node = config
    for key in keys:
        node = node.setdefault(key, {})
    node[last] = value
    return config


@pytest.mark.parametrize("key, where", [
    ("defenses.ft.weight_decai", "$.defenses.ft"),                  # an id that is its type
    ("defenses.nft_oneshot.flor_alpha", "$.defenses.nft_oneshot"),  # type: nft
    ("defenses.fip.prune_ratio", "$.defenses.fip"),                 # another type's setting
    ("attacks.badnets_center.positon", "$.attacks.badnets_center"),
    ("models.cnn.widht", "$.models.cnn"),
    ("train.epoch", "$.train"),
    ("analysis.smoothness.prob", "$.analysis.smoothness"),
    ("trian", "$"),
])
def test_a_typo_fails_naming_its_path(validator, key, where):
    error = best_match(validator.iter_errors(edited(key, 1)))
    assert error is not None and error.json_path == where
    assert f"'{key.split('.')[-1]}' was unexpected" in error.message


def test_types_ranges_and_choices_are_checked(validator):
    for key, value, says in [("defenses.ft.lr", "abc", "is not of type 'number'"),
                             ("attacks.badnets.type", "badnet", "is not one of"),
                             ("attack_defaults.poison_rate", 1.5, "maximum"),
                             ("precision", "bf32", "is not one of"),
                             ("device", "gpu", "does not match")]:
        error = best_match(validator.iter_errors(edited(key, value)))
        assert error is not None and error.json_path == "$." + key and says in error.message, (key, error)


def test_snakemake_validate_takes_the_schema(tmp_path):
    """What the Snakefile runs before the study's checks (set_default=False: the config stays as written)."""
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    config = copy.deepcopy(SHIPPED)
    validate(config, str(SCHEMA_FILE), set_default=False)
    assert config == SHIPPED
    with pytest.raises(WorkflowError, match="weight_decai"):
        validate(edited("defenses.ft.weight_decai", 0.1), str(SCHEMA_FILE), set_default=False)
