"""Redundancy measures from one activation pass, and their rank correlation with damage.

Forward hooks on each block capture its input x and output y (hooks are removed on exit, also on
an exception). Per example, averaged over tokens (transformers: the last dimension is the feature
dimension; image blocks: each example's whole feature map is one vector):

- Block Influence (Men et al. 2024, ShortGPT): ``1 - cos(x, y)``;
- angular distance over an n-block window (Gromov et al. 2024): ``arccos(cos(x_l, y_{l+n-1})) / pi``
  between the input of block l and the output of block l + n - 1;
- residual-contribution ratio: ``||y - x|| / ||x||`` (``||f(x)|| / ||x||`` for ``y = x + f(x)``).

``rank_correlation`` is Spearman's rho between a measure's block means and the measured damage's
block means, with a percentile bootstrap interval over examples (both resampled together).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from scipy import stats
from torch import Tensor, nn

from .._infra.errors import UsageError
from ..models.blocks import blocks, get_module

__all__ = ["Redundancy", "redundancy", "rank_correlation"]


@dataclass
class Redundancy:
    """Per-example measures, arrays [examples, blocks] (windows: [examples, blocks - n + 1])."""

    names: list[str]
    influence: np.ndarray
    ratio: np.ndarray
    angular: dict[int, np.ndarray] = field(default_factory=dict)

    def table(self) -> pd.DataFrame:
        """Tidy rows: measure, n (window), block (first of the window), name, mean."""
        rows = []
        for measure, arr, n in [("block_influence", self.influence, 1),
                                ("contribution_ratio", self.ratio, 1),
                                *(("angular_distance", a, n) for n, a in self.angular.items())]:
            for b, m in enumerate(np.nanmean(arr, axis=0)):
                rows.append({"measure": measure, "n": n, "block": b, "name": self.names[b],
                             "mean": float(m), "examples": int(arr.shape[0])})
        return pd.DataFrame(rows)


def _hidden(v) -> Tensor:
    return v[0] if isinstance(v, (tuple, list)) else v


def _per_example(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """(cosine, ||y - x|| / ||x||) per example, averaged over tokens, in float64."""
    x, y = x.double(), y.double()
    if x.dim() != 3:  # images: one vector per example
        x, y = x.flatten(1).unsqueeze(1), y.flatten(1).unsqueeze(1)
    nx, ny = x.norm(dim=-1), y.norm(dim=-1)
    cos = ((x * y).sum(-1) / (nx * ny)).clamp(-1.0, 1.0)
    ratio = (y - x).norm(dim=-1) / nx
    return cos.mean(-1), ratio.mean(-1)


def _cos(x: Tensor, y: Tensor) -> Tensor:
    return _per_example(x, y)[0]


@torch.inference_mode()
def redundancy(
    model: nn.Module,
    batches: Iterable,
    forward: Callable[[nn.Module, object], object] | None = None,
    windows: Sequence[int] = (1, 2, 4),
    tokens: str = "all",
) -> Redundancy:
    """Measure every block of ``model`` on ``batches`` (each passed to ``forward(model, batch)``,
    by default ``model(batch)``). ``tokens="last"`` uses only the last token (Gromov et al.)."""
    if tokens not in ("all", "last"):
        raise UsageError(f"tokens must be 'all' or 'last', not {tokens!r}")
    forward = forward or (lambda m, b: m(b))
    bl = blocks(model)
    L = len(bl)
    windows = [n for n in windows if 1 <= n <= L]
    ins: list[Tensor | None] = [None] * L
    outs: list[Tensor | None] = [None] * L

    def pick(t: Tensor) -> Tensor:
        return t[:, -1:] if tokens == "last" and t.dim() == 3 else t

    def hook(i: int):
        def fn(_m, args, kwargs, out):
            x = args[0] if args else kwargs.get("hidden_states", next(iter(kwargs.values())))
            ins[i], outs[i] = pick(x).detach(), pick(_hidden(out)).detach()
        return fn

    handles = [get_module(model, b.name).register_forward_hook(hook(i), with_kwargs=True)
               for i, b in enumerate(bl)]
    inf, rat, ang = [], [], {n: [] for n in windows}
    try:
        for batch in batches:
            forward(model, batch)
            if any(t is None for t in ins):
                raise UsageError("some blocks did not run in the forward pass")
            cr = [_per_example(x, y) if x.shape == y.shape else None for x, y in zip(ins, outs)]
            nan = torch.full((ins[0].shape[0],), math.nan, dtype=torch.float64)
            inf.append(torch.stack([1 - c[0] if c else nan for c in cr], 1))
            rat.append(torch.stack([c[1] if c else nan for c in cr], 1))
            for n in windows:
                cols = []
                for lo in range(L - n + 1):
                    x, y = ins[lo], outs[lo + n - 1]
                    cols.append(torch.arccos(_cos(x, y)) / math.pi if x.shape == y.shape else nan)
                ang[n].append(torch.stack(cols, 1))
            ins[:] = outs[:] = [None] * L
    finally:
        for h in handles:
            h.remove()
    if not inf:
        raise UsageError("no batches to measure")
    return Redundancy(
        [b.name for b in bl], torch.cat(inf).cpu().numpy(), torch.cat(rat).cpu().numpy(),
        {n: torch.cat(a).cpu().numpy() for n, a in ang.items()},
    )


def rank_correlation(
    measure: np.ndarray,
    damage: np.ndarray,
    n_boot: int = 2000,
    conf: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Spearman's rho between block means of ``measure`` and ``damage`` with a bootstrap interval.

    Both are [examples, blocks] on the same examples (resampled together), or a measure of shape
    [blocks] (fixed) against per-example damage. Returns (rho, low, high).
    """
    m, d = np.asarray(measure, dtype=np.float64), np.asarray(damage, dtype=np.float64)
    if d.ndim != 2 or m.shape[-1] != d.shape[1] or (m.ndim == 2 and m.shape[0] != d.shape[0]):
        raise UsageError(f"measure {m.shape} and damage {d.shape} do not pair up by block/example")

    def rho(idx: np.ndarray | None) -> float:
        mm = m if m.ndim == 1 else np.nanmean(m if idx is None else m[idx], 0)
        dd = np.nanmean(d if idx is None else d[idx], 0)
        with warnings.catch_warnings():  # a constant side has no rank correlation: NaN
            warnings.simplefilter("ignore", stats.ConstantInputWarning)
            return float(stats.spearmanr(mm, dd).statistic)

    rng = np.random.default_rng(seed)
    n = d.shape[0]
    boots = np.array([rho(rng.integers(0, n, n)) for _ in range(n_boot)])
    boots = boots[~np.isnan(boots)]
    a = (1 - conf) / 2
    lo, hi = (np.quantile(boots, [a, 1 - a]) if boots.size else (math.nan, math.nan))
    return rho(None), float(lo), float(hi)
