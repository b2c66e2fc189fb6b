"""Train CIFAR ResNets and plain nets: He et al. 2015's recipe, or Huang et al. 2016's.

    python -m ablate.train --model resnet110 --data cifar10-jpeg.tar.gz --out runs/resnet110
    python -m ablate.train --model resnet110 --schedule huang --stochastic-depth linear:0.5 ...
    torchrun --nproc-per-node 8 -m ablate.train --model resnet110 --data ...

The whole uint8 train split lives on the device; each epoch draws one permutation, crop offsets
and flips from a seeded generator on that device, and batches are cropped, flipped and normalised
there (airbench style: no DataLoader, no per-image Python, no host sync per step). Every epoch
ends with an atomic ``last.pt`` in ``--out``: ``--resume`` continues from it, and on the CPU a
resumed run ends bitwise where an uninterrupted one does. Under ``torchrun`` every rank takes its
shard of each global batch (DDP; gloo on CPU, nccl on CUDA); only rank 0 writes files.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import platform
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from tqdm import tqdm

from . import checkpoint, models
from . import data as data_mod
from .blocks import blocks, get_module
from .errors import UsageError, cli_main
from .io import atomic_write, write_text

__all__ = [
    "Recipe",
    "TrainConfig",
    "augment",
    "evaluate",
    "lr_at",
    "main",
    "make_recipe",
    "parse_stochastic_depth",
    "pick_device",
    "train",
    "train_epoch",
    "zero_grads",
]

STATE_FORMAT = "ablate-train-state/1"
SCHEDULES = ("he", "huang", "cosine")
WARMUP_ITERS, WARMUP_LR = 400, 0.01


# ---------------------------------------------------------------------------------------------
# Recipe and learning-rate schedule


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


def paper_recipe(model: str, schedule: str = "he") -> Recipe:
    """What the paper behind ``schedule`` used for ``model`` (cosine: He's, with a cosine decay)."""
    if schedule == "huang":  # Huang et al. 2016: 500 epochs, Nesterov, no warm-up
        return Recipe(schedule="huang", epochs=500, nesterov=True)
    if schedule not in SCHEDULES:
        raise UsageError(f"unknown --schedule {schedule!r}: use one of {', '.join(SCHEDULES)}")
    if model.startswith("vit"):  # Hassani et al. 2021 (ViT-Lite): AdamW, cosine, warm-up
        return Recipe(schedule="cosine", epochs=300, lr=5.5e-4, weight_decay=3e-2,
                      optimizer="adamw", warmup_iters=WARMUP_ITERS, warmup_lr=5.5e-5)
    return Recipe(schedule=schedule, warmup_iters=WARMUP_ITERS if _needs_warmup(model) else 0)


def _needs_warmup(model: str) -> bool:
    """He et al.: ResNet-110 and deeper warm up at 0.01; so do the plain nets here."""
    depth = int(re.sub(r"\D", "", model) or 0)
    return model.startswith("plain") or depth >= 110


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
        if value is not None and not value > 0:
            raise UsageError(f"{flag} must be positive, got {value}")
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
    the schedule (He et al. return to 0.1; akamaster's reimplementation stays at 0.01).
    """
    if step < recipe.warmup_iters:
        return recipe.warmup_lr
    if recipe.schedule == "cosine":
        total = recipe.epochs * steps_per_epoch
        return 0.5 * recipe.lr * (1.0 + math.cos(math.pi * min(step, total) / total))
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


# ---------------------------------------------------------------------------------------------
# Data on the device


def augment(images: Tensor, shifts: Tensor, flips: Tensor, pad: int) -> Tensor:
    """Pad-and-crop and horizontal flip of a uint8 batch [B, C, H, W], on its own device.

    ``shifts`` [B, 2] holds each image's crop offset (row, column) in [0, 2 * pad] and ``flips``
    [B] whether to mirror it. The batch is padded with zeros once and cropped with two gathers.
    """
    b, c, h, w = images.shape
    x = images
    if pad:
        xp = F.pad(images, (pad, pad, pad, pad))
        rows = shifts[:, :1] + torch.arange(h, device=images.device)  # [B, H]
        cols = shifts[:, 1:] + torch.arange(w, device=images.device)  # [B, W]
        x = xp.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * pad))
        x = x.gather(3, cols[:, None, None, :].expand(b, c, h, w))
    return torch.where(flips[:, None, None, None], x.flip(3), x)


def _norm(mean: Sequence[float], std: Sequence[float], device: torch.device) -> tuple:
    """mean and std as [C, 1, 1] device tensors, made once: no host-to-device copy per step."""
    return tuple(torch.tensor(v, dtype=torch.float32).view(-1, 1, 1).to(device)
                 for v in (mean, std))


def _prepare(x: Tensor, norm: tuple[Tensor, Tensor], channels_last: bool) -> Tensor:
    """uint8 -> float, normalised exactly as ``ablate.data.normalize`` does it."""
    x = x.float().div_(255.0).sub_(norm[0]).div_(norm[1])
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def draw_epoch(n: int, recipe: Recipe, gen: torch.Generator, device: torch.device) -> tuple:
    """One epoch's randomness: permutation, crop offsets and flips, drawn in a fixed order."""
    perm = torch.randperm(n, generator=gen, device=device)
    shifts = torch.randint(0, 2 * recipe.crop_padding + 1, (n, 2), generator=gen, device=device)
    flips = torch.rand(n, generator=gen, device=device) < 0.5
    if not recipe.flip:
        flips = torch.zeros_like(flips)
    return perm, shifts, flips


# ---------------------------------------------------------------------------------------------
# Gradient statistics (Huang et al. Fig. 7 and one norm per block), on the device


@dataclass
class GradProbe:
    """Parameters grouped per block, plus the two first convolutions, for cheap norms."""

    params: list[nn.Parameter]
    segment: Tensor  # block index of each parameter in ``params``
    n_blocks: int
    conv1: nn.Parameter  # the stem's convolution
    first_block_conv1: nn.Parameter

    def __call__(self) -> Tensor:
        """[conv1 L2 norm, first block conv1 mean |g|, block 0 L2 norm, ...] as one tensor."""
        norms = torch.stack(torch._foreach_norm([p.grad for p in self.params]))
        per_block = torch.zeros(self.n_blocks, device=norms.device, dtype=norms.dtype)
        per_block = per_block.index_add_(0, self.segment, norms.square()).sqrt()
        head = torch.stack([self.conv1.grad.norm(), self.first_block_conv1.grad.abs().mean()])
        return torch.cat([head.to(per_block.dtype), per_block])


def grad_probe(net: nn.Module) -> GradProbe:
    params, seg = [], []
    units = blocks(net)
    for u in units:
        mods = [u.module] + ([get_module(net, u.bn)] if u.kind == "plain" and u.bn else [])
        for m in mods:
            for p in m.parameters():
                params.append(p)
                seg.append(u.index)
    device = next(net.parameters()).device
    if isinstance(net, torchvision.models.VisionTransformer):  # patch embedding, first layer
        stem, first = net.conv_proj.weight, units[0].module.self_attention.in_proj_weight
    else:
        stem, first = net.get_submodule("conv1").weight, net.get_submodule("layer1.0.conv1").weight
    return GradProbe(params, torch.tensor(seg, device=device), len(units), stem, first)


def grad_columns(n_blocks: int) -> list[str]:
    return ["grad_norm_conv1", "grad_mean_abs_first_block_conv1"] + [
        f"grad_norm_block_{i}" for i in range(n_blocks)
    ]


# ---------------------------------------------------------------------------------------------
# One epoch, evaluation


@dataclass
class Shard:
    """This process's part of each global batch: rows [lo, hi) of it."""

    rank: int = 0
    world: int = 1

    def bounds(self, batch: int) -> tuple[int, int]:
        per = batch // self.world
        return self.rank * per, (self.rank + 1) * per


def train_epoch(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    images: Tensor,
    labels: Tensor,
    recipe: Recipe,
    gen: torch.Generator,
    step: int,
    *,
    mean: Sequence[float] = data_mod.CIFAR10_MEAN,
    std: Sequence[float] = data_mod.CIFAR10_STD,
    amp: bool = False,
    channels_last: bool = False,
    shard: Shard | None = None,
    probe: GradProbe | None = None,
    max_steps: int | None = None,
    bar: tqdm | None = None,
) -> tuple[Tensor, Tensor | None, int]:
    """Train one epoch over device-resident uint8 ``images``; no host sync inside the loop.

    Returns on-device sums [loss * n, correct, n] over this process's rows, the mean over steps
    of the gradient statistics of ``probe`` (or None), and the new global step.
    """
    shard = shard or Shard()
    n, b = images.shape[0], recipe.batch_size
    steps_per_epoch = n // b
    lo, hi = shard.bounds(b)
    perm, shifts, flips = draw_epoch(n, recipe, gen, images.device)
    norm = _norm(mean, std, images.device)
    sums, count = torch.zeros(2, device=images.device), 0
    gsum = None
    steps = steps_per_epoch if max_steps is None else min(max_steps, steps_per_epoch)
    t0 = time.perf_counter()
    for s in range(steps):
        lr = lr_at(recipe, step, steps_per_epoch)
        for g in opt.param_groups:
            g["lr"] = lr
        rows = slice(s * b + lo, s * b + hi)
        idx = perm[rows]
        x = augment(images[idx], shifts[rows], flips[rows], recipe.crop_padding)
        x, y = _prepare(x, norm, channels_last), labels[idx]
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(x)
            loss = F.cross_entropy(out.float(), y)
        loss.backward()
        if probe is not None:
            g = probe()
            gsum = g if gsum is None else gsum + g
        opt.step()
        opt.zero_grad(set_to_none=False)  # keep zero grads: see zero_grads
        with torch.no_grad():
            sums += torch.stack([loss.detach() * y.numel(), (out.argmax(1) == y).sum()]).float()
        count += y.numel()
        step += 1
        if bar is not None and not bar.disable:
            bar.update(1)
            if s % 20 == 0 or s == steps - 1:  # the only syncs: for the display, every 20 steps
                ips = (s + 1) * b / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(loss=f"{loss.item():.3f}", img_s=f"{ips:,.0f}")
    sums = torch.cat([sums, torch.tensor([float(count)]).to(sums.device)])
    return sums, (gsum / steps if gsum is not None else None), step


@torch.no_grad()
def evaluate(
    net: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    mean: Sequence[float] = data_mod.CIFAR10_MEAN,
    std: Sequence[float] = data_mod.CIFAR10_STD,
    amp: bool = False,
    channels_last: bool = False,
    batch_size: int = 1000,
    shard: Shard | None = None,
) -> tuple[float, float]:
    """(mean cross-entropy, error) of ``net`` in eval mode; under DDP each rank takes a slice."""
    shard = shard or Shard()
    was_training = net.training
    net.eval()
    part = torch.tensor_split(torch.arange(images.shape[0], device=images.device), shard.world)
    idx_all = part[shard.rank]
    sums = torch.zeros(2, device=images.device)
    norm = _norm(mean, std, images.device)
    for i in range(0, idx_all.numel(), batch_size):
        idx = idx_all[i : i + batch_size]
        x, y = _prepare(images[idx], norm, channels_last), labels[idx]
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp):
            out = net(x).float()
        sums += torch.stack([F.cross_entropy(out, y, reduction="sum"),
                             (out.argmax(1) == y).sum()]).float()
    net.train(was_training)
    sums = torch.cat([sums, torch.tensor([float(idx_all.numel())]).to(sums.device)])
    if shard.world > 1:
        dist.all_reduce(sums)
    loss, correct, count = sums.tolist()
    return loss / max(count, 1), 1.0 - correct / max(count, 1)


# ---------------------------------------------------------------------------------------------
# Configuration


@dataclass
class TrainConfig:
    """Everything ``train`` needs; the CLI flags map one to one onto these fields."""

    model: str
    data: str | None = None  # path to a data set, or "cifar10"/"cifar100" (torchvision)
    epochs: int | None = None  # None: the schedule's (164 he/cosine, 500 huang)
    batch_size: int = 128  # global batch, split across ranks
    lr: float = 0.1
    schedule: str = "he"
    warmup: str = "auto"  # auto: ResNet-110+ and plain nets, not the huang schedule
    stochastic_depth: str | None = None  # "linear:0.5"
    sd_mode: str = "batch"
    seed: int = 0
    out: str | None = None  # default runs/NAME
    name: str | None = None  # default <model> or <model>-sd
    resume: bool = False
    device: str = "auto"
    compile: bool = False
    channels_last: bool | None = None  # None: on for CUDA, off on the CPU
    amp: str | None = None  # "bf16" | "off"; None: bf16 on CUDA, off on the CPU
    val_split: int = 0  # hold out this many train images (the papers: 5000)
    limit_train: int | None = None
    limit_test: int | None = None
    download: bool = False
    cache_dir: str | None = None
    progress: bool = True
    eval_batch_size: int = 1000
    stop_after: int | None = field(default=None, repr=False)  # test hook: quit after this epoch


def _run_name(config: TrainConfig) -> str:
    if config.name:
        if not re.fullmatch(r"[A-Za-z0-9._-]+", config.name):
            raise UsageError(f"--name {config.name!r} must be letters, digits, '.', '_' or '-'")
        return config.name
    sd = parse_stochastic_depth(config.stochastic_depth)
    return f"{config.model}-sd" if sd is not None else config.model


def _check_model(name: str) -> None:
    models.check_name(name)
    if not models.is_cifar(name):
        cifar = [n for n in models.names() if models.is_cifar(n)]
        raise UsageError(
            f"{name} is an ImageNet model; ablate.train trains CIFAR models: "
            f"--model one of {', '.join(cifar)}"
        )


def pick_device(spec: str, local_rank: int) -> torch.device:
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(
                f"--device cuda, but torch {torch.__version__} sees no CUDA device: "
                "use --device cpu (or auto)"
            )
        return torch.device("cuda", local_rank)
    if spec == "cpu":
        return torch.device("cpu")
    raise UsageError(f"unknown --device {spec!r}: use auto, cpu or cuda")


def _load_data(config: TrainConfig) -> tuple[data_mod.Dataset, data_mod.Dataset]:
    if config.data is None or str(config.data) == "bundled":
        raise UsageError(
            "training needs a train split: pass --data PATH to a full data set (e.g. "
            "cifar10-jpeg.tar.gz) or --data cifar10 --download; the bundled set is test-only"
        )
    quiet = _rank() != 0
    kw = {"cache_dir": config.cache_dir, "download": config.download, "quiet": quiet}
    return (data_mod.load(config.data, "train", **kw), data_mod.load(config.data, "test", **kw))


def _split_val(ds: data_mod.Dataset, n_val: int) -> tuple[data_mod.Dataset, data_mod.Dataset]:
    """Hold out ``n_val`` random images (a fixed draw, the same for every seed) as validation."""
    if not 0 < n_val < len(ds):
        raise UsageError(f"--val-split must be between 0 and {len(ds)} images, got {n_val}")
    perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))
    keep, val = perm[n_val:].sort().values, perm[:n_val].sort().values

    def take(idx: Tensor, split: str) -> data_mod.Dataset:
        return replace(ds, images=ds.images[idx].contiguous(), labels=ds.labels[idx], split=split)

    return take(keep, "train"), take(val, "val")


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _deviations(
    config: TrainConfig, recipe: Recipe, paper: Recipe, dataset: str, amp: bool, world: int,
    n_train: int,
) -> list[str]:
    """Every way this run differs from the paper's recipe, in words, for the card."""
    out = []
    source = "Huang et al. 2016" if recipe.schedule == "huang" else "He et al. 2015"
    if paper.optimizer == "adamw":
        source = "Hassani et al. 2021"
    for key, value in asdict(recipe).items():
        if value != getattr(paper, key):
            out.append(f"{key} {value} instead of {getattr(paper, key)} ({source})")
    if recipe.schedule == "cosine":
        out.append("cosine learning-rate decay instead of steps at 50% and 75%")
    if dataset != "cifar10":
        what = " (a JPEG q75 copy of CIFAR-10)" if dataset == "cifar10-jpeg" else ""
        out.append(f"data set {dataset}{what} instead of CIFAR-10")
    if config.val_split == 0:
        out.append(
            "no 45k/5k validation split: trained on all train images, final-epoch test error "
            + ("reported (Huang et al. took the best validation epoch)"
               if recipe.schedule == "huang" else "reported")
        )
    elif config.val_split != 5000:
        out.append(f"validation split of {config.val_split} images instead of 5000")
    if config.limit_train is not None:
        out.append(f"train set limited to {n_train} images")
    if config.limit_test is not None:
        out.append(f"test set limited to {config.limit_test} images")
    if amp:
        out.append("bf16 autocast instead of fp32")
    if config.stochastic_depth is not None and config.sd_mode != "batch":
        out.append("stochastic depth with one gate per image (row) instead of per mini-batch")
    if world > 1:
        out.append(f"{world} processes: batch norm statistics over {recipe.batch_size // world} "
                   f"images per process instead of {recipe.batch_size}")
    out.append("last partial batch of each epoch dropped")
    return out


# ---------------------------------------------------------------------------------------------
# Checkpointing of the training state


def _rng_state(gen: torch.Generator, device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state(), "data": gen.get_state(), "data_device": device.type}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, gen: torch.Generator, device: torch.device) -> None:
    if state["data_device"] != device.type:
        raise UsageError(
            f"last.pt was written on {state['data_device']}, not {device.type}: resume with "
            f"--device {state['data_device']} (the data order depends on the device)"
        )
    torch.set_rng_state(state["torch"])
    gen.set_state(state["data"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _load_state(path: Path, run: dict) -> dict:
    if not path.exists():
        raise UsageError(f"--resume: no {path.name} in {path.parent}; run without --resume to "
                         "start")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any unreadable state is one user-facing error
        raise UsageError(f"--resume: {path} is unreadable ({type(e).__name__}); delete it or "
                         "choose another --out") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise UsageError(f"--resume: {path} is not an ablate.train state; choose another --out")
    old = state["run"]
    if isinstance(old.get("recipe"), dict):  # states saved before Recipe.optimizer existed
        old["recipe"].setdefault("optimizer", "sgd")
    if old.get("model") != run["model"]:
        raise UsageError(
            f"--resume: {path} is a run of {old.get('model')}, not {run['model']}: pass "
            f"--model {old.get('model')} or choose another --out"
        )
    diff = [k for k in run if _jsonable(old.get(k)) != _jsonable(run[k])]
    if diff:
        k = diff[0]
        raise UsageError(
            f"--resume: {path} was started with {k}={_jsonable(old.get(k))}, now "
            f"{_jsonable(run[k])}: resume with the original settings or choose another --out"
        )
    return state


def _jsonable(x: object) -> object:
    return json.loads(json.dumps(x, default=str))


def _write_log(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    write_text(path, buf.getvalue())


# ---------------------------------------------------------------------------------------------
# The run


def zero_grads(net: nn.Module) -> None:
    """Give every parameter a zero gradient that ``zero_grad(set_to_none=False)`` then keeps.

    A block dropped by stochastic depth then still gets weight decay and momentum, as in Huang
    et al.'s Torch code (one flat parameter vector), and its zero gradient is what DDP reduces.
    """
    for p in net.parameters():
        p.grad = torch.zeros_like(p)


def train(
    config: TrainConfig,
    *,
    train_data: data_mod.Dataset | None = None,
    test_data: data_mod.Dataset | None = None,
) -> Path:
    """Train ``config.model`` and return the path of the final ``NAME.safetensors``.

    ``train_data``/``test_data`` (ablate.data Datasets) replace ``config.data``. Launched by
    torchrun (WORLD_SIZE > 1), the process group is set up here and torn down at the end.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    own_group = world > 1 and not dist.is_initialized()
    if own_group:
        use_cuda = config.device == "cuda" or (config.device == "auto"
                                               and torch.cuda.is_available())
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if use_cuda else "gloo")
    try:
        return _train(config, train_data, test_data)
    finally:
        if own_group:
            dist.destroy_process_group()


def _train(
    config: TrainConfig, train_data: data_mod.Dataset | None, test_data: data_mod.Dataset | None
) -> Path:
    # --- check everything a user can get wrong before any work -------------------------------
    _check_model(config.model)
    sd = parse_stochastic_depth(config.stochastic_depth)
    if config.sd_mode not in ("batch", "row"):
        raise UsageError(f"unknown --sd-mode {config.sd_mode!r}: use batch or row")
    if sd is not None and config.model.startswith("plain"):
        raise UsageError("stochastic depth needs residual blocks: drop --stochastic-depth or "
                         "train a resnet*/preact_resnet*")
    name = _run_name(config)
    recipe = make_recipe(config.model, config.schedule, epochs=config.epochs,
                         batch_size=config.batch_size, lr=config.lr, warmup=config.warmup)
    paper = paper_recipe(config.model, config.schedule)
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    shard = Shard(rank, world)
    if recipe.batch_size % world:
        raise UsageError(f"--batch-size {recipe.batch_size} does not split over {world} "
                         "processes: use a multiple of the process count")
    if sd is not None and config.sd_mode == "row" and world > 1:
        raise UsageError("row-mode stochastic depth is not supported with several processes: "
                         "use --sd-mode batch")
    device = pick_device(config.device, int(os.environ.get("LOCAL_RANK", "0")))
    amp_spec = config.amp or ("bf16" if device.type == "cuda" else "off")
    if amp_spec not in ("bf16", "off"):
        raise UsageError(f"unknown --amp {amp_spec!r}: use bf16 or off")
    amp = amp_spec == "bf16"
    channels_last = device.type == "cuda" if config.channels_last is None else config.channels_last
    out = Path(config.out or Path("runs") / name)
    state_path = out / "last.pt"
    if not config.resume and state_path.exists():
        raise UsageError(f"{out} already holds a run (last.pt): pass --resume to continue it or "
                         "choose another --out")
    for flag, v in (("--limit-train", config.limit_train), ("--limit-test", config.limit_test)):
        if v is not None and v < 1:
            raise UsageError(f"{flag} must be a positive number of images, got {v}")

    # --- data ---------------------------------------------------------------------------------
    if train_data is None or test_data is None:
        tr, te = _load_data(config)
        train_data = tr if train_data is None else train_data
        test_data = te if test_data is None else test_data
    if tuple(train_data.classes) != tuple(test_data.classes):
        raise UsageError("train and test splits have different classes: check --data")
    train_ds = train_data.subset(config.limit_train)
    test_ds = test_data.subset(config.limit_test)
    val_ds = None
    if config.val_split:
        train_ds, val_ds = _split_val(train_ds, config.val_split)
    if len(train_ds) < recipe.batch_size:
        raise UsageError(f"{len(train_ds)} train images is fewer than one batch of "
                         f"{recipe.batch_size}: lower --batch-size or raise --limit-train")
    mean, std = data_mod.CIFAR10_MEAN, data_mod.CIFAR10_STD
    images, labels = train_ds.images.to(device), train_ds.labels.to(device)
    test_images, test_labels = test_ds.images.to(device), test_ds.labels.to(device)
    if val_ds is not None:
        val_images, val_labels = val_ds.images.to(device), val_ds.labels.to(device)
    steps_per_epoch = len(train_ds) // recipe.batch_size

    # --- model, optimiser, RNG ----------------------------------------------------------------
    torch.manual_seed(config.seed)  # the same on every rank: batch-mode gates agree across ranks
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.cuda.manual_seed(config.seed + rank)  # row-mode gates and dropout differ per rank
    arch_kwargs: dict = {"num_classes": len(train_ds.classes)}
    if sd is not None:
        arch_kwargs.update(stochastic_depth=sd, sd_mode=config.sd_mode)
    net = models.create(config.model, **arch_kwargs).to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    zero_grads(net)
    if recipe.optimizer == "adamw":
        opt = torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    else:
        opt = torch.optim.SGD(net.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                              nesterov=recipe.nesterov, weight_decay=recipe.weight_decay)
    gen = torch.Generator(device=device).manual_seed(config.seed)
    probe = grad_probe(net)
    run = {
        "model": config.model, "arch_kwargs": arch_kwargs, "recipe": asdict(recipe),
        "seed": config.seed, "dataset": train_ds.name, "n_train": len(train_ds),
        "val_split": config.val_split, "world_size": world,
    }
    log: list[dict] = []
    start_epoch, step, train_seconds = 0, 0, 0.0
    if config.resume:
        st = _load_state(state_path, run)
        net.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        _set_rng_state(st["rng"], gen, device)
        start_epoch, step, log = st["epoch"], st["step"], list(st["log"])
        train_seconds = float(st["train_seconds"])
        if rank == 0:
            print(f"resuming {name} from {state_path} after epoch {start_epoch}", flush=True)

    fwd: nn.Module = net
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        fwd = DDP(net, device_ids=[device.index] if device.type == "cuda" else None,
                  find_unused_parameters=sd is not None)
    eval_net: nn.Module = net
    if config.compile:
        fwd, eval_net = torch.compile(fwd), torch.compile(net)

    # --- epochs -------------------------------------------------------------------------------
    show = rank == 0
    if show:
        print(f"training {name}: {config.model} on {train_ds.name} ({len(train_ds)} train, "
              f"{len(test_ds)} test images), {recipe.epochs} epochs of {steps_per_epoch} steps, "
              f"batch {recipe.batch_size} on {world}x {_device_name(device)}, "
              f"amp {amp_spec}, out {out}", flush=True)
    ev = {"mean": mean, "std": std, "amp": amp, "channels_last": channels_last,
          "batch_size": config.eval_batch_size, "shard": shard}
    for epoch in range(start_epoch, recipe.epochs):
        net.train()
        t0 = time.perf_counter()
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{recipe.epochs}", leave=False,
                   disable=True if not (show and config.progress) else None, unit="step")
        sums, gmean, step = train_epoch(
            fwd, opt, images, labels, recipe, gen, step, mean=mean, std=std, amp=amp,
            channels_last=channels_last, shard=shard, probe=probe, bar=bar,
        )
        if world > 1:
            dist.all_reduce(sums)
        loss_sum, correct, count = sums.tolist()  # the one sync of the epoch's training
        gvals = gmean.tolist()
        t_train = time.perf_counter() - t0
        bar.close()
        test_loss, test_err = evaluate(eval_net, test_images, test_labels, **ev)
        row = {
            "epoch": epoch + 1,
            "lr": lr_at(recipe, step - 1, steps_per_epoch),
            "train_loss": loss_sum / count,
            "train_error": 1.0 - correct / count,
            "test_loss": test_loss,
            "test_error": test_err,
        }
        if val_ds is not None:
            row["val_loss"], row["val_error"] = evaluate(eval_net, val_images, val_labels, **ev)
        seconds = time.perf_counter() - t0
        train_seconds += seconds
        row |= {"images_per_s": steps_per_epoch * recipe.batch_size / t_train,
                "epoch_seconds": seconds}
        row |= dict(zip(grad_columns(probe.n_blocks), gvals, strict=True))
        log.append(row)
        if show:
            val = f" val err {row['val_error']:.2%}" if val_ds is not None else ""
            print(f"epoch {epoch + 1}/{recipe.epochs} lr {row['lr']:.4g} | train loss "
                  f"{row['train_loss']:.4f} err {row['train_error']:.2%} | test loss "
                  f"{test_loss:.4f} err {test_err:.2%}{val} | {row['images_per_s']:,.0f} img/s "
                  f"{seconds:.1f}s", flush=True)
            state = {
                "format": STATE_FORMAT, "run": run, "model": net.state_dict(),
                "optimizer": opt.state_dict(), "epoch": epoch + 1, "step": step,
                "rng": _rng_state(gen, device), "log": log, "train_seconds": train_seconds,
            }
            atomic_write(state_path, lambda p, s=state: torch.save(s, p))
            _write_log(out / "log.csv", log)
        if config.stop_after is not None and epoch + 1 >= config.stop_after:
            if world > 1:
                dist.barrier()
            return state_path

    # --- final checkpoint ---------------------------------------------------------------------
    weights = out / f"{name}.safetensors"
    if rank == 0:
        card = _card(config, recipe, paper, run, log, train_ds, amp, world, device, sd,
                     train_seconds, name, (mean, std))
        weights = checkpoint.save(net, out / name, card)
        _write_log(out / f"{name}.log.csv", log)
        print(f"wrote {weights} (final test error {card['final_test_error']:.2%})", flush=True)
    if world > 1:
        dist.barrier()
    return weights


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _card(
    config: TrainConfig, recipe: Recipe, paper: Recipe, run: dict, log: list[dict],
    train_ds: data_mod.Dataset, amp: bool, world: int, device: torch.device, sd: float | None,
    train_seconds: float, name: str, norm: tuple,
) -> dict:
    import torchvision

    card = {
        "arch": config.model,
        "arch_kwargs": run["arch_kwargs"],
        "dataset": train_ds.name,
        "normalization": {"mean": list(norm[0]), "std": list(norm[1]),
                          "source": "CIFAR-10 train-set constants"},
        "recipe": asdict(recipe),
        "deviations": _deviations(config, recipe, paper, train_ds.name, amp, world,
                                  len(train_ds)),
        "epochs": recipe.epochs,
        "seed": config.seed,
        "stochastic_depth": None if sd is None else {"rule": "linear", "p_L": sd,
                                                      "mode": config.sd_mode},
        "final_test_error": log[-1]["test_error"] if log else None,
        "best_test_error": min(r["test_error"] for r in log) if log else None,
        "train_images": len(train_ds),
        "train_seconds": round(train_seconds, 3),
        "device": _device_name(device),
        "world_size": world,
        "amp": "bf16" if amp else "off",
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": torchvision.__version__},
        "log": f"{name}.log.csv",
    }
    if config.val_split and log:
        best = min(log, key=lambda r: r["val_error"])
        card |= {"val_split": config.val_split, "best_val_epoch": best["epoch"],
                 "test_error_at_best_val": best["test_error"]}
    return card


# ---------------------------------------------------------------------------------------------
# CLI


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit status 2, like every UsageError
        raise UsageError(f"{message} (see --help)")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m ablate.train",
        description="Train a CIFAR ResNet or plain net (He et al. 2015; Huang et al. 2016).",
    )
    p.add_argument("--model", help="registry name: resnet20..1202, plain20..110, "
                   "preact_resnet20..110")
    p.add_argument("--list-models", action="store_true", help="list trainable models and exit")
    p.add_argument("--data", help="data set: a cifar10-jpeg.tar.gz, an ImageFolder or python-"
                   "batches folder, or cifar10/cifar100 (torchvision)")
    p.add_argument("--download", action="store_true", help="let torchvision download cifar10/100")
    p.add_argument("--cache-dir", help="where decoded data sets are cached")
    p.add_argument("--epochs", type=int, help="default: 164 (he, cosine), 500 (huang)")
    p.add_argument("--batch-size", type=int, default=128, help="global batch (default 128)")
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate (default 0.1)")
    p.add_argument("--schedule", default="he", choices=SCHEDULES,
                   help="he: /10 at 50%% and 75%%; huang: 500 epochs, Nesterov, /10 at 250, 375")
    p.add_argument("--warmup", default="auto", choices=("auto", "on", "off"),
                   help="lr 0.01 for 400 iterations (auto: ResNet-110+ and plain nets, he/cosine)")
    p.add_argument("--stochastic-depth", metavar="linear:P",
                   help="Huang et al.'s linear survival rule ending at p_L = P (e.g. linear:0.5)")
    p.add_argument("--sd-mode", default="batch", choices=("batch", "row"),
                   help="one gate per block per mini-batch (Huang et al.) or per image")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="run folder (default runs/NAME)")
    p.add_argument("--name", help="checkpoint name (default MODEL or MODEL-sd)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="default: on for CUDA")
    p.add_argument("--amp", choices=("bf16", "off"), help="default: bf16 on CUDA, off on CPU")
    p.add_argument("--val-split", type=int, default=0,
                   help="hold out N train images for validation (the papers: 5000; default 0)")
    p.add_argument("--limit-train", type=int, help="use the first N train images (smoke runs)")
    p.add_argument("--limit-test", type=int, help="use the first N test images (smoke runs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


@cli_main
def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.list_models:
        print("\n".join(n for n in models.names() if models.is_cifar(n)))
        return
    if not args.model:
        raise UsageError("name a model: --model resnet110 (see --list-models)")
    config = TrainConfig(
        model=args.model, data=args.data, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, schedule=args.schedule, warmup=args.warmup,
        stochastic_depth=args.stochastic_depth, sd_mode=args.sd_mode, seed=args.seed,
        out=args.out, name=args.name, resume=args.resume, device=args.device,
        compile=args.compile, channels_last=args.channels_last, amp=args.amp,
        val_split=args.val_split, limit_train=args.limit_train, limit_test=args.limit_test,
        download=args.download, cache_dir=args.cache_dir, progress=not args.no_progress,
    )
    train(config)


if __name__ == "__main__":
    sys.exit(main())
