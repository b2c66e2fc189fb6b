"""What a training run is: the paper's recipe (``Recipe``, ``lr_at``) and the run's settings
(``TrainConfig``, one field per ``python -m ablate.train`` flag, checked by ``validate``)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace

from ablate import models
from ablate._infra.errors import UsageError

__all__ = [
    "Recipe", "SCHEDULES", "TrainConfig", "lr_at", "make_recipe", "milestone_epochs",
    "paper_recipe", "parse_stochastic_depth", "vit_recipe",
]

SCHEDULES = ("he", "huang", "cosine")
WARMUP_ITERS, WARMUP_LR = 400, 0.01


@dataclass(frozen=True)
class Recipe:
    """The optimisation recipe. Defaults: He et al. 2015, CIFAR-10 (Sec. 4.2).

    ``milestones`` are fractions of the run at whose epoch the rate is multiplied by ``gamma``
    (0.5 and 0.75: 32k and 48k of 64k iterations; epochs 250 and 375 of Huang et al.'s 500).
    """

    schedule: str = "he"  # "he" | "huang" | "cosine"
    epochs: int = 164
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1
    warmup_iters: int = 0  # iterations at warmup_lr before the schedule starts (He: 400)
    warmup_lr: float = WARMUP_LR
    crop_padding: int = 4
    flip: bool = True
    optimizer: str = "sgd"  # "sgd" | "adamw" (momentum and nesterov are SGD's)
    label_smoothing: float = 0.0  # of the training loss (the ViT recipe: 0.1)
    # The ViT recipe's (training.augment); the defaults are off, as old states' recipes read
    warmup_linear: bool = False  # ramp to lr over warmup_iters, then cosine over the rest
    randaug_ops: int = 0  # RandAugment layers N per image (0: off)
    randaug_magnitude: int = 9  # RandAugment's M, of torchvision's 31 bins (0-30)
    mixup_alpha: float = 0.0  # Mixup's Beta(alpha, alpha) (0: off)
    cutmix_alpha: float = 0.0  # CutMix's Beta(alpha, alpha) (0: off)
    mix_prob: float = 1.0  # share of batches mixed when Mixup or CutMix is on

    @property
    def mixes(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0


def paper_recipe(model: str, schedule: str = "he") -> Recipe:
    """What the paper behind ``schedule`` used for ``model`` (cosine: He's, with a cosine decay)."""
    if schedule == "huang":  # Huang et al. 2016: 500 epochs, Nesterov, no warm-up
        return Recipe(schedule="huang", epochs=500, nesterov=True)
    if schedule not in SCHEDULES:
        raise UsageError(f"unknown --schedule {schedule!r}: use one of {', '.join(SCHEDULES)}")
    if models.is_transformer_arch(model):
        return vit_recipe()
    return Recipe(schedule=schedule, warmup_iters=WARMUP_ITERS if _needs_warmup(model) else 0)


def vit_recipe() -> Recipe:
    """Lee et al. 2021 (*Vision Transformer for Small-Size Datasets*, arXiv:2112.13492; their
    code's defaults, aanna0701/SPT_LSA_ViT ``main.py``): 100 epochs of AdamW (lr 1e-3, weight
    decay 0.05, batch 128), 10 epochs of linear warm-up then cosine, label smoothing 0.1, Mixup
    and CutMix (alpha 1, half the batches, one of the two each), AutoAugment, repeated
    augmentation x3, random erasing 0.25, stochastic depth 0.1. Their 9-layer, width-192 ViT
    (patch 4) reaches 93.58% on CIFAR-10. Here: RandAugment N=2, M=9 (torchvision's) stands in
    for AutoAugment; no repeated augmentation, random erasing or stochastic depth (the card
    lists these)."""
    return Recipe(schedule="cosine", epochs=100, lr=1e-3, weight_decay=5e-2, optimizer="adamw",
                  warmup_iters=10 * (50_000 // 128), warmup_linear=True, label_smoothing=0.1,
                  randaug_ops=2, randaug_magnitude=9, mixup_alpha=1.0, cutmix_alpha=1.0,
                  mix_prob=0.5)


def _needs_warmup(model: str) -> bool:
    """He et al.: ResNet-110 and deeper warm up at 0.01; so do the plain nets here."""
    depth = int(re.sub(r"\D", "", model) or 0)
    return models.arch_family(model) == "plain" or depth >= 110


def make_recipe(
    model: str,
    schedule: str = "he",
    *,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    warmup: str = "auto",
) -> Recipe:
    """The paper's recipe for ``schedule``, with the given overrides (None keeps the paper's)."""
    r = paper_recipe(model, schedule)
    if warmup not in ("auto", "on", "off"):
        raise UsageError(f"unknown --warmup {warmup!r}: use auto, on or off")
    if warmup != "auto":
        r = replace(r, warmup_iters=WARMUP_ITERS if warmup == "on" else 0)
    for flag, value in (("--epochs", epochs), ("--batch-size", batch_size), ("--lr", lr)):
        if value is not None and not 0 < value < math.inf:
            raise UsageError(f"{flag} must be a positive finite number, got {value}")
    return replace(
        r,
        epochs=r.epochs if epochs is None else int(epochs),
        batch_size=r.batch_size if batch_size is None else int(batch_size),
        lr=r.lr if lr is None else float(lr),
    )


def milestone_epochs(recipe: Recipe) -> list[int]:
    """The epochs (0-based, the first epoch at the lower rate) where the rate drops."""
    return [int(f * recipe.epochs + 0.5) for f in recipe.milestones]


def lr_at(recipe: Recipe, step: int, steps_per_epoch: int) -> float:
    """The learning rate of iteration ``step`` (0-based): a pure function, no optimiser state.

    Warm-up holds ``warmup_lr`` for the first ``warmup_iters`` iterations and then hands back to
    the schedule (He et al. return to 0.1; akamaster's reimplementation stays at 0.01); with
    ``warmup_linear`` it ramps linearly to ``lr`` instead and the cosine spans the rest.
    """
    if step < recipe.warmup_iters:
        if recipe.warmup_linear:  # Lee et al. 2021 (timm's scheduler): a linear ramp
            return recipe.lr * (step + 1) / recipe.warmup_iters
        return recipe.warmup_lr
    if recipe.schedule == "cosine":
        start = recipe.warmup_iters if recipe.warmup_linear else 0
        total = max(recipe.epochs * steps_per_epoch - start, 1)
        return 0.5 * recipe.lr * (1.0 + math.cos(math.pi * min(step - start, total) / total))
    drops = sum(step >= m * steps_per_epoch for m in milestone_epochs(recipe))
    return recipe.lr * recipe.gamma**drops


def parse_stochastic_depth(spec: str | float | None) -> float | None:
    """``"linear:P"`` (Huang et al.'s linear decay to p_L = P) -> P; None/"off"/"none" -> None."""
    if spec is None or str(spec).lower() in ("off", "none", ""):
        return None
    m = re.fullmatch(r"linear:([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)", str(spec).strip())
    p = float(m.group(1)) if m else None
    if p is None or not 0.0 < p <= 1.0:
        raise UsageError(
            f"bad --stochastic-depth {spec!r}: use linear:P with 0 < P <= 1, e.g. linear:0.5 "
            "(Huang et al.)"
        )
    return p


@dataclass
class TrainConfig:
    """Everything ``train`` needs; the CLI flags map one to one onto these fields."""

    model: str
    data: str | None = None  # path to a data set, or "cifar10"/"cifar100" (torchvision)
    epochs: int | None = None  # None: the schedule's (164 he/cosine, 500 huang)
    batch_size: int = 128  # global batch, split across ranks
    lr: float | None = None  # None: the recipe's (0.1 SGD; 1e-3 for vit_cifar's AdamW)
    schedule: str = "he"
    warmup: str = "auto"  # auto: ResNet-110+ and plain nets, not the huang schedule
    stochastic_depth: str | None = None  # "linear:0.5"
    sd_mode: str = "batch"
    seed: int = 0
    out: str | None = None  # default runs/NAME
    name: str | None = None  # default <model> or <model>-sd
    resume: bool = False
    change_device: bool = False  # resume a last.pt from another kind of device (data reseeded)
    device: str = "auto"
    compile: bool = False
    channels_last: bool | None = None  # None: on, off for ViTs (training.precision.choose)
    amp: str | None = None  # "bf16" | "off"; None: by device and CPU feature (precision.choose)
    val_split: int = 0  # hold out this many train images (the papers: 5000)
    limit_train: int | None = None
    limit_test: int | None = None
    download: bool = False
    cache_dir: str | None = None
    progress: bool = True
    eval_batch_size: int = 1000
    lesion_at: str | None = None  # epochs of the lesion pass (training.lesion.parse_lesion_at)
    lesion_images: int = 1000  # its class-balanced evaluation set, from the test split
    stop_after: int | None = field(default=None, repr=False)  # test hook: quit after this epoch

    def run_name(self) -> str:
        """``--name``, else MODEL or MODEL-sd."""
        if self.name:
            if not re.fullmatch(r"[A-Za-z0-9._-]+", self.name):
                raise UsageError(f"--name {self.name!r} must be letters, digits, '.', '_' or '-'")
            return self.name
        return f"{self.model}-sd" if self.survival() is not None else self.model

    def survival(self) -> float | None:
        """p_L of the linear stochastic-depth rule, or None."""
        return parse_stochastic_depth(self.stochastic_depth)

    def recipe(self) -> Recipe:
        return make_recipe(self.model, self.schedule, epochs=self.epochs,
                           batch_size=self.batch_size, lr=self.lr, warmup=self.warmup)

    def validate(self) -> TrainConfig:
        """Refuse what a user can get wrong before any work (one UsageError); returns self."""
        _check_model(self.model)
        sd = self.survival()
        if self.sd_mode not in ("batch", "row"):
            raise UsageError(f"unknown --sd-mode {self.sd_mode!r}: use batch or row")
        if sd is not None and models.family(self.model, default="resnet") == "plain":
            raise UsageError("stochastic depth needs residual blocks: drop --stochastic-depth or "
                             "train a resnet*/preact_resnet*")
        self.run_name()
        self.recipe()
        if self.change_device and not self.resume:
            raise UsageError("--change-device continues a run: add --resume")
        if self.amp not in (None, "bf16", "off"):
            raise UsageError(f"unknown --amp {self.amp!r}: use bf16 or off")
        from ablate.training.lesion import parse_lesion_at

        parse_lesion_at(self.lesion_at, self.recipe())
        for flag, v in (("--limit-train", self.limit_train), ("--limit-test", self.limit_test),
                        ("--lesion-images", self.lesion_images)):
            if v is not None and v < 1:
                raise UsageError(f"{flag} must be a positive number of images, got {v}")
        return self


def _check_model(name: str) -> None:
    models.check_name(name)
    if not models.is_cifar(name):
        cifar = [n for n in models.names() if models.is_cifar(n)]
        raise UsageError(
            f"{name} is an ImageNet model; ablate.train trains CIFAR models: "
            f"--model one of {', '.join(cifar)}"
        )
