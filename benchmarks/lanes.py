"""Benchmark: one multi-threaded job at a time, or one single-thread job per CPU side by side?

    python benchmarks/lanes.py [--precision fp32] [--steps 60]

Runs a training job (``fit``, compact CNN, Fashion-MNIST-shaped random images) and a purify job (FIP's
objective with its trace term every 5th step, 600 clean images) as separate processes, in four
conditions: one job with as many threads as CPUs; one single-thread job per CPU at once; and both
again beside an unrelated CPU-bound process (a busy loop). Prints images/s per job and in total.
Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # this checkout's library


def worker(kind: str, threads: int, steps: int, precision: str) -> None:
    import torch

    from backdoor.data.tensors import TensorSet
    from backdoor.device import autocast
    from backdoor.models import build_model
    from backdoor.training import FitConfig, fit

    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    n = 600 if kind == "purify" else 128 * steps
    data = TensorSet(torch.randint(0, 256, (n, 1, 28, 28), generator=gen, dtype=torch.uint8),
                     torch.randint(0, 10, (n,), generator=gen))
    model = build_model("cnn", 1, 10, [0.5], [0.25], width=16)
    with autocast(precision, "cpu"):
        if kind == "train":
            fit(model, data, FitConfig(lr=0.01, iterations=3), gen=gen, log=lambda *_: None)
            r = fit(model, data, FitConfig(lr=0.01, iterations=steps, crop_pad=2, flip=True), gen=gen,
                    log=lambda *_: None)
            rate = r.images_per_s
        else:
            from backdoor.defenses import fip

            p = {"iterations": steps, "trace_every": 5, "probes": 20, "eta_r": 0.0}
            start = time.perf_counter()
            fip.purify(model, data, p, gen, torch.device("cpu"))
            rate = steps * 128 / (time.perf_counter() - start)
    print(json.dumps({"rate": rate}))


def run(kind: str, jobs: int, threads: int, busy: bool, steps: int, precision: str) -> list[float]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TQDM_DISABLE": "1"}
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        procs = [subprocess.Popen([sys.executable, __file__, "--worker", kind, "--threads", str(threads),
                                   "--steps", str(steps), "--precision", precision],
                                  stdout=subprocess.PIPE, text=True, env=env) for _ in range(jobs)]
        return [json.loads(p.communicate()[0].strip().splitlines()[-1])["rate"] for p in procs]
    finally:
        if hog:
            hog.kill()
            hog.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--worker", choices=["train", "purify"])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.threads, args.steps, args.precision)
        return
    cpus = os.cpu_count() or 1
    print(f"{cpus} CPUs, {args.precision}, {args.steps} steps of 128 images per job\n")
    print("| job | layout | beside a busy process | images/s per job | images/s in total |\n|---|---|---|---|---|")
    for kind in ("train", "purify"):
        for busy in (False, True):
            for jobs, threads in ((1, cpus), (cpus, 1)):
                rates = run(kind, jobs, threads, busy, args.steps, args.precision)
                layout = f"{jobs} job × {threads} threads" if jobs == 1 else f"{jobs} jobs × 1 thread"
                print(f"| {kind} | {layout} | {'yes' if busy else 'no'} | "
                      f"{' / '.join(f'{r:.0f}' for r in rates)} | {sum(rates):.0f} |", flush=True)


if __name__ == "__main__":
    main()
