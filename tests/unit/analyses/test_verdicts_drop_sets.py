"""Fig. 5a's sets on a net with few blocks: every set is measured once where there are at most
--samples of them (a 7-block ViT drew block 2 three times at k = 1 and never blocks 1 or 6), and
rows drawn at random before are replaced, in the table file too."""

from __future__ import annotations

import pandas as pd
import torch

from ablate.data import Dataset
from ablate.interventions.variants import Variant, evaluate_naive
from ablate.models import checkpoint, create
from analyses import drop_blocks
from analyses.table import Table


def _vit() -> checkpoint.Loaded:
    torch.manual_seed(0)
    net = create("vit_cifar", num_layers=3, hidden_dim=32, num_heads=2, mlp_dim=64)
    torch.nn.init.normal_(net.heads.head.weight, std=0.5)
    return checkpoint.Loaded(net, "vit_tiny", "vit_cifar", None, None, "init", (0.5,) * 3,
                             (0.25,) * 3, None)


def _dataset(n: int = 12) -> Dataset:
    g = torch.Generator().manual_seed(0)
    return Dataset(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                   torch.arange(n) % 10, tuple(map(str, range(10))), "cifar10", "test", "x")


def test_every_set_once_and_stale_draws_replaced(tmp_path, capsys):
    loaded, ds = _vit(), _dataset()
    path = tmp_path / "results.csv"
    table = Table(path, drop_blocks.KEY, text=("deleted", "deleted_names"))
    # the table as the old code left it: 8 random draws at k = 1 (repeats included)
    fresh = drop_blocks.run(loaded, ds, max_k=1, samples=8, table=Table(None, drop_blocks.KEY),
                            progress=False)
    one = fresh[fresh.k == 1].iloc[[0] * 8].assign(sample=range(8),
                                                    deleted=[str((i + 1) % 3) for i in range(8)])
    table.add(pd.concat([fresh[fresh.k == 0], one]).to_dict("records"))
    assert len(pd.read_csv(path)) == 9
    df = drop_blocks.run(loaded, ds, max_k=3, samples=8, table=Table(
        path, drop_blocks.KEY, text=("deleted", "deleted_names")), progress=False)
    assert "drawn at random before the sets of their k were enumerated" in capsys.readouterr().err
    df = df.assign(deleted=df.deleted.map(drop_blocks._as_set_string))
    got = df.groupby("k").deleted.apply(list).to_dict()
    assert got == {0: [""], 1: ["0", "1", "2"], 2: ["0 1", "0 2", "1 2"], 3: ["0 1 2"]}
    disk = pd.read_csv(path, dtype={"deleted": str}, keep_default_na=False)
    assert sorted(disk.deleted) == sorted(d for v in got.values() for d in v)  # no stale row
    ref = evaluate_naive(loaded.model, ds.images, ds.labels,
                         [Variant.deleting([int(i) for i in s.split()]) for s in df.deleted],
                         mean=loaded.mean, std=loaded.std, batch_size=8)
    assert df.errors.tolist() == [o.errors for o in ref]
    capsys.readouterr()
    again = drop_blocks.run(loaded, ds, max_k=3, samples=8, table=Table(
        path, drop_blocks.KEY, text=("deleted", "deleted_names")), progress=False)
    assert "reusing 8 of 8 rows" in capsys.readouterr().err
    assert again.deleted.map(drop_blocks._as_set_string).tolist() == df.deleted.tolist()
