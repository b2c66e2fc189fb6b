"""Interventions: context managers that change a model inside a ``with`` block.

Each works by module wrapping: the module at a unit's place is swapped for a wrapper (or, for
``reorder``, for another unit's module) and swapped back on exit, also when the block raises.
Parameters and buffers are never written, no hooks are registered, and the training flag is
left alone, so the model leaves the ``with`` block bitwise as it entered. They compose: nested
interventions on one unit multiply their gains.

    with delete(model, [3, 7]), scale(model, {10: 0.5}):
        logits = model(x)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from ablate._infra.errors import UsageError
from ablate.models.blocks import Block, blocks, get_module, set_module
from ablate.models.cifar_resnet import linear_survival

__all__ = [
    "delete", "reorder", "scale", "drop", "linear", "Linear", "swapped", "check_order",
    "check_gain",
]

Gain = float | Callable[[Tensor], Tensor | float]


class _Gated(nn.Module):
    """Stands in for a residual block: ``post(gain * residual(x) + shortcut(x))``.

    ``gain`` is a float (0 deletes the branch without computing it) or a function of the input
    returning a float or a per-row gate.
    """

    is_intervention = True

    def __init__(self, inner: nn.Module, block: Block, gain: Gain) -> None:
        super().__init__()
        self.inner = inner
        self.training = inner.training
        self.changes_shape = block.changes_shape
        self._block = block
        self._gain = gain

    def gain(self, x: Tensor) -> Tensor | float:
        return self._gain(x) if callable(self._gain) else self._gain

    def residual(self, x: Tensor) -> Tensor:
        g = self.gain(x)
        if isinstance(g, float) and g == 0.0:
            return torch.zeros_like(self._block.shortcut(x))
        r = self._block.residual(x)
        return r if isinstance(g, float) and g == 1.0 else _times(g, r)

    def shortcut(self, x: Tensor) -> Tensor:
        return self._block.shortcut(x)

    def post(self, y: Tensor) -> Tensor:
        return self._block.post(y)

    def forward(self, x: Tensor) -> Tensor:
        g = self.gain(x)
        s = self._block.shortcut(x)
        if isinstance(g, float) and g == 0.0:
            return self._block.post(s)
        r = self._block.residual(x)
        if not (isinstance(g, float) and g == 1.0):
            r = _times(g, r)
        return self._block.post(r + s)

    def extra_repr(self) -> str:
        return f"gain={self._gain!r}"


class _PlainGate(nn.Module):
    """Stands in for a plain unit's conv (its BN moved in here): identity where the gate is 0."""

    is_intervention = True

    def __init__(self, inner: nn.Module, bn: nn.Module | None, gain: Gain) -> None:
        super().__init__()
        self.inner = inner
        self.training = inner.training
        self.bn = bn if bn is not None else nn.Identity()
        self._gain = gain

    def forward(self, x: Tensor) -> Tensor:
        g = self._gain(x) if callable(self._gain) else self._gain
        if isinstance(g, float):
            if g == 0.0:
                # The ReLU that follows sees x >= 0 (it is a ReLU's output) and leaves it as is.
                # Clone under autograd: a following in-place ReLU must not bump x's version.
                return x.clone() if torch.is_grad_enabled() else x
            return self.bn(self.inner(x))
        keep = g.view(-1, *([1] * (x.dim() - 1))) != 0
        return torch.where(keep, self.bn(self.inner(x)), x)


def _times(g: Tensor | float, r: Tensor) -> Tensor:
    if isinstance(g, Tensor) and g.dim() == 1:
        g = g.view(-1, *([1] * (r.dim() - 1))).to(r.dtype)
    return g * r


@contextmanager
def swapped(model: nn.Module, replacements: Mapping[str, nn.Module]) -> Iterator[nn.Module]:
    """Put each module of ``replacements`` at its qualified name; put the old ones back on exit.

    A new module (a wrapper, not one of the model's own) takes over the forward hooks of the
    module it stands in for, so a user's hook on a block still fires inside ``delete``/``scale``
    (and sees the edited output); moved blocks (``reorder``) keep their own hooks."""
    saved: list[tuple[str, nn.Module]] = []
    own = {id(m) for m in model.modules()}
    try:
        for name, new in replacements.items():
            old = get_module(model, name)
            saved.append((name, old))
            if id(new) not in own:
                _carry_hooks(old, new)
            set_module(model, name, new)
        yield model
    finally:
        for name, old in reversed(saved):
            set_module(model, name, old)


def _carry_hooks(old: nn.Module, new: nn.Module) -> None:
    for attr in ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks",
                 "_forward_hooks_with_kwargs", "_forward_hooks_always_called"):
        src, dst = getattr(old, attr, None), getattr(new, attr, None)
        if src and dst is not None:
            dst.update(src)


def _indices(indices: Iterable[int] | int, n: int, what: str = "block") -> list[int]:
    idx = [indices] if isinstance(indices, int) else list(indices)
    for i in idx:
        if not isinstance(i, int) or isinstance(i, bool):
            raise UsageError(f"{what} index {i!r} is not an integer")
        if not 0 <= i < n:
            raise UsageError(f"{what} {i} is out of range: this model has {what}s 0..{n - 1}")
    if len(set(idx)) != len(idx):
        raise UsageError(f"{what} indices repeat: {idx}")
    return idx


def _gate_replacements(model: nn.Module, b: Block, gain: Gain) -> dict[str, nn.Module]:
    if hasattr(b, "gate_replacements"):  # transformer blocks gate their own branches
        return b.gate_replacements(gain)
    if b.kind == "residual":
        return {b.name: _Gated(b.module, b, gain)}
    check_gain(b, 0.0)
    out: dict[str, nn.Module] = {}
    bn = get_module(model, b.bn) if b.bn else None
    out[b.name] = _PlainGate(b.module, bn, gain)
    if b.bn:
        out[b.bn] = nn.Identity()
        out[b.bn].training = bn.training
    return out


def _gated(
    model: nn.Module, gains: Mapping[int, Gain], granularity: str = "block"
) -> dict[str, nn.Module]:
    bl = blocks(model, granularity)
    _indices(list(gains), len(bl))
    out: dict[str, nn.Module] = {}
    for i, g in gains.items():
        out.update(_gate_replacements(model, bl[i], g))
    return out


@contextmanager
def delete(
    model: nn.Module, indices: Iterable[int] | int, granularity: str = "block"
) -> Iterator[nn.Module]:
    """Delete units: a residual block becomes its shortcut path alone (``y = post(shortcut(x))``,
    exactly as if the residual branch were zero); a plain unit becomes the identity.

    A plain unit that changes shape cannot be deleted and is refused. Transformers:
    ``granularity="branch"`` addresses attention and MLP branches (see ``blocks``).
    """
    idx = _indices(indices, len(blocks(model, granularity)))
    with swapped(model, _gated(model, dict.fromkeys(idx, 0.0), granularity)):
        yield model


@contextmanager
def scale(
    model: nn.Module, factors: Mapping[int, float] | Sequence[float] | float,
    granularity: str = "block",
) -> Iterator[nn.Module]:
    """Multiply residual branches: ``{index: factor}``, one factor per block, or one for all."""
    bl = blocks(model, granularity)
    if isinstance(factors, (int, float)):
        factors = {b.index: float(factors) for b in bl if b.kind == "residual"}
    elif not isinstance(factors, Mapping):
        if len(factors) != len(bl):
            raise UsageError(f"{len(factors)} scale factors for {len(bl)} blocks; give one each")
        factors = dict(enumerate(factors))
    for i in _indices(list(factors), len(bl)):
        if bl[i].kind != "residual":
            msg = f"unit {i} ({bl[i].name}) is a plain unit: only residual branches scale"
            raise UsageError(msg)
    gains = {i: float(f) for i, f in factors.items()}
    with swapped(model, _gated(model, gains, granularity)):
        yield model


@dataclass(frozen=True)
class Linear:
    """Huang et al.'s linear decay rule: p_l = 1 - (l / L)(1 - p_L), l = 1..L."""

    p_last: float = 0.5

    def __call__(self, n_blocks: int) -> list[float]:
        return linear_survival(n_blocks, self.p_last)


def linear(p_last: float = 0.5) -> Linear:
    """The linear-decay survival rule of stochastic depth, for ``drop``."""
    if not 0.0 < p_last <= 1.0:
        raise UsageError(f"p_L must be in (0, 1], not {p_last}")
    return Linear(p_last)


def survival_list(
    survival: float | Sequence[float] | Callable[[int], Sequence[float]], n: int
) -> list[float]:
    """One survival probability per unit from a float, a list, or a rule such as ``linear``."""
    if callable(survival):
        ps = list(survival(n))
    elif isinstance(survival, (int, float)):
        ps = [float(survival)] * n
    else:
        ps = [float(p) for p in survival]
    if len(ps) != n:
        raise UsageError(f"{len(ps)} survival probabilities for {n} units; give one each")
    for p in ps:
        if not 0.0 <= p <= 1.0:
            raise UsageError(f"survival probability {p} is outside [0, 1]")
    return ps


@contextmanager
def drop(
    model: nn.Module,
    survival: float | Sequence[float] | Callable[[int], Sequence[float]],
    mode: str = "row",
    generator: torch.Generator | None = None,
    rescale: bool = False,
    residual_only: bool = True,
    granularity: str = "block",
) -> Iterator[nn.Module]:
    """Stochastic depth: each forward pass keeps unit l with probability p_l, else deletes it.

    ``mode="batch"`` draws one gate per unit per forward pass (Huang et al.'s code), ``"row"`` one
    per sample. Works in train and eval mode. ``rescale`` divides survivors by p_l as torchvision's
    ``stochastic_depth`` does; the default follows Huang et al. (no rescaling). Gates are drawn from
    ``generator`` (a CPU generator keeps CPU and GPU runs identical for one seed).

    On a network trained with stochastic depth, a kept branch is the unscaled f_l(x) in train and
    eval mode alike: the eval-mode scaling by p_l is the expectation over the gates, which this
    draws explicitly, so keeping it as well would give neither the train-time nor the test-time net.
    """
    if mode not in ("row", "batch"):
        raise UsageError(f"drop mode must be 'row' or 'batch', not {mode!r}")
    bl = [b for b in blocks(model, granularity) if b.kind == "residual" or not residual_only]
    bl = [b for b in bl if not (b.kind == "plain" and b.changes_shape)]
    ps = survival_list(survival, len(bl))
    gains = {b.index: _bernoulli_gate(p, mode, generator, rescale) for b, p in zip(bl, ps)}
    _indices(list(gains), len(blocks(model, granularity)))
    out: dict[str, nn.Module] = {}
    for b in bl:
        out.update(_gate_replacements(model, _unscaled(b), gains[b.index]))
    with swapped(model, out):
        yield model


def _unscaled(b: Block) -> Block:
    """The block with its stochastic-depth branch unscaled (``branch``, never ``p_l * branch``)."""
    m = b.module
    if b.kind == "residual" and getattr(m, "survival", 1.0) != 1.0 and hasattr(m, "branch"):
        return replace(b, _residual=m.branch)
    return b


def _bernoulli_gate(
    p: float, mode: str, generator: torch.Generator | None, rescale: bool
) -> Gain:
    if p >= 1.0:
        return 1.0
    keep_gain = 1.0 / p if rescale and p > 0 else 1.0
    gen_device = generator.device if generator is not None else torch.device("cpu")

    def gate(x: Tensor) -> Tensor | float:
        if mode == "batch":
            kept = bool(torch.rand((), generator=generator, device=gen_device) < p)
            return keep_gain if kept else 0.0
        u = torch.rand(x.shape[0], generator=generator, device=gen_device).to(x.device)
        return (u < p).to(x.dtype) * keep_gain

    return gate


@contextmanager
def reorder(model: nn.Module, permutation: Sequence[int]) -> Iterator[nn.Module]:
    """Run the residual blocks in a new order: position i runs the block at ``permutation[i]``.

    Only shape-compatible moves are allowed: within a stage, among blocks that keep the shape.
    """
    bl = blocks(model)
    perm = list(permutation)
    check_order(bl, perm)
    moves = {bl[pos].name: bl[src].module for pos, src in enumerate(perm) if pos != src}
    with swapped(model, moves):
        yield model


def check_order(bl: Sequence[Block], perm: Sequence[int]) -> None:
    """Refuse an order that is not a permutation or moves a unit where its shape does not fit."""
    if sorted(perm) != list(range(len(bl))):
        raise UsageError(f"the order must be a permutation of 0..{len(bl) - 1}")
    for pos, src in enumerate(perm):
        a, b = bl[pos], bl[src]
        if src == pos:
            continue
        if a.kind != "residual" or b.kind != "residual":
            raise UsageError(f"only residual blocks can be reordered ({bl[pos].name}, {b.name})")
        if (a.stage, a.changes_shape) != (b.stage, b.changes_shape) or a.changes_shape:
            raise UsageError(
                f"block {src} ({b.name}) cannot move to position {pos} ({a.name}): shapes differ; "
                "only blocks of one stage that keep the shape can be swapped"
            )


def check_gain(b: Block, gain: float) -> None:
    """Refuse a gain a unit cannot take: plain units are kept (1) or deleted (0) if shape allows."""
    if b.kind != "plain":
        return
    if gain not in (0.0, 1.0):
        raise UsageError(f"unit {b.index} ({b.name}) is a plain unit: only residual branches scale")
    if gain == 0.0 and b.changes_shape:
        raise UsageError(
            f"unit {b.index} ({b.name}) changes the feature shape and cannot be deleted from a "
            "plain net (nothing could carry its input on); choose a shape-preserving unit"
        )
