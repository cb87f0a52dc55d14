"""``none``: no defense; the backdoored model is evaluated as it is (the reference row for DER)."""

from __future__ import annotations


from ..schema.defenses import NoDefense


def purify(model, clean, params, gen, device):
    NoDefense.of(params)  # nothing to read, but a misspelt key is still an error
    return model, {}
