"""Model helpers shared by the test modules."""

from __future__ import annotations

import torch
from torch import nn

from ablate import models


def randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random running stats and affine params, so BatchNorm is not the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c, dt = m.num_features, m.weight.dtype
                m.running_mean.copy_((torch.rand(c, generator=g) - 0.5).to(dt))
                m.running_var.copy_((torch.rand(c, generator=g) + 0.5).to(dt))
                m.weight.copy_((torch.rand(c, generator=g) + 0.5).to(dt))
                m.bias.copy_((torch.rand(c, generator=g) * 0.6 - 0.3).to(dt))
    return model


def small_vgg(name: str) -> nn.Module:
    """A torchvision VGG from the registry with its 100M-parameter head swapped for a small one.

    Built on the meta device (the big head is never allocated), then the features are
    materialised on the CPU and initialised as torchvision does.
    """
    with torch.device("meta"):
        vgg = models.create(name, num_classes=10)
    vgg.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    vgg.classifier = nn.Sequential(
        nn.Linear(512, 32), nn.ReLU(True), nn.Dropout(0.5), nn.Linear(32, 10)
    )
    vgg.features.to_empty(device="cpu")
    for m in vgg.features:
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            m.reset_parameters()
    assert all(p.device.type == "cpu" for p in vgg.parameters())
    return vgg


def pad_a(x: torch.Tensor, planes: int) -> torch.Tensor:
    """Option-A shortcut written out: every second pixel, channels centred in zeros."""
    if x.shape[1] == planes:
        return x
    sub = x[:, :, ::2, ::2]
    out = torch.zeros(x.shape[0], planes, *sub.shape[2:], dtype=x.dtype)
    pad = (planes - x.shape[1]) // 2
    out[:, pad:pad + x.shape[1]] = sub
    return out
