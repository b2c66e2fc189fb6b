"""Block adapters for transformers: torchvision and timm ViTs, Hugging Face decoder LMs.

A pre-norm transformer layer computes ``h = x + attn(x); y = h + mlp(h)`` (GPT-NeoX with
``use_parallel_residual``: ``y = x + attn(x) + mlp(x)``): two residual branches. ``blocks(model,
granularity="block")`` lists the layers, ``granularity="branch"`` lists each layer's attention and
MLP branch (names ``<layer>.<attn attr>`` and ``<layer>.<mlp attr>``, e.g. ``transformer.h.3.attn``
and ``transformer.h.3.mlp``). The interventions of :mod:`ablate.interventions` gate a branch by
wrapping the branch's module (its output is multiplied by the gain, so gain 0 makes the residual
add ``x + 0``); a whole layer is gated by gating both of its branches with one gain, so deleting
a layer makes it the identity. Nothing else of the layer is touched, whatever its forward's
signature (attention masks, rotary embeddings, caches pass through unchanged).

KV cache: an attention layer of a Hugging Face model reads and writes the cache slot numbered by
its ``layer_idx``. A gated attention branch is still run (its output is zeroed afterwards), so
every slot stays filled and ``generate`` stays correct under deletion; a moved layer keeps its own
slot (a permutation is a bijection of slots). Plans that run a layer twice or skip layers
(:mod:`ablate.interventions.structural`) renumber the slots by execution order instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torchvision
from torch import Tensor, nn

from .._infra.errors import UsageError
from .units import Block, Glue, _resolve, get_module

__all__ = [
    "Layout", "TimmUnit", "TransformerBlock", "ViTBlock", "ViTBranch", "layout", "is_transformer",
    "transformer_blocks",
    "layer_paths", "attention_of", "vit_chain", "GRANULARITIES",
]

GRANULARITIES = ("block", "branch")


@dataclass(frozen=True)
class Layout:
    """Where a transformer keeps its layers and what its layers call their two branches.

    (Not a model family: that is :func:`ablate.models.family`, e.g. "vit".)
    """

    name: str
    layers: str  # qualified name of the layer container ('' for the model itself)
    attn: str  # attribute of a layer holding the attention branch's module
    mlp: str  # attribute of a layer holding the MLP branch's module
    lm: bool  # a Hugging Face decoder LM (layers take kwargs and use a KV cache)
    attn_tuple: bool  # the attention module returns (output, weights)


def _is_timm(model: nn.Module) -> bool:
    return type(model).__module__.startswith("timm.")


def _is_hf(model: nn.Module) -> bool:
    return type(model).__module__.startswith("transformers.")


def is_transformer(model: nn.Module) -> bool:
    """True for the model types this module adapts (cheap: imports neither timm nor HF)."""
    return isinstance(model, torchvision.models.VisionTransformer) or (
        (_is_timm(model) and hasattr(model, "blocks")) or _is_hf(model)
    )


_HF_LAYERS = ("transformer.h", "h", "gpt_neox.layers", "model.layers", "layers")


def layout(model: nn.Module) -> Layout:
    """The :class:`Layout` of ``model``; a UsageError for anything else."""
    if isinstance(model, torchvision.models.VisionTransformer):
        return Layout("torchvision_vit", "encoder.layers", "self_attention", "mlp", False, True)
    if _is_timm(model) and hasattr(model, "blocks"):
        first = _resolve(next(iter(model.blocks.children())))
        if type(first).__name__ != "Block" or not hasattr(first, "ls1"):
            raise UsageError(
                f"timm blocks of type {type(first).__name__} are not supported: only the pre-norm "
                "timm.models.vision_transformer.Block (x + ls(attn(norm(x))))"
            )
        return Layout("timm_vit", "blocks", "attn", "mlp", False, False)
    if _is_hf(model):
        for path in _HF_LAYERS:
            try:
                layers = model.get_submodule(path)
            except AttributeError:
                continue
            if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
                continue
            first = _resolve(layers[0])
            attn = next((a for a in ("self_attn", "attn", "attention") if hasattr(first, a)), None)
            if attn is not None and hasattr(first, "mlp"):
                return Layout(f"hf_{type(first).__name__}", path, attn, "mlp", True, True)
        raise UsageError(
            f"{type(model).__name__}: no decoder layer list found (looked for "
            f"{', '.join(_HF_LAYERS)} with self_attn/attn/attention and mlp in each layer)"
        )
    raise UsageError(f"{type(model).__name__} is not a supported transformer")


def layer_paths(model: nn.Module, fam: Layout | None = None) -> list[str]:
    """Qualified names of the layer positions, in forward order."""
    fam = fam or layout(model)
    container = get_module(model, fam.layers)
    prefix = f"{fam.layers}." if fam.layers else ""
    return [prefix + k for k, _ in container.named_children()]


def _real_path(model: nn.Module, path: str) -> str:
    """The path of the layer object itself below any intervention wrappers at ``path``."""
    m = get_module(model, path)
    while hasattr(m, "inner") and getattr(m, "is_intervention", False):
        path, m = path + ".inner", m.inner
    return path


def attention_of(layer: nn.Module, fam: Layout) -> nn.Module:
    """The attention module of ``layer`` (below any gate), the one that holds ``layer_idx``."""
    return _resolve(getattr(_resolve(layer), fam.attn))


# ---------------------------------------------------------------------------------------------
# Branch gates.


class _BranchGate(nn.Module):
    """Stands in for a branch's module: its output times ``gain``.

    ``gain`` is a float or a function of the input giving a float or a per-row gate. A gate with
    a ``cell`` shares one draw per layer call: the first branch draws, the second reuses it. The
    branch is not computed where the gain is 0, except for cached attention (``run_at_zero``),
    which must still write its KV-cache slot.

    It takes over the hooks of the module it stands in for (``interventions.swapped`` shares
    them) and runs that module without them, so a user's hook fires once per forward.
    """

    is_intervention = True
    takes_hooks = True

    def __init__(
        self, inner: nn.Module, gain, tuple_out: bool, run_at_zero: bool,
        cell: dict | None = None, first: bool = True,
    ) -> None:
        super().__init__()
        self.inner = inner
        self.training = inner.training
        self._gain = gain
        self._tuple = tuple_out
        self._run_at_zero = run_at_zero
        self._cell = cell
        self._first = first

    def _gain_for(self, x: Tensor):
        if not callable(self._gain):
            return self._gain
        if self._cell is None:
            return self._gain(x)
        if self._first or "g" not in self._cell:
            self._cell["g"] = self._gain(x)
            return self._cell["g"]
        return self._cell.pop("g")

    def forward(self, *args, **kwargs):
        x = args[0] if args else kwargs.get("hidden_states", next(iter(kwargs.values())))
        g = self._gain_for(x)
        if isinstance(g, float) and g == 0.0 and not self._run_at_zero:
            z = torch.zeros_like(x)
            return (z, None) if self._tuple else z
        out = self.inner.forward(*args, **kwargs)  # its hooks are this wrapper's
        o = out[0] if self._tuple else out
        if isinstance(g, float):
            if g == 0.0:
                o = torch.zeros_like(o)
            elif g != 1.0:
                o = g * o
        else:
            if g.dim() == 1:
                g = g.view(-1, *([1] * (o.dim() - 1))).to(o.dtype)
            o = g * o
        return (o, *out[1:]) if self._tuple else o

    def extra_repr(self) -> str:
        return f"gain={self._gain!r}"


@dataclass(frozen=True, eq=False)
class TransformerBlock(Block):
    """A transformer layer (``branch=None``) or one of its branches (``"attn"``, ``"mlp"``).

    ``layer`` is the layer position's name; ``layout`` says how the layer is built. Gate it with
    the interventions (``delete``, ``scale``, ``drop``; ``reorder`` at block granularity).
    """

    layer: str = ""
    branch: str | None = None
    layout: Layout | None = field(default=None, repr=False)
    _model: nn.Module | None = field(default=None, repr=False)

    def gate_replacements(self, gain) -> dict[str, nn.Module]:
        """The module swaps that multiply this block's branch(es) by ``gain``."""
        fam, model = self.layout, self._model
        real = _real_path(model, self.layer)
        layer = get_module(model, real)
        branches = ("attn", "mlp") if self.branch is None else (self.branch,)
        cell = {} if callable(gain) and len(branches) == 2 else None
        out: dict[str, nn.Module] = {}
        for i, br in enumerate(branches):
            attr = fam.attn if br == "attn" else fam.mlp
            inner = getattr(layer, attr)
            tuple_out = fam.attn_tuple and br == "attn"
            run_at_zero = fam.lm and br == "attn"
            out[f"{real}.{attr}"] = _BranchGate(inner, gain, tuple_out, run_at_zero, cell, i == 0)
        return out

    def _no(self, *_a, **_k):
        raise UsageError(
            f"{self.name} is a transformer block: the batched lesion engine and the residual/"
            "shortcut functions do not cover transformers; use the interventions (delete, scale, "
            "drop, reorder, repeat) on the model"
        )

    residual = shortcut = post = unit = apply_gains = _no

    def __call__(self, x: Tensor, gain: float = 1.0) -> Tensor:
        return self._no()


@dataclass(frozen=True, eq=False)
class _EngineUnit(TransformerBlock):
    """A transformer layer or branch the batched engine runs: read from the model at call time
    (so a reordered or gated position runs what the model holds there), ``_gained(layer, x, g)``
    computing it with gain g as the interventions gate it."""

    def _layer(self) -> nn.Module:
        return get_module(self._model, self.layer)

    def _gained(self, m: nn.Module, x: Tensor, g: float) -> Tensor:
        raise NotImplementedError

    def unit(self, x: Tensor) -> Tensor:
        return self._gained(self._layer(), x, 1.0)

    def __call__(self, x: Tensor, gain: float = 1.0) -> Tensor:
        return self._gained(self._layer(), x, gain)

    def apply_gains(self, x: Tensor, gains, sizes) -> Tensor:
        """Each chunk alone with its gain: a matmul's bits can depend on its number of rows, so
        every chunk is computed at the size the naive loop runs it at."""
        m = self._layer()
        if len(gains) == 1:
            return self._gained(m, x, gains[0])
        return torch.cat([self._gained(m, c, g) for c, g in zip(x.split(list(sizes)), gains)])


@dataclass(frozen=True, eq=False)
class ViTBlock(_EngineUnit):
    """A torchvision ViT encoder layer that the batched lesion engine can run.

    With gain g both branches are scaled, as the interventions gate them:
    ``h = x + dropout(g * attn(ln_1(x)))``, ``y = h + g * mlp(ln_2(h))``; g = 1 is the layer's own
    forward, g = 0 the identity. The layer is read from the model at call time, so a reordered or
    gated position runs what the model holds there.
    """

    def _gained(self, m: nn.Module, x: Tensor, g: float) -> Tensor:
        if g == 1.0:
            return m(x)
        if g == 0.0:
            return x
        q = m.ln_1(x)
        a, _ = m.self_attention(q, q, q, need_weights=False)
        h = m.dropout(g * a) + x
        return h + g * m.mlp(m.ln_2(h))


@dataclass(frozen=True, eq=False)
class ViTBranch(_EngineUnit):
    """One branch of a torchvision ViT encoder layer, as the batched lesion engine runs it.

    ``branch="attn"``: ``h = dropout(g * attn(ln_1(x))) + x``; ``"mlp"``: ``y = h + g *
    mlp(ln_2(h))``. With g = 1 the two in turn are the layer's own forward, op for op; with g = 0
    a branch adds zeros (what its gate returns), as the interventions compute it.
    """

    def _gained(self, m: nn.Module, x: Tensor, g: float) -> Tensor:
        if self.branch == "attn":
            if g == 0.0:
                return m.dropout(torch.zeros_like(x)) + x
            q = m.ln_1(x)
            a, _ = m.self_attention(q, q, q, need_weights=False)
            return m.dropout(a if g == 1.0 else g * a) + x
        if g == 0.0:
            return x + torch.zeros_like(x)
        y = m.mlp(m.ln_2(x))
        return x + (y if g == 1.0 else g * y)


@dataclass(frozen=True, eq=False)
class TimmUnit(_EngineUnit):
    """A timm ViT block (``branch=None``) or one of its branches, as the batched engine runs it.

    ``x + drop_path1(ls1(g * attn(norm1(x))))`` then ``+ drop_path2(ls2(g * mlp(norm2(x))))``:
    the gain multiplies the branch module's output, as the interventions' gate does, before
    LayerScale. g = 1 is the block's own forward, op for op; a branch at g = 0 adds what its
    gate returns (zeros through LayerScale); a whole block at g = 0 is the identity.
    """

    @staticmethod
    def _branch(m: nn.Module, name: str, x: Tensor, g: float) -> Tensor:
        norm, f, ls, dp = (getattr(m, a) for a in (
            ("norm1", "attn", "ls1", "drop_path1") if name == "attn"
            else ("norm2", "mlp", "ls2", "drop_path2")))
        if g == 0.0:
            return x + dp(ls(torch.zeros_like(x)))
        y = f(norm(x))
        return x + dp(ls(y if g == 1.0 else g * y))

    def _gained(self, m: nn.Module, x: Tensor, g: float) -> Tensor:
        if self.branch is not None:
            return self._branch(m, self.branch, x, g)
        if g == 1.0:
            return m(x)
        if g == 0.0:
            return x
        return self._branch(m, "mlp", self._branch(m, "attn", x, g), g)


def vit_chain(model: nn.Module, granularity: str = "block") -> list[Block | Glue]:
    """A torchvision or timm ViT as stem, encoder layers and head (see ``blocks.chain``);
    ``granularity="branch"``: each layer's attention and MLP branch in turn.

    torchvision: stem = patch embedding, class token, position embedding, dropout; head = final
    LayerNorm, the class token's features, the classification head. timm: stem = patch embedding,
    position embedding, patch dropout, pre-norm; head = final norm and ``forward_head``.
    Composed, bitwise ``model(x)``.
    """
    name = layout(model).name
    if name == "timm_vit":
        from timm.models.vision_transformer import VisionTransformer as TimmViT

        cls = type(model)
        if not (isinstance(model, TimmViT) and cls.forward is TimmViT.forward
                and cls.forward_features is TimmViT.forward_features):
            raise UsageError(f"{cls.__name__} changes timm's VisionTransformer forward: the "
                             "batched engine cannot split it; use the interventions (delete, "
                             "scale, reorder, ...) on this transformer")

        def stem(x: Tensor) -> Tensor:
            return model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))

        def head(x: Tensor) -> Tensor:
            return model.forward_head(model.norm(x))

        return [Glue("stem", stem), *transformer_blocks(model, granularity), Glue("head", head)]
    if name != "torchvision_vit":
        raise UsageError(f"{type(model).__name__}: the batched lesion engine runs torchvision "
                         "and timm ViTs, CIFAR/torchvision ResNets and VGGs; decoder LMs go "
                         "through ablate.interventions.lm_variants")
    enc = model.encoder

    def stem(x: Tensor) -> Tensor:
        x = model._process_input(x)
        x = torch.cat([model.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return enc.dropout(x + enc.pos_embedding)

    def head(x: Tensor) -> Tensor:
        return model.heads(enc.ln(x)[:, 0])

    return [Glue("stem", stem), *transformer_blocks(model, granularity), Glue("head", head)]


def transformer_blocks(model: nn.Module, granularity: str = "block") -> list[TransformerBlock]:
    """The layers (``granularity="block"``) or branches (``"branch"``) of a transformer.

    torchvision ViT layers are :class:`ViTBlock` s and their branches :class:`ViTBranch` es,
    timm ViT layers and branches :class:`TimmUnit` s: the batched engine runs those.
    """
    if granularity not in GRANULARITIES:
        raise UsageError(f"granularity must be one of {GRANULARITIES}, not {granularity!r}")
    fam = layout(model)
    out: list[TransformerBlock] = []
    whole = {"torchvision_vit": ViTBlock, "timm_vit": TimmUnit}.get(fam.name, TransformerBlock)
    for path in layer_paths(model, fam):
        module = get_module(model, path)
        if granularity == "block":
            out.append(whole(
                len(out), path, 1, False, "residual", module, layer=path, layout=fam,
                _model=model,
            ))
            continue
        layer = _resolve(module)
        part = {"torchvision_vit": ViTBranch, "timm_vit": TimmUnit}.get(fam.name, TransformerBlock)
        for br, attr in (("attn", fam.attn), ("mlp", fam.mlp)):
            out.append(part(
                len(out), f"{path}.{attr}", 1, False, "residual", getattr(layer, attr),
                layer=path, branch=br, layout=fam, _model=model,
            ))
    return out


def cache_of(args: tuple, kwargs: dict) -> object | None:
    """The KV cache passed to a layer, by keyword or position, whatever its argument's name."""
    for v in (*args, *kwargs.values()):
        if hasattr(v, "get_seq_length") and hasattr(v, "update"):
            return v
    return None


GainFn = Callable[[Tensor], Tensor | float]
