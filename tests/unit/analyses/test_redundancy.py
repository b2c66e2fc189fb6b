"""analyses.redundancy: every measure beside the damage of deleting the same block or window,
on a tiny resnet20 and a tiny ViT; and its verdicts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ablate._infra.errors import UsageError
from ablate.data import Dataset
from ablate.interventions.variants import Variant, evaluate_naive
from ablate.models import checkpoint, create
from analyses import delete_block, redundancy
from analyses.redundancy import verdicts
from analyses.table import Table
from tests.helpers import randomise_bn


def _dataset(n: int = 24) -> Dataset:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    return Dataset(images, torch.arange(n) % 10, tuple(map(str, range(10))), "cifar10", "test",
                   "x")


@pytest.fixture(scope="module")
def resnet20():
    loaded = checkpoint.load("resnet20", allow_init=True)
    randomise_bn(loaded.model)
    return loaded


def test_measures_beside_the_damage_of_the_same_deletion(resnet20, tmp_path, capsys):
    ds = _dataset()
    path = tmp_path / "results.csv"
    df = redundancy.run(resnet20, ds, windows=(2, 4), n_boot=50, batch_size=8, progress=False,
                        table=Table(path, redundancy.KEY))
    counts = df.groupby(["measure", "n"]).size().to_dict()
    assert counts == {("block_influence", 1): 9, ("contribution_ratio", 1): 9,
                      ("angular_distance", 1): 9, ("angular_distance", 2): 8,
                      ("angular_distance", 4): 6,
                      # the rule: 2 of 7 shape-keeping blocks; lowest, oracle, 20 random sets
                      (redundancy.PRUNE_MEASURE, 2): 22}
    rule = df[df.measure == redundancy.PRUNE_MEASURE]
    assert rule.rule.tolist() == ["lowest", "oracle", *["random"] * 20]
    sets = [[int(i) for i in d.split()] for d in rule.deleted]
    assert all(len(x) == 2 and not {3, 6} & set(x) for x in sets)  # shape-keeping blocks only
    keep = df[(df.measure == "block_influence") & df.in_correlation.astype(bool)]
    assert sets[0] == sorted(keep.nsmallest(2, "value").block.tolist())
    assert sets[1] == sorted(keep.nsmallest(2, "error_change").block.tolist())
    ref = evaluate_naive(resnet20.model, ds.images, ds.labels,
                         [Variant(), Variant.deleting(sets[0])], mean=resnet20.mean,
                         std=resnet20.std, batch_size=8)
    assert rule.error_change.iloc[0] == pytest.approx(ref[1].error - ref[0].error)
    # blocks 3 and 6 downsample: no cosine, left out of the correlation, damage still measured
    df = df[df.measure != redundancy.PRUNE_MEASURE]
    bi = df[df.measure == "block_influence"].set_index("block")
    assert bi.index[~bi.in_correlation].tolist() == [3, 6] and bi.value[[3, 6]].isna().all()
    assert (bi.n_correlated == 7).all() and bi.rho_error.nunique() == 1
    w4 = df[(df.measure == "angular_distance") & (df.n == 4)]
    assert w4.in_correlation.tolist() == [False] * 6  # every 4-window of 9 holds block 3 or 6
    # single-block damage: what delete_block measures on the same images
    lesion = delete_block.run(resnet20, ds, batch_size=8, progress=False).set_index("block")
    assert np.allclose(bi.error_change, lesion.error_change)
    # a window's damage: deleting its blocks together, through the interventions
    w2 = df[(df.measure == "angular_distance") & (df.n == 2)].set_index("block")
    ref = evaluate_naive(resnet20.model, ds.images, ds.labels,
                         [Variant(), Variant.deleting([4, 5])], mean=resnet20.mean,
                         std=resnet20.std, batch_size=8)
    assert w2.error_change[4] == pytest.approx(ref[1].error - ref[0].error)
    assert w2.loss_change[4] == pytest.approx(float((ref[1].loss - ref[0].loss).mean()))
    # BI and the cosine-based angular distance of a block agree on its order of blocks
    ang1 = df[(df.measure == "angular_distance") & (df.n == 1)].set_index("block")
    ok = bi.in_correlation
    assert (np.argsort(bi.value[ok].to_numpy()) == np.argsort(ang1.value[ok].to_numpy())).all()
    capsys.readouterr()
    again = redundancy.run(resnet20, ds, windows=(2, 4), n_boot=50, batch_size=8,
                           progress=False, table=Table(path, redundancy.KEY))
    err = capsys.readouterr().err
    assert "reusing 41 of 41 rows" in err and "pruning rule: reusing 22 of 22 rows" in err
    again = again[again.measure != redundancy.PRUNE_MEASURE]
    assert np.allclose(again.value, df.value, equal_nan=True)
    assert again.error_change.tolist() == df.error_change.tolist()


def test_a_vit_and_refusals():
    torch.manual_seed(0)
    net = create("vit_cifar", num_layers=3, hidden_dim=32, num_heads=2, mlp_dim=64)
    torch.nn.init.normal_(net.heads.head.weight, std=0.5)
    loaded = checkpoint.Loaded(net, "vit_tiny", "vit_cifar", None, None, "init", (0.5,) * 3,
                               (0.25,) * 3, None)
    df = redundancy.run(loaded, _dataset(), windows=(2, 8), n_boot=20, batch_size=8,
                        progress=False)
    rule = df[df.measure == redundancy.PRUNE_MEASURE]
    assert rule.rule.tolist() == ["lowest", "oracle", "every", "every", "every"]  # 3 sets of 1
    df = df[df.measure != redundancy.PRUNE_MEASURE]
    assert df.in_correlation.all()  # no layer of a ViT changes shape
    assert sorted(df.n.unique()) == [1, 2] and (df.value > 0).all()  # window 8 > 3 layers
    plain = checkpoint.load("plain20", allow_init=True)
    with pytest.raises(UsageError, match="plain units"):
        redundancy.run(plain, _dataset(), progress=False)


def _table(model, n_units, rho_sign=1.0, window=1, prune=None, seed=0, noise=0.005):
    """Per-unit rows: a measure whose ranks follow the damage (or reverse it), and the rule's
    rows (lowest, oracle, random: their error changes) when ``prune`` is given."""
    rng = np.random.default_rng(seed)
    damage = np.sort(rng.uniform(0, 0.2, n_units))
    value = damage * rho_sign + rng.normal(0, noise, n_units)
    measure = "block_influence" if window == 1 else "angular_distance"
    rows = [{"model": model, "measure": measure, "n": window, "block": b, "value": v,
             "error_change": d, "in_correlation": True, "n_images": 1000}
            for b, (v, d) in enumerate(zip(value, damage))]
    for j, (rule, change) in enumerate(prune or []):
        rows.append({"model": model, "measure": redundancy.PRUNE_MEASURE, "n": 6, "block": j,
                     "rule": rule, "error_change": change, "in_correlation": False,
                     "n_images": 1000})
    return rows


def _verdicts(tmp_path, rows):
    d = tmp_path / "results" / "redundancy"
    d.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(d / "results.csv", index=False)
    return {(f.section, f.ours.split(":")[0]): f for f in verdicts(tmp_path)}


SHORTGPT, GROMOV = "Men et al. 2024 (ShortGPT)", "Gromov et al. 2024"
BEATS = [("lowest", 0.02), ("oracle", 0.01)] + [("random", 0.05 + 0.01 * j) for j in range(20)]
LOSES = [("lowest", 0.12), ("oracle", 0.01)] + [("random", 0.05 + 0.01 * j) for j in range(20)]


def test_verdicts_test_the_claim_over_blocks_and_the_rule(tmp_path):
    assert verdicts(tmp_path)[0].verdict == "not run"
    found = _verdicts(tmp_path / "a", _table("resnet56", 25, prune=BEATS))
    f = found[(SHORTGPT, "resnet56")]
    assert f.verdict == "extension: holds" and "permutation p" in f.ours
    assert "deleting the 6 lowest-BI blocks: +2.00 points" in f.ours
    assert "the 6 cheapest to delete alone (oracle): +1.00" in f.ours
    assert "over 20 random sets" in f.ours
    f = _verdicts(tmp_path / "b", _table("resnet56", 25, prune=LOSES))[(SHORTGPT, "resnet56")]
    assert f.verdict == "extension: partly"  # ranks the blocks, but the rule loses to chance
    f = _verdicts(tmp_path / "c", _table("resnet56", 25, -1.0, prune=LOSES))[(SHORTGPT,
                                                                              "resnet56")]
    assert f.verdict == "extension: does not hold"


def test_verdicts_a_vit_like_seven_unit_table(tmp_path):
    """7 blocks: the permutation test is exact (5040 orders); the rule among 7 single blocks
    cannot reach p < 0.05, so only the ranking is judged; 4 windows are too few to rank."""
    rows = _table("vit_cifar", 7) + _table("vit_cifar", 4, window=4)
    found = _verdicts(tmp_path, rows)
    f = found[(SHORTGPT, "vit_cifar")]
    assert "exact permutation" in f.ours and "the rule cannot be tested" in f.ours
    assert f.verdict == "extension: holds"
    g = found[(GROMOV, "vit_cifar")]
    assert g.verdict == "not run" and "fewer than 5, too few to rank" in g.ours
    assert "4-block window" in g.criterion
    bad = _verdicts(tmp_path / "b", _table("vit_cifar", 7, -1.0))[(SHORTGPT, "vit_cifar")]
    assert bad.verdict == "extension: does not hold"


def test_verdicts_windows(tmp_path):
    """25 windows: the closest one is also the cheapest (p = 1/25): both parts hold; with the
    distance reversed, neither does."""
    found = _verdicts(tmp_path / "a", _table("resnet56", 25, window=4, noise=0.0))
    g = found[(GROMOV, "resnet56")]
    assert g.verdict == "extension: holds" and "over 25 windows of 4 blocks" in g.ours
    assert "the cheapest (oracle)" in g.ours and "p = 0.04" in g.ours
    found = _verdicts(tmp_path / "b", _table("resnet56", 25, -1.0, window=4, noise=0.0))
    assert found[(GROMOV, "resnet56")].verdict == "extension: does not hold"
