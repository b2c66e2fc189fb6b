"""Model registry: ``create(name, **kw)`` builds any supported network by name.

CIFAR networks (He et al. 2015, 2016): ``resnet20 resnet32 resnet44 resnet56 resnet110 resnet1202``,
their plain twins ``plain20 ... plain110`` and ``preact_resnet20 ... preact_resnet110``.
torchvision ImageNet networks: ``resnet18 ... resnet152`` and ``vgg11 ... vgg19_bn``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping, Sequence

from torch import nn

from ablate._infra.errors import UsageError
from ablate.models import torchvision_models
from ablate.models.cifar_resnet import (
    BasicBlock,
    CifarResNet,
    PlainBlock,
    PreActBlock,
    linear_survival,
    set_survival,
)

from .vit_cifar import vit_cifar

__all__ = [
    "CifarResNet", "FAMILIES", "check_name", "create", "family", "is_cifar", "linear_survival",
    "names", "set_survival",
]

FAMILIES = ("resnet", "plain", "stochastic_depth", "preact", "torchvision", "vit")

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


_SD = re.compile(r"(?<![a-z])sd(?![a-z])|stochastic")


def _family_of_name(name: str) -> str | None:
    name = name.strip().lower()
    if name.startswith("plain"):
        return "plain"
    if name.startswith("preact"):
        return "preact"
    if _SD.search(name):
        return "stochastic_depth"
    if name.startswith("vgg"):
        return "torchvision"
    if name.startswith("vit"):
        return "vit"
    m = re.match(r"resnet[_-]?(\d+)", name)
    if m:
        depth = int(m.group(1))
        if f"resnet{depth}" in torchvision_models.RESNETS:
            return "torchvision"
        if depth >= 8 and (depth - 2) % 6 == 0:
            return "resnet"
    return None


def family(name: str, card: Mapping | None = None, default: str | None = None) -> str:
    """The one model-family rule: resnet | plain | stochastic_depth | preact | torchvision | vit.

    A checkpoint card says so first (stochastic depth in it or its ``arch_kwargs``, its
    ``arch``); else the name: ``plain*``, ``preact*``, an ``sd`` token or ``stochastic``,
    ``vgg*`` and ``resnet{18,34,50,101,152}`` (torchvision), ``vit*``, ``resnet{6n+2}``. A name
    that says nothing gives ``default``, or a ValueError when there is none.
    """
    card = card or {}
    if card.get("stochastic_depth") or \
            (card.get("arch_kwargs") or {}).get("stochastic_depth") is not None:
        return "stochastic_depth"
    if str(card.get("arch", "")).startswith("plain"):
        return "plain"
    for candidate in (name, card.get("arch")):
        found = _family_of_name(str(candidate)) if candidate else None
        if found:
            return found
    if default is not None:
        return default
    raise ValueError(f"cannot tell the model family of {name!r}")


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
