"""Reference forwards written out by hand for the intervention tests: they use the models'
modules and torch.nn.functional directly, never ablate's Block/chain helpers."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ablate import models
from tests.helpers import pad_a, randomise_bn

# ---------------------------------------------------------------------------------------------
# helpers


def make(name: str, vggs=None, **kw) -> nn.Module:
    torch.manual_seed(0)
    if name.startswith("vgg"):
        model = copy.deepcopy(vggs[name])
    elif name in ("resnet18",):
        model = models.create(name, num_classes=10)
    else:
        model = models.create(name, **kw)
    return randomise_bn(model).double().eval()


def images(n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


def cifar_blocks(model: nn.Module) -> list[nn.Module]:
    return [m for layer in (model.layer1, model.layer2, model.layer3) for m in layer]


def hand_cifar(model, x, gains=None, order=None, gate_rows=None):
    """A CIFAR ResNet or pre-activation ResNet by hand.

    ``gains[pos]``: multiply position pos's branch (0: skip it); ``order[pos]``: the block run at
    pos; ``gate_rows[pos]``: a bool per row, False rows skip the branch.
    """
    gains, preact = gains or {}, model.preact
    bl = cifar_blocks(model)
    order = order or list(range(len(bl)))
    h = model.conv1(x) if preact else F.relu(model.bn1(model.conv1(x)))
    for pos, src in enumerate(order):
        m, g = bl[src], gains.get(pos, 1.0)
        s = pad_a(h, m.conv2.out_channels)
        post = (lambda y: y) if preact else F.relu
        if g == 0.0:
            h = post(s)
            continue
        if preact:
            b = m.conv2(F.relu(m.bn2(m.conv1(F.relu(m.bn1(h))))))
        else:
            b = m.bn2(m.conv2(F.relu(m.bn1(m.conv1(h)))))
        b = b * m.survival if m.survival != 1.0 else b
        full = post((b if g == 1.0 else g * b) + s)
        if gate_rows is not None and pos in gate_rows:
            keep = gate_rows[pos].view(-1, 1, 1, 1)
            full = torch.where(keep, full, post(s))
        h = full
    if preact:
        h = F.relu(model.bn(h))
    return model.linear(F.avg_pool2d(h, 8).flatten(1))


def hand_tv_resnet(model, x, gains=None):
    gains = gains or {}
    h = model.maxpool(F.relu(model.bn1(model.conv1(x))))
    bl = [m for layer in (model.layer1, model.layer2, model.layer3, model.layer4) for m in layer]
    for pos, m in enumerate(bl):
        g = gains.get(pos, 1.0)
        s = m.downsample(h) if m.downsample is not None else h
        if g == 0.0:
            h = F.relu(s)
            continue
        b = m.bn2(m.conv2(F.relu(m.bn1(m.conv1(h)))))
        h = F.relu((b if g == 1.0 else g * b) + s)
    return model.fc(torch.flatten(model.avgpool(h), 1))


def hand_plain(model, x, deleted=()):
    h = F.relu(model.bn1(model.conv1(x)))
    u = 0
    for m in cifar_blocks(model):
        for conv, bn in ((m.conv1, m.bn1), (m.conv2, m.bn2)):
            if u not in deleted:
                h = F.relu(bn(conv(h)))
            u += 1
    return model.linear(F.avg_pool2d(h, 8).flatten(1))


def hand_vgg(model, x, deleted=()):
    h, u, skip = x, 0, False
    for m in model.features:
        if isinstance(m, nn.Conv2d):
            skip = u in deleted
            u += 1
        if isinstance(m, nn.MaxPool2d):
            skip = False
        if not skip:
            h = F.relu(h) if isinstance(m, nn.ReLU) else m(h)
    return model.classifier(torch.flatten(model.avgpool(h), 1))


def run(model, x):
    with torch.no_grad():
        return model(x)


