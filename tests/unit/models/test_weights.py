"""The weights registry: conversion of the published layouts, verified download into the cache."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
import torch

import ablate
from ablate._infra.errors import UsageError
from ablate.models import checkpoint, weights


def _martyn_name(ours: str) -> str:
    """Our key -> a-martyn's, written out independently of the converter (the inverse map)."""
    stem = {"conv1": "convIn", "bn1": "bnIn", "linear": "fcOut"}
    head, _, rest = ours.partition(".")
    if head in stem:
        return f"{stem[head]}.{rest}"
    stage, block, tail = ours.split(".", 2)
    i = int(block)
    if stage == "layer1":
        return f"stack1.{i}.{tail}"
    s = stage[-1]
    return f"stack{s}a.{tail}" if i == 0 else f"stack{s}b.{i - 1}.{tail}"


def test_a_martyn_layout_converts_to_exact_outputs():
    torch.manual_seed(0)
    ref = ablate.create("plain20").eval()
    for p in ref.parameters():
        p.data.normal_(0, 0.1)
    theirs = {_martyn_name(k): v.clone() for k, v in ref.state_dict().items()}
    assert "stack2a.conv1.weight" in theirs and "stack3b.1.bn2.running_var" in theirs
    net = ablate.create("plain20").eval()
    net.load_state_dict(weights.convert(theirs, "a-martyn"), strict=True)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(x), ref(x))


def test_akamaster_layout_drops_the_dataparallel_prefix():
    state = {"module.conv1.weight": torch.ones(1), "linear.bias": torch.zeros(1)}
    assert set(weights.convert(state, "akamaster")) == {"conv1.weight", "linear.bias"}


def test_unknown_a_martyn_key_is_one_line():
    with pytest.raises(UsageError, match="a-martyn"):
        weights.convert({"stem.weight": torch.ones(1)}, "a-martyn")


@pytest.fixture
def published_file(tmp_path):
    """A plain20 in a-martyn's format behind a file:// URL, as a registry entry."""
    torch.manual_seed(1)
    net = ablate.create("plain20")
    path = tmp_path / "upstream" / "plainnet20.pt"
    path.parent.mkdir()
    torch.save({_martyn_name(k): v for k, v in net.state_dict().items()}, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    w = dataclasses.replace(weights.WEIGHTS["plain20"], name="plain20-test", url=path.as_uri(),
                            sha256=digest, bundled=False)
    return w, net


def test_download_verifies_then_loads_from_the_cache(published_file, monkeypatch, tmp_path):
    w, net = published_file
    monkeypatch.setitem(weights.WEIGHTS, w.name, w)
    loaded = checkpoint.load(w.name)
    assert loaded.arch == "plain20" and loaded.card["weights"]["source"] == "a-martyn/resnet"
    assert loaded.mean == w.normalization[0]
    for k, v in net.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v)
    monkeypatch.setitem(weights.WEIGHTS, w.name, dataclasses.replace(w, url="file:///nowhere"))
    assert checkpoint.load(w.name).arch == "plain20"  # converted once, then from the cache


def test_hash_mismatch_is_one_line_and_leaves_nothing(published_file, tmp_path):
    w, _ = published_file
    bad = dataclasses.replace(w, sha256="0" * 64)
    cache = tmp_path / "cache"
    with pytest.raises(UsageError, match="not the published file") as e:
        weights.download(bad, cache)
    assert "\n" not in str(e.value)
    assert list((cache / "weights").iterdir()) == []


def test_unreachable_url_is_one_line(published_file, tmp_path):
    w, _ = published_file
    with pytest.raises(UsageError, match="--checkpoint PATH"):
        weights.download(dataclasses.replace(w, url="file:///no/such/file.pt"), tmp_path)
    assert list((tmp_path / "weights").iterdir()) == []


def test_unbundled_entry_offline_says_how_to_proceed(capsys):
    with pytest.raises(UsageError, match="no internet, pass --checkpoint PATH") as e:
        checkpoint.load("resnet110-akamaster")
    assert "\n" not in str(e.value) and "resnet110-1d1ed7c2.th" in str(e.value)
    assert "downloading resnet110-akamaster" in capsys.readouterr().err
