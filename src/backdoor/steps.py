"""One function per DAG step: read inputs, call the library, write outputs atomically.

The scripts in workflow/scripts/ only unpack Snakemake's arguments and call these, so every step
can also be run (and tested) without Snakemake. Each step imports the library modules it uses
inside its body: a job's code dependencies (backdoor.codedeps) are the modules its step imports.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # annotations only; each step imports what it runs
    from .attacks import AttackContext
    from .data.tensors import TensorSet, TriggeredSet


def use_threads(threads: int) -> None:
    """Torch threads for this job: the cores the scheduler granted, divided by the cores it counts per
    thread (``BACKDOOR_CORES_PER_THREAD``, set by the Snakefile when --cores exceeds the CPUs), never
    more than the machine's CPUs."""
    per_thread = max(1, int(os.environ.get("BACKDOOR_CORES_PER_THREAD", "1")))
    torch.set_num_threads(max(1, min(int(threads) // per_thread, os.cpu_count() or 1)))


def runtime_info(dev: torch.device, precision: str) -> dict:
    """What a job's results and timings depend on, recorded in its metrics (threads with the timings)."""
    return {"device": str(dev), "precision": precision, "threads": torch.get_num_threads()}


def seed_generator(*parts) -> torch.Generator:
    """A generator seeded from named parts, so each step's randomness is independent and fixed."""
    import zlib

    return torch.Generator().manual_seed(zlib.crc32(repr(parts).encode()))


def download(dataset: str, out_dir: str, data_params: dict) -> None:
    from .data import get_dataset
    from .data.download import fetch_dataset

    fetch_dataset(get_dataset(dataset), out_dir, mirror=data_params.get("mirror"),
                  allow_network=data_params.get("allow_network", True))


def prepare_dataset(dataset: str, raw_dir: str, out_path: str, splits: dict) -> None:
    from .data import get_dataset
    from .data.download import verify_dataset
    from .data.prepare import SplitParams, prepare
    from .io import save_tensors

    verify_dataset(get_dataset(dataset), raw_dir)  # the raw files may have changed since download
    prepared = prepare(dataset, raw_dir, SplitParams(**splits))
    save_tensors(prepared, out_path)
    print(f"prepare {dataset}: {len(prepared['attacker_idx'])} attacker, {len(prepared['pool_idx'])} pool, "
          f"{len(prepared['test_y'])} test images")


def attack_context(prepared: dict) -> AttackContext:
    from .attacks import AttackContext

    _, c, h, _ = prepared["train_x"].shape
    return AttackContext(num_classes=prepared["num_classes"], channels=c, size=h)


def attacker_set(prepared: dict) -> TensorSet:
    """The attacker's clean training set (disjoint from the defender's pool)."""
    from .data.tensors import TensorSet

    idx = prepared["attacker_idx"]
    return TensorSet(prepared["train_x"][idx], prepared["train_y"][idx])


def craft(prepared_path: str, surrogate_path: str, out_path: str, attack_id: str, attack_params: dict,
          device: str = "auto", precision: str = "auto") -> None:
    """Optimise a crafted attack's trigger or images against the clean surrogate model."""
    from .attacks import build_attack
    from .device import autocast, pick_device, resolve_precision
    from .io import load_tensors, save_tensors
    from .models import load_checkpoint

    start = time.perf_counter()
    prepared = load_tensors(prepared_path)
    attack = build_attack(attack_params["type"], attack_params, attack_context(prepared))
    if not attack.crafted:
        raise ValueError(f"attack {attack_id!r} (type {attack_params['type']}) has no craft step")
    dev = pick_device(device)
    precision = resolve_precision(precision, dev)
    seed = attack_params.get("seed", 0)
    torch.manual_seed(seed)
    with autocast(precision, dev):
        asset = attack.craft(attacker_set(prepared), load_checkpoint(surrogate_path),
                             seed_generator("craft", attack_id, seed), dev)
    seconds = time.perf_counter() - start
    save_tensors({**asset, "attack": attack_id, "params": attack_params, "device": str(dev),
                  "precision": precision}, out_path)  # no timings: equal inputs, equal bytes
    print(f"craft {attack_id}: {seconds:.1f} s with {torch.get_num_threads()} threads")


def poison(prepared_path: str, out_path: str, attack_id: str, attack_params: dict,
           asset_path: str | None = None) -> None:
    from .attacks import build_attack
    from .data.tensors import TensorSet
    from .io import load_tensors, save_tensors

    prepared = load_tensors(prepared_path)
    attack = build_attack(attack_params["type"], attack_params, attack_context(prepared))
    if attack.crafted:
        if asset_path is None:
            raise ValueError(f"attack {attack_id!r} needs the output of its craft step")
        attack.use_asset(load_tensors(asset_path))
    attacker = attacker_set(prepared)
    poisoned = attack.poison(attacker, seed_generator("poison", attack_id, attack_params.get("seed", 0)))
    test = attack.triggered_test(TensorSet(prepared["test_x"], prepared["test_y"]))
    modified = (poisoned.images != attacker.x).flatten(1).any(1).nonzero().flatten()
    save_tensors({
        "attack": attack_id, "params": attack_params,
        "modified_idx": modified, "modified_images": poisoned.images[modified].clone(),
        "labels": poisoned.labels, "original_labels": poisoned.original_labels,
        "poison_idx": poisoned.poison_idx,
        "test_x": test.x, "test_y_true": test.y_true, "test_y_target": test.y_target,
    }, out_path)
    print(f"poison {attack_id}: {len(poisoned.poison_idx)} poisoned of {len(attacker)} training images "
          f"({len(modified)} modified), {len(test)} triggered test images")


def training_set(prepared: dict, poisoned: dict) -> TensorSet:
    from .data.tensors import TensorSet

    images = attacker_set(prepared).x.clone()
    images[poisoned["modified_idx"]] = poisoned["modified_images"]
    return TensorSet(images, poisoned["labels"])


def test_sets(prepared: dict, poisoned: dict) -> tuple[TensorSet, TriggeredSet]:
    from .data.tensors import TensorSet, TriggeredSet

    return (TensorSet(prepared["test_x"], prepared["test_y"]),
            TriggeredSet(poisoned["test_x"], poisoned["test_y_true"], poisoned["test_y_target"]))


def train_model(prepared: dict, poisoned: dict, model_params: dict, train_params: dict, seed: int,
                dev: torch.device, precision: str, observe=None):
    """The attacker's model trained from ``seed`` on the poisoned set; ``observe`` (a context manager,
    e.g. ``Trace.watching()``) watches its steps. Returns (model, training set, fit result)."""
    from contextlib import nullcontext

    from .device import autocast
    from .models import build_model
    from .training import FitConfig, fit

    torch.manual_seed(seed)
    arch_params = {k: v for k, v in model_params.items() if k != "type"}
    model = build_model(model_params["type"], prepared["train_x"].shape[1], prepared["num_classes"],
                        prepared["mean"], prepared["std"], **arch_params)
    data = training_set(prepared, poisoned)
    with autocast(precision, dev), (observe(model) if observe else nullcontext()):
        result = fit(model, data, FitConfig.from_params(train_params), gen=seed_generator("train", seed),
                     device=dev, desc=f"train {poisoned['attack']}")
    return model, data, result


def train(prepared_path: str, poisoned_path: str, model_out: str, metrics_out: str, model_params: dict,
          train_params: dict, seed: int, device: str = "auto", precision: str = "auto") -> None:
    from .device import autocast, pick_device, resolve_precision
    from .io import load_tensors, write_record
    from .metrics import evaluate
    from .models import save_checkpoint

    start = time.perf_counter()
    prepared, poisoned = load_tensors(prepared_path), load_tensors(poisoned_path)
    dev = pick_device(device)
    precision = resolve_precision(precision, dev)
    model, data, result = train_model(prepared, poisoned, model_params, train_params, seed, dev, precision)
    clean_test, triggered = test_sets(prepared, poisoned)
    with autocast(precision, dev):
        scores = evaluate(model, clean_test, triggered)
    save_checkpoint(model.cpu(), model_out)
    write_record({**scores, "attack": poisoned["attack"], "n_poisoned": len(poisoned["poison_idx"]),
                "n_train": len(data), "seed": seed, "train_seconds": result.seconds,
                "images_per_s": result.images_per_s, "final_loss": result.final_loss,
                "runtime_s": time.perf_counter() - start, **runtime_info(dev, precision)}, metrics_out)
    print(f"train {poisoned['attack']}: ACC {scores['acc']:.2f}  ASR {scores['asr']:.2f}  RA {scores['ra']:.2f}")


def select_clean(prepared: dict, budget: int, sampling: str, gen: torch.Generator) -> TensorSet:
    """``budget`` images from the defender's pool: uniformly, or equally many per class."""
    from .data.tensors import TensorSet

    idx = clean_indices(prepared, budget, sampling, gen)
    return TensorSet(prepared["train_x"][idx], prepared["train_y"][idx])


def clean_indices(prepared: dict, budget: int, sampling: str, gen: torch.Generator) -> torch.Tensor:
    """The training-set indices ``select_clean`` draws (sorted)."""
    pool = prepared["pool_idx"]
    if budget > len(pool):
        raise ValueError(f"clean budget {budget} exceeds the defender's pool of {len(pool)} images "
                         "(splits.clean_pool in params.yaml)")
    if sampling == "stratified":
        labels, k = prepared["train_y"][pool], prepared["num_classes"]
        per_class = budget // k
        if per_class < 1:
            raise ValueError(f"stratified sampling needs a clean budget of at least {k} (one per class)")
        chosen = []
        for c in range(k):
            members = pool[labels == c]
            if len(members) < per_class:
                raise ValueError(f"the pool has only {len(members)} images of class {c}, {per_class} needed")
            chosen.append(members[torch.randperm(len(members), generator=gen)[:per_class]])
        idx = torch.cat(chosen).sort().values
    elif sampling == "random":
        idx = pool[torch.randperm(len(pool), generator=gen)[:budget]].sort().values
    else:
        raise ValueError(f"defense_defaults.clean_sampling = {sampling!r}: use random or stratified")
    return idx


def smoothness(prepared_path: str, model_path: str, out_path: str, settings: dict, device: str = "auto") -> None:
    """λ_max and Tr(H) of one model on the study's fixed batch of clean training images (fp32)."""
    from .analysis.smoothness import fixed_images
    from .analysis.smoothness import smoothness as measure
    from .device import pick_device
    from .io import load_tensors, write_record
    from .models import load_checkpoint

    prepared = load_tensors(prepared_path)
    dev = pick_device(device)
    images, labels = fixed_images(prepared["train_x"], prepared["train_y"], prepared["attacker_idx"],
                                  int(settings["images"]), int(settings["seed"]))
    result = measure(load_checkpoint(model_path), images, labels, power_iterations=int(settings["power_iterations"]),
                     probes=int(settings["probes"]), tol=float(settings["tol"]), seed=int(settings["seed"]), device=dev)
    write_record({**result.as_dict(), "images": len(images), **runtime_info(dev, "fp32")}, out_path)
    print(f"smoothness {model_path}: λ_max {result.lambda_max:.4g}  Tr(H) {result.trace_h:.4g} ± "
          f"{result.trace_h_se:.2g}  ({result.seconds:.1f} s)")


def clean_generator(budget: int, seed: int, defense_seed: int) -> torch.Generator:
    """The clean draw of run (training ``seed``, ``defense_seed``): every training seed draws its own
    clean set, so independent training seeds are independent runs; every defense of a run sees the
    same draw (paired comparisons)."""
    return seed_generator("clean", budget, seed, defense_seed)


def run_defense(prepared: dict, model, defense_id: str, defense_params: dict, budget: int, seed: int,
                defense_seed: int, device: torch.device, precision: str = "fp32"):
    """One defense on ``model`` (trained with ``seed``) with ``budget`` clean images from the pool under
    ``precision`` (already resolved). The run (``seed``, ``defense_seed``) fixes the clean draw (per
    budget, :func:`clean_generator`) and the defense's random stream (per defense id).

    Returns (purified model, info, number of clean images, seconds the defense took)."""
    from .defenses import get_defense
    from .device import autocast
    from .schema.defenses import DEFENSES

    defense_params = DEFENSES[defense_params["type"]].of(defense_params)  # typed, defaults filled in
    clean = select_clean(prepared, budget, defense_params.clean_sampling, clean_generator(budget, seed, defense_seed))
    defense = get_defense(defense_params["type"])
    torch.manual_seed(seed_generator("global", seed, defense_seed).initial_seed())
    start = time.perf_counter()
    with autocast(precision, device):
        model, info = defense(model.to(device), clean, defense_params,
                              seed_generator("defense", defense_id, seed, defense_seed), device)
    return model, info, len(clean), time.perf_counter() - start


def purify(prepared_path: str, poisoned_path: str, model_path: str, model_metrics_path: str,
           model_out: str, metrics_out: str, *, ids: dict, defense_params: dict, budget: int, seed: int,
           defense_seed: int = 0, device: str = "auto", precision: str = "auto", arch: str | None = None) -> None:
    """Run one defense on one backdoored model (of architecture ``arch``, checked when given) and score
    it. The defense sees only the clean budget; the test sets are loaded after it returns."""
    from .device import autocast, pick_device, resolve_precision
    from .io import load_tensors, read_json, write_record
    from .metrics import der, evaluate
    from .models import load_checkpoint, save_checkpoint

    step_start = time.perf_counter()
    prepared = load_tensors(prepared_path)
    dev = pick_device(device)
    precision = resolve_precision(precision, dev)
    model = load_checkpoint(model_path, expect_arch=arch)
    model, info, n_clean, runtime = run_defense(prepared, model, ids["defense"], defense_params, budget, seed,
                                                defense_seed, dev, precision)
    clean_test, triggered = test_sets(prepared, load_tensors(poisoned_path))
    with autocast(precision, dev):
        scores = evaluate(model, clean_test, triggered)
    before = read_json(model_metrics_path)
    save_checkpoint(model.cpu(), model_out)
    write_record({**ids, "defense_type": defense_params["type"], "clean_budget": budget, "n_clean": n_clean,
                "seed": seed, "defense_seed": defense_seed, **scores,
                "der": der(before["acc"], before["asr"], scores["acc"], scores["asr"]),
                "acc_before": before["acc"], "asr_before": before["asr"], "ra_before": before["ra"],
                "runtime_s": runtime, "step_s": time.perf_counter() - step_start,
                **runtime_info(dev, precision), "info": info}, metrics_out)
    print(f"purify {ids['attack']} with {ids['defense']}: ACC {scores['acc']:.2f}  ASR {scores['asr']:.2f}  "
          f"RA {scores['ra']:.2f}  ({runtime:.1f} s)")


# -- dynamics: checkpoints along training and purification, measured in separate jobs ---------------

def trace_train(prepared_path: str, poisoned_path: str, trace_out: str, model_params: dict, train_params: dict,
                seed: int, every: int, device: str = "auto", precision: str = "auto", ids: dict | None = None) -> None:
    """The training of ``train`` again, keeping checkpoints every ``every`` steps (log-spaced before);
    ``ids`` (dataset, model) label the trace."""
    from .analysis.dynamics import Trace
    from .device import pick_device, resolve_precision
    from .io import load_tensors, save_tensors

    prepared, poisoned = load_tensors(prepared_path), load_tensors(poisoned_path)
    dev = pick_device(device)
    precision = resolve_precision(precision, dev)
    traces = []

    def observe(model):
        traces.append(Trace(model, every))
        return traces[-1].watching()

    model, data, result = train_model(prepared, poisoned, model_params, train_params, seed, dev, precision, observe)
    trace = traces[0]
    trace.finish(model)
    steps_per_epoch = -(-len(data) // int(train_params["batch_size"]))
    save_tensors(trace.record(model.spec, kind="train", **(ids or {}), attack=poisoned["attack"], seed=seed,
                              steps_per_epoch=steps_per_epoch, device=str(dev), precision=precision), trace_out)
    print(f"trace train {poisoned['attack']}: {len(trace.steps)} checkpoints over {trace.step} steps")


def trace_purify(prepared_path: str, model_path: str, trace_out: str, *, ids: dict, defense_params: dict,
                 budget: int, seed: int, defense_seed: int, every: int, device: str = "auto",
                 precision: str = "auto", arch: str | None = None) -> None:
    """The run of ``purify`` again, keeping checkpoints every ``every`` steps (log-spaced before). It
    reads no test data: the checkpoints are scored by ``measure_trace``, a later job."""
    from .analysis.dynamics import Trace
    from .device import pick_device, resolve_precision
    from .io import load_tensors, save_tensors
    from .models import load_checkpoint

    prepared = load_tensors(prepared_path)
    dev = pick_device(device)
    precision = resolve_precision(precision, dev)
    model = load_checkpoint(model_path, expect_arch=arch)
    trace = Trace(model, every)
    with trace.watching():
        model, info, n_clean, runtime = run_defense(prepared, model, ids["defense"], defense_params, budget, seed,
                                                    defense_seed, dev, precision)
    trace.finish(model)
    save_tensors(trace.record(model.spec, kind="purify", **ids, seed=seed, defense_seed=defense_seed,
                              clean_budget=budget, device=str(dev), precision=precision), trace_out)
    print(f"trace {ids['attack']} / {ids['defense']}: {len(trace.steps)} checkpoints over {trace.step} steps "
          f"({runtime:.1f} s)")


def measure_trace(prepared_path: str, poisoned_path: str, trace_path: str, out_path: str, settings: dict,
                  device: str = "auto", precision: str = "auto", trace_h: bool = True) -> None:
    """ACC, ASR, RA (test sets, read here after the run) and λ_max, Tr(H) (the smoothness analysis's
    fixed clean batch, fp32; Tr(H) left out unless ``trace_h``) of every checkpoint of a trace."""
    from .analysis.smoothness import fixed_images, smoothness as measure
    from .device import autocast, pick_device, resolve_precision
    from .io import load_tensors, write_record
    from .metrics import evaluate
    from .models import from_state

    start = time.perf_counter()
    prepared, trace = load_tensors(prepared_path), load_tensors(trace_path)
    clean_test, triggered = test_sets(prepared, load_tensors(poisoned_path))
    dev = pick_device(device)
    precision = resolve_precision(precision, dev)
    images, labels = fixed_images(prepared["train_x"], prepared["train_y"], prepared["attacker_idx"],
                                  int(settings["images"]), int(settings["seed"]))
    spec = trace["spec"]
    rows = []
    for step, state in zip(trace["steps"], trace["states"]):
        model = from_state(spec, state)
        with autocast(precision, dev):
            scores = evaluate(model.to(dev), clean_test, triggered)
        sharp = measure(model, images, labels, power_iterations=int(settings["power_iterations"]),
                        probes=int(settings["probes"]) if trace_h else 0, tol=float(settings["tol"]),
                        seed=int(settings["seed"]), device=dev)
        rows.append({"step": int(step), **scores, "lambda_max": sharp.lambda_max, "trace_h": sharp.trace_h,
                     "trace_h_se": sharp.trace_h_se})
        print(f"step {step}: ACC {scores['acc']:.2f}  ASR {scores['asr']:.2f}  λ_max {sharp.lambda_max:.4g}  "
              f"Tr(H) {sharp.trace_h:.4g}", flush=True)
    keys = ("kind", "dataset", "model", "attack", "defense", "seed", "defense_seed", "clean_budget",
            "steps_per_epoch", "total_steps", "every")
    write_record({**{k: trace[k] for k in keys if k in trace}, "checkpoints": rows, "images": len(images),
                  "seconds": time.perf_counter() - start, **runtime_info(dev, precision)}, out_path)


def retune(prepared_path: str, poisoned_path: str, model_path: str, out_path: str, *, ids: dict, settings: dict,
           budget: int, seed: int, defense_seed: int, clean_sampling: str = "random", device: str = "auto",
           precision: str = "auto") -> None:
    """The re-tuning attack (``analysis.retune``) on one purified model, or on the benign model (the
    floor), in run (``seed``, ``defense_seed``): P-ACC, P-ASR and P-RA."""
    from .analysis.retune import retune_attack
    from .device import pick_device, resolve_precision
    from .io import load_tensors, write_record
    from .models import load_checkpoint

    prepared, poisoned = load_tensors(prepared_path), load_tensors(poisoned_path)
    dev = pick_device(device)
    precision = resolve_precision(precision, dev)
    _, record = retune_attack(prepared, poisoned, load_checkpoint(model_path), budget=budget, seed=seed,
                              defense_seed=defense_seed, settings=settings, clean_sampling=clean_sampling,
                              device=dev, precision=precision)
    write_record({**ids, "clean_budget": budget, "seed": seed, "defense_seed": defense_seed, **record,
                  **runtime_info(dev, precision)}, out_path)
    print(f"retune {ids}: P-ACC {record['p_acc']:.2f}  P-ASR {record['p_asr']:.2f}  P-RA {record['p_ra']:.2f}")
