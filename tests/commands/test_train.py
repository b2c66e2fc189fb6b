"""ablate.train on the CPU with tiny synthetic data: schedule, stochastic depth, resume, DDP."""

from __future__ import annotations

import csv
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file
from torch import nn

from ablate import data as D
from ablate import models
from ablate._infra.errors import UsageError
from ablate.models import checkpoint
from ablate.models.blocks import set_module
from ablate.models.cifar_resnet import BasicBlock, CifarResNet, linear_survival
from ablate.train import main
from ablate.training import Recipe, TrainConfig, lr_at, make_recipe, train
from ablate.training.config import parse_stochastic_depth
from ablate.training.loop import augment

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ("a", "b", "c", "d")
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")


def synthetic(n: int, split: str, seed: int = 0, hw: int = 16) -> D.Dataset:
    """Four classes, each a colour plus noise: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % len(CLASSES)
    colours = torch.tensor([[200, 30, 30], [30, 200, 30], [30, 30, 200], [200, 200, 30]])
    x = colours.float()[y][:, :, None, None] + 40 * torch.randn(n, 3, hw, hw, generator=g)
    return D.Dataset(x.clamp(0, 255).to(torch.uint8), y, CLASSES, "synthetic", split, "test")


def read_log(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def tiny(out: Path, **kw) -> TrainConfig:
    base = {"model": "resnet20", "epochs": 2, "batch_size": 32, "lr": 0.05, "device": "cpu",
            "out": str(out), "progress": False}
    return TrainConfig(**(base | kw))


# --- learning-rate schedule --------------------------------------------------------------------


def test_he_warmup_returns_to_lr_and_steps_at_half_and_three_quarters():
    r = make_recipe("resnet110")  # auto warm-up: ResNet-110
    assert (r.epochs, r.lr, r.warmup_iters, r.nesterov) == (164, 0.1, 400, False)
    spe = 391
    assert lr_at(r, 0, spe) == lr_at(r, 399, spe) == 0.01
    assert lr_at(r, 400, spe) == 0.1  # back to 0.1 (akamaster's bug would keep 0.01)
    assert lr_at(r, 82 * spe - 1, spe) == 0.1
    assert lr_at(r, 82 * spe, spe) == pytest.approx(0.01)
    assert lr_at(r, 123 * spe - 1, spe) == pytest.approx(0.01)
    assert lr_at(r, 123 * spe, spe) == pytest.approx(0.001)
    assert make_recipe("resnet20").warmup_iters == 0
    assert make_recipe("plain20").warmup_iters == 400
    assert make_recipe("resnet20", warmup="on").warmup_iters == 400


def test_huang_schedule():
    r = make_recipe("resnet110", "huang")
    assert (r.epochs, r.nesterov, r.warmup_iters) == (500, True, 0)
    spe = 391
    assert lr_at(r, 0, spe) == 0.1
    assert lr_at(r, 250 * spe - 1, spe) == 0.1
    assert lr_at(r, 250 * spe, spe) == pytest.approx(0.01)
    assert lr_at(r, 375 * spe - 1, spe) == pytest.approx(0.01)
    assert lr_at(r, 375 * spe, spe) == pytest.approx(0.001)
    c = make_recipe("resnet20", "cosine", epochs=10)
    assert lr_at(c, 0, 100) == 0.1 and lr_at(c, 500, 100) == pytest.approx(0.05)
    assert lr_at(c, 1000, 100) == pytest.approx(0.0, abs=1e-12)


# --- stochastic depth --------------------------------------------------------------------------


def test_stochastic_depth_linear_rule():
    p = parse_stochastic_depth("linear:0.5")
    net = models.create("resnet110", stochastic_depth=p)
    s = [m.survival for m in net.modules() if isinstance(m, BasicBlock)]
    assert len(s) == 54
    assert s[0] == pytest.approx(1 - 0.5 / 54) and s[-1] == pytest.approx(0.5)
    assert sum(s) == pytest.approx((3 * 54 - 1) / 4) == pytest.approx(40.25)
    assert parse_stochastic_depth(None) is None and parse_stochastic_depth("off") is None
    for bad in ("linear:1.5", "linear:0", "0.5", "exp:0.5", "linear:"):
        with pytest.raises(UsageError):
            parse_stochastic_depth(bad)


def test_stochastic_depth_eval_scaling_and_training_gates():
    torch.manual_seed(0)
    net = CifarResNet(BasicBlock, 1, survival=linear_survival(3, 0.5))
    blk = net.layer2[0]
    x = torch.randn(2, 16, 8, 8)
    net.eval()
    with torch.no_grad():
        want = blk.post(blk.survival * blk.branch(x) + blk.shortcut(x))
        assert torch.equal(blk(x), want)
    # Batch mode: one gate per block per forward; count how often each branch runs.
    net.train()
    res = [net.layer1[0], net.layer2[0], net.layer3[0]]
    runs = [0, 0, 0]
    for i, m in enumerate(res):
        m.conv1.register_forward_hook(lambda *_a, i=i: runs.__setitem__(i, runs[i] + 1))
    draws = 1500
    with torch.no_grad():
        for _ in range(draws):
            net(torch.randn(1, 3, 8, 8))
    for m, k in zip(res, runs, strict=True):
        sigma = math.sqrt(m.survival * (1 - m.survival) / draws)
        assert abs(k / draws - m.survival) < 4 * sigma


# --- augmentation ------------------------------------------------------------------------------


def test_augment_crop_and_flip():
    x = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    no = torch.zeros(3, dtype=torch.bool)
    centre = torch.full((3, 2), 4)
    assert torch.equal(augment(x, centre, no, 4), x)
    assert torch.equal(augment(x, centre, ~no, 4), x.flip(3))
    shifted = augment(x, torch.tensor([[0, 8], [4, 4], [8, 0]]), no, 4)
    assert torch.equal(shifted[0, :, 4:, :4], x[0, :, :4, 4:])
    assert shifted[0, :, :4].eq(0).all() and shifted[0, :, :, 4:].eq(0).all()
    assert torch.equal(shifted[1], x[1])
    assert torch.equal(shifted[2, :, :4, 4:], x[2, :, 4:, :4])


# --- training, resume, checkpoint --------------------------------------------------------------


def test_training_lowers_loss_and_writes_checkpoint_card_log(tmp_path):
    w = train(tiny(tmp_path / "run", epochs=3), train_data=synthetic(128, "train"),
              test_data=synthetic(64, "test", 1))
    log = read_log(tmp_path / "run" / "log.csv")
    assert [r["epoch"] for r in log] == ["1", "2", "3"]
    assert float(log[-1]["train_loss"]) < 0.7 * float(log[0]["train_loss"])
    assert {"grad_norm_conv1", "grad_mean_abs_first_block_conv1", "grad_norm_block_8",
            "images_per_s", "test_error"} <= set(log[0])
    card = json.loads(w.with_suffix(".json").read_text())
    assert card["arch"] == "resnet20" and card["dataset"] == "synthetic"
    assert card["final_test_error"] == pytest.approx(float(log[-1]["test_error"]), abs=1e-5)
    assert any("epochs 3 instead of 164" in d for d in card["deviations"])
    assert any("Veit et al. 2016" in n for n in card["notes"])  # He's schedule: Veit's net
    assert (tmp_path / "run" / "resnet20.log.csv").exists()


def test_bf16_training_reports_fp32_test_error(tmp_path):
    """Autocast is for training steps: test passes and the card's final error are fp32."""
    from ablate.measures import evaluate

    test = synthetic(64, "test", 1)
    w = train(tiny(tmp_path / "run", epochs=1, amp="bf16"), train_data=synthetic(64, "train"),
              test_data=test)
    card = json.loads(w.with_suffix(".json").read_text())
    net = checkpoint.load(checkpoint=w).model
    fp32 = evaluate(net, test.images, test.labels, mean=D.CIFAR10_MEAN, std=D.CIFAR10_STD).error
    assert card["final_test_error"] == pytest.approx(fp32, abs=1e-9)
    assert card["precision_by_epochs"][0]["amp"] == "bf16"
    assert any(d.startswith("bf16 autocast instead of fp32 for training steps (epochs 1-1)")
               for d in card["deviations"])


def test_resume_is_bitwise_and_card_round_trips(tmp_path):
    tr, te = synthetic(64, "train"), synthetic(32, "test", 1)
    kw = {"stochastic_depth": "linear:0.5", "epochs": 2, "batch_size": 16}
    full = train(tiny(tmp_path / "full", **kw), train_data=tr, test_data=te)
    state = train(tiny(tmp_path / "cut", stop_after=1, **kw), train_data=tr, test_data=te)
    assert state.name == "last.pt" and not (tmp_path / "cut" / "resnet20-sd.safetensors").exists()
    st = torch.load(state, weights_only=True)
    assert st["epoch"] == 1 and len(st["log"]) == 1
    with pytest.raises(UsageError, match="already holds a run"):
        train(tiny(tmp_path / "cut", **kw), train_data=tr, test_data=te)
    resumed = train(tiny(tmp_path / "cut", resume=True, **kw), train_data=tr, test_data=te)
    a, b = load_file(str(full)), load_file(str(resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    la, lb = read_log(tmp_path / "full" / "log.csv"), read_log(tmp_path / "cut" / "log.csv")
    assert [r["train_loss"] for r in la] == [r["train_loss"] for r in lb]

    # The card rebuilds the stochastic-depth net: eval outputs equal the trained weights'.
    loaded = checkpoint.load(checkpoint=full)
    assert loaded.arch == "resnet20" and loaded.dataset == "synthetic"
    ref = models.create("resnet20", num_classes=4, stochastic_depth=0.5).eval()
    ref.load_state_dict(torch.load(tmp_path / "full" / "last.pt", weights_only=True)["model"])
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), ref(x))
    assert loaded.model.layer3[2].survival == pytest.approx(0.5)
    with pytest.raises(UsageError):
        checkpoint.load("resnet32", checkpoint=full)
    card = json.loads(full.with_suffix(".json").read_text())
    card["arch"] = "resnet32"
    full.with_suffix(".json").write_text(json.dumps(card))
    with pytest.raises(UsageError, match="does not fit"):
        checkpoint.load(checkpoint=full)


# --- DDP ---------------------------------------------------------------------------------------
# Batch norm is the one honest difference between DDP and one process on the whole batch: each
# rank normalises its own shard. To compare the rest exactly (sharding of every global batch,
# gradient averaging, the shared data order and the shared stochastic-depth gates), the compared
# net is an 8-layer CIFAR ResNet whose BN layers are replaced by identities.


def _nobn8(num_classes=10, option="A", stochastic_depth=None, sd_mode="batch") -> nn.Module:
    survival = None if stochastic_depth is None else linear_survival(3, stochastic_depth)
    net = CifarResNet(BasicBlock, 1, num_classes, option, survival, sd_mode)
    for name, m in list(net.named_modules()):
        if isinstance(m, nn.BatchNorm2d):
            set_module(net, name, nn.Identity())
    return net


def _ddp_worker(rank: int, world: int, port: int, config: TrainConfig, tr, te) -> None:
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    models._REGISTRY["nobn8"] = _nobn8
    train(config, train_data=tr, test_data=te)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_equals_one_process(tmp_path, monkeypatch):
    monkeypatch.setitem(models._REGISTRY, "nobn8", _nobn8)
    tr, te = synthetic(64, "train"), synthetic(16, "test", 1)
    kw = {"model": "nobn8", "epochs": 2, "batch_size": 16, "lr": 0.01,
          "stochastic_depth": "linear:0.5", "amp": "off"}  # spawned workers: no conftest
    one = train(tiny(tmp_path / "one", **kw), train_data=tr, test_data=te)
    cfg = tiny(tmp_path / "two", **kw)
    mp.spawn(_ddp_worker, args=(2, _free_port(), cfg, tr, te), nprocs=2, join=True)
    a, b = load_file(str(one)), load_file(str(tmp_path / "two" / "nobn8-sd.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6)
    card = json.loads((tmp_path / "two" / "nobn8-sd.json").read_text())
    assert card["world_size"] == 2


# --- CLI ---------------------------------------------------------------------------------------


def _image_folder(root: Path) -> Path:
    from torchvision.io import write_png

    for split, n, seed in (("train", 32, 0), ("test", 8, 1)):
        ds = synthetic(n, split, seed)
        for i, (img, y) in enumerate(zip(ds.images, ds.labels, strict=True)):
            d = root / split / CLASSES[int(y)]
            d.mkdir(parents=True, exist_ok=True)
            write_png(img, str(d / f"{i:04d}.png"))
    return root


def _run_cli(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"} | (env_extra or {})
    return subprocess.run([sys.executable, "-m", "ablate.train", *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=120)


def test_cli_trains_and_refuses_bad_input(tmp_path, capsys, monkeypatch):
    data = _image_folder(tmp_path / "data")
    out = tmp_path / "out"
    cache = str(tmp_path / "cache")
    r = _run_cli("--model", "resnet20", "--data", str(data), "--epochs", "1", "--batch-size",
                 "16", "--device", "cpu", "--out", str(out), "--cache-dir", cache,
                 "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "epoch 1/1" in r.stdout
    for f in ("resnet20.safetensors", "resnet20.json", "resnet20.log.csv", "log.csv", "last.pt"):
        assert (out / f).exists(), f
    card = json.loads((out / "resnet20.json").read_text())
    assert card["epochs"] == 1 and card["arch_kwargs"] == {"num_classes": 4}

    r = _run_cli("--model", "resnet21", "--data", str(data))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and "did you mean" in r.stderr

    base = ["--data", str(data), "--device", "cpu", "--cache-dir", cache, "--no-progress",
            "--epochs", "1", "--batch-size", "16"]
    bad = [
        (["--model", "resnet18", *base], "ImageNet model"),
        (["--model", "resnet20", "--device", "cpu"], "--data PATH"),
        (["--model", "resnet20", "--data", "bundled"], "test-only"),
        (["--model", "resnet20", "--data", str(tmp_path / "nope"), "--device", "cpu"],
         "does not exist"),
        (["--model", "resnet20", "--stochastic-depth", "linear:2", *base], "linear:P"),
        (["--model", "resnet20", "--resume", "--out", str(tmp_path / "empty"), *base],
         "no last.pt"),
        (["--model", "resnet32", "--resume", "--out", str(out), *base], "run of resnet20"),
        (["--model", "resnet20", "--out", str(out), *base], "already holds a run"),
        (["--model", "resnet20", "--epochs", "x"], "invalid int value"),
    ]
    if not torch.cuda.is_available():
        bad.append((["--model", "resnet20", *base, "--device", "cuda"], "no CUDA device"))
    for argv, msg in bad:
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2, argv
        assert msg in err and err.startswith("error:") and err.count("\n") == 1, (argv, err)


def test_recipe_defaults_are_he_et_al():
    r = Recipe()
    assert (r.epochs, r.batch_size, r.lr, r.momentum, r.weight_decay, r.milestones) == (
        164, 128, 0.1, 0.9, 1e-4, (0.5, 0.75))
