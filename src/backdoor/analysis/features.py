"""Penultimate features: the input of a classifier's last Linear layer, for the t-SNE figures.

``extract`` stores them for a fixed, seeded subsample of the clean test set and of the triggered
test set, so the figure redraws from a small tensor file without the model.
"""

from __future__ import annotations

import zlib

import torch
from torch import nn

from ..augment import to_float
from ..device import pick_device
from ..io import load_tensors, save_tensors
from ..models import load_checkpoint


def last_linear(model: nn.Module) -> nn.Linear:
    """The classifier's head: the last ``nn.Linear`` in module order (both architectures end in one)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no Linear layer: no penultimate features")
    return linears[-1]


@torch.inference_mode()
def penultimate(model: nn.Module, images: torch.Tensor, batch_size: int = 512,
                device: torch.device | str | None = None) -> torch.Tensor:
    """Float32 (N, D) inputs of the last Linear layer for uint8 images, in eval mode."""
    device = device or next(model.parameters()).device
    captured: list[torch.Tensor] = []
    hook = last_linear(model).register_forward_pre_hook(lambda _m, args: captured.append(args[0].float().cpu()))
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(images), batch_size):
            model(to_float(images[i:i + batch_size].to(device)))
    finally:
        hook.remove()
        model.train(was_training)
    return torch.cat(captured) if captured else torch.empty(0)


def subsample(n_total: int, n: int, seed: int, stream: str) -> torch.Tensor:
    """Sorted indices of min(n, n_total) items, the same for every model of a dataset and attack."""
    gen = torch.Generator().manual_seed(zlib.crc32(repr(("features", stream, seed)).encode()))
    return torch.randperm(n_total, generator=gen)[:min(n, n_total)].sort().values


def extract(model_path: str, prepared_path: str, poisoned_path: str, out_path: str, *, clean_images: int,
            triggered_images: int, seed: int, device: str = "cpu") -> dict:
    """Features of ``clean_images`` clean and ``triggered_images`` triggered test images (float16),
    with labels and the model's predictions; writes them to ``out_path`` and returns them."""
    prepared, poisoned = load_tensors(prepared_path), load_tensors(poisoned_path)
    dev = pick_device(device)
    model = load_checkpoint(model_path).to(dev)
    ci = subsample(len(prepared["test_y"]), clean_images, seed, "clean")
    ti = subsample(len(poisoned["test_y_true"]), triggered_images, seed, "triggered")
    head = last_linear(model)
    out = {}
    for name, x in (("clean", prepared["test_x"][ci]), ("triggered", poisoned["test_x"][ti])):
        feats = penultimate(model, x, device=dev)
        with torch.inference_mode():
            out[f"{name}_pred"] = head(feats.to(dev)).argmax(1).cpu()
        out[name] = feats.half()
    out.update(clean_idx=ci, clean_y=prepared["test_y"][ci], triggered_idx=ti,
               triggered_y=poisoned["test_y_true"][ti], triggered_target=poisoned["test_y_target"][ti],
               num_classes=int(head.out_features))
    save_tensors(out, out_path)
    return out


def embed(features: dict, seed: int, perplexity: float = 30.0) -> dict:
    """One seeded 2-D t-SNE of a model's clean and triggered features together (scikit-learn)."""
    import numpy as np
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    clean, trig = features["clean"].float().numpy(), features["triggered"].float().numpy()
    x = np.concatenate([clean, trig]).astype(np.float64)
    if x.shape[1] > 50:  # the usual PCA step before t-SNE on wide features (ResNet: 512)
        x = PCA(50, random_state=seed).fit_transform(x)
    y = TSNE(2, perplexity=min(perplexity, (len(x) - 1) / 3), init="pca", random_state=seed).fit_transform(x)
    target = features["triggered_target"]
    asr = 100.0 * (features["triggered_pred"] == target).float().mean().item() if len(target) else float("nan")
    return {"clean": y[:len(clean)], "triggered": y[len(clean):], "clean_y": features["clean_y"].numpy(), "asr": asr}
