"""Architecture registry and checkpoints.

A checkpoint stores the architecture name and constructor arguments with the weights, so loading
the wrong architecture fails with a message instead of a shape error deep inside torch.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from torch import nn

from ..io import load_tensors, save_tensors
from ..schema.models import MODELS
from .base import Classifier


def architecture(arch: str) -> type[nn.Module]:
    """The module class of a declared architecture (``backdoor.schema.models``)."""
    if arch not in MODELS:
        raise KeyError(f"unknown architecture {arch!r} (models.<id>.type in params.yaml); "
                       f"known: {', '.join(sorted(MODELS))}")
    module, name = MODELS[arch].impl.split(":")
    return getattr(importlib.import_module(module), name)



def build_model(arch: str, in_channels: int, num_classes: int, mean, std, **arch_params) -> Classifier:
    """``arch`` with ``arch_params`` (validated, completed with the declared defaults)."""
    arch_params = MODELS[arch].of(arch_params).arch_params() if arch in MODELS else arch_params
    body = architecture(arch)(in_channels=in_channels, num_classes=num_classes, **arch_params)
    model = Classifier(body, mean, std)
    model.spec = dict(arch=arch, in_channels=in_channels, num_classes=num_classes,
                      mean=list(mean), std=list(std), arch_params=dict(arch_params))
    return model


def save_checkpoint(model: Classifier, path: str | Path, **extra) -> None:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_tensors({"spec": model.spec, "state_dict": state, **extra}, path)


def load_checkpoint(path: str | Path, expect_arch: str | None = None) -> Classifier:
    ckpt = load_tensors(path)
    if not isinstance(ckpt, dict) or "spec" not in ckpt:
        raise ValueError(f"{path} is not a checkpoint written by this study (no architecture spec)")
    spec = ckpt["spec"]
    if expect_arch is not None and spec["arch"] != expect_arch:
        raise ValueError(f"{path} holds a {spec['arch']!r} model, but {expect_arch!r} was asked for: "
                         "check models.<id>.type in params.yaml or retrain that model.")
    return from_state(spec, ckpt["state_dict"])


def from_state(spec: dict, state_dict: dict) -> Classifier:
    """The model a checkpoint's ``spec`` describes, holding ``state_dict``."""
    model = build_model(spec["arch"], spec["in_channels"], spec["num_classes"], spec["mean"],
                        spec["std"], **spec["arch_params"])
    model.load_state_dict(state_dict)
    return model


def copy_model(model: Classifier) -> Classifier:
    clone = build_model(**{k: v for k, v in model.spec.items() if k != "arch_params"},
                        **model.spec["arch_params"])
    clone.load_state_dict(model.state_dict())
    return clone.to(next(model.parameters()).device)
