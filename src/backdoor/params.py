"""params.yaml for the two runners: checked before any job, the study matrix, and what each step reads.

``step_keys`` is the single map from a DAG step to the params.yaml keys it reads (the generated
dvc.yaml lists them as stage params); ``step_values`` resolves the values a job uses from those keys
only (plain dicts, defaults filled in by the declarations in ``backdoor.schema``), and Snakemake
passes them as rule params, so editing them reruns the job. Torch-free: the Snakefile imports it.
"""

from __future__ import annotations

from pathlib import Path

from .schema import Params, ParamsError, Problem, entry, resolve, section
from .schema import source as _source

__all__ = ["Params", "ParamsError", "check_syntax", "entry", "is_crafted", "notices", "section", "step_keys",
           "step_values", "study_runs", "tracked_sections", "validate"]


def validate(config: dict, path: str | Path | None = "params.yaml") -> Params:
    """The resolved Params of ``config``; ParamsError lists every problem, with its line in ``path``
    when ``config`` is exactly that file (no --config overrides)."""
    lines = None
    if path is not None and Path(path).is_file():
        on_disk, lines = _source.read(path)
        if on_disk != config:
            lines = None
    source = str(path or "params")
    missing = [Problem(key, f"missing: DVC stages track `{key}` (dvc repro stops on a missing parameter); "
                            f"write `{key}: {{}}` to take its declared defaults")
               for key in tracked_sections() if isinstance(config, dict) and key not in config]
    try:
        params = resolve(config, lines, source=source)
    except ParamsError as err:
        raise ParamsError(missing + err.problems, source) from None
    if missing:
        raise ParamsError(missing, source)
    return params


def tracked_sections() -> list[str]:
    """The top-level keys some DVC stage tracks (``step_keys``): params.yaml must have each."""
    keys = [key.split(".")[0] for step in STEPS for key in step_keys(step, dataset="d", model="m", attack="a",
                                                                        defense="d")]
    return list(dict.fromkeys(keys))


def notices(params: Params) -> list[str]:
    """Valid settings worth a word before the run: a data.mirror that lacks files the download step
    will need (it then falls back to an OS package copy or the network)."""
    from .data.registry import DATASETS

    mirror, out = params.data.mirror, []
    for name in params.study.datasets if mirror else []:
        if Path("data/raw", name).exists():
            continue  # downloaded already
        spec = DATASETS[name]
        missing = [f.name for f in spec.files
                   if not any(Path(mirror, sub, f.name).is_file() for sub in ("", name))]
        if missing:
            system = [d for d in spec.system_mirrors if all(Path(d, f).is_file() for f in missing)]
            fallback = (system[0] if system else "the network" if params.data.allow_network
                        else "nothing (the download step will fail)")
            out.append(f"data.mirror = {mirror} holds no {', '.join(missing)} for {name}: using {fallback}")
    return out


def uses_gpu(device: str) -> bool:
    """Whether torch jobs take a GPU: ``device: cuda[:N]``, or ``auto`` on a host that has NVIDIA's
    driver (``nvidia-smi`` on the PATH; checked without importing torch, which parsing never does)."""
    import shutil

    return device.startswith("cuda") or (device == "auto" and shutil.which("nvidia-smi") is not None)


def check_syntax(path: str | Path) -> None:
    """A YAML syntax error or a duplicated key in ``path``, as a ParamsError naming the line."""
    _source.read(path)


# -- the study matrix ------------------------------------------------------------------------------

def smoothness_enabled(config: dict) -> bool:
    return section(config, "analysis").smoothness.enabled


def study_runs(config: dict) -> list[dict]:
    """Every purification run of the study (``Study.runs``)."""
    return section(config, "study").runs()


def is_crafted(config: dict, attack: str) -> bool:
    """Whether the attack needs a craft step (a trigger or images optimised on a surrogate)."""
    return entry(config, "attacks", attack).crafted


# -- what each step reads -------------------------------------------------------------------------

STEPS = ("download", "prepare", "craft", "poison", "train", "purify", "smoothness", "aggregate", "report",
         "features", "tsne", "trace_train", "trace_purify", "measure_trace", "retune", "retune_floor")


# Settings of the machine, not of the results (a mirror of the same checksummed files, where to
# compute): never a rerun trigger, so in no step's keys; jobs read them from the config directly.
MACHINE_LOCAL = ("data", "device", "gpu")


def step_keys(step: str, **wc: str) -> list[str]:
    """The dotted params.yaml keys a job of ``step`` depends on (DVC `params:`)."""
    keys = {
        "download": [],
        "prepare": ["splits"],
        "craft": ["attack_defaults", f"attacks.{wc.get('attack')}", "precision"],  # + the surrogate's file
        "poison": ["attack_defaults", f"attacks.{wc.get('attack')}"],
        "train": ["train", f"models.{wc.get('model')}", "precision"],
        "purify": ["defense_defaults", f"defenses.{wc.get('defense')}", f"models.{wc.get('model')}", "precision"],
        "smoothness": ["analysis.smoothness"],
        "aggregate": [],
        "report": ["figures"],
        "features": ["figures.tsne"],
        "tsne": ["figures.tsne"],
        "trace_train": ["train", f"models.{wc.get('model')}", "precision", "figures.dynamics.train_every"],
        "trace_purify": ["defense_defaults", f"defenses.{wc.get('defense')}", f"models.{wc.get('model')}",
                         "precision", "figures.dynamics.purify_every"],
        "measure_trace": ["analysis.smoothness", "precision", "figures.dynamics.purification_trace_h"],
        "retune": ["analysis.retune", "defense_defaults", f"defenses.{wc.get('defense')}", "precision"],
        "retune_floor": ["analysis.retune", "defense_defaults", "precision"],
    }
    if step not in keys:
        raise KeyError(f"unknown step {step!r}")
    return keys[step]


def _runtime(config: dict) -> dict:
    return {"precision": section(config, "precision")}


def step_values(config: dict, step: str, **wc: str) -> dict:
    """The resolved values a job of ``step`` reads (plain data), derived only from ``step_keys``'."""
    if step == "prepare":
        return {"splits": section(config, "splits").to_dict()}
    if step == "poison":
        return {"attack": entry(config, "attacks", wc["attack"]).to_dict()}
    if step == "craft":
        return {"attack": entry(config, "attacks", wc["attack"]).to_dict(), **_runtime(config)}
    if step == "train":
        return {"model": entry(config, "models", wc["model"]).to_dict(), "train": section(config, "train").to_dict(),
                **_runtime(config)}
    if step == "purify":
        return {"defense": entry(config, "defenses", wc["defense"]).to_dict(),
                "arch": entry(config, "models", wc["model"]).kind, **_runtime(config)}
    if step == "smoothness":
        return {"smoothness": section(config, "analysis").smoothness.to_dict(), **_runtime(config)}
    if step == "report":
        return {"figures": section(config, "figures").to_dict()}
    if step == "features":
        return {"tsne": section(config, "figures").tsne.to_dict()}
    if step == "tsne":
        return {"tsne": section(config, "figures").tsne.to_dict()}
    if step == "trace_train":
        return {**step_values(config, "train", **wc), "every": section(config, "figures").dynamics.train_every}
    if step == "trace_purify":
        return {**step_values(config, "purify", **wc), "every": section(config, "figures").dynamics.purify_every}
    if step == "retune":
        return {"retune": section(config, "analysis").retune.to_dict(),
                "clean_sampling": entry(config, "defenses", wc["defense"]).clean_sampling, **_runtime(config)}
    if step == "retune_floor":
        return {"retune": section(config, "analysis").retune.to_dict(),
                "clean_sampling": section(config, "defense_defaults").clean_sampling, **_runtime(config)}
    if step == "measure_trace":
        trace_h = wc.get("kind") != "purify" or section(config, "figures").dynamics.purification_trace_h
        return {**step_values(config, "smoothness"), "trace_h": trace_h}
    return {}
