"""Model types: what each architecture reads from ``models.<id>``, declared once."""

from __future__ import annotations

from .core import Spec, param, spec

MODELS: dict[str, type[Model]] = {}


def model(kind: str, impl: str):
    """Declare and register an architecture implemented by ``impl`` ("module:Class")."""

    def register(cls):
        cls = spec(cls)
        cls.kind, cls.impl = kind, impl
        MODELS[kind] = cls
        return cls

    return register


@spec
class Model(Spec):
    impl = ""

    @classmethod
    def family(cls) -> str:
        return "model"

    def arch_params(self) -> dict:
        """The constructor's keyword arguments."""
        return {k: v for k, v in self.to_dict().items() if k != "type"}


@model("cnn", "backdoor.models.cnn:CompactCNN")
class CompactCNN(Model):
    width: int = param(16, "channels of the first conv (then 2× and 4×)", ge=1)


@model("preact_resnet18", "backdoor.models.preact_resnet:PreActResNet18")
class PreActResNet18(Model):
    width: int = param(64, "channels of the stem and first stage (then 2×, 4×, 8×)", ge=1)


Model.REGISTRY = MODELS
