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
    "CifarResNet", "FAMILIES", "arch_family", "check_name", "create", "family", "is_cifar",
    "is_transformer_arch", "linear_survival", "names", "set_survival",
]

FAMILIES = ("resnet", "plain", "stochastic_depth", "preact", "torchvision", "vit")

CIFAR_DEPTHS = (20, 32, 44, 56, 110, 1202)
_BLOCKS = {"resnet": BasicBlock, "plain": PlainBlock, "preact_resnet": PreActBlock}
_BLOCK_FAMILY = {"resnet": "resnet", "plain": "plain", "preact_resnet": "preact"}


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
_ARCH_FAMILY: dict[str, str] = {}  # each registered architecture's family, set where it is added
for _prefix, _block in _BLOCKS.items():
    for _depth in CIFAR_DEPTHS:
        if _prefix != "resnet" and _depth == 1202:
            continue
        _REGISTRY[f"{_prefix}{_depth}"] = _cifar_builder(_block, _depth)
        _ARCH_FAMILY[f"{_prefix}{_depth}"] = _BLOCK_FAMILY[_prefix]
_REGISTRY["vit_cifar"] = vit_cifar  # ViT-Lite-7/4 (Hassani et al. 2021) for 32x32 images
_ARCH_FAMILY["vit_cifar"] = "vit"
for _name in torchvision_models.RESNETS + torchvision_models.VGGS:
    _REGISTRY[_name] = lambda _n=_name, **kw: torchvision_models.create(_n, **kw)
    _ARCH_FAMILY[_name] = "torchvision"


def names() -> list[str]:
    """All model names the registry can build."""
    return list(_REGISTRY)


def arch_family(name: str) -> str | None:
    """The family the registry gives architecture ``name`` (resnet | plain | preact |
    torchvision | vit), None for a name it does not know. An architecture's family only:
    stochastic depth is a way of training, told by a card (see :func:`family`)."""
    return _ARCH_FAMILY.get(name)


def is_cifar(name: str) -> bool:
    """A registered architecture for 32x32 CIFAR images (anything but torchvision's)."""
    return name in _REGISTRY and _ARCH_FAMILY.get(name) != "torchvision"


def is_transformer_arch(name: str) -> bool:
    """A registered transformer (``vit_cifar``): no convolutions, no BatchNorm."""
    return _ARCH_FAMILY.get(name) == "vit"


_SD = re.compile(r"(?<![a-z])sd(?![a-z])|stochastic")


def _family_of_name(name: str) -> str | None:
    """The registry's family of ``name``; for names it does not know (checkpoint and table
    names: ``resnet110-sd``, ``resnet56_stochastic``), the naming rules of :func:`family`."""
    name = name.strip().lower()
    if name in _ARCH_FAMILY:
        return _ARCH_FAMILY[name]
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
        if _ARCH_FAMILY.get(f"resnet{depth}") == "torchvision":
            return "torchvision"
        if depth >= 8 and (depth - 2) % 6 == 0:
            return "resnet"
    return None


def family(
    model: str | object | None, card: Mapping | None = None, default: str | None = None,
) -> str:
    """The one model-family rule: resnet | plain | stochastic_depth | preact | torchvision | vit.

    ``model`` is a registry or checkpoint name, or a ``checkpoint.Loaded`` (its ``arch``, and its
    ``card`` unless ``card`` is given). In order: a card with stochastic depth (in it or its
    ``arch_kwargs``) is ``stochastic_depth``; a card whose ``arch`` is a plain net is ``plain``;
    then the name, then the card's ``arch``: a registered architecture has the registry's family
    (:func:`arch_family`); any other name is read by the naming rules: ``plain*``, ``preact*``,
    an ``sd`` token or ``stochastic``, ``vgg*`` and ``resnet{18,34,50,101,152}``
    (torchvision), ``vit*``, ``resnet{6n+2}``. What says nothing gives ``default``, or a
    ValueError when there is none.
    """
    if model is not None and not isinstance(model, str) and hasattr(model, "arch"):
        card = getattr(model, "card", None) if card is None else card
        model = model.arch
    card = card or {}
    if card.get("stochastic_depth") or \
            (card.get("arch_kwargs") or {}).get("stochastic_depth") is not None:
        return "stochastic_depth"
    if card.get("arch") and _family_of_name(str(card["arch"])) == "plain":
        return "plain"
    for candidate in (model, card.get("arch")):
        found = _family_of_name(str(candidate)) if candidate else None
        if found:
            return found
    if default is not None:
        return default
    raise ValueError(f"cannot tell the model family of {model!r}")


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
