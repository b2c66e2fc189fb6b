"""Path statistics (Veit et al. 2016, section 5): counting, sampled path gradients, the command."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from ablate import models
from ablate.measures import paths as ps
from ablate.models import checkpoint
from ablate.models.blocks import Block, chain
from ablate.models.cifar_resnet import BasicBlock, CifarResNet
from ablate.paths import main
from analyses.paths import parse_ks

REPO = Path(__file__).resolve().parents[2]


# --- counting ------------------------------------------------------------------------------------


def test_length_distribution_is_binomial_and_counts_all_paths():
    for n in (1, 9, 54):
        pmf = ps.length_distribution(n)
        assert pmf.sum() == pytest.approx(1.0)
        assert np.allclose(pmf, stats.binom.pmf(np.arange(n + 1), n, 0.5))
    assert ps.path_counts(54).sum() == pytest.approx(2.0 ** 54)
    assert np.allclose(np.exp(ps.path_counts(54, log=True)), ps.path_counts(54), rtol=1e-10)
    # Veit et al.: lengths 19-35 of 54 hold about 98% of paths, 5-17 about 0.45%.
    pmf = ps.length_distribution(54)
    assert pmf[19:36].sum() == pytest.approx(0.98, abs=0.005)
    assert pmf[5:18].sum() == pytest.approx(0.0045, abs=0.0002)


def test_poisson_binomial():
    assert np.allclose(ps.poisson_binomial([0.5] * 9), ps.length_distribution(9))
    p = models.linear_survival(27, 0.5)
    pmf = ps.poisson_binomial(p)
    assert pmf.sum() == pytest.approx(1.0) and len(pmf) == 28
    assert (pmf * np.arange(28)).sum() == pytest.approx(sum(p))
    q = [0.9, 0.2, 0.6, 0.35]  # brute force over the 16 outcomes
    brute = np.zeros(5)
    for bits in itertools.product([0, 1], repeat=4):
        brute[sum(bits)] += math.prod(qi if b else 1 - qi for qi, b in zip(q, bits))
    assert np.allclose(ps.poisson_binomial(q), brute)


def test_effective_range_and_total_gradient():
    d = np.array([0.0, 0.05, 0.40, 0.50, 0.05, 0.0])
    r = ps.effective_range(d, 0.9)
    assert (r.lo, r.hi) == (2, 3) and r.mass == pytest.approx(0.9)
    assert r.paths == pytest.approx(ps.length_distribution(5)[2:4].sum())
    assert (ps.effective_range(d, 0.91).lo, ps.effective_range(d, 0.91).hi) in ((1, 3), (2, 4))
    assert ps.effective_range(d, 1.0).hi - ps.effective_range(d, 1.0).lo == 3
    # A magnitude halving per block turns comb(n, k) into Binomial(n, 1/3) once normalised.
    n = 54
    total = ps.total_gradient(ps.path_counts(n, log=True), 0.5 ** np.arange(n + 1))
    assert np.allclose(total, stats.binom.pmf(np.arange(n + 1), n, 1 / 3))
    assert np.allclose(ps.total_gradient(ps.path_counts(n, log=True), np.ones(n + 1)),
                       ps.length_distribution(n))
    slope, factor = ps.fit_slope(range(10), 3.0 * 0.7 ** np.arange(10))
    assert factor == pytest.approx(0.7) and slope == pytest.approx(math.log10(0.7))
    assert np.allclose(ps.log_interpolate([0, 4], [1.0, 16.0], 4), [1, 2, 4, 8, 16])


def test_parse_ks():
    assert parse_ks("all", 3) == [0, 1, 2, 3]
    assert parse_ks("2,4-5", 9) == [0, 2, 4, 5, 9]
    assert parse_ks("0-54:10", 54) == [0, 10, 20, 30, 40, 50, 54]


# --- sampled path gradients ----------------------------------------------------------------------


def _net(blocks_per_stage: int = 3, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = CifarResNet(BasicBlock, blocks_per_stage)
    for m in net.modules():  # non-trivial BN, so that nothing is accidentally homogeneous
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.bias.data.normal_(0, 0.2)
    return net.double().eval()


def _data(n: int = 3, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 10, (n,))


def _by_hand(net, x, y, keep: str) -> torch.Tensor:
    """Input gradient with every branch ("shortcut") or every shortcut ("branch") detached."""
    x = x.clone().requires_grad_(True)
    h = x
    for s in chain(net):
        if isinstance(s, Block):
            r, sc = s.residual(h), s.shortcut(h)
            h = s.post(r.detach() + sc if keep == "shortcut" else r + sc.detach())
        else:
            h = s(h)
    return torch.autograd.grad(F.cross_entropy(h, y, reduction="sum"), x)[0]


def _ordinary(net, x, y) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    return torch.autograd.grad(F.cross_entropy(net(x), y, reduction="sum"), x)[0]


def test_path_gradient_extremes_match_hand_computations():
    net, (x, y) = _net(), _data()
    n = 9
    gen = torch.Generator().manual_seed(0)
    ordinary = _ordinary(net, x, y)
    full = ps.path_gradient(net, x, y, n, 2, gen, single_path=False)["input"]
    assert torch.allclose(full, ordinary.flatten(1).norm(dim=1).expand(2, -1), rtol=1e-10)
    for k, keep in ((0, "shortcut"), (n, "branch")):
        want = _by_hand(net, x, y, keep)
        got = ps.masked_gradients(net, x, y, torch.full((3, n), bool(k)))["input"]
        assert torch.allclose(got, want, rtol=1e-10, atol=1e-14)
        norms = ps.path_gradient(net, x, y, k, 2, gen)["input"]
        assert torch.allclose(norms, want.flatten(1).norm(dim=1).expand(2, -1), rtol=1e-10)
    assert not net.training


def test_single_paths_sum_to_the_ordinary_gradient():
    net, (x, y) = _net(blocks_per_stage=2), _data(n=1)
    masks = torch.tensor(list(itertools.product([0, 1], repeat=6)), dtype=torch.bool)
    g = ps.masked_gradients(net, x.expand(64, -1, -1, -1), y.expand(64), masks)["input"]
    assert torch.allclose(g.sum(0), _ordinary(net, x, y)[0], rtol=1e-9, atol=1e-13)
    # The forward pass itself is untouched: same logits as the model.
    assert g.abs().sum() > 0


def test_batching_and_seeding():
    net, (x, y) = _net(blocks_per_stage=2), _data()
    run = lambda seed, rows: ps.path_gradient(  # noqa: E731
        net, x, y, 3, 4, torch.Generator().manual_seed(seed), at="stages", max_rows=rows)
    whole, one_by_one = run(5, 1000), run(5, 1)
    assert set(whole) == {"input", "stage1", "stage2", "stage3"}
    for key in whole:
        assert whole[key].shape == (4, 3)
        assert torch.allclose(whole[key], one_by_one[key], rtol=1e-12)
    assert torch.equal(run(5, 3)["input"], run(5, 3)["input"])
    assert not torch.allclose(run(6, 3)["input"], whole["input"])
    masks = ps.random_subsets(6, 2, 50, torch.Generator().manual_seed(0))
    assert (masks.sum(1) == 2).all() and masks.any(0).all()


# --- the command ---------------------------------------------------------------------------------


def test_command_writes_results_and_resumes(tmp_path, image_folder, tiny_checkpoints):
    torch.manual_seed(0)
    sd = checkpoint.save(models.create("resnet20", stochastic_depth=0.5), tmp_path / "resnet20-sd",
                         {"arch": "resnet20", "arch_kwargs": {"stochastic_depth": 0.5}})
    out = tmp_path / "out"
    args = ["--checkpoint", str(tiny_checkpoints["resnet20"]), str(sd), "--data",
            str(image_folder), "--limit", "4", "--samples", "2", "--device", "cpu", "--out",
            str(out)]
    assert main([*args, "--ks", "4"]) == 0
    df = pd.read_csv(out / "results.csv")
    for f in ("meta.json", "paths.pdf", "paths.png", "gradients.csv"):
        assert (out / f).stat().st_size > 0
    assert set(df.kind) == {"path_fraction", "gradient_magnitude", "total_gradient",
                            "active_depth"}
    assert set(df[df.kind == "active_depth"].model) == {"resnet20-sd"}
    for _, d in df[df.kind != "gradient_magnitude"].groupby(["model", "kind"]):
        assert d.value.sum() == pytest.approx(1.0) and len(d) == 10
    g = df[df.kind == "gradient_magnitude"]
    assert sorted(g[g.model == "resnet20"].k) == [0, 4, 9]
    assert (g.n_values == 8).all() and (g.low <= g.value).all() and (g.value <= g.high).all()
    meta = json.loads((out / "meta.json").read_text())
    assert "quoted" in meta["reference"]["source"]
    lo, hi = meta["summary"]["resnet20"]["effective_range"]
    assert 0 <= lo <= hi <= 9

    first = pd.read_csv(out / "gradients.csv")
    assert main([*args, "--ks", "2,4", "--no-figure"]) == 0
    again = pd.read_csv(out / "gradients.csv")
    assert len(again) == len(first) + 2  # only k = 2 was measured, for each model
    pd.testing.assert_frame_equal(again.iloc[:len(first)], first)


def test_plain_net_is_refused_in_one_line(tmp_path, tiny_checkpoints):
    r = subprocess.run(
        [sys.executable, "-m", "ablate.paths", "--model", "plain20", "--checkpoint",
         str(tiny_checkpoints["plain20"]), "--device", "cpu", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "single path" in lines[0]
