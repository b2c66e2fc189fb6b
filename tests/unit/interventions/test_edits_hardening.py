"""Issue 26, interventions: a user's hook fires exactly once per forward inside an edit and can be
removed there; ``drop``'s gates survive gradient checkpointing; ``reorder`` refuses to mix
attention types; an out-of-order exit restores the model; every argument of every intervention is
checked as strictly as ``delete``'s. Tiny models built here; nothing is downloaded."""

from __future__ import annotations

import math

import pytest
import timm
import torch
import transformers
from torch import nn
from torch.utils.checkpoint import checkpoint

from ablate import models
from ablate._infra.errors import UsageError
from ablate.interventions import (
    Variant,
    applied,
    check_gain,
    check_order,
    delete,
    drop,
    linear,
    reorder,
    scale,
    structural,
    swapped,
)
from ablate.models.blocks import blocks
from tests.helpers import randomise_bn, small_vgg

V = 64


def gpt2() -> nn.Module:
    cfg = transformers.GPT2Config(n_layer=3, n_embd=32, n_head=2, vocab_size=V, n_positions=64,
                                  bos_token_id=None, eos_token_id=None)
    return transformers.GPT2LMHeadModel(cfg)


def llama() -> nn.Module:
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                   num_attention_heads=2, num_key_value_heads=1, vocab_size=V,
                                   max_position_embeddings=64, bos_token_id=None,
                                   eos_token_id=None)
    return transformers.LlamaForCausalLM(cfg)


def timm_vit() -> nn.Module:
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
                             embed_dim=32, depth=3, num_heads=2, num_classes=10)


def resnet20() -> nn.Module:
    return randomise_bn(models.create("resnet20"))


def vgg() -> nn.Module:
    return randomise_bn(small_vgg("vgg11_bn"))


FACTORIES = {"gpt2": gpt2, "llama": llama, "timm_vit": timm_vit, "resnet20": resnet20,
             "vgg": vgg}


def make(name: str) -> nn.Module:
    torch.manual_seed(0)
    m = FACTORIES[name]().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def inputs(name: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    if name in ("gpt2", "llama"):
        return torch.randint(0, V, (2, 6), generator=g)
    return torch.randn(2, 3, 32, 32, generator=g)


def forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        y = model(x, use_cache=False) if x.dtype == torch.long else model(x)
    return y.logits if hasattr(y, "logits") else y


def snapshot(model: nn.Module, x: torch.Tensor) -> dict:
    sd = model.state_dict()
    return {"tensors": {k: v.clone() for k, v in sd.items()},
            "modules": {k: id(m) for k, m in model.named_modules()},
            "hooks": {k: (dict(m._forward_hooks), dict(m._forward_pre_hooks))
                      for k, m in model.named_modules()},
            "out": forward(model, x)}


def assert_restored(model: nn.Module, snap: dict, x: torch.Tensor) -> None:
    sd = model.state_dict()
    assert set(sd) == set(snap["tensors"])
    assert all(torch.equal(v, snap["tensors"][k]) for k, v in sd.items())
    assert {k: id(m) for k, m in model.named_modules()} == snap["modules"]
    assert {k: (dict(m._forward_hooks), dict(m._forward_pre_hooks))
            for k, m in model.named_modules()} == snap["hooks"]
    assert not any(getattr(m, "is_intervention", False) for m in model.modules())
    assert torch.equal(forward(model, x), snap["out"])


# ---------------------------------------------------------------------------------------------
# 6. a user's hook fires exactly once per forward inside delete / scale / drop, and can be
# removed there


# (model, granularity, unit name, hooked module): transformer branches (GPT-2 attention and MLP,
# Llama MLP and attention, timm MLP and attention), whole layers, a CIFAR block, a VGG plain unit
# (its conv, and its BN, which the gate runs inside)
HOOKED = [
    ("gpt2", "branch", "transformer.h.1.attn", None),
    ("gpt2", "branch", "transformer.h.1.mlp", None),
    ("llama", "branch", "model.layers.1.mlp", None),
    ("llama", "branch", "model.layers.1.self_attn", None),
    ("timm_vit", "branch", "blocks.1.mlp", None), ("timm_vit", "branch", "blocks.1.attn", None),
    ("gpt2", "block", "transformer.h.1", "transformer.h.1.mlp"),
    ("timm_vit", "block", "blocks.1", "blocks.1.attn"),
    ("resnet20", "block", "layer1.1", None), ("vgg", "block", "features.11", None),
    ("vgg", "block", "features.11", "features.12"),
]
EDITS = ["delete", "scale", "drop"]


def _edit(edit: str, model: nn.Module, i: int, granularity: str):
    if edit == "delete":
        return delete(model, [i], granularity)
    if edit == "scale":
        return scale(model, {i: 0.5}, granularity)
    units = [b for b in blocks(model, granularity)  # what drop gates: not shape-changing convs
             if not (b.kind == "plain" and b.changes_shape)]
    keep = [0.5 if b.index == i else 1.0 for b in units]
    return drop(model, keep, mode="row", generator=torch.Generator().manual_seed(0),
                residual_only=False, granularity=granularity)


@pytest.mark.parametrize("edit", EDITS)
@pytest.mark.parametrize("name, granularity, unit, hooked", HOOKED,
                         ids=[f"{m}-{h or u}" for m, _, u, h in HOOKED])
def test_user_hook_fires_once_and_is_removable_inside(name, granularity, unit, hooked, edit):
    if edit == "scale" and name == "vgg":
        pytest.skip("plain units are kept or deleted, not scaled")
    model, x = make(name), inputs(name)
    snap = snapshot(model, x)
    i = next(b.index for b in blocks(model, granularity) if b.name == unit)
    hooked = hooked or unit
    module = model.get_submodule(hooked)
    fired = {"pre": 0, "post": 0, "late": 0}
    seen = []

    def post(m, a, o):
        fired["post"] += 1
        seen.append(o[0] if isinstance(o, tuple) else o)

    h_post = module.register_forward_hook(post)
    h_pre = module.register_forward_pre_hook(lambda m, a: fired.__setitem__("pre",
                                                                           fired["pre"] + 1))
    with _edit(edit, model, i, granularity):
        forward(model, x)
        assert fired["pre"] == 1 and fired["post"] == 1, fired  # once, not once per wrapper
        h_post.remove()  # removed inside the block: fires no more
        h_pre.remove()
        here = model.get_submodule(hooked)  # what stands at the module's place in the block
        h_late = here.register_forward_hook(
            lambda m, a, o: fired.__setitem__("late", fired["late"] + 1))
        forward(model, x)
        assert fired["pre"] == 1 and fired["post"] == 1 and fired["late"] == 1, fired
    forward(model, x)  # a hook added inside stays on the module; the removed ones are gone
    assert fired["pre"] == 1 and fired["post"] == 1 and fired["late"] == 2, fired
    assert list(module._forward_hooks) == [h_late.id] and not module._forward_pre_hooks
    h_late.remove()
    assert_restored(model, snap, x)
    if edit == "delete" and hooked == unit and granularity == "branch":  # the edited output
        assert float(seen[0].abs().max()) == 0.0


# ---------------------------------------------------------------------------------------------
# 7. drop(generator=...) under gradient checkpointing: the gates of a forward pass are reused
# when it is recomputed in backward


def _grads(model: nn.Module, x: torch.Tensor, mode: str, ckpt: str | None, seed: int = 5):
    model.zero_grad(set_to_none=True)
    g = torch.Generator().manual_seed(seed)
    with drop(model, 0.5, mode=mode, generator=g):
        if isinstance(model, models.CifarResNet):
            h = torch.relu(model.bn1(model.conv1(x)))
            for stage in (model.layer1, model.layer2, model.layer3):
                for block in stage:
                    h = block(h) if ckpt is None else checkpoint(
                        block, h, use_reentrant=ckpt == "reentrant")
            out = model.linear(nn.functional.adaptive_avg_pool2d(h, 1).flatten(1))
        else:  # timm ViT
            h = model.patch_embed(x)
            h = model._pos_embed(h)
            for block in model.blocks:
                h = block(h) if ckpt is None else checkpoint(
                    block, h, use_reentrant=ckpt == "reentrant")
            out = model.forward_head(model.norm(h))
        out.square().sum().backward()
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("ckpt", ["non_reentrant", "reentrant"])
@pytest.mark.parametrize("mode", ["row", "batch"])
@pytest.mark.parametrize("name", ["resnet20", "timm_vit"])
def test_checkpointed_drop_has_the_gradients_of_the_plain_run(name, mode, ckpt):
    model = make(name).train()
    for m in model.modules():  # deterministic forward: only the gates are random
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    for seed in range(3):  # several draws: some gates closed, some open
        want = _grads(model, x, mode, None, seed)
        got = _grads(model, x, mode, ckpt, seed)
        assert set(got) == set(want)
        for k in want:
            assert torch.allclose(got[k], want[k], rtol=1e-5, atol=1e-7), (k, seed)


# ---------------------------------------------------------------------------------------------
# 8. reorder on a model mixing full and sliding-window attention


def mixed_attention() -> nn.Module:
    cfg = transformers.Qwen2Config(
        hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2,
        num_key_value_heads=1, vocab_size=V, max_position_embeddings=64, use_sliding_window=True,
        sliding_window=2, layer_types=["full_attention", "sliding_attention"] * 2,
        bos_token_id=None, eos_token_id=None)
    torch.manual_seed(0)
    return transformers.Qwen2ForCausalLM(cfg).eval()


@pytest.mark.parametrize("order", [[1, 0, 2, 3], [0, 2, 1, 3], [3, 2, 1, 0]])
def test_reorder_across_attention_types_is_refused(order):
    model, x = mixed_attention(), inputs("gpt2")
    snap = snapshot(model, x)
    with pytest.raises(UsageError) as e:
        with reorder(model, order):
            pass
    assert "mixes attention types" in str(e.value) and "\n" not in str(e.value)
    assert_restored(model, snap, x)


def test_reorder_within_an_attention_type_still_generates():
    model, x = mixed_attention(), inputs("gpt2")
    with reorder(model, [2, 3, 0, 1]), torch.no_grad():
        cached = model.generate(x, max_new_tokens=4, do_sample=False)
    assert cached.shape == (2, 10)


# ---------------------------------------------------------------------------------------------
# 9a. exits out of order


def _open(ctx):
    ctx.__enter__()
    return ctx


@pytest.mark.parametrize("name", ["resnet20", "gpt2"])
@pytest.mark.parametrize("pair", ["same_unit", "other_units", "reorder_then_delete",
                                  "delete_then_reorder"])
def test_out_of_order_exit_restores_the_model(name, pair):
    model, x = make(name), inputs(name)
    snap = snapshot(model, x)
    n = len(blocks(model))
    perm = list(range(n))
    perm[1], perm[2] = perm[2], perm[1]
    outer, inner = {
        "same_unit": (lambda: delete(model, [1]), lambda: scale(model, {1: 0.5})),
        "other_units": (lambda: delete(model, [0]), lambda: scale(model, {2: 0.5})),
        "reorder_then_delete": (lambda: reorder(model, perm), lambda: delete(model, [1])),
        "delete_then_reorder": (lambda: delete(model, [1]), lambda: reorder(model, perm)),
    }[pair]
    a = _open(outer())
    b = _open(inner())
    with pytest.raises(UsageError) as e:
        a.__exit__(None, None, None)  # the outer one first
    assert "out of order" in str(e.value) and "\n" not in str(e.value)
    assert_restored(model, snap, x)
    b.__exit__(None, None, None)  # the inner one finds nothing left to undo
    assert_restored(model, snap, x)
    with delete(model, [1]), scale(model, {1: 0.5}):  # in order: as always
        forward(model, x)
    assert_restored(model, snap, x)


def test_out_of_order_exit_on_an_exception_restores_and_keeps_the_exception():
    model, x = make("resnet20"), inputs("resnet20")
    snap = snapshot(model, x)
    a = _open(delete(model, [1]))
    _open(scale(model, {1: 0.5}))
    err = RuntimeError("user code failed")
    assert a.__exit__(RuntimeError, err, None) is False  # not swallowed, not replaced
    assert_restored(model, snap, x)


# ---------------------------------------------------------------------------------------------
# 9b. every argument of every intervention, every kind of bad value

NAN, INF = math.nan, math.inf
N = 9  # resnet20's blocks


def _resnet_cases():
    ident = list(range(N))
    return {
        "delete": [
            lambda m: delete(m, True), lambda m: delete(m, [True]), lambda m: delete(m, 1.0),
            lambda m: delete(m, [1.0]), lambda m: delete(m, [-1]), lambda m: delete(m, [N]),
            lambda m: delete(m, [1, 1]), lambda m: delete(m, "1"), lambda m: delete(m, None),
            lambda m: delete(m, [NAN]), lambda m: delete(m, {1: 0}), lambda m: delete(m, 1.5),
            lambda m: delete(m, [1], granularity="layer"), lambda m: delete(m, [1], 3),
        ],
        "scale": [
            lambda m: scale(m, True), lambda m: scale(m, NAN), lambda m: scale(m, INF),
            lambda m: scale(m, -INF), lambda m: scale(m, "0.5"), lambda m: scale(m, None),
            lambda m: scale(m, {1: True}), lambda m: scale(m, {1: NAN}),
            lambda m: scale(m, {1: INF}), lambda m: scale(m, {1: "2"}),
            lambda m: scale(m, {True: 0.5}), lambda m: scale(m, {1.0: 0.5}),
            lambda m: scale(m, {-1: 0.5}), lambda m: scale(m, {N: 0.5}),
            lambda m: scale(m, [0.5] * (N - 1)), lambda m: scale(m, [NAN] * N),
            lambda m: scale(m, [True] * N), lambda m: scale(m, {1: 0.5}, granularity="x"),
        ],
        "drop": [
            lambda m: drop(m, True), lambda m: drop(m, NAN), lambda m: drop(m, INF),
            lambda m: drop(m, -0.1), lambda m: drop(m, 1.5), lambda m: drop(m, "0.5"),
            lambda m: drop(m, None), lambda m: drop(m, [0.5] * (N - 1)),
            lambda m: drop(m, [NAN] * N), lambda m: drop(m, [True] * N),
            lambda m: drop(m, lambda n: [2.0] * n), lambda m: drop(m, lambda n: 0.5),
            lambda m: drop(m, 0.5, mode="rows"), lambda m: drop(m, 0.5, mode=1),
            lambda m: drop(m, 0.5, generator=1), lambda m: drop(m, 0.5, generator="g"),
            lambda m: drop(m, 0.5, rescale=1), lambda m: drop(m, 0.5, rescale="yes"),
            lambda m: drop(m, 0.5, residual_only=0), lambda m: drop(m, 0.5, residual_only=None),
            lambda m: drop(m, 0.5, granularity="layer"),
        ],
        "reorder": [
            lambda m: reorder(m, [True, False, *ident[2:]]),
            lambda m: reorder(m, [float(i) for i in ident]), lambda m: reorder(m, [0] * N),
            lambda m: reorder(m, [-1, *ident[1:]]), lambda m: reorder(m, [*ident[:-1], N]),
            lambda m: reorder(m, "012345678"), lambda m: reorder(m, None), lambda m: reorder(m, 3),
            lambda m: reorder(m, ident[:-1]), lambda m: reorder(m, [NAN] * N),
            lambda m: reorder(m, dict.fromkeys(ident, 0)),
        ],
        "linear": [
            lambda m: drop(m, linear(True)), lambda m: drop(m, linear(NAN)),
            lambda m: drop(m, linear(INF)), lambda m: drop(m, linear(0)),
            lambda m: drop(m, linear(1.5)), lambda m: drop(m, linear("0.5")),
            lambda m: drop(m, linear(None)), lambda m: drop(m, linear(-0.5)),
        ],
        "Variant": [
            lambda m: applied(m, Variant.deleting(True)),
            lambda m: applied(m, Variant.deleting([1.0])),
            lambda m: applied(m, Variant.deleting([-1])),
            lambda m: applied(m, Variant.deleting([1, 1])),
            lambda m: applied(m, Variant.deleting([N])),
            lambda m: applied(m, Variant.scaling({1: NAN})),
            lambda m: applied(m, Variant.scaling({1: True})),
            lambda m: applied(m, Variant.scaling({True: 0.5})),
            lambda m: applied(m, Variant.scaling("x")),
            lambda m: applied(m, Variant.reordered([True, False, *ident[2:]])),
            lambda m: applied(m, Variant.reordered([float(i) for i in ident])),
            lambda m: applied(m, Variant.reordered([0] * N)),
            lambda m: applied(m, Variant(gains=((True, 0.0),))),
            lambda m: applied(m, Variant(gains=((1, INF),))),
            lambda m: applied(m, Variant(order=(True, False, *ident[2:]))),
        ],
        "swapped": [
            lambda m: swapped(m, {1: nn.Identity()}), lambda m: swapped(m, {"layer1.0": "x"}),
            lambda m: swapped(m, {"nope.0": nn.Identity()}), lambda m: swapped(m, {"": m}),
            lambda m: swapped(m, [("layer1.0", nn.Identity())]),
            lambda m: swapped("model", {}),
        ],
        "check_gain": [
            lambda m, g=g: _checked(lambda: check_gain(blocks(m)[1], g))
            for g in (True, NAN, INF, "1", None)
        ],
        "check_order": [
            lambda m, o=o: _checked(lambda: check_order(blocks(m), o))
            for o in ([True, False, *ident[2:]], [float(i) for i in ident], "012345678", None)
        ],
    }


def _checked(fn):
    fn()
    return _nothing()


def _nothing():
    import contextlib

    return contextlib.nullcontext()


def _lm_cases():
    return {
        "run": [lambda m: structural.run(m, [True, 1, 2]), lambda m: structural.run(m, [0.0]),
                lambda m: structural.run(m, "012"), lambda m: structural.run(m, None),
                lambda m: structural.run(m, [NAN])],
        "repeat": [lambda m: structural.repeat(m, True), lambda m: structural.repeat(m, [1.0]),
                   lambda m: structural.repeat(m, [1, 1]), lambda m: structural.repeat(m, 1, True),
                   lambda m: structural.repeat(m, 1, 2.0), lambda m: structural.repeat(m, 1, 0),
                   lambda m: structural.repeat(m, "1"), lambda m: structural.repeat(m, [5])],
        "delete_window": [lambda m: structural.delete_window(m, 0.0, 1),
                          lambda m: structural.delete_window(m, True, 1),
                          lambda m: structural.delete_window(m, 0, True),
                          lambda m: structural.delete_window(m, 0, NAN),
                          lambda m: structural.delete_window(m, -1, 1)],
        "delete_branch": [lambda m: delete(m, [True], "branch"),
                          lambda m: delete(m, [6], "branch"),
                          lambda m: scale(m, {0: NAN}, "branch")],
    }


CASES = [("resnet20", k, i) for k, v in _resnet_cases().items() for i in range(len(v))]
CASES += [("gpt2", k, i) for k, v in _lm_cases().items() for i in range(len(v))]


@pytest.mark.parametrize("name, intervention, i", CASES,
                         ids=[f"{n}-{k}-{i}" for n, k, i in CASES])
def test_every_bad_argument_is_one_line_and_changes_nothing(name, intervention, i):
    model, x = make(name), inputs(name)
    snap = snapshot(model, x)
    cases = _resnet_cases() if name == "resnet20" else _lm_cases()
    with pytest.raises(UsageError) as e:
        with cases[intervention][i](model):
            forward(model, x)
    assert "\n" not in str(e.value) and str(e.value)
    assert_restored(model, snap, x)


def test_good_arguments_still_work():
    model, x = make("resnet20"), inputs("resnet20")
    import numpy as np

    for ctx in (delete(model, np.int64(1)), delete(model, [0, 2]), scale(model, 2),
                scale(model, {1: 0.5}), scale(model, [1.0] * N), drop(model, linear(0.5)),
                drop(model, [1.0] * N, mode="batch"), reorder(model, list(range(N))),
                applied(model, Variant.deleting([1, 2])), applied(model, Variant.scaling({1: 2}))):
        with ctx:
            forward(model, x)
