"""blocks()/chain(): unit lists, shape flags, and bitwise equality with each model's forward."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from ablate import models
from ablate._infra.errors import UsageError
from ablate.models.blocks import Block, Glue, blocks, chain
from tests.helpers import randomise_bn, small_vgg


@pytest.fixture(scope="module")
def vggs():
    torch.manual_seed(0)
    return {n: small_vgg(n) for n in ("vgg11", "vgg11_bn")}


def make(name: str, vggs=None) -> nn.Module:
    torch.manual_seed(0)
    model = copy.deepcopy(vggs[name]) if name.startswith("vgg") else models.create(name)
    return randomise_bn(model).double().eval()


def compose(steps, x):
    for s in steps:
        x = s.unit(x) if isinstance(s, Block) else s(x)
    return x


def test_resnet20_blocks():
    bl = blocks(models.create("resnet20"))
    assert len(bl) == 9
    assert [b.index for b in bl] == list(range(9))
    assert [b.changes_shape for b in bl] == [i in (3, 6) for i in range(9)]
    assert [b.downsample for b in bl] == [b.changes_shape for b in bl]
    assert [b.stage for b in bl] == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert [b.name for b in bl] == [f"layer{s}.{i}" for s in (1, 2, 3) for i in range(3)]
    assert all(b.kind == "residual" for b in bl)


def test_blocks_refer_to_the_models_modules():
    model = models.create("resnet20")
    for b in blocks(model):
        assert b.module is model.get_submodule(b.name)


def test_resnet110_has_54_blocks():
    bl = blocks(models.create("resnet110"))
    assert len(bl) == 54
    assert [b.index for b in bl if b.changes_shape] == [18, 36]
    assert [b.stage for b in bl] == [1] * 18 + [2] * 18 + [3] * 18


def test_plain20_units():
    model = models.create("plain20")
    bl = blocks(model)
    assert len(bl) == 18
    assert all(b.kind == "plain" for b in bl)
    assert [b.changes_shape for b in bl] == [i in (6, 12) for i in range(18)]
    assert bl[6].name == "layer2.0.conv1" and bl[12].name == "layer3.0.conv1"
    assert [b.stage for b in bl] == [1] * 6 + [2] * 6 + [3] * 6
    for b in bl:
        assert isinstance(b.module, nn.Conv2d) and b.module is model.get_submodule(b.name)
        assert b.bn == b.name.replace("conv", "bn")
        assert isinstance(model.get_submodule(b.bn), nn.BatchNorm2d)


def test_torchvision_resnet18_blocks():
    bl = blocks(models.create("resnet18", num_classes=10))
    assert len(bl) == 8
    assert [b.changes_shape for b in bl] == [i in (2, 4, 6) for i in range(8)]
    assert [b.stage for b in bl] == [1, 1, 2, 2, 3, 3, 4, 4]
    assert bl[5].name == "layer3.1"


def test_vgg11_bn_units(vggs):
    model = vggs["vgg11_bn"]
    bl = blocks(model)
    assert len(bl) == 8
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert [b.module for b in bl] == convs
    channels_change = [c.in_channels != c.out_channels for c in convs]
    assert channels_change == [True, True, True, False, True, False, False, False]
    assert [b.changes_shape for b in bl] == channels_change
    assert [b.stage for b in bl] == [1, 2, 3, 3, 4, 4, 5, 5]  # a stage ends at each max-pool
    for b in bl:
        k = int(b.name.split(".")[1])
        assert b.bn == f"features.{k + 1}" and b.relu == f"features.{k + 2}"
    bl_plain = blocks(vggs["vgg11"])
    assert len(bl_plain) == 8 and all(b.bn is None for b in bl_plain)


def test_unsupported_model_is_a_usage_error():
    with pytest.raises(UsageError, match="not a supported architecture"):
        chain(nn.Sequential(nn.Conv2d(3, 3, 3)))


@pytest.mark.parametrize(
    "name,shape",
    [
        ("resnet20", (3, 3, 32, 32)),
        ("plain20", (3, 3, 32, 32)),
        ("preact_resnet20", (3, 3, 32, 32)),
        ("resnet18", (2, 3, 32, 32)),
        ("resnet50", (1, 3, 64, 64)),
        ("vgg11", (2, 3, 32, 32)),
        ("vgg11_bn", (2, 3, 32, 32)),
    ],
)
def test_chain_composes_to_the_forward_bitwise(name, shape, vggs):
    model = make(name, vggs)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    steps = chain(model)
    assert isinstance(steps[-1], Glue) and steps[-1].name == "head"
    with torch.no_grad():
        want = model(x)
        got = compose(steps, x)
    assert got.shape == want.shape
    assert torch.equal(got, want)
    # and not by accident: the chain reads the model's current weights
    other = copy.deepcopy(model)
    with torch.no_grad():
        next(m for m in other.modules() if isinstance(m, nn.Conv2d)).weight.mul_(1.5)
        assert not torch.equal(compose(chain(other), x), want)


@pytest.mark.parametrize(
    "name,shape",
    [
        ("resnet20", (2, 3, 32, 32)),
        ("preact_resnet20", (2, 3, 32, 32)),
        ("resnet18", (2, 3, 32, 32)),
        ("resnet50", (1, 3, 64, 64)),
    ],
)
def test_residual_shortcut_post_recompose_each_block(name, shape):
    model = make(name)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    seen_downsample = False
    with torch.no_grad():
        for step in chain(model):
            if isinstance(step, Block):
                want = step.module(x)
                r, s = step.residual(x), step.shortcut(x)
                assert r.shape == s.shape == want.shape
                assert torch.equal(step.post(r + s), want)
                assert torch.equal(step.unit(x), want)
                assert torch.equal(step(x), want)
                assert torch.equal(step(x, 0.0), step.post(s))
                assert not torch.equal(step.post(s), want)  # the branch matters
                if not step.changes_shape:
                    assert torch.equal(s, x)  # identity shortcut
                else:
                    seen_downsample = True
                    assert s.shape != x.shape
                x = want
            else:
                x = step(x)
    assert seen_downsample


def test_post_is_relu_or_identity():
    y = torch.randn(4, 8, dtype=torch.float64)
    assert torch.equal(blocks(models.create("resnet20"))[0].post(y), y.clamp_min(0))
    assert torch.equal(blocks(models.create("preact_resnet20"))[0].post(y), y)


@pytest.mark.parametrize("name", ["plain20", "vgg11_bn"])
def test_plain_unit_has_no_residual(name, vggs):
    model = make(name, vggs)
    b = blocks(model)[3]
    x = torch.rand(1, b.module.in_channels, 8, 8, dtype=torch.float64)
    with pytest.raises(UsageError, match="no residual branch") as e:
        b.residual(x)
    assert "\n" not in str(e.value)
    with pytest.raises(UsageError):
        b.shortcut(x)
    with pytest.raises(UsageError):
        b.post(x)
    bn = model.get_submodule(b.bn)
    with torch.no_grad():
        assert torch.equal(b.unit(x), F.relu(bn(b.module(x))))
        assert torch.equal(b(x, 0.0), x)
    with pytest.raises(UsageError, match="kept or deleted"):
        b(x, 0.5)


def test_torchvision_block_in_resnet_chain_is_basicblock():
    model = models.create("resnet18", num_classes=10)
    assert all(isinstance(b.module, torchvision.models.resnet.BasicBlock) for b in blocks(model))
    model50 = models.create("resnet50", num_classes=10)
    bl = blocks(model50)
    assert len(bl) == 16
    assert [b.index for b in bl if b.changes_shape] == [0, 3, 7, 13]  # layer1.0 projects 64->256
