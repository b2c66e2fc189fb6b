"""Issue 26, ``last.pt`` is untrusted input: every field a state carries (run, model, optimizer,
epoch, step, rng, log, train_seconds), several bad values each, ends a ``--resume`` in one line
naming the field, with the state file untouched."""

from __future__ import annotations

import shutil

import pytest
import torch

from ablate import data as D
from ablate import models
from ablate._infra.errors import UsageError
from ablate.training import TrainConfig, train


def _data(n: int, split: str, seed: int) -> D.Dataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    x = torch.randint(0, 256, (n, 3, 16, 16), generator=g, dtype=torch.uint8)
    return D.Dataset(x, y, ("a", "b", "c", "d"), "synthetic", split, "test")


TRAIN, TEST = _data(32, "train", 0), _data(8, "test", 1)


def _config(out, **kw) -> TrainConfig:
    base = {"model": "resnet20", "epochs": 2, "batch_size": 16, "lr": 0.05, "device": "cpu",
            "out": str(out), "progress": False}
    return TrainConfig(**(base | kw))


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory):
    """A run stopped after epoch 1: its last.pt is what each case damages."""
    out = tmp_path_factory.mktemp("run")
    train(_config(out, stop_after=1), train_data=TRAIN, test_data=TEST)
    return out


def _other_arch_state() -> dict:
    return models.create("resnet32", num_classes=4).state_dict()


def _edit(st: dict, field: str, value) -> None:
    path = field.split(".")
    target = st
    for k in path[:-1]:
        target = target[k]
    if value is _MISSING:
        del target[path[-1]]
    elif callable(value):
        target[path[-1]] = value(target[path[-1]])
    else:
        target[path[-1]] = value


_MISSING = object()


def _model_with(key: str, fn):
    def edit(model: dict) -> dict:
        model = dict(model)
        model[key] = fn(model[key])
        return model
    return edit


BAD = {
    "run": [_MISSING, "x", None, [1]],
    "model": [_MISSING, {}, "x", {"conv1.weight": 5}, lambda m: _other_arch_state(),
              _model_with("conv1.weight", lambda t: t[:, :, :2]),
              _model_with("conv1.weight", lambda t: t.to(torch.int8)),
              _model_with("linear.weight", lambda t: torch.full_like(t, float("nan"))),
              _model_with("bn1.running_var", lambda t: t * float("inf"))],
    "optimizer": [_MISSING, "x", {"state": 1, "param_groups": []},
                  {"state": {}, "param_groups": []},
                  lambda o: {**o, "param_groups": [{**o["param_groups"][0], "params": [0]}]}],
    "epoch": [_MISSING, -1, 1.5, "1", True, None, 10**6],
    "step": [_MISSING, -1, "3", 2.5, None],
    "rng": [_MISSING, "x", None],
    "rng.torch": [_MISSING, "x", torch.zeros(10), torch.zeros(10, dtype=torch.uint8),
                  torch.zeros(2, 5056, dtype=torch.uint8)],
    "rng.data": [_MISSING, 3, torch.zeros(3, dtype=torch.uint8)],
    "rng.data_device": [_MISSING, "tpu", 0],
    "log": [_MISSING, "x", [1, 2], [{"epoch": [1]}], [{"a": float("nan")}],
            lambda log: log * 3],
    "train_seconds": [_MISSING, -1.0, "x", float("nan"), float("inf"), None, True],
}
CASES = [(f, i) for f, vs in BAD.items() for i in range(len(vs))]


@pytest.mark.parametrize("field, i", CASES, ids=[f"{f}-{i}" for f, i in CASES])
def test_bad_state_field_is_one_line_naming_it(tmp_path, state_dir, field, i):
    run = tmp_path / "run"
    shutil.copytree(state_dir, run)
    st = torch.load(run / "last.pt", weights_only=True)
    _edit(st, field, BAD[field][i])
    torch.save(st, run / "last.pt")
    before = (run / "last.pt").read_bytes()
    with pytest.raises(UsageError) as e:
        train(_config(run, resume=True), train_data=TRAIN, test_data=TEST)
    msg = str(e.value)
    assert "\n" not in msg and f"'{field.split('.')[0]}" in msg, msg
    assert (run / "last.pt").read_bytes() == before  # nothing lost
    assert not (run / "resnet20.safetensors").exists()


def test_the_undamaged_state_resumes(tmp_path, state_dir):
    run = tmp_path / "run"
    shutil.copytree(state_dir, run)
    assert train(_config(run, resume=True), train_data=TRAIN, test_data=TEST).exists()
