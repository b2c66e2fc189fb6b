"""Redundancy measures and paired statistics (tiny random models)."""

from __future__ import annotations

import numpy as np
import pytest

from ablate.interventions import delete
from ablate.measures.redundancy import rank_correlation, redundancy
from ablate.measures.stats import holm, paired_bootstrap
from tests.unit.models.test_transformers import inputs, make


@pytest.mark.parametrize("name", ["tv_vit", "gpt2"])
def test_identity_block_has_zero_influence(name):
    model, x = make(name), inputs(name)
    fwd = (lambda m, b: m(b, use_cache=False)) if name == "gpt2" else None
    with delete(model, [1]):
        r = redundancy(model, [x, x[:1]], forward=fwd, windows=(1, 2))
    assert r.influence.shape == (3, 3) and r.angular[2].shape == (3, 2)
    assert np.abs(r.influence[:, 1]).max() < 1e-12 and np.abs(r.ratio[:, 1]).max() < 1e-12
    assert np.abs(r.angular[1][:, 1]).max() < 1e-6
    assert (r.influence[:, [0, 2]] > 1e-4).all()
    # angular distance over one block is arccos(1 - BI) / pi
    np.testing.assert_allclose(r.angular[1], np.arccos(1 - r.influence) / np.pi, atol=1e-6)
    t = r.table()
    assert set(t.measure) == {"block_influence", "contribution_ratio", "angular_distance"}
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0


def test_rank_correlation():
    rng = np.random.default_rng(0)
    damage = rng.normal(size=(50, 6)) * 0.1 + np.arange(6)
    rho, lo, hi = rank_correlation(damage + rng.normal(size=(50, 6)) * 0.1, damage, n_boot=200)
    assert rho == pytest.approx(1.0) and lo <= rho <= hi
    rho, lo, hi = rank_correlation(-np.arange(6.0), damage, n_boot=200)
    assert rho == pytest.approx(-1.0)


def test_paired_bootstrap_and_holm():
    a, b = np.zeros(100), np.r_[np.ones(30), np.zeros(70)]
    d, lo, hi = paired_bootstrap(a, b, n_boot=500)
    assert d == pytest.approx(0.3) and lo < 0.3 < hi
    d2, lo2, hi2 = paired_bootstrap(a, b, n_boot=500, clusters=np.arange(100) // 10)
    assert d2 == pytest.approx(0.3) and hi2 - lo2 > hi - lo  # whole clusters: wider
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
