"""Intervals and paired tests on per-image results: Wilson, Student t (plain and clustered, also
on a log scale), exact McNemar and its form for clustered examples, the paired difference of two
error rates and its equivalence test (TOST), the paired bootstrap (optionally by cluster), Holm's
correction, and a permutation test of a rank correlation over units (blocks, windows), exact
where the units are few."""

from __future__ import annotations

import base64
import itertools
import math
from collections.abc import Sequence

import numpy as np
from scipy import stats
from torch import Tensor

__all__ = [
    "cluster_mean_interval", "discordant", "exceeds_margin_p", "holm", "log_cluster_mean_interval",
    "mcnemar_clustered", "mcnemar_exact", "mean_interval", "pack_correct", "paired_bootstrap",
    "paired_difference", "spearman_permutation", "tost_equivalent", "unpack_correct",
    "wilson_interval",
]


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


def mcnemar_clustered(correct_a: np.ndarray, correct_b: np.ndarray,
                      clusters: np.ndarray) -> float:
    """McNemar's test for paired outcomes that come in clusters (tokens of one sequence), after
    Durkalski et al. 2003 (*Stat. Med.* 22:2417): ``(sum_k d_k)^2 / sum_k d_k^2`` against
    chi-square(1), where ``d_k`` is cluster k's count of "only a correct" minus "only b correct".

    Correlated examples within a cluster widen the test the way they widen reality; with
    clusters of one it is McNemar's chi-square without continuity correction. p is 1.0 when no
    pair is discordant.
    """
    a = np.asarray(correct_a).astype(bool)
    b = np.asarray(correct_b).astype(bool)
    _, inv = np.unique(np.asarray(clusters), return_inverse=True)
    d = np.bincount(inv, weights=(a & ~b).astype(np.float64)) - np.bincount(
        inv, weights=(~a & b).astype(np.float64))
    denom = float((d * d).sum())
    if denom == 0.0:
        return 1.0
    return float(stats.chi2.sf(float(d.sum()) ** 2 / denom, 1))


def cluster_mean_interval(
    values: np.ndarray, clusters: np.ndarray, conf: float = 0.95
) -> tuple[float, float, float]:
    """Mean with a Student-t interval over clusters: (mean, low, high).

    For values that repeat a unit (several sampled sets per image): the clusters' means are the
    independent observations, so the interval's width comes from the number of clusters, not of
    values. With equal cluster sizes the mean equals the plain mean.
    """
    v = np.asarray(values, dtype=np.float64)
    ids, inv = np.unique(np.asarray(clusters), return_inverse=True)
    if v.size == 0:
        return (math.nan, math.nan, math.nan)
    sums = np.bincount(inv, weights=v, minlength=ids.size)
    counts = np.bincount(inv, minlength=ids.size)
    per = sums / counts
    m = float(v.mean())
    if ids.size < 2:
        return (m, math.nan, math.nan)
    half = float(stats.t.ppf(0.5 + conf / 2, ids.size - 1) * per.std(ddof=1) / math.sqrt(ids.size))
    return (m, m - half, m + half)


def log_cluster_mean_interval(
    values: np.ndarray, clusters: np.ndarray, conf: float = 0.95
) -> tuple[float, float, float]:
    """:func:`cluster_mean_interval` built on a log scale (delta method): the mean m with
    ``m * exp(-/+ t * se / m)``, never at or below zero for a positive mean.

    For magnitudes spanning many orders (a path's gradient): the linear t interval of a mean
    whose spread is as large as the mean reaches below zero, which no magnitude can. (NaN bounds
    for a non-positive mean or a single cluster.)"""
    m, lo, hi = cluster_mean_interval(values, clusters, conf)
    if not (m > 0) or math.isnan(lo):
        return (m, math.nan, math.nan)
    rel = (hi - m) / m  # t * se / m
    return (m, m * math.exp(-rel), m * math.exp(rel))


def paired_difference(
    only_a: int, only_b: int, n: int, conf: float = 0.95
) -> tuple[float, float, float]:
    """Difference of two error rates on the same n images, with an Agresti-Min interval.

    ``only_a``: images that only condition A gets wrong; ``only_b``: only B. Returns (error_A -
    error_B, low, high). Agresti and Min (2005) add 1/2 to each cell, which keeps the interval
    from collapsing to a point when there are no discordant images.
    """
    if n <= 0:
        return (math.nan, math.nan, math.nan)
    d = (only_a - only_b) / n
    a, b, m = only_a + 0.5, only_b + 0.5, n + 2
    da = (a - b) / m
    se = math.sqrt(max((a + b) - (a - b) ** 2 / m, 0.0)) / m
    z = stats.norm.ppf(0.5 + conf / 2)
    return (d, da - z * se, da + z * se)


def exceeds_margin_p(only_a: int, only_b: int, n: int, margin: float) -> float:
    """One-sided p-value of "error_A - error_B > ``margin``" on the same n images (H0: at most
    the margin), from the Agresti-Min estimate and standard error of :func:`paired_difference`:
    a small p shows A worse than B by more than the margin, not merely worse."""
    if n <= 0:
        return math.nan
    a, b, m = only_a + 0.5, only_b + 0.5, n + 2
    se = math.sqrt(max((a + b) - (a - b) ** 2 / m, 0.0)) / m
    return float(stats.norm.sf(((a - b) / m - margin) / se)) if se > 0 else math.nan


def tost_equivalent(
    only_a: int, only_b: int, n: int, margin: float, alpha: float = 0.05
) -> bool:
    """Two one-sided tests: is |error_A - error_B| < ``margin`` at level ``alpha``?

    Equivalent to the (1 - 2 alpha) paired interval lying inside (-margin, margin): equivalence
    is shown by a narrow interval, never by a non-significant difference.
    """
    _, lo, hi = paired_difference(only_a, only_b, n, conf=1 - 2 * alpha)
    return bool(-margin < lo and hi < margin)


def discordant(correct_a: Tensor, correct_b: Tensor) -> tuple[int, int]:
    """(images only A gets wrong, images only B gets wrong) of two conditions on the same images."""
    a, b = correct_a.bool(), correct_b.bool()
    return int((~a & b).sum()), int((a & ~b).sum())


def pack_correct(correct: Tensor | np.ndarray) -> str:
    """Per-image correctness as compact text for a table cell (base64 of the packed bits)."""
    bits = np.packbits(np.asarray(correct, dtype=bool))
    return "b" + base64.b64encode(bits.tobytes()).decode("ascii")  # "b": never read as a number


def unpack_correct(text: str, n: int) -> np.ndarray:
    """Inverse of :func:`pack_correct` for ``n`` images."""
    bits = np.frombuffer(base64.b64decode(str(text)[1:]), dtype=np.uint8)
    return np.unpackbits(bits)[:n].astype(bool)



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


def spearman_permutation(
    x: Sequence[float], y: Sequence[float], *, alternative: str = "greater",
    n_perm: int = 100_000, seed: int = 0,
) -> tuple[float, float, bool]:
    """Spearman's rho of ``x`` and ``y`` (one value per unit, e.g. per block) and its
    permutation p-value over the units: (rho, p, exact).

    The units are what is permuted: ``y`` is reassigned to the units in every order (exact, when
    there are at most ``n_perm`` orders, i.e. up to 8 units) or in ``n_perm`` random orders
    (p = (1 + hits) / (1 + n_perm)). ``alternative``: "greater" (rho > 0), "less" or
    "two-sided" (|rho|). NaN when fewer than 3 units or either side is constant."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    n = a.size
    if n < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return (math.nan, math.nan, False)
    if alternative not in ("greater", "less", "two-sided"):
        raise ValueError(f"alternative must be greater, less or two-sided, not {alternative!r}")
    ra, rb = stats.rankdata(a), stats.rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    norm = math.sqrt(float((ra * ra).sum()) * float((rb * rb).sum()))

    def stat(r: np.ndarray) -> np.ndarray:  # rho for each row of permuted ranks of y
        return (r @ ra) / norm

    rho = float(stat(rb[None, :])[0])
    exact = math.factorial(n) <= n_perm
    if exact:
        perms = np.array(list(itertools.permutations(range(n))))
        null = stat(rb[perms])
    else:
        rng = np.random.default_rng(seed)
        null = np.concatenate([stat(rb[rng.permuted(np.tile(np.arange(n), (c, 1)), axis=1)])
                               for c in _chunks(n_perm, 10_000)])
    eps = 1e-12  # ties of rho with itself under rounding count as hits
    hits = {"greater": null >= rho - eps, "less": null <= rho + eps,
            "two-sided": np.abs(null) >= abs(rho) - eps}[alternative]
    p = float(hits.mean()) if exact else float((1 + hits.sum()) / (1 + n_perm))
    return (rho, p, exact)


def _chunks(total: int, size: int) -> list[int]:
    return [min(size, total - i) for i in range(0, total, size)]
