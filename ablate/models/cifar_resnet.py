"""CIFAR ResNets of He et al. (2015, 2016), their plain twins, and pre-activation variants.

Layout and state-dict keys follow the de-facto standard PyTorch CIFAR checkpoints
(akamaster/pytorch_resnet_cifar10): ``conv1 bn1 layer1..3.<i>.{conv1,bn1,conv2,bn2} linear``,
option-A shortcuts carry no parameters. Depth is 6n + 2: three stages of n two-layer blocks
with 16, 32 and 64 channels.

Every residual block exposes ``residual(x)`` and ``shortcut(x)`` and computes
``post(residual(x) + shortcut(x))``; interventions and the batched lesion engine build on exactly
these two pieces, so what they compute is bitwise what ``forward`` computes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ShortcutA", "BasicBlock", "PreActBlock", "PlainBlock", "CifarResNet"]


class ShortcutA(nn.Module):
    """Option A: identity with stride-2 subsampling and zero-padded extra channels (no params)."""

    def __init__(self, planes: int) -> None:
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))

    def extra_repr(self) -> str:
        return f"pad={self.pad}"


def _shortcut(in_planes: int, planes: int, stride: int, option: str) -> nn.Module:
    if stride == 1 and in_planes == planes:
        return nn.Sequential()  # identity, and the standard checkpoints' key layout
    if option == "A":
        return ShortcutA(planes)
    if option == "B":
        return nn.Sequential(
            nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
        )
    raise ValueError(f"shortcut option must be 'A' or 'B', not {option!r}")


class _Residual(nn.Module):
    """Shared behaviour of residual blocks: stochastic depth and the forward rule.

    ``survival`` is the probability p_l of Huang et al.: in training the residual branch is kept
    with probability p_l (one gate per mini-batch, or per sample with ``sd_mode="row"``); in
    evaluation it is scaled by p_l. With p_l = 1 the block is an ordinary residual block.
    """

    post_activation = True  # ReLU after the addition (original ResNet); False for pre-activation

    def __init__(self) -> None:
        super().__init__()
        self.survival = 1.0
        self.sd_mode = "batch"
        self.changes_shape = False

    def branch(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def residual(self, x: Tensor) -> Tensor:
        """The residual branch f(x), scaled by the survival probability in evaluation."""
        out = self.branch(x)
        if not self.training and self.survival != 1.0:
            out = out * self.survival
        return out

    def post(self, y: Tensor) -> Tensor:
        return F.relu(y) if self.post_activation else y

    def forward(self, x: Tensor) -> Tensor:
        if self.training and self.survival < 1.0:
            return self._forward_stochastic(x)
        return self.post(self.residual(x) + self.shortcut(x))

    def _forward_stochastic(self, x: Tensor) -> Tensor:
        if self.sd_mode == "batch":
            if torch.rand(()) >= self.survival:  # dropped: skip the branch's compute entirely
                return self.post(self.shortcut(x))
            return self.post(self.branch(x) + self.shortcut(x))
        keep = torch.rand(x.shape[0], device=x.device) < self.survival
        gate = keep.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
        return self.post(gate * self.branch(x) + self.shortcut(x))

    def extra_repr(self) -> str:
        return "" if self.survival == 1.0 else f"survival={self.survival:.4g}, mode={self.sd_mode}"


class BasicBlock(_Residual):
    """He et al. 2015: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, option: str = "A") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes, stride, option)
        self.changes_shape = stride != 1 or in_planes != planes

    def branch(self, x: Tensor) -> Tensor:
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))


class PreActBlock(_Residual):
    """He et al. 2016 (identity mappings): conv2(relu(bn2(conv1(relu(bn1(x)))))) + shortcut(x)."""

    post_activation = False

    def __init__(self, in_planes: int, planes: int, stride: int = 1, option: str = "A") -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = _shortcut(in_planes, planes, stride, option)
        self.changes_shape = stride != 1 or in_planes != planes

    def branch(self, x: Tensor) -> Tensor:
        return self.conv2(F.relu(self.bn2(self.conv1(F.relu(self.bn1(x))))))


class PlainBlock(nn.Module):
    """The plain twin of BasicBlock: the same two conv-BN-ReLU layers, no shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, option: str = "A") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.changes_shape = stride != 1 or in_planes != planes

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class CifarResNet(nn.Module):
    """conv1 -> three stages of n blocks (16, 32, 64 channels) -> global average pool -> linear."""

    def __init__(
        self,
        block: type[nn.Module],
        n: int,
        num_classes: int = 10,
        option: str = "A",
        survival: Sequence[float] | None = None,
        sd_mode: str = "batch",
    ) -> None:
        super().__init__()
        self.preact = block is PreActBlock
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        if not self.preact:
            self.bn1 = nn.BatchNorm2d(16)
        in_planes = 16
        for stage, planes in enumerate((16, 32, 64), start=1):
            layers = []
            for i in range(n):
                stride = 2 if (stage > 1 and i == 0) else 1
                layers.append(block(in_planes, planes, stride, option))
                in_planes = planes
            self.add_module(f"layer{stage}", nn.Sequential(*layers))
        if self.preact:
            self.bn = nn.BatchNorm2d(64)  # final BN-ReLU of the pre-activation design
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)
        if survival is not None:
            set_survival(self, survival, sd_mode)

    def stem(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        return x if self.preact else F.relu(self.bn1(x))

    def head(self, x: Tensor) -> Tensor:
        if self.preact:
            x = F.relu(self.bn(x))
        x = F.avg_pool2d(x, x.shape[-1]).flatten(1)
        return self.linear(x)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.head(x)


def set_survival(model: nn.Module, survival: Sequence[float], mode: str = "batch") -> None:
    """Give each residual block of ``model`` its survival probability (Huang et al.)."""
    res = [m for m in model.modules() if isinstance(m, _Residual)]
    if len(survival) != len(res):
        raise ValueError(f"{len(survival)} survival probabilities for {len(res)} blocks")
    if mode not in ("batch", "row"):
        raise ValueError(f"stochastic-depth mode must be 'batch' or 'row', not {mode!r}")
    for m, p in zip(res, survival, strict=True):
        if not 0.0 < p <= 1.0:
            raise ValueError(f"survival probability {p} is outside (0, 1]")
        m.survival, m.sd_mode = float(p), mode


def linear_survival(n_blocks: int, p_last: float) -> list[float]:
    """Huang et al.'s linear decay: p_l = 1 - (l / L)(1 - p_L) for l = 1..L."""
    return [1.0 - (i / n_blocks) * (1.0 - p_last) for i in range(1, n_blocks + 1)]
