"""Benchmark: training and evaluation throughput (images/s) of the study's shared code.

    python benchmarks/throughput.py [--arch cnn] [--size 28] [--channels 1] [--threads 0]

Times `backdoor.training.fit` (the one training loop, with on-device augmentation) and
`backdoor.metrics.predict` on random uint8 data, so it needs no dataset.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's library, not an installed one
import argparse
import time

import torch

from backdoor.data.tensors import TensorSet
from backdoor.device import pick_device
from backdoor.metrics import predict
from backdoor.models import build_model
from backdoor.training import FitConfig, fit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="cnn")
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--images", type=int, default=12800)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    gen = torch.Generator().manual_seed(0)
    data = TensorSet(torch.randint(0, 256, (args.images, args.channels, args.size, args.size), generator=gen,
                                   dtype=torch.uint8), torch.randint(0, 10, (args.images,), generator=gen))
    model = build_model(args.arch, args.channels, 10, [0.5] * args.channels, [0.25] * args.channels)
    fit(model, data.subset(torch.arange(512)), FitConfig(lr=0.01, epochs=1), gen=gen, device=device,
        log=lambda *_: None)  # warm-up
    result = fit(model, data, FitConfig(lr=0.01, epochs=1, crop_pad=2, flip=True), gen=gen, device=device,
                 log=lambda *_: None)
    start = time.perf_counter()
    predict(model, data.x, device=device)
    eval_rate = len(data) / (time.perf_counter() - start)
    print(f"{args.arch} {args.channels}×{args.size}×{args.size} on {device} ({torch.get_num_threads()} threads): "
          f"train {result.images_per_s:.0f} images/s, evaluate {eval_rate:.0f} images/s")


if __name__ == "__main__":
    main()
