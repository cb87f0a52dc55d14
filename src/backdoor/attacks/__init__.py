"""Attack registry: the ``type`` names used in params.yaml → one module each.

The names, the implementing classes and every setting are declared in ``backdoor.schema.attacks``
(torch-free, so the Snakefile can check params.yaml without importing this package).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

from ..schema.attacks import ATTACKS as DECLARED
from .base import Attack, AttackContext, PoisonedSet

ATTACKS: dict[str, str] = {kind: spec.impl for kind, spec in DECLARED.items()}


def attack_class(kind: str) -> type[Attack]:
    if kind not in DECLARED:
        raise KeyError(f"unknown attack type {kind!r} (attacks.<id>.type in params.yaml); "
                       f"known: {', '.join(sorted(DECLARED))}")
    module, name = DECLARED[kind].impl.split(":")
    return getattr(importlib.import_module(module), name)


def build_attack(kind: str, params: Mapping, ctx: AttackContext) -> Attack:
    """The attack of type ``kind`` with ``params`` (its resolved declaration, or a partial mapping that
    is validated and completed with the declared defaults)."""
    return attack_class(kind)(DECLARED[kind].of(params), ctx)


__all__ = ["ATTACKS", "Attack", "AttackContext", "PoisonedSet", "attack_class", "build_attack"]
