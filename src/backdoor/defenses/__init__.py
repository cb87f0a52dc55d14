"""Defense registry: the ``type`` names used in params.yaml → one module each, exposing ``purify``."""

from __future__ import annotations

import importlib

from .base import Defense, split_validation

DEFENSES: dict[str, str] = {
    "none": "backdoor.defenses.none",
    "ft": "backdoor.defenses.ft",
    "fip": "backdoor.defenses.fip",
    "fast_fip": "backdoor.defenses.fast_fip",
    "nft": "backdoor.defenses.nft",
    "fmp": "backdoor.defenses.fmp",
    "sibp": "backdoor.defenses.sibp",
    "ftsam": "backdoor.defenses.ftsam",
    "fp": "backdoor.defenses.fp",
    "nad": "backdoor.defenses.nad",
    "clp": "backdoor.defenses.clp",
    "anp": "backdoor.defenses.anp",
    "ibau": "backdoor.defenses.ibau",
    "rnp": "backdoor.defenses.rnp",
}


def get_defense(kind: str) -> Defense:
    if kind not in DEFENSES:
        raise KeyError(f"unknown defense type {kind!r} (defenses.<id>.type in params.yaml); "
                       f"known: {', '.join(sorted(DEFENSES))}")
    return importlib.import_module(DEFENSES[kind]).purify


__all__ = ["DEFENSES", "Defense", "get_defense", "split_validation"]
