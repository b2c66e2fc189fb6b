"""delete_block, drop_blocks and reorder_blocks end to end on a tiny randomly initialised
vit_cifar checkpoint, each table equal to the naive loop through the interventions."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from ablate import data, models
from ablate import delete_block as delete_cli
from ablate import drop_blocks as drop_cli
from ablate import reorder_blocks as reorder_cli
from ablate.interventions.variants import Variant, evaluate_naive
from ablate.models import checkpoint

ARCH_KWARGS = {"num_layers": 4, "hidden_dim": 32, "num_heads": 2, "mlp_dim": 64}


@pytest.fixture(scope="module")
def vit_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    net = models.create("vit_cifar", **ARCH_KWARGS)
    torch.nn.init.normal_(net.heads.head.weight, std=0.5)  # torchvision's head starts at zero
    return checkpoint.save(net, tmp_path_factory.mktemp("vit") / "vit_tiny", {
        "arch": "vit_cifar", "arch_kwargs": ARCH_KWARGS, "dataset": "synthetic",
        "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3},
    })


def naive(ckpt, src, variants):
    ds = data.load(str(src), "test")
    m = checkpoint.load(checkpoint=ckpt)
    return evaluate_naive(m.model, ds.images, ds.labels, variants, mean=m.mean, std=m.std,
                          batch_size=8)


def common(ckpt, src, out, *extra):
    return ["--model", "vit_tiny", "--checkpoint", str(ckpt), "--data", str(src), "--out",
            str(out), "--device", "cpu", "--batch-size", "8", *extra]


def test_delete_block(tmp_path, cifar_batches, vit_ckpt):
    out = tmp_path / "del"
    assert delete_cli.main(common(vit_ckpt, cifar_batches, out)) == 0
    df = pd.read_csv(out / "results.csv")
    assert df.block.tolist() == [0, 1, 2, 3] and (df.family == "vit").all()
    assert df.block_name.tolist() == [f"encoder.layers.encoder_layer_{i}" for i in range(4)]
    assert not df.downsample.any()
    ref = naive(vit_ckpt, cifar_batches, [Variant()] + [Variant.deleting(i) for i in range(4)])
    assert df.errors.tolist() == [o.errors for o in ref[1:]]
    assert (df.intact_error == ref[0].error).all()
    assert df.loss.tolist() == pytest.approx([float(o.loss.double().mean()) for o in ref[1:]])
    assert (out / "delete_block.png").stat().st_size > 0
    assert json.loads((out / "meta.json").read_text())["models"][0]["arch"] == "vit_cifar"


def test_delete_branches(tmp_path, cifar_batches, vit_ckpt, tiny_checkpoints, capsys):
    """--branches adds one row per attention and MLP branch, each the intervention's own
    outcome, beside the whole-block rows it keeps reusing; a net without branches refuses."""
    from ablate.interventions import delete
    from ablate.measures import evaluate

    out = tmp_path / "del"
    assert delete_cli.main(common(vit_ckpt, cifar_batches, out)) == 0
    capsys.readouterr()
    assert delete_cli.main(common(vit_ckpt, cifar_batches, out, "--branches")) == 0
    assert "reusing 4 of 4 rows" in capsys.readouterr().err  # the whole blocks are not rerun
    df = pd.read_csv(out / "results.csv")
    whole, single = df[df.granularity == "block"], df[df.granularity == "branch"]
    assert whole.block.tolist() == [0, 1, 2, 3] and single.block.tolist() == list(range(8))
    assert single.layer.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert single.branch.tolist() == ["attn", "mlp"] * 4
    assert single.block_name.iloc[1] == "encoder.layers.encoder_layer_0.mlp"
    ds, m = data.load(str(cifar_batches), "test"), checkpoint.load(checkpoint=vit_ckpt)
    for i in (0, 5):
        with delete(m.model, [i], granularity="branch"):
            o = evaluate(m.model, ds.images, ds.labels, mean=m.mean, std=m.std, batch_size=8)
        assert single.errors.iloc[i] == o.errors
    assert (single.intact_error == whole.intact_error.iloc[0]).all()
    assert (single.errors != whole.errors.iloc[0]).any()
    assert (out / "delete_block.png").stat().st_size > 0
    with pytest.raises(SystemExit) as e:
        delete_cli.main(["--model", "resnet20", "--checkpoint", str(tiny_checkpoints["resnet20"]),
                         "--data", str(cifar_batches), "--out", str(tmp_path / "r"),
                         "--branches"])
    assert e.value.code == 2 and "none of resnet20 is a transformer" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_drop_blocks(tmp_path, cifar_batches, vit_ckpt):
    out = tmp_path / "drop"
    assert drop_cli.main(common(vit_ckpt, cifar_batches, out, "--samples", "2",
                                "--no-figure")) == 0
    df = pd.read_csv(out / "results.csv", dtype={"deleted": str}, keep_default_na=False)
    assert sorted(df.k.unique()) == [0, 1, 2, 3, 4] and len(df) == 1 + 2 * 3 + 1
    sets = [[int(i) for i in s.split()] for s in df.deleted]
    ref = naive(vit_ckpt, cifar_batches, [Variant.deleting(s) for s in sets])
    assert df.errors.tolist() == [o.errors for o in ref]


def test_reorder_blocks(tmp_path, cifar_batches, vit_ckpt):
    out = tmp_path / "reorder"
    assert reorder_cli.main(common(vit_ckpt, cifar_batches, out, "--samples", "2",
                                   "--max-swaps", "3")) == 0
    df = pd.read_csv(out / "results.csv")
    assert len(df) == 1 + 2 * 3 and (out / "reorder_blocks.png").stat().st_size > 0
    orders = [[int(i) for i in s.split()] for s in df.order]
    assert any(o[0] != 0 for o in orders)  # every layer may move, the first one too
    ref = naive(vit_ckpt, cifar_batches, [Variant.reordered(o) for o in orders])
    assert df.errors.tolist() == [o.errors for o in ref]
