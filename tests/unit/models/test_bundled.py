"""The checkpoints the package ships: the published zoo, converted, with cards and licences."""

from __future__ import annotations

import json

import pytest

from ablate import data
from ablate._infra.io import sha256_file
from ablate.measures import evaluate
from ablate.models import checkpoint, weights
from ablate.models.blocks import blocks

SHIPPED = sorted(p.stem for p in checkpoint.BUNDLED_DIR.glob("*.safetensors"))


@pytest.fixture
def shipped(monkeypatch):
    monkeypatch.delenv("ABLATE_CHECKPOINTS")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_matches_its_card_and_the_registry(name, shipped):
    card = json.loads((checkpoint.BUNDLED_DIR / f"{name}.json").read_text())
    assert sha256_file(checkpoint.BUNDLED_DIR / f"{name}.safetensors") == card["weights_sha256"]
    assert card["dataset"] == "cifar10"
    net = checkpoint.load(name)
    assert net.format == "ablate" and net.arch == card["arch"] and len(blocks(net.model)) > 0
    origin = card.get("weights")
    if origin is not None:  # a published network: its source, licence and errors travel with it
        w = weights.WEIGHTS[name]
        assert origin["source"] == w.source and origin["sha256"] == w.sha256
        assert (checkpoint.BUNDLED_DIR / w.license_file).read_text().strip()
        assert card["test_error"] == pytest.approx(w.measured_error / 100, abs=1e-9)
        assert net.mean == w.normalization[0] and net.std == w.normalization[1]


def test_every_bundled_registry_entry_ships(shipped):
    assert {n for n, w in weights.WEIGHTS.items() if w.bundled} <= set(SHIPPED)


@pytest.mark.parametrize(("name", "errors"), [("resnet56", 661), ("plain56", 1307),
                                              ("plain20", 969), ("resnet20", 827)])
def test_published_errors_on_the_bundled_pristine_split(name, errors, shipped):
    """The whole 10,000-image split: exactly the errors measured on pristine CIFAR-10."""
    net = checkpoint.load(name)
    ds = data.load(None, "test", quiet=True)
    out = evaluate(net.model, ds.images, ds.labels, mean=net.mean, std=net.std)
    assert out.errors == errors and out.n == 10_000
