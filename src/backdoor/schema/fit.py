"""The settings of the one training loop (``training.fit``), declared once and shared by the
attacker's training (``train:``) and every defense that fine-tunes; each type sets its own defaults."""

from __future__ import annotations

from .core import Spec, param, spec


def shared(doc: str, **limits):
    """A setting declared once and reused by several types, each with its own default."""
    return lambda default: param(default, doc, **limits)


LR = shared("learning rate", gt=0)
OPTIMIZER = shared("optimiser: sgd | adam", choices=("sgd", "adam"))
MOMENTUM = shared("SGD momentum", ge=0, le=1)
WEIGHT_DECAY = shared("L2 weight decay", ge=0)
BATCH_SIZE = shared("images per batch", ge=1)
SCHEDULE = shared("learning-rate schedule: cosine (to min_lr) | constant", choices=("cosine", "constant"))
MIN_LR = shared("final learning rate of the cosine schedule", ge=0)
ITERATIONS = shared("batches drawn with replacement (or give epochs instead)", ge=1)
EPOCHS = shared("shuffled passes over the data (or give iterations instead)", ge=1)
CROP_PAD = shared("random-crop padding in pixels (0: no crop)", ge=0)
FLIP = shared("random horizontal flips")


@spec
class Optimiser(Spec):
    lr: float = LR(0.01)
    optimizer: str = OPTIMIZER("sgd")
    momentum: float = MOMENTUM(0.9)
    weight_decay: float = WEIGHT_DECAY(0.0)
    batch_size: int = BATCH_SIZE(128)


@spec
class Schedule(Spec):
    schedule: str = SCHEDULE("cosine")
    min_lr: float = MIN_LR(0.0)


@spec
class Length(Spec):
    """How long: ``iterations`` or ``epochs``; giving one replaces the other's default."""

    ALTERNATIVES = (("epochs", "iterations"),)
    iterations: int | None = ITERATIONS(500)
    epochs: int | None = EPOCHS(None)

    def check(self):
        problems = super().check()
        if (self.epochs is None) == (self.iterations is None):
            problems.append(("iterations", "give exactly one of epochs or iterations"))
        return problems


@spec
class Augmentation(Spec):
    crop_pad: int = CROP_PAD(2)
    flip: bool = FLIP(True)


@spec
class Fit(Optimiser, Schedule, Length, Augmentation):
    """Everything ``training.fit`` reads (``FitConfig``)."""
