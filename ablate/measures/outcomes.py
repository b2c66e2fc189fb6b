"""Measurements on a model: per-image correctness and loss, with intervals and paired tests.

Per-image outcomes are kept (not just means) so that two conditions measured on the same images
can be compared pairwise (McNemar's exact test) and intervals can be computed afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from torch import Tensor, nn
from tqdm.auto import tqdm

__all__ = [
    "Outcome", "evaluate", "outcome", "wilson_interval", "mean_interval", "mcnemar_exact",
    "resolve_device",
]


@dataclass
class Outcome:
    """Per-image results of one condition: ``correct`` (bool [N]) and ``loss`` (float [N])."""

    correct: Tensor
    loss: Tensor

    @property
    def n(self) -> int:
        return int(self.correct.numel())

    @property
    def errors(self) -> int:
        return int((~self.correct).sum())

    @property
    def error(self) -> float:
        return self.errors / self.n

    def error_interval(self, conf: float = 0.95) -> tuple[float, float]:
        return wilson_interval(self.errors, self.n, conf)

    def loss_interval(self, conf: float = 0.95) -> tuple[float, float, float]:
        return mean_interval(self.loss.double().numpy(), conf)

    @staticmethod
    def cat(parts: Iterable[Outcome]) -> Outcome:
        parts = list(parts)
        return Outcome(torch.cat([p.correct for p in parts]), torch.cat([p.loss for p in parts]))


def outcome(logits: Tensor, labels: Tensor) -> Outcome:
    """Correctness and cross-entropy of each row of ``logits`` (computed in float32, on CPU)."""
    logits = logits.float()
    correct = logits.argmax(-1) == labels
    loss = F.cross_entropy(logits, labels, reduction="none")
    return Outcome(correct.cpu(), loss.cpu())


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is a UsageError."""
    from ablate._infra.errors import UsageError

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("CUDA was asked for but no GPU is visible: use --device cpu or auto")
    return dev


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    mean: Iterable[float],
    std: Iterable[float],
    batch_size: int = 500,
    progress: bool = False,
    desc: str = "evaluate",
) -> Outcome:
    """Run ``model`` (in eval mode, restored afterwards) over uint8 ``images``; per-image outcome.

    Images move to the model's device batch by batch and are normalised there.
    """
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    was_training = model.training
    model.eval()
    try:
        m = torch.tensor(list(mean), device=device).view(1, -1, 1, 1)
        s = torch.tensor(list(std), device=device).view(1, -1, 1, 1)
        parts = []
        starts = range(0, len(images), batch_size)
        for i in tqdm(starts, desc=desc, disable=not progress, leave=False):
            x = images[i:i + batch_size].to(device, non_blocking=True)
            x = ((x.float() / 255 - m) / s).to(dtype)
            parts.append(outcome(model(x), labels[i:i + batch_size].to(device)))
        return Outcome.cat(parts)
    finally:
        model.train(was_training)


def wilson_interval(k: int, n: int, conf: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion k/n (well behaved near 0 and 1)."""
    if n == 0:
        return (math.nan, math.nan)
    z = stats.norm.ppf(0.5 + conf / 2)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # Rounding can push a bound past k/n at k = 0 or k = n; the interval always holds k/n.
    lo = 0.0 if k == 0 else min(p, max(0.0, centre - half))
    hi = 1.0 if k == n else max(p, min(1.0, centre + half))
    return (lo, hi)


def mean_interval(values: np.ndarray, conf: float = 0.95) -> tuple[float, float, float]:
    """Mean with a Student-t interval: (mean, low, high)."""
    v = np.asarray(values, dtype=np.float64)
    m = float(v.mean()) if v.size else math.nan
    if v.size < 2:
        return (m, math.nan, math.nan)
    half = float(stats.t.ppf(0.5 + conf / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return (m, m - half, m + half)


def mcnemar_exact(correct_a: Tensor, correct_b: Tensor) -> float:
    """Exact McNemar test of two conditions on the same images: two-sided binomial p-value on
    the discordant pairs (1.0 when there are none)."""
    a, b = correct_a.bool(), correct_b.bool()
    only_a = int((a & ~b).sum())
    only_b = int((~a & b).sum())
    if only_a + only_b == 0:
        return 1.0
    return float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)
