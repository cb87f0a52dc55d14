"""Project a study profile's CPU time from measured costs, before running it.

    python benchmarks/project.py --configfile profiles/cifar10.yaml --reference results [--lanes 2]

``--reference`` is the results/ folder of a finished study on this machine (the default one): its
per-job times (training seconds and images/s, each defense's runtime and step time, craft and
smoothness seconds) are scaled to the profile's models and datasets by the ratio of training-step
times measured now, on random tensors of each shape (same precision, one thread, alternating rounds),
and by the profile's epochs, training-set size and job counts. Defense budgets are in iterations, so
a defense's cost scales with the step time (epoch-based ones, like sibp, also with the clean budget).
Prints a table per job class and the projected wall time for ``--lanes`` single-thread jobs at once.

``--gpu-tflops R`` adds a GPU column: each job's projected CPU time converted at the ratio of this
CPU's measured FLOP rate on the profile's training step (FLOPs counted by torch's FlopCounterMode,
forward + backward) to R, an assumed sustained TFLOP/s of the GPU on that step. An estimate, not a
measurement: R is the one number to replace by a measured one (README, "The paper profile").

``--gpu-measured check.json`` (written by benchmarks/gpu_check.py on the GPU) replaces R by measured
numbers: the training step's rate (its FLOPs over its measured time, batch 128), so a model of the
measured shape trains at the measured images/s and other shapes scale by FLOPs; FIP's measured
seconds per iteration; the measured process start-up; evaluation images/s; and ``--gpu-jobs k``
packed jobs per GPU at the measured gain of k concurrent jobs. Each row says which it used.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's library

import torch  # noqa: E402
import yaml  # noqa: E402

from backdoor import params as P  # noqa: E402
from backdoor.data import get_dataset  # noqa: E402
from backdoor.data.tensors import TensorSet  # noqa: E402
from backdoor.device import autocast, resolve_precision  # noqa: E402
from backdoor.io import read_record  # noqa: E402
from backdoor.models import build_model  # noqa: E402
from backdoor.training import FitConfig, fit  # noqa: E402

START_S = 3.0  # a job's start-up (python, torch, loading tensors), measured ≈ 3 s per job here
TEST_IMAGES = 10_000  # evaluated twice per job (clean + triggered) unless splits.test_limit says less


def merged(params: Path, profile: Path | None) -> dict:
    from snakemake.utils import update_config

    config = yaml.safe_load(params.read_text())
    if profile:
        update_config(config, yaml.safe_load(profile.read_text()))
    return config


def step_seconds(arch: str, width: int | None, dataset: str, precision: str, rounds: int = 2, steps: int = 8) -> float:
    """Seconds per 128-image training step of ``arch`` on random images of ``dataset``'s shape."""
    spec = get_dataset(dataset)
    gen = torch.Generator().manual_seed(0)
    n = 128 * steps
    data = TensorSet(torch.randint(0, 256, (n, spec.channels, spec.size, spec.size), generator=gen, dtype=torch.uint8),
                     torch.randint(0, spec.num_classes, (n,), generator=gen))
    kwargs = {"width": width} if width else {}
    model = build_model(arch, spec.channels, spec.num_classes, list(spec.mean), list(spec.std), **kwargs)
    best = float("inf")
    with autocast(precision, "cpu"):
        fit(model, data, FitConfig(lr=0.01, iterations=2), gen=gen, log=lambda *_: None)
        for _ in range(rounds):
            start = time.perf_counter()
            fit(model, data, FitConfig(lr=0.01, iterations=steps, crop_pad=2, flip=True), gen=gen, log=lambda *_: None)
            best = min(best, (time.perf_counter() - start) / steps)
    return best


def step_flops(arch: str, width: int | None, dataset: str) -> float:
    """FLOPs of one 128-image training step (forward + backward) of ``arch`` on ``dataset``'s shape."""
    from torch.utils.flop_counter import FlopCounterMode

    spec = get_dataset(dataset)
    kwargs = {"width": width} if width else {}
    model = build_model(arch, spec.channels, spec.num_classes, list(spec.mean), list(spec.std), **kwargs)
    x = torch.rand(128, spec.channels, spec.size, spec.size)
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.cross_entropy(model(x), torch.zeros(128, dtype=torch.long)).backward()
    return float(counter.get_total_flops())


def gpu_measured(path: Path) -> dict:
    """The numbers project() uses from a benchmarks/gpu_check.py JSON."""
    import json

    check = json.loads(path.read_text())
    if check.get("schema") != "gpu_check/1":
        raise SystemExit(f"{path}: not a benchmarks/gpu_check.py JSON (schema {check.get('schema')!r})")
    tp = check.get("throughput") or {}
    if "error" in tp or not tp.get("train"):
        raise SystemExit(f"{path}: its throughput part failed or is missing: {tp.get('error')}")
    train = [r for r in tp["train"] if r["batch"] == 128]
    train = min(train or tp["train"], key=lambda r: r["step_ms"])  # the faster precision at the study's batch
    runs = [r for r in (check.get("packing") or {}).get("runs", []) if "images_per_s" in r]
    return {"device": check["environment"].get("name") or check["environment"]["device"],
            "quick": check.get("quick", False), "train": train, "fip": tp.get("fip"),
            "evaluate": tp.get("evaluate"), "startup_s": next((r["startup_s"] for r in runs if r["jobs"] == 1), None),
            "gain": {r["jobs"]: r.get("gain") for r in runs if r.get("gain")}}


def reference_costs(results: Path) -> dict:
    """Median per-job seconds of a finished study: train (per image), each defense, craft, smoothness."""
    def median(values):
        values = sorted(values)
        return values[len(values) // 2] if values else None

    def records(pattern):  # each metrics json with its timings merged back
        return [read_record(path) for path in results.glob(pattern) if not path.name.endswith(".time.json")]

    models = records("models/*/*/*/seed*.json")
    runs = records("runs/*/*/*/*/*.json")
    if not models or not runs:
        raise SystemExit(f"{results} holds no finished study (results/models and results/runs are empty)")
    by_type: dict[str, list] = {}
    for run in runs:
        by_type.setdefault(run["defense_type"], []).append(run)
    smooth = [r["seconds"] for r in records("smoothness/*/*/*/*/*.json") if "seconds" in r]
    crafts = {}  # the craft step prints its time to its log (the asset itself holds no timings)
    for path in (results.parent / "logs" / "craft").glob("*/*.log"):
        found = re.findall(r"^craft \w+: ([\d.]+) s", path.read_text(errors="replace"), flags=re.M)
        if found:
            crafts[path.stem] = float(found[-1])
    return {
        "train_per_image": median([1.0 / m["images_per_s"] for m in models]),
        "train_overhead": median([m["runtime_s"] - m["train_seconds"] for m in models]),
        "defense": {d: median([r["runtime_s"] for r in rs]) for d, rs in by_type.items()},
        "defense_overhead": median([r["step_s"] - r["runtime_s"] for r in runs]),
        "budget": median([r["n_clean"] for r in runs]),
        "smoothness": median(smooth),
        "craft": crafts,
        "threads": median([r.get("threads", 1) for r in runs]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--configfile", help="a profile (snakemake --configfile) merged over params.yaml")
    ap.add_argument("--reference", default="results", help="results/ of a finished default study")
    ap.add_argument("--lanes", type=int, default=2, help="single-thread jobs running at once")
    ap.add_argument("--precision", default=None, help="default: the profile's")
    ap.add_argument("--gpu-tflops", type=float, default=None,
                    help="add a GPU column, assuming this sustained TFLOP/s on the training step")
    ap.add_argument("--gpu-measured", type=Path, default=None,
                    help="a benchmarks/gpu_check.py JSON: the GPU column from its measured step times")
    ap.add_argument("--gpu-jobs", type=int, default=None,
                    help="jobs packed per GPU (default: the measured count with the best gain)")
    args = ap.parse_args()
    measured = gpu_measured(args.gpu_measured) if args.gpu_measured else None
    if measured:
        m = measured["train"]
        print(f"measured on {measured['device']}{' (a --quick dry run: sizes cut)' if measured['quick'] else ''}: "
              f"{m['arch']} w{m['width']} on {'×'.join(map(str, m['shape']))} images, batch {m['batch']}, "
              f"{m['precision']}: {m['step_ms']:.1f} ms per step ({m['images_per_s']:.0f} img/s)")
    torch.set_num_threads(1)
    config = merged(Path(args.params), Path(args.configfile) if args.configfile else None)
    ref = reference_costs(Path(args.reference))
    precision = resolve_precision(args.precision or config.get("precision", "auto"), "cpu")
    ref_step = step_seconds("cnn", 16, "fashion_mnist", "fp32")

    runs = P.study_runs(config)
    trains = Counter((r["dataset"], r["model"], r["attack"], r["seed"]) for r in runs)
    crafted = sorted({(r["dataset"], r["attack"]) for r in runs if P.is_crafted(config, r["attack"])})
    if crafted:
        s = P.section(config, "surrogate")
        for dataset, _ in crafted:
            trains[(dataset, s.model, s.attack, s.seed)] += 0
    ratio: dict[tuple, float] = {}
    gpu_factor: dict[tuple, float] = {}  # GPU seconds per projected CPU second
    exact: set[tuple] = set()  # (dataset, model) of the measured GPU shape
    rate = None  # FLOP/s on the GPU: measured (--gpu-measured) or assumed (--gpu-tflops)
    if measured:
        m = measured["train"]
        from backdoor.data.registry import DATASETS

        shaped = next(d for d in ("cifar10", *sorted(DATASETS))  # a dataset of the measured shape
                      if [get_dataset(d).channels, get_dataset(d).size, get_dataset(d).size] == m["shape"])
        rate = step_flops(m["arch"], m["width"], shaped) / (m["step_ms"] / 1000)
        print(f"measured: {rate / 1e12:.2f} TFLOP/s on that step (its FLOPs over its measured time)")
    elif args.gpu_tflops:
        rate = args.gpu_tflops * 1e12
    for dataset, model in sorted({(d, m) for d, m, _, _ in trains}):
        spec = P.entry(config, "models", model)
        seconds = step_seconds(spec.kind, getattr(spec, "width", None), dataset, precision)
        ratio[(dataset, model)] = seconds / ref_step
        print(f"measured: {model} on {dataset}-shaped images ({precision}) costs {ratio[(dataset, model)]:.2f}× "
              f"a step of the reference cnn/fashion_mnist (fp32, {ref_step * 1000:.0f} ms per 128 images)")
        if rate:
            flops = step_flops(spec.kind, getattr(spec, "width", None), dataset)
            gpu_factor[(dataset, model)] = flops / seconds / rate
            ds = get_dataset(dataset)
            if measured and (spec.kind, getattr(spec, "width", 64), [ds.channels, ds.size, ds.size]) == (
                    measured["train"]["arch"], measured["train"]["width"], measured["train"]["shape"]):
                exact.add((dataset, model))
            print(f"measured: {flops / 1e9:.0f} GFLOP per step, {flops / seconds / 1e9:.1f} GFLOP/s on this CPU; "
                  f"{'measured' if measured else 'assumed'} {rate / 1e12:.3g} TFLOP/s on the GPU: "
                  f"{1 / gpu_factor[(dataset, model)]:.0f}× faster"
                  + (" (the measured shape)" if (dataset, model) in exact else ""))
    start_gpu = measured["startup_s"] if measured and measured["startup_s"] else START_S
    jobs = args.gpu_jobs or (max(measured["gain"], key=measured["gain"].get) if measured and measured["gain"] else 1)
    gain = (measured["gain"].get(jobs) if measured else None) or 1.0
    eval_rate = (measured.get("evaluate") or {}).get("images_per_s") if measured else None
    if measured:
        print(f"measured: process start-up {start_gpu:.1f} s; evaluation {eval_rate or float('nan'):.0f} img/s; "
              f"{jobs} job(s) per GPU: {gain:.2f}× the throughput of one"
              + ("" if jobs in measured["gain"] else " (not measured: no gain applied)"))

    epochs = P.section(config, "train").epochs
    splits = P.section(config, "splits")
    rows: dict[str, list[float]] = {}
    gpu_rows: dict[str, list[float]] = {}
    basis: dict[str, set[str]] = {}  # job class → how its GPU time was obtained
    assumed = f"assumed {args.gpu_tflops:g} TFLOP/s" if args.gpu_tflops else ""
    evaluation = 2 * (splits.test_limit or TEST_IMAGES) / eval_rate if eval_rate else 0.0

    def add(name: str, cpu_seconds: float, key: tuple, gpu_seconds: float | None = None,
            how: str | None = None) -> None:  # seconds without the job's start-up
        rows.setdefault(name, []).append(cpu_seconds + START_S)
        if gpu_factor:
            if gpu_seconds is None:
                gpu_seconds = cpu_seconds * gpu_factor[key]
                how = how or (("measured step" if key in exact else "measured rate, scaled by FLOPs")
                              if measured else assumed)
            gpu_rows.setdefault(name, []).append(gpu_seconds + start_gpu)
            basis.setdefault(name, set()).add(how)

    for (dataset, model, _, _) in trains:
        n = (get_dataset(dataset).train_size if splits.train_limit is None else splits.train_limit) - splits.clean_pool
        cpu = ref["train_per_image"] * ratio[(dataset, model)] * n * epochs + ref["train_overhead"]
        if (dataset, model) in exact:
            add("train", cpu, (dataset, model), n * epochs / measured["train"]["images_per_s"] + evaluation,
                "measured img/s")
        else:
            add("train", cpu, (dataset, model))
    for dataset, attack in crafted:
        kind = P.entry(config, "attacks", attack).kind
        seconds = ref["craft"].get(kind) or 0.0
        surrogate = (dataset, P.section(config, "surrogate").model)
        add("craft", seconds * ratio.get(surrogate, 1.0), surrogate)
    missing, twins = set(), set()
    for run in runs:
        kind = P.entry(config, "defenses", run["defense"]).kind
        base = ref["defense"].get(kind)
        if base is None and kind.endswith("_released") and kind.removesuffix("_released") in ref["defense"]:
            base = ref["defense"][kind.removesuffix("_released")]  # the same iterations as its corrected twin
            twins.add(kind)
        if base is None:
            missing.add(kind)
            continue
        scale = ratio[(run["dataset"], run["model"])]
        if kind.removesuffix("_released") == "sibp":  # epochs over the clean budget
            scale *= run["budget"] / ref["budget"]
        key = (run["dataset"], run["model"])
        cpu = base * scale + ref["defense_overhead"] * scale
        fip = measured and measured.get("fip") and key in exact and kind.removesuffix("_released") == "fip"
        if fip:
            f, spec = measured["fip"], P.entry(config, "defenses", run["defense"])
            seconds = spec.iterations * f["s_per_iteration"] + f["fisher_s"] * run["budget"] / f["budget"]
            add(f"purify {kind}", cpu, key, seconds + evaluation, "measured FIP step")
        else:
            add(f"purify {kind}", cpu, key)
        if P.smoothness_enabled(config) and ref["smoothness"]:
            add("smoothness", ref["smoothness"] * scale, key)
    total = sum(sum(v) for v in rows.values())
    print(f"\nprofile {args.configfile or 'params.yaml'}: {len(runs)} purify runs, {len(trains)} trained models, "
          f"precision {precision}, reference {args.reference} ({ref['threads']} thread(s) per job)\n")
    label = "measured" if measured else f"at {args.gpu_tflops:g} TFLOP/s"
    packed = f" GPU-hours, {jobs} per GPU |" if measured else ""
    gpu = (f" GPU s / job ({label}) | GPU-hours |{packed} GPU basis |") if gpu_rows else ""
    cols = "---|" * (3 + bool(measured)) if gpu else ""
    print(f"| job class | jobs | projected s / job | core-hours |{gpu}\n|---|---|---|---|{cols}")
    for name, costs in sorted(rows.items(), key=lambda kv: -sum(kv[1])):
        extra = ""
        if gpu:
            hours = sum(gpu_rows[name]) / 3600
            extra = (f" {sum(gpu_rows[name]) / len(costs):.0f} | {hours:.2f} |" + (f" {hours / gain:.2f} |" if measured else "")
                     + f" {', '.join(sorted(basis[name]))} |")
        print(f"| {name} | {len(costs)} | {sum(costs) / len(costs):.0f} | {sum(costs) / 3600:.2f} |{extra}")
    gpu_total = sum(sum(v) for v in gpu_rows.values())
    print(f"| **total** | {sum(len(v) for v in rows.values())} | | **{total / 3600:.2f}** |"
          + (f" | **{gpu_total / 3600:.2f}** |" + (f" **{gpu_total / 3600 / gain:.2f}** |" if measured else "")
             + " |" if gpu else ""))
    if measured:
        print(f"\nGPU column: measured on {measured['device']} ({args.gpu_measured}): training step, FIP step, "
              f"evaluation, start-up ({start_gpu:.1f} s per job), packing gain ({gain:.2f}× at {jobs} per GPU); "
              f"assumed: {TEST_IMAGES} test images where splits.test_limit is unset, and every job class "
              "without a measured step scaled from the training step by its CPU time (FLOPs ratio)")
    print(f"\nprojected wall time with {args.lanes} single-thread jobs at once: {total / args.lanes / 60:.0f} min")
    if twins:
        print(f"({', '.join(sorted(twins))}: no reference time, projected at their corrected twin's)")
    if missing:
        print(f"(no reference time for defense types {sorted(missing)}: left out)")


if __name__ == "__main__":
    main()
