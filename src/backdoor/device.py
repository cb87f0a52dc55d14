"""The device and the numeric precision, each chosen once per job.

``precision: auto`` means bf16 autocast where the hardware computes bf16 natively (a CPU with AMX or
AVX512-BF16, a CUDA device with bf16 support), else fp32. Elsewhere bf16 is emulated and slower
than fp32: on an Ice Lake Xeon without those units a bf16 matmul ran 4× slower than fp32 and a
training step 2× slower, so ``auto`` never picks it there. Autocast keeps master weights and
optimiser state in fp32; only the operations on autocast's lists (convolutions, matmuls) run in bf16.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16")


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device: {requested!r} in params.yaml, but no CUDA device is visible; "
                           "use 'auto' or 'cpu'.")
    return torch.device(requested)


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``tensor`` on ``device``; to a GPU from page-locked memory, asynchronously (the copy overlaps
    the queued kernels). Callers copy whole datasets once where they fit, not batch by batch."""
    device = torch.device(device)
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def fast_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` computes bf16 natively (so autocast to bf16 is a speed-up, not a slow-down)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(cpu_flags() & {"amx_bf16", "avx512_bf16"})
    return False


def resolve_precision(requested: str, device: torch.device | str) -> str:
    """``auto`` → ``bf16`` where the device has fast bf16 units, else ``fp32``; others unchanged."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision: {requested!r} in params.yaml; use one of {', '.join(PRECISIONS)}")
    if requested == "auto":
        return "bf16" if fast_bf16(device) else "fp32"
    return requested


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """The context a job's computation runs in: bf16 autocast, or nothing for fp32.

    Without autocast's weight cache: the cache keeps the bf16 copy of each weight until the outermost
    context exits, and a whole training loop runs inside this one, so every forward would see the
    initial weights (the model would never learn)."""
    device = torch.device(device)
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
    if precision == "fp32":
        return contextlib.nullcontext()
    raise ValueError(f"precision {precision!r}: resolve 'auto' first (resolve_precision)")


def fp32(device: torch.device | str) -> contextlib.AbstractContextManager:
    """Turn autocast off for a part whose math needs fp32 (exact traces, SVDs, BN folding)."""
    return torch.autocast(torch.device(device).type, enabled=False)


NHWC_MIN_CHANNELS = 16


def memory_format(model: torch.nn.Module) -> torch.memory_format:
    """channels_last (NHWC: ≈ 1.4× faster convolutions on the CPU) unless a convolution of ``model``
    has fewer than 16 output channels: torch 2.14.1's CPU NHWC convolutions corrupt the heap for
    narrow ones on some CPUs (seen: an AMD EPYC Zen 2 at widths 4–7 on 12×12 inputs, an Ice Lake Xeon
    at width 8 on 64×64), and the study's models are all wider. Same numbers either way."""
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    if convs and min(c.out_channels for c in convs) < NHWC_MIN_CHANNELS:
        return torch.contiguous_format
    return torch.channels_last
