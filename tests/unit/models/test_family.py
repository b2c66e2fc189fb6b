"""The one model-family decision, ``ablate.models.family``: over every registry name, over
checkpoint cards (stochastic depth, plain, ViT, torchvision) and over loaded checkpoints."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from ablate import models
from ablate.models import checkpoint, torchvision_models
from ablate.training.config import make_recipe, paper_recipe, vit_recipe


def _expected(name: str) -> str:
    """What each registry name is, from how the registry builds it."""
    if name in torchvision_models.RESNETS + torchvision_models.VGGS:
        return "torchvision"
    if name == "vit_cifar":
        return "vit"
    for prefix, fam in (("preact_resnet", "preact"), ("plain", "plain"), ("resnet", "resnet")):
        if name.startswith(prefix) and name[len(prefix):].isdigit():
            return fam
    raise AssertionError(f"a registry name this test does not know: {name}")


@pytest.mark.parametrize("name", models.names())
def test_every_registry_name_has_its_registered_family(name):
    fam = _expected(name)
    assert models.arch_family(name) == fam
    assert models.family(name) == fam
    assert models.family(name, {}, default="other") == fam
    assert fam in models.FAMILIES
    assert models.is_cifar(name) == (fam != "torchvision")
    assert models.is_transformer_arch(name) == (fam == "vit")


def test_registry_covers_every_family_but_stochastic_depth():
    found = {models.arch_family(n) for n in models.names()}
    assert found == set(models.FAMILIES) - {"stochastic_depth"}


@pytest.mark.parametrize("name, fam", [
    ("resnet110-sd", "stochastic_depth"),
    ("resnet56_stochastic", "stochastic_depth"),
    ("plain20-sd", "plain"),  # plain nets have no stochastic depth: the prefix wins
    ("preact_resnet110-sd", "preact"),
    ("resnet-56", "resnet"),
    ("resnet_20", "resnet"),
    ("resnet8", "resnet"),  # 6n + 2, not registered
    ("RESNET18", "torchvision"),
    (" vgg16_bn ", "torchvision"),
    ("vit_small", "vit"),
])
def test_names_outside_the_registry_by_the_naming_rules(name, fam):
    assert models.arch_family(name) is None
    assert models.family(name) == fam


def test_a_name_that_says_nothing():
    assert models.family("densenet121", default="resnet") == "resnet"
    with pytest.raises(ValueError, match="densenet121"):
        models.family("densenet121")
    with pytest.raises(ValueError):
        models.family(None)


SD_CARD = {"arch": "resnet110", "arch_kwargs": {"num_classes": 10, "stochastic_depth": 0.5,
                                                  "sd_mode": "batch"},
           "stochastic_depth": {"rule": "linear", "p_L": 0.5, "mode": "batch"}}


@pytest.mark.parametrize("card", [
    SD_CARD,
    {"arch": "resnet110", "stochastic_depth": {"rule": "linear", "p_L": 0.5}},
    {"arch": "resnet110", "arch_kwargs": {"stochastic_depth": 0.5}},  # an older card
    {"arch": "resnet110", "arch_kwargs": {"stochastic_depth": [1.0, 0.9, 0.8]}},
])
def test_a_stochastic_depth_card(card):
    assert models.family("resnet110", card) == "stochastic_depth"
    assert models.family(None, card) == "stochastic_depth"
    assert models.family(SimpleNamespace(arch="resnet110", card=card)) == "stochastic_depth"


def test_a_card_without_stochastic_depth_says_the_architecture():
    constant = {**SD_CARD, "stochastic_depth": None,
                "arch_kwargs": {"num_classes": 10, "stochastic_depth": None}}
    assert models.family("resnet110", constant) == "resnet"
    assert models.family("renamed", {"arch": "resnet110"}) == "resnet"


def test_a_plain_card_wins_over_the_name():
    card = {"arch": "plain20", "family": "plain"}
    assert models.family("plain20", card) == "plain"
    assert models.family("resnet20", card) == "plain"  # the card's arch is what was built
    assert models.family("my-net", card) == "plain"


@pytest.mark.parametrize("arch, fam", [("vit_cifar", "vit"), ("resnet50", "torchvision"),
                                       ("vgg11_bn", "torchvision"), ("preact_resnet56", "preact")])
def test_cards_of_other_architectures(arch, fam):
    card = {"arch": arch, "arch_kwargs": {"num_classes": 10}}
    assert models.family(arch, card) == fam
    assert models.family("some-checkpoint", card) == fam
    assert models.family(None, card, default="resnet") == fam


def test_the_shipped_cards():
    cards = {p.stem: json.loads(p.read_text()) for p in checkpoint.BUNDLED_DIR.glob("*.json")}
    if not cards:
        pytest.skip("no bundled checkpoints")
    for name, card in cards.items():
        fam = models.family(name, card)
        assert fam in models.FAMILIES, name
        if name.endswith("-sd"):
            assert fam == "stochastic_depth", name
        else:
            assert fam == models.arch_family(card["arch"]), name
        if card.get("family"):  # what the published weights were trained as
            assert card["family"] == fam, name


@pytest.mark.parametrize("kwargs, fam", [
    ({"stochastic_depth": 0.5}, "stochastic_depth"),
    ({}, "resnet"),
])
def test_a_loaded_checkpoint(tmp_path, kwargs, fam):
    net = models.create("resnet20", **kwargs)
    path = checkpoint.save(net, tmp_path / "net", {"arch": "resnet20", "arch_kwargs": kwargs})
    loaded = checkpoint.load(checkpoint=path)
    assert models.family(loaded) == fam
    assert models.family(loaded.arch, loaded.card) == fam
    assert models.family(loaded, {}) == "resnet"  # a card given replaces the loaded one


def test_plain_loaded_and_fresh_vit():
    plain = checkpoint.Loaded(models.create("plain20"), "plain20", "plain20", None, None, "init",
                              (0.0,), (1.0,), None)
    assert models.family(plain) == "plain"
    vit = checkpoint.load("vit_cifar", allow_init=True)
    assert models.family(vit) == "vit"


def test_unfamilied_registry_entries(monkeypatch):
    """A model added to the registry without a family (tests do this) is a CIFAR net the
    naming rules cannot place: the caller's default."""
    monkeypatch.setitem(models._REGISTRY, "nobn8", lambda **kw: None)
    assert models.is_cifar("nobn8") and not models.is_transformer_arch("nobn8")
    assert models.arch_family("nobn8") is None
    assert models.family("nobn8", default="resnet") == "resnet"


def test_the_trainer_decides_by_the_registry():
    assert paper_recipe("vit_cifar") == vit_recipe()
    assert paper_recipe("resnet20") != vit_recipe()
    assert make_recipe("plain20").warmup_iters == 400  # plain nets warm up, as He's ResNet-110
    assert make_recipe("resnet20").warmup_iters == 0
    assert make_recipe("preact_resnet20").warmup_iters == 0
