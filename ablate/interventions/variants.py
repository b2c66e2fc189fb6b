"""Batched evaluation of many intervention variants over one data set.

A *variant* gives each unit position a gain (1 intact, 0 deleted, other values rescale the
residual branch) and optionally a block order. The naive way costs one full forward pass per
variant. Here, per data batch, the intact network runs once and keeps the input of every unit;
each variant then starts from the cached input at its first changed position, and the variants
of a chunk run together as one large batch (``max_rows``), splitting into separate streams only
where they differ. Each row goes through exactly the operations the intervention wrappers apply.

On the CPU a chunk is by default one variant (the rows of one batch, the shapes the naive loop
runs), and ``workers`` threads with one intra-op thread each run chunks side by side: logits
and error counts are bitwise the naive loop's. Larger chunks (``max_rows`` above the batch) share
more of multi-block variants' streams but may select other float32 kernels (last bits); on a
GPU, convolution algorithms chosen per batch size can likewise differ in the last bits.
``channels_last`` is opt-in and not bitwise. Transformers' branches: ``granularity="branch"``
(torchvision and timm ViTs); decoder LMs: :mod:`ablate.interventions.lm_variants`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ablate._infra.errors import UsageError
from ablate.data import normalize
from ablate.interventions.edits import (
    _as_list,
    _gated,
    _is_int,
    _real,
    check_gain,
    check_order,
    reorder,
    swapped,
)
from ablate.measures import Outcome, evaluate, outcome
from ablate.models.blocks import Block, Glue, chain, restore_flags, train_flags
from ablate.models.transformers import is_transformer, vit_chain

__all__ = [
    "Variant", "applied", "validate", "intact_pass", "forward_variants", "evaluate_variants",
    "evaluate_naive", "steps_of",
]


@dataclass(frozen=True)
class Variant:
    """One intervention: ``gains`` maps unit positions to gains; ``order[i]`` is the unit run at
    position i (None: the original order)."""

    gains: tuple[tuple[int, float], ...] = ()
    order: tuple[int, ...] | None = None

    @staticmethod
    def deleting(indices: Sequence[int] | int) -> Variant:
        idx = [indices] if _is_int(indices) else _as_list(indices, "block indices")
        _check_positions(idx)
        return Variant(tuple((int(i), 0.0) for i in sorted(idx)))

    @staticmethod
    def scaling(factors: dict[int, float]) -> Variant:
        if not isinstance(factors, Mapping):
            raise UsageError(f"scale factors must map block indices to factors, not "
                             f"{type(factors).__name__}")
        _check_positions(list(factors))
        return Variant(tuple(sorted((int(i), _real(f, f"scale factor of block {i}"))
                                    for i, f in factors.items())))

    @staticmethod
    def reordered(order: Sequence[int]) -> Variant:
        order = _as_list(order, "the order")
        _check_positions(order, "order entry")
        return Variant(order=tuple(int(i) for i in order))

    @staticmethod
    def swapping(i: int, j: int, n: int) -> Variant:
        """Positions ``i`` and ``j`` of ``n`` exchanged (Lad et al.'s adjacent swaps: j = i + 1)."""
        order = list(range(n))
        order[i], order[j] = order[j], order[i]
        return Variant.reordered(order)

    def gain(self, pos: int) -> float:
        return dict(self.gains).get(pos, 1.0)

    def source(self, pos: int) -> int:
        return pos if self.order is None else self.order[pos]

    def spec(self, pos: int) -> tuple[int, float]:
        return (self.source(pos), self.gain(pos))

    def first_change(self) -> int | None:
        """The first position where this variant differs from the intact network."""
        changed = [p for p, g in self.gains if g != 1.0]
        if self.order is not None:
            changed += [p for p, s in enumerate(self.order) if s != p]
        return min(changed) if changed else None


def _check_positions(idx: Sequence, what: str = "block index") -> None:
    for i in idx:
        if not _is_int(i) or i < 0:
            raise UsageError(f"{what} {i!r} is not an integer >= 0")
    if what == "block index" and len(set(idx)) != len(idx):
        raise UsageError(f"block indices repeat: {list(idx)}")


def validate(variant: Variant, units: Sequence[Block]) -> None:
    """Refuse what the interventions would refuse: bad positions, gains or orders."""
    if not isinstance(variant, Variant):
        raise UsageError(f"a variant must be a Variant, not {type(variant).__name__}")
    n = len(units)
    positions = [p for p, _ in variant.gains]
    _check_positions(positions)
    for p, g in variant.gains:
        if not 0 <= p < n:
            raise UsageError(f"unit {p} is out of range: this model has units 0..{n - 1}")
        check_gain(units[p], g)
    if variant.order is not None:
        check_order(units, variant.order)


@contextmanager
def applied(model: nn.Module, variant: Variant, granularity: str = "block"
            ) -> Iterator[nn.Module]:
    """Apply a variant with the interventions themselves (reorder, then gains by position;
    ``granularity="branch"``: a transformer's positions are its attention and MLP branches)."""
    with ExitStack() as stack:
        if variant.order is not None:
            if granularity != "block":
                raise UsageError("an order moves whole blocks: give it at granularity 'block'")
            stack.enter_context(reorder(model, variant.order))
        gains = {p: g for p, g in variant.gains if g != 1.0}
        if gains:
            stack.enter_context(swapped(model, _gated(model, gains, granularity)))
        yield model


def steps_of(model: nn.Module, granularity: str = "block") -> list[Block | Glue]:
    """The forward pass as the engine runs it: ``chain(model)``, or for a ViT at
    ``granularity="branch"`` its attention and MLP branches as the units."""
    if granularity == "block":
        return chain(model)
    if granularity != "branch":
        raise UsageError(f"granularity must be 'block' or 'branch', not {granularity!r}")
    if not is_transformer(model):
        raise UsageError(f"{type(model).__name__} is not a transformer: it has no branches")
    return vit_chain(model, "branch")


def intact_pass(model: nn.Module, x: Tensor, granularity: str = "block"
                ) -> tuple[list[Tensor], Tensor]:
    """The intact network on ``x``: the input of every unit, and the logits."""
    return _intact(steps_of(model, granularity), x)


def _intact(steps: Sequence[Block | Glue], x: Tensor) -> tuple[list[Tensor], Tensor]:
    inputs, h = [], x
    for step in steps:
        if isinstance(step, Glue):
            h = step(h)
        else:
            inputs.append(h)
            h = step.unit(h)
    return inputs, h


@torch.inference_mode()
def forward_variants(
    model: nn.Module, x: Tensor, variants: Sequence[Variant],
    intact: tuple[list[Tensor], Tensor] | None = None,
    granularity: str = "block",
) -> list[Tensor]:
    """Logits of every variant on batch ``x`` (a list of [B, classes] tensors, in order).

    ``intact`` is ``intact_pass(model, x, granularity)``, computed once and shared by several
    calls. ``granularity="branch"`` (torchvision and timm ViTs): positions are the attention and MLP
    branches (2i, 2i + 1 of layer i), as ``blocks(model, "branch")`` numbers them.
    """
    steps = steps_of(model, granularity)
    units = [s for s in steps if isinstance(s, Block)]
    for var in variants:
        _validate_at(var, units, granularity)
    return _forward(steps, units, x, variants, _intact(steps, x) if intact is None else intact)


@torch.inference_mode()  # (per thread: the engine's workers call this directly)
def _forward(steps: Sequence[Block | Glue], units: list[Block], x: Tensor,
             variants: Sequence[Variant], intact: tuple[list[Tensor], Tensor]) -> list[Tensor]:
    """:func:`forward_variants` on the model's steps, its variants already checked."""
    inputs, logits = intact
    starts: dict[int, list[int]] = {}
    for v, var in enumerate(variants):
        d = var.first_change()
        if d is not None:
            starts.setdefault(d, []).append(v)

    b = x.shape[0]
    act: Tensor | None = None  # the rows of all live streams, stacked
    streams: list[list[int]] = []  # variant ids per stream, each stream b rows of ``act``
    unit_pos = 0
    for step in steps:
        if isinstance(step, Glue):
            if act is not None:  # stream by stream: a batched matmul's bits depend on its rows
                act = torch.cat([step(c) for c in act.split(b)])
            continue
        p = unit_pos
        unit_pos += 1
        if p in starts:  # variants that first differ here start from the intact input
            act = inputs[p] if act is None else torch.cat([act, inputs[p]])
            streams.append(starts.pop(p))
        if act is not None:
            act, streams = _advance(act, streams, b, p, variants, units)
    out: list[Tensor] = [logits] * len(variants)
    if act is not None:
        for k, vids in enumerate(streams):
            for v in vids:
                out[v] = act[k * b:(k + 1) * b]
    return out


def _validate_at(variant: Variant, units: Sequence[Block], granularity: str) -> None:
    if granularity != "block" and isinstance(variant, Variant) and variant.order is not None:
        raise UsageError("an order moves whole blocks: give it at granularity 'block'")
    validate(variant, units)


def _advance(
    act: Tensor, streams: list[list[int]], b: int, p: int, variants: Sequence[Variant],
    units: list[Block],
) -> tuple[Tensor, list[list[int]]]:
    """Run position ``p`` for every stream, splitting streams whose variants differ here."""
    children: list[tuple[int, tuple[int, float], list[int]]] = []  # (parent, spec, vids)
    for k, vids in enumerate(streams):
        by_spec: dict[tuple[int, float], list[int]] = {}
        for v in vids:
            by_spec.setdefault(variants[v].spec(p), []).append(v)
        children += [(k, spec, sub) for spec, sub in by_spec.items()]
    parents = act.split(b)
    outs, new_streams = [], []
    for src in sorted({spec[0] for _, spec, _ in children}):
        group = [c for c in children if c[1][0] == src]
        if len(group) == len(streams) and all(c[0] == k for k, c in enumerate(group)):
            xs = act  # one child per stream, in order: no copy
        else:
            xs = torch.cat([parents[k] for k, _, _ in group])
        outs.append(units[src].apply_gains(xs, [spec[1] for _, spec, _ in group], [b] * len(group)))
        new_streams += [vids for _, _, vids in group]
    return (outs[0] if len(outs) == 1 else torch.cat(outs)), new_streams


@torch.inference_mode()
def evaluate_variants(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    variants: Sequence[Variant],
    *,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 256,
    max_rows: int | None = None,
    progress: bool = True,
    desc: str = "variants",
    granularity: str = "block",
    workers: int | None = None,
    channels_last: bool = False,
) -> list[Outcome]:
    """Per-image outcome of every variant over uint8 ``images`` (model in eval mode);
    ``granularity="branch"``: see :func:`forward_variants`.

    ``max_rows`` bounds the rows in flight per worker (batch size x variants run together); by
    default 16384 on a GPU and the batch on the CPU, where large batches fall out of the caches.
    ``workers`` (CPU; default: the intra-op threads, ``torch.get_num_threads()``) threads run
    chunks of variants side by side, one intra-op thread each: independent streams need no
    barrier between the cores, which a loaded host makes costly; each row's arithmetic is the
    same (bitwise, tested). ``channels_last`` (opt-in, CUDA and CPU) runs the network on
    channels-last tensors: faster kernels whose reductions may round differently, so logits can
    differ from the naive loop's in the last bits (see ``benchmarks/lesion_sweep.py``).
    """
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    steps = steps_of(model, granularity)  # once: every batch and chunk runs these
    units = [u for u in steps if isinstance(u, Block)]
    for var in variants:
        _validate_at(var, units, granularity)
    if max_rows is None:
        max_rows = 16384 if device.type == "cuda" else batch_size
    workers = check_workers(workers, device.type == "cpu")
    per_chunk = max(1, max_rows // batch_size)
    order = sorted(range(len(variants)), key=lambda v: variants[v].first_change() or -1)
    chunks = [order[i:i + per_chunk] for i in range(0, len(order), per_chunk)]
    m = torch.tensor(list(mean), dtype=torch.float32, device=device)
    s = torch.tensor(list(std), dtype=torch.float32, device=device)
    flags = train_flags(model)
    model.eval()
    parts: list[list[Outcome]] = [[] for _ in variants]
    try:
        with _memory_format(model, channels_last), worker_map(
                workers, len(chunks), device.type == "cpu") as pmap:
            bar = tqdm(total=len(images) * len(variants), desc=desc, unit="img",
                       disable=not progress, unit_scale=True, leave=False)
            for i in range(0, len(images), batch_size):
                x = normalize(images[i:i + batch_size].to(device), m, s, dtype=dtype,
                              channels_last=channels_last)
                y = labels[i:i + batch_size].to(device)
                intact = _intact(steps, x)  # shared by every chunk

                def run(chunk: list[int], x=x, y=y, intact=intact) -> list[Outcome]:
                    logits = _forward(steps, units, x, [variants[v] for v in chunk], intact)
                    return [outcome(lg, y) for lg in logits]

                for chunk, outs in zip(chunks, pmap(run, chunks)):
                    for v, o in zip(chunk, outs):
                        parts[v].append(o)
                    bar.update(len(x) * len(chunk))
            bar.close()
    finally:
        restore_flags(flags)
    return [Outcome.cat(p) for p in parts]


def check_workers(workers: int | None, cpu: bool) -> int:
    """The worker threads to use: ``workers``, or on the CPU the intra-op threads (1 elsewhere);
    anything but a positive integer is a UsageError, before anything runs."""
    if workers is None:
        return torch.get_num_threads() if cpu else 1
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise UsageError(f"workers must be a positive integer, not {workers!r}")
    return workers


@contextmanager
def worker_map(workers: int, tasks: int, cpu: bool) -> Iterator[Callable]:
    """``map`` over ``workers`` threads with one intra-op thread each (on the CPU, for more than
    one task: independent streams need no barrier between the cores), else the builtin ``map``;
    the threads are gone on exit, also on an exception."""
    if not (cpu and workers > 1 and tasks > 1):
        yield map
        return
    pool = ThreadPoolExecutor(min(workers, tasks), initializer=torch.set_num_threads,
                              initargs=(1,))
    try:
        yield pool.map
    finally:
        pool.shutdown(cancel_futures=True)


@contextmanager
def _memory_format(model: nn.Module, channels_last: bool) -> Iterator[None]:
    """Channels-last 4-d parameters while the block runs (values unchanged), then back."""
    if not channels_last:
        yield
        return
    params = [p for p in model.parameters() if p.dim() == 4]
    before = [p.data for p in params]
    try:
        with torch.inference_mode(False):
            for p in params:
                p.data = p.data.contiguous(memory_format=torch.channels_last)
        yield
    finally:
        with torch.inference_mode(False):
            for p, d in zip(params, before):
                p.data = d


def evaluate_naive(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    variants: Sequence[Variant],
    *,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 256,
    progress: bool = False,
    granularity: str = "block",
) -> list[Outcome]:
    """The reference: one full forward pass per variant, through the interventions."""
    out = []
    for var in tqdm(variants, desc="naive", disable=not progress, leave=False):
        with applied(model, var, granularity):
            out.append(evaluate(model, images, labels, mean=mean, std=std, batch_size=batch_size))
    return out
