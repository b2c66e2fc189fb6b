"""The model registry: parameter counts, checkpoint key layout, names, stochastic depth."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ablate import models
from ablate._infra.errors import UsageError
from ablate.models.cifar_resnet import BasicBlock, PlainBlock, PreActBlock, ShortcutA
from tests.helpers import pad_a, randomise_bn

# He et al. 2015, Table 6 / akamaster/pytorch_resnet_cifar10 README (option A shortcuts).
PARAMS_A = {
    20: 269_722,
    32: 464_154,
    44: 658_586,
    56: 853_018,
    110: 1_727_962,
    1202: 19_421_274,
}

def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("depth", sorted(PARAMS_A))
def test_resnet_parameter_counts_option_a(depth):
    model = models.create(f"resnet{depth}")
    assert n_params(model) == PARAMS_A[depth]
    assert isinstance(model, models.CifarResNet)
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == (depth - 2) // 2  # 3 stages of n two-layer blocks: 6n + 2 layers


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_plain_twin_has_the_resnets_parameter_count(depth):
    plain = models.create(f"plain{depth}")
    assert n_params(plain) == PARAMS_A[depth]
    assert not any(isinstance(m, (BasicBlock, ShortcutA)) for m in plain.modules())
    assert sum(isinstance(m, PlainBlock) for m in plain.modules()) == (depth - 2) // 2


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_preact_variants_build_and_run(depth):
    model = models.create(f"preact_resnet{depth}").eval()
    assert sum(isinstance(m, PreActBlock) for m in model.modules()) == (depth - 2) // 2
    # Pre-activation moves BN before the convolution: the same convs; the stem's BN (16 ch, 32
    # params) goes, a final BN (64 ch, 128) comes, and the first blocks of stages 2 and 3
    # normalise their input width (16, 32 ch instead of 32, 64: -32 and -64): net change 0.
    assert n_params(model) == PARAMS_A[depth]
    if depth > 32:
        return
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_preact_names_stop_at_110():
    names = models.names()
    assert "resnet1202" in names
    assert "preact_resnet1202" not in names and "plain1202" not in names


@pytest.mark.parametrize("depth", [20, 56])
def test_option_b_adds_exactly_the_projection_params(depth):
    a = models.create(f"resnet{depth}", option="A")
    b = models.create(f"resnet{depth}", option="B")
    # Two projections (1x1 conv, no bias, + BN with weight and bias): 16->32 and 32->64.
    extra = (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    assert n_params(b) - n_params(a) == extra
    proj = [k for k in b.state_dict() if ".shortcut." in k]
    assert proj and all(k.startswith(("layer2.0.shortcut.", "layer3.0.shortcut.")) for k in proj)


def test_bad_option_is_refused():
    with pytest.raises(ValueError, match="option"):
        models.create("resnet20", option="C")


def _akamaster_keys(n: int, *, preact: bool = False) -> list[str]:
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = ["conv1.weight"]
    if not preact:
        keys += [f"bn1.{s}" for s in bn]
    for stage in (1, 2, 3):
        for i in range(n):
            p = f"layer{stage}.{i}"
            if preact:
                keys += [f"{p}.bn1.{s}" for s in bn] + [f"{p}.conv1.weight"]
                keys += [f"{p}.bn2.{s}" for s in bn] + [f"{p}.conv2.weight"]
            else:
                keys += [f"{p}.conv1.weight"] + [f"{p}.bn1.{s}" for s in bn]
                keys += [f"{p}.conv2.weight"] + [f"{p}.bn2.{s}" for s in bn]
    if preact:
        keys += [f"bn.{s}" for s in bn]
    return [*keys, "linear.weight", "linear.bias"]


@pytest.mark.parametrize("name,n", [("resnet20", 3), ("resnet32", 5), ("plain20", 3)])
def test_state_dict_keys_follow_the_akamaster_layout(name, n):
    sd = models.create(name).state_dict()
    assert list(sd) == _akamaster_keys(n)
    assert not any("shortcut" in k for k in sd)
    assert sd["conv1.weight"].shape == (16, 3, 3, 3)
    assert sd["layer2.0.conv1.weight"].shape == (32, 16, 3, 3)
    assert sd["layer3.0.conv2.weight"].shape == (64, 64, 3, 3)
    assert sd["linear.weight"].shape == (10, 64)


def test_preact_state_dict_keys():
    assert list(models.create("preact_resnet20").state_dict()) == _akamaster_keys(3, preact=True)


def test_num_classes_reaches_the_head():
    assert models.create("resnet20", num_classes=100).linear.out_features == 100


def test_torchvision_names_build_with_ten_classes():
    import torchvision

    r18 = models.create("resnet18", num_classes=10)
    assert isinstance(r18, torchvision.models.ResNet)
    assert r18.fc.out_features == 10
    assert n_params(r18) == 11_181_642  # 11,689,512 ImageNet params - 1000-class head + 10-class
    vgg = models.create("vgg11_bn", num_classes=10)
    assert isinstance(vgg, torchvision.models.VGG)
    assert vgg.classifier[-1].out_features == 10
    assert sum(isinstance(m, nn.BatchNorm2d) for m in vgg.features) == 8
    assert not models.is_cifar("resnet18") and not models.is_cifar("vgg11_bn")
    assert models.is_cifar("resnet20") and models.is_cifar("plain110")


@pytest.mark.parametrize("typo,expect", [("resnet2o", "resnet20"), ("plian56", "plain56"),
                                         ("vgg11bn", "vgg11_bn")])
def test_unknown_name_suggests_a_close_match(typo, expect):
    with pytest.raises(UsageError) as e:
        models.create(typo)
    msg = str(e.value)
    assert typo in msg and expect in msg and "did you mean" in msg
    assert "\n" not in msg


def test_unknown_name_without_a_close_match_points_to_the_list():
    with pytest.raises(UsageError, match="--list-models"):
        models.create("transformer")


def test_stochastic_depth_needs_residual_blocks():
    with pytest.raises(UsageError):
        models.create("plain20", stochastic_depth=0.5)


def test_linear_survival_rule():
    ps = models.linear_survival(54, 0.5)
    assert len(ps) == 54
    for k, p in enumerate(ps, start=1):
        assert p == pytest.approx(1 - (k / 54) * 0.5, abs=1e-15)
    assert ps[-1] == pytest.approx(0.5) and ps[0] == pytest.approx(1 - 0.5 / 54)


def test_stochastic_depth_survival_and_eval_forward():
    torch.manual_seed(0)
    model = models.create("resnet110", stochastic_depth=0.5).double().eval()
    randomise_bn(model)
    res = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert len(res) == 54
    for k, m in enumerate(res, start=1):
        assert m.survival == pytest.approx(1 - (k / 54) * 0.5, abs=1e-15)
        assert m.sd_mode == "batch"
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        h = F.relu(model.bn1(model.conv1(x)))
        for m in res:
            branch = m.bn2(m.conv2(F.relu(m.bn1(m.conv1(h)))))
            expect = F.relu(branch * m.survival + pad_a(h, m.conv2.out_channels))
            got = m(h)
            assert torch.equal(got, expect)
            # and it is not the un-scaled block (p_l < 1 changes the output)
            assert not torch.equal(got, F.relu(branch + pad_a(h, m.conv2.out_channels)))
            h = got


def test_stochastic_depth_accepts_a_list_and_row_mode():
    ps = [1.0 - 0.05 * i for i in range(9)]
    model = models.create("resnet20", stochastic_depth=ps, sd_mode="row")
    got = [m.survival for m in model.modules() if isinstance(m, BasicBlock)]
    assert got == ps
    assert all(m.sd_mode == "row" for m in model.modules() if isinstance(m, BasicBlock))
    with pytest.raises(ValueError):
        models.create("resnet20", stochastic_depth=[0.5] * 8)
    with pytest.raises(ValueError):
        models.create("resnet20", stochastic_depth=[0.0] * 9)


def test_stochastic_depth_training_gates_per_row():
    """In training with sd_mode="row", each row either keeps or skips the branch."""
    torch.manual_seed(1)
    model = models.create("resnet20", stochastic_depth=[0.5] * 9, sd_mode="row").double()
    randomise_bn(model)
    block = model.layer1[1].eval()  # BN on running stats, so rows are independent
    x = torch.randn(16, 16, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        kept = F.relu(block.branch(x) + x)
        dropped = F.relu(x)
        block.training = True  # the block's own flag only: stochastic depth on
        torch.manual_seed(3)
        y = block(x)
    per_row = [torch.equal(y[i], kept[i]) or torch.equal(y[i], dropped[i]) for i in range(16)]
    assert all(per_row)
    n_kept = sum(torch.equal(y[i], kept[i]) for i in range(16))
    assert 0 < n_kept < 16
