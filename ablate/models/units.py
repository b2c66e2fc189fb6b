"""The steps every architecture's forward pass is made of, below ``blocks`` and ``transformers``.

``Block`` is a deletable unit, ``Glue`` a step that is not one (stem, pooling, head);
``get_module``/``set_module`` read and replace submodules by qualified name; ``_resolve`` looks
through intervention wrappers. ``blocks`` (CNNs, and the dispatch of ``blocks``/``chain``) and
``transformers`` (ViTs, LMs) both build on this module; ``transformers`` never imports ``blocks``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ablate._infra.errors import UsageError
from ablate.models.cifar_resnet import BasicBlock, PreActBlock

__all__ = ["Block", "Glue", "get_module", "set_module"]


def get_module(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name) if name else model


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(get_module(model, parent), attr, module)


def _resolve(m: nn.Module) -> nn.Module:
    """The module an intervention wrapper stands in for (wrappers expose ``.inner``)."""
    while hasattr(m, "inner") and getattr(m, "is_intervention", False):
        m = m.inner
    return m


@dataclass(frozen=True, eq=False)
class Block:
    """A deletable unit: its place in forward order, where it lives, and how it computes.

    ``kind`` is "residual" or "plain". ``name`` is the qualified name of the module at the unit's
    position (residual: the block; plain: its convolution, with ``bn``/``relu`` beside it).
    """

    index: int
    name: str
    stage: int
    changes_shape: bool
    kind: str
    module: nn.Module
    bn: str | None = None  # plain units: qualified names of their BN and ReLU modules, if any
    relu: str | None = None
    _residual: Callable[[Tensor], Tensor] | None = field(default=None, repr=False)
    _shortcut: Callable[[Tensor], Tensor] | None = field(default=None, repr=False)
    _post: Callable[[Tensor], Tensor] | None = field(default=None, repr=False)
    _unit: Callable[[Tensor], Tensor] | None = field(default=None, repr=False)

    @property
    def downsample(self) -> bool:
        return self.changes_shape

    def residual(self, x: Tensor) -> Tensor:
        """The residual branch f(x) (residual units only)."""
        self._need("residual")
        return self._residual(x)

    def shortcut(self, x: Tensor) -> Tensor:
        """The shortcut: identity, option-A padding or a projection (residual units only)."""
        self._need("residual")
        return self._shortcut(x)

    def post(self, y: Tensor) -> Tensor:
        """What follows the addition: ReLU for original ResNets, nothing for pre-activation."""
        self._need("residual")
        return self._post(y)

    def unit(self, x: Tensor) -> Tensor:
        """The whole unit: post(residual + shortcut), or ReLU(BN(conv(x))) for a plain unit."""
        if self.kind == "residual":
            fast = _inplace(self.module)
            if fast is not None:
                return fast[1](fast[0](x).add_(self._shortcut(x)))
            return self._post(self._residual(x) + self._shortcut(x))
        return self._unit(x)

    def __call__(self, x: Tensor, gain: float = 1.0) -> Tensor:
        """The unit with its residual branch multiplied by ``gain`` (0 deletes the unit)."""
        return self.apply_gains(x, [gain], [x.shape[0]])

    def apply_gains(self, x: Tensor, gains: Sequence[float], sizes: Sequence[int]) -> Tensor:
        """Apply the unit to consecutive row chunks of ``x``, chunk i with gain ``gains[i]``.

        The residual branch is computed only on rows whose gain is not zero. Each row's result is
        bitwise what the unit alone (or the intervention wrappers) computes for it.
        """
        if self.kind == "plain":
            if any(g not in (0.0, 1.0) for g in gains):
                raise UsageError(f"plain unit {self.name} can only be kept or deleted, not scaled")
            if all(g == 1.0 for g in gains):
                return self._unit(x)
            if all(g == 0.0 for g in gains):
                return x
            return torch.cat(
                [c if g == 0.0 else self._unit(c) for c, g in zip(x.split(list(sizes)), gains)]
            )
        s = self._shortcut(x)
        if all(g == 0.0 for g in gains):
            return self._post(s)
        fast = _inplace(self.module)
        residual = self._residual if fast is None else fast[0]
        if all(g != 0.0 for g in gains):
            r = residual(x)
            if all(g == 1.0 for g in gains):
                return self._post(r + s) if fast is None else fast[1](r.add_(s))
            rs = r.split(list(sizes))
        else:
            chunks = x.split(list(sizes))
            kept = [c for c, g in zip(chunks, gains) if g != 0.0]
            rk = residual(torch.cat(kept) if len(kept) > 1 else kept[0])
            it = iter(rk.split([c.shape[0] for c in kept]))
            rs = [next(it) if g != 0.0 else None for g in gains]
        pieces = []
        for si, ri, g in zip(s.split(list(sizes)), rs, gains):
            pieces.append(si if g == 0.0 else (ri if g == 1.0 else g * ri) + si)
        return self._post(torch.cat(pieces))

    def _need(self, kind: str) -> None:
        if self.kind != kind:
            raise UsageError(f"unit {self.name} is a {self.kind} unit and has no residual branch")


def _basic_residual(m: nn.Module) -> Callable[[Tensor], Tensor]:
    def f(x: Tensor) -> Tensor:  # BasicBlock.branch with its ReLU in place
        return m.bn2(m.conv2(m.bn1(m.conv1(x)).relu_()))
    return f


def _preact_residual(m: nn.Module) -> Callable[[Tensor], Tensor]:
    def f(x: Tensor) -> Tensor:  # PreActBlock.branch with its ReLUs in place
        return m.conv2(m.bn2(m.conv1(m.bn1(x).relu_())).relu_())
    return f


def _inplace(m: nn.Module) -> tuple[Callable, Callable] | None:
    """(residual, post) of an evaluating CIFAR BasicBlock or PreActBlock without autograd, with
    ReLUs and the addition in place on the tensors they create: the same values as the block's
    own forward (elementwise ops, each element computed alike), fewer allocations.

    None for anything else (other or wrapped modules, training, stochastic depth, autograd)."""
    if torch.is_grad_enabled() or m.training:
        return None
    t = type(m)
    if t not in (BasicBlock, PreActBlock) or m.survival != 1.0:
        return None
    post = torch.relu_ if m.post_activation else _identity
    return (_basic_residual(m) if t is BasicBlock else _preact_residual(m)), post


def _identity(y: Tensor) -> Tensor:
    return y


@dataclass(frozen=True, eq=False)
class Glue:
    """A step of the forward pass that is not a deletable unit (stem, pooling, head)."""

    name: str
    fn: Callable[[Tensor], Tensor]

    def __call__(self, x: Tensor) -> Tensor:
        return self.fn(x)
