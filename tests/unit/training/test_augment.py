"""The ViT recipe's batched augmentation: RandAugment, Mixup/CutMix, soft targets, the linear
warm-up, and a resumed ViT run that ends where an uninterrupted one does."""

from __future__ import annotations

import csv
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torchvision.transforms.v2 import functional as TF

from ablate import models
from ablate.training import TrainConfig, train
from ablate.training import augment as A
from ablate.training.config import Recipe, lr_at, paper_recipe
from tests.commands.test_train import synthetic

CPU = torch.device("cpu")


def _images(n: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)


def test_randaugment_keeps_shape_and_dtype_and_follows_the_generator():
    x = _images()
    draws = [A.draw_randaugment(16, 2, torch.Generator().manual_seed(3), CPU) for _ in range(2)]
    assert torch.equal(draws[0][0], draws[1][0]) and torch.equal(draws[0][1], draws[1][1])
    ops, signs = draws[0]
    assert ops.shape == (16, 2) and set(signs.unique().tolist()) <= {-1.0, 1.0}
    y = A.randaugment(x, ops, signs, 9)
    assert y.shape == x.shape and y.dtype == torch.uint8
    assert torch.equal(y, A.randaugment(x, ops, signs, 9))
    ident = torch.zeros_like(ops)
    assert torch.equal(A.randaugment(x, ident, signs, 9), x)
    assert not torch.equal(y, x)


@pytest.mark.parametrize("name,sign,reference", [
    ("brightness", 1.0, lambda x: TF.adjust_brightness(x, 1.27)),
    ("contrast", -1.0, lambda x: TF.adjust_contrast(x, 0.73)),
    ("color", 1.0, lambda x: TF.adjust_saturation(x, 1.27)),
    ("sharpness", 1.0, lambda x: TF.adjust_sharpness(x, 1.27)),
    ("posterize", 1.0, lambda x: TF.posterize(x, 7)),
    ("solarize", 1.0, lambda x: TF.solarize(x, 255 * 0.7)),
    ("autocontrast", 1.0, TF.autocontrast),
    ("equalize", 1.0, TF.equalize),
    ("rotate", 1.0, lambda x: TF.rotate(x, 9.0)),
    ("translate_y", -1.0, lambda x: TF.affine(x, 0.0, [0, -4], 1.0, [0.0, 0.0])),
])
def test_each_op_matches_torchvision_at_magnitude_9(name, sign, reference):
    x = _images(8)
    ops = torch.full((8, 1), A.OPS.index(name))
    out = A.randaugment(x, ops, torch.full((8, 1), sign), 9)
    assert (out.int() - reference(x).int()).abs().max() <= 1


def test_mix_draws_follow_the_generator_and_respect_the_probability():
    def draw(prob=0.5, mixup=1.0, cutmix=1.0):
        return A.draw_mixes(400, mixup, cutmix, prob, (32, 32),
                            torch.Generator().manual_seed(0), CPU)

    mixes = draw()
    assert mixes == draw()
    on = [m for m in mixes if m is not None]
    assert 150 < len(on) < 250
    cut = [m for m in on if m.box is not None]
    assert 0.3 < len(cut) / len(on) < 0.7 and all(0 <= m.lam <= 1 for m in on)
    for m in cut:  # lambda is the kept area
        y0, y1, x0, x1 = m.box
        assert m.lam == pytest.approx(1 - (y1 - y0) * (x1 - x0) / 1024)
    assert all(m is None or m.box is None for m in draw(1.0, cutmix=0.0))
    assert all(m is not None and m.box is not None for m in draw(1.0, mixup=0.0))


def test_mixed_batches_and_soft_targets():
    x = torch.randn(4, 3, 32, 32)
    y = torch.tensor([0, 1, 2, 3])
    mix = A.Mix(0.7)
    assert torch.allclose(A.mix_batch(x, mix), 0.7 * x + 0.3 * x.flip(0))
    cut = A.Mix(1 - 16 * 8 / 1024, (0, 16, 8, 16))
    out = A.mix_batch(x, cut)
    assert torch.equal(out[:, :, :16, 8:16], x.flip(0)[:, :, :16, 8:16])
    assert torch.equal(out[:, :, 16:], x[:, :, 16:])
    t = A.soft_targets(y, 5, mix)
    assert torch.allclose(t.sum(1), torch.ones(4)) and t[0].tolist() == pytest.approx(
        [0.7, 0, 0, 0.3, 0])
    logits = torch.randn(4, 5)
    soft = F.cross_entropy(logits, t, label_smoothing=0.1)
    pair = (0.7 * F.cross_entropy(logits, y, label_smoothing=0.1)
            + 0.3 * F.cross_entropy(logits, y.flip(0), label_smoothing=0.1))
    assert soft.item() == pytest.approx(pair.item(), rel=1e-5)
    assert torch.equal(A.soft_targets(y, 5, None), F.one_hot(y, 5).float())


def test_augmentation_is_off_for_resnets_and_linear_warmup_ramps():
    for r in (Recipe(), paper_recipe("resnet110"), paper_recipe("resnet56", "huang")):
        assert (r.randaug_ops, r.mixes, r.warmup_linear) == (0, False, False)
    r = Recipe(schedule="cosine", epochs=10, lr=1e-3, warmup_iters=20, warmup_linear=True)
    assert lr_at(r, 0, 10) == pytest.approx(5e-5) and lr_at(r, 19, 10) == pytest.approx(1e-3)
    assert lr_at(r, 20, 10) == pytest.approx(1e-3) and lr_at(r, 99, 10) < 1e-6


def _tiny_vit(**kw):
    return models.vit_cifar(num_layers=2, hidden_dim=32, num_heads=2, mlp_dim=64, **kw)


def test_tiny_vit_trains_and_resumes_identically_with_the_vit_recipe(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "create", lambda name, **kw: _tiny_vit(**kw))
    monkeypatch.setattr("ablate.training.config.vit_recipe",
                        lambda: replace(Recipe(), **{**_VIT, "warmup_iters": 2, "mix_prob": 1.0}))
    tr, te = synthetic(64, "train", hw=32), synthetic(16, "test", 1, 32)

    def cfg(out, **kw):
        return TrainConfig(model="vit_cifar", epochs=2, batch_size=16, device="cpu",
                           out=str(tmp_path / out), progress=False, amp="off", **kw)

    whole = load_file(str(train(cfg("whole"), train_data=tr, test_data=te)))
    train(cfg("part", stop_after=1), train_data=tr, test_data=te)
    resumed = load_file(str(train(cfg("part", resume=True), train_data=tr, test_data=te)))
    assert all(torch.equal(resumed[k], whole[k]) for k in whole)
    with open(tmp_path / "whole" / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(float(r["train_loss"]) > 0 for r in rows)


_VIT = {k: getattr(paper_recipe("vit_cifar"), k) for k in (
    "schedule", "lr", "weight_decay", "optimizer", "warmup_linear", "label_smoothing",
    "randaug_ops", "randaug_magnitude", "mixup_alpha", "cutmix_alpha", "mix_prob")}
