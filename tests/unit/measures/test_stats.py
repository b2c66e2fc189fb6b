"""Intervals and tests added for the verdicts: clustered t interval, paired difference, TOST,
packed per-image bits; Holm and the clustered bootstrap come from here too."""

from __future__ import annotations

import numpy as np
import torch

from ablate.measures.stats import (
    cluster_mean_interval,
    discordant,
    exceeds_margin_p,
    holm,
    log_cluster_mean_interval,
    mcnemar_clustered,
    mcnemar_exact,
    mean_interval,
    pack_correct,
    paired_bootstrap,
    paired_difference,
    spearman_permutation,
    tost_equivalent,
    unpack_correct,
)


def test_cluster_interval_is_as_wide_as_the_images_not_the_repeats():
    rng = np.random.default_rng(0)
    per_image = rng.normal(size=50)
    values = np.repeat(per_image, 20) + rng.normal(scale=0.01, size=1000)  # 20 sets per image
    clusters = np.repeat(np.arange(50), 20)
    m, lo, hi = cluster_mean_interval(values, clusters)
    _, nlo, nhi = mean_interval(values)
    assert abs(m - values.mean()) < 1e-12
    assert (hi - lo) > 3 * (nhi - nlo)  # naive interval pretends 1000 independent values
    _, blo, bhi = paired_bootstrap(np.zeros(1000), values, clusters=clusters)
    assert 0.5 < (bhi - blo) / (hi - lo) < 2  # the clustered bootstrap agrees in width


def test_paired_difference_and_tost():
    d, lo, hi = paired_difference(30, 10, 1000)
    assert d == 0.02 and lo < 0.02 < hi and lo > 0
    _, lo0, hi0 = paired_difference(0, 0, 10000)
    assert lo0 < 0 < hi0 and hi0 - lo0 > 0  # never a zero-width interval
    assert tost_equivalent(3, 2, 10000, margin=0.01)
    assert not tost_equivalent(3, 2, 50, margin=0.01)  # too few images to show equivalence
    assert not tost_equivalent(300, 10, 10000, margin=0.01)  # a real 3-point change


def test_discordant_counts_and_packed_bits_round_trip():
    a = torch.tensor([1, 1, 0, 0, 1], dtype=torch.bool)
    b = torch.tensor([1, 0, 1, 0, 0], dtype=torch.bool)
    assert discordant(a, b) == (1, 2)  # only a wrong: image 2; only b wrong: images 1, 4
    bits = np.random.default_rng(1).random(1001) < 0.5
    assert np.array_equal(unpack_correct(pack_correct(bits), 1001), bits)


def test_holm_is_step_down():
    assert holm([0.01, 0.04, 0.03]) == [0.03, 0.06, 0.06]


def test_clustered_mcnemar_counts_clusters_not_their_copies():
    from scipy import stats

    rng = np.random.default_rng(0)
    a, b = rng.random(400) < 0.7, rng.random(400) < 0.6
    only_a, only_b = discordant(torch.from_numpy(a), torch.from_numpy(b))
    # clusters of one: McNemar's chi-square without continuity correction
    chi2 = (only_a - only_b) ** 2 / (only_a + only_b)
    assert np.isclose(mcnemar_clustered(a, b, np.arange(400)), stats.chi2.sf(chi2, 1))
    # every pair copied 8 times within its cluster: no new evidence, the same p; the per-example
    # exact test takes the copies for independent pairs and becomes far more confident
    a8, b8, c8 = np.repeat(a, 8), np.repeat(b, 8), np.repeat(np.arange(400), 8)
    assert np.isclose(mcnemar_clustered(a8, b8, c8), mcnemar_clustered(a, b, np.arange(400)))
    assert mcnemar_exact(torch.from_numpy(a8), torch.from_numpy(b8)) < \
        mcnemar_exact(torch.from_numpy(a), torch.from_numpy(b)) / 100
    assert mcnemar_clustered(a, a, np.arange(400)) == 1.0  # nothing discordant


def test_log_interval_stays_positive_where_the_linear_one_does_not():
    """A path's gradient norms spread as wide as their mean: the linear t interval reaches below
    zero (k = 30 of the committed table: -9.6e-24); on a log scale it cannot."""
    clusters = np.arange(1024) % 128
    v = np.where(clusters < 2, 1e-20, 1e-24)  # two images carry almost all of the mean
    m, lo, _hi = cluster_mean_interval(v, clusters)
    lm, llo, lhi = log_cluster_mean_interval(v, clusters)
    assert lo < 0 < llo < lm == m < lhi
    assert np.isclose(np.log(lm) - np.log(llo), np.log(lhi) - np.log(lm))  # symmetric in log


def test_permutation_test_over_units_is_exact_for_few_units():
    """Four units in the right order: 1 of 24 orders does as well, p = 1/24, the smallest
    possible; seven units, the ViT's Block Influence row: rho 0.39, p about 0.2."""
    r, p, exact = spearman_permutation([1, 2, 3, 4], [10, 20, 30, 40])
    assert (r, exact) == (1.0, True) and np.isclose(p, 1 / 24)
    r, p, exact = spearman_permutation([1, 2, 3, 4], [40, 30, 20, 10], alternative="less")
    assert r == -1.0 and np.isclose(p, 1 / 24)
    x = [0.1, 0.5, 0.2, 0.7, 0.3, 0.9, 0.4]
    y = [0.2, 0.1, 0.6, 0.3, 0.5, 0.4, 0.7]
    r, p, exact = spearman_permutation(x, y)
    perms = __import__("itertools").permutations(y)
    from scipy import stats

    null = [stats.spearmanr(x, q).statistic for q in perms]
    assert exact and np.isclose(p, np.mean(np.array(null) >= r - 1e-12))
    assert np.isnan(spearman_permutation([1, 2], [1, 2])[1])  # too few units


def test_permutation_test_monte_carlo_for_many_units():
    rng = np.random.default_rng(1)
    x = rng.normal(size=25)
    _r, p, exact = spearman_permutation(x, x + rng.normal(scale=3, size=25), n_perm=20_000)
    assert not exact and 0 < p < 1
    _, p_strong, _ = spearman_permutation(x, x, n_perm=20_000)
    assert np.isclose(p_strong, 1 / 20_001)  # nothing beats the perfect order: (1 + 0)/(1 + n)


def test_exceeds_margin_needs_more_than_the_margin():
    n = 10_000
    assert exceeds_margin_p(600, 0, n, 0.01) < 1e-6  # +6 points: beyond 1 point
    assert exceeds_margin_p(105, 0, n, 0.01) > 0.05  # +1.05 points: not shown beyond 1
    assert exceeds_margin_p(50, 0, n, 0.01) > 0.5  # significant harm, but within the margin

