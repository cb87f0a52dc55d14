"""Attack types: what each reads from ``attacks.<id>`` (and ``attack_defaults``), declared once.

The registry line is the declaration: ``@attack(name, "module:Class", ...)``; the class in
``backdoor.attacks.<module>`` receives the resolved instance. Pixel values are on the 0–255 scale.
"""

from __future__ import annotations

from pathlib import Path

from .core import Spec, param, spec

ATTACKS: dict[str, type[Attack]] = {}


def _name(data) -> str:
    return getattr(data, "name", "this dataset")


def attack(kind: str, impl: str, *, crafted: bool = False, clean_label: bool = False):
    """Declare and register an attack type implemented by ``impl`` ("module:Class")."""

    def register(cls):
        cls = spec(cls)
        cls.kind, cls.impl, cls.crafted, cls.clean_label = kind, impl, crafted, clean_label
        ATTACKS[kind] = cls
        return cls

    return register


@spec
class AttackDefaults(Spec):
    """What every attack shares (``attack_defaults:`` sets them for all ids at once)."""

    target: int = param(0, "the target class", ge=0)
    poison_rate: float = param(0.1, "share of the attacker's training set that is poisoned", gt=0, lt=1)
    all_to_all: bool = param(False, "true: y → (y + 1) mod K instead of the target")
    seed: int = param(0, "which images are poisoned")


@spec
class Attack(AttackDefaults):
    """Base of the registered attack types."""

    impl = ""
    crafted = False  # optimised against the clean surrogate in its own DAG step
    clean_label = False  # poisons target-class images only and keeps their labels

    @classmethod
    def family(cls) -> str:
        return "attack"

    def check(self):
        problems = super().check()
        if self.clean_label and self.all_to_all:
            problems.append(("all_to_all", f"{self.kind} is a clean-label attack (it poisons target-class "
                                           "images only): it has no all-to-all variant"))
        return problems

    def check_data(self, data):
        problems = super().check_data(data)
        if not self.all_to_all and self.target >= data.num_classes:
            problems.append(("target", f"{self.target} is not a class of {_name(data)} "
                                       f"(0..{data.num_classes - 1})"))
        return problems


@attack("benign", "backdoor.attacks.benign:Benign")
class Benign(Attack):
    """Poisons nothing; ASR is measured with the probe attack's trigger."""

    probe: str = param("badnets", "attack type whose trigger measures the clean model's ASR")

    def check(self):
        problems = super().check()
        if self.probe not in ATTACKS or self.probe == "benign":
            problems.append(("probe", f"{self.probe!r} is not an attack type with a trigger; known: "
                                      f"{', '.join(k for k in ATTACKS if k != 'benign')}"))
        return problems


@attack("badnets", "backdoor.attacks.badnets:BadNets")
class BadNets(Attack):
    patch_size: int = param(3, "side of the square patch in the bottom-right corner, in px", ge=1)
    value: int = param(255, "pixel value of the patch", ge=0, le=255)
    position: str = param("corner", "corner (bottom-right, BackdoorBench) or center (over the object)",
                          choices=("corner", "center"))

    def check_data(self, data):
        problems = super().check_data(data)
        if self.patch_size > data.size:
            problems.append(("patch_size", f"{self.patch_size} does not fit {_name(data)}'s "
                                           f"{data.size}×{data.size} images"))
        return problems


@attack("blend", "backdoor.attacks.blend:Blend")
class Blend(Attack):
    alpha: float = param(0.2, "blend weight of the pattern", gt=0, le=1)
    pattern_seed: int = param(0, "seed of the uniform-noise pattern")
    image: str | None = param(None, "a picture to blend instead of the noise pattern (path)")

    def check(self):
        problems = super().check()
        if self.image and not Path(self.image).is_file():
            problems.append(("image", f"{self.image!r}: no such file; give a path to an image or null for "
                                      "the seeded noise pattern"))
        return problems


@attack("trojan", "backdoor.attacks.trojan:Trojan", crafted=True)
class Trojan(Attack):
    mask_size: int | None = param(None, "side of the square trigger in px; null: round(W/4)", ge=1)
    margin: int | None = param(None, "distance from the bottom-right corner in px; null: round(3W/32)", ge=0)
    num_neurons: int = param(2, "penultimate neurons the trigger drives", ge=1)
    target_value: float = param(100.0, "activation the neurons are driven towards")
    iterations: int = param(500, "sign-gradient steps of the crafting", ge=1)
    step_size: float = param(1.0e-2, "step of the crafting, on the 0–1 pixel scale", gt=0)
    craft_images: int = param(128, "clean images the trigger is optimised on", ge=1)

    def mask_and_margin(self, size: int) -> tuple[int, int]:
        mask = self.mask_size or round(size / 4)
        return mask, (self.margin if self.margin is not None else round(3 * size / 32))

    def check_data(self, data):
        problems = super().check_data(data)
        mask, margin = self.mask_and_margin(data.size)
        if mask + margin > data.size:
            problems.append(("mask_size", f"{mask} px plus margin {margin} px do not fit {_name(data)}'s "
                                          f"{data.size}×{data.size} images"))
        return problems


@attack("sig", "backdoor.attacks.sig:SIG", clean_label=True)
class SIG(Attack):
    delta: float = param(40.0, "amplitude of the sinusoid (0–255 scale)", gt=0, le=255)
    frequency: float = param(6.0, "periods across the image width", gt=0)


@attack("wanet", "backdoor.attacks.wanet:WaNet")
class WaNet(Attack):
    k: int = param(4, "control points per side of the warp field", ge=2)
    s: float = param(0.5, "warp strength", gt=0)
    grid_rescale: float = param(1.0, "scale of the sampling grid", gt=0)
    cross_ratio: float = param(2.0, "noise-mode samples per poisoned sample", ge=0)
    grid_seed: int = param(0, "seed of the warp field")

    def check_data(self, data):
        problems = super().check_data(data)
        if self.k > data.size:
            problems.append(("k", f"{self.k} control points per side exceed {_name(data)}'s {data.size} px"))
        return problems


@attack("lc", "backdoor.attacks.lc:LabelConsistent", crafted=True, clean_label=True)
class LabelConsistent(Attack):
    eps: float = param(16.0, "L∞ bound of the PGD perturbation (0–255 scale)", gt=0, le=255)
    step_size: float = param(4.0, "PGD step (0–255 scale)", gt=0)
    steps: int = param(10, "PGD steps", ge=1)
    patch_size: int | None = param(None, "side of each corner checkerboard in px; null: max(3, round(3W/32))",
                                   ge=1)

    def patch(self, size: int) -> int:
        return self.patch_size or max(3, round(3 * size / 32))

    def check_data(self, data):
        problems = super().check_data(data)
        if self.patch(data.size) > data.size // 2:
            problems.append(("patch_size", f"{self.patch(data.size)} px corners overlap on {_name(data)}'s "
                                           f"{data.size}×{data.size} images (at most {data.size // 2})"))
        return problems


@attack("input_aware", "backdoor.attacks.input_aware:InputAware", crafted=True)
class InputAware(Attack):
    mask_density: float = param(0.032, "target mean of the generated masks", gt=0, lt=1)
    lambda_div: float = param(1.0, "weight of the diversity loss", ge=0)
    lambda_norm: float = param(100.0, "weight of the mask-norm loss", ge=0)
    cross_ratio: float = param(1.0, "cross samples per poisoned sample", ge=0)
    mask_epochs: int = param(2, "epochs of mask-generator pre-training", ge=0)
    epochs: int = param(5, "epochs of joint classifier + pattern-generator training", ge=0)
    lr_c: float = param(0.01, "learning rate of the classifier", gt=0)
    lr_g: float = param(0.01, "learning rate of the generators", gt=0)
    batch_size: int = param(128, "images per crafting batch", ge=2)
    crop_pad: int = param(2, "random-crop padding in pixels", ge=0)
    flip: bool = param(True, "random horizontal flips")

    def check(self):
        problems = super().check()
        if self.poison_rate * (1 + self.cross_ratio) > 1:
            problems.append(("cross_ratio", f"poison_rate × (1 + cross_ratio) = {self.poison_rate} × "
                                            f"(1 + {self.cross_ratio}) exceeds 1"))
        return problems


Attack.REGISTRY = ATTACKS
