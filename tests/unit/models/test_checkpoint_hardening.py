"""Issue 26, checkpoints: every file a user passes is untrusted. A card's name, every card field,
the weights' dtypes and values, the card's hash of the weights, the file type, and ResNet weights
behind a plain-net card: each bad input is one line naming the field and the fix."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from ablate import models
from ablate._infra.errors import UsageError
from ablate.models import checkpoint


@pytest.fixture(autouse=True)
def _no_bundled(tmp_path, monkeypatch):
    d = tmp_path / "bundled"
    d.mkdir()
    monkeypatch.setenv("ABLATE_CHECKPOINTS", str(d))


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


def calibrated(name: str, seed: int = 0) -> nn.Module:
    """A net whose BatchNorm statistics fit its own activations, as training leaves them."""
    torch.manual_seed(seed)
    net = models.create(name)
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in bns:
        m.momentum = None  # cumulative average
    g = torch.Generator().manual_seed(seed + 1)
    net.train()
    with torch.no_grad():
        for _ in range(2):
            x = nn.functional.avg_pool2d(torch.randn(8, 3, 40, 40, generator=g), 9, 1)
            net((x - x.mean()) / x.std())
    for m in bns:
        m.momentum = 0.1
    return net.eval()


@pytest.fixture(scope="module")
def resnet20():
    return calibrated("resnet20")


def saved(tmp_path: Path, net: nn.Module, card: dict | None = None, stem: str = "m") -> Path:
    return checkpoint.save(net, tmp_path / stem, {"arch": "resnet20", **(card or {})})


def edit_card(path: Path, **fields) -> None:
    card_path = path.with_suffix(".json")
    card = json.loads(card_path.read_text())
    card.update(fields)
    card_path.write_text(json.dumps(card))


# ---------------------------------------------------------------------------------------------
# 1. a card's name is data: it becomes runs/<command>/<name>


@pytest.mark.parametrize("name", [
    "/tmp/elsewhere", "../../../x", "..", ".", ".hidden", "a/b", "a\\b", "", "x" * 101,
    "na me", "n\u00e9v", "x\n", 5, None, ["a"],
])
def test_card_name_that_is_not_a_plain_name_is_refused(tmp_path, resnet20, name):
    path = saved(tmp_path, resnet20)
    edit_card(path, name=name)
    with pytest.raises(UsageError) as e:
        checkpoint.load(None, path)
    msg = one_line(e)
    assert "'name'" in msg and "plain name" in msg and "repair the card" in msg


@pytest.mark.parametrize("name", ["resnet20", "my-net_v2.1", "r+sd"])
def test_plain_card_names_load(tmp_path, resnet20, name):
    path = saved(tmp_path, resnet20)
    edit_card(path, name=name)
    assert checkpoint.load(None, path).name == name


@pytest.mark.parametrize("stem", [".hidden", "..", "a b", "x" * 120])
def test_a_file_name_becomes_a_plain_name(tmp_path, resnet20, stem):
    path = tmp_path / f"{stem}.pt"
    torch.save(resnet20.state_dict(), path)
    name = checkpoint.load("resnet20", path).name
    assert checkpoint.NAME_PATTERN.fullmatch(name) and name not in (".", "..")
    path = tmp_path / f"{stem}.safetensors"
    save_file(dict(resnet20.state_dict()), str(path))
    name = checkpoint.load("resnet20", path).name
    assert checkpoint.NAME_PATTERN.fullmatch(name) and not name.startswith(".")


# ---------------------------------------------------------------------------------------------
# 2. weights: dtypes, finite values, the card's sha256


BAD_DTYPES = [torch.int8, torch.uint8, torch.int32, torch.int64, torch.bool, torch.complex64]


def _with(net: nn.Module, key: str, value: torch.Tensor) -> dict:
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state[key] = value
    return state


@pytest.mark.parametrize("fmt", ["safetensors", "th", "pt"])
@pytest.mark.parametrize("key", ["conv1.weight", "bn1.running_var", "linear.bias"])
@pytest.mark.parametrize("dtype", BAD_DTYPES)
def test_non_floating_weights_are_refused(tmp_path, resnet20, fmt, key, dtype):
    own = resnet20.state_dict()[key]
    state = _with(resnet20, key, torch.ones(own.shape).to(dtype))
    path = _write(tmp_path, state, fmt)
    with pytest.raises(UsageError) as e:
        checkpoint.load("resnet20", path)
    msg = one_line(e)
    assert f"'{key}'" in msg and str(dtype) in msg


@pytest.mark.parametrize("dtype", [torch.float32, torch.int32, torch.bool])
def test_wrong_kind_of_integer_buffer_is_refused(tmp_path, resnet20, dtype):
    key = "bn1.num_batches_tracked"
    path = _write(tmp_path, _with(resnet20, key, torch.tensor(3).to(dtype)), "pt")
    if dtype == torch.int32:  # another integer is fine
        checkpoint.load("resnet20", path)
        return
    with pytest.raises(UsageError) as e:
        checkpoint.load("resnet20", path)
    assert f"'{key}'" in one_line(e)


@pytest.mark.parametrize("fmt", ["safetensors", "th"])
@pytest.mark.parametrize("key", ["conv1.weight", "bn1.running_var", "bn1.running_mean",
                                 "linear.weight"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("everywhere", [True, False])
def test_non_finite_weights_are_refused(tmp_path, resnet20, fmt, key, bad, everywhere):
    value = resnet20.state_dict()[key].clone()
    if everywhere:
        value.fill_(bad)
    else:
        value.view(-1)[0] = bad
    path = _write(tmp_path, _with(resnet20, key, value), fmt)
    with pytest.raises(UsageError) as e:
        checkpoint.load("resnet20", path)
    msg = one_line(e)
    assert f"'{key}'" in msg and "NaN or infinite" in msg


@pytest.mark.parametrize("fp", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_dtypes_still_load(tmp_path, resnet20, fp):
    state = {k: (v.to(fp) if v.is_floating_point() else v) for k, v in
             resnet20.state_dict().items()}
    checkpoint.load("resnet20", _write(tmp_path, state, "th"))


def _write(tmp_path: Path, state: dict, fmt: str) -> Path:
    if fmt == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif fmt == "th":
        path = tmp_path / "w.th"
        torch.save({"state_dict": state, "best_prec1": 90.0}, path)
    else:
        path = tmp_path / "w.pt"
        torch.save(state, path)
    return path


def test_card_hash_is_compared_with_the_weights(tmp_path, resnet20):
    path = saved(tmp_path, resnet20)
    checkpoint.load(None, path)
    other = calibrated("resnet20", seed=3)  # tampered weights under the same card
    card = path.with_suffix(".json").read_text()
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    path.with_suffix(".json").write_text(card)
    with pytest.raises(UsageError) as e:
        checkpoint.load(None, path)
    assert "not the file its card" in one_line(e)
    edit_card(path, weights_sha256="0" * 64)  # a card of other weights
    with pytest.raises(UsageError) as e:
        checkpoint.load(None, path)
    assert "not the file its card" in one_line(e)


# ---------------------------------------------------------------------------------------------
# 11. every card field, several bad values each


BAD_FIELDS = {
    "format": ["ablate-checkpoint/9", 1, None],
    "name": ["../x", "/abs", 3],
    "arch": ["resnet21", 5, ["resnet20"], None],
    "arch_kwargs": [[1], "x", {"num_classes": 1e11}, {"num_classes": 10**11},
                    {"num_classes": -5}, {"num_classes": 0}, {"num_classes": 10.0},
                    {"num_classes": True}, {"num_classes": "10"}, {"option": "C"},
                    {"stochastic_depth": 1.5}, {"stochastic_depth": [0.5, -1]},
                    {"stochastic_depth": "x"}, {"sd_mode": "all"}, {"weights": "DEFAULT"},
                    {"bogus": 1}, {"dropout": 1.0}, {"num_layers": 0}],
    "family": ["resnets", 3, None],
    "dataset": ["../../x", 3, ["cifar10"]],
    "normalization": ["imagenet", None, [0.5, 0.5], {"mean": [0.5, 0.5], "std": [0.2, 0.2]},
                      {"mean": [0.5] * 3}, {"mean": [0.5] * 3, "std": [0.2, 0.0, 0.2]},
                      {"mean": [0.5] * 3, "std": [0.2, -1, 0.2]},
                      {"mean": ["a"] * 3, "std": [0.2] * 3},
                      {"mean": [True] * 3, "std": [0.2] * 3},
                      {"mean": [0.5] * 3, "std": [1e400] * 3},
                      {"mean": [0.5] * 4, "std": [0.2] * 4},
                      {"mean": [0.5] * 3, "std": [0.2] * 3, "extra": 1},
                      {"mean": [0.5] * 3, "std": [0.2] * 3, "source": 5}],
    "weights": ["akamaster", [1], {"source": 5}, {"nested": {"a": 1}}],
    "weights_sha256": ["abc", 5, "G" * 64, None],
    "test_error": [-0.1, 1.5, "0.1", True],
    "final_test_error": [2, "x", [0.1]],
    "log": ["../../etc/passwd", "/etc/passwd", 5],
    "stochastic_depth": ["yes", [0.5], 0, 2],
    "trained_by": [5, None, ["x"]],
    "evaluated_on": [5, {}],
    "device": [5, []],
    "amp": [True, 5],
    "final_test_error_eval": [1, []],
    "epochs": [-1, 1.5, "10", True, None],
    "seed": [-1, "0", 0.5],
    "train_images": [-5, "x"],
    "world_size": [-1, 2.5],
    "train_seconds": [-1, "x", 1e400],
    "train_step_seconds": [-2, "y"],
    "recipe": ["sgd", [1]],
    "versions": ["2.0", 3],
    "deviations": ["none", [1, 2]],
    "notes": ["none", [1, 2]],
    "precision_by_epochs": ["all", [1]],
}
CASES = [(f, v) for f, vs in BAD_FIELDS.items() for v in vs]


def test_every_checked_card_field_is_tested():
    assert set(BAD_FIELDS) == set(checkpoint.CARD_FIELDS)
    assert all(len(v) >= 2 for v in BAD_FIELDS.values())


@pytest.mark.parametrize("field, value", CASES, ids=[f"{f}={v!r}"[:60] for f, v in CASES])
def test_bad_card_field_is_one_line_naming_it(tmp_path, resnet20, field, value):
    path = saved(tmp_path, resnet20)
    card = json.loads(path.with_suffix(".json").read_text())
    card[field] = value
    path.with_suffix(".json").write_text(json.dumps(card))  # 1e400 is written as Infinity
    with pytest.raises(UsageError) as e:
        checkpoint.load(None, path)
    msg = one_line(e)
    assert f"'{field}" in msg or (field == "format" and "format" in msg), msg


def test_good_card_fields_load(tmp_path, resnet20):
    path = saved(tmp_path, resnet20, {
        "arch_kwargs": {"num_classes": 10, "option": "A"}, "family": "resnet",
        "dataset": "cifar10", "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3,
                                                "source": "x"},
        "test_error": 0.1, "epochs": 3, "log": "m.log.csv", "stochastic_depth": None,
        "deviations": ["a"], "anything_else": {"kept": "as information"},
    })
    loaded = checkpoint.load(None, path)
    assert loaded.mean == (0.5,) * 3 and loaded.card["anything_else"] == {"kept": "as information"}


@pytest.mark.parametrize("field, text", [
    ("test_error", '{"arch": "resnet20", "test_error": NaN}'),
    ("seed", '{"arch": "resnet20", "seed": Infinity}'),
    ("normalization.std", '{"arch": "resnet20", "normalization": {"mean": [0, 0, 0], '
                          '"std": [1, -Infinity, 1]}}'),
])
def test_card_with_json_constants_is_refused(tmp_path, resnet20, field, text):
    path = saved(tmp_path, resnet20)
    path.with_suffix(".json").write_text(text)
    with pytest.raises(UsageError) as e:
        checkpoint.load(None, path)
    assert f"'{field}'" in one_line(e)


@pytest.mark.parametrize("value", ["a string", 3, [1, 2], {"x": 1}, None, 2.5])
def test_standard_checkpoint_with_non_tensor_values_is_refused(tmp_path, resnet20, value):
    state = dict(resnet20.state_dict())
    state["layer1.0.conv1.weight"] = value
    path = tmp_path / "m.th"
    torch.save({"state_dict": state, "best_prec1": 91.0}, path)
    with pytest.raises(UsageError) as e:
        checkpoint.load("resnet20", path)
    assert "layer1.0.conv1.weight" in one_line(e) and "not a tensor" in str(e.value)
    torch.save(state, tmp_path / "bare.pt")  # a bare dict with a non-tensor: not a state dict
    with pytest.raises(UsageError):
        checkpoint.load("resnet20", tmp_path / "bare.pt")


@pytest.mark.parametrize("best", ["ninety", float("nan"), float("inf"), 150.0, -3, [90.0]])
def test_standard_checkpoint_extras_are_checked(tmp_path, resnet20, best):
    path = tmp_path / "m.th"
    torch.save({"state_dict": resnet20.state_dict(), "best_prec1": best,
                "optimizer": {"state": {}}}, path)
    if isinstance(best, list):  # a non-scalar extra is left out of the card, not trusted
        assert "best_prec1" not in checkpoint.load("resnet20", path).card
        return
    with pytest.raises(UsageError) as e:
        checkpoint.load("resnet20", path)
    assert "best_prec1" in one_line(e)


# ---------------------------------------------------------------------------------------------
# 12. only regular files are read


def test_checkpoint_that_is_not_a_regular_file(tmp_path):
    cases = {}
    if Path("/dev/zero").exists():
        cases["/dev/zero"] = Path("/dev/zero")
        (tmp_path / "zero.th").symlink_to("/dev/zero")
        cases["link to /dev/zero"] = tmp_path / "zero.th"
    fifo = tmp_path / "pipe.th"
    os.mkfifo(fifo)  # opening it to hash would block forever
    cases["fifo"] = fifo
    (tmp_path / "dangling.th").symlink_to(tmp_path / "nowhere.th")
    cases["dangling"] = tmp_path / "dangling.th"
    (tmp_path / "loop.th").symlink_to(tmp_path / "loop.th")
    cases["loop"] = tmp_path / "loop.th"
    for what, path in cases.items():
        with pytest.raises(UsageError) as e:
            checkpoint.load("resnet20", path)
        msg = one_line(e)
        assert str(path) in msg and ("regular file" in msg or "link to nothing" in msg or
                                     "cannot be read" in msg), what


def test_card_that_is_not_a_regular_file_or_too_large(tmp_path, resnet20):
    path = saved(tmp_path, resnet20)
    card = path.with_suffix(".json")
    card.unlink()
    os.mkfifo(card)
    with pytest.raises(UsageError) as e:
        checkpoint.load(None, path)
    assert "regular file" in one_line(e)
    card.unlink()
    card.symlink_to(tmp_path / "nowhere.json")
    with pytest.raises(UsageError) as e:
        checkpoint.load(None, path)
    assert "link to nothing" in one_line(e)
    card.unlink()
    card.write_text(json.dumps({"arch": "resnet20", "pad": "x" * (1 << 20)}))
    with pytest.raises(UsageError) as e:
        checkpoint.load(None, path)
    assert "1024 KiB" in one_line(e)


# ---------------------------------------------------------------------------------------------
# 13. a plain-net card beside ResNet weights (and the reverse): same keys, different nets


@pytest.mark.parametrize("trained_as, card_says", [("resnet20", "plain20"),
                                                   ("plain20", "resnet20")])
def test_card_arch_of_the_twin_architecture_is_warned(tmp_path, capsys, trained_as, card_says):
    net = calibrated(trained_as)
    path = checkpoint.save(net, tmp_path / "m", {"arch": card_says})
    capsys.readouterr()
    checkpoint.load(None, path)
    err = capsys.readouterr().err.strip().splitlines()
    warned = [line for line in err if f"look like a {trained_as[:-2]} net" in line]
    assert len(warned) == 1 and "correct 'arch' in its card" in warned[0]
    path = checkpoint.save(net, tmp_path / "right", {"arch": trained_as})
    checkpoint.load(None, path)
    assert "look like" not in capsys.readouterr().err
    bare = tmp_path / "bare.pt"  # a file without a card, loaded as the twin: warned too
    torch.save(net.state_dict(), bare)
    checkpoint.load(card_says, bare)
    assert f"--model {trained_as}" in capsys.readouterr().err
