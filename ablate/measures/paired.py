"""Paired statistics: bootstrap intervals on paired differences, Holm's step-down correction."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["paired_bootstrap", "holm"]


def paired_bootstrap(
    a: np.ndarray,
    b: np.ndarray,
    n_boot: int = 2000,
    conf: float = 0.95,
    seed: int = 0,
    clusters: np.ndarray | None = None,
) -> tuple[float, float, float]:
    """Mean of ``b - a`` over paired examples with a percentile bootstrap interval.

    ``clusters`` (one id per example, e.g. the sequence a token belongs to) resamples whole
    clusters, for examples that are not independent. Returns (mean difference, low, high).
    """
    diff = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    if diff.size == 0:
        return (math.nan, math.nan, math.nan)
    rng = np.random.default_rng(seed)
    if clusters is None:
        idx = rng.integers(0, diff.size, (n_boot, diff.size))
        boots = diff[idx].mean(1)
    else:
        ids, inv = np.unique(np.asarray(clusters), return_inverse=True)
        sums = np.bincount(inv, weights=diff, minlength=ids.size)
        counts = np.bincount(inv, minlength=ids.size).astype(np.float64)
        pick = rng.integers(0, ids.size, (n_boot, ids.size))
        boots = sums[pick].sum(1) / counts[pick].sum(1)
    alpha = (1 - conf) / 2
    lo, hi = np.quantile(boots, [alpha, 1 - alpha])
    return float(diff.mean()), float(lo), float(hi)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error), in the input's order."""
    p = np.asarray(pvalues, dtype=np.float64)
    m = p.size
    order = np.argsort(p, kind="stable")
    adj = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adj[i] = running
    return adj.tolist()
