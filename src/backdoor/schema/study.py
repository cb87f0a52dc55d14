"""The whole of params.yaml: the study matrix and one section per concern, and the checks that
span sections (ids defined, budgets within the pool, targets within the classes, …).

Adding a top-level section is adding a ``Spec`` subclass and one field of ``Params``.
"""

from __future__ import annotations

from ..data.registry import DATASETS
from .attacks import Attack, AttackDefaults
from .core import REQUIRED, ParamsError, Spec, check_value, declared, default_of, hint_of, param, spec
from .defenses import Defense, DefenseDefaults
from .fit import BATCH_SIZE, CROP_PAD, EPOCHS, FLIP, ITERATIONS, LR, MOMENTUM, WEIGHT_DECAY, Fit
from .models import Model

ID = r"[a-z0-9_]+"
AXES = {"datasets": "dataset", "models": "model", "attacks": "attack", "defenses": "defense",
        "clean_budgets": "budget"}


@spec
class Skip(Spec):
    """Cells left out of the matrix: a run is skipped when every axis named here lists it."""

    datasets: list[str] | None = param(None, "dataset names")
    models: list[str] | None = param(None, "model ids")
    attacks: list[str] | None = param(None, "attack ids")
    defenses: list[str] | None = param(None, "defense ids")
    clean_budgets: list[int] | None = param(None, "clean budgets (e.g. each method only at its paper's)", ge=1)

    def check(self):
        problems = super().check()
        if not self.axes():
            problems.append(("datasets", "a skip block must name at least one of datasets, models, attacks, "
                                         "defenses, clean_budgets"))
        return problems

    def axes(self) -> dict[str, list[str]]:
        return {axis: getattr(self, axis) for axis in AXES if getattr(self, axis) is not None}


@spec
class Study(Spec):
    datasets: list[str] = param(REQUIRED, "datasets", choices=tuple(DATASETS), min_items=1)
    models: list[str] = param(REQUIRED, "model ids (defined under models:)", pattern=ID, min_items=1)
    attacks: list[str] = param(REQUIRED, "attack ids (defined under attacks:)", pattern=ID, min_items=1)
    defenses: list[str] = param(REQUIRED, "defense ids (defined under defenses:)", pattern=ID, min_items=1)
    clean_budgets: list[int] = param(REQUIRED, "clean images given to each defense", ge=1, min_items=1)
    seeds: list[int] = param([0], "model-training seeds (each trains every model anew)", ge=0, min_items=1)
    defense_seeds: list[int] = param([0], "defense seeds: each draws a new clean set and random stream",
                                     ge=0, min_items=1)
    skip: list[Skip] = param([], "cells left out of the matrix")

    def check(self):
        problems = super().check()
        for axis in ("datasets", "models", "attacks", "defenses", "clean_budgets", "seeds", "defense_seeds"):
            values = getattr(self, axis)
            if len(set(map(str, values))) != len(values):
                problems.append((axis, f"duplicate entries in {values}"))
        return problems

    def runs(self) -> list[dict]:
        """Every purification run: the product of the study's axes minus ``study.skip``. ``seed`` is
        the trained model's seed, ``dseed`` the defense's (its clean draw and random stream)."""
        import itertools

        s = self
        runs = []
        for dataset, model, attack, defense, budget, seed, dseed in itertools.product(
                s.datasets, s.models, s.attacks, s.defenses, s.clean_budgets, s.seeds, s.defense_seeds):
            run = dict(dataset=dataset, model=model, attack=attack, defense=defense, budget=budget, seed=seed,
                       dseed=dseed)
            if not any(all(run[AXES[axis]] in values for axis, values in block.axes().items())
                       for block in s.skip):
                runs.append(run)
        return runs


@spec
class Data(Spec):
    mirror: str | None = param(None, "folder with the original dataset files, for offline machines")
    allow_network: bool = param(True, "false: never download, only mirrors")


@spec
class Splits(Spec):
    clean_pool: int = param(5000, "defender's pool, disjoint from the attacker's training set", ge=1)
    seed: int = param(0, "seed of the splits")
    train_limit: int | None = param(None, "subsample the training set (tiny test configs); null: all", ge=2)
    test_limit: int | None = param(None, "subsample the test set; null: all", ge=1)


@spec
class Surrogate(Spec):
    """The attacker's clean model that crafted attacks (trojan, lc, input_aware) are optimised against."""

    model: str = param("cnn", "model id", pattern=ID)
    attack: str = param("benign", "attack id it is trained on (not a crafted one)", pattern=ID)
    seed: int = param(0, "training seed", ge=0)


@spec
class Train(Fit):
    """The attacker's training of every model."""

    lr: float = LR(0.05)
    weight_decay: float = WEIGHT_DECAY(5.0e-4)
    epochs: int | None = EPOCHS(5)
    iterations: int | None = ITERATIONS(None)


@spec
class Smoothness(Spec):
    """FIP's λ_max and Tr(H) (methods.md §2.8) of every trained and purified model."""

    enabled: bool = param(True, "measure every model of the study (one job per model)")
    images: int = param(200, "one fixed batch of clean training images, the same for every model", ge=1)
    power_iterations: int = param(30, "power iterations for λ_max, at most", ge=1)
    tol: float = param(1.0e-2, "stop when λ_max changes by less than this (relative)", gt=0)
    probes: int = param(20, "Rademacher probes of the Hutchinson trace (its standard error is reported)", ge=1)
    seed: int = param(0, "seed of the image draw and of the probes", ge=0)


@spec
class Retune(Spec):
    """The re-tuning attack (Min et al. 2024, arXiv 2410.09838; ``backdoor.analysis.retune``): fine-tune
    a purified model on the defender's clean draw plus ``poisoned`` poisoned training images of its
    attack, then score (P-ASR). Defaults: the authors' release (5 images, 5 epochs, lr 0.01)."""

    enabled: bool = param(False, "re-tune every purified model of the study and, as the floor, the benign "
                                 "model (one job each; P-ASR columns in metrics.csv, a table section)")
    poisoned: int = param(5, "k, poisoned training images of the attack added to the clean set (at most "
                             "the attack's poisoned images)", ge=0)
    epochs: int = param(5, "shuffled passes over the clean set plus the poisoned images", ge=1)
    lr: float = LR(0.01)
    momentum: float = MOMENTUM(0.9)
    batch_size: int = BATCH_SIZE(128)
    crop_pad: int = CROP_PAD(0)
    flip: bool = FLIP(False)
    seed: int = param(0, "seed of the draw of the poisoned images and of the re-tuning's batches", ge=0)


@spec
class Analysis(Spec):
    smoothness: Smoothness = param(Smoothness, "loss-surface smoothness of every model")
    retune: Retune = param(Retune, "post-purification robustness: P-ASR after the re-tuning attack")


SEED_METHODS = ["fip", "fast_fip", "nft", "fmp", "sibp"]


@spec
class Tsne(Spec):
    """t-SNE of penultimate features on the study's first dataset, model, budget and seeds."""

    attacks: list[str] = param(["badnets", "blend"], "attack ids drawn (ids not in the study are left out)",
                               pattern=ID)
    defenses: list[str] = param(SEED_METHODS, "defense ids drawn after the undefended model", pattern=ID)
    clean_images: int = param(1500, "fixed, seeded subsample of the clean test set", ge=1)
    triggered_images: int = param(500, "and of the triggered test set", ge=0)
    seed: int = param(0, "seed of the subsample and of t-SNE", ge=0)
    perplexity: float = param(30.0, "t-SNE perplexity", gt=0)


@spec
class SmoothnessFigure(Spec):
    defenses: list[str] = param(SEED_METHODS, "defense ids drawn beside the backdoored model", pattern=ID)


@spec
class SampleEfficiency(Spec):
    """ASR / ACC against study.clean_budgets (profiles/sample_efficiency.yaml)."""

    attacks: list[str] = param(["badnets", "blend"], "attack ids", pattern=ID)
    defenses: list[str] = param(["ft", *SEED_METHODS], "defense ids", pattern=ID)


@spec
class Tradeoff(Spec):
    knob: str = param(REQUIRED, "the setting the method's curve sweeps")
    defenses: list[str] = param(REQUIRED, "the defense ids along the curve (the method's own id holds the "
                                          "study's value)", pattern=ID)


@spec
class Dynamics(Spec):
    """Checkpoints along backdoor training and purification, each scored in its own job (FIP's
    Fig. 1 and 3; profiles/dynamics.yaml). On the study's first dataset, model, budget, defense seed."""

    attacks: list[str] = param([], "attack ids traced: their training (with the benign model's) and their "
                                   "purification by each of `defenses` (empty: no dynamics)", pattern=ID)
    defenses: list[str] = param(["ft", *SEED_METHODS], "defense ids traced on each attack", pattern=ID)
    seeds: list[int] = param([0], "training seeds traced (a band over them in the figures)", ge=0)
    train_every: int = param(200, "training steps between checkpoints (log-spaced 1, 2, 4, … before)", ge=1)
    purify_every: int = param(100, "purification steps between checkpoints (log-spaced 1, 2, 4, … before)", ge=1)
    purification_trace_h: bool = param(False, "Tr(H) of purification checkpoints too (FIP's Fig. 3 has "
                                              "λ_max only; each costs analysis.smoothness.probes HVPs)")


@spec
class Figures(Spec):
    """The report's focused figures (ids not in the study are left out)."""

    tsne: Tsne = param(Tsne, "t-SNE of penultimate features before and after each seed method")
    smoothness: SmoothnessFigure = param(SmoothnessFigure, "λ_max and Tr(H) per attack")
    sample_efficiency: SampleEfficiency = param(SampleEfficiency, "ASR and ACC against the clean budget")
    tradeoff: dict[str, Tradeoff] = param({}, "per method: the knob its curve sweeps and the ids along it")
    dynamics: Dynamics = param(Dynamics, "ACC, ASR, λ_max and Tr(H) along training and purification")


@spec
class Gpu(Spec):
    """How torch jobs share a GPU, where the study runs on one (docs/scaling.md). Each job claims its
    rule's MB of the Snakemake resource ``gpu_mem_mb``: ``snakemake --resources gpu_mem_mb=<MB per
    GPU>`` packs jobs onto the GPU until their claims fill it (``--resources gpu=1``: one job per GPU).
    Settings of the machine, not of the results: no step depends on them."""

    train_mb: int = param(6000, "GPU memory (MB) claimed by a train or trace_train job", ge=1)
    purify_mb: int = param(5000, "claimed by a purify, trace_purify, retune or retune_floor job", ge=1)
    other_mb: int = param(3000, "claimed by a craft, smoothness, features or measure_trace job", ge=1)
    shard_mb: int | None = param(None, "SLURM GRES shards: each torch job asks for ceil(claim / shard_mb) "
                                       "shards (--gres=shard:N) instead of a whole GPU (--gpus=1); null: "
                                       "a whole GPU per job", ge=1)


@spec
class Params(Spec):
    """params.yaml."""

    CHECK_PARTIAL = True  # the cross-section checks run on every valid section, whatever else fails
    study: Study = param(REQUIRED, "the matrix: ids defined in the sections below")
    device: str = param("auto", "auto (cuda if present) | cpu | cuda[:N]", pattern=r"auto|cpu|cuda(:[0-9]+)?")
    precision: str = param("auto", "auto (bf16 where the hardware has fast bf16) | fp32 | bf16",
                           choices=("auto", "fp32", "bf16"))
    gpu: Gpu = param(Gpu, "GPU slots by memory: how many torch jobs share one GPU")
    analysis: Analysis = param(Analysis, "analyses of the trained and purified models")
    figures: Figures = param(Figures, "the report's focused figures")
    data: Data = param(Data, "where dataset files come from")
    splits: Splits = param(Splits, "attacker / defender / test splits")
    attack_defaults: AttackDefaults = param(AttackDefaults, "settings every attack id inherits")
    surrogate: Surrogate = param(Surrogate, "the attacker's clean model for crafted attacks")
    attacks: dict[str, Attack] = param({}, "attack ids → type and settings", defaults_from="attack_defaults")
    models: dict[str, Model] = param({}, "model ids → type and settings")
    train: Train = param(Train, "the attacker's training (all models)")
    defense_defaults: DefenseDefaults = param(DefenseDefaults, "settings every defense id inherits")
    defenses: dict[str, Defense] = param({}, "defense ids → type and settings", defaults_from="defense_defaults")

    def check(self):
        problems = super().check()
        if not self.valid("study"):
            return problems
        study = self.study
        for axis in ("models", "attacks", "defenses"):
            defined = {*getattr(self, axis), *self.broken_ids(axis)}
            for ident in getattr(study, axis):
                if ident not in defined:
                    problems.append((f"study.{axis}", f"{ident!r} is not defined under `{axis}:`; defined ids: "
                                                      f"{', '.join(sorted(defined)) or '(none)'}"))
        for i, block in enumerate(study.skip):
            for axis, values in block.axes().items():
                known = (getattr(study, axis) if axis in ("datasets", "clean_budgets")
                         else {*getattr(self, axis), *self.broken_ids(axis)})
                unknown = [v for v in values if v not in known]
                if unknown:
                    problems.append((f"study.skip[{i}].{axis}", f"{unknown} are not defined under `{axis}:` "
                                                                "(a typo would silently skip nothing)"))
        if self.valid("figures"):
            dyn = self.figures.dynamics
            for axis, ids in (("attacks", dyn.attacks), ("defenses", dyn.defenses if dyn.attacks else [])):
                defined = {*getattr(self, axis), *self.broken_ids(axis)}
                unknown = [i for i in ids if i not in defined]
                if unknown:
                    problems.append((f"figures.dynamics.{axis}", f"{unknown} are not defined under `{axis}:`"))
        if self.valid("surrogate") and any(self.attacks[a].crafted for a in study.attacks if a in self.attacks):
            problems += self._surrogate_problems()
        if self.valid("splits"):
            problems += self._data_problems()
            if self.valid("analysis") and self.analysis.retune.enabled:
                problems += self._retune_problems()
        return problems

    def _retune_problems(self):
        """k ≤ the poisoned images of every attack of the study: round(poison_rate × N), N the attacker's
        split (what the poison step draws). Clean-label attacks draw at most the target class's
        images, a number known only once the data are read: that bound is checked when re-tuning."""
        problems, k = [], self.analysis.retune.poisoned
        for name in self.study.datasets:
            data = DATASETS[name]
            n = min(self.splits.train_limit or data.train_size, data.train_size) - self.splits.clean_pool
            for ident in self.study.attacks:
                entry = self.attacks.get(ident)
                if entry is None or entry.kind == "benign" or n <= 0:
                    continue  # the benign model is re-tuned with another attack's images (the floor)
                count = round(entry.poison_rate * n)
                if k > count:
                    problems.append(("analysis.retune.poisoned", f"{k} is more than attack {ident!r} poisons "
                                     f"on {name}: round({entry.poison_rate} × {n} attacker images) = {count}"))
        return problems

    def _data_problems(self):
        problems, study = [], self.study
        pool = self.splits.clean_pool
        for budget in study.clean_budgets:
            if budget > pool:
                problems.append(("study.clean_budgets", f"{budget} is larger than the defender's pool "
                                 f"(splits.clean_pool = {pool}); lower the budget or enlarge the pool"))
        for name in study.datasets:
            data = DATASETS[name]
            available = min(self.splits.train_limit or data.train_size, data.train_size)
            if pool >= available:
                where = "splits.train_limit" if self.splits.train_limit and available < data.train_size \
                    else f"{name}'s {data.train_size} training images"
                problems.append(("splits.clean_pool", f"{pool} leaves no attacker training data ({where} = "
                                                      f"{available}); choose a smaller pool"))
            for ident in study.attacks:
                if ident in self.attacks:
                    entry = self.attacks[ident]
                    problems += [(entry.origin(f), m) for f, m in entry.check_data(data)]
            for ident in study.defenses:
                entry = self.defenses.get(ident)
                if entry is not None and entry.clean_sampling == "stratified":
                    small = [b for b in study.clean_budgets if b < data.num_classes]
                    if small:
                        problems.append((entry.origin("clean_sampling"), f"stratified sampling needs a clean "
                                         f"budget of at least {data.num_classes} ({name}'s classes); "
                                         f"study.clean_budgets has {small}"))
        return problems

    def _surrogate_problems(self):
        s = self.surrogate
        problems = []
        if s.model not in {*self.models, *self.broken_ids("models")}:
            problems.append(("surrogate.model", f"{s.model!r} is not defined under `models:`"))
        if s.attack in self.broken_ids("attacks"):
            pass
        elif s.attack not in self.attacks:
            problems.append(("surrogate.attack", f"{s.attack!r} is not defined under `attacks:`"))
        elif self.attacks[s.attack].crafted:
            problems.append(("surrogate.attack", f"{s.attack!r} is itself crafted; the surrogate must be trained "
                                                 "without a crafted trigger (use the benign attack)"))
        return problems


def section(config: dict, name: str):
    """One top-level section (or value) of ``config``, a params.yaml dict, resolved on its own."""
    if name not in config:
        return default_of(Params, name)
    value, problems = check_value(config[name], hint_of(Params, name), declared(Params)[name].metadata, name)
    if problems:
        raise ParamsError(problems)
    return value


def entry(config: dict, family: str, ident: str) -> Spec:
    """``attacks.<id>``, ``defenses.<id>`` or ``models.<id>`` of ``config``, resolved on its own (with
    its family's defaults section)."""
    f = declared(Params)[family]
    defaults = f.metadata.get("defaults_from")
    base = None
    if defaults:
        built = section(config, defaults)
        base = {k: (getattr(built, k), f"{defaults}.{k}") for k in config.get(defaults) or {}
                if k in declared(type(built))}
    value, problems = check_value({ident: config[family][ident]}, hint_of(Params, family), f.metadata, family, base)
    if problems:
        raise ParamsError(problems)
    return value[ident]
