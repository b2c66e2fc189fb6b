"""Lesions during training (training.lesion): schedule, evaluation set, rows equal to a separate
delete_block sweep on the same weights, resume without lost or doubled rows, cost logged."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from ablate._infra.errors import UsageError
from ablate.data import CIFAR10_MEAN, CIFAR10_STD
from ablate.models import checkpoint
from ablate.training import TrainConfig, make_recipe, train
from ablate.training import lesion as L
from analyses import delete_block
from tests.commands.test_train import synthetic

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")


def config(out: Path, **kw) -> TrainConfig:
    base = {"model": "resnet20", "epochs": 3, "batch_size": 32, "lr": 0.05, "device": "cpu",
            "out": str(out), "progress": False, "lesion_at": "0,1,3", "lesion_images": 40}
    return TrainConfig(**(base | kw))


DATA = {"train_data": synthetic(96, "train"), "test_data": synthetic(64, "test", seed=1)}


def table(out: Path) -> list[dict]:
    return L.read_table(out / L.TABLE)


def test_schedule_words():
    he = make_recipe("resnet110")
    assert L.parse_lesion_at("1,2,5", he) == (1, 2, 5)
    assert L.parse_lesion_at("drops", he) == (82, 83, 123, 124)  # either side of each drop
    assert L.parse_lesion_at("every:50,last", he) == (0, 50, 100, 150, 164)
    auto = L.parse_lesion_at("auto", he)
    assert {0, 1, 2, 3, 82, 83, 123, 124, 164} <= set(auto) and len(auto) < 35
    assert L.parse_lesion_at(None, he) == L.parse_lesion_at("none", he) == ()
    assert L.parse_lesion_at("drops", make_recipe("resnet20", "cosine")) == ()
    assert L.parse_lesion_at("0,500", he) == (0,)  # beyond the run: nothing to measure
    for bad in ("every:0", "x", "1;2"):
        with pytest.raises(UsageError, match="--lesion-at"):
            L.parse_lesion_at(bad, he)


def test_lesion_set_is_class_balanced_and_fixed():
    labels = torch.tensor([0, 1, 1, 2, 0, 2, 1, 0, 2, 2])
    assert L.lesion_set(labels, 6).tolist() == [0, 1, 2, 3, 4, 5]  # first two of each class
    assert L.lesion_set(labels, 3).tolist() == [0, 1, 3]
    with pytest.raises(UsageError, match="fewer than one image per class"):
        L.lesion_set(labels, 2)


def test_rows_equal_a_separate_delete_block_sweep(tmp_path):
    """The hook's rows at the last epoch are the delete_block command's on the final weights."""
    train(config(tmp_path), **DATA)
    rows = [r for r in table(tmp_path) if r["epoch"] == 3]
    loaded = checkpoint.load(checkpoint=tmp_path / "resnet20.safetensors")
    ds = DATA["test_data"]
    idx = L.lesion_set(ds.labels, 40)
    sub = dataclasses.replace(ds, images=ds.images[idx], labels=ds.labels[idx])
    ref = delete_block.run(loaded, sub, progress=False).sort_values("block")
    assert [r["block"] for r in rows] == ref["block"].tolist() == list(range(9))
    for r, (_, f) in zip(rows, ref.iterrows(), strict=True):
        assert r["error"] == f["error"] and r["error_change"] == f["error_change"]
        assert (r["n_broken"], r["n_fixed"]) == (f["n_broken"], f["n_fixed"])
        assert (r["change_low"], r["change_high"]) == (f["change_low"], f["change_high"])
        assert r["p_value"] == f["p_value"] and r["intact_error"] == f["intact_error"]
        assert r["loss"] == pytest.approx(f["loss"], rel=1e-6)
    assert all(r["n_images"] == 40 for r in rows)


def test_resume_neither_loses_nor_doubles_rows(tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    train(config(whole), **DATA)
    train(config(cut, stop_after=1), **DATA)
    assert sorted({r["epoch"] for r in table(cut)}) == [0, 1]
    # A crash after the table but before last.pt: the table holds epoch 3 rows from a lost future
    stale = [dict(r, epoch=3) for r in table(cut) if r["epoch"] == 1]
    L.write_table(cut / L.TABLE, table(cut) + stale)
    train(config(cut, resume=True), **DATA)
    a, b = table(whole), table(cut)
    assert [(r["epoch"], r["block"]) for r in b] == [(r["epoch"], r["block"]) for r in a]
    drop = ("seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in a] == \
           [{k: v for k, v in r.items() if k not in drop} for r in b]  # bitwise resume on a CPU


def test_missing_epoch_is_measured_on_resume(tmp_path):
    """last.pt written, table not: the resumed weights are that epoch's, so it is measured."""
    train(config(tmp_path, stop_after=1), **DATA)
    before = table(tmp_path)
    L.write_table(tmp_path / L.TABLE, [r for r in before if r["epoch"] == 0])
    train(config(tmp_path, resume=True, stop_after=2), **DATA)
    after = [r for r in table(tmp_path) if r["epoch"] <= 1]
    assert [(r["epoch"], r["block"], r["error"]) for r in after] == \
           [(r["epoch"], r["block"], r["error"]) for r in before]


def test_cost_is_logged_and_carded(tmp_path):
    train(config(tmp_path), **DATA)
    with open(tmp_path / "log.csv") as f:
        log = list(csv.DictReader(f))
    secs = {int(r["epoch"]): float(r["lesion_seconds"]) for r in log}
    assert secs[2] == 0.0 and secs[1] > 0 and secs[3] > 0
    card = json.loads((tmp_path / "resnet20.json").read_text())["lesions"]
    assert card["epochs"] == [0, 1, 3] and card["table"] == "resnet20.lesions.csv"
    assert "class-balanced" in card["images"] and card["seconds"] > 0
    assert 0 < card["share_of_training"]
    assert L.read_table(tmp_path / "resnet20.lesions.csv") == table(tmp_path)


def test_a_table_of_another_set_size_is_refused(tmp_path):
    train(config(tmp_path, stop_after=1), **DATA)
    with pytest.raises(UsageError, match="--lesion-images"):
        train(config(tmp_path, resume=True, lesion_images=20), **DATA)
    (tmp_path / L.TABLE).write_text("epoch,block\n1,2\n")
    with pytest.raises(UsageError, match="not a lesion table"):
        train(config(tmp_path, resume=True), **DATA)


def test_lesion_rows_leave_the_model_as_found():
    from ablate import models

    net = models.create("resnet20", num_classes=4).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    ds = synthetic(16, "test")
    rows = L.lesion_rows(net, ds.images, ds.labels, epoch=0, mean=CIFAR10_MEAN, std=CIFAR10_STD)
    assert len(rows) == 9 and net.training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
