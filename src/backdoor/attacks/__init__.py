"""Attack registry: the ``type`` names used in params.yaml → one module each."""

from __future__ import annotations

from .base import Attack, AttackContext, PoisonedSet

ATTACKS: dict[str, str] = {
    "benign": "backdoor.attacks.benign:Benign",
    "badnets": "backdoor.attacks.badnets:BadNets",
    "blend": "backdoor.attacks.blend:Blend",
    "trojan": "backdoor.attacks.trojan:Trojan",
    "sig": "backdoor.attacks.sig:SIG",
    "wanet": "backdoor.attacks.wanet:WaNet",
    "lc": "backdoor.attacks.lc:LabelConsistent",
    "input_aware": "backdoor.attacks.input_aware:InputAware",
}


def attack_class(kind: str) -> type[Attack]:
    if kind not in ATTACKS:
        raise KeyError(f"unknown attack type {kind!r} (attacks.<id>.type in params.yaml); "
                       f"known: {', '.join(sorted(ATTACKS))}")
    import importlib

    module, name = ATTACKS[kind].split(":")
    return getattr(importlib.import_module(module), name)


def build_attack(kind: str, params: dict, ctx: AttackContext) -> Attack:
    return attack_class(kind)(params, ctx)


__all__ = ["ATTACKS", "Attack", "AttackContext", "PoisonedSet", "attack_class", "build_attack"]
