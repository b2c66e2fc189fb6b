"""The batched lesion engine on torchvision ViTs: the chain composes to the forward bitwise, a
layer's gains are the interventions' gates, and evaluate_variants equals the naive loop."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ablate import models
from ablate.interventions import delete, scale
from ablate.interventions.variants import Variant, evaluate_naive, evaluate_variants
from ablate.models.blocks import Glue, blocks, chain
from ablate.models.transformers import ViTBlock

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def tiny_vit(seed: int = 0, layers: int = 4) -> nn.Module:
    """A 4-layer vit_cifar of width 32 with a random (not zero) head, in eval mode."""
    torch.manual_seed(seed)
    net = models.create("vit_cifar", num_layers=layers, hidden_dim=32, num_heads=2, mlp_dim=64,
                        dropout=0.1)
    nn.init.normal_(net.heads.head.weight, std=0.5)
    return net.eval()


def compose(steps, x):
    for s in steps:
        x = s(x) if isinstance(s, Glue) else s.unit(x)
    return x


def test_chain_composes_to_the_forward_bitwise():
    net = tiny_vit()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    steps = chain(net)
    assert [s.name for s in steps if isinstance(s, Glue)] == ["stem", "head"]
    units = [s for s in steps if not isinstance(s, Glue)]
    assert all(isinstance(u, ViTBlock) for u in units) and len(units) == 4
    assert [u.name for u in units] == [b.name for b in blocks(net)]
    assert not any(u.changes_shape for u in units) and {u.stage for u in units} == {1}
    for ctx in (torch.no_grad, torch.inference_mode):
        with ctx():
            assert torch.equal(compose(steps, x), net(x))


def test_unit_gains_are_the_interventions():
    net = tiny_vit()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    stem, first = chain(net)[:2]
    with torch.no_grad():
        h = stem(x)
        assert torch.equal(first(h, 0.0), h)  # a deleted layer is the identity
        for g in (0.5, 1.0, 2.0):
            want = first(h, g)  # outside: inside, the unit would run the gated layer
            with scale(net, {0: g}):
                assert torch.equal(net.encoder.layers[0](h), want)
        with delete(net, 0):
            assert torch.equal(net.encoder.layers[0](h), h)
        mixed = first.apply_gains(torch.cat([h, h, h]), [1.0, 0.0, 0.5], [2, 2, 2])
        assert torch.equal(mixed, torch.cat([first(h), h, first(h, 0.5)]))


VARIANTS = [
    Variant(), Variant.deleting(0), Variant.deleting(3), Variant.deleting([1, 2]),
    Variant.scaling({2: 0.5}), Variant.scaling({0: 0.0, 3: 1.5}),
    Variant.reordered([1, 0, 2, 3]), Variant.reordered([3, 2, 1, 0]),
    Variant(gains=((1, 0.0), (2, 0.5)), order=(0, 2, 1, 3)),
]


@pytest.mark.parametrize("batch_size,max_rows", [(4, None), (4, 8), (11, None)])
def test_evaluate_variants_equals_the_naive_loop(batch_size, max_rows):
    net = tiny_vit()
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (11, 3, 32, 32), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (11,), generator=g)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    naive = evaluate_naive(net, images, labels, VARIANTS, mean=MEAN, std=STD,
                           batch_size=batch_size)
    batched = evaluate_variants(net, images, labels, VARIANTS, mean=MEAN, std=STD,
                                batch_size=batch_size, max_rows=max_rows, progress=False)
    for v, b, n in zip(VARIANTS, batched, naive):
        assert torch.equal(b.loss, n.loss) and torch.equal(b.correct, n.correct), v
    assert len({float(o.loss.sum()) for o in naive}) == len(VARIANTS)  # every variant matters
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    assert not net.training
