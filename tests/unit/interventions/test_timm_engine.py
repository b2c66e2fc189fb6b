"""timm ViTs through the batched engine, layers and branches: bitwise the interventions."""

from __future__ import annotations

import pytest
import timm
import torch

from ablate.interventions import delete, scale
from ablate.interventions.variants import (
    Variant,
    evaluate_naive,
    evaluate_variants,
    forward_variants,
    intact_pass,
)
from ablate.models.blocks import blocks
from ablate.models.transformers import TimmUnit
from tests.unit.interventions.test_vit_branches import MEAN, STD, data

DEPTH = 3


def vit(**kw):
    """A tiny timm ViT with LayerScale and drop-path (identity in eval), random weights."""
    torch.manual_seed(0)
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
                          embed_dim=32, depth=DEPTH, num_heads=2, num_classes=10,
                          init_values=0.5, drop_path_rate=0.1, **kw).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m.double()


@pytest.mark.parametrize("granularity", ["block", "branch"])
@pytest.mark.parametrize("pool", ["token", "avg"])
def test_intact_chain_is_the_models_forward(granularity, pool):
    m = vit(global_pool=pool)
    units = blocks(m, granularity)
    assert all(isinstance(b, TimmUnit) for b in units)
    assert len(units) == DEPTH * (2 if granularity == "branch" else 1)
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        inputs, logits = intact_pass(m, x, granularity)
        assert len(inputs) == len(units) and torch.equal(logits, m(x))


@pytest.mark.parametrize("granularity", ["block", "branch"])
def test_logits_bitwise_the_interventions(granularity):
    m = vit()
    n = DEPTH * (2 if granularity == "branch" else 1)
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    dels = [Variant.deleting(i) for i in range(n)]
    got = forward_variants(m, x, [*dels, Variant.scaling({1: 0.5, n - 1: -1.0})],
                           granularity=granularity)
    for i, lg in enumerate(got[:n]):
        with delete(m, [i], granularity=granularity), torch.no_grad():
            assert torch.equal(lg, m(x)), i
    with scale(m, {1: 0.5, n - 1: -1.0}, granularity=granularity), torch.no_grad():
        assert torch.equal(got[n], m(x))
    assert len({lg.sum().item() for lg in got}) == len(got)  # every condition does something


@pytest.mark.parametrize("batch_size,max_rows", [(2, None), (5, 10)])
def test_evaluate_bitwise_the_naive_loop(batch_size, max_rows):
    m = vit()
    images, labels = data()
    variants = [Variant.deleting(i) for i in range(DEPTH)] + [
        Variant(), Variant.reordered([2, 0, 1]), Variant.deleting([0, 2])]
    kw = {"mean": MEAN, "std": STD, "batch_size": batch_size}
    naive = evaluate_naive(m, images, labels, variants, **kw)
    got = evaluate_variants(m, images, labels, variants, max_rows=max_rows, progress=False, **kw)
    for v, a, b in zip(variants, got, naive):
        assert torch.equal(a.loss, b.loss) and torch.equal(a.correct, b.correct), v


def test_both_branches_deleted_is_the_layer_deleted():
    m = vit()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    both = forward_variants(m, x, [Variant.deleting([2, 3])], granularity="branch")[0]
    assert torch.equal(both, forward_variants(m, x, [Variant.deleting(1)])[0])


def test_a_timm_vit_with_its_own_forward_is_refused():
    from ablate._infra.errors import UsageError

    class Pooled(type(vit())):  # as a timm subclass that changes the forward would
        def forward_features(self, x):
            return super().forward_features(x) * 2

    Pooled.__module__ = "timm.models.pooled"

    m = vit()
    m.__class__ = Pooled
    with pytest.raises(UsageError, match="changes timm's VisionTransformer forward"):
        forward_variants(m, torch.randn(1, 3, 32, 32, dtype=torch.float64), [Variant()])


def test_delete_block_rows_for_timm_branches_are_the_interventions():
    """analyses.deletion (delete_block --branches) batches a timm ViT's branches: its rows equal
    one evaluation per branch under ``delete``."""
    from ablate.data import Dataset
    from ablate.measures import evaluate
    from ablate.models.checkpoint import Loaded
    from analyses import deletion

    m = vit()
    images, labels = data(6)
    ds = Dataset(images, labels, tuple("abcdefghij"), "cifar10", "test", "test")
    loaded = Loaded(m, "timm-vit", "timm-vit", None, None, "init", MEAN, STD, "cifar10")
    df = deletion.run(loaded, ds, branches=True, batch_size=4, progress=False)
    rows = df[df["granularity"] == "branch"]
    assert len(rows) == 2 * DEPTH
    for i, r in enumerate(rows.itertuples()):
        with delete(m, [i], granularity="branch"):
            o = evaluate(m, images, labels, mean=MEAN, std=STD, batch_size=4, progress=False)
        assert r.errors == o.errors and r.loss == o.loss_interval()[0], i
