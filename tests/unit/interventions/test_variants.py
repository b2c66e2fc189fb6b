"""The batched lesion engine against the naive loop (exactly), and the measures."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

from ablate import models
from ablate._infra.errors import UsageError
from ablate.interventions.variants import (
    Variant,
    applied,
    evaluate_naive,
    evaluate_variants,
    forward_variants,
)
from ablate.measures import Outcome, mcnemar_exact, mean_interval, outcome, wilson_interval
from tests.helpers import randomise_bn, small_vgg

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def make(name: str, **kw) -> nn.Module:
    torch.manual_seed(0)
    if name.startswith("vgg"):
        model = small_vgg(name)
    else:
        model = models.create(name, **kw)
    return randomise_bn(model).double().eval()


def data(n: int = 7, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8),
            torch.randint(0, 10, (n,), generator=g))


def labels_half_right(model, images):
    """Labels the intact model gets right on even rows: correctness varies across variants."""
    x = ((images.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1))
         / torch.tensor(STD).view(1, 3, 1, 1)).double()
    with torch.no_grad():
        pred = model(x).argmax(-1)
    y = pred.clone()
    y[1::2] = (pred[1::2] + 1) % 10
    return y


def assert_same(batched: list[Outcome], naive: list[Outcome], variants) -> None:
    assert len(batched) == len(naive) == len(variants)
    for v, b, n in zip(variants, batched, naive):
        assert b.correct.dtype == torch.bool and b.loss.dtype == torch.float32
        assert torch.equal(b.correct, n.correct), v
        assert torch.equal(b.loss, n.loss), v


def compare(model, variants, *, n=7, batch_size=3, max_rows=(None, 4)):
    images, _ = data(n)
    labels = labels_half_right(model, images)
    naive = evaluate_naive(model, images, labels, variants, mean=MEAN, std=STD,
                           batch_size=batch_size)
    for rows in max_rows:
        batched = evaluate_variants(model, images, labels, variants, mean=MEAN, std=STD,
                                    batch_size=batch_size, max_rows=rows, progress=False)
        assert_same(batched, naive, variants)
    return naive


RESNET20_ORDERS = [(0, 2, 1, 3, 4, 5, 6, 7, 8), (1, 2, 0, 3, 5, 4, 6, 8, 7)]


def test_resnet20_all_variant_kinds():
    model = make("resnet20")
    variants = (
        [Variant()]
        + [Variant.deleting(i) for i in range(9)]
        + [Variant.deleting([0, 4]), Variant.deleting([3, 6, 8]), Variant.deleting(range(9))]
        + [Variant.scaling({2: 0.5}), Variant.scaling({0: -1.0, 8: 2.0}),
           Variant.scaling({3: 0.0, 5: 1.0, 7: 1.25})]
        + [Variant.reordered(o) for o in RESNET20_ORDERS]
        + [Variant(gains=((1, 0.5),), order=RESNET20_ORDERS[0]),
           Variant(gains=((0, 0.5), (7, 0.0)), order=RESNET20_ORDERS[1]),
           Variant(gains=((1, 0.0),), order=RESNET20_ORDERS[0])]
    )
    naive = compare(model, variants, n=5, batch_size=2)  # batches of 2, 2, 1
    assert naive[0].errors == 2  # odd rows are wrong by construction, even rows right
    # gains act on positions: position 1 runs block 2 after the swap, so deleting it there is
    # deleting block 2
    assert torch.equal(naive[-1].loss, naive[3].loss)
    # otherwise the variants really differ from the intact network and from one another
    assert len({tuple(o.loss.tolist()) for o in naive[:-1]}) == len(variants) - 1


def test_plain20_shape_preserving_single_deletions():
    model = make("plain20")
    keep = [i for i in range(18) if i not in (6, 12)]
    variants = [Variant.deleting(i) for i in keep] + [Variant.deleting([0, 5, 17]), Variant()]
    compare(model, variants, n=5, max_rows=(None, 6))


def test_preact_resnet20_deletions_and_scalings():
    model = make("preact_resnet20")
    variants = ([Variant.deleting(i) for i in range(9)]
                + [Variant.scaling({4: 0.3, 6: 1.5}), Variant.deleting([2, 3])])
    compare(model, variants, n=5, max_rows=(None, 5))


def test_vgg11_bn_deletions():
    model = make("vgg11_bn")
    variants = [Variant.deleting(i) for i in (3, 5, 6, 7)] + [Variant.deleting([3, 5, 6, 7])]
    compare(model, variants, n=3, batch_size=2, max_rows=(None, 2))


SD_VARIANTS = [Variant(), Variant.deleting(2), Variant.scaling({5: 0.5}), Variant.deleting([0, 8]),
               Variant.reordered(RESNET20_ORDERS[1]), Variant.deleting(7)]


def test_stochastic_depth_model_in_eval():
    model = make("resnet20", stochastic_depth=0.5)
    naive = compare(model, SD_VARIANTS, n=5, max_rows=(None, 3))
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    got = forward_variants(model, x, SD_VARIANTS)
    for v, lg in zip(SD_VARIANTS, got):
        with applied(model, v), torch.no_grad():
            assert torch.allclose(lg, model(x), rtol=1e-13, atol=1e-13), v
    with torch.no_grad():
        no_sd = copy.deepcopy(model)
        for m in no_sd.modules():
            if hasattr(m, "survival"):
                m.survival = 1.0
        assert not torch.allclose(got[0], no_sd(x))  # the survival scaling is in effect
        assert torch.equal(got[0], model(x))  # the intact stream is the model's own forward
    assert len({tuple(o.loss.tolist()) for o in naive}) == len(SD_VARIANTS)


def test_forward_variants_logits_bitwise_on_stochastic_depth_model():
    model = make("resnet20", stochastic_depth=0.5)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    got = forward_variants(model, x, SD_VARIANTS)
    for v, lg in zip(SD_VARIANTS, got):
        with applied(model, v), torch.no_grad():
            assert torch.equal(lg, model(x)), v


def test_evaluate_variants_leaves_the_model_as_it_was():
    model = make("resnet20").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images, labels = data(4)
    evaluate_variants(model, images, labels, [Variant.deleting(1), Variant.reordered(
        RESNET20_ORDERS[0])], mean=MEAN, std=STD, batch_size=4, progress=False)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_variant_helpers():
    assert Variant.deleting([5, 2]).gains == ((2, 0.0), (5, 0.0))
    v = Variant(gains=((3, 0.0),), order=(0, 2, 1, 3))
    assert v.first_change() == 1 and v.spec(1) == (2, 1.0) and v.spec(3) == (3, 0.0)
    assert Variant().first_change() is None
    assert Variant.scaling({4: 1.0}).first_change() is None  # gain 1 is intact
    assert Variant.swapping(1, 2, 4).order == (0, 2, 1, 3)


def test_out_of_range_variant_is_refused_like_the_naive_loop():
    model = make("resnet20")
    images, labels = data(3)
    kw = {"mean": MEAN, "std": STD, "batch_size": 3}
    with pytest.raises(UsageError):
        evaluate_naive(model, images, labels, [Variant.deleting(9)], **kw)
    with pytest.raises(UsageError):
        evaluate_variants(model, images, labels, [Variant.deleting(9)], progress=False, **kw)


@pytest.mark.parametrize("name,variant", [
    ("plain20", Variant.deleting(6)),
    ("resnet20", Variant.reordered((0, 1, 2, 4, 3, 5, 6, 7, 8))),
])
def test_invalid_variant_is_a_usage_error(name, variant):
    model = make(name)
    images, labels = data(2)
    kw = {"mean": MEAN, "std": STD, "batch_size": 2}
    with pytest.raises(UsageError):
        evaluate_naive(model, images, labels, [variant], **kw)
    with pytest.raises(UsageError):
        evaluate_variants(model, images, labels, [variant], progress=False, **kw)


# ---------------------------------------------------------------------------------------------
# measures

Z95 = 1.959963984540054


def wilson_by_hand(k: int, n: int, z: float) -> tuple[float, float]:
    c = k + z * z / 2
    half = z * math.sqrt(k * (n - k) / n + z * z / 4)
    return ((c - half) / (n + z * z), (c + half) / (n + z * z))


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(0, 10)
    assert lo == pytest.approx(0.0, abs=1e-15)
    assert hi == pytest.approx(Z95**2 / (10 + Z95**2), abs=1e-12)
    assert hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson_interval(10, 10)
    assert hi == pytest.approx(1.0, abs=1e-15)
    assert lo == pytest.approx(10 / (10 + Z95**2), abs=1e-12)
    lo, hi = wilson_interval(5, 10)
    assert (lo, hi) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    assert lo + hi == pytest.approx(1.0, abs=1e-12)  # symmetric about one half
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


@pytest.mark.parametrize("n", [1, 13, 500])
@pytest.mark.parametrize("conf", [0.9, 0.95, 0.99])
def test_wilson_interval_against_the_hand_formula(n, conf):
    z = stats.norm.ppf(0.5 + conf / 2)
    for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
        lo, hi = wilson_interval(k, n, conf)
        hlo, hhi = wilson_by_hand(k, n, z)
        assert lo == pytest.approx(max(0.0, hlo), abs=1e-12)
        assert hi == pytest.approx(min(1.0, hhi), abs=1e-12)
        assert 0.0 <= lo <= hi <= 1.0
        if 0 < k < n:
            assert lo < k / n < hi


def test_wilson_interval_contains_the_estimate_at_the_extremes():
    for n in (1, 13, 500):
        for conf in (0.9, 0.95, 0.99):
            lo, hi = wilson_interval(0, n, conf)
            assert lo <= 0.0, (n, conf, lo)
            lo, hi = wilson_interval(n, n, conf)
            assert hi >= 1.0, (n, conf, hi)


def test_mcnemar_exact():
    a = torch.tensor([True, False, True, True, False])
    assert mcnemar_exact(a, a.clone()) == 1.0
    # 10 images only A gets right, 2 only B, 6 both, 4 neither
    a = torch.tensor([True] * 10 + [False] * 2 + [True] * 6 + [False] * 4)
    b = torch.tensor([False] * 10 + [True] * 2 + [True] * 6 + [False] * 4)
    p = mcnemar_exact(a, b)
    assert p == pytest.approx(2 * (1 + 12 + 66) / 2**12, rel=1e-12)  # two-sided binomial tail
    assert p == pytest.approx(stats.binomtest(10, 12, 0.5).pvalue, rel=1e-12)
    assert mcnemar_exact(b, a) == pytest.approx(p, rel=1e-12)
    only = torch.tensor([True] * 5)
    assert mcnemar_exact(only, ~only) == pytest.approx(2 / 32, rel=1e-12)
    assert mcnemar_exact(a.int(), b.int()) == pytest.approx(p, rel=1e-12)  # any 0/1 dtype


def test_outcome_and_error():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]],
                          dtype=torch.float64)
    labels = torch.tensor([0, 2, 2, 1])
    o = outcome(logits, labels)
    assert o.correct.tolist() == [True, False, True, False]
    assert torch.equal(o.loss, F.cross_entropy(logits.float(), labels, reduction="none"))
    assert o.loss.dtype == torch.float32
    assert (o.n, o.errors, o.error) == (4, 2, 0.5)
    assert o.error_interval() == wilson_interval(2, 4)
    both = Outcome.cat([o, Outcome(torch.tensor([False] * 4), torch.zeros(4))])
    assert (both.n, both.errors, both.error) == (8, 6, 0.75)
    m, lo, hi = o.loss_interval()
    assert m == pytest.approx(float(o.loss.double().mean())) and lo < m < hi


def test_mean_interval():
    v = [1.0, 2.0, 3.0, 4.0]
    m, lo, hi = mean_interval(v)
    half = stats.t.ppf(0.975, 3) * float(torch.tensor(v).std()) / 2
    assert (m, lo, hi) == (2.5, pytest.approx(2.5 - half), pytest.approx(2.5 + half))
    m, lo, hi = mean_interval([7.0])
    assert m == 7.0 and math.isnan(lo) and math.isnan(hi)


# ---------------------------------------------------------------------------------------------
# CPU execution: worker threads (bitwise), channels-last (opt-in, not bitwise)


@pytest.mark.parametrize("name", ["resnet20", "plain20", "preact_resnet20"])
@pytest.mark.parametrize("workers,max_rows", [(1, None), (2, None), (3, None), (2, 4), (2, 100),
                                               (1, 100)])
def test_workers_bitwise_the_naive_loop_in_float32(name, workers, max_rows):
    """One batch per call (the CPU default) runs every kernel at the naive loop's shapes: bitwise
    in float32 whatever the threads. Stacking variants (``max_rows`` above the batch) may pick
    other float32 kernels: close, not bitwise (float64 tests above are bitwise either way)."""
    torch.manual_seed(0)
    model = randomise_bn(models.create(name)).eval()
    units = 18 if name == "plain20" else 9
    keep = [i for i in range(units) if name != "plain20" or i not in (6, 12)]
    variants = [Variant.deleting(i) for i in keep] + [Variant.deleting([0, keep[-1]]), Variant()]
    if name != "plain20":
        variants += [Variant.scaling({2: 0.5}), Variant.reordered(RESNET20_ORDERS[1])]
    images, _ = data(9)
    labels = labels_half_right(model.double(), images)
    model.float()
    kw = {"mean": MEAN, "std": STD, "batch_size": 4}
    naive = evaluate_naive(model, images, labels, variants, **kw)
    got = evaluate_variants(model, images, labels, variants, workers=workers, max_rows=max_rows,
                            progress=False, **kw)
    if max_rows in (None, 4):
        assert_same(got, naive, variants)
    else:
        for a, b in zip(got, naive):
            torch.testing.assert_close(a.loss, b.loss, rtol=1e-4, atol=1e-5)


def test_channels_last_is_opt_in_close_and_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    model = randomise_bn(models.create("resnet20")).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images, labels = data(6)
    variants = [Variant.deleting(i) for i in range(9)]
    kw = {"mean": MEAN, "std": STD, "batch_size": 3, "progress": False}
    exact = evaluate_variants(model, images, labels, variants, **kw)
    cl = evaluate_variants(model, images, labels, variants, channels_last=True, **kw)
    for a, b in zip(cl, exact):
        torch.testing.assert_close(a.loss, b.loss, rtol=1e-4, atol=1e-5)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]) and v.is_contiguous(), k


def test_workers_and_variants_are_checked_before_anything_runs():
    model = make("resnet20")
    images, labels = data(2)
    kw = {"mean": MEAN, "std": STD, "batch_size": 2, "progress": False}
    for bad in (0, -1, True, 1.5):
        with pytest.raises(UsageError, match="workers"):
            evaluate_variants(model, images, labels, [Variant()], workers=bad, **kw)
    with pytest.raises(UsageError):
        evaluate_variants(model, images, labels, [Variant(), Variant.deleting(99)], workers=2,
                          **kw)


@pytest.mark.parametrize("name", ["resnet20", "preact_resnet20"])
def test_in_place_unit_path_is_the_blocks_forward(name):
    """Without autograd, CIFAR blocks run with their ReLUs and addition in place (fewer
    allocations): bitwise the block's own forward; with autograd, the block's own code."""
    from ablate.models.blocks import blocks

    torch.manual_seed(0)
    model = randomise_bn(models.create(name)).eval()
    x = torch.randn(3, 16, 32, 32)
    for b in blocks(model)[:4]:
        with torch.inference_mode():
            got = b.unit(x)
            assert torch.equal(got, b.module(x))
            assert torch.equal(b.apply_gains(torch.cat([x, x]), [1.0, 0.5], [3, 3])[:3], got)
        xg = x.clone().requires_grad_()
        y = b.unit(xg)
        y.sum().backward()
        assert xg.grad is not None and torch.equal(y.detach(), got)
        x = got
