"""The checkpoints the package ships: they load by name, match their cards, and classify."""

from __future__ import annotations

import json

import pytest

from ablate import data
from ablate._infra.io import sha256_file
from ablate.measures import evaluate
from ablate.models import checkpoint
from ablate.models.blocks import blocks

SHIPPED = sorted(p.stem for p in checkpoint.BUNDLED_DIR.glob("*.safetensors"))


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_loads_and_matches_its_card(name, monkeypatch):
    monkeypatch.delenv("ABLATE_CHECKPOINTS")
    card = json.loads((checkpoint.BUNDLED_DIR / f"{name}.json").read_text())
    weights = checkpoint.BUNDLED_DIR / f"{name}.safetensors"
    assert sha256_file(weights) == card["weights_sha256"]
    assert card["dataset"] == "cifar10-jpeg" and card["epochs"] >= 1
    assert (checkpoint.BUNDLED_DIR / card["log"]).exists()
    net = checkpoint.load(name)
    assert net.format == "ablate" and net.arch == card["arch"] and len(blocks(net.model)) > 0
    ds = data.load(None, "test", quiet=True).subset(200)
    err = evaluate(net.model, ds.images, ds.labels, mean=net.mean, std=net.std).error
    assert err < 0.5  # trained: far from chance (0.9) on the first 200 bundled test images
