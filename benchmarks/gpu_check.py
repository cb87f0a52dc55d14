"""The one GPU check (issue 22): the tiny study's steps on the device against the CPU, training,
FIP and evaluation throughput, and purify jobs sharing the GPU. Writes one JSON.

    python3 benchmarks/gpu_check.py --device cuda --out gpu_check.json        # ≈ 3–5 min on an H200
    python3 benchmarks/gpu_check.py --device cpu --quick --out /tmp/check.json   # dry run, < 2 min, 1 core

Needs no Snakemake, DVC or install: it puts this checkout's src/ on sys.path. Python packages the
library imports on the way: torch, numpy, pyyaml, tqdm (all on the H200 image); the JSON's
``environment.imported_packages`` lists every non-standard one that was loaded.

(a) ``steps``: synthetic 28×28 data written to a temp dir, poisoned (badnets) with ``steps.poison``,
then per leg ``steps.train``, ``steps.purify`` with every defense of params.yaml's study (budgets cut
to a few iterations) and ``steps.smoothness``. Legs: ``cpu`` and ``device`` (both fp32, TF32 off, no
augmentation, every defense starting from the cpu leg's trained model), ``device_auto`` (the study's
settings as shipped: precision auto, augmentation drawn on the device). Tolerances (``tolerance``):
the fp32 legs differ only by summation order, yet a training run amplifies rounding, and pruning
defenses (fp, fmp, sibp) make discrete choices that a near-tie flips, and FIP/smoothness draw their
probes on the device (other random numbers than the CPU's); ``device_auto`` is a different run
(bf16, another augmentation stream): reported, never judged (gpu-measured.md: tens of points).
(b) ``throughput``: images/s of ``training.fit`` on PreAct-ResNet18-w64, CIFAR-shaped random data,
bf16 autocast, channels-last (fit's own memory format), batch 128 and 512 (and fp32 at 128); FIP's
seconds per iteration; ``metrics.predict`` images/s; peak GPU memory of each.
(c) ``packing``: 1, 2, 4, 8 processes each running an FT purification (fit, bf16) at once on the
device; total images/s and the gain over one, and each process's start-up seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # this checkout's library
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

SCHEMA = "gpu_check/1"
QUIET = lambda *_: None  # noqa: E731

# Agreement of the device's fp32 leg with the cpu leg (the JSON carries these with their reasons).
TOLERANCE = {
    "forward_fp32_rel": 1e-4,   # ‖logits_dev − logits_cpu‖ / ‖logits_cpu‖, TF32 off: summation order only
    "forward_bf16_rel": 5e-2,   # bf16 autocast (8-bit mantissa, ≈ 4e-3 per op) against fp32 on the CPU
    "eval_points": 1.0,         # ACC/ASR of one model evaluated on both: near-ties only (≤ 3 of 300 images)
    "train_points": 3.0,        # a short fp32 training without augmentation: rounding amplified over steps
    "defense_points": 10.0,     # short purifications from one model: discrete pruning choices, FIP's probes
    "lambda_rel": 0.05,         # λ_max by power iteration from another (device-drawn) start vector
    "trace_se": 4.0,            # Tr(H): other Rademacher probes, within this many combined standard errors
}


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def peak_mb(dev: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(dev) / 2**20, 1) if dev.type == "cuda" else None


def reset_peak(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)


class tf32:
    """TF32 off (exact fp32 convolutions and matmuls) inside the block, as the cpu comparison needs."""

    def __init__(self, allow: bool):
        self.allow = allow

    def __enter__(self):
        self.saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = self.allow

    def __exit__(self, *exc):
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = self.saved


# -- (a) the tiny study's steps ----------------------------------------------------------------------

def tiny_prepared(n_train: int = 700, n_test: int = 300, pool: int = 100, seed: int = 0) -> dict:
    """A prepared-dataset dict (``steps.prepare_dataset``'s format) of learnable 1×28×28 images: a
    class's own random 10×10 binary texture in the middle, on noise, clear of the BadNets corner."""
    g = torch.Generator().manual_seed(seed)
    textures = (torch.rand(10, 10, 10, generator=g) < 0.5).to(torch.uint8) * 200

    def images(n):
        y = (torch.arange(n) % 10)[torch.randperm(n, generator=g)]
        x = torch.randint(0, 60, (n, 1, 28, 28), generator=g, dtype=torch.uint8)
        x[:, 0, 9:19, 9:19] += textures[y]
        return x, y

    train_x, train_y = images(n_train)
    test_x, test_y = images(n_test)
    order = torch.randperm(n_train, generator=g)
    return {"dataset": "synthetic", "num_classes": 10, "mean": [0.2], "std": [0.3],
            "train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y,
            "attacker_idx": order[pool:].sort().values, "pool_idx": order[:pool].sort().values}


def study_config(params_path: Path) -> dict:
    import yaml

    return yaml.safe_load(params_path.read_text())


def tiny_defense(config: dict, defense_id: str, iterations: int, plain: bool) -> dict:
    """The resolved settings of ``defense_id`` with its length cut to ``iterations`` (epoch-based
    ones: 1 epoch); ``plain``: no augmentation."""
    from backdoor import params as P

    spec = P.entry(config, "defenses", defense_id)
    entry = dict(config["defenses"].get(defense_id) or {})
    if getattr(spec, "iterations", None) is not None:
        entry["iterations"] = iterations
    elif getattr(spec, "epochs", None) is not None:
        entry["epochs"] = 1
    if "chunk_images" in spec:
        entry["chunk_images"] = 64
    if plain:
        for key, value in (("crop_pad", 0), ("flip", False)):
            if key in spec:
                entry[key] = value
    return P.entry({**config, "defenses": {defense_id: entry}}, "defenses", defense_id).to_dict()


def run_leg(name: str, work: Path, config: dict, dev: torch.device, precision: str, plain: bool,
            start_model: Path | None, defenses: list[str], iterations: int, epochs: int) -> dict:
    """One leg: train, every defense (from ``start_model``, or this leg's model), smoothness."""
    from backdoor import params as P
    from backdoor import steps
    from backdoor.io import read_record

    out = work / name
    out.mkdir()
    prepared, poisoned = str(work / "prepared.pt"), str(work / "poisoned.pt")
    model_params = P.entry(config, "models", "cnn").to_dict()
    train_params = {**P.section(config, "train").to_dict(), "epochs": epochs}
    if plain:
        train_params.update(crop_pad=0, flip=False)
    leg: dict = {"device": str(dev), "precision": precision, "augmentation": not plain, "purify": {}}
    reset_peak(dev)
    t = time.perf_counter()
    steps.train(prepared, poisoned, str(out / "model.pt"), str(out / "model.json"), model_params, train_params,
                seed=0, device=str(dev), precision=precision)
    record = read_record(out / "model.json")
    leg["train"] = {k: record[k] for k in ("acc", "asr", "ra", "final_loss", "images_per_s", "precision")}
    leg["train"].update(step_s=round(time.perf_counter() - t, 3), peak_mem_mb=peak_mb(dev))
    model = start_model or out / "model.pt"
    for defense_id in defenses:
        dparams = tiny_defense(config, defense_id, iterations, plain)
        reset_peak(dev)
        t = time.perf_counter()
        try:
            steps.purify(prepared, poisoned, str(model), str(work / "cpu" / "model.json"),
                         str(out / f"{defense_id}.pt"), str(out / f"{defense_id}.json"),
                         ids={"dataset": "synthetic", "model": "cnn", "attack": "badnets", "defense": defense_id},
                         defense_params=dparams, budget=50, seed=0, defense_seed=0, device=str(dev),
                         precision=precision, arch="cnn")
        except Exception as err:  # noqa: BLE001 (the check reports every failure, then goes on)
            leg["purify"][defense_id] = {"error": f"{type(err).__name__}: {err}"[:500]}
            continue
        r = read_record(out / f"{defense_id}.json")
        leg["purify"][defense_id] = {"acc": r["acc"], "asr": r["asr"], "ra": r["ra"], "runtime_s": r["runtime_s"],
                                     "step_s": round(time.perf_counter() - t, 3), "peak_mem_mb": peak_mb(dev)}
    settings = {**P.section(config, "analysis").smoothness.to_dict(), "images": 50, "power_iterations": 30,
                "tol": 1.0e-3, "probes": 8}
    reset_peak(dev)
    steps.smoothness(prepared, str(model), str(out / "smoothness.json"), settings, device=str(dev))
    s = read_record(out / "smoothness.json")
    leg["smoothness"] = {k: s[k] for k in ("lambda_max", "trace_h", "trace_h_se", "power_iterations", "seconds")}
    leg["smoothness"]["peak_mem_mb"] = peak_mb(dev)
    return leg


def forward_check(work: Path, dev: torch.device) -> dict:
    """The cpu leg's model on the test images: logits and scores on the device against the CPU."""
    from backdoor import steps
    from backdoor.device import autocast
    from backdoor.io import load_tensors
    from backdoor.metrics import evaluate
    from backdoor.models import load_checkpoint

    from backdoor.augment import to_float

    prepared, poisoned = load_tensors(work / "prepared.pt"), load_tensors(work / "poisoned.pt")
    clean, triggered = steps.test_sets(prepared, poisoned)
    model = load_checkpoint(work / "cpu" / "model.pt").eval()
    x = to_float(clean.x)
    with torch.no_grad():
        ref = model(x).double()
        cpu_scores = evaluate(model, clean, triggered)
        model.to(dev)
        with tf32(False):
            fp = model(x.to(dev)).double().cpu()
            dev_scores = evaluate(model, clean, triggered)
        with autocast("bf16", dev):
            bf = model(x.to(dev)).double().cpu()
    rel = lambda a: float((a - ref).norm() / ref.norm())  # noqa: E731
    return {"fp32_rel": rel(fp), "bf16_rel": rel(bf), "cpu_scores": cpu_scores, "device_scores": dev_scores,
            "finite": bool(torch.isfinite(fp).all() and torch.isfinite(bf).all())}


def compare(cpu: dict, other: dict, judged: bool) -> dict:
    """Score differences of ``other`` against the cpu leg, each with its tolerance."""
    rows, ok = {}, True

    def points(name, a, b, tol):
        nonlocal ok
        if "error" in b or "error" in a:
            rows[name] = {"error": b.get("error") or a.get("error")}
            ok = False
            return
        diff = {k: round(b[k] - a[k], 3) for k in ("acc", "asr", "ra")}
        agree = all(abs(v) <= tol for v in diff.values()) and all(math.isfinite(b[k]) for k in diff)
        rows[name] = {**diff, "tolerance": tol, "agree": agree}
        ok &= agree

    points("train", cpu["train"], other["train"], TOLERANCE["train_points"])
    for d in cpu["purify"]:
        points(d, cpu["purify"][d], other["purify"].get(d, {"error": "not run"}), TOLERANCE["defense_points"])
    a, b = cpu["smoothness"], other["smoothness"]
    lam = abs(b["lambda_max"] - a["lambda_max"]) / max(abs(a["lambda_max"]), 1e-12)
    se = math.hypot(a["trace_h_se"], b["trace_h_se"])
    tr_ok = abs(b["trace_h"] - a["trace_h"]) <= TOLERANCE["trace_se"] * se + 1e-6 * abs(a["trace_h"])
    lam_ok = lam <= TOLERANCE["lambda_rel"]
    rows["smoothness"] = {"lambda_rel": round(lam, 5), "trace_diff": b["trace_h"] - a["trace_h"],
                          "trace_se": se, "agree": bool(lam_ok and tr_ok)}
    ok &= lam_ok and tr_ok
    return {"judged": judged, "agree": bool(ok) if judged else None, "rows": rows}


def check_steps(args, dev: torch.device, config: dict) -> dict:
    from backdoor import params as P
    from backdoor import steps
    from backdoor.device import resolve_precision
    from backdoor.io import save_tensors

    defenses = args.defenses.split(",") if args.defenses else list(P.section(config, "study").defenses)
    iterations, epochs = (5, 6) if args.quick else (20, 6)  # 6 epochs: ACC ≈ 92, ASR ≈ 80 on the cpu leg
    result: dict = {"defenses": defenses, "iterations": iterations, "train_epochs": epochs, "clean_budget": 50,
                    "data": "synthetic 1×28×28 (a texture per class), 600 attacker + 100 pool + 300 test images, "
                            "badnets 10%, the cnn of params.yaml",
                    "legs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        save_tensors(tiny_prepared(), work / "prepared.pt")
        steps.poison(str(work / "prepared.pt"), str(work / "poisoned.pt"), "badnets",
                     P.entry(config, "attacks", "badnets").to_dict())
        cpu = torch.device("cpu")
        legs = [("cpu", cpu, "fp32", True), ("device", dev, "fp32", True),
                ("device_auto", dev, resolve_precision(config.get("precision", "auto"), dev), False)]
        for name, where, precision, plain in legs:
            t = time.perf_counter()
            start = None if name == "cpu" else work / "cpu" / "model.pt"
            with tf32(False) if plain else contextlib.nullcontext():  # the auto leg: torch's defaults
                result["legs"][name] = run_leg(name, work, config, where, precision, plain, start, defenses,
                                               iterations, epochs)
            result["legs"][name]["seconds"] = round(time.perf_counter() - t, 2)
            print(f"steps: leg {name} ({where}, {precision}) in {result['legs'][name]['seconds']:.1f} s", flush=True)
        result["forward"] = forward_check(work, dev)
    fwd = result["forward"]
    eval_ok = all(abs(fwd["device_scores"][k] - fwd["cpu_scores"][k]) <= TOLERANCE["eval_points"] for k in fwd["cpu_scores"])
    fwd["agree"] = bool(fwd["finite"] and fwd["fp32_rel"] <= TOLERANCE["forward_fp32_rel"]
                        and fwd["bf16_rel"] <= TOLERANCE["forward_bf16_rel"] and eval_ok)
    result["comparison"] = {"device": compare(result["legs"]["cpu"], result["legs"]["device"], judged=True),
                            "device_auto": compare(result["legs"]["cpu"], result["legs"]["device_auto"], judged=False)}
    result["agree"] = bool(fwd["agree"] and result["comparison"]["device"]["agree"])
    result["errors"] = {leg: {d: r["error"] for d, r in v["purify"].items() if "error" in r}
                        for leg, v in result["legs"].items()}
    return result


# -- (b) throughput ----------------------------------------------------------------------------------

def cifar_data(n: int, seed: int = 0):
    from backdoor.data import get_dataset
    from backdoor.data.tensors import TensorSet

    spec = get_dataset("cifar10")
    g = torch.Generator().manual_seed(seed)
    data = TensorSet(torch.randint(0, 256, (n, spec.channels, spec.size, spec.size), generator=g, dtype=torch.uint8),
                     torch.randint(0, spec.num_classes, (n,), generator=g))
    return spec, data


def cifar_model(spec, width: int):
    from backdoor.models import build_model

    return build_model("preact_resnet18", spec.channels, spec.num_classes, list(spec.mean), list(spec.std),
                       width=width)


def train_throughput(dev, width: int, batch: int, precision: str, steps_: int, warm: int) -> dict:
    from backdoor.device import autocast, memory_format
    from backdoor.training import FitConfig, fit

    spec, data = cifar_data(batch * max(4, min(steps_, 40)))
    model = cifar_model(spec, width)
    gen = torch.Generator().manual_seed(0)
    cfg = lambda n: FitConfig(lr=0.01, iterations=n, batch_size=batch, crop_pad=4, flip=True, momentum=0.9)  # noqa: E731
    with autocast(precision, dev):
        fit(model, data, cfg(warm), gen=gen, device=dev, log=QUIET)
        sync(dev)
        reset_peak(dev)
        t = time.perf_counter()
        r = fit(model, data, cfg(steps_), gen=gen, device=dev, log=QUIET)
        sync(dev)
        wall = time.perf_counter() - t
    return {"arch": "preact_resnet18", "width": width, "shape": [spec.channels, spec.size, spec.size], "batch": batch,
            "precision": precision, "channels_last": memory_format(model) == torch.channels_last, "steps": steps_,
            "images_per_s": round(r.images_per_s, 1), "step_ms": round(1000 * r.seconds / steps_, 3),
            "images_per_s_with_setup": round(steps_ * batch / wall, 1), "peak_mem_mb": peak_mb(dev)}


def fip_step(dev, width: int, precision: str, iterations: int, budget: int, warm: int = 5) -> dict:
    """FIP (the study's settings, ``iterations`` cut) on a PreAct-ResNet18 with ``budget`` clean images."""
    from backdoor.defenses import get_defense
    from backdoor.device import autocast

    spec, clean = cifar_data(budget, seed=1)
    purify = get_defense("fip")
    with autocast(precision, dev):
        model = cifar_model(spec, width)
        purify(model, clean, {"type": "fip", "iterations": warm}, torch.Generator().manual_seed(0), dev)  # warm-up
        sync(dev)
        reset_peak(dev)
        t = time.perf_counter()
        _, info = purify(model, clean, {"type": "fip", "iterations": iterations}, torch.Generator().manual_seed(1), dev)
        sync(dev)
        wall = time.perf_counter() - t
    return {"width": width, "precision": precision, "budget": budget, "iterations": iterations,
            "s_per_iteration": round(info["train_seconds"] / max(1, info["steps"]), 5),
            "fisher_s": info["fisher_seconds"], "wall_s": round(wall, 3), "peak_mem_mb": peak_mb(dev)}


def eval_throughput(dev, width: int, precision: str, images: int) -> dict:
    from backdoor.device import autocast
    from backdoor.metrics import predict

    spec, data = cifar_data(images, seed=2)
    model = cifar_model(spec, width).to(dev)
    with autocast(precision, dev):
        predict(model, data.x[:1024], device=dev)
        sync(dev)
        reset_peak(dev)
        t = time.perf_counter()
        predict(model, data.x, device=dev)
        sync(dev)
        seconds = time.perf_counter() - t
    return {"width": width, "precision": precision, "images": images, "images_per_s": round(images / seconds, 1),
            "peak_mem_mb": peak_mb(dev)}


def check_throughput(args, dev: torch.device) -> dict:
    from backdoor.device import resolve_precision

    bf16 = "bf16" if dev.type == "cuda" else resolve_precision("auto", dev)
    width = 16 if args.quick else 64
    steps_, warm = (3, 1) if args.quick else (100, 10)
    batches = (128, 256) if args.quick else (128, 512)
    out: dict = {"train": []}
    for batch in batches:
        out["train"].append(train_throughput(dev, width, batch, bf16, steps_, warm))
        print(f"throughput: batch {batch} {bf16}: {out['train'][-1]['images_per_s']:.0f} img/s", flush=True)
    if not args.quick:
        out["train"].append(train_throughput(dev, width, 128, "fp32", steps_, warm))
    out["fip"] = fip_step(dev, width, bf16, *((5, 32, 1) if args.quick else (50, 500, 5)))
    out["evaluate"] = eval_throughput(dev, width, bf16, 512 if args.quick else 10000)
    best = max((r for r in out["train"] if r["precision"] == bf16), key=lambda r: r["images_per_s"])
    out["projected_100_epochs_s"] = {str(r["batch"]): round(100 * 50000 / r["images_per_s"], 1)
                                     for r in out["train"] if r["precision"] == bf16}
    out["best_train_images_per_s"] = best["images_per_s"]
    return out


# -- (c) several purify jobs on one device ---------------------------------------------------------------

def _pack_worker(spawned: float, device: str, width: int, iterations: int, threads: int, barrier, queue) -> None:
    """One purify-like job (FT: ``fit`` on 500 clean images, bf16 where fast): ready, wait, run."""
    try:
        torch.set_num_threads(threads)
        from backdoor.defenses import get_defense
        from backdoor.device import autocast, resolve_precision

        dev = torch.device(device)
        precision = "bf16" if dev.type == "cuda" else resolve_precision("auto", dev)
        spec, clean = cifar_data(500, seed=3)
        ft = get_defense("ft")
        with autocast(precision, dev):
            model = cifar_model(spec, width)
            ft(model, clean, {"type": "ft", "iterations": 3}, torch.Generator().manual_seed(0), dev)  # warm-up
            sync(dev)
            ready = time.time()
            barrier.wait(timeout=600)
            start = time.time()
            ft(model, clean, {"type": "ft", "iterations": iterations}, torch.Generator().manual_seed(1), dev)
            sync(dev)
        queue.put({"startup_s": ready - spawned, "start": start, "end": time.time(), "images": iterations * 128,
                   "peak_mem_mb": peak_mb(dev), "precision": precision})
    except Exception as err:  # noqa: BLE001
        barrier.abort()
        queue.put({"error": f"{type(err).__name__}: {err}"[:500]})


def check_packing(args, dev: torch.device) -> dict:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # CUDA cannot be forked
    jobs = [1, 2] if args.quick else [int(j) for j in args.jobs.split(",")]
    width, iterations = (16, 3) if args.quick else (64, 200)
    threads = 1 if dev.type == "cpu" else 2
    runs = []
    for k in jobs:
        barrier, queue = ctx.Barrier(k), ctx.Queue()
        procs = [ctx.Process(target=_pack_worker, args=(time.time(), str(dev), width, iterations, threads, barrier,
                                                         queue)) for _ in range(k)]
        for p in procs:
            p.start()
        try:
            results = [queue.get(timeout=900) for _ in procs]
        finally:
            for p in procs:
                p.join(timeout=60)
                if p.is_alive():
                    p.terminate()
        errors = [r["error"] for r in results if "error" in r]
        if errors:
            runs.append({"jobs": k, "error": errors[0]})
            break
        wall = max(r["end"] for r in results) - min(r["start"] for r in results)
        total = sum(r["images"] for r in results) / wall
        runs.append({"jobs": k, "wall_s": round(wall, 3), "images_per_s": round(total, 1),
                     "per_job_images_per_s": round(total / k, 1),
                     "startup_s": round(max(r["startup_s"] for r in results), 2),
                     "peak_mem_mb_per_job": max((r["peak_mem_mb"] or 0) for r in results) or None})
        print(f"packing: {k} job(s) {total:.0f} img/s together", flush=True)
    one = next((r["images_per_s"] for r in runs if r.get("jobs") == 1 and "images_per_s" in r), None)
    for r in runs:
        if one and "images_per_s" in r:
            r["gain"] = round(r["images_per_s"] / one, 3)
    return {"workload": f"ft (fit, batch 128, {iterations} iterations) on preact_resnet18 w{width}, CIFAR-shaped, "
                        f"500 clean images, {threads} thread(s) per job", "runs": runs}


# -- main ------------------------------------------------------------------------------------------

def environment(dev: torch.device) -> dict:
    env = {"torch": torch.__version__, "python": platform.python_version(), "device": str(dev),
           "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "cuda": torch.version.cuda}
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        env.update(name=props.name, capability=f"{props.major}.{props.minor}",
                   memory_mb=round(props.total_memory / 2**20), bf16=torch.cuda.is_bf16_supported())
    return env


def imported_packages() -> list[str]:
    stdlib = getattr(sys, "stdlib_module_names", set())
    tops = {name.split(".")[0] for name in list(sys.modules)}
    return sorted(t for t in tops if t not in stdlib and not t.startswith("_") and t not in ("backdoor",))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu")
    ap.add_argument("--out", required=True, help="the JSON written")
    ap.add_argument("--quick", action="store_true", help="dry run: tiny sizes (a CPU in < 2 min)")
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--defenses", default=None, help="default: params.yaml's study.defenses")
    ap.add_argument("--jobs", default="1,2,4,8", help="concurrent purify jobs tried (c)")
    ap.add_argument("--parts", default="steps,throughput,packing")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but torch sees no CUDA device")
    started = time.perf_counter()
    report = {"schema": SCHEMA, "quick": args.quick, "argv": sys.argv[1:] if argv is None else argv,
              "environment": environment(dev),
              "tolerance": {**TOLERANCE, "why": __doc__.split("(a) ")[1].split("(b) ")[0].strip()}}
    out = Path(args.out)

    def save():
        report["seconds"] = round(time.perf_counter() - started, 2)
        report["environment"]["imported_packages"] = imported_packages()
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1, default=str))

    parts = args.parts.split(",")
    sections = (("steps", lambda: check_steps(args, dev, study_config(Path(args.params)))),
                ("throughput", lambda: check_throughput(args, dev)),
                ("packing", lambda: check_packing(args, dev)))
    for name, run in sections:
        if name not in parts:
            continue
        t = time.perf_counter()
        try:
            report[name] = run()
        except Exception as err:  # noqa: BLE001 (one JSON whatever fails: the next part still runs)
            import traceback

            report[name] = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-3000:]}
        report[name]["seconds"] = round(time.perf_counter() - t, 2)
        save()  # after every part: a run cut short keeps what it measured
    s = report.get("steps", {})
    print(f"gpu_check: {report['seconds']:.0f} s; steps agree: {s.get('agree')}; "
          f"train {report.get('throughput', {}).get('best_train_images_per_s')} img/s; wrote {out}")
    return report


if __name__ == "__main__":
    main()
