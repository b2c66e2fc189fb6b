"""The CIFAR ViT: registry, block adapter, and one tiny training epoch with the ViT recipe."""

from __future__ import annotations

import csv

import torch

from ablate import models
from ablate.interventions import delete
from ablate.models.blocks import blocks
from ablate.training import TrainConfig, make_recipe, train
from tests.commands.test_train import synthetic


def test_vit_cifar_in_registry_and_blocks():
    torch.manual_seed(0)
    net = models.create("vit_cifar", num_layers=2, hidden_dim=32, num_heads=2, mlp_dim=64).eval()
    assert "vit_cifar" in models.names() and models.is_cifar("vit_cifar")
    assert [b.name for b in blocks(net)] == [f"encoder.layers.encoder_layer_{i}" for i in (0, 1)]
    assert len(blocks(net, granularity="branch")) == 4
    full = models.create("vit_cifar")
    assert len(blocks(full)) == 7 and full.hidden_dim == 256
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), delete(net, [0]):
        assert net(x).shape == (2, 10)


def test_vit_recipe_and_one_epoch(tmp_path):
    r = make_recipe("vit_cifar")
    assert (r.optimizer, r.schedule, r.weight_decay) == ("adamw", "cosine", 5e-2)
    assert (r.lr, r.label_smoothing, r.epochs) == (1e-3, 0.1, 100)  # Lee et al. 2021
    assert (r.randaug_ops, r.mixup_alpha, r.cutmix_alpha, r.mix_prob) == (2, 1.0, 1.0, 0.5)
    assert TrainConfig(model="vit_cifar").recipe().lr == 1e-3  # no SGD rate from the flags
    assert TrainConfig(model="resnet20").recipe() == make_recipe("resnet20")
    cfg = TrainConfig(model="vit_cifar", epochs=1, batch_size=32, device="cpu",
                      out=str(tmp_path / "run"), progress=False)
    train(cfg, train_data=synthetic(64, "train", hw=32), test_data=synthetic(32, "test", 1, 32))
    with open(tmp_path / "run" / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and float(rows[0]["train_loss"]) > 0
