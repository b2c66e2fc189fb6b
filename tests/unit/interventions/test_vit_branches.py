"""ViT attention and MLP branches through the batched engine: bitwise the interventions."""

from __future__ import annotations

import pytest
import torch

from ablate import models
from ablate._infra.errors import UsageError
from ablate.interventions import delete
from ablate.interventions.variants import (
    Variant,
    evaluate_naive,
    evaluate_variants,
    forward_variants,
    intact_pass,
)
from ablate.models.blocks import blocks
from ablate.models.transformers import ViTBranch

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
N_LAYERS = 3


def vit():
    torch.manual_seed(0)
    m = models.vit_cifar(num_layers=N_LAYERS, hidden_dim=32, num_heads=2, mlp_dim=64).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m.double()


def data(n: int = 5):
    g = torch.Generator().manual_seed(1)
    return (torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8),
            torch.randint(0, 10, (n,), generator=g))


BRANCH_VARIANTS = ([Variant.deleting(i) for i in range(2 * N_LAYERS)]
                   + [Variant(), Variant.deleting([1, 4]), Variant.scaling({0: 0.5, 5: -1.0}),
                      Variant.deleting(range(2 * N_LAYERS))])


def test_branches_are_vit_branches_with_the_interventions_names():
    m = vit()
    bl = blocks(m, "branch")
    assert all(isinstance(b, ViTBranch) for b in bl)
    assert [b.branch for b in bl] == ["attn", "mlp"] * N_LAYERS
    assert bl[1].name == "encoder.layers.encoder_layer_0.mlp"
    # the two branches in turn are the layer, bitwise
    x = torch.randn(4, 65, 32, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(bl[3](bl[2](x)), m.encoder.layers[1](x))


def test_intact_branch_chain_is_the_models_forward():
    m = vit()
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():  # (nn.MultiheadAttention's fast path, as in the engine)
        inputs, logits = intact_pass(m, x, "branch")
        assert len(inputs) == 2 * N_LAYERS and torch.equal(logits, m(x))


@pytest.mark.parametrize("batch_size,max_rows", [(2, None), (5, 10), (3, 3)])
def test_branch_deletions_and_scalings_bitwise_the_naive_loop(batch_size, max_rows):
    m = vit()
    images, labels = data()
    kw = {"mean": MEAN, "std": STD, "batch_size": batch_size, "granularity": "branch"}
    naive = evaluate_naive(m, images, labels, BRANCH_VARIANTS, **kw)
    got = evaluate_variants(m, images, labels, BRANCH_VARIANTS, max_rows=max_rows,
                            progress=False, **kw)
    for v, a, b in zip(BRANCH_VARIANTS, got, naive):
        assert torch.equal(a.loss, b.loss) and torch.equal(a.correct, b.correct), v
    assert len({tuple(o.loss.tolist()) for o in naive}) == len(BRANCH_VARIANTS)


def test_branch_logits_bitwise_delete_with_granularity_branch():
    m = vit()
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    vs = [Variant.deleting(i) for i in range(2 * N_LAYERS)]
    got = forward_variants(m, x, vs, granularity="branch")
    for i, lg in enumerate(got):
        with delete(m, [i], granularity="branch"), torch.no_grad():
            assert torch.equal(lg, m(x)), i
    # both branches of layer 1 deleted is the layer deleted
    both = forward_variants(m, x, [Variant.deleting([2, 3])], granularity="branch")[0]
    assert torch.equal(both, forward_variants(m, x, [Variant.deleting(1)])[0])


def test_branch_granularity_refusals():
    m = vit()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with pytest.raises(UsageError, match="granularity 'block'"):
        forward_variants(m, x, [Variant.reordered(range(2 * N_LAYERS))], granularity="branch")
    with pytest.raises(UsageError, match="out of range"):
        forward_variants(m, x, [Variant.deleting(2 * N_LAYERS)], granularity="branch")
    with pytest.raises(UsageError, match="granularity"):
        forward_variants(m, x, [Variant()], granularity="layer")
    with pytest.raises(UsageError, match="no branches"):
        forward_variants(models.create("resnet20").eval(), torch.randn(1, 3, 32, 32),
                         [Variant()], granularity="branch")
