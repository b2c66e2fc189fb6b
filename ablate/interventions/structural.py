"""Structural interventions on transformers: run the layers by a plan (repeat, skip, reorder).

``run(model, plan)`` makes the model execute the layers listed in ``plan`` (indices of the layer
positions as they are on entry) in that order: ``[0, 1, 2, 2, 3]`` repeats layer 2 and drops
layer 4 of a five-layer model; ``repeat`` and ``delete_window`` (Gromov et al. 2024: remove ``n``
contiguous layers) are plans. Skipped layers are not computed at all.

It works by module wrapping like the other interventions: each layer position holds a wrapper
that runs its share of the plan, and the old modules come back on exit (also on an exception);
parameters are never written and no hooks are registered.

KV cache (Hugging Face LMs): an attention layer writes the cache slot numbered by its
``layer_idx`` (transformers #28462: after moving or repeating layers two runs share a slot). Here
the k-th executed layer uses slot k for the duration of its run (``layer_idx`` is set before and
restored after), so a repeated layer gets its own slot and a skipped one leaves no gap; slots past
the model's layer count are appended to a ``DynamicCache``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

from torch import nn

from .._infra.errors import UsageError
from ..models.transformers import Layout, attention_of, cache_of, layer_paths, layout
from ..models.units import _resolve, get_module
from .edits import _as_list, _is_int, swapped

__all__ = ["run", "repeat", "delete_window", "plan_repeat", "plan_without"]


class _Plan(nn.Module):
    """Stands in for the layer at one position: runs ``runs`` (layers, with cache slots) in turn.

    ``inner`` is the layer that was at this position (kept registered, so interventions that
    address layers by position still find it); ``runs`` is not registered (those layers are all
    registered as the ``inner`` of their own positions).
    """

    is_intervention = True

    def __init__(
        self, inner: nn.Module, runs: Sequence[nn.Module], slots: Sequence[int | None],
        fam: Layout,
    ) -> None:
        super().__init__()
        self.inner = inner
        self.training = inner.training
        object.__setattr__(self, "_runs", list(runs))
        object.__setattr__(self, "_slots", list(slots))
        object.__setattr__(self, "_fam", fam)

    def forward(self, *args, **kwargs):
        if args:
            h, rest = args[0], args[1:]
        else:
            h, rest = kwargs.pop("hidden_states"), ()
        cache = cache_of(rest, kwargs) if self._fam.lm else None
        for layer, slot in zip(self._runs, self._slots):
            if slot is None:
                out = layer(h, *rest, **kwargs)
            else:
                _ensure_slot(cache, slot)
                attn = attention_of(layer, self._fam)
                old = attn.layer_idx
                attn.layer_idx = slot
                try:
                    out = layer(h, *rest, **kwargs)
                finally:
                    attn.layer_idx = old
            h = out[0] if isinstance(out, tuple) else out
        return h

    def extra_repr(self) -> str:
        return f"runs={len(self._runs)}, slots={self._slots}"


def _ensure_slot(cache: object | None, slot: int) -> None:
    layers = getattr(cache, "layers", None)
    if layers is None or len(layers) > slot:
        return
    if getattr(cache, "layer_class_to_replicate", None) is not None:
        return  # the cache appends layers itself
    from transformers.cache_utils import DynamicCache, DynamicLayer

    if not isinstance(cache, DynamicCache) or any(type(c) is not DynamicLayer for c in layers):
        raise UsageError(
            f"this plan runs more layers than the model has: it needs a DynamicCache with full-"
            f"attention layers to hold slot {slot}, not {type(cache).__name__}"
        )
    while len(layers) <= slot:
        layers.append(DynamicLayer())


def _check_plan(plan: Sequence[int], n: int) -> list[int]:
    plan = _as_list(plan, "a plan")
    for i in plan:
        if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < n:
            raise UsageError(f"plan entry {i!r} is not a layer position 0..{n - 1}")
    if not plan:
        raise UsageError("a plan must run at least one layer")
    return plan


def _check_slot_types(model: nn.Module, plan: Sequence[int]) -> None:
    """Refuse plans that put a sliding-window layer in a full-attention slot or vice versa."""
    types = getattr(getattr(model, "config", None), "layer_types", None)
    if not types:
        return
    for slot, src in enumerate(plan):
        want = types[slot] if slot < len(types) else "full_attention"
        if types[src] != want:
            raise UsageError(
                f"layer {src} ({types[src]}) cannot run in cache slot {slot} ({want}): this "
                "model mixes attention types; keep each layer where its kind of slot is"
            )


@contextmanager
def run(model: nn.Module, plan: Sequence[int]) -> Iterator[nn.Module]:
    """Execute the layers at the positions in ``plan``, in that order (repeats and skips allowed).

    Position i < n - 1 runs ``plan[i]`` (nothing if the plan is shorter); the last position runs
    the rest of the plan. Inside, ``blocks(model)`` still lists the layers at their positions
    of entry, so ``delete(model, [3])`` deletes layer 3 wherever the plan runs it.
    """
    fam = layout(model)
    paths = layer_paths(model, fam)
    n = len(paths)
    plan = _check_plan(plan, n)
    current = [get_module(model, p) for p in paths]
    if any(isinstance(m, _Plan) for m in current) or any(
        isinstance(_resolve(m), _Plan) for m in current
    ):
        raise UsageError("one layer plan at a time: nested run/repeat/delete_window are refused")
    if fam.lm:
        _check_slot_types(model, plan)
    chunks = [plan[i:i + 1] for i in range(n - 1)] + [plan[n - 1:]]
    slot = 0
    new: dict[str, nn.Module] = {}
    for path, module, chunk in zip(paths, current, chunks):
        slots: list[int | None] = []
        for _ in chunk:
            slots.append(slot if fam.lm else None)
            slot += 1
        new[path] = _Plan(module, [current[j] for j in chunk], slots, fam)
    with swapped(model, new):
        yield model


def plan_repeat(n: int, positions: Iterable[int] | int, times: int = 2) -> list[int]:
    """The plan running each layer in ``positions`` ``times`` times in a row."""
    listed = [positions] if _is_int(positions) else _as_list(positions, "layer positions")
    for p in listed:
        if not _is_int(p):
            raise UsageError(f"layer position {p!r} is not an integer")
    if len(set(listed)) != len(listed):
        raise UsageError(f"layer positions repeat: {listed}")
    pos = set(listed)
    if not _is_int(times) or times < 1:
        raise UsageError(f"times must be a whole number of at least 1, not {times!r}")
    bad = sorted(p for p in pos if not 0 <= p < n)
    if bad:
        raise UsageError(f"layer positions {bad} are out of range 0..{n - 1}")
    return [i for i in range(n) for _ in range(times if i in pos else 1)]


def plan_without(n: int, start: int, count: int) -> list[int]:
    """The plan skipping ``count`` contiguous layers from ``start`` (Gromov et al.'s pruning)."""
    for what, v in (("start", start), ("count", count)):
        if not _is_int(v):
            raise UsageError(f"the window's {what} must be a whole number, not {v!r}")
    if count < 1 or start < 0 or start + count > n:
        raise UsageError(f"window {start}..{start + count - 1} is not within layers 0..{n - 1}")
    if count >= n:
        raise UsageError("a window cannot remove every layer")
    return [i for i in range(n) if not start <= i < start + count]


@contextmanager
def repeat(
    model: nn.Module, positions: Iterable[int] | int, times: int = 2
) -> Iterator[nn.Module]:
    """Run each layer in ``positions`` ``times`` times in a row (its own KV-cache slot each)."""
    with run(model, plan_repeat(len(layer_paths(model)), positions, times)):
        yield model


@contextmanager
def delete_window(model: nn.Module, start: int, count: int) -> Iterator[nn.Module]:
    """Remove ``count`` contiguous layers from ``start`` (they are not computed)."""
    with run(model, plan_without(len(layer_paths(model)), start, count)):
        yield model
