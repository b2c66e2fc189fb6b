"""Batched layer deletions, scalings and reorderings of a Hugging Face decoder language model.

The language-model counterpart of :mod:`ablate.interventions.variants`, with the same
:class:`~ablate.interventions.variants.Variant` (a gain per position, optionally an order). Per
batch of token sequences the intact model runs once, through its own ``forward``, and keeps what
enters every layer position: the hidden state and the other arguments the model passes (causal
or padding mask, rotary position embeddings, position ids), exactly as the model built them from
``attention_mask`` and ``position_ids``. A variant then starts from the hidden state entering its
first changed position (the layers before it are not run again) and runs the layers the model
would run there with the arguments of that position; variants that agree up to a position share
that computation (a tree over positions), and the final norm and the output head give each
variant's logits.

Each layer call is the call the model itself makes, and a gated branch is gated by the
interventions' own gate, so on the CPU the logits are bitwise those of one forward per variant
under :func:`~ablate.interventions.variants.applied` when every call runs one batch
(``max_rows=None``, the default). With ``max_rows`` above the batch, streams running the same
layer at a position are stacked into one larger call: the same arithmetic row by row, but a
matrix product's blocking may depend on its number of rows, so logits then agree within float
rounding (argmax equal in the tests), not bitwise.

Refused: models whose logits are not ``head(final_norm(h))`` of the last layer's output (checked
against the model's own logits on the first batch), orders at branch granularity, and what the
interventions refuse (bad positions, non-finite gains, orders mixing attention types).

    from ablate.interventions import Variant
    from ablate.interventions.lm_variants import evaluate_lm_variants

    variants = [Variant.deleting(i) for i in range(30)]
    intact, per_variant = evaluate_lm_variants(
        model, input_ids, variants, batch_size=8,
        reduce=lambda logits, intact_logits, rows: logits[:, :-1].argmax(-1))
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ablate._infra.errors import UsageError
from ablate.interventions.edits import _check_attention_types
from ablate.interventions.variants import (
    Variant,
    applied,
    check_workers,
    validate,
    worker_map,
)
from ablate.models.blocks import restore_flags, train_flags
from ablate.models.transformers import (
    Layout,
    _BranchGate,
    layer_paths,
    layout,
    transformer_blocks,
)
from ablate.models.units import _resolve, get_module

__all__ = ["LMIntact", "lm_intact_pass", "lm_forward_variants", "evaluate_lm_variants",
           "evaluate_lm_naive"]

Reduce = Callable[[Tensor, Tensor, slice], object]
_CHECKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # models whose tail passed
_NORMS = ("norm", "ln_f", "final_layer_norm", "final_layernorm")


@dataclass
class LMIntact:
    """The intact model on one batch: what enters each layer position, and the logits."""

    inputs: list[Tensor]  # hidden state entering position p, [B, T, H]
    calls: list[tuple[tuple, dict, bool]]  # per position: other positional args, kwargs, and
    # whether the hidden state went by keyword
    logits: Tensor  # [B, T, V], the model's own
    final: Tensor  # the last layer's output (before the final norm)


class _Model:
    """What the engine needs of one model: layer positions, branch attributes, the tail."""

    def __init__(self, model: nn.Module, granularity: str) -> None:
        if granularity not in ("block", "branch"):
            raise UsageError(f"granularity must be 'block' or 'branch', not {granularity!r}")
        self.model, self.granularity = model, granularity
        self.fam: Layout = layout(model)
        if not self.fam.lm:
            raise UsageError(f"{type(model).__name__} is not a Hugging Face decoder LM: the "
                             "batched engine for images is interventions.evaluate_variants")
        self.paths = layer_paths(model, self.fam)
        self.units = transformer_blocks(model, granularity)
        base = get_module(model, self.fam.layers.rpartition(".")[0])
        self.norm = next((getattr(base, n) for n in _NORMS
                          if isinstance(getattr(base, n, None), nn.Module)), None)
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if self.norm is None or not isinstance(head, nn.Module):
            raise UsageError(f"{type(model).__name__}: no final norm ({', '.join(_NORMS)}) and "
                             "output head found; pass the causal-LM model (…ForCausalLM)")
        self.head = head
        self.checked = _CHECKED.get(model) == self.signature()
        self._views: dict[tuple, nn.Module] = {}

    def signature(self) -> tuple:
        """What the tail check depends on: head, norm, layers and the model's own hooks."""
        return (id(self.head), id(self.norm), id(type(self.model)),
                tuple(id(get_module(self.model, p)) for p in self.paths),
                tuple(self.model._forward_hooks), tuple(self.model._forward_pre_hooks))

    def tail(self, h: Tensor) -> Tensor:
        return self.head(self.norm(h))

    def first(self, v: Variant) -> int | None:
        d = v.first_change()
        return d if d is None or self.granularity == "block" else d // 2

    def spec(self, v: Variant, p: int) -> tuple[int, float, float]:
        """(layer run at position p, attention gain, MLP gain)."""
        if self.granularity == "block":
            g = v.gain(p)
            return v.source(p), g, g
        return p, v.gain(2 * p), v.gain(2 * p + 1)

    def validate(self, v: Variant) -> None:
        if isinstance(v, Variant) and v.order is not None and self.granularity == "branch":
            raise UsageError("an order moves whole layers: give it at granularity 'block'")
        validate(v, self.units)
        if v.order is not None:
            _check_attention_types(self.model, v.order)

    def layer(self, src: int, ga: float, gm: float) -> nn.Module:
        """Layer ``src``, or a gated view of it: a shallow copy whose branch modules are the
        interventions' gates (the branch is not run at gain 0: no KV cache is in use, and its
        output would be zeroed). The model itself is never changed, so worker threads can run
        side by side."""
        layer = get_module(self.model, self.paths[src])
        if (ga, gm) == (1.0, 1.0):
            return layer
        key = (src, ga, gm, id(layer))
        view = self._views.get(key)
        if view is None:
            real = _resolve(layer)
            view = copy.copy(real)
            view._modules = dict(real._modules)
            for br, g in (("attn", ga), ("mlp", gm)):
                if g != 1.0:
                    attr = self.fam.attn if br == "attn" else self.fam.mlp
                    tuple_out = self.fam.attn_tuple and br == "attn"
                    view._modules[attr] = _BranchGate(real._modules[attr], g, tuple_out, False)
            self._views[key] = view
        return view


def _device(model: nn.Module) -> torch.device | None:
    """Where the ids go: None for a model dispatched by accelerate (its hooks move them)."""
    return None if getattr(model, "hf_device_map", None) else next(model.parameters()).device


def _to(t: Tensor | None, dev: torch.device | None) -> Tensor | None:
    return t if t is None or dev is None else t.to(dev)


def _hidden(out: object) -> Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.inference_mode()
def lm_intact_pass(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None = None,
    position_ids: Tensor | None = None, *, check: bool = True, _m: _Model | None = None,
) -> LMIntact:
    """The model's own forward on one batch, keeping what enters each layer position.

    ``check``: refuse the model unless ``head(final_norm(last layer's output))`` is bitwise its
    logits (the engine computes every variant's logits that way).
    """
    m = _m or _Model(model, "block")
    dev = _device(model)
    n = len(m.paths)
    inputs: list[Tensor | None] = [None] * n
    calls: list[tuple[tuple, dict, bool] | None] = [None] * n
    final: list[Tensor] = []

    def pre(p: int):
        def fn(_mod, args, kwargs):
            if args:
                inputs[p], calls[p] = args[0], (tuple(args[1:]), dict(kwargs), False)
            else:
                kw = dict(kwargs)
                inputs[p], calls[p] = kw.pop("hidden_states"), ((), kw, True)
        return fn

    handles = [get_module(model, path).register_forward_pre_hook(pre(p), with_kwargs=True)
               for p, path in enumerate(m.paths)]
    handles.append(get_module(model, m.paths[-1]).register_forward_hook(
        lambda _mod, _a, out: final.append(_hidden(out))))
    try:
        kw = {} if position_ids is None else {"position_ids": _to(position_ids, dev)}
        logits = model(input_ids=_to(input_ids, dev), attention_mask=_to(attention_mask, dev),
                       use_cache=False, **kw).logits
    finally:
        for h in handles:
            h.remove()
    if any(c is None for c in calls) or len(final) != 1:
        raise UsageError(f"{type(model).__name__}: its forward did not call each layer once")
    if check and not m.checked:
        if not torch.equal(m.tail(final[0]).to(logits.dtype), logits):
            raise UsageError(
                f"{type(model).__name__}: its logits are not head(final norm(last hidden state)) "
                "(logit scaling, soft-capping or another tail): the batched LM engine refuses it; "
                "use evaluate_lm_naive")
        m.checked = True
        _CHECKED[model] = m.signature()
    return LMIntact(inputs, calls, logits, final[0])


def _expand(v: object, k: int, b: int, memo: dict) -> object:
    """``v`` for ``k`` stacked copies of the batch: tensors whose first dimension is the batch
    repeat (masks, per-row position ids and embeddings); broadcastable ones stay."""
    if k == 1:
        return v
    if isinstance(v, Tensor):
        if v.dim() < 2 or v.shape[0] != b:
            return v
        key = (id(v), k)
        if key not in memo:
            memo[key] = (v, torch.cat([v] * k))
        return memo[key][1]
    if isinstance(v, tuple):
        return tuple(_expand(x, k, b, memo) for x in v)
    if isinstance(v, list):
        return [_expand(x, k, b, memo) for x in v]
    if isinstance(v, dict):
        return {n: _expand(x, k, b, memo) for n, x in v.items()}
    return v


class _Run:
    """One batch: run steps (a layer with gains, at a position) on stacked streams."""

    def __init__(self, m: _Model, intact: LMIntact) -> None:
        self.m, self.intact = m, intact
        self.b = intact.inputs[0].shape[0]
        self.memo: dict = {}

    def step(self, spec: tuple[int, float, float], h: Tensor, p: int, k: int) -> Tensor:
        src, ga, gm = spec
        if ga == 0.0 and gm == 0.0:  # both branches gated to zero: residual + 0 (+ 0)
            return h + torch.zeros_like(h)
        args, kwargs, by_kw = self.intact.calls[p]
        args = _expand(args, k, self.b, self.memo)
        kwargs = _expand(kwargs, k, self.b, self.memo)
        layer = self.m.layer(src, ga, gm)
        out = layer(*args, hidden_states=h, **kwargs) if by_kw else layer(h, *args, **kwargs)
        return _hidden(out)


@torch.inference_mode()
def lm_forward_variants(
    model: nn.Module,
    input_ids: Tensor,
    variants: Sequence[Variant],
    *,
    attention_mask: Tensor | None = None,
    position_ids: Tensor | None = None,
    granularity: str = "block",
    intact: LMIntact | None = None,
    max_rows: int | None = None,
    on_logits: Callable[[int, Tensor], None] | None = None,
    _m: _Model | None = None,
) -> list[Tensor] | None:
    """Logits [B, T, V] of every variant on one batch of ``input_ids`` [B, T].

    ``granularity="block"``: positions are layers (an order may move them); ``"branch"``:
    position 2i is layer i's attention branch, 2i + 1 its MLP branch. ``intact`` is
    ``lm_intact_pass`` of this batch, if already computed. ``max_rows``: sequences per layer call
    (streams running the same layer are stacked up to it; default: the batch, bitwise).
    ``on_logits(v, logits)`` receives each variant's logits as soon as they exist and nothing is
    kept (variants sharing all their layers share one tensor); without it, the list is returned.
    """
    m = _m or _Model(model, granularity)
    for v in variants:
        m.validate(v)
    if intact is None:
        intact = lm_intact_pass(model, input_ids, attention_mask, position_ids, _m=m)
    kept: list[Tensor | None] = [None] * len(variants)
    emit = on_logits or kept.__setitem__
    run = _Run(m, intact)
    b = run.b
    per_call = max(1, (max_rows or b) // b)
    starts: dict[int, list[int]] = {}
    for i, v in enumerate(variants):
        d = m.first(v)
        if d is None:
            emit(i, intact.logits)
        else:
            starts.setdefault(d, []).append(i)
    streams: list[tuple[Tensor, list[int]]] = []
    for p in range(len(m.paths)):
        if p in starts:
            streams.append((intact.inputs[p], starts.pop(p)))
        if not streams:
            continue
        children: list[tuple[Tensor, tuple, list[int]]] = []
        for h, ids in streams:
            by: dict[tuple, list[int]] = {}
            for i in ids:
                by.setdefault(m.spec(variants[i], p), []).append(i)
            children += [(h, s, ids) for s, ids in by.items()]
        groups: dict[tuple, list[int]] = {}
        for c, (_, s, _) in enumerate(children):
            groups.setdefault(s, []).append(c)
        outs: list[Tensor | None] = [None] * len(children)
        for s, cs in groups.items():
            for j in range(0, len(cs), per_call):
                part = cs[j:j + per_call]
                hs = [children[c][0] for c in part]
                y = run.step(s, hs[0] if len(hs) == 1 else torch.cat(hs), p, len(hs))
                for c, piece in zip(part, y.split(b) if len(hs) > 1 else [y]):
                    outs[c] = piece
        streams = [(outs[c], children[c][2]) for c in range(len(children))]
    for h, ids in streams:
        logits = m.tail(h).to(intact.logits.dtype)
        for i in ids:
            emit(i, logits)
    return None if on_logits is not None else kept


def _batches(n: int, batch_size: int) -> Iterator[slice]:
    for i in range(0, n, batch_size):
        yield slice(i, min(i + batch_size, n))


def _collect(parts: list) -> object:
    """Concatenate per-batch results along dim 0 (tensors, or dicts/tuples of tensors)."""
    first = parts[0]
    if isinstance(first, Tensor):
        return torch.cat(parts)
    if isinstance(first, dict):
        return {k: torch.cat([p[k] for p in parts]) for k in first}
    if isinstance(first, (tuple, list)):
        return type(first)(torch.cat([p[i] for p in parts]) for i in range(len(first)))
    return parts


def _keep(logits: Tensor, _intact: Tensor, _rows: slice) -> Tensor:
    return logits


def _check_ids(input_ids: Tensor, attention_mask: Tensor | None, batch_size: int) -> None:
    if not isinstance(input_ids, Tensor) or input_ids.dim() != 2:
        raise UsageError("input_ids must be a [sequences, tokens] tensor of token ids")
    if attention_mask is not None and (not isinstance(attention_mask, Tensor)
                                       or attention_mask.shape != input_ids.shape):
        raise UsageError("attention_mask must have the shape of input_ids")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"batch_size must be a positive integer, not {batch_size!r}")


@torch.inference_mode()
def evaluate_lm_variants(
    model: nn.Module,
    input_ids: Tensor,
    variants: Sequence[Variant],
    *,
    reduce: Reduce | None = None,
    attention_mask: Tensor | None = None,
    position_ids: Tensor | None = None,
    batch_size: int = 8,
    granularity: str = "block",
    max_rows: int | None = None,
    chunk: int = 64,
    workers: int | None = None,
    progress: bool = False,
    desc: str = "LM variants",
) -> tuple[object, list[object]]:
    """The intact model's and every variant's ``reduce``\\ d logits over ``input_ids``
    [sequences, tokens], ``batch_size`` sequences at a time (model in eval mode).

    ``reduce(logits, intact_logits, rows)`` turns one batch's [B, T, V] logits (and the intact
    model's on the same ``rows`` of ``input_ids``) into a tensor, or a dict or tuple of tensors,
    with the batch first; the batches' results are concatenated. Default: the logits themselves
    (memory: variants x sequences x tokens x vocabulary). Returns (intact's, [each variant's]).
    ``chunk`` bounds the variants in flight per batch and worker (their hidden states are kept
    until their logits are reduced); ``attention_mask``, ``position_ids`` [sequences, tokens] are
    passed to the model as they are. ``workers`` (CPU; default ``torch.get_num_threads()``)
    threads with one intra-op thread each run chunks of variants side by side after each batch's
    intact pass (``reduce`` then runs in those threads); 1: every layer call on the caller's
    thread with its intra-op threads.
    """
    _check_ids(input_ids, attention_mask, batch_size)
    reduce = reduce or _keep
    m = _Model(model, granularity)
    for v in variants:
        m.validate(v)
    dev = _device(model)
    cpu = dev is not None and dev.type == "cpu"
    workers = check_workers(workers, cpu)
    order = sorted(range(len(variants)), key=lambda i: m.first(variants[i]) or -1)
    n_chunks = max(-(-len(order) // max(1, chunk)), min(workers if cpu else 1, len(order)))
    chunks = [order[i::n_chunks] for i in range(n_chunks)]  # dealt: each gets deep and shallow
    flags = train_flags(model)
    model.eval()
    base: list = []
    parts: list[list] = [[] for _ in variants]
    try:
        with worker_map(workers, len(chunks), cpu) as pmap:
            bar = tqdm(total=input_ids.shape[0] * (len(variants) + 1), desc=desc, unit="seq",
                       disable=not progress, leave=False)
            for rows in _batches(input_ids.shape[0], batch_size):
                am = None if attention_mask is None else attention_mask[rows]
                pid = None if position_ids is None else position_ids[rows]
                it = lm_intact_pass(model, input_ids[rows], am, pid, _m=m)
                base.append(reduce(it.logits, it.logits, rows))
                bar.update(rows.stop - rows.start)

                def run(ch: list[int], it=it, rows=rows) -> list[tuple[int, object]]:
                    out: list[tuple[int, object]] = []
                    lm_forward_variants(
                        model, input_ids[rows], [variants[i] for i in ch], intact=it,
                        max_rows=max_rows, _m=m,
                        on_logits=lambda v, lg: out.append((ch[v], reduce(lg, it.logits, rows))))
                    return out

                for done in pmap(run, chunks):
                    for i, r in done:
                        parts[i].append(r)
                    bar.update((rows.stop - rows.start) * len(done))
            bar.close()
    finally:
        restore_flags(flags)
    return _collect(base), [_collect(p) for p in parts]


@torch.inference_mode()
def evaluate_lm_naive(
    model: nn.Module,
    input_ids: Tensor,
    variants: Sequence[Variant],
    *,
    reduce: Reduce | None = None,
    attention_mask: Tensor | None = None,
    position_ids: Tensor | None = None,
    batch_size: int = 8,
    granularity: str = "block",
) -> tuple[object, list[object]]:
    """The reference: one forward of the model per variant and batch, through the
    interventions (:func:`~ablate.interventions.variants.applied`); as
    :func:`evaluate_lm_variants`."""
    _check_ids(input_ids, attention_mask, batch_size)
    reduce = reduce or _keep
    m = _Model(model, granularity)
    for v in variants:
        m.validate(v)
    dev = _device(model)
    flags = train_flags(model)
    model.eval()
    base: list = []
    parts: list[list] = [[] for _ in variants]

    def fwd(rows: slice) -> Tensor:
        kw = {} if position_ids is None else {"position_ids": _to(position_ids[rows], dev)}
        am = None if attention_mask is None else _to(attention_mask[rows], dev)
        return model(input_ids=_to(input_ids[rows], dev), attention_mask=am, use_cache=False,
                     **kw).logits

    try:
        for rows in _batches(input_ids.shape[0], batch_size):
            intact = fwd(rows)
            base.append(reduce(intact, intact, rows))
            for i, v in enumerate(variants):
                with applied(model, v, granularity):
                    parts[i].append(reduce(fwd(rows), intact, rows))
    finally:
        restore_flags(flags)
    return _collect(base), [_collect(p) for p in parts]
