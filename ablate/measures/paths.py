"""Paths through a residual network (Veit et al. 2016, section 5).

A network of n residual blocks unrolls into 2^n paths; a path's length is the number of residual
branches it passes through, so lengths follow Binomial(n, 1/2). Veit et al. measure the gradient
carried by paths of length k: an ordinary forward pass, then a backward pass in which k randomly
chosen blocks pass gradient only through their residual branch and the other n - k only through
their shortcut, so exactly one path of length k carries gradient to the input. The total
gradient per length is then (number of paths) x (magnitude per path).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import special, stats
from torch import Tensor, nn

from ablate._infra.errors import UsageError
from ablate.models.blocks import Block, Glue, chain, restore_flags, train_flags

__all__ = [
    "Range",
    "effective_range",
    "fit_slope",
    "length_distribution",
    "log_interpolate",
    "masked_gradients",
    "path_counts",
    "path_gradient",
    "poisson_binomial",
    "random_subsets",
    "residual_blocks",
    "total_gradient",
]


# ---------------------------------------------------------------------------------------------
# Counting paths


def length_distribution(n: int) -> np.ndarray:
    """Fraction of the 2^n paths of each length 0..n: the Binomial(n, 1/2) pmf."""
    return stats.binom.pmf(np.arange(n + 1), n, 0.5)


def poisson_binomial(ps: Sequence[float]) -> np.ndarray:
    """Distribution of the number of active blocks when block l survives with probability
    ``ps[l]`` independently (stochastic depth): exact convolution, lengths 0..len(ps)."""
    pmf = np.ones(1)
    for p in ps:
        pmf = np.convolve(pmf, [1.0 - p, p])
    return pmf


def path_counts(n: int, log: bool = False) -> np.ndarray:
    """Number of paths of each length 0..n, comb(n, k), as floats (or natural logs)."""
    k = np.arange(n + 1)
    if log:
        return special.gammaln(n + 1) - special.gammaln(k + 1) - special.gammaln(n - k + 1)
    return special.comb(n, k)


def log_interpolate(ks: Sequence[int], values: Sequence[float], n: int) -> np.ndarray:
    """Values at lengths 0..n, interpolated linearly in log space between the positive measured
    ``ks`` (held constant beyond them); lengths measured as exactly zero stay zero."""
    ks, v = np.asarray(ks, dtype=int), np.asarray(values, dtype=float)
    pos = v > 0
    if not pos.any():
        return np.zeros(n + 1)
    order = np.argsort(ks[pos])
    out = np.exp(np.interp(np.arange(n + 1), ks[pos][order], np.log(v[pos][order])))
    out[ks[~pos]] = 0.0
    return out


def total_gradient(log_counts: np.ndarray, magnitude: np.ndarray) -> np.ndarray:
    """(number of paths) x (gradient magnitude per path) for each length, normalised to sum to
    one; computed in log space (2^54 paths overflow nothing here)."""
    with np.errstate(divide="ignore"):
        logt = np.asarray(log_counts, dtype=float) + np.log(np.asarray(magnitude, dtype=float))
    finite = np.isfinite(logt)
    if not finite.any():
        raise ValueError("every gradient magnitude is zero: no total gradient to distribute")
    out = np.zeros_like(logt)
    out[finite] = np.exp(logt[finite] - special.logsumexp(logt[finite]))
    return out


@dataclass(frozen=True)
class Range:
    """Lengths ``lo..hi`` (inclusive) holding ``mass`` of a distribution and ``paths`` of all
    paths."""

    lo: int
    hi: int
    mass: float
    paths: float

    def __str__(self) -> str:
        return (f"lengths {self.lo}-{self.hi} hold {self.mass:.1%} of the gradient and "
                f"{self.paths:.3%} of all paths")


def effective_range(dist: np.ndarray, mass: float = 0.9, paths: np.ndarray | None = None) -> Range:
    """The shortest contiguous range of lengths holding at least ``mass`` of ``dist`` (ties:
    the one holding more); ``paths`` (default Binomial(n, 1/2)) gives its share of all paths."""
    d = np.asarray(dist, dtype=float)
    d = d / d.sum()
    if not 0 < mass <= 1:
        raise ValueError(f"mass must be in (0, 1], not {mass}")
    cum = np.concatenate([[0.0], np.cumsum(d)])
    # For each start, the first end whose prefix sum reaches the target (tolerant to rounding).
    ends = np.searchsorted(cum, cum[:-1] + mass - 1e-12, side="left")
    ok = ends < len(cum)
    starts = np.flatnonzero(ok)
    widths = ends[ok] - starts
    held = cum[ends[ok]] - cum[starts]
    best = np.lexsort((-held, widths))[0]
    lo, hi = int(starts[best]), int(ends[ok][best]) - 1
    p = length_distribution(len(d) - 1) if paths is None else np.asarray(paths, dtype=float)
    return Range(lo, hi, float(held[best]), float(p[lo:hi + 1].sum()))


def fit_slope(ks: Sequence[int], magnitude: Sequence[float]) -> tuple[float, float]:
    """Least-squares slope of log10(magnitude) against length: (slope per block, factor per
    block = 10^slope). Non-positive magnitudes are left out."""
    k, m = np.asarray(ks, dtype=float), np.asarray(magnitude, dtype=float)
    keep = np.isfinite(m) & (m > 0)
    if keep.sum() < 2:
        return (float("nan"), float("nan"))
    slope = float(np.polyfit(k[keep], np.log10(m[keep]), 1)[0])
    return (slope, 10.0 ** slope)


# ---------------------------------------------------------------------------------------------
# Gradients along sampled paths


def residual_blocks(model: nn.Module) -> list[Block]:
    """The residual blocks of ``model``; a UsageError for a net without any (one path only)."""
    res = [s for s in chain(model) if isinstance(s, Block) and s.kind == "residual"]
    if not res:
        raise UsageError(
            f"{type(model).__name__} has no residual blocks, so it has a single path: "
            "path statistics need a ResNet"
        )
    return res


def random_subsets(n: int, k: int, rows: int, generator: torch.Generator) -> Tensor:
    """``rows`` independent uniformly random k-subsets of n blocks, as a bool mask [rows, n]."""
    if not 0 <= k <= n:
        raise UsageError(f"path length {k} is out of range: this model has 0..{n} blocks")
    ranks = torch.rand(rows, n, generator=generator).argsort(1).argsort(1)
    return ranks < k


def _stage_key(b: Block) -> str:
    return f"stage{b.stage}"


def masked_gradients(
    model: nn.Module, x: Tensor, y: Tensor, masks: Tensor, *, single_path: bool = True,
    at: str = "input",
) -> dict[str, Tensor]:
    """Loss gradients at the input (and, with ``at="stages"``, at each stage's input) when row i
    passes gradient through the residual branch of block j only where ``masks[i, j]``.

    The forward pass is the ordinary one (eval mode). With ``single_path`` (Veit et al.) a block
    passes gradient either through its branch (mask 1) or its shortcut (mask 0), so each row's
    gradient is that of one path; otherwise masked blocks pass it through both (the subnetwork of
    the chosen blocks; all ones give the ordinary gradient). The loss is summed over rows, so
    each row's gradient is its own. Returns tensors shaped like the taps, one row per mask row.
    """
    if at not in ("input", "stages"):
        raise ValueError(f"at must be 'input' or 'stages', not {at!r}")
    flags = train_flags(model)
    model.eval()
    try:
        x = x.detach().requires_grad_(True)
        taps: dict[str, Tensor] = {"input": x}
        h, j = x, 0
        for step in chain(model):
            if isinstance(step, Glue) or step.kind != "residual":
                h = step(h)
                continue
            if at == "stages" and _stage_key(step) not in taps:
                taps[_stage_key(step)] = h
            m = masks[:, j].to(h.dtype).view(-1, *([1] * (h.dim() - 1)))
            r, s = step.residual(h), step.shortcut(h)
            # Same forward values; the gradient passes r only where m = 1 (and s where m = 0).
            r = r.detach() + m * (r - r.detach())
            if single_path:
                s = s.detach() + (1 - m) * (s - s.detach())
            h = step.post(r + s)
            j += 1
        if j != masks.shape[1]:
            raise ValueError(f"masks have {masks.shape[1]} columns for {j} residual blocks")
        loss = F.cross_entropy(h, y, reduction="sum")
        grads = torch.autograd.grad(loss, list(taps.values()), allow_unused=True)
        return {k: torch.zeros_like(t) if g is None else g
                for (k, t), g in zip(taps.items(), grads)}
    finally:
        restore_flags(flags)


def path_gradient(
    model: nn.Module, x: Tensor, y: Tensor, k: int, samples: int,
    generator: torch.Generator, *, at: str = "input", single_path: bool = True,
    max_rows: int = 1024,
) -> dict[str, Tensor]:
    """L2 norms of the loss gradient carried by random paths of length ``k``: for each of
    ``samples`` sets and each image its own random k-subset of blocks; norms [samples, B] per tap
    ("input", and "stage1".. with ``at="stages"``).

    The image batch is repeated ``samples`` times along the batch dimension and run in chunks of
    at most ``max_rows`` rows, one backward pass per chunk; chunking does not change the result.
    Norms are float64, accumulated there (a float32 norm of ~1e-24 elements underflows to 0).
    """
    n = len(residual_blocks(model))
    b = x.shape[0]
    masks = random_subsets(n, k, samples * b, generator).to(x.device)
    xs, ys = x.repeat(samples, *([1] * (x.dim() - 1))), y.repeat(samples)
    parts: dict[str, list[Tensor]] = {}
    for i in range(0, xs.shape[0], max_rows):
        g = masked_gradients(model, xs[i:i + max_rows], ys[i:i + max_rows],
                             masks[i:i + max_rows], single_path=single_path, at=at)
        for key, v in g.items():
            # float64 before squaring: in float32 the squares of ~1e-24 elements underflow to 0
            parts.setdefault(key, []).append(v.flatten(1).double().norm(dim=1))
    return {key: torch.cat(v).view(samples, b) for key, v in parts.items()}
