"""Gradient norms through depth, and training curves from the trainer's logs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from ablate import models
from ablate.gradnorm import main
from ablate.models.blocks import blocks
from ablate.training_curves import main as curves_main
from analyses import gradnorm
from analyses import training_curves as tc


def _net(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    net = models.create(name)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return net.double().eval()


def _data(n: int = 4):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 10, (n,))


@pytest.mark.parametrize("name", ["resnet20", "plain20"])
def test_activation_gradients_match_hooks(name):
    net, (x, y) = _net(name), _data()
    act, _ = gradnorm.gradients(net, x, y)
    seen = []
    hooks = [u.module.register_forward_pre_hook(
        lambda m, a: (a[0].retain_grad(), seen.append(a[0]))[-1]) for u in blocks(net)]
    try:
        F.cross_entropy(net(x), y, reduction="sum").backward()
    finally:
        for h in hooks:
            h.remove()
    want = torch.stack([s.grad.flatten(1).norm(dim=1) for s in seen])
    assert act.shape == (len(blocks(net)), 4)
    assert torch.allclose(act, want, rtol=1e-10)


@pytest.mark.parametrize("name", ["resnet20", "plain20"])
def test_parameter_gradients_match_a_plain_backward(name):
    net, (x, y) = _net(name), _data()
    _, par = gradnorm.gradients(net, x, y)
    net.zero_grad()
    F.cross_entropy(net(x), y).backward()
    want = [np.sqrt(sum(float(p.grad.norm()) ** 2 for p in gradnorm.unit_parameters(net, u)))
            for u in blocks(net)]
    assert np.allclose(par.numpy(), want, rtol=1e-9)


def test_bn_train_uses_batch_statistics_and_restores_state():
    net, (x, y) = _net("resnet20"), _data()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    a_eval, _ = gradnorm.gradients(net, x, y)
    a_train, _ = gradnorm.gradients(net, x, y, bn="train")
    assert not torch.allclose(a_eval, a_train)
    assert not net.training
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_depths_and_seeded_init():
    assert gradnorm.depths(models.create("resnet20")) == list(range(1, 19, 2))
    assert gradnorm.depths(models.create("plain20")) == list(range(1, 19))

    class L:  # the parts of Loaded that init_twin reads
        model, arch, card = models.create("plain20"), "plain20", {}

    state = torch.random.get_rng_state()
    a, b = gradnorm.init_twin(L, 3), gradnorm.init_twin(L, 3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.conv1.weight, gradnorm.init_twin(L, 4).conv1.weight)


def test_command(tmp_path, image_folder, tiny_checkpoints, monkeypatch, capsys):
    out = tmp_path / "out"
    ck = tiny_checkpoints
    args = ["--model", "resnet20", "plain20", "--checkpoint", str(ck["resnet20"]),
            str(ck["plain20"]), "--data", str(image_folder), "--limit", "8", "--batch-size", "4",
            "--device", "cpu", "--out", str(out), "--states", "init", "trained"]
    assert main(args) == 0
    for f in ("results.csv", "meta.json", "gradnorm.pdf", "gradnorm.png"):
        assert (out / f).stat().st_size > 0
    df = pd.read_csv(out / "results.csv")
    assert len(df) == 2 * 2 * (9 + 18)  # states x kinds x units of resnet20 and plain20
    assert set(df.state) == {"init", "trained"} and set(df.kind) == {"activation", "parameters"}
    assert (df[df.kind == "activation"].n_values == 8).all()
    assert (df[df.kind == "parameters"].n_values == 2).all()
    assert (df.grad_norm > 0).all()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["bn"] == "auto" and meta["bn_by_state"] == {"init": "train", "trained": "eval"}
    assert meta["data"]["n_images"] == 8
    assert set(zip(df.state, df.bn)) == {("init", "train"), ("trained", "eval")}

    calls = []
    monkeypatch.setattr(gradnorm, "_measure", lambda *a, **k: calls.append(1) or [])
    assert main([*args, "--no-figure"]) == 0 and calls == []  # all rows reused

    with pytest.raises(SystemExit) as e:
        main(["--model", "resnet20", "--states", "trained", "--data", str(image_folder),
              "--device", "cpu", "--out", str(tmp_path / "x")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error:") and "no trained weights" in err[-1]


# --- training curves -----------------------------------------------------------------------------


def _log(path, lr, sd: float | None) -> None:
    ep = np.arange(1, len(lr) + 1)
    g = np.linspace(2e-3, 1e-4, len(lr)) * (1.5 if sd else 1.0)
    pd.DataFrame({
        "epoch": ep, "lr": lr, "train_loss": 1 / ep, "train_error": 0.5 / ep,
        "test_loss": 1.1 / ep, "test_error": 0.5 / ep + 0.05, "images_per_s": 1e3,
        "epoch_seconds": 9.0, "grad_norm_conv1": g * 10, "grad_mean_abs_first_block_conv1": g,
        "grad_norm_block_0": g, "grad_norm_block_1": g,
        # how each epoch ran, as the trainer logs it: not metrics
        "amp": "bf16", "channels_last": True, "device": "AMD EPYC",
    }).to_csv(path, index=False)
    card = {"arch": "resnet20", "name": path.name.removesuffix(".log.csv"),
            "stochastic_depth": None if sd is None else {"rule": "linear", "p_L": sd}}
    path.with_name(card["name"] + ".json").write_text(json.dumps(card))


def test_training_curves(tmp_path):
    step = [0.01, 0.1, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001]  # warm-up, then drops at 5 and 7
    _log(tmp_path / "const.log.csv", step, None)
    _log(tmp_path / "sd.log.csv", step, 0.5)
    df = tc.read_logs([tmp_path / "const.log.csv", tmp_path / "sd.log.csv"])
    assert set(df.columns) >= {"model", "family", "epoch", "metric", "value"}
    assert len(df) == 2 * 8 * 11 and pd.api.types.is_float_dtype(df["value"])
    assert dict(df.drop_duplicates("model")[["model", "family"]].values) == {
        "const": "resnet", "sd": "stochastic_depth"}
    first = df[(df.model == "sd") & (df.metric == tc.FIRST_CONV)].sort_values("epoch")
    assert first.value.iloc[0] == pytest.approx(3e-3)
    assert tc.lr_drops(df) == [5, 7]
    cosine = df.assign(value=np.where(df.metric == "lr", 0.1 * 0.9 ** df.epoch, df.value))
    assert tc.lr_drops(cosine) == []
    tail = 0.05 * (1 + np.cos(np.pi * (df.epoch - 1) / 8))  # a real cosine: its last steps fall 4x
    assert tc.lr_drops(df.assign(value=np.where(df.metric == "lr", tail, df.value))) == []

    out = tmp_path / "out"
    assert curves_main([str(tmp_path / "const.log.csv"), str(tmp_path / "sd.log.csv"),
                        "--out", str(out)]) == 0
    for f in ("results.csv", "meta.json", "training_curves.pdf", "training_curves.png"):
        assert (out / f).stat().st_size > 0
    assert json.loads((out / "meta.json").read_text())["lr_drop_epochs"] == [5, 7]
    with pytest.raises(SystemExit) as e:
        curves_main([str(tmp_path / "missing.log.csv"), "--out", str(out)])
    assert e.value.code == 2
