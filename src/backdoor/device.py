"""The device is chosen once: CUDA if present (or asked for), else CPU."""

from __future__ import annotations

import torch


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device: {requested!r} in params.yaml, but no CUDA device is visible; "
                           "use 'auto' or 'cpu'.")
    return torch.device(requested)
