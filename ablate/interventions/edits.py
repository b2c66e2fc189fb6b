"""Interventions: context managers that change a model inside a ``with`` block.

Each works by module wrapping: the module at a unit's place is swapped for a wrapper (or, for
``reorder``, for another unit's module) and swapped back on exit, also when the block raises.
Parameters and buffers are never written, no hooks are registered, and the training flag is
left alone, so the model leaves the ``with`` block bitwise as it entered. They compose: nested
interventions on one unit multiply their gains. Nested ones exit innermost first; an outer one
exiting first (out of order) restores the model completely, the inner ones too, and says so.
Every argument is checked: a bool, a float where an index is meant, an index out of range or
repeated, a gain that is not a finite number is one line (``UsageError``).

    with delete(model, [3, 7]), scale(model, {10: 0.5}):
        logits = model(x)
"""

from __future__ import annotations

import collections
import math
import numbers
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from ablate._infra.errors import UsageError
from ablate.models.blocks import Block, blocks, get_module
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
    takes_hooks = True  # the block's hooks fire on this wrapper (its forward never calls it)

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
    takes_hooks = True  # the conv's hooks fire on this wrapper, which runs conv and BN unhooked

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
            return self._unit(x)
        keep = g.view(-1, *([1] * (x.dim() - 1))) != 0
        return torch.where(keep, self._unit(x), x)

    def _unit(self, x: Tensor) -> Tensor:
        # unhooked: the conv's hooks are this wrapper's, the BN's its stand-in's
        return self.bn.forward(self.inner.forward(x))


def _times(g: Tensor | float, r: Tensor) -> Tensor:
    if isinstance(g, Tensor) and g.dim() == 1:
        g = g.view(-1, *([1] * (r.dim() - 1))).to(r.dtype)
    return g * r


class _Frame:
    """One ``swapped`` context: what it replaced, where (parent module, attribute)."""

    def __init__(self) -> None:
        self.entries: list[tuple[nn.Module, str, nn.Module]] = []  # parent, attr, old module
        self.closed = False

    def undo(self) -> None:
        for parent, attr, old in reversed(self.entries):
            setattr(parent, attr, old)
        self.closed = True


# The open ``swapped`` contexts of each model, outermost first.
_OPEN: weakref.WeakKeyDictionary[nn.Module, list[_Frame]] = weakref.WeakKeyDictionary()

_HOOK_DICTS = ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks",
               "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_backward_hooks",
               "_backward_pre_hooks")


@contextmanager
def swapped(model: nn.Module, replacements: Mapping[str, nn.Module]) -> Iterator[nn.Module]:
    """Put each module of ``replacements`` at its qualified name; put the old ones back on exit.

    A new module (a wrapper, not one of the model's own) takes over the hooks of the module it
    stands in for: it shares that module's hook dictionaries, so a user's hook on a block fires
    once per forward inside ``delete``/``scale``/``drop`` (and sees the edited output), a hook
    removed inside the block stops firing, and one added inside stays on the module after. A
    wrapper that calls the module it holds as ``inner`` (a layer plan) takes nothing unless it
    says ``takes_hooks``. Moved blocks (``reorder``) keep their own hooks.

    Exits restore exactly what was replaced, innermost first. A context that exits while ones
    opened after it are still open (out of order) restores those too, then raises a UsageError.
    """
    if not isinstance(model, nn.Module):
        raise UsageError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    if not isinstance(replacements, Mapping) or not all(
            isinstance(k, str) and isinstance(v, nn.Module) for k, v in replacements.items()):
        raise UsageError("replacements must map qualified module names (str) to modules")
    frame = _Frame()
    stack = _OPEN.setdefault(model, [])
    stack.append(frame)
    own = {id(m) for m in model.modules()}
    try:
        for name, new in replacements.items():
            parent_name, _, attr = name.rpartition(".")
            try:
                parent = get_module(model, parent_name)
                old = get_module(parent, attr) if attr else None
            except AttributeError:
                old = None
            if old is None:
                raise UsageError(f"the model has no module {name!r} to replace")
            frame.entries.append((parent, attr, old))
            if id(new) not in own and getattr(new, "takes_hooks",
                                              getattr(new, "inner", None) is not old):
                _share_hooks(old, new)
            setattr(parent, attr, new)
        yield model
    except BaseException:
        _close(model, frame)
        raise
    if _close(model, frame):
        raise UsageError(
            "interventions exited out of order: an outer one ended while one opened inside it was "
            "still open; the model is restored as before both; nest them as with-blocks (or an "
            "ExitStack), innermost exiting first"
        )


def _close(model: nn.Module, frame: _Frame) -> bool:
    """Undo ``frame`` and every frame opened after it, innermost first; True if there were
    such (an out-of-order exit). A frame already undone that way does nothing."""
    if frame.closed:
        return False
    stack = _OPEN.get(model, [])
    at = next((i for i, f in enumerate(stack) if f is frame), None)
    later = stack[at + 1:] if at is not None else []
    for f in reversed([frame, *later]):
        f.undo()
    if at is not None:
        del stack[at:]
    return bool(later)


def _share_hooks(old: nn.Module, new: nn.Module) -> None:
    for attr in _HOOK_DICTS:
        if isinstance(getattr(old, attr, None), dict) and hasattr(new, attr):
            object.__setattr__(new, attr, getattr(old, attr))
    if hasattr(old, "_is_full_backward_hook"):
        new._is_full_backward_hook = old._is_full_backward_hook


# ---------------------------------------------------------------------------------------------
# Arguments: each is checked as strictly as an index to ``delete``.


def _is_int(i: object) -> bool:
    return isinstance(i, numbers.Integral) and not isinstance(i, bool)


def _as_list(values: object, what: str) -> list:
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Iterable):
        raise UsageError(f"{what} must be a list of integers, not {type(values).__name__} "
                         f"{values!r}"[:200])
    return list(values)


def _indices(indices: Iterable[int] | int, n: int, what: str = "block") -> list[int]:
    idx = [indices] if _is_int(indices) else _as_list(indices, f"{what} indices")
    for i in idx:
        if not _is_int(i):
            raise UsageError(f"{what} index {i!r} is not an integer")
        if not 0 <= i < n:
            raise UsageError(f"{what} {i} is out of range: this model has {what}s 0..{n - 1}")
    if len(set(idx)) != len(idx):
        raise UsageError(f"{what} indices repeat: {idx}")
    return [int(i) for i in idx]


def _real(v: object, what: str) -> float:
    """``v`` as a finite float: not a bool, a string, NaN or an infinity."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
        raise UsageError(f"{what} must be a finite number, not {v!r}")
    return float(v)


def _flag(v: object, what: str) -> bool:
    if not isinstance(v, bool):
        raise UsageError(f"{what} must be True or False, not {v!r}")
    return v


def _granularity(g: object) -> str:
    from ablate.models.transformers import GRANULARITIES

    if g not in GRANULARITIES:
        raise UsageError(f"granularity must be one of {GRANULARITIES}, not {g!r}")
    return g


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
        g = g if callable(g) else _real(g, f"the gain of unit {i}")
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
    idx = _indices(indices, len(blocks(model, _granularity(granularity))))
    with swapped(model, _gated(model, dict.fromkeys(idx, 0.0), granularity)):
        yield model


@contextmanager
def scale(
    model: nn.Module, factors: Mapping[int, float] | Sequence[float] | float,
    granularity: str = "block",
) -> Iterator[nn.Module]:
    """Multiply residual branches: ``{index: factor}``, one factor per block, or one for all.
    A factor is a finite number (not a bool)."""
    bl = blocks(model, _granularity(granularity))
    if isinstance(factors, numbers.Real) and not isinstance(factors, bool):
        f = _real(factors, "scale factor")
        factors = {b.index: f for b in bl if b.kind == "residual"}
    elif not isinstance(factors, Mapping):
        factors = _as_list(factors, "scale factors") if not isinstance(factors, bool) else \
            _real(factors, "scale factor")
        if len(factors) != len(bl):
            raise UsageError(f"{len(factors)} scale factors for {len(bl)} blocks; give one each")
        factors = dict(enumerate(factors))
    for i in _indices(list(factors), len(bl)):
        if bl[i].kind != "residual":
            msg = f"unit {i} ({bl[i].name}) is a plain unit: only residual branches scale"
            raise UsageError(msg)
    gains = {int(i): _real(f, f"scale factor of block {i}") for i, f in factors.items()}
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
    p_last = _real(p_last, "p_L")
    if not 0.0 < p_last <= 1.0:
        raise UsageError(f"p_L must be in (0, 1], not {p_last}")
    return Linear(p_last)


def survival_list(
    survival: float | Sequence[float] | Callable[[int], Sequence[float]], n: int
) -> list[float]:
    """One survival probability per unit from a float, a list, or a rule such as ``linear``."""
    if callable(survival):
        ps = _as_list(survival(n), "the survival rule's probabilities")
    elif isinstance(survival, numbers.Real) and not isinstance(survival, bool):
        ps = [survival] * n
    else:
        ps = _as_list(survival, "survival probabilities") if not isinstance(survival, bool) \
            else [survival]
    ps = [_real(p, "a survival probability") for p in ps]
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
    if generator is not None and not isinstance(generator, torch.Generator):
        raise UsageError(f"generator must be a torch.Generator or None, not "
                         f"{type(generator).__name__}")
    _flag(rescale, "rescale")
    _flag(residual_only, "residual_only")
    bl = [b for b in blocks(model, _granularity(granularity))
          if b.kind == "residual" or not residual_only]
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


def _in_backward() -> bool:
    """True while autograd runs a backward pass: a forward now is a checkpoint's recomputation."""
    task = getattr(torch._C, "_current_graph_task_id", None)
    return task is not None and task() != -1


class _BernoulliGate:
    """A unit's random gate: one draw per forward pass (per row or per batch).

    Gradient checkpointing (``torch.utils.checkpoint``) runs a forward again during backward; it
    restores torch's global generators for that, but not ``generator``. So every draw is kept
    (the last ``KEEP``), and a forward run inside a backward pass takes back the latest draw
    instead of drawing anew: the recomputation sees the gates of its forward pass, gradients
    are those of the run without checkpointing.
    """

    KEEP = 64

    def __init__(self, p: float, mode: str, generator: torch.Generator | None,
                 keep_gain: float) -> None:
        self.p, self.mode, self.generator, self.keep_gain = p, mode, generator, keep_gain
        self.device = generator.device if generator is not None else torch.device("cpu")
        self.drawn: collections.deque = collections.deque(maxlen=self.KEEP)

    def __call__(self, x: Tensor) -> Tensor | float:
        if _in_backward() and self.drawn:
            g = self.drawn.pop()
        else:
            g = self._draw(x)
            self.drawn.append(g)
        return g if isinstance(g, float) else g.to(x.device).to(x.dtype) * self.keep_gain

    def _draw(self, x: Tensor) -> Tensor | float:
        """Batch mode: the gain; row mode: which rows keep their branch."""
        if self.mode == "batch":
            kept = bool(torch.rand((), generator=self.generator, device=self.device) < self.p)
            return self.keep_gain if kept else 0.0
        return torch.rand(x.shape[0], generator=self.generator, device=self.device) < self.p

    def __repr__(self) -> str:
        return f"bernoulli(p={self.p:.4g}, mode={self.mode})"


def _bernoulli_gate(
    p: float, mode: str, generator: torch.Generator | None, rescale: bool
) -> Gain:
    if p >= 1.0:
        return 1.0
    keep_gain = 1.0 / p if rescale and p > 0 else 1.0
    return _BernoulliGate(p, mode, generator, keep_gain)


@contextmanager
def reorder(model: nn.Module, permutation: Sequence[int]) -> Iterator[nn.Module]:
    """Run the residual blocks in a new order: position i runs the block at ``permutation[i]``.

    Only shape-compatible moves are allowed: within a stage, among blocks that keep the shape.
    """
    bl = blocks(model)
    perm = _as_list(permutation, "the order")
    check_order(bl, perm)
    _check_attention_types(model, perm)
    moves = {bl[pos].name: bl[src].module for pos, src in enumerate(perm) if pos != src}
    with swapped(model, moves):
        yield model


def _check_attention_types(model: nn.Module, perm: Sequence[int]) -> None:
    """Refuse moving a layer to a position of another attention type (a model mixing full and
    sliding-window attention: each position's KV-cache layer and mask are of its type)."""
    types = getattr(getattr(model, "config", None), "layer_types", None)
    if not isinstance(types, (list, tuple)) or len(set(types)) < 2:
        return
    for pos, src in enumerate(perm):
        if src != pos and pos < len(types) and src < len(types) and types[src] != types[pos]:
            raise UsageError(
                f"layer {src} ({types[src]}) cannot move to position {pos} ({types[pos]}): "
                "this model mixes attention types; keep each layer where its kind of slot is"
            )


def check_order(bl: Sequence[Block], perm: Sequence[int]) -> None:
    """Refuse an order that is not a permutation or moves a unit where its shape does not fit."""
    perm = _as_list(perm, "the order")
    for i in perm:
        if not _is_int(i):
            raise UsageError(f"order entry {i!r} is not an integer")
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
    gain = _real(gain, f"the gain of unit {b.index}")
    if b.kind != "plain":
        return
    if gain not in (0.0, 1.0):
        raise UsageError(f"unit {b.index} ({b.name}) is a plain unit: only residual branches scale")
    if gain == 0.0 and b.changes_shape:
        raise UsageError(
            f"unit {b.index} ({b.name}) changes the feature shape and cannot be deleted from a "
            "plain net (nothing could carry its input on); choose a shape-preserving unit"
        )
