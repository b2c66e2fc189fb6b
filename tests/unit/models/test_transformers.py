"""Transformer block adapters: torchvision and timm ViTs, HF GPT-2, Llama and GPT-NeoX (tiny,
built from configs; nothing is downloaded)."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torchvision
import transformers
from torch import nn

from ablate._infra.errors import UsageError
from ablate.interventions import delete, drop, linear, reorder, scale
from ablate.interventions.structural import delete_window, repeat, run
from ablate.models.blocks import blocks

V = 64  # LM vocabulary


def tv_vit() -> nn.Module:
    return torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=3, num_heads=2, hidden_dim=32, mlp_dim=64,
        num_classes=10,
    )


def timm_vit() -> nn.Module:
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32,
        depth=3, num_heads=2, num_classes=10,
    )


def gpt2() -> nn.Module:
    cfg = transformers.GPT2Config(
        n_layer=3, n_embd=32, n_head=2, vocab_size=V, n_positions=64, bos_token_id=None,
        eos_token_id=None,
    )
    return transformers.GPT2LMHeadModel(cfg)


def llama() -> nn.Module:
    cfg = transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
        num_key_value_heads=1, vocab_size=V, max_position_embeddings=64, bos_token_id=None,
        eos_token_id=None,
    )
    return transformers.LlamaForCausalLM(cfg)


def neox(parallel: bool = True) -> nn.Module:
    cfg = transformers.GPTNeoXConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
        vocab_size=V, max_position_embeddings=64, use_parallel_residual=parallel,
        bos_token_id=None, eos_token_id=None,
    )
    return transformers.GPTNeoXForCausalLM(cfg)


# name: (factory, layer list, attention out-projection, MLP out-projection)
MODELS = {
    "tv_vit": (tv_vit, "encoder.layers", "self_attention.out_proj", "mlp.3"),
    "timm_vit": (timm_vit, "blocks", "attn.proj", "mlp.fc2"),
    "gpt2": (gpt2, "transformer.h", "attn.c_proj", "mlp.c_proj"),
    "llama": (llama, "model.layers", "self_attn.o_proj", "mlp.down_proj"),
    "neox": (neox, "gpt_neox.layers", "attention.dense", "mlp.dense_4h_to_h"),
    "neox_seq": (lambda: neox(False), "gpt_neox.layers", "attention.dense", "mlp.dense_4h_to_h"),
}
LMS = ("gpt2", "llama", "neox", "neox_seq")


def make(name: str) -> nn.Module:
    torch.manual_seed(0)
    m = MODELS[name][0]().eval()
    with torch.no_grad():  # no zero-initialised heads, biases or norms
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def inputs(name: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    if name in LMS:
        return torch.randint(0, V, (2, 6), generator=g)
    return torch.randn(2, 3, 32, 32, generator=g)


def out(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        y = model(x, use_cache=False) if x.dtype == torch.long else model(x)
    return y.logits if hasattr(y, "logits") else y


def layers(model: nn.Module, name: str) -> list[nn.Module]:
    return list(model.get_submodule(MODELS[name][1]).children())


def zeroed(model: nn.Module, name: str, layer: int, branches: tuple[str, ...]) -> nn.Module:
    """A copy of ``model`` whose branches output exactly 0: their output projections zeroed."""
    m = copy.deepcopy(model)
    lay = layers(m, name)[layer]
    with torch.no_grad():
        for br in branches:
            proj = lay.get_submodule(MODELS[name][2 if br == "attn" else 3])
            for p in proj.parameters():
                p.zero_()
    return m


def rebuilt(model: nn.Module, name: str, order: list[int]) -> nn.Module:
    """A copy of ``model`` whose layer list is rebuilt in ``order`` (repeats allowed)."""
    m = copy.deepcopy(model)
    path = MODELS[name][1]
    old = layers(m, name)
    parent, _, attr = path.rpartition(".")
    kind = type(m.get_submodule(path))
    new = kind(*[old[i] for i in order]) if kind is nn.Sequential else kind(old[i] for i in order)
    setattr(m.get_submodule(parent), attr, new)
    if hasattr(m, "config"):  # Llama runs layers[:num_hidden_layers]
        m.config.num_hidden_layers = len(order)
    return m


def snapshot(model: nn.Module) -> tuple:
    state = {k: v.clone() for k, v in model.state_dict().items()}
    mods = dict(model.named_modules())
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    return state, mods, hooks


def assert_restored(model: nn.Module, snap: tuple) -> None:
    state, mods, hooks = snap
    now = model.state_dict()
    assert list(now) == list(state)
    assert all(torch.equal(now[k], state[k]) for k in state)
    assert {k: id(v) for k, v in model.named_modules()} == {k: id(v) for k, v in mods.items()}
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == hooks


@pytest.mark.parametrize("name", list(MODELS))
def test_blocks_and_branches(name):
    model = make(name)
    bl = blocks(model)
    assert [b.index for b in bl] == [0, 1, 2]
    assert all(b.kind == "residual" and not b.changes_shape for b in bl)
    br = blocks(model, granularity="branch")
    assert len(br) == 6 and [b.branch for b in br[:2]] == ["attn", "mlp"]
    assert br[2].name.startswith(bl[1].name + ".")
    with pytest.raises(UsageError):
        blocks(model, granularity="head")


@pytest.mark.parametrize("name", list(MODELS))
def test_delete_branch_equals_zeroed_branch(name):
    model, x = make(name), inputs(name)
    for i, (layer, br) in enumerate([(0, "attn"), (1, "mlp"), (2, "attn")]):
        with delete(model, [2 * layer + (br == "mlp")], granularity="branch"):
            got = out(model, x)
        want = out(zeroed(model, name, layer, (br,)), x)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6, msg=f"case {i}")
    with delete(model, [1]):
        got = out(model, x)
    torch.testing.assert_close(got, out(zeroed(model, name, 1, ("attn", "mlp")), x),
                               rtol=0, atol=1e-6)
    assert not torch.allclose(got, out(model, x))


@pytest.mark.parametrize("name", list(MODELS))
def test_scale_branch(name):
    model, x = make(name), inputs(name)
    want = copy.deepcopy(model)
    with torch.no_grad():
        for p in layers(want, name)[2].get_submodule(MODELS[name][3]).parameters():
            p.mul_(0.5)
    with scale(model, {5: 0.5}, granularity="branch"):
        got = out(model, x)
    torch.testing.assert_close(got, out(want, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", list(MODELS))
def test_reorder_and_repeat_equal_rebuilt_lists(name):
    model, x = make(name), inputs(name)
    for perm in ([2, 0, 1], [0, 2, 1]):
        with reorder(model, perm):
            got = out(model, x)
        torch.testing.assert_close(got, out(rebuilt(model, name, perm), x), rtol=0, atol=1e-6)
    with repeat(model, [1]):
        got = out(model, x)
    torch.testing.assert_close(got, out(rebuilt(model, name, [0, 1, 1, 2]), x),
                               rtol=0, atol=1e-6)
    with delete_window(model, 0, 2):
        got = out(model, x)
    torch.testing.assert_close(got, out(rebuilt(model, name, [2]), x), rtol=0, atol=1e-6)
    with run(model, [2, 1, 0, 0]), delete(model, [0]):  # layer 0 deleted wherever it runs
        got = out(model, x)
    torch.testing.assert_close(got, out(rebuilt(model, name, [2, 1]), x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", list(MODELS))
def test_drop_at_eval(name):
    model, x = make(name), inputs(name)
    with drop(model, linear(1.0)):
        torch.testing.assert_close(out(model, x), out(make(name), x), rtol=0, atol=0)
    with drop(model, 0.0, mode="batch"):
        got = out(model, x)
    with delete(model, [0, 1, 2]):
        torch.testing.assert_close(got, out(model, x), rtol=0, atol=0)
    gen = torch.Generator().manual_seed(0)
    with drop(model, 0.5, mode="row", generator=gen, granularity="branch"):
        out(model, x)


@pytest.mark.parametrize("name", list(MODELS))
def test_restored_after_exit_and_exception(name):
    model, x = make(name), inputs(name)
    before, snap = out(model, x), snapshot(model)
    with delete(model, [0]), scale(model, {1: 0.3}, granularity="branch"):
        with reorder(model, [0, 2, 1]):
            out(model, x)
    assert_restored(model, snap)
    for ctx in (lambda: repeat(model, [0, 2]), lambda: delete(model, [3], granularity="branch"),
                lambda: drop(model, 0.5)):
        with pytest.raises(RuntimeError), ctx():
            out(model, x)
            raise RuntimeError("inside")
        assert_restored(model, snap)
    torch.testing.assert_close(out(model, x), before, rtol=0, atol=0)


def _greedy_uncached(model: nn.Module, ids: torch.Tensor, n: int) -> tuple[torch.Tensor, list]:
    logits = []
    with torch.no_grad():
        for _ in range(n):
            step = model(ids, use_cache=False).logits[:, -1]
            logits.append(step)
            ids = torch.cat([ids, step.argmax(-1, keepdim=True)], 1)
    return ids, logits


INTERVENTIONS = {
    "delete_block0": lambda m: delete(m, [0]),
    "delete_attn1": lambda m: delete(m, [2], granularity="branch"),
    "reorder": lambda m: reorder(m, [2, 0, 1]),
    "repeat": lambda m: repeat(m, [0, 2], times=2),
    "window": lambda m: delete_window(m, 0, 2),
    "plan": lambda m: run(m, [1, 1, 0, 2, 2]),
}


@pytest.mark.parametrize("name", LMS)
@pytest.mark.parametrize("what", list(INTERVENTIONS))
def test_cached_generation_equals_uncached(name, what):
    model, ids = make(name), inputs(name)
    with INTERVENTIONS[what](model), torch.no_grad():
        g = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4,
                           do_sample=False, pad_token_id=0,
                           output_logits=True, return_dict_in_generate=True)
        want_ids, want_logits = _greedy_uncached(model, ids, 4)
    assert torch.equal(g.sequences, want_ids)
    for a, b in zip(g.logits, want_logits):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_plan_refusals():
    model = make("gpt2")
    with pytest.raises(UsageError):
        with run(model, []):
            pass
    with pytest.raises(UsageError):
        with run(model, [0, 3]):
            pass
    with pytest.raises(UsageError), repeat(model, 1), repeat(model, 2):
        pass
    with pytest.raises(UsageError):
        with delete_window(model, 0, 3):
            pass
    with pytest.raises(UsageError):
        from ablate.models.blocks import chain
        chain(model)
