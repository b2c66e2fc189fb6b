"""Intervals and paired tests on per-image results: Wilson, Student t, exact McNemar."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats
from torch import Tensor

__all__ = ["mcnemar_exact", "mean_interval", "wilson_interval"]


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
