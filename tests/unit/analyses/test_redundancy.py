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
from analyses.table import Table
from analyses.redundancy import verdicts
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
                      ("angular_distance", 4): 6}
    # blocks 3 and 6 downsample: no cosine, left out of the correlation, damage still measured
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
    assert "reusing 41 of 41 rows" in capsys.readouterr().err
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
    assert df.in_correlation.all()  # no layer of a ViT changes shape
    assert sorted(df.n.unique()) == [1, 2] and (df.value > 0).all()  # window 8 > 3 layers
    plain = checkpoint.load("plain20", allow_init=True)
    with pytest.raises(UsageError, match="plain units"):
        redundancy.run(plain, _dataset(), progress=False)


def test_verdicts(tmp_path):
    assert verdicts(tmp_path)[0].verdict == "not run"
    rows = [{"model": m, "measure": meas, "n": n, "block": 0, "n_correlated": 25,
             "rho_error": rho, "rho_error_low": rho - 0.2, "rho_error_high": rho + 0.2,
             "rho_loss": rho, "rho_loss_low": rho - 0.1, "rho_loss_high": rho + 0.1,
             "n_images": 1000, "n_boot": 1000}
            for m, rho in (("resnet56", 0.5), ("vit_cifar", 0.1))
            for meas, n in (("block_influence", 1), ("angular_distance", 1),
                            ("angular_distance", 4))]
    (tmp_path / "results" / "redundancy").mkdir(parents=True)
    pd.DataFrame(rows).to_csv(tmp_path / "results" / "redundancy" / "results.csv", index=False)
    found = {(f.section, f.ours.split(":")[0]): f for f in verdicts(tmp_path)}
    assert found[("Men et al. 2024 (ShortGPT)", "resnet56")].verdict == "reproduces"
    assert found[("Men et al. 2024 (ShortGPT)", "vit_cifar")].verdict == "does not reproduce"
    gromov = found[("Gromov et al. 2024", "resnet56")]
    assert "over 25 windows of 4 blocks" in gromov.ours and "a 4-block window" in gromov.criterion
    assert len(found) == 4  # the longest window only
    rows[-1]["n_correlated"] = 0  # vit_cifar's 4-block windows all change shape (as resnet20's)
    pd.DataFrame(rows).to_csv(tmp_path / "results" / "redundancy" / "results.csv", index=False)
    found = {(f.section, f.ours.split(":")[0]): f for f in verdicts(tmp_path)}
    assert found[("Gromov et al. 2024", "vit_cifar")].verdict == "not run"
