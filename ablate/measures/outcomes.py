"""Measurements on a model: per-image correctness and loss, with intervals and paired tests.

Per-image outcomes are kept (not just means) so that two conditions measured on the same images
can be compared pairwise (McNemar's exact test) and intervals can be computed afterwards.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ablate.data import normalize
from ablate.measures.stats import mean_interval, wilson_interval
from ablate.models.blocks import restore_flags, train_flags

__all__ = [
    "Outcome", "evaluate", "outcome",
]


@dataclass
class Outcome:
    """Per-image results of one condition: ``correct`` (bool [N]) and ``loss`` (float [N])."""

    correct: Tensor
    loss: Tensor

    @property
    def n(self) -> int:
        return int(self.correct.numel())

    @property
    def errors(self) -> int:
        return int((~self.correct).sum())

    @property
    def error(self) -> float:
        return self.errors / self.n

    def error_interval(self, conf: float = 0.95) -> tuple[float, float]:
        return wilson_interval(self.errors, self.n, conf)

    def loss_interval(self, conf: float = 0.95) -> tuple[float, float, float]:
        return mean_interval(self.loss.double().numpy(), conf)

    @staticmethod
    def cat(parts: Iterable[Outcome]) -> Outcome:
        parts = list(parts)
        return Outcome(torch.cat([p.correct for p in parts]), torch.cat([p.loss for p in parts]))


def outcome(logits: Tensor, labels: Tensor) -> Outcome:
    """Correctness and cross-entropy of each row of ``logits`` (computed in float32, on CPU)."""
    logits = logits.float()
    correct = logits.argmax(-1) == labels
    loss = F.cross_entropy(logits, labels, reduction="none")
    return Outcome(correct.cpu(), loss.cpu())


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    mean: Iterable[float],
    std: Iterable[float],
    batch_size: int = 500,
    progress: bool = False,
    desc: str = "evaluate",
    amp: bool = False,
    channels_last: bool = False,
) -> Outcome:
    """Run ``model`` (in eval mode, restored afterwards) over uint8 ``images``; per-image outcome.

    Images move to the model's device batch by batch and are normalised there; ``amp`` runs the
    model under bf16 autocast, ``channels_last`` feeds it channels-last inputs (the trainer's).
    """
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    flags = train_flags(model)
    model.eval()
    try:
        m = torch.tensor(list(mean), dtype=torch.float32, device=device)
        s = torch.tensor(list(std), dtype=torch.float32, device=device)
        parts = []
        starts = range(0, len(images), batch_size)
        for i in tqdm(starts, desc=desc, disable=not progress, leave=False):
            x = images[i:i + batch_size].to(device, non_blocking=True)
            x = normalize(x, m, s, dtype=dtype, channels_last=channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(x)
            parts.append(outcome(logits, labels[i:i + batch_size].to(device)))
        return Outcome.cat(parts)
    finally:
        restore_flags(flags)
