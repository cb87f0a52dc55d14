"""Defense types: what each reads from ``defenses.<id>`` (and ``defense_defaults``), declared once.

The registry line is the declaration: ``@defense(name, "module")``; ``purify`` in
``backdoor.defenses.<module>`` receives the resolved instance. Each module's docstring says why its
defaults are what they are.
"""

from __future__ import annotations

from .core import Spec, param, spec
from .fit import (BATCH_SIZE, CROP_PAD, EPOCHS, FLIP, ITERATIONS, LR, MIN_LR, MOMENTUM, SCHEDULE, WEIGHT_DECAY,
                  Augmentation, Fit, Optimiser, Schedule)

DEFENSES: dict[str, type[Defense]] = {}
THRESHOLDS = [round(0.05 * i, 2) for i in range(19)]  # 0, 0.05, …, 0.9


def defense(kind: str, impl: str):
    """Declare and register a defense type whose ``purify`` lives in module ``impl``."""

    def register(cls):
        cls = spec(cls)
        cls.kind, cls.impl = kind, impl
        DEFENSES[kind] = cls
        return cls

    return register


@spec
class DefenseDefaults(Spec):
    """What every defense shares (``defense_defaults:`` sets them for all ids at once)."""

    clean_sampling: str = param("random", "how the clean budget is drawn from the pool: random | stratified "
                                          "(equal images per class)", choices=("random", "stratified"))


@spec
class Defense(DefenseDefaults):
    """Base of the registered defense types."""

    impl = ""

    @classmethod
    def family(cls) -> str:
        return "defense"

    @classmethod
    def resolve(cls, params=None) -> "Defense":
        """``cls.of(params)``, or that of the declared subtype that ``params["type"]`` names (the
        ``<method>_released`` declarations share their corrected twin's module)."""
        kind = (params or {}).get("type", cls.kind) if params is not None else cls.kind
        sub = DEFENSES.get(kind)
        return (sub if sub is not None and issubclass(sub, cls) else cls).of(params)


def _fraction(default: float, doc: str):
    return param(default, doc, gt=0, lt=1)


@defense("none", "backdoor.defenses.none")
class NoDefense(Defense):
    """The undefended model (the reference row for DER)."""


@defense("ft", "backdoor.defenses.ft")
class FT(Defense, Fit):
    weight_decay: float = WEIGHT_DECAY(5.0e-4)


@defense("fip", "backdoor.defenses.fip")
class FIP(Defense, Fit):
    lr: float = LR(5.0e-3)
    momentum: float = MOMENTUM(0.95)
    schedule: str = SCHEDULE("constant")
    iterations: int | None = ITERATIONS(2000)
    eta_f: float = param(5.0e-2, "η_F, weight of the Fisher-trace (backdoor-suppressing) term; chosen on "
                                 "validation (docs/results/released.md)", ge=0)
    eta_r: float = param(1.0, "η_r, weight of the diagonal-Fisher retainer (0 disables it)", ge=0)
    trace_every: int = param(5, "compute the trace term on every k-th batch only", ge=1)
    probes: int = param(20, "Hutchinson probe vectors per trace evaluation", ge=1)
    probe: str = param("rademacher", "probe distribution", choices=("rademacher", "gaussian"))
    fisher_batch: int = param(100, "per-sample gradients computed this many at a time", ge=1)
    fisher: str = param("per_sample", "retainer's diagonal Fisher: per_sample (eval mode) | batch_mean (the "
                                      "release's disabled estimator: squared mean gradient per batch)",
                        choices=("per_sample", "batch_mean"))
    released: bool = param(False, "true: the released code's B×B log-likelihood, zero-mean projection, "
                                  "no retainer")


@defense("fip_released", "backdoor.defenses.fip")
class FIPReleased(FIP):
    """FIP as released (methods.md §2.3): the release's objective and augmentation (crop pad 4)."""

    crop_pad: int = CROP_PAD(4)
    eta_f: float = param(5.0e-3, "η_F, weight of the released projection term (the author's advice, FIP "
                                 "issue #2; the repository's command-line default is 0.5)", ge=0)
    released: bool = param(True, "true: the released code's B×B log-likelihood, zero-mean projection, "
                                 "no retainer")


@defense("fast_fip", "backdoor.defenses.fast_fip")
class FastFIP(FIP):
    lr: float = LR(2.5e-2)
    iterations: int | None = ITERATIONS(400)
    eta_f: float = param(5.0e-3, "η_F, weight of the Fisher-trace term (the author's advice, FIP issue #2; "
                                 "not re-chosen on validation)", ge=0)


@defense("nft", "backdoor.defenses.nft")
class NFT(Defense, Fit):
    lr: float = LR(5.0e-2)
    min_lr: float = MIN_LR(2.0e-2)
    momentum: float = MOMENTUM(0.95)
    iterations: int | None = ITERATIONS(1000)
    mixup_alpha: float = param(1.0, "MixUp λ ~ Beta(α, α); 0 disables MixUp", ge=0)
    l1_weight: float = param(1.0e-3, "L1 weight on 1 − mask, divided by the clean images per class", ge=0)
    floor_alpha: float = param(1.0, "mask floor of the l-th masked BN: floor_alpha · exp(−floor_beta · l); "
                                     "chosen on validation (the paper's 0.8: nft_released)", ge=0)
    floor_beta: float = param(0.5, "decay of the mask floor with depth", ge=0)
    floor_depth: str = param("index", "l = 1, 2, … (index) or mapped onto 1 … floor_ref_layers (relative)",
                             choices=("index", "relative"))
    floor_ref_layers: int = param(19, "masked BNs of the reference ResNet-18 (floor_depth: relative)", ge=1)
    mask_first_bn: bool = param(True, "false: leave the first BN in forward order unmasked")
    bn_stats: str = param("update", "train-mode BN (update) or eval-mode BN (frozen) while masks train",
                          choices=("update", "frozen"))
    lr_rounds: int = param(0, "0: the cosine moves every step; k: once per 1/k of the run (the "
                              "release's per-round scheduler)", ge=0)


@defense("nft_released", "backdoor.defenses.nft")
class NFTReleased(NFT):
    """NFT as released (``Remove_Backdoor.py``, methods.md §3.3)."""

    crop_pad: int = CROP_PAD(4)
    floor_alpha: float = param(0.8, "mask floor of the l-th masked BN: floor_alpha · exp(−floor_beta · l) "
                                    "(the paper's and release's 0.8)", ge=0)
    mask_first_bn: bool = param(False, "false: leave the first BN in forward order unmasked")
    lr_rounds: int = param(5, "0: the cosine moves every step; k: once per 1/k of the run (the "
                              "release's per-round scheduler)", ge=0)


@defense("fmp", "backdoor.defenses.fmp")
class FMP(Defense, Fit):
    min_lr: float = MIN_LR(1.0e-4)
    batch_size: int = BATCH_SIZE(256)
    iterations: int | None = ITERATIONS(240)
    sensitivity_batch: int = param(32, "clean images the FGSM sensitivity is measured on", ge=1)
    alpha: float = param(0.02, "FGSM step (0–1 pixel scale)", gt=0)
    eps: float = param(0.06, "FGSM ball radius (0–1 pixel scale)", gt=0)
    prune_ratio: float = param(1 / 64, "share of each conv's feature maps pruned", ge=0, le=1)
    rounding: str = param("ceil", "maps pruned per layer: ceil | floor | round of ratio × channels",
                          choices=("ceil", "floor", "round"))
    zero_bn_beta: bool = param(True, "zero β of a pruned map's BN too")
    hard_mask: bool = param(True, "keep pruned maps at zero while fine-tuning")
    chunk_images: int = param(1024, "images per sensitivity pass (memory)", ge=1)


@defense("fmp_released", "backdoor.defenses.fmp")
class FMPReleased(FMP):
    """FMP as released (``defense/fgsm-feature.py``, methods.md §4.3): ⌊C/64⌋ maps, γ only, no mask."""

    crop_pad: int = CROP_PAD(4)
    rounding: str = param("floor", "maps pruned per layer: ceil | floor | round of ratio × channels",
                          choices=("ceil", "floor", "round"))
    zero_bn_beta: bool = param(False, "zero β of a pruned map's BN too")
    hard_mask: bool = param(False, "keep pruned maps at zero while fine-tuning")


@defense("sibp", "backdoor.defenses.sibp")
class SIBP(Defense, Optimiser, Schedule, Augmentation):
    weight_decay: float = WEIGHT_DECAY(1.0e-4)
    batch_size: int = BATCH_SIZE(256)
    schedule: str = SCHEDULE("constant")
    u: float | list[float] = param(1.9, "BN outlier coefficient (a list: one per round)", ge=0)
    conv_coef: float | list[float] = param(0.5, "conv outlier coefficient (a list: one per round)", ge=0)
    epochs: int | list[int] = param(10, "fine-tuning epochs after pruning (a list: one per round)", ge=0)
    threshold_layers: str | list[str] = param("all", "layers the thresholds pool: all, or names / fnmatch "
                                                     "patterns")
    hard_mask: bool = param(True, "keep pruned channels at zero while fine-tuning")

    def check(self):
        problems = super().check()
        lengths = {k: len(v) for k in ("u", "conv_coef", "epochs") if isinstance(v := getattr(self, k), list)}
        if len(set(lengths.values())) > 1 or 0 in lengths.values():
            problems.append(("u", f"u, conv_coef and epochs give {lengths} values: give one value, or one "
                                  "per round (the same number of rounds) in each list"))
        if isinstance(self.threshold_layers, str) and self.threshold_layers not in ("all", "released"):
            problems.append(("threshold_layers", f"{self.threshold_layers!r}: write all, released, or a list "
                                                 "of layer names / patterns"))
        return problems


@defense("sibp_released", "backdoor.defenses.sibp")
class SIBPReleased(SIBP):
    """SIBP as released (``defense.py::SIBP`` + ``fine_training.py``, methods.md §5.3), CIFAR-10 badnet
    entry of ``SIBP_config.py`` (u 1.9, 7 epochs)."""

    crop_pad: int = CROP_PAD(4)
    epochs: int | list[int] = param(7, "fine-tuning epochs after pruning (a list: one per round)", ge=0)
    threshold_layers: str | list[str] = param("released", "layers the thresholds pool: all, released (the "
                                                          "VGG-16-BN names; T = 1 when none matches), or "
                                                          "names / fnmatch patterns")
    hard_mask: bool = param(False, "keep pruned channels at zero while fine-tuning")


@defense("fp", "backdoor.defenses.fp")
class FinePruning(Defense, Fit):
    weight_decay: float = WEIGHT_DECAY(5.0e-4)
    val_fraction: float = _fraction(0.2, "share of the clean budget held out for the stopping rule")
    acc_drop: float = param(0.1, "largest relative drop of validation accuracy while pruning", ge=0, le=1)
    step_ratio: float = param(0.01, "share of the channels pruned per step", gt=0, le=1)
    max_ratio: float = param(0.95, "largest share of the channels pruned", gt=0, le=1)
    rank_batch: int = param(256, "images per activation pass", ge=1)


@defense("nad", "backdoor.defenses.nad")
class NAD(Defense, Fit):
    weight_decay: float = WEIGHT_DECAY(5.0e-4)
    betas: list[float] = param([500.0, 1000.0, 1000.0], "attention-loss weights, shallow to deep", ge=0,
                               min_items=1)
    p: float = param(2.0, "attention map power", gt=0)
    layers: str | list[str] = param("auto", "distilled modules: auto (the last n_layers stages) or names")
    n_layers: int = param(3, "stages distilled when layers is auto", ge=1)
    teacher_iterations: int = param(250, "fine-tuning batches of the teacher", ge=1)

    def check(self):
        problems = super().check()
        if isinstance(self.layers, str) and self.layers != "auto":
            problems.append(("layers", f"{self.layers!r}: write auto, or a list of module names"))
        wanted = len(self.layers) if isinstance(self.layers, list) else self.n_layers
        if len(self.betas) < wanted:
            problems.append(("betas", f"{len(self.betas)} weights for {wanted} distilled layers"))
        return problems


@defense("anp", "backdoor.defenses.anp")
class ANP(Defense, Fit):
    lr: float = LR(0.2)
    schedule: str = SCHEDULE("constant")
    iterations: int | None = ITERATIONS(400)
    eps: float = param(0.4, "bound of the multiplicative neuron noise (0: no noise)", ge=0)
    anp_steps: int = param(1, "signed ascent steps of the noise per iteration", ge=1)
    alpha: float = param(0.2, "weight of the natural loss (1 − α: the perturbed one)", ge=0, le=1)
    thresholds: list[float] = param(THRESHOLDS, "pruning thresholds scanned on the validation split", ge=0,
                                    le=1, min_items=1)
    val_fraction: float = _fraction(0.2, "share of the clean budget held out to pick the threshold")
    max_acc_drop: float = param(0.05, "largest relative drop of validation accuracy", ge=0, le=1)
    threshold: float | None = param(None, "a fixed threshold instead of the validation scan (> 1: prune "
                                           "every channel)", ge=0)


@defense("rnp", "backdoor.defenses.rnp")
class RNP(Defense):
    lr: float = LR(0.2)
    momentum: float = MOMENTUM(0.9)
    batch_size: int = BATCH_SIZE(128)
    crop_pad: int = CROP_PAD(2)
    flip: bool = FLIP(True)
    unlearn_lr: float = param(0.01, "learning rate of the gradient-ascent unlearning", gt=0)
    unlearn_iterations: int = param(200, "most unlearning batches", ge=1)
    clean_threshold: float = param(0.2, "unlearning stops when the batch accuracy falls to this (< 0: "
                                        "never)", le=1)
    unlearn_weight_decay: float = param(5.0e-4, "weight decay while unlearning", ge=0)
    recover_iterations: int = param(100, "mask-learning batches", ge=1)
    recover_batch_stats: bool = param(True, "BN normalises with batch statistics while masks are learned")
    prune_by: str = param("number", "selection: number (of lowest-mask channels) | threshold",
                          choices=("number", "threshold"))
    max_prune: float = param(0.5, "largest share of channels pruned (prune_by: number)", gt=0, le=1)
    thresholds: list[float] = param(THRESHOLDS, "thresholds scanned (prune_by: threshold)", ge=0, le=1,
                                    min_items=1)
    val_fraction: float = _fraction(0.2, "share of the clean budget held out for the selection")
    max_acc_drop: float = param(0.05, "largest relative drop of validation accuracy", ge=0, le=1)
    threshold: float | None = param(None, "a fixed threshold instead of the validation selection", ge=0)


@defense("ftsam", "backdoor.defenses.ftsam")
class FTSAM(Defense, Fit):
    weight_decay: float = WEIGHT_DECAY(5.0e-4)
    rho: float = param(2.0, "radius of the (adaptive) SAM neighbourhood", gt=0)
    adaptive: bool = param(True, "scale the perturbation by |w| + eta (ASAM)")
    eta: float = param(0.01, "offset of the adaptive scale", ge=0)
    label_smoothing: float = param(0.1, "label smoothing of the cross-entropy", ge=0, lt=1)


@defense("fst", "backdoor.defenses.fst")
class FST(Defense, Fit):
    """Feature Shift Tuning: re-initialised head pushed away from the original one (the release's example)."""

    iterations: int | None = ITERATIONS(None)
    epochs: int | None = EPOCHS(10)
    alpha: float = param(0.1, "α, weight of the penalty ⟨w, w_ori⟩ between the head's weight and the "
                              "backdoored model's", ge=0)
    reinit: bool = param(True, "re-initialise the head before tuning (false: an ablation)")
    project: bool = param(True, "keep ‖w‖ = ‖w_ori‖ after every step (false: an ablation)")


@defense("ibau", "backdoor.defenses.ibau")
class IBAU(Defense):
    lr: float = LR(1.0e-4)
    batch_size: int = BATCH_SIZE(128)
    crop_pad: int = CROP_PAD(2)
    flip: bool = FLIP(True)
    rounds: int = param(5, "rounds of inner maximisation + outer steps", ge=0)
    K: int = param(5, "fixed-point iterations of the hypergradient", ge=0)
    steps_per_round: int = param(10, "outer Adam steps per round", ge=0)
    pert_norm: float = param(3.0, "L2 bound of the universal perturbation (0–1 pixel scale)", gt=0)
    pert_steps: int = param(10, "PGD steps of the inner maximisation", ge=1)
    inner_lr: float = param(0.1, "step of the inner fixed-point map", gt=0)
    reg: float = param(1.0e-3, "L2 penalty on the perturbation in the inner objective", ge=0)


@defense("clp", "backdoor.defenses.clp")
class CLP(Defense):
    u: float = param(3.0, "prune channels whose UCLC exceeds mean + u · std of their layer", ge=0)
    trace_size: int = param(32, "side of the synthetic image that traces conv → BN pairs", ge=1)


Defense.REGISTRY = DEFENSES
