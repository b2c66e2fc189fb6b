"""The ViT recipe's augmentation, batched on the device: RandAugment and Mixup/CutMix.

RandAugment (Cubuk et al. 2020) with torchvision's op set and magnitude ranges
(``torchvision.transforms.RandAugment``: 14 ops, magnitude M of 31 bins, a random sign for the
signed ops), but each of the ``N`` layers is applied to a whole uint8 batch at once: every image
has its own op and sign (drawn per epoch from the trainer's seeded generator), the geometric ops
are one ``grid_sample`` with a per-image affine map (nearest, zero fill; shear about the image
centre where torchvision shears about the corner) and the colour ops blend with per-image
factors; each image then takes its own op's result. Sign +1 is torchvision's positive angle,
shift and factor; the colour ops match torchvision's to +-1 grey level.

Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) mix each batch with itself reversed, one
lambda per batch (Beta(alpha, alpha); CutMix's lambda is the area actually pasted); with both on,
each mixed batch picks one of them with probability 1/2 (timm's switch, as in Lee et al. 2021).
The per-step draws come from a NumPy generator seeded once per epoch from the trainer's
generator, so a resumed run continues identically and no step waits on the device.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

__all__ = ["OPS", "Mix", "draw_mixes", "draw_randaugment", "mix_batch", "one_thread",
           "randaugment", "soft_targets"]

OPS = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness",
       "color", "contrast", "sharpness", "posterize", "solarize", "autocontrast", "equalize")
_OP = {name: i for i, name in enumerate(OPS)}
_BINS = 31  # torchvision's num_magnitude_bins


def draw_randaugment(n: int, num_ops: int, gen: torch.Generator, device: torch.device,
                     ) -> tuple[Tensor, Tensor]:
    """Each image's op per layer [n, num_ops] (index into ``OPS``) and sign (+-1.0)."""
    ops = torch.randint(0, len(OPS), (n, num_ops), generator=gen, device=device)
    signs = torch.where(torch.rand(n, num_ops, generator=gen, device=device) < 0.5, -1.0, 1.0)
    return ops, signs


@contextmanager
def one_thread(device: torch.device) -> Iterator[None]:
    """On the CPU, run the small ops inside on one thread: on a loaded 2-core host every
    multi-threaded op on a 128-image uint8 batch waits for a descheduled worker (RandAugment:
    57 ms per batch on one thread, 1.85 s on two)."""
    if device.type != "cpu":
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def randaugment(images: Tensor, ops: Tensor, signs: Tensor, magnitude: int) -> Tensor:
    """Each image's ops [B, N] with signs [B, N] at ``magnitude`` (0-30) on uint8 [B, C, H, W]."""
    x = images
    for j in range(ops.shape[1]):
        x = _layer(x, ops[:, j], signs[:, j], magnitude / (_BINS - 1))
    return x


def _layer(x: Tensor, op: Tensor, sign: Tensor, level: float) -> Tensor:
    """One RandAugment layer: each image takes the result of its own op."""
    f = x.float()
    out = _geometric(f, op, sign, level)
    sel = op[:, None, None, None]
    gray = (0.2989 * f[:, 0] + 0.587 * f[:, 1] + 0.114 * f[:, 2])[:, None]
    factor = (1.0 + 0.9 * level * sign)[:, None, None, None]
    mean = gray.mean(dim=(1, 2, 3), keepdim=True)
    for name, degenerate in (("brightness", torch.zeros_like(f[:1])), ("color", gray),
                             ("contrast", mean), ("sharpness", _smooth(f))):
        out = torch.where(sel == _OP[name], _blend(f, degenerate, factor), out)
    bits = 8 - round(4 * level)  # torchvision: 8 - round(M / 7.5)
    out = torch.where(sel == _OP["posterize"], (x & ((0xFF << (8 - bits)) & 0xFF)).float(), out)
    thr = 255.0 * (1.0 - level)
    out = torch.where(sel == _OP["solarize"], torch.where(f >= thr, 255.0 - f, f), out)
    out = torch.where(sel == _OP["autocontrast"], _autocontrast(f), out)
    out = torch.where(sel == _OP["equalize"], TF.equalize(x).float(), out)
    return out.clamp_(0, 255).to(torch.uint8)


def _geometric(f: Tensor, op: Tensor, sign: Tensor, level: float) -> Tensor:
    """Shear, translate, rotate (identity for the other ops) by one per-image affine sampling."""
    b, _, h, w = f.shape
    one, zero = torch.ones_like(sign), torch.zeros_like(sign)
    shear = math.degrees(math.atan(0.3 * level))
    a = torch.deg2rad(-sign * torch.where(op == _OP["rotate"], 30.0 * level, 0.0))
    sx = torch.where(op == _OP["shear_x"], math.tan(math.radians(shear)), 0.0) * sign
    sy = torch.where(op == _OP["shear_y"], math.tan(math.radians(shear)), 0.0) * sign
    t = -2.0 * (150.0 / 331.0) * level * sign  # of the half-width: torchvision's 150/331 * W
    tx, ty = (torch.where(op == _OP[k], t, 0.0) for k in ("translate_x", "translate_y"))
    cos, sin = torch.cos(a), torch.sin(a)
    theta = torch.stack([torch.stack([cos + zero, sin + sx, tx], 1),
                         torch.stack([-sin + sy, cos * one, ty], 1)], 1)  # [B, 2, 3]
    grid = F.affine_grid(theta, [b, 1, h, w], align_corners=False)
    moved = F.grid_sample(f, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    geometric = (op >= _OP["shear_x"]) & (op <= _OP["rotate"])
    return torch.where(geometric[:, None, None, None], moved, f)


def _blend(f: Tensor, degenerate: Tensor, factor: Tensor) -> Tensor:
    return (factor * f + (1.0 - factor) * degenerate).clamp(0, 255)


def _smooth(f: Tensor) -> Tensor:
    """PIL's SMOOTH kernel inside, the border pixels kept (torchvision's adjust_sharpness)."""
    k = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]], device=f.device) / 13
    c = f.shape[1]
    inner = F.conv2d(f, k.expand(c, 1, 3, 3), groups=c).round()
    out = f.clone()
    out[..., 1:-1, 1:-1] = inner
    return out


def _autocontrast(f: Tensor) -> Tensor:
    lo = f.amin(dim=(2, 3), keepdim=True)
    hi = f.amax(dim=(2, 3), keepdim=True)
    flat = hi <= lo
    scale = torch.where(flat, 1.0, 255.0 / (hi - lo).clamp_min(1e-6))
    return torch.where(flat, f, (f - lo) * scale)


@dataclass(frozen=True)
class Mix:
    """One batch's mixing: ``lam`` of the batch, ``1 - lam`` of it reversed; ``box`` (CutMix:
    rows y0:y1, columns x0:x1 pasted from the reversed batch) or None (Mixup)."""

    lam: float
    box: tuple[int, int, int, int] | None = None


def draw_mixes(steps: int, mixup_alpha: float, cutmix_alpha: float, mix_prob: float,
               size: tuple[int, int], gen: torch.Generator, device: torch.device,
               ) -> list[Mix | None]:
    """Each step's ``Mix`` (None: unmixed), from one seed drawn from ``gen`` (one host sync)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=gen, device=device).item())
    rng = np.random.default_rng(seed)
    out: list[Mix | None] = []
    for _ in range(steps):
        on, cut = rng.random(2)
        if on >= mix_prob:
            out.append(None)
        elif cutmix_alpha > 0 and (mixup_alpha <= 0 or cut < 0.5):
            out.append(_cutmix(float(rng.beta(cutmix_alpha, cutmix_alpha)), size, rng))
        else:
            out.append(Mix(float(rng.beta(mixup_alpha, mixup_alpha))))
    return out


def _cutmix(lam: float, size: tuple[int, int], rng: np.random.Generator) -> Mix:
    h, w = size
    r = math.sqrt(1.0 - lam)
    ch, cw = int(h * r), int(w * r)
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    return Mix(1.0 - (y1 - y0) * (x1 - x0) / (h * w), (y0, y1, x0, x1))


def mix_batch(x: Tensor, mix: Mix) -> Tensor:
    """The batch ``x`` [B, C, H, W] mixed with itself reversed along the batch."""
    other = x.flip(0)
    if mix.box is None:
        return x * mix.lam + other * (1.0 - mix.lam)
    y0, y1, x0, x1 = mix.box
    out = x.clone()
    out[:, :, y0:y1, x0:x1] = other[:, :, y0:y1, x0:x1]
    return out


def soft_targets(y: Tensor, num_classes: int, mix: Mix | None) -> Tensor:
    """Class probabilities [B, K]: one-hot ``y``, mixed with the reversed batch's by ``mix``."""
    t = F.one_hot(y, num_classes).float()
    return t if mix is None else t * mix.lam + t.flip(0) * (1.0 - mix.lam)
