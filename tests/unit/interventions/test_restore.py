"""Interventions leave the model exactly as they found it, also on an exception; torchvision's
in-place trap; gradients flow through edited models."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ablate import models
from ablate._infra.errors import UsageError
from ablate.interventions import delete, drop, linear, reorder, scale, swapped
from ablate.models.blocks import blocks
from tests.unit.interventions.hand import (
    hand_cifar,
    hand_vgg,
    images,
    make,
    run,
)

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
    with pytest.raises(UsageError, match=r"no module 'layer9\.0'"), swapped(
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

