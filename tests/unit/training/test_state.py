"""Runs in progress keep resuming: a ``last.pt`` in the format the trainer wrote before the
redesign (``ablate/train.py`` at f38ef46) is what ``training.state`` reads and writes."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from ablate import data as D
from ablate import models
from ablate.training import TrainConfig, train
from ablate.training.state import LATER_RECIPE_FIELDS, STATE_FORMAT, load_state

# The keys of the state dict and of its "run" entry exactly as f38ef46's ablate/train.py wrote
# them; ``_load_state`` there compared every "run" entry against the resumed run's.
OLD_STATE_KEYS = {"format", "run", "model", "optimizer", "epoch", "step", "rng", "log",
                  "train_seconds"}
OLD_RUN_KEYS = {"model", "arch_kwargs", "recipe", "seed", "dataset", "n_train", "val_split",
                "world_size"}


def _data(n: int, split: str, seed: int) -> D.Dataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    x = torch.randint(0, 256, (n, 3, 16, 16), generator=g, dtype=torch.uint8)
    return D.Dataset(x, y, ("a", "b", "c", "d"), "synthetic", split, "test")


def _config(out, **kw) -> TrainConfig:
    base = {"model": "resnet20", "epochs": 2, "batch_size": 16, "lr": 0.05, "device": "cpu",
            "out": str(out), "progress": False, "stochastic_depth": "linear:0.5"}
    return TrainConfig(**(base | kw))


def _old_format_state(net: torch.nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator,
                      run: dict, epoch: int, step: int, log: list[dict]) -> dict:
    """The dict f38ef46 saved (``state = {...}`` in its ``_train``), built by hand."""
    return {
        "format": "ablate-train-state/1", "run": run, "model": net.state_dict(),
        "optimizer": opt.state_dict(), "epoch": epoch, "step": step,
        "rng": {"torch": torch.get_rng_state(), "data": gen.get_state(), "data_device": "cpu"},
        "log": log, "train_seconds": 1.5,
    }


def test_state_format_is_unchanged(tmp_path):
    tr, te = _data(48, "train", 0), _data(8, "test", 1)
    train(_config(tmp_path, stop_after=1), train_data=tr, test_data=te)
    st = torch.load(tmp_path / "last.pt", weights_only=True)
    assert STATE_FORMAT == "ablate-train-state/1" == st["format"]
    assert set(st) == OLD_STATE_KEYS and set(st["run"]) == OLD_RUN_KEYS
    assert set(st["rng"]) == {"torch", "data", "data_device"}
    assert load_state(tmp_path / "last.pt", st["run"])["epoch"] == 1


def test_a_state_written_in_the_old_format_resumes(tmp_path):
    """Write last.pt by hand as the old trainer did after epoch 1 of an uninterrupted run,
    resume it with this code, and end bitwise where the uninterrupted run ends."""
    tr, te = _data(48, "train", 0), _data(8, "test", 1)
    whole = load_file(str(train(_config(tmp_path / "whole"), train_data=tr, test_data=te)))
    # Epoch 1 again, then replace its last.pt with the hand-built old-format dict.
    part = tmp_path / "part"
    train(_config(part, stop_after=1), train_data=tr, test_data=te)
    st = torch.load(part / "last.pt", weights_only=True)
    net = models.create("resnet20", **st["run"]["arch_kwargs"])
    net.load_state_dict(st["model"])
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    opt.load_state_dict(st["optimizer"])
    gen = torch.Generator().manual_seed(0)
    gen.set_state(st["rng"]["data"])
    torch.set_rng_state(st["rng"]["torch"])
    # as the old trainer wrote it: its recipe had none of the later fields (optimizer,
    # label_smoothing, the ViT recipe's warm-up and augmentation)
    assert set(LATER_RECIPE_FIELDS) <= set(st["run"]["recipe"])
    recipe = {k: v for k, v in st["run"]["recipe"].items() if k not in LATER_RECIPE_FIELDS}
    run = {**st["run"], "recipe": recipe}
    old = _old_format_state(net, opt, gen, run, st["epoch"], st["step"], st["log"])
    torch.save(old, part / "last.pt")
    resumed = load_file(str(train(_config(part, resume=True), train_data=tr, test_data=te)))
    assert resumed.keys() == whole.keys()
    for k in whole:
        assert torch.equal(resumed[k], whole[k]), k


def test_an_old_log_without_train_step_seconds_resumes_and_reads(tmp_path):
    """A run whose epochs predate ``train_step_seconds`` resumes; the log keeps every column
    (old cells empty) and the card says the step time is unknown rather than wrong."""
    import csv
    import json

    tr, te = _data(48, "train", 0), _data(8, "test", 1)
    part = tmp_path / "part"
    train(_config(part, stop_after=1), train_data=tr, test_data=te)
    st = torch.load(part / "last.pt", weights_only=True)
    st["log"] = [{k: v for k, v in r.items() if k != "train_step_seconds"} for r in st["log"]]
    torch.save(st, part / "last.pt")
    weights = train(_config(part, resume=True), train_data=tr, test_data=te)
    rows = list(csv.DictReader(open(part / "log.csv")))
    assert [r["train_step_seconds"] == "" for r in rows] == [True, False]
    card = json.loads(weights.with_suffix(".json").read_text())
    assert card["train_step_seconds"] is None and "best_test_error" not in card


def test_card_records_training_step_time_apart_from_evaluation(tmp_path):
    import json

    tr, te = _data(48, "train", 0), _data(8, "test", 1)
    card = json.loads(train(_config(tmp_path), train_data=tr, test_data=te)
                      .with_suffix(".json").read_text())
    assert 0 < card["train_step_seconds"] <= card["train_seconds"]
    assert "best_test_error" not in card
    # a stochastic-depth run on He's schedule also lists its departures from Huang's recipe
    huang = [d for d in card["deviations"] if "Huang" in d]
    assert any("epochs 2 instead of 500" in d for d in huang)
    assert any("nesterov False instead of True" in d for d in huang)
    assert any("equal budget" in n and "500 epochs" in n for n in card["notes"])


def test_a_state_from_another_kind_of_device_resumes_only_when_asked(tmp_path):
    """A last.pt written on a GPU (its data generator's state is a CUDA one) is refused on the
    CPU with a message naming --change-device; with it, the run continues from the saved weights
    and optimizer, and the card says which epochs ran where."""
    import json

    import pytest

    from ablate._infra.errors import UsageError

    tr, te = _data(48, "train", 0), _data(8, "test", 1)
    train(_config(tmp_path, stop_after=1), train_data=tr, test_data=te)
    path = tmp_path / "last.pt"
    st = torch.load(path, weights_only=True)
    st["rng"]["data_device"] = "cuda"  # as the GPU run wrote it
    st["rng"]["data"] = torch.zeros(16, dtype=torch.uint8)  # a CUDA generator's state
    st["log"][0]["device"] = "NVIDIA H200"
    torch.save(st, path)
    with pytest.raises(UsageError, match="--change-device"):
        train(_config(tmp_path, resume=True), train_data=tr, test_data=te)
    with pytest.raises(UsageError, match="--resume"):
        _config(tmp_path, change_device=True).validate()
    weights = train(_config(tmp_path, resume=True, change_device=True), train_data=tr,
                    test_data=te)
    card = json.loads(weights.with_suffix(".json").read_text())
    assert card["precision_by_epochs"][0]["device"] == "NVIDIA H200"
    moved = [d for d in card["deviations"] if "more than one device" in d]
    assert moved and "epochs 1-1 on NVIDIA H200" in moved[0] and "epochs 2-2 on" in moved[0]
    assert "reseeded from epoch 2 (--change-device)" in moved[0]
