"""One epoch of training on device-resident uint8 data, and the per-epoch evaluation.

The whole uint8 train split lives on the device; each epoch draws one permutation, crop offsets
and flips from a seeded generator on that device, and batches are cropped, flipped and normalised
there (airbench style: no DataLoader, no per-image Python, no host sync per step). Recipes
that ask for it add RandAugment and Mixup/CutMix (``training.augment``), drawn after those.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from tqdm import tqdm

from ablate.data import CIFAR10_MEAN, CIFAR10_STD, normalize
from ablate.measures import evaluate as measure
from ablate.models.blocks import blocks, get_module
from ablate.training import augment as aug
from ablate.training.config import Recipe, lr_at

__all__ = [
    "GradProbe", "Shard", "augment", "draw_epoch", "evaluate", "grad_columns", "grad_probe",
    "train_epoch", "zero_grads",
]


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
    mean: Sequence[float] = CIFAR10_MEAN,
    std: Sequence[float] = CIFAR10_STD,
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
    ra = (aug.draw_randaugment(n, recipe.randaug_ops, gen, images.device)
          if recipe.randaug_ops else None)  # drawn only when on: ResNet streams are unchanged
    mixes = (aug.draw_mixes(steps_per_epoch, recipe.mixup_alpha, recipe.cutmix_alpha,
                        recipe.mix_prob, tuple(images.shape[2:]), gen, images.device)
             if recipe.mixes else [None] * steps_per_epoch)
    m, sd = (torch.tensor(v, dtype=torch.float32, device=images.device) for v in (mean, std))
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
        if ra is not None:
            with aug.one_thread(x.device):
                x = aug.randaugment(x, ra[0][rows], ra[1][rows], recipe.randaug_magnitude)
        x, y = normalize(x, m, sd, channels_last=channels_last), labels[idx]
        if mixes[s] is not None:
            x = aug.mix_batch(x, mixes[s])
        loss, out, g = _train_step(model, opt, x, y, amp, probe, recipe.label_smoothing,
                                   mixes[s])
        if g is not None:
            gsum = g if gsum is None else gsum + g
        with torch.no_grad():
            sums += torch.stack([loss.detach() * y.numel(), (out.argmax(1) == y).sum()]).float()
        count += y.numel()
        step += 1
        if bar is not None and not bar.disable:
            _show(bar, s, steps, b, t0, loss)
    sums = torch.cat([sums, torch.tensor([float(count)]).to(sums.device)])
    return sums, (gsum / steps if gsum is not None else None), step


def _train_step(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor, amp: bool,
                probe: GradProbe | None, label_smoothing: float = 0.0, mix: aug.Mix | None = None,
                ) -> tuple[Tensor, Tensor, Tensor | None]:
    """One step: forward (bf16 autocast if ``amp``), backward, the probe, the update. A mixed
    batch (``mix``) is scored against the mixed soft targets (``training.augment``)."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        out = model(x)
        target = y if mix is None else aug.soft_targets(y, out.shape[1], mix)
        loss = F.cross_entropy(out.float(), target, label_smoothing=label_smoothing)
    loss.backward()
    g = probe() if probe is not None else None
    opt.step()
    opt.zero_grad(set_to_none=False)  # keep zero grads: see zero_grads
    return loss, out, g


def _show(bar: tqdm, s: int, steps: int, b: int, t0: float, loss: Tensor) -> None:
    bar.update(1)
    if s % 20 == 0 or s == steps - 1:  # the only syncs: for the display, every 20 steps
        ips = (s + 1) * b / max(time.perf_counter() - t0, 1e-9)
        bar.set_postfix(loss=f"{loss.item():.3f}", img_s=f"{ips:,.0f}")


def evaluate(
    net: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    mean: Sequence[float] = CIFAR10_MEAN,
    std: Sequence[float] = CIFAR10_STD,
    amp: bool = False,
    channels_last: bool = False,
    batch_size: int = 1000,
    shard: Shard | None = None,
) -> tuple[float, float]:
    """(mean cross-entropy, error) of ``net`` by :func:`ablate.measures.evaluate`; under DDP each
    rank measures a slice and the sums are reduced."""
    shard = shard or Shard()
    part = torch.tensor_split(torch.arange(images.shape[0], device=images.device), shard.world)
    idx = part[shard.rank]
    out = measure(net, images[idx], labels[idx], mean=mean, std=std, batch_size=batch_size,
                  amp=amp, channels_last=channels_last)
    sums = torch.tensor([float(out.loss.double().sum()), float(out.n - out.errors), float(out.n)],
                        dtype=torch.float64, device=images.device)
    if shard.world > 1:
        dist.all_reduce(sums)
    loss, correct, count = sums.tolist()
    return loss / max(count, 1), 1.0 - correct / max(count, 1)


def zero_grads(net: nn.Module) -> None:
    """Give every parameter a zero gradient that ``zero_grad(set_to_none=False)`` then keeps.

    A block dropped by stochastic depth then still gets weight decay and momentum, as in Huang
    et al.'s Torch code (one flat parameter vector), and its zero gradient is what DDP reduces.
    """
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
