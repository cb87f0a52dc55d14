"""Defense registry: the ``type`` names used in params.yaml → one module each, exposing ``purify``.

The names, modules and every setting are declared in ``backdoor.schema.defenses`` (torch-free);
``purify`` receives the resolved declaration (or a partial mapping, which it resolves itself).
"""

from __future__ import annotations

import importlib

from ..schema.defenses import DEFENSES as DECLARED
from .base import Defense, split_validation

DEFENSES: dict[str, str] = {kind: spec.impl for kind, spec in DECLARED.items()}


def get_defense(kind: str) -> Defense:
    if kind not in DEFENSES:
        raise KeyError(f"unknown defense type {kind!r} (defenses.<id>.type in params.yaml); "
                       f"known: {', '.join(sorted(DEFENSES))}")
    return importlib.import_module(DEFENSES[kind]).purify


__all__ = ["DEFENSES", "Defense", "get_defense", "split_validation"]
