"""Issue 11: hostile input to every command is one line with exit status 2, never a traceback,
never a wrong number with exit 0, and never an empty --out folder."""

from __future__ import annotations

import json
import math
import shutil

import pandas as pd
import pytest
import torch
from torch import nn

from ablate import data as D
from ablate import (
    delete_block,
    drop_blocks,
    gradnorm,
    paths,
    reorder_blocks,
    reproduce,
    train,
    training_curves,
)
from ablate._infra.errors import UsageError
from ablate.interventions import delete, scale
from ablate.measures import evaluate
from ablate.models import checkpoint
from ablate.models.blocks import blocks
from ablate.training import TrainConfig
from ablate.training import train as train_fn


def _exit_2(main, argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2, (argv, err)
    assert err and err[-1].startswith("error:") and "Traceback" not in "\n".join(err), err
    return err[-1]


def _base(tmp_path, ck, *extra):
    return ["--model", "resnet20", "--checkpoint", str(ck["resnet20"]), "--limit", "8",
            "--device", "cpu", "--no-figure", "--out", str(tmp_path / "out"), *extra]


@pytest.mark.parametrize("extra, msg", [
    (["--device", "foo"], "unknown --device"),
    (["--device", "meta"], "unsupported --device"),
    (["--seed", "-1"], "must be 0 or more"),
    (["--blocks", "3-1"], "empty range"),
    (["--bogus"], "unrecognized arguments"),
    (["--limit", "x"], "invalid int value"),
])
def test_bad_flags_are_one_line_and_leave_no_out_folder(tmp_path, tiny_checkpoints, capsys,
                                                        extra, msg):
    err = _exit_2(delete_block.main, _base(tmp_path, tiny_checkpoints, *extra), capsys)
    assert msg in err
    assert not (tmp_path / "out").exists()  # meta.json is not written first


@pytest.mark.parametrize("main", [drop_blocks.main, reorder_blocks.main])
def test_negative_seed_refused(tmp_path, tiny_checkpoints, capsys, main):
    assert "must be 0 or more" in _exit_2(main, _base(tmp_path, tiny_checkpoints, "--seed", "-1"),
                                          capsys)


def test_checkpoint_a_folder(tmp_path, capsys):
    err = _exit_2(delete_block.main, ["--model", "resnet20", "--checkpoint", str(tmp_path),
                                      "--out", str(tmp_path / "o")], capsys)
    assert "is a folder" in err


@pytest.mark.parametrize("main", [delete_block.main, drop_blocks.main, reorder_blocks.main,
                                  paths.main, gradnorm.main])
def test_out_an_existing_file_or_below_one(tmp_path, tiny_checkpoints, capsys, main):
    f = tmp_path / "file"
    f.write_text("x")
    for out, msg in ((f, "existing file"), (f / "sub", "is a file")):
        argv = _base(tmp_path, tiny_checkpoints)
        argv[argv.index("--out") + 1] = str(out)
        assert msg in _exit_2(main, argv, capsys)


def test_out_refused_by_train_training_curves_reproduce(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert "existing file" in _exit_2(train.main, ["--model", "resnet20", "--out", str(f)], capsys)
    log = tmp_path / "r.log.csv"
    log.write_text("epoch,lr\n1,0.1\n")
    assert "existing file" in _exit_2(training_curves.main, [str(log), "--out", str(f)], capsys)
    assert "is a file" in _exit_2(reproduce.main, ["--out", str(f / "x")], capsys)
    assert "unrecognized" in _exit_2(reproduce.main, ["--bogus"], capsys)


def test_training_curves_a_folder_or_non_numeric_epoch(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    out = ["--out", str(tmp_path / "o"), "--no-figure"]
    assert "folder" in _exit_2(training_curves.main, [str(run), *out], capsys)
    log = tmp_path / "x.log.csv"
    log.write_text("epoch,lr\none,0.1\n2,0.1\n")
    assert "epoch" in _exit_2(training_curves.main, [str(log), *out], capsys)
    (run / "log.csv").write_text("epoch,lr,test_error\n1,0.1,0.5\n2,0.01,0.4\n")
    assert training_curves.main([str(run), *out]) == 0  # a run folder: its log.csv


def test_training_curves_keeps_other_models_and_refuses_another_table(tmp_path, capsys):
    out = tmp_path / "o"
    logs = []
    for name in ("a", "b"):
        p = tmp_path / f"{name}.log.csv"
        p.write_text("epoch,lr\n1,0.1\n2,0.01\n")
        logs.append(p)
    assert training_curves.main([str(logs[0]), "--out", str(out), "--no-figure"]) == 0
    assert training_curves.main([str(logs[1]), "--out", str(out), "--no-figure"]) == 0
    assert set(pd.read_csv(out / "results.csv").model) == {"a", "b"}
    (out / "results.csv").write_text("model,block,error\nresnet20,0,0.5\n")
    err = _exit_2(training_curves.main, [str(logs[0]), "--out", str(out), "--no-figure"], capsys)
    assert "not a results table of this command" in err


def test_paths_keeps_other_models_rows(tmp_path, tiny_checkpoints):
    out = tmp_path / "out"
    common = ["--limit", "4", "--samples", "1", "--ks", "0", "--device", "cpu", "--no-figure",
              "--out", str(out)]
    assert paths.main(["--model", "resnet20", "--checkpoint", str(tiny_checkpoints["resnet20"]),
                       *common]) == 0
    assert paths.main(["--model", "resnet32", *common]) == 0
    assert set(pd.read_csv(out / "results.csv").model) == {"resnet20", "resnet32"}


def test_gradnorm_batch_size_zero(tmp_path, tiny_checkpoints, capsys):
    err = _exit_2(gradnorm.main, _base(tmp_path, tiny_checkpoints, "--batch-size", "0"), capsys)
    assert "--batch-size must be at least 1" in err


@pytest.mark.parametrize("card, msg", [
    ("{not json", "not readable JSON"),
    ("[1, 2]", "JSON list"),
    ('{"arch": "resnet20", "arch_kwargs": {"bogus": 1}}', "does not take"),
    ('{"arch": "resnet20", "arch_kwargs": [1]}', "must be a JSON object"),
])
def test_broken_cards(tmp_path, tiny_checkpoints, capsys, card, msg):
    ck = tmp_path / "m.safetensors"
    shutil.copy(tiny_checkpoints["resnet20"], ck)
    ck.with_suffix(".json").write_text(card)
    err = _exit_2(delete_block.main, ["--checkpoint", str(ck), "--out", str(tmp_path / "o"),
                                      "--device", "cpu"], capsys)
    assert msg in err


def test_class_count_mismatch(tmp_path, tiny_checkpoints, capsys):
    from torchvision.io import write_png

    for n in (1, 9):
        root = tmp_path / f"c{n}"
        for c in range(n):
            (root / f"k{c}").mkdir(parents=True)
            write_png(torch.zeros(3, 32, 32, dtype=torch.uint8), str(root / f"k{c}" / "a.png"))
        argv = _base(tmp_path, tiny_checkpoints, "--data", str(root))
        assert f"has {n} classes" in _exit_2(delete_block.main, argv, capsys)


def _synthetic(n, classes, split):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=g)
    return D.Dataset(x, torch.arange(n) % len(classes), classes, "synthetic", split, "t")


def test_train_refuses_one_class_and_stops_on_a_non_finite_loss(tmp_path):
    cfg = {"model": "resnet20", "epochs": 1, "batch_size": 16, "device": "cpu",
           "progress": False}
    with pytest.raises(UsageError, match="at least two"):
        train_fn(TrainConfig(**cfg, out=str(tmp_path / "a")),
                 train_data=_synthetic(32, ("a",), "train"),
                 test_data=_synthetic(8, ("a",), "test"))
    for lr in (math.inf, math.nan):
        with pytest.raises(UsageError, match="positive finite"):
            TrainConfig(**cfg, lr=lr).validate()
    with pytest.raises(UsageError, match="training diverged"):
        train_fn(TrainConfig(**cfg, lr=1e30, out=str(tmp_path / "b")),
                 train_data=_synthetic(32, ("a", "b"), "train"),
                 test_data=_synthetic(8, ("a", "b"), "test"))
    assert not (tmp_path / "b" / "resnet20.safetensors").exists()


def test_train_cli_lr_inf_one_line(tmp_path, capsys):
    err = _exit_2(train.main, ["--model", "resnet20", "--lr", "inf", "--data", str(tmp_path)],
                  capsys)
    assert "--lr" in err


def test_evaluate_restores_each_modules_own_flag():
    net = checkpoint.load("resnet20", allow_init=True).model
    net.train()
    frozen = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)][:3]
    for m in frozen:
        m.eval()
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    norm = {"mean": D.CIFAR10_MEAN, "std": D.CIFAR10_STD}
    evaluate(net, x, torch.zeros(4, dtype=torch.long), batch_size=4, **norm)
    assert net.training and not any(m.training for m in frozen)
    from ablate.interventions import Variant, evaluate_variants

    evaluate_variants(net, x, torch.zeros(4, dtype=torch.long), [Variant.deleting(1)],
                      batch_size=4, **norm)
    assert net.training and not any(m.training for m in frozen)


def test_family_mismatch_refused_or_warned(tmp_path, capsys):
    from ablate import models

    plain = models.create("plain20")
    sd = tmp_path / "w.pt"  # a bare state dict: nothing says the family
    torch.save(plain.state_dict(), sd)
    checkpoint.load("resnet20", sd)
    assert "WARNING: nothing says" in capsys.readouterr().err
    th = tmp_path / "w.th"  # the standard format, not a published file: warned too
    torch.save({"state_dict": plain.state_dict(), "best_prec1": 90.0}, th)
    checkpoint.load("resnet20", th)
    assert "WARNING: nothing says" in capsys.readouterr().err
    ours = tmp_path / "r.safetensors"  # a card that says the family: refused
    checkpoint.save(plain, ours, {"arch": "plain20", "family": "resnet"})
    with pytest.raises(UsageError, match="holds resnet weights"):
        checkpoint.load("plain20", ours)
    checkpoint.save(plain, ours, {"arch": "plain20", "family": "plain"})
    checkpoint.load("plain20", ours)
    assert "WARNING" not in capsys.readouterr().err
    from ablate.models.weights import WEIGHTS  # a published file's sha says its family

    assert checkpoint._origin_family({}, WEIGHTS["plain20"].sha256) == "plain"
    assert checkpoint._origin_family({}, WEIGHTS["resnet20"].sha256) == "resnet"


@pytest.mark.parametrize("edit", ["delete", "scale"])
def test_forward_hooks_on_a_block_fire_inside_edits(edit):
    net = checkpoint.load("resnet20", allow_init=True).model
    block = blocks(net)[1].module
    seen = []
    block.register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
    x = torch.randn(2, 3, 32, 32)
    ctx = delete(net, [1]) if edit == "delete" else scale(net, {1: 0.5})
    with ctx, torch.no_grad():
        net(x)
    assert len(seen) == 1
    with torch.no_grad():
        net(x)
    assert len(seen) == 2 and not torch.equal(seen[0], seen[1])  # the edited output, then not
    assert len(block._forward_hooks) == 1  # the block keeps exactly its own hook


def test_meta_json_records_the_data_fingerprint(tmp_path, tiny_checkpoints):
    out = tmp_path / "out"
    assert delete_block.main(_base(tmp_path, tiny_checkpoints, "--blocks", "1,1")) == 0
    df = pd.read_csv(out / "results.csv")
    assert df.block.tolist() == [1]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["data"]["sha256"] == df.data_sha256.iloc[0]


@pytest.mark.parametrize("main", [delete_block.main, reproduce.main, training_curves.main,
                                  train.main])
def test_help_states_each_default_once(main, capsys):
    """--help gives a default where it says something, and never twice ("(default: X)" after
    help that already states it), nor for flags that are simply off or unset."""
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in out and "(default: False)" not in out
    for line in out.split(" --"):
        assert line.count("default") <= 1, line
