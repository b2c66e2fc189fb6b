"""Which precision and memory layout train fastest here, chosen by processor feature.

On a GPU: bf16 autocast with channels-last. On a CPU it depends on the chip: with native bf16
(AVX512-BF16 or AMX, e.g. AMD EPYC Zen 4, Intel Sapphire Rapids) bf16 autocast with
channels-last trains CIFAR ResNets about 2.1x faster than fp32; without it (e.g. older Intel
Xeons) bf16 is emulated and 2.6x slower, and fp32 with channels-last is best (1.3x fp32 NCHW).
Measured on 2-core machines of both kinds (benchmarks/train_speed.py). Evaluation always runs
in fp32.

Transformers on a CPU train with the math attention kernel: at ViT-on-CIFAR lengths (65 tokens)
the CPU flash-attention kernel's backward takes 29% of a ViT-Lite-7/4 step, and the math kernel
(two batched matmuls and a softmax) trains it 1.3x faster (48 -> 63 img/s, bf16, one thread of an
AMD EPYC; torch.compile gained nothing). On a GPU the fused kernels stay.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from ablate._infra.provenance import cpu_has_native_bf16, cpu_name

__all__ = ["Precision", "attention_kernel", "choose", "cpu_has_native_bf16", "cpu_name", "ranges"]


@dataclass(frozen=True)
class Precision:
    amp: bool  # bf16 autocast for training steps
    channels_last: bool
    why: str  # one line for the log
    math_attention: bool = False  # train under sdpa_kernel(MATH): see the module docstring


def choose(device: torch.device, amp: str | None, channels_last: bool | None,
           convolutional: bool = True) -> Precision:
    """``amp`` ("bf16"/"off") and ``channels_last`` override; None picks by device and CPU.

    Channels-last speeds up convolutions only: for a transformer (``convolutional=False``),
    whose one convolution is the patch embedding, it slows that and gains nothing, so the
    default there is NCHW.
    """
    if device.type == "cuda":
        auto_amp, why = True, "GPU: bf16 autocast"
    elif cpu_has_native_bf16():
        auto_amp, why = True, f"{cpu_name()} has native bf16: bf16 autocast"
    else:
        auto_amp = False
        why = f"{cpu_name()} has no native bf16 (emulated bf16 is slower): fp32"
    auto_cl = convolutional
    why += ", channels-last" if auto_cl else ", NCHW (a transformer: no convolutions to speed up)"
    chosen_amp = auto_amp if amp is None else amp == "bf16"
    chosen_cl = auto_cl if channels_last is None else channels_last
    if (chosen_amp, chosen_cl) != (auto_amp, auto_cl):
        why = (f"{'bf16 autocast' if chosen_amp else 'fp32'}, "
               f"{'channels-last' if chosen_cl else 'NCHW'} as asked (auto: {why})")
    math_attention = device.type == "cpu" and not convolutional
    if math_attention:
        why += "; math attention kernel (faster than CPU flash attention at short lengths)"
    return Precision(chosen_amp, chosen_cl, why, math_attention)


def attention_kernel(math: bool) -> contextlib.AbstractContextManager:
    """The context a training step runs in: the math SDPA kernel if ``math``, else no change."""
    if not math:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


def ranges(log: list[dict]) -> list[dict]:
    """Consecutive epochs trained alike: [{"epochs": "1-19", "amp", "channels_last", "device"}],
    and "attention" (the SDPA kernel) where the log records it.

    Rows from before these columns were logged read as "not recorded".
    """
    out: list[dict] = []
    keys = ("amp", "channels_last", "device") + (
        ("attention",) if any("attention" in row for row in log) else ())
    for row in log:
        key = {k: row.get(k, "not recorded") for k in keys}
        if out and {k: out[-1][k] for k in key} == key:
            out[-1]["last"] = row["epoch"]
        else:
            out.append({"first": row["epoch"], "last": row["epoch"], **key})
    return [{"epochs": f"{r.pop('first')}-{r.pop('last')}", **r} for r in out]
