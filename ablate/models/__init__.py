"""Model registry: ``create(name, **kw)`` builds any supported network by name.

CIFAR networks (He et al. 2015, 2016): ``resnet20 resnet32 resnet44 resnet56 resnet110 resnet1202``,
their plain twins ``plain20 ... plain110`` and ``preact_resnet20 ... preact_resnet110``.
torchvision ImageNet networks: ``resnet18 ... resnet152`` and ``vgg11 ... vgg19_bn``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence

from torch import nn

from ..errors import UsageError
from . import torchvision_models
from .cifar_resnet import (
    BasicBlock,
    CifarResNet,
    PlainBlock,
    PreActBlock,
    linear_survival,
    set_survival,
)
from .vit_cifar import vit_cifar

__all__ = ["create", "names", "is_cifar", "CifarResNet", "linear_survival", "set_survival"]

CIFAR_DEPTHS = (20, 32, 44, 56, 110, 1202)
_BLOCKS = {"resnet": BasicBlock, "plain": PlainBlock, "preact_resnet": PreActBlock}


def _cifar_builder(block: type[nn.Module], depth: int) -> Callable[..., nn.Module]:
    def build(
        num_classes: int = 10,
        option: str = "A",
        stochastic_depth: float | Sequence[float] | None = None,
        sd_mode: str = "batch",
    ) -> nn.Module:
        """``stochastic_depth``: p_L of the linear rule, or one survival probability per block."""
        n = (depth - 2) // 6
        survival = None
        if stochastic_depth is not None:
            if block is PlainBlock:
                raise UsageError("stochastic depth needs residual blocks; plain nets have none")
            survival = (
                linear_survival(3 * n, float(stochastic_depth))
                if isinstance(stochastic_depth, (int, float))
                else list(stochastic_depth)
            )
        return CifarResNet(block, n, num_classes, option, survival, sd_mode)

    return build


_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
for _prefix, _block in _BLOCKS.items():
    for _depth in CIFAR_DEPTHS:
        if _prefix != "resnet" and _depth == 1202:
            continue
        _REGISTRY[f"{_prefix}{_depth}"] = _cifar_builder(_block, _depth)
_REGISTRY["vit_cifar"] = vit_cifar  # ViT-Lite-7/4 (Hassani et al. 2021) for 32x32 images
for _name in torchvision_models.RESNETS + torchvision_models.VGGS:
    _REGISTRY[_name] = lambda _n=_name, **kw: torchvision_models.create(_n, **kw)


def names() -> list[str]:
    """All model names the registry can build."""
    return list(_REGISTRY)


def is_cifar(name: str) -> bool:
    tv = name.startswith("vgg") or name in torchvision_models.RESNETS
    return name in _REGISTRY and not tv


def check_name(name: str) -> str:
    """Return ``name`` if known, else raise a UsageError with close matches."""
    if name in _REGISTRY:
        return name
    close = difflib.get_close_matches(name, names(), n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(close)}?" if close else "see --list-models"
    raise UsageError(f"unknown model {name!r}: {hint}")


def create(name: str, **kwargs) -> nn.Module:
    """Build model ``name`` with fresh weights (CIFAR nets: kaiming init; torchvision: its own).

    CIFAR nets take ``num_classes``, ``option`` ("A" zero-padding or "B" projection shortcuts),
    ``stochastic_depth`` (p_L, or a list of survival probabilities) and ``sd_mode``
    ("batch" or "row"); torchvision nets take ``weights`` and ``num_classes``.
    """
    return _REGISTRY[check_name(name)](**kwargs)
