"""analyses.degradation on tiny models: one row per network, paired contrasts on the same images."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ablate import data
from ablate.measures import evaluate, mcnemar_exact
from ablate.measures.stats import pack_correct
from ablate.models import checkpoint
from analyses import degradation
from analyses.table import Table


def test_run_measures_once_and_resumes(cifar_batches, tiny_checkpoints, tmp_path):
    ds = data.load(str(cifar_batches), "test")
    m = checkpoint.load(checkpoint=tiny_checkpoints["resnet20"])
    table = Table(tmp_path / "t.csv", degradation.KEY)
    df = degradation.run(m, ds, table=table, batch_size=7, progress=False)
    ref = evaluate(m.model, ds.images, ds.labels, mean=m.mean, std=m.std)
    assert len(df) == 1 and df.depth.iloc[0] == 20 and df.errors.iloc[0] == ref.errors
    assert df.error_low.iloc[0] <= df.error.iloc[0] <= df.error_high.iloc[0]
    again = degradation.run(m, ds, table=Table(tmp_path / "t.csv", degradation.KEY),
                            progress=False)
    assert again.correct.tolist() == df.correct.tolist()


def _row(model, family, depth, wrong, n=100):
    c = np.ones(n, bool)
    c[list(wrong)] = False
    return {"model": model, "family": family, "depth": depth, "n_images": n, "data_sha256": "x",
            "error": 1 - c.mean(), "correct": pack_correct(c)}


def test_compare_pairs_the_same_images():
    df = pd.DataFrame([_row("plain20", "plain", 20, range(10)),
                       _row("plain56", "plain", 56, range(5, 40)),
                       _row("resnet20", "resnet", 20, range(8)),
                       _row("resnet56", "resnet", 56, range(3))])
    c = degradation.compare(df).set_index("contrast", append=True)
    assert len(c) == 4
    plain = degradation.compare(df).query("contrast == 'plain: deepest vs shallowest'").iloc[0]
    assert (plain.a, plain.b) == ("plain56", "plain20")
    assert plain.only_a_wrong == 30 and plain.only_b_wrong == 5
    assert plain.difference == pytest.approx(0.25) and plain.difference_low > 0
    import torch

    a = torch.ones(100, dtype=torch.bool)
    a[5:40] = False
    b = torch.ones(100, dtype=torch.bool)
    b[:10] = False
    assert plain.p_value == pytest.approx(mcnemar_exact(a, b))
    at56 = degradation.compare(df).query("contrast == 'plain vs resnet' and depth == 56").iloc[0]
    assert (at56.a, at56.b) == ("plain56", "resnet56") and at56.difference == pytest.approx(0.32)


def test_compare_refuses_mixed_data():
    df = pd.DataFrame([_row("plain20", "plain", 20, []), _row("resnet20", "resnet", 20, [])])
    df.loc[1, "data_sha256"] = "y"
    with pytest.raises(ValueError, match="mixes data sets"):
        degradation.compare(df)
