"""captum block attributions against lesion damage."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from torch import nn

from ablate import data, models
from ablate.attribution import main
from ablate.models import checkpoint
from ablate.models.blocks import blocks
from analyses import attribution as at
from analyses.table import Table


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = models.create("resnet20")
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.bias.data.normal_(0, 0.2)
    return net.double().eval()


def _data(n: int = 2):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 10, (n,))


def _no_hooks(model: nn.Module) -> None:
    for name, m in model.named_modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
                     "_backward_pre_hooks"):
            assert not getattr(m, attr), f"{attr} left on {name or 'the model'}"
    from torch.nn.modules import module as mod

    assert not mod._global_forward_hooks and not mod._global_backward_hooks


def test_spearman():
    a = np.array([0.1, 0.5, 0.3, 0.9, 0.7])
    assert at.spearman(a, 2 * a + 1) == (pytest.approx(1.0), pytest.approx(0.0, abs=1e-6))
    assert at.spearman(a, -a)[0] == pytest.approx(-1.0)
    b = np.array([1.0, 3.0, 2.0, 2.0, 5.0])
    want = stats.spearmanr(a, b)
    assert at.spearman(a, b) == (pytest.approx(want.statistic), pytest.approx(want.pvalue))
    assert np.isnan(at.spearman(a, np.ones(5))[0])  # a constant side has no ranking
    assert at.spearman([*a, np.nan], [*b, 7.0])[0] == pytest.approx(want.statistic)


def test_gradient_x_activation_equals_hand_computation():
    net, (x, y) = _net(), _data()
    unit = blocks(net)[4]
    got_s, got_a = at.aggregate(at.attribute(net, [unit.module], x, y,
                                             "gradient_x_activation")[0])
    kept = []
    h = unit.module.register_forward_hook(lambda m, i, o: (o.retain_grad(), kept.append(o))[0])
    try:
        net(x).gather(1, y[:, None]).sum().backward()
    finally:
        h.remove()
    a = (kept[0] * kept[0].grad).flatten(1)
    assert np.allclose(got_s, a.sum(1).abs().detach().numpy(), rtol=1e-10)
    assert np.allclose(got_a, a.abs().sum(1).detach().numpy(), rtol=1e-10)
    _no_hooks(net)


def test_attributions_are_complete_over_a_block_output():
    """Every path crosses a block's output, so integrated gradients (and conductance, which
    converges more slowly in n_steps) over it sum to f(x) - f(baseline)."""
    net, (x, y) = _net(), _data()
    base = at.baseline_input("black", data.CIFAR10_MEAN, data.CIFAR10_STD, x)
    assert torch.allclose(base[0, :, 0, 0] * torch.tensor(data.CIFAR10_STD).double(),
                          -torch.tensor(data.CIFAR10_MEAN).double())
    layer = at.attribution_layer(net, blocks(net)[5], "block")
    attr = at.attribute(net, [layer], x, y, "integrated_gradients", baseline=base, n_steps=100)
    with torch.no_grad():
        gap = net(x).gather(1, y[:, None])[:, 0] - net(base).gather(1, y[:, None])[:, 0]
    assert np.allclose(attr[0].flatten(1).sum(1).numpy(), gap.numpy(), rtol=0.03)
    assert at.attribution_layer(net, blocks(net)[5], "branch") is blocks(net)[5].module.bn2
    _no_hooks(net)


def test_run_leaves_no_hooks_and_shares_lesion_rows(tmp_path, image_folder, tiny_checkpoints):
    loaded = checkpoint.load(checkpoint=tiny_checkpoints["resnet20"])
    ds = data.load(str(image_folder), "test").subset(4)
    lesion = Table(tmp_path / "delete_block.csv", at.deletion.KEY)
    for method in ("conductance", "integrated_gradients"):
        df = at.run(loaded, ds, method=method, n_steps=2, lesion_table=lesion, progress=False)
        assert len(df) == 9 and df.attr_abs.gt(0).all() and df.error_change.notna().all()
        _no_hooks(loaded.model)
    assert len(pd.read_csv(tmp_path / "delete_block.csv")) == 9  # measured once, then reused
    assert not loaded.model.training


def test_command(tmp_path, image_folder, tiny_checkpoints, capsys):
    out = tmp_path / "out"
    args = ["--model", "resnet20", "plain20", "--checkpoint", str(tiny_checkpoints["resnet20"]),
            str(tiny_checkpoints["plain20"]), "--data", str(image_folder), "--limit", "6",
            "--device", "cpu", "--out", str(out)]
    assert main([*args, "--method", "gradient_x_activation", "conductance", "--n-steps",
                 "2"]) == 0
    for f in ("results.csv", "delete_block.csv", "meta.json", "attribution.pdf",
              "attribution.png"):
        assert (out / f).stat().st_size > 0
    df = pd.read_csv(out / "results.csv")
    assert len(df) == 2 * (9 + 18)
    plain = df[df.model == "plain20"]
    assert plain.error_change.isna().sum() == 2 * 2  # two shape-changing units, two methods
    meta = json.loads((out / "meta.json").read_text())
    rho = [c for c in meta["spearman"] if c["model"] == "resnet20"]
    assert len(rho) == 2 * 4 and all(c["n_blocks"] == 9 for c in rho)
    assert "Spearman" in capsys.readouterr().out

    with pytest.raises(SystemExit) as e:
        main([*args, "--method", "saliency"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unknown --method")
