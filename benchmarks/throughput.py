"""Benchmark: training and evaluation throughput (images/s) of the study's shared code.

    python benchmarks/throughput.py [--archs cnn,preact_resnet18] [--widths 16,32,64]
                                    [--precisions fp32,bf16] [--threads 1] [--steps 30]

For each architecture × width × precision it times ``backdoor.training.fit`` (the one training loop,
with the study's on-device crop + flip augmentation) against a bare PyTorch loop doing the same work
(same model, batch of 128, augmentation, optimiser, precision and threads), and
``backdoor.metrics.predict`` for evaluation, on random uint8 28×28 images (no dataset needed).
``fit / bare`` ≥ 0.9 means the shared loop costs little beyond the arithmetic. Not a test: run it on
an idle machine (a second CPU-bound process changes the numbers several-fold).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's library, not an installed one
import argparse
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's library
os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars between the table's rows

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from backdoor.augment import augment, to_float  # noqa: E402
from backdoor.data.tensors import TensorSet  # noqa: E402
from backdoor.device import autocast, fast_bf16, pick_device  # noqa: E402
from backdoor.metrics import predict  # noqa: E402
from backdoor.models import build_model  # noqa: E402
from backdoor.training import FitConfig, fit, make_optimizer  # noqa: E402

BATCH = 128


def bare_loop(model, data: TensorSet, cfg: FitConfig, steps: int, device, gen: torch.Generator) -> float:
    """The same training arithmetic as ``fit`` written as a plain loop; returns images/s."""
    model.to(device, memory_format=torch.channels_last).train()
    opt = make_optimizer(model.parameters(), cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    x_all, y_all = data.x.to(device), data.y.to(device)
    aug = torch.Generator(device=device).manual_seed(0)
    start = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, len(data), (cfg.batch_size,), generator=gen).to(device)
        x = augment(to_float(x_all[idx]), cfg.crop_pad, cfg.flip, aug).contiguous(memory_format=torch.channels_last)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y_all[idx]).backward()
        opt.step()
        sched.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * cfg.batch_size / (time.perf_counter() - start)


def measure(arch: str, width: int, precision: str, steps: int, device, eval_images: int, rounds: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    n = max(steps, 8) * BATCH
    data = TensorSet(torch.randint(0, 256, (n, 1, 28, 28), generator=gen, dtype=torch.uint8),
                     torch.randint(0, 10, (n,), generator=gen))
    cfg = FitConfig(lr=0.01, iterations=steps, batch_size=BATCH, crop_pad=2, flip=True, momentum=0.9)
    warm = FitConfig(lr=0.01, iterations=3, batch_size=BATCH)
    with autocast(precision, device):
        model = build_model(arch, 1, 10, [0.5], [0.25], width=width)
        bare = build_model(arch, 1, 10, [0.5], [0.25], width=width)
        fit(model, data, warm, gen=gen, device=device, log=lambda *_: None)
        bare_loop(bare, data, warm, 3, device, gen)
        fitted, plain = 0.0, 0.0
        for _ in range(rounds):  # alternate, keep the best of each: drifts in machine load hit both
            fitted = max(fitted, fit(model, data, cfg, gen=gen, device=device, log=lambda *_: None).images_per_s)
            plain = max(plain, bare_loop(bare, data, cfg, steps, device, gen))
        predict(model, data.x[:256], device=device)
        start = time.perf_counter()
        predict(model, data.x[:eval_images], device=device)
        evaluate = eval_images / (time.perf_counter() - start)
    return {"arch": arch, "width": width, "precision": precision, "fit": fitted, "bare": plain,
            "ratio": fitted / plain, "eval": evaluate}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default="cnn,preact_resnet18")
    ap.add_argument("--widths", default="16,32,64")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the study's jobs use 1)")
    ap.add_argument("--steps", type=int, default=30, help="timed training steps of 128 images")
    ap.add_argument("--eval-images", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=2, help="alternating fit / bare rounds (best kept)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    print(f"device {device}, {torch.get_num_threads()} thread(s), bf16 units: {fast_bf16(device)}, "
          f"torch {torch.__version__}")
    print("| model | width | precision | fit img/s | bare loop img/s | fit / bare | evaluate img/s |")
    print("|---|---|---|---|---|---|---|")
    for arch in args.archs.split(","):
        for width in map(int, args.widths.split(",")):
            for precision in args.precisions.split(","):
                r = measure(arch, width, precision, args.steps, device, args.eval_images, args.rounds)
                print(f"| {r['arch']} | {r['width']} | {r['precision']} | {r['fit']:.0f} | {r['bare']:.0f} | "
                      f"{r['ratio']:.2f} | {r['eval']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
