"""Training-step throughput of the CIFAR ViT on this machine: precision, attention, compile, size.

    nice -n 10 python benchmarks/vit_speed.py --steps 3 --rounds 2 --out vit_speed.json

Each setting trains ``--steps`` AdamW steps of batch 128 (after ``--warmup-steps`` untimed ones)
from random uint8 images through ``ablate.training.loop.train_epoch`` (crop, flip, RandAugment and
Mixup/CutMix as the ViT recipe sets them; ``noaug``: crop and flip only) and reports images per
second of wall time and of process CPU time (steadier on a loaded host), in ``--rounds``
interleaved rounds; first the augmentation's own cost per batch. ``sdpa`` swaps each layer's
``nn.MultiheadAttention`` for a module that calls ``F.scaled_dot_product_attention`` directly on
the same parameters.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ablate import models
from ablate.training import augment as aug
from ablate.training.config import paper_recipe
from ablate.training.loop import train_epoch

SIZES = {"vit7x256": {}, "vit6x192": {"num_layers": 6, "hidden_dim": 192, "num_heads": 3,
                                      "mlp_dim": 384}}


class SDPAttention(nn.Module):
    """``nn.MultiheadAttention``'s parameters, forward by one fused SDPA call (batch first)."""

    def __init__(self, mha: nn.MultiheadAttention):
        super().__init__()
        self.mha, self.h = mha, mha.num_heads

    def forward(self, q, k, v, need_weights=False):
        b, t, d = q.shape
        qkv = F.linear(q, self.mha.in_proj_weight, self.mha.in_proj_bias)
        qkv = qkv.view(b, t, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.mha.out_proj(o.transpose(1, 2).reshape(b, t, d)), None


def _net(size: str, attn: str) -> nn.Module:
    net = models.create("vit_cifar", **SIZES[size])
    if attn == "sdpa":
        for layer in net.encoder.layers:
            layer.self_attention = SDPAttention(layer.self_attention)
    return net


def measure(size: str, amp: bool, attn: str, compile_: bool, augment: bool, steps: int,
            warmup: int) -> tuple[float, float]:
    torch.manual_seed(0)
    net = _net(size, attn)
    fwd = torch.compile(net) if compile_ else net
    recipe = replace(paper_recipe("vit_cifar"), batch_size=128)
    if not augment:
        recipe = replace(recipe, randaug_ops=0, mixup_alpha=0.0, cutmix_alpha=0.0)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    n = 128 * (steps + warmup)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,))
    gen = torch.Generator().manual_seed(0)
    train_epoch(fwd, opt, images[: 128 * warmup], labels[: 128 * warmup], recipe, gen, 0, amp=amp)
    t0, c0 = time.perf_counter(), time.process_time()
    train_epoch(fwd, opt, images, labels, recipe, gen, 0, amp=amp, max_steps=steps)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return steps * 128 / wall, steps * 128 / cpu


def augmentation_ms(reps: int = 10) -> float:
    """Milliseconds per batch of 128 for RandAugment (N=2, M=9) and one Mixup or CutMix."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (128, 3, 32, 32), dtype=torch.uint8, generator=g)
    ops, signs = aug.draw_randaugment(128, 2, g, torch.device("cpu"))
    mixes = aug.draw_mixes(reps, 1.0, 1.0, 1.0, (32, 32), g, torch.device("cpu"))
    t0 = time.perf_counter()
    for m in mixes:
        with aug.one_thread(x.device):
            y = aug.randaugment(x, ops, signs, 9)
        aug.mix_batch(y.float(), m)
    return (time.perf_counter() - t0) / reps * 1000


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup-steps", type=int, default=1)
    p.add_argument("--settings", default="vit7x256:bf16:mha:eager:aug:t2,vit7x256:bf16:mha:eager:"
                   "aug:t1,vit7x256:bf16:sdpa:eager:aug:t1,vit6x192:bf16:mha:eager:aug:t1,"
                   "vit7x256:bf16:mha:eager:noaug:t1",
                   help="SIZE:bf16|fp32:mha|sdpa:eager|compile:aug|noaug[:tN threads, default t2], "
                   "comma-separated")
    p.add_argument("--rounds", type=int, default=2, help="interleaved repeats (a loaded host)")
    p.add_argument("--out")
    a = p.parse_args()
    rows = [{"setting": "augmentation only", "ms_per_batch": round(augmentation_ms(), 1),
             "load_1min": os.getloadavg()[0], "threads": torch.get_num_threads()}]
    print(json.dumps(rows[-1]), flush=True)
    for _ in range(a.rounds):
        for s in a.settings.split(","):
            size, prec, attn, mode, on, threads = (s + ":t2").split(":")[:6]
            torch.set_num_threads(int(threads[1:]))
            load = os.getloadavg()[0]
            ips, ipcs = measure(size, prec == "bf16", attn, mode == "compile", on == "aug",
                                a.steps, a.warmup_steps)
            rows.append({"setting": s, "images_per_s": round(ips, 2),
                         "images_per_cpu_s": round(ipcs, 2), "load_1min": load,
                         "threads": torch.get_num_threads()})
            print(json.dumps(rows[-1]), flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
