"""Checkpoints: the standard akamaster format, our safetensors + card, and unsafe input."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from torch import nn

from ablate import models
from ablate._infra.errors import UsageError
from ablate.data import IMAGENET_MEAN, IMAGENET_STD
from ablate.models import checkpoint


@pytest.fixture(autouse=True)
def _no_bundled(tmp_path, monkeypatch):
    """Bundled checkpoints come from an empty folder here, whatever the package ships."""
    d = tmp_path / "bundled"
    d.mkdir()
    monkeypatch.setenv("ABLATE_CHECKPOINTS", str(d))
    return d


class Note:
    """An ordinary object someone pickled beside the weights."""

    def __init__(self, text: str) -> None:
        self.text = text


class Payload:
    """Not a tensor: a pickle holding this must never be unpickled."""

    def __reduce__(self):
        return (print, ("unpickled!",))


def trained(name: str = "resnet20", seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    model = models.create(name, **kw)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.rand(c, generator=g) * 0.6 - 0.3)
                m.num_batches_tracked.fill_(1234)
    return model.eval()


X = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(9))


def same_outputs(a: nn.Module, b: nn.Module) -> bool:
    with torch.no_grad():
        return torch.equal(a.eval()(X), b.eval()(X))


def same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("prefix", ["", "module."])
def test_standard_checkpoint_loads(tmp_path, prefix):
    src = trained("resnet20")
    sd = {prefix + k: v for k, v in src.state_dict().items()}
    path = tmp_path / "model_best.th"
    torch.save({"state_dict": sd, "best_prec1": 91.3}, path)
    for model_arg in ("resnet20", None):  # None: the architecture is read from the keys
        loaded = checkpoint.load(model_arg, path)
        assert loaded.arch == "resnet20" and loaded.format == "standard"
        assert loaded.mean == IMAGENET_MEAN and loaded.std == IMAGENET_STD
        assert loaded.card == {"best_prec1": 91.3}
        assert loaded.path == str(path)
        assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert not loaded.model.training
        assert same_state(loaded.model, src)
        assert same_outputs(loaded.model, src)
        prov = loaded.provenance()
        assert prov["normalization"] == {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}
        assert prov["checkpoint_format"] == "standard"


@pytest.mark.parametrize("name", ["resnet56", "preact_resnet32"])
def test_architecture_is_inferred_from_the_keys(tmp_path, name):
    src = trained(name)
    path = tmp_path / "ckpt.th"
    torch.save({"state_dict": {"module." + k: v for k, v in src.state_dict().items()},
                "best_prec1": torch.tensor(92.5)}, path)
    loaded = checkpoint.load(None, path)
    assert loaded.arch == name and loaded.name == name
    assert loaded.card["best_prec1"] == pytest.approx(92.5)
    assert same_outputs(loaded.model, src)


def test_plain_net_loads_when_named(tmp_path):
    src = trained("plain20")
    path = tmp_path / "plain.th"
    torch.save({"state_dict": src.state_dict(), "best_prec1": 80.0}, path)
    loaded = checkpoint.load("plain20", path)
    assert loaded.arch == "plain20" and same_outputs(loaded.model, src)


def test_bare_state_dict_uses_cifar_normalisation(tmp_path, capsys):
    src = trained("resnet20")
    path = tmp_path / "bare.pt"
    torch.save(src.state_dict(), path)
    loaded = checkpoint.load(None, path)
    assert loaded.format == "state_dict" and loaded.arch == "resnet20"
    assert loaded.mean == checkpoint.CIFAR10_MEAN and loaded.std == checkpoint.CIFAR10_STD
    assert same_outputs(loaded.model, src)
    assert "bare state dict" in capsys.readouterr().err


def test_wrong_architecture_names_the_likely_one(tmp_path):
    path = tmp_path / "r20.th"
    torch.save({"state_dict": trained("resnet20").state_dict(), "best_prec1": 91.3}, path)
    with pytest.raises(UsageError) as e:
        checkpoint.load("resnet32", path)
    msg = str(e.value)
    assert "does not fit resnet32" in msg and "--model resnet20" in msg
    assert "\n" not in msg


def test_unrecognisable_state_is_refused(tmp_path):
    path = tmp_path / "tv.pt"
    torch.save(models.create("resnet18", num_classes=10).state_dict(), path)
    with pytest.raises(UsageError, match="cannot tell which model"):
        checkpoint.load(None, path)
    path2 = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], path2)
    with pytest.raises(UsageError, match="not a model checkpoint"):
        checkpoint.load("resnet20", path2)


@pytest.mark.parametrize("extra", [Note("trained on Tuesday"), Payload()])
def test_pickled_object_is_refused(tmp_path, capsys, extra):
    path = tmp_path / "evil.th"
    sd = trained("resnet20").state_dict()
    torch.save({"state_dict": sd, "best_prec1": 91.3, "extra": extra}, path)
    for model_arg in ("resnet20", None):
        with pytest.raises(UsageError) as e:
            checkpoint.load(model_arg, path)
        msg = str(e.value)
        assert "could not be read safely" in msg and "\n" not in msg
    assert "unpickled!" not in capsys.readouterr().out  # the payload never ran


def test_garbage_safetensors_is_refused(tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"\x07\x00\x00\x00\x00\x00\x00\x00not json at all" + bytes(range(256)))
    with pytest.raises(UsageError, match="not a readable safetensors"):
        checkpoint.load("resnet20", path)
    path.write_bytes(b"\xff" * 8 + b"x")  # a header length far beyond the file
    with pytest.raises(UsageError, match="not a readable safetensors"):
        checkpoint.load("resnet20", path)


def test_missing_file_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        checkpoint.load("resnet20", tmp_path / "nope.th")


def test_save_and_load_round_trip_with_card(tmp_path):
    src = trained("resnet20", stochastic_depth=0.5)
    norm = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}
    card = {"arch": "resnet20", "arch_kwargs": {"stochastic_depth": 0.5}, "dataset": "cifar10",
            "normalization": norm, "results": {"error": 0.0812}}
    weights = checkpoint.save(src, tmp_path / "r20-sd", card)
    assert weights == tmp_path / "r20-sd.safetensors" and weights.exists()
    written = json.loads((tmp_path / "r20-sd.json").read_text())
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert written["weights_sha256"] == digest
    assert written["format"] == checkpoint.CARD_FORMAT and written["name"] == "r20-sd"
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave nothing behind
    for where in (weights, tmp_path / "r20-sd.json"):
        loaded = checkpoint.load(None, where)
        assert loaded.format == "ablate" and loaded.arch == "resnet20"
        assert loaded.name == "r20-sd" and loaded.dataset == "cifar10"
        assert loaded.sha256 == digest and loaded.card["weights_sha256"] == digest
        assert loaded.mean == tuple(norm["mean"]) and loaded.std == tuple(norm["std"])
        assert loaded.card["arch_kwargs"] == {"stochastic_depth": 0.5}
        got = [m.survival for m in loaded.model.modules() if hasattr(m, "survival")]
        assert got == pytest.approx(models.linear_survival(9, 0.5), abs=1e-15)
        assert got == [m.survival for m in src.modules() if hasattr(m, "survival")]
        assert same_state(loaded.model, src)
        assert same_outputs(loaded.model, src)
    # naming it as what it is works; naming it as something else is refused with the fix
    assert checkpoint.load("resnet20", weights).arch == "resnet20"
    with pytest.raises(UsageError, match="is a resnet20, not a resnet32"):
        checkpoint.load("resnet32", weights)


def test_safetensors_without_card_needs_a_model(tmp_path):
    src = trained("resnet20")
    weights = checkpoint.save(src, tmp_path / "w", {"arch": "resnet20"})
    (tmp_path / "w.json").unlink()
    with pytest.raises(UsageError, match="--model"):
        checkpoint.load(None, weights)
    loaded = checkpoint.load("resnet20", weights)
    assert same_outputs(loaded.model, src)
    assert loaded.mean == checkpoint.CIFAR10_MEAN


def test_card_with_bad_arguments_is_a_usage_error(tmp_path):
    weights = checkpoint.save(trained("resnet20"), tmp_path / "b",
                              {"arch": "resnet20", "arch_kwargs": {"depth_multiplier": 2}})
    with pytest.raises(UsageError, match="arguments"):
        checkpoint.load(None, weights)


def test_bundled_checkpoint_is_found_by_name(_no_bundled):
    src = trained("resnet20")
    checkpoint.save(src, _no_bundled / "resnet20", {"arch": "resnet20"})
    assert checkpoint.bundled_names() == ["resnet20"]
    loaded = checkpoint.load("resnet20")
    assert loaded.format == "ablate" and same_outputs(loaded.model, src)


def test_no_bundled_checkpoint_needs_one():
    with pytest.raises(UsageError) as e:
        checkpoint.load("resnet110")
    msg = str(e.value)
    assert "no trained checkpoint is bundled for resnet110" in msg
    assert "--checkpoint" in msg and "\n" not in msg
    with pytest.raises(UsageError, match="resnet20"):
        checkpoint.load("resnet2o")
    with pytest.raises(UsageError, match="name a model"):
        checkpoint.load()


def test_allow_init_builds_a_fresh_network():
    loaded = checkpoint.load("resnet20", allow_init=True)
    assert loaded.format == "init" and loaded.path is None
    assert loaded.mean == checkpoint.CIFAR10_MEAN
    assert not loaded.model.training
