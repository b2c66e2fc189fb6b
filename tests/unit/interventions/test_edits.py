"""Interventions against forward passes written out by hand, their refusals, and restoration.

The hand-written forwards below use the models' modules directly (conv, bn, linear ...) and
torch.nn.functional; they never go through ablate's Block/chain helpers.
"""

from __future__ import annotations

import contextlib
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ablate import models
from ablate._infra.errors import UsageError
from ablate.interventions import Linear, delete, drop, linear, reorder, scale, swapped
from ablate.models.blocks import blocks
from tests.helpers import pad_a, randomise_bn, small_vgg

# ---------------------------------------------------------------------------------------------
# helpers

@pytest.fixture(scope="module")
def vggs():
    torch.manual_seed(0)
    return {n: small_vgg(n) for n in ("vgg11", "vgg11_bn")}


def make(name: str, vggs=None, **kw) -> nn.Module:
    torch.manual_seed(0)
    if name.startswith("vgg"):
        model = copy.deepcopy(vggs[name])
    elif name in ("resnet18",):
        model = models.create(name, num_classes=10)
    else:
        model = models.create(name, **kw)
    return randomise_bn(model).double().eval()


def images(n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


def cifar_blocks(model: nn.Module) -> list[nn.Module]:
    return [m for layer in (model.layer1, model.layer2, model.layer3) for m in layer]


def hand_cifar(model, x, gains=None, order=None, gate_rows=None):
    """A CIFAR ResNet or pre-activation ResNet by hand.

    ``gains[pos]``: multiply position pos's branch (0: skip it); ``order[pos]``: the block run at
    pos; ``gate_rows[pos]``: a bool per row, False rows skip the branch.
    """
    gains, preact = gains or {}, model.preact
    bl = cifar_blocks(model)
    order = order or list(range(len(bl)))
    h = model.conv1(x) if preact else F.relu(model.bn1(model.conv1(x)))
    for pos, src in enumerate(order):
        m, g = bl[src], gains.get(pos, 1.0)
        s = pad_a(h, m.conv2.out_channels)
        post = (lambda y: y) if preact else F.relu
        if g == 0.0:
            h = post(s)
            continue
        if preact:
            b = m.conv2(F.relu(m.bn2(m.conv1(F.relu(m.bn1(h))))))
        else:
            b = m.bn2(m.conv2(F.relu(m.bn1(m.conv1(h)))))
        b = b * m.survival if m.survival != 1.0 else b
        full = post((b if g == 1.0 else g * b) + s)
        if gate_rows is not None and pos in gate_rows:
            keep = gate_rows[pos].view(-1, 1, 1, 1)
            full = torch.where(keep, full, post(s))
        h = full
    if preact:
        h = F.relu(model.bn(h))
    return model.linear(F.avg_pool2d(h, 8).flatten(1))


def hand_tv_resnet(model, x, gains=None):
    gains = gains or {}
    h = model.maxpool(F.relu(model.bn1(model.conv1(x))))
    bl = [m for layer in (model.layer1, model.layer2, model.layer3, model.layer4) for m in layer]
    for pos, m in enumerate(bl):
        g = gains.get(pos, 1.0)
        s = m.downsample(h) if m.downsample is not None else h
        if g == 0.0:
            h = F.relu(s)
            continue
        b = m.bn2(m.conv2(F.relu(m.bn1(m.conv1(h)))))
        h = F.relu((b if g == 1.0 else g * b) + s)
    return model.fc(torch.flatten(model.avgpool(h), 1))


def hand_plain(model, x, deleted=()):
    h = F.relu(model.bn1(model.conv1(x)))
    u = 0
    for m in cifar_blocks(model):
        for conv, bn in ((m.conv1, m.bn1), (m.conv2, m.bn2)):
            if u not in deleted:
                h = F.relu(bn(conv(h)))
            u += 1
    return model.linear(F.avg_pool2d(h, 8).flatten(1))


def hand_vgg(model, x, deleted=()):
    h, u, skip = x, 0, False
    for m in model.features:
        if isinstance(m, nn.Conv2d):
            skip = u in deleted
            u += 1
        if isinstance(m, nn.MaxPool2d):
            skip = False
        if not skip:
            h = F.relu(h) if isinstance(m, nn.ReLU) else m(h)
    return model.classifier(torch.flatten(model.avgpool(h), 1))


def run(model, x):
    with torch.no_grad():
        return model(x)


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


# ---------------------------------------------------------------------------------------------
# restoration


def snapshot(model, x):
    sd = model.state_dict()
    return {
        "keys": list(sd),
        "tensors": {k: v.clone() for k, v in sd.items()},
        "dtypes": {k: v.dtype for k, v in sd.items()},
        "modules": {k: id(m) for k, m in model.named_modules()},
        "training": {k: m.training for k, m in model.named_modules()},
        "out": run(model, x),
    }


def assert_restored(model, snap, x):
    sd = model.state_dict()
    assert list(sd) == snap["keys"]
    assert {k: v.dtype for k, v in sd.items()} == snap["dtypes"]
    for k, v in sd.items():
        assert torch.equal(v, snap["tensors"][k]), k
    assert {k: id(m) for k, m in model.named_modules()} == snap["modules"]
    assert {k: m.training for k, m in model.named_modules()} == snap["training"]
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
        assert not m._backward_hooks and not m._backward_pre_hooks
        assert not getattr(m, "is_intervention", False)
    assert not nn.modules.module._global_forward_hooks
    assert not nn.modules.module._global_forward_pre_hooks
    assert torch.equal(run(model, x), snap["out"])


CONTEXTS = {
    "delete": lambda m: delete(m, [1, 4]),
    "delete_downsampling": lambda m: delete(m, 3),
    "scale": lambda m: scale(m, {2: 0.5, 6: 2.0}),
    "scale_all": lambda m: scale(m, 0.9),
    "reorder": lambda m: reorder(m, [1, 0, 2, 3, 5, 4, 6, 7, 8]),
    "drop_row": lambda m: drop(m, 0.5, generator=torch.Generator().manual_seed(0)),
    "drop_batch": lambda m: drop(m, linear(0.5), mode="batch"),
}


def _nested(m):
    stack = contextlib.ExitStack()
    stack.enter_context(delete(m, [2]))
    stack.enter_context(scale(m, {2: 4.0, 7: 0.5}))
    stack.enter_context(reorder(m, [0, 1, 2, 3, 5, 4, 6, 7, 8]))
    return stack


CONTEXTS["nested"] = _nested


@pytest.mark.parametrize("raise_inside", [False, True])
@pytest.mark.parametrize("ctx", sorted(CONTEXTS))
def test_restoration_resnet20(ctx, raise_inside):
    model, x = make("resnet20"), images(2)
    snap = snapshot(model, x)
    if raise_inside:
        with pytest.raises(KeyError, match="boom"), CONTEXTS[ctx](model):
            run(model, x)
            raise KeyError("boom")
    else:
        with CONTEXTS[ctx](model):
            assert not torch.equal(run(model, x), snap["out"]) or ctx.startswith("drop")
            assert all(not m._forward_hooks and not m._forward_pre_hooks
                       for m in model.modules())  # module swaps, not hooks
    assert_restored(model, snap, x)


@pytest.mark.parametrize("raise_inside", [False, True])
@pytest.mark.parametrize("name,ctx", [
    ("plain20", lambda m: delete(m, [0, 7, 17])),
    ("vgg11_bn", lambda m: delete(m, [3, 7])),
    ("vgg11", lambda m: delete(m, [5])),
    ("vgg11_bn", lambda m: drop(m, 0.5, residual_only=False)),
    ("resnet18", lambda m: delete(m, [2, 3])),
    ("resnet18", lambda m: reorder(m, [1, 0, 2, 3, 4, 5, 6, 7])),
    ("preact_resnet20", lambda m: scale(m, {3: 0.0, 4: 0.5})),
])
def test_restoration_other_models(vggs, name, ctx, raise_inside):
    model, x = make(name, vggs), images(2)
    snap = snapshot(model, x)
    if raise_inside:
        with pytest.raises(RuntimeError, match="boom"), ctx(model):
            run(model, x)
            raise RuntimeError("boom")
    else:
        with ctx(model):
            run(model, x)
    assert_restored(model, snap, x)


def test_refused_intervention_leaves_the_model_alone():
    model, x = make("plain20"), images(2)
    snap = snapshot(model, x)
    with pytest.raises(UsageError), delete(model, [1, 6]):  # 6 is refused after 1 is fine
        pass
    assert_restored(model, snap, x)


def test_swapped_restores_a_partial_swap():
    model, x = make("resnet20"), images(2)
    snap = snapshot(model, x)
    with pytest.raises(AttributeError), swapped(
        model, {"layer1.0": nn.Identity(), "layer9.0": nn.Identity()}
    ):
        pass
    assert_restored(model, snap, x)


def test_bn_statistics_do_not_move_in_eval():
    model, x = make("resnet20"), images()
    before = {k: v.clone() for k, v in model.named_buffers()}
    for ctx in CONTEXTS.values():
        with ctx(model):
            model(x)  # with autograd, as a user would
            run(model, x)
    for k, v in model.named_buffers():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("train", [True, False])
def test_training_flag_unchanged(train, vggs):
    for model in (make("resnet20"), make("vgg11_bn", vggs)):
        model.train(train)
        flags = {k: m.training for k, m in model.named_modules()}
        originals = dict(model.named_modules())
        ctx = delete(model, [3]) if isinstance(model, models.CifarResNet) else delete(model, [5])
        with ctx:
            assert model.training is train
            for k, m in originals.items():  # every original module, wherever it now sits
                assert m.training == flags[k], k
        assert {k: m.training for k, m in model.named_modules()} == flags


# ---------------------------------------------------------------------------------------------
# the torchvision in-place trap


def test_torchvision_inplace_trap_and_safe_block_functions():
    model, x = make("resnet18"), images(2)
    block = model.layer1[1]
    calls, saved = [], []
    h_relu = block.relu.register_forward_hook(lambda m, i, o: calls.append(o.shape))
    h_bn2 = block.bn2.register_forward_hook(lambda m, i, o: saved.append((o, o.clone())))
    inputs = []
    h_in = block.register_forward_pre_hook(lambda m, a: inputs.append(a[0].clone()))
    try:
        out = run(model, x)
    finally:
        for h in (h_relu, h_bn2, h_in):
            h.remove()
    # the trap: one ReLU module is called twice per forward ...
    assert len(calls) == 2
    # ... and bn2's output is overwritten in place by "out += identity" and the second ReLU
    kept, copied = saved[0]
    assert not torch.equal(kept, copied)
    assert torch.equal(kept, F.relu(copied + inputs[0]))
    # blocks() reads the same block without the trap: its pieces are fresh tensors
    b = blocks(model)[1]
    assert b.module is block
    h = inputs[0]
    with torch.no_grad():
        r, s = b.residual(h), b.shortcut(h)
        r0, s0 = r.clone(), s.clone()
        assert torch.equal(r, copied)  # the residual is bn2's output before the in-place add
        assert torch.equal(b.post(r + s), block(h))
        model(x)
        block(h)
        b.unit(h)
        model(x)
    assert torch.equal(r, r0) and torch.equal(s, s0)
    assert torch.equal(run(model, x), out)


# ---------------------------------------------------------------------------------------------
# autograd


@pytest.mark.parametrize("name", ["vgg11", "vgg11_bn"])
def test_backward_through_deleted_vgg_unit(vggs, name):
    model = make(name, vggs)
    x = images(2).requires_grad_(True)
    with delete(model, [3, 6]):
        model(x).square().sum().backward()
    g_lib = x.grad.clone()
    grads_lib = {k: (p.grad.clone() if p.grad is not None else None)
                 for k, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    x.grad = None
    hand_vgg(model, x, [3, 6]).square().sum().backward()
    assert torch.allclose(g_lib, x.grad, rtol=1e-10, atol=1e-14)
    gone = {"vgg11": ("features.8.", "features.16."),  # units 3 and 6: conv (+ BN)
            "vgg11_bn": ("features.11.", "features.12.", "features.22.", "features.23.")}[name]
    for k, p in model.named_parameters():
        if k.startswith(gone):
            assert grads_lib[k] is None and p.grad is None, k  # deleted: no gradient at all
        else:
            assert torch.allclose(grads_lib[k], p.grad, rtol=1e-10, atol=1e-14), k


def test_backward_through_delete_scale_and_drop():
    model = make("resnet20")
    x = images(2).requires_grad_(True)
    with delete(model, [4]), scale(model, {1: 0.5}):
        model(x).sum().backward()
    assert model.layer2[1].conv1.weight.grad is None  # the deleted branch never ran
    assert model.layer1[1].conv1.weight.grad is not None
    g_lib = x.grad.clone()
    x.grad = None
    model.zero_grad(set_to_none=True)
    hand_cifar(model, x, gains={4: 0.0, 1: 0.5}).sum().backward()
    assert torch.allclose(g_lib, x.grad, rtol=1e-10, atol=1e-14)
    model.zero_grad(set_to_none=True)
    with drop(model, 0.5, mode="row", generator=torch.Generator().manual_seed(0)):
        out = model(x)
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
