"""The batched LM engine against one forward per condition through the interventions: tiny
random Llama, GPT-2 and GPT-NeoX models (built from configs, nothing downloaded)."""

from __future__ import annotations

import pytest
import torch
import transformers
from torch import nn

from ablate._infra.errors import UsageError
from ablate.interventions.lm_variants import (
    evaluate_lm_naive,
    evaluate_lm_variants,
    lm_forward_variants,
    lm_intact_pass,
)
from ablate.interventions.variants import Variant, applied

V, L = 48, 4


def _llama() -> nn.Module:
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=L, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=V, max_position_embeddings=64, bos_token_id=None,
        eos_token_id=None, pad_token_id=None))


def _gpt2() -> nn.Module:
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=L, n_embd=32, n_head=2, vocab_size=V, n_positions=64, bos_token_id=None,
        eos_token_id=None))


def _neox(parallel: bool) -> nn.Module:
    return transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=L, num_attention_heads=2,
        vocab_size=V, max_position_embeddings=64, use_parallel_residual=parallel,
        bos_token_id=None, eos_token_id=None))


FACTORIES = {"llama": _llama, "gpt2": _gpt2, "neox": lambda: _neox(True),
             "neox_seq": lambda: _neox(False)}


def make(name: str) -> nn.Module:
    torch.manual_seed(0)
    m = FACTORIES[name]().eval()
    with torch.no_grad():  # no zero-initialised biases or norms
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def ids_and_mask(n: int = 3, t: int = 9, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (n, t), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding in one row
    mask[-1, -2:] = 0  # right padding in another
    return ids, mask


def swaps() -> list[Variant]:
    return [Variant.swapping(i, i + 1, L) for i in range(L - 1)]


VARIANTS = ([Variant.deleting(i) for i in range(L)] + swaps()
            + [Variant(), Variant.deleting([0, 2]), Variant.scaling({1: 0.5, 3: -1.5}),
               Variant(gains=((2, 0.0),), order=(1, 0, 2, 3)), Variant.deleting(range(L))])


def naive_logits(model, ids, variants, granularity="block", **kw) -> list[torch.Tensor]:
    out = []
    for v in variants:
        with applied(model, v, granularity), torch.no_grad():
            out.append(model(input_ids=ids, use_cache=False, **kw).logits)
    return out


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("padded", [False, True])
def test_deletions_swaps_and_scalings_bitwise_one_batch(name, padded):
    model = make(name)
    ids, mask = ids_and_mask()
    kw = {"attention_mask": mask} if padded else {}
    ref = naive_logits(model, ids, VARIANTS, **kw)
    got = lm_forward_variants(model, ids, VARIANTS, **kw)
    for v, g, r in zip(VARIANTS, got, ref):
        assert torch.equal(g, r), v
    # the variants differ from the intact model and from one another
    assert len({tuple(r.flatten()[:50].tolist()) for r in ref}) == len(VARIANTS)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_stacked_streams_agree_within_float_tolerance(name):
    model = make(name)
    ids, mask = ids_and_mask()
    ref = naive_logits(model, ids, VARIANTS, attention_mask=mask)
    for rows in (6, 100):  # two streams per layer call, then every stream at a position
        got = lm_forward_variants(model, ids, VARIANTS, attention_mask=mask, max_rows=rows)
        for v, g, r in zip(VARIANTS, got, ref):
            torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5, msg=str(v))
            assert torch.equal(g.argmax(-1), r.argmax(-1)), v


@pytest.mark.parametrize("name", ["llama", "gpt2", "neox_seq"])
def test_branch_deletions_bitwise(name):
    model = make(name)
    ids, mask = ids_and_mask()
    vs = [Variant.deleting(i) for i in range(2 * L)] + [
        Variant.scaling({1: 0.25, 4: 2.0}), Variant.deleting([0, 3, 6])]
    ref = naive_logits(model, ids, vs, "branch", attention_mask=mask)
    got = lm_forward_variants(model, ids, vs, attention_mask=mask, granularity="branch")
    for v, g, r in zip(vs, got, ref):
        assert torch.equal(g, r), v
    _, ev = evaluate_lm_variants(model, ids, vs, attention_mask=mask, granularity="branch",
                                 batch_size=2, workers=2)
    for v, g, r in zip(vs, ev, ref):
        assert torch.equal(g, r), v
    # deleting a layer's two branches is deleting the layer
    whole = lm_forward_variants(model, ids, [Variant.deleting(1)], attention_mask=mask)[0]
    both = naive_logits(model, ids, [Variant.deleting([2, 3])], "branch", attention_mask=mask)[0]
    assert torch.equal(whole, both)


def test_evaluate_matches_naive_with_reduce_batches_and_position_ids():
    model = make("llama")
    ids, mask = ids_and_mask(n=5, t=8, seed=3)
    pos = (mask.cumsum(-1) - 1).clamp_min(0)  # positions that skip the left padding

    def reduce(logits, intact, rows):
        lp = torch.log_softmax(logits[:, :-1].float(), -1)
        return {"nll": -lp.gather(-1, ids[rows, 1:, None])[..., 0],
                "agree": logits[:, :-1].argmax(-1) == intact[:, :-1].argmax(-1)}

    kw = {"reduce": reduce, "attention_mask": mask, "position_ids": pos, "batch_size": 2}
    base_n, naive = evaluate_lm_naive(model, ids, VARIANTS, **kw)
    for chunk, rows, workers in ((64, None, 1), (64, None, 2), (3, None, 3), (3, 4, 2)):
        base_b, got = evaluate_lm_variants(model, ids, VARIANTS, chunk=chunk, max_rows=rows,
                                           workers=workers, **kw)
        assert base_b["nll"].shape == (5, 7) and bool(base_b["agree"].all())
        assert torch.equal(base_b["nll"], base_n["nll"])
        for v, g, r in zip(VARIANTS, got, naive):
            assert torch.equal(g["agree"], r["agree"]), v
            if rows is None:
                assert torch.equal(g["nll"], r["nll"]), v
            else:
                torch.testing.assert_close(g["nll"], r["nll"], rtol=1e-5, atol=1e-5)
    # position ids change the result: they reach the layers
    _, plain = evaluate_lm_variants(model, ids, VARIANTS[:1], reduce=reduce, attention_mask=mask,
                                    batch_size=2)
    assert not torch.equal(plain[0]["nll"], got[0]["nll"])


def test_default_reduce_keeps_logits_and_intact_is_the_models_forward():
    model = make("gpt2")
    ids, _ = ids_and_mask(n=3, t=6)
    base, got = evaluate_lm_variants(model, ids, [Variant(), Variant.deleting(3)], batch_size=2)
    with torch.no_grad():
        ref = model(input_ids=ids, use_cache=False).logits
    assert torch.equal(base, torch.cat([ref[:2], ref[2:]])) or torch.allclose(base, ref)
    assert torch.equal(got[0], base)
    it = lm_intact_pass(model, ids)
    assert len(it.inputs) == L and torch.equal(it.logits, model(input_ids=ids).logits)


def test_the_model_is_left_as_it_was():
    model = make("llama").train()
    model.model.layers[1].mlp.eval()  # every module's own flag comes back
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids, mask = ids_and_mask()
    evaluate_lm_variants(model, ids, VARIANTS, attention_mask=mask, batch_size=2, workers=2)
    evaluate_lm_naive(model, ids, VARIANTS[:2], attention_mask=mask, batch_size=2)
    assert not model.model.layers[1].mlp.training and model.model.layers[2].mlp.training
    lm_forward_variants(model, ids, VARIANTS[:3], granularity="block")
    assert model.training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())
    assert all(type(m).__module__.startswith(("transformers.", "torch.")) for m in model.modules())


def test_refusals():
    model = make("llama")
    ids, _ = ids_and_mask()
    with pytest.raises(UsageError, match="out of range"):
        lm_forward_variants(model, ids, [Variant.deleting(L)])
    with pytest.raises(UsageError, match="granularity 'block'"):
        lm_forward_variants(model, ids, [Variant.reordered([1, 0, 2, 3])], granularity="branch")
    with pytest.raises(UsageError, match="granularity"):
        lm_forward_variants(model, ids, [Variant()], granularity="layer")
    with pytest.raises(UsageError, match="finite"):
        lm_forward_variants(model, ids, [Variant(gains=((1, float("nan")),))])
    with pytest.raises(UsageError, match="input_ids"):
        evaluate_lm_variants(model, ids[0], [Variant()])
    with pytest.raises(UsageError, match="batch_size"):
        evaluate_lm_variants(model, ids, [Variant()], batch_size=0)
    for bad in (0, True, 2.0):
        with pytest.raises(UsageError, match="workers"):
            evaluate_lm_variants(model, ids, [Variant()], workers=bad)
    with pytest.raises(UsageError):  # an image model
        lm_forward_variants(nn.Linear(2, 2), ids, [Variant()])


def test_a_model_whose_logits_are_not_head_of_norm_is_refused():
    model = make("llama")
    ids, _ = ids_and_mask()
    handle = model.register_forward_hook(
        lambda _m, _a, out: out.__setitem__("logits", out["logits"] * 2.0) or out)
    try:
        with pytest.raises(UsageError, match="head"):
            lm_forward_variants(model, ids, [Variant.deleting(1)])
    finally:
        handle.remove()


def test_the_tail_check_runs_once_per_model_structure():
    model = make("llama")
    ids, _ = ids_and_mask()
    calls = []
    handle = model.model.norm.register_forward_hook(lambda *_: calls.append(1))
    try:
        lm_forward_variants(model, ids, [Variant.deleting(1)])
        assert len(calls) == 3  # the model's forward, the check, the variant
        calls.clear()
        lm_forward_variants(model, ids, [Variant.deleting(1)])
        assert len(calls) == 2
        calls.clear()
        model.lm_head = nn.Linear(32, V, bias=False)  # another head: checked again
        lm_forward_variants(model, ids, [Variant.deleting(1)])
        assert len(calls) == 3
    finally:
        handle.remove()
