"""Interventions against forward passes written out by hand (tests/unit/interventions/hand.py)
and their refusals."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ablate import models
from ablate._infra.errors import UsageError
from ablate.interventions import Linear, delete, drop, linear, reorder, scale
from tests.helpers import pad_a
from tests.unit.interventions.hand import (
    hand_cifar,
    hand_plain,
    hand_tv_resnet,
    hand_vgg,
    images,
    make,
    run,
)

# ---------------------------------------------------------------------------------------------
# each intervention against the hand-written forward


def test_hand_forwards_match_the_intact_models(vggs):
    """The references themselves: intact, each equals the model's own forward bitwise."""
    x = images(2)
    with torch.no_grad():
        for name, hand in [("resnet20", hand_cifar), ("preact_resnet20", hand_cifar),
                           ("plain20", hand_plain), ("vgg11_bn", hand_vgg), ("vgg11", hand_vgg),
                           ("resnet18", hand_tv_resnet)]:
            model = make(name, vggs)
            assert torch.equal(hand(model, x), model(x)), name


@pytest.mark.parametrize("idx", [1, 3, 6, 8])  # 3 and 6 downsample: the option-A shortcut stays
@pytest.mark.parametrize("name", ["resnet20", "preact_resnet20"])
def test_delete_residual_block_is_post_of_shortcut(name, idx):
    model, x = make(name), images()
    intact = run(model, x)
    with delete(model, [idx]):
        got = run(model, x)
    with torch.no_grad():
        want = hand_cifar(model, x, gains={idx: 0.0})
    assert torch.equal(got, want)
    assert not torch.equal(got, intact)


def test_delete_block_level_downsampling_keeps_option_a_shortcut():
    model = make("resnet20")
    blk = model.layer2[0]
    h = torch.randn(3, 16, 32, 32, dtype=torch.float64)
    with delete(model, 3), torch.no_grad():
        got = model.layer2[0](h)
    assert got.shape == (3, 32, 16, 16)
    want = F.relu(pad_a(h, 32))
    assert torch.equal(got, want)
    assert torch.equal(got[:, :8], torch.zeros_like(got[:, :8]))  # padded channels stay zero
    assert torch.equal(got[:, 8:24], F.relu(h[:, :, ::2, ::2]))
    assert model.layer2[0] is blk


@pytest.mark.parametrize("idx", [0, 2, 5])  # 2 downsamples (projection shortcut)
def test_delete_torchvision_block(idx):
    model, x = make("resnet18"), images(2)
    with delete(model, idx):
        got = run(model, x)
    with torch.no_grad():
        assert torch.equal(got, hand_tv_resnet(model, x, gains={idx: 0.0}))


@pytest.mark.parametrize("deleted", [[0], [3], [17], [1, 7, 13]])
def test_delete_plain20_unit_is_identity(deleted):
    model, x = make("plain20"), images()
    intact = run(model, x)
    with delete(model, deleted):
        got = run(model, x)
    with torch.no_grad():
        assert torch.equal(got, hand_plain(model, x, deleted))
    assert not torch.equal(got, intact)


@pytest.mark.parametrize("name", ["vgg11_bn", "vgg11"])
@pytest.mark.parametrize("deleted", [[3], [7], [3, 5, 6]])
def test_delete_vgg_unit_is_identity(vggs, name, deleted):
    model, x = make(name, vggs), images(2)
    with delete(model, deleted):
        got = run(model, x)
    with torch.no_grad():
        assert torch.equal(got, hand_vgg(model, x, deleted))
        assert not torch.equal(got, model(x))


@pytest.mark.parametrize("factors", [{4: 0.5}, {0: -1.0, 3: 2.5, 8: 0.25}])
def test_scale_multiplies_the_branch(factors):
    model, x = make("resnet20"), images()
    with scale(model, factors):
        got = run(model, x)
    with torch.no_grad():
        assert torch.equal(got, hand_cifar(model, x, gains=factors))


def test_scale_forms_one_factor_and_list():
    model, x = make("preact_resnet20"), images(2)
    with scale(model, 0.75):
        got = run(model, x)
    with torch.no_grad():
        assert torch.equal(got, hand_cifar(model, x, gains=dict.fromkeys(range(9), 0.75)))
    fs = [0.5 + 0.1 * i for i in range(9)]
    with scale(model, fs):
        got = run(model, x)
    with torch.no_grad():
        assert torch.equal(got, hand_cifar(model, x, gains=dict(enumerate(fs))))
    with pytest.raises(UsageError, match="one each"):
        scale(model, [1.0] * 8).__enter__()


def test_scale_torchvision_block():
    model, x = make("resnet18"), images(2)
    with scale(model, {1: 0.3, 4: 1.7}):
        got = run(model, x)
    with torch.no_grad():
        assert torch.equal(got, hand_tv_resnet(model, x, gains={1: 0.3, 4: 1.7}))


@pytest.mark.parametrize("order", [
    [0, 2, 1, 3, 4, 5, 6, 7, 8],      # swap two stage-1 blocks
    [2, 0, 1, 3, 4, 5, 6, 7, 8],      # a cycle within stage 1
    [0, 1, 2, 3, 5, 4, 6, 8, 7],      # swaps in stages 2 and 3, downsampling blocks stay
])
def test_reorder_runs_blocks_in_the_new_order(order):
    model, x = make("resnet20"), images()
    intact = run(model, x)
    with reorder(model, order):
        got = run(model, x)
    with torch.no_grad():
        assert torch.equal(got, hand_cifar(model, x, order=order))
    assert not torch.equal(got, intact)


def test_reorder_identity_permutation_is_intact():
    model, x = make("resnet20"), images(2)
    intact = run(model, x)
    with reorder(model, range(9)):
        assert torch.equal(run(model, x), intact)


def test_drop_survival_zero_deletes_everything_and_one_is_intact():
    model, x = make("resnet20"), images()
    intact = run(model, x)
    with delete(model, range(9)):
        none_left = run(model, x)
    for mode in ("batch", "row"):
        with drop(model, 0.0, mode=mode, generator=torch.Generator().manual_seed(0)):
            assert torch.equal(run(model, x), none_left)
        with drop(model, 1.0, mode=mode, generator=torch.Generator().manual_seed(0)):
            assert torch.equal(run(model, x), intact)


def test_drop_on_a_stochastic_depth_net_in_eval_keeps_branches_unscaled():
    """Kept branches are f_l(x), not p_l * f_l(x): a drop with every gate open is the net with
    no p_l scaling (its train-time forward with all blocks kept), not the test-time net."""
    sd = make("resnet20", stochastic_depth=0.5).eval()
    plain = make("resnet20").eval()  # same seed: same weights, survival 1 everywhere
    plain.load_state_dict(sd.state_dict())
    x = images(2)
    with drop(sd, 1.0 - 1e-12, mode="batch", generator=torch.Generator().manual_seed(0)):
        kept = run(sd, x)  # p < 1 so the gate is drawn; all kept with probability ~1
    assert torch.allclose(kept, run(plain, x))
    assert not torch.allclose(kept, run(sd, x))  # the test-time net scales by p_l
    with drop(sd, 0.0):
        with delete(plain, range(9)):
            assert torch.allclose(run(sd, x), run(plain, x))


def test_drop_plain_units_when_asked(vggs):
    model, x = make("vgg11_bn", vggs), images(2)
    with delete(model, [3, 5, 6, 7]):
        want = run(model, x)
    with drop(model, 0.0, residual_only=False):
        assert torch.equal(run(model, x), want)
    with drop(model, 0.0):  # residual_only: nothing to drop in a VGG
        assert torch.equal(run(model, x), run(make("vgg11_bn", vggs), x))


def test_drop_row_mode_gates_each_sample():
    model = make("resnet20")
    x = images(1).expand(6, -1, -1, -1).contiguous()  # six copies of one image
    with drop(model, 0.5, mode="row", generator=torch.Generator().manual_seed(5)):
        got = run(model, x)
    distinct = {tuple(r.tolist()) for r in got}
    assert len(distinct) > 1  # rows of the same image took different depths
    # reproduce the draws: one uniform per row per block, in forward order
    g = torch.Generator().manual_seed(5)
    gates = {pos: torch.rand(6, generator=g) < 0.5 for pos in range(9)}
    with torch.no_grad():
        want = hand_cifar(model, x, gate_rows=gates)
    assert torch.equal(got, want)
    # the same seed gives the same result; row i equals a single-image run with its own gates
    with drop(model, 0.5, mode="row", generator=torch.Generator().manual_seed(5)):
        assert torch.equal(run(model, x), got)


def test_drop_batch_mode_gates_each_forward_pass():
    model = make("resnet20")
    x = images(1).expand(4, -1, -1, -1).contiguous()
    g_lib, g_hand = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    ps = Linear(0.5)(9)
    with drop(model, linear(0.5), mode="batch", generator=g_lib):
        outs = [run(model, x) for _ in range(6)]
    for got in outs:
        assert all(torch.equal(got[0], r) for r in got)  # one gate for the whole batch
        kept = {pos: bool(torch.rand((), generator=g_hand) < p) for pos, p in enumerate(ps)}
        with torch.no_grad():
            want = hand_cifar(model, x, gains={k: 0.0 for k, v in kept.items() if not v})
        assert torch.equal(got, want)
    assert len({tuple(o[0].tolist()) for o in outs}) > 1  # passes differ


def test_drop_rescale_divides_survivors():
    model, x = make("resnet20"), images(2)
    with drop(model, 0.5, mode="batch", rescale=True, generator=torch.Generator().manual_seed(3)):
        got = run(model, x)
    g = torch.Generator().manual_seed(3)
    kept = [bool(torch.rand((), generator=g) < 0.5) for _ in range(9)]
    with torch.no_grad():
        want = hand_cifar(model, x, gains={i: (2.0 if k else 0.0) for i, k in enumerate(kept)})
    assert torch.equal(got, want)


def test_linear_rule_values():
    rule = linear(0.5)
    assert isinstance(rule, Linear) and rule.p_last == 0.5
    ps = rule(54)
    assert len(ps) == 54
    for k, p in enumerate(ps, start=1):
        assert math.isclose(p, 1 - (k / 54) * 0.5, abs_tol=1e-15)
    assert ps[-1] == 0.5 and math.isclose(ps[26], 0.75, abs_tol=1e-15)
    assert ps == models.linear_survival(54, 0.5)
    assert linear(1.0)(9) == [1.0] * 9
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(UsageError):
            linear(bad)


def test_drop_refuses_bad_arguments():
    model = make("resnet20")
    with pytest.raises(UsageError, match="mode"):
        drop(model, 0.5, mode="layer").__enter__()
    with pytest.raises(UsageError, match="one each"):
        drop(model, [0.5] * 3).__enter__()
    with pytest.raises(UsageError, match="outside"):
        drop(model, 1.5).__enter__()


# ---------------------------------------------------------------------------------------------
# composition


def test_nested_delete_and_scale_on_different_blocks():
    model, x = make("resnet20"), images()
    with delete(model, [2]), scale(model, {5: 0.3, 7: 1.5}):
        got = run(model, x)
    with torch.no_grad():
        assert torch.equal(got, hand_cifar(model, x, gains={2: 0.0, 5: 0.3, 7: 1.5}))


@pytest.mark.parametrize("outer_delete", [True, False])
def test_scale_and_delete_on_one_block_stays_deleted(outer_delete):
    model, x = make("resnet20"), images()
    if outer_delete:
        with delete(model, [4]), scale(model, {4: 3.0}):
            got = run(model, x)
    else:
        with scale(model, {4: 3.0}), delete(model, [4]):
            got = run(model, x)
    with torch.no_grad():
        assert torch.equal(got, hand_cifar(model, x, gains={4: 0.0}))


def test_nested_scales_multiply():
    model, x = make("resnet20"), images(2)
    with scale(model, {1: 0.5}), scale(model, {1: 0.5}):
        got = run(model, x)
    with torch.no_grad():
        assert torch.allclose(got, hand_cifar(model, x, gains={1: 0.25}), rtol=1e-12, atol=0)


def test_nested_deletes_on_plain_units(vggs):
    model, x = make("vgg11_bn", vggs), images(2)
    with delete(model, [3]), delete(model, [6]):
        got = run(model, x)
    with torch.no_grad():
        assert torch.equal(got, hand_vgg(model, x, [3, 6]))


# ---------------------------------------------------------------------------------------------
# refusals


def one_line_usage_error(ctx_factory):
    with pytest.raises(UsageError) as e, ctx_factory():
        pass
    msg = str(e.value)
    assert msg and "\n" not in msg
    return msg


def test_refusals(vggs):
    plain, res = make("plain20"), make("resnet20")
    vgg = make("vgg11_bn", vggs)
    msg = one_line_usage_error(lambda: delete(plain, [6]))
    assert "changes the feature shape" in msg
    assert "changes the feature shape" in one_line_usage_error(lambda: delete(vgg, [4]))
    assert "out of range" in one_line_usage_error(lambda: delete(res, [9]))
    assert "out of range" in one_line_usage_error(lambda: delete(res, [-1]))
    assert "repeat" in one_line_usage_error(lambda: delete(res, [1, 1]))
    assert "not an integer" in one_line_usage_error(lambda: delete(res, [True]))
    cross = [0, 1, 4, 3, 2, 5, 6, 7, 8]  # blocks 2 (stage 1) and 4 (stage 2)
    assert "cannot move" in one_line_usage_error(lambda: reorder(res, cross))
    moves_down = [0, 1, 2, 4, 3, 5, 6, 7, 8]  # block 3 downsamples
    assert "cannot move" in one_line_usage_error(lambda: reorder(res, moves_down))
    assert "permutation" in one_line_usage_error(lambda: reorder(res, [0, 0, 2, 3, 4, 5, 6, 7, 8]))
    assert "plain unit" in one_line_usage_error(lambda: scale(plain, {3: 0.5}))
    assert "plain unit" in one_line_usage_error(lambda: scale(vgg, {3: 0.5}))
    assert "out of range" in one_line_usage_error(lambda: scale(res, {12: 0.5}))


