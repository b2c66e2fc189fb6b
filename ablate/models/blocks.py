"""One block abstraction for every supported architecture.

``blocks(model)`` lists the deletable units of a model in forward order. A residual unit is a
block computing ``post(residual(x) + shortcut(x))``; a plain unit (a layer of a plain net or a VGG)
is conv + BN + ReLU. ``chain(model)`` gives the whole forward pass as a sequence of steps, units
and the glue between them, whose composition is bitwise the model's own forward: the batched
lesion engine and the path-gradient measures run on it. torchvision ViTs chain as stem, encoder
layers (``transformers.ViTBlock``: gain g scales both branches, 0 is the identity) and head.
``Block``, ``Glue``, ``get_module`` and ``set_module`` live in :mod:`ablate.models.units` (below
this module and ``transformers``) and are re-exported here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from ablate._infra.errors import UsageError
from ablate.models import transformers as tb
from ablate.models.cifar_resnet import CifarResNet, PlainBlock, _Residual
from ablate.models.units import Block, Glue, _resolve, get_module, set_module

__all__ = ["Block", "Glue", "blocks", "chain", "deletable_units", "eval_mode", "get_module",
           "restore_flags", "set_module", "train_flags"]


# ---------------------------------------------------------------------------------------------
# Residual blocks: ours expose residual/shortcut/post; torchvision's are read through adapters.


def _own(index: int, name: str, stage: int, m: nn.Module) -> Block:
    return Block(
        index, name, stage, bool(getattr(m, "changes_shape", False)), "residual", m,
        _residual=m.residual, _shortcut=m.shortcut, _post=m.post,
    )


def _tv_block(index: int, name: str, stage: int, m: nn.Module) -> Block:
    bottleneck = isinstance(m, torchvision.models.resnet.Bottleneck)

    def residual(x: Tensor) -> Tensor:
        # torchvision's forward uses one in-place ReLU module twice; here it is functional and
        # out of place, so nothing a caller keeps is overwritten.
        out = F.relu(m.bn1(m.conv1(x)))
        if bottleneck:
            out = F.relu(m.bn2(m.conv2(out)))
            return m.bn3(m.conv3(out))
        return m.bn2(m.conv2(out))

    def shortcut(x: Tensor) -> Tensor:
        return m.downsample(x) if m.downsample is not None else x

    return Block(
        index, name, stage, m.downsample is not None, "residual", m,
        _residual=residual, _shortcut=shortcut, _post=F.relu,
    )


def _plain(
    index: int, name: str, stage: int, conv: nn.Module, bn: nn.Module | None,
    bn_name: str | None, relu_name: str | None,
) -> Block:
    """A plain unit from the modules now at its place (interventions may have replaced them)."""

    def unit(x: Tensor) -> Tensor:
        y = conv(x)
        return F.relu(bn(y) if bn is not None else y)

    c = _resolve(conv)
    shape = c.in_channels != c.out_channels or c.stride != (1, 1)
    return Block(index, name, stage, shape, "plain", conv, bn_name, relu_name, _unit=unit)


# ---------------------------------------------------------------------------------------------
# Chains, per architecture.


def chain(model: nn.Module) -> list[Block | Glue]:
    """The forward pass of ``model`` as steps; composing them equals ``model(x)`` bitwise."""
    if tb.is_transformer(model):
        return tb.vit_chain(model)
    if isinstance(model, CifarResNet):
        return _chain_cifar(model)
    if isinstance(model, torchvision.models.ResNet):
        return _chain_tv_resnet(model)
    if isinstance(model, torchvision.models.VGG):
        return _chain_vgg(model)
    raise UsageError(
        f"{type(model).__name__} is not a supported architecture: use a model from "
        "ablate.models (CIFAR ResNets, plain nets, torchvision ResNets, VGGs and ViTs)"
    )


def blocks(model: nn.Module, granularity: str = "block") -> list[Block]:
    """The deletable units of ``model`` in forward order (see :class:`Block`).

    Transformers: ``granularity="branch"`` lists each layer's attention and MLP branch.
    """
    if tb.is_transformer(model):
        return tb.transformer_blocks(model, granularity)
    if granularity not in tb.GRANULARITIES:
        raise UsageError(f"granularity must be one of {tb.GRANULARITIES}, not {granularity!r}")
    return [s for s in chain(model) if isinstance(s, Block)]


def deletable_units(model: nn.Module) -> list[Block]:
    """The units that can be deleted alone: every residual block, every shape-keeping plain
    unit (deleting a plain unit that changes the feature shape breaks the forward pass)."""
    return [b for b in blocks(model) if b.kind == "residual" or not b.changes_shape]


def _chain_cifar(model: CifarResNet) -> list[Block | Glue]:
    steps: list[Block | Glue] = [Glue("stem", model.stem)]
    for stage in (1, 2, 3):
        layer = getattr(model, f"layer{stage}")
        for i, m in enumerate(layer):
            name = f"layer{stage}.{i}"
            inner = _resolve(m)
            if isinstance(inner, PlainBlock):
                # Plain units are conv+BN(+ReLU, functional in PlainBlock.forward).
                for j in (1, 2):
                    conv = getattr(m, f"conv{j}")
                    bn = getattr(m, f"bn{j}")
                    idx = sum(isinstance(s, Block) for s in steps)
                    unit = _plain(idx, f"{name}.conv{j}", stage, conv, bn, f"{name}.bn{j}", None)
                    steps.append(unit)
            else:
                idx = sum(isinstance(s, Block) for s in steps)
                steps.append(_own(idx, name, stage, m) if _is_own(m) else _tv_block(
                    idx, name, stage, m))
    steps.append(Glue("head", model.head))
    return steps


def _is_own(m: nn.Module) -> bool:
    return isinstance(m, _Residual) or getattr(m, "is_intervention", False)


def _chain_tv_resnet(model: torchvision.models.ResNet) -> list[Block | Glue]:
    def stem(x: Tensor) -> Tensor:
        return model.maxpool(model.relu(model.bn1(model.conv1(x))))

    def head(x: Tensor) -> Tensor:
        return model.fc(torch.flatten(model.avgpool(x), 1))

    steps: list[Block | Glue] = [Glue("stem", stem)]
    idx = 0
    for stage in (1, 2, 3, 4):
        for i, m in enumerate(getattr(model, f"layer{stage}")):
            name = f"layer{stage}.{i}"
            steps.append(_own(idx, name, stage, m) if _is_own(m) else _tv_block(
                idx, name, stage, m))
            idx += 1
    steps.append(Glue("head", head))
    return steps


def _chain_vgg(model: torchvision.models.VGG) -> list[Block | Glue]:
    feats = list(model.features.named_children())
    steps: list[Block | Glue] = []
    stage, idx, i = 1, 0, 0
    while i < len(feats):
        key, m = feats[i]
        inner = _resolve(m)
        if isinstance(inner, nn.Conv2d):
            bn_key = relu_key = None
            j = i + 1
            if j < len(feats) and isinstance(_resolve(feats[j][1]), (nn.BatchNorm2d, nn.Identity)):
                bn_key, j = feats[j][0], j + 1
            if j < len(feats) and isinstance(_resolve(feats[j][1]), (nn.ReLU, nn.Identity)):
                relu_key, j = feats[j][0], j + 1
            bn = model.features.get_submodule(bn_key) if bn_key else None
            steps.append(
                _plain(idx, f"features.{key}", stage, m, bn,
                       f"features.{bn_key}" if bn_key else None,
                       f"features.{relu_key}" if relu_key else None)
            )
            idx, i = idx + 1, j
        else:
            steps.append(Glue(f"features.{key}", m))
            stage += isinstance(m, nn.MaxPool2d)
            i += 1

    def head(x: Tensor) -> Tensor:
        return model.classifier(torch.flatten(model.avgpool(x), 1))

    steps.append(Glue("head", head))
    return steps


def train_flags(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    """Every module's own train/eval flag, for :func:`restore_flags`."""
    return [(m, m.training) for m in model.modules()]


def restore_flags(flags: list[tuple[nn.Module, bool]]) -> None:
    """Put back each module's own flag (not ``model.train(was)``, which would put frozen
    BatchNorm layers of a training model back in train mode)."""
    for m, flag in flags:
        m.training = flag


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode while the block runs, then every module's own flag back."""
    flags = train_flags(model)
    model.eval()
    try:
        yield
    finally:
        restore_flags(flags)
