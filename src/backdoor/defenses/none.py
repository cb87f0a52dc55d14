"""``none``: no defense; the backdoored model is evaluated as it is (the reference row for DER)."""

from __future__ import annotations


def purify(model, clean, params, gen, device):
    return model, {}
