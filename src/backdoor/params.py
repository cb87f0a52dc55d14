"""params.yaml: validation with messages that name the key, and the sections each step depends on.

``step_keys`` is the single map from a DAG step to the params.yaml keys it reads (the generated
dvc.yaml lists them as stage params); ``step_values`` derives the merged values a job uses from
those keys only, and Snakemake passes them as rule params (so editing them reruns the job).
"""

from __future__ import annotations

from pathlib import Path

import jsonschema
import yaml

from .attacks import ATTACKS
from .defenses import DEFENSES
from .models import ARCHITECTURES


class ParamsError(ValueError):
    """params.yaml is invalid; the message names the key and what would fix it."""


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def _schema_errors(config: dict, schema: dict) -> list[str]:
    validator = jsonschema.Draft202012Validator(schema)
    messages = []
    for err in sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path)):
        key = _key(err.absolute_path)
        if err.validator == "enum":
            msg = f"{key}: {err.instance!r} is not allowed; allowed values: {', '.join(map(str, err.validator_value))}"
        elif err.validator in ("exclusiveMinimum", "exclusiveMaximum", "minimum", "maximum"):
            msg = f"{key}: {err.instance!r} is out of range ({err.message})"
        elif err.validator == "type" and isinstance(err.instance, str):
            msg = (f"{key}: {err.instance!r} is a string, expected {err.validator_value} "
                   "(write floats like 5.0e-4: PyYAML reads 5e-4 as a string)")
        elif err.validator == "additionalProperties":
            msg = f"{key}: {err.message} (a misspelt key?)"
        else:
            msg = f"{key}: {err.message}"
        messages.append(msg)
    return messages


def _resolve_type(section: str, ident: str, entry: dict, registry: dict) -> list[str]:
    kind = entry.get("type", ident)
    if kind not in registry:
        return [f"{section}.{ident}.type: {kind!r} is not a registered type; known: {', '.join(sorted(registry))}"]
    return []


def _semantic_errors(config: dict) -> list[str]:
    errors: list[str] = []
    study = config["study"]
    for axis, section, registry in (("models", "models", ARCHITECTURES), ("attacks", "attacks", ATTACKS),
                                    ("defenses", "defenses", DEFENSES)):
        for ident in study[axis]:
            if ident not in config[section]:
                errors.append(f"study.{axis}: {ident!r} is not defined under `{section}:`; defined ids: "
                              f"{', '.join(sorted(config[section]))}")
            else:
                errors += _resolve_type(section, ident, config[section][ident], registry)
    for axis in ("datasets", "models", "attacks", "defenses", "clean_budgets", "seeds", "defense_seeds"):
        if len(set(map(str, study[axis]))) != len(study[axis]):
            errors.append(f"study.{axis}: duplicate entries in {study[axis]}")
    for i, block in enumerate(study.get("skip") or []):
        for axis, values in block.items():
            known = study["datasets"] if axis == "datasets" else config[axis]
            unknown = [v for v in values if v not in known]
            if unknown:
                errors.append(f"study.skip[{i}].{axis}: {unknown} are not defined under `{axis}:` (a typo "
                              "would silently skip nothing)")
    pool = config["splits"]["clean_pool"]
    for budget in study["clean_budgets"]:
        if budget > pool:
            errors.append(f"study.clean_budgets: {budget} is larger than the defender's pool "
                          f"(splits.clean_pool = {pool}); lower the budget or enlarge the pool")
    for ident in study["attacks"]:
        merged = attack_params(config, ident) if ident in config["attacks"] else {}
        rate = merged.get("poison_rate", 0.1)
        if not 0 < rate < 1:
            errors.append(f"attacks.{ident}.poison_rate: {rate} must be in (0, 1)")
        if merged.get("type") == "benign" and merged.get("probe", "badnets") not in ATTACKS:
            errors.append(f"attacks.{ident}.probe: {merged.get('probe')!r} is not an attack type")
    if any(_known_and_crafted(config, a) for a in study["attacks"]):
        errors += _surrogate_errors(config, config["surrogate"])
    return errors


def _known_and_crafted(config: dict, attack: str) -> bool:
    """is_crafted for ids whose definition may be missing or mistyped (reported elsewhere)."""
    return (attack in config["attacks"] and attack_params(config, attack)["type"] in ATTACKS
            and is_crafted(config, attack))


def _surrogate_errors(config: dict, surrogate: dict) -> list[str]:
    """The surrogate of crafted attacks must be a defined model trained on a non-crafted attack."""
    errors = []
    if surrogate["model"] not in config["models"]:
        errors.append(f"surrogate.model: {surrogate['model']!r} is not defined under `models:`")
    source = surrogate["attack"]
    if source not in config["attacks"]:
        errors.append(f"surrogate.attack: {source!r} is not defined under `attacks:`")
    elif _known_and_crafted(config, source):
        errors.append(f"surrogate.attack: {source!r} is itself crafted; the surrogate must be trained without "
                      "a crafted trigger (use the benign attack)")
    return errors


def validate(config: dict, schema_path: str | Path) -> dict:
    """Raise ParamsError listing every problem in ``config``; return it unchanged when valid."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    errors = _schema_errors(config, schema)
    if not errors:
        errors = _semantic_errors(config)
    if errors:
        raise ParamsError("params.yaml is invalid:\n  - " + "\n  - ".join(errors))
    return config


def load(path: str | Path, schema_path: str | Path) -> dict:
    try:
        config = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as err:
        raise ParamsError(f"{path} is not valid YAML: {err}") from err
    return validate(config, schema_path)


# -- the study matrix ------------------------------------------------------------------------------

AXES = {"datasets": "dataset", "models": "model", "attacks": "attack", "defenses": "defense"}


def study_runs(config: dict) -> list[dict]:
    """Every purification run of the study: the product of ``study``'s axes minus ``study.skip``.

    ``seed`` is the trained model's seed, ``dseed`` the defense's (its clean draw and random stream)."""
    import itertools

    study = config["study"]
    runs = []
    for dataset, model, attack, defense, budget, seed, dseed in itertools.product(
            study["datasets"], study["models"], study["attacks"], study["defenses"], study["clean_budgets"],
            study["seeds"], study["defense_seeds"]):
        run = dict(dataset=dataset, model=model, attack=attack, defense=defense, budget=budget, seed=seed,
                   dseed=dseed)
        if not any(all(run[AXES[axis]] in values for axis, values in block.items())
                   for block in study.get("skip") or []):
            runs.append(run)
    return runs


# -- what each step reads -------------------------------------------------------------------------

def attack_params(config: dict, attack: str) -> dict:
    return {**config["attack_defaults"], **config["attacks"][attack],
            "type": config["attacks"][attack].get("type", attack)}


def is_crafted(config: dict, attack: str) -> bool:
    """Whether the attack needs a craft step (a trigger or images optimised on a surrogate)."""
    from .attacks import attack_class

    return attack_class(attack_params(config, attack)["type"]).crafted


def defense_params(config: dict, defense: str) -> dict:
    return {**config.get("defense_defaults", {}), **config["defenses"][defense],
            "type": config["defenses"][defense].get("type", defense)}


def model_params(config: dict, model: str) -> dict:
    return {**config["models"][model], "type": config["models"][model].get("type", model)}


def step_keys(step: str, **wc: str) -> list[str]:
    """The dotted params.yaml keys a job of ``step`` depends on (DVC `params:`)."""
    keys = {
        "download": ["data"],
        "prepare": ["splits"],
        "craft": ["attack_defaults", f"attacks.{wc.get('attack')}", "device", "precision"],  # + surrogate
        "poison": ["attack_defaults", f"attacks.{wc.get('attack')}"],
        "train": ["train", f"models.{wc.get('model')}", "device", "precision"],
        "purify": ["defense_defaults", f"defenses.{wc.get('defense')}", "device", "precision"],
        "aggregate": [],
        "report": ["figures"],
        "features": ["figures.tsne", "device"],
        "tsne": ["figures.tsne"],
    }
    if step not in keys:
        raise KeyError(f"unknown step {step!r}")
    return keys[step]


def _runtime(config: dict) -> dict:
    return {"device": config["device"], "precision": config["precision"]}


def step_values(config: dict, step: str, **wc: str) -> dict:
    """The ready-to-use values a job of ``step`` reads, derived only from ``step_keys``' sections."""
    if step == "download":
        return {"data": config["data"]}
    if step == "prepare":
        return {"splits": config["splits"]}
    if step == "poison":
        return {"attack": attack_params(config, wc["attack"])}
    if step == "craft":
        return {"attack": attack_params(config, wc["attack"]), **_runtime(config)}
    if step == "train":
        return {"model": model_params(config, wc["model"]), "train": config["train"], **_runtime(config)}
    if step == "purify":
        return {"defense": defense_params(config, wc["defense"]), **_runtime(config)}
    if step == "report":
        return {"figures": config["figures"]}
    if step == "features":
        return {"tsne": config["figures"]["tsne"], "device": config["device"]}
    if step == "tsne":
        return {"tsne": config["figures"]["tsne"]}
    return {}
