"""Training throughput: ablate.train's on-device pipeline against a conventional DataLoader loop.

    python benchmarks/train_speed.py --model resnet110 --data cifar10-png.tar.gz --steps 200
    python benchmarks/train_speed.py --model resnet110 --device cpu --steps 20 --out speed.json

Both loops train the same architecture (same initial weights) with SGD at the same batch size on
the same device, and each is timed over ``--steps`` steps after ``--warmup-steps`` untimed ones.
ours: ``ablate.training.loop.train_epoch`` (uint8 data on the device, augmentation in batches there,
precision chosen as the trainer chooses it (``ablate.training.precision``: bf16 autocast and
channels-last on a GPU or a CPU with native bf16, else fp32 channels-last), gradient statistics
included).
baseline: a torchvision-style in-memory data set with per-image PIL transforms RandomCrop(32, 4),
RandomHorizontalFlip, ToTensor and Normalize through a DataLoader, fp32, contiguous memory.
Without ``--data`` both read 50,000 random images (throughput does not depend on the pixels).
Then, unless ``--skip-sd``, the same training steps of the stochastic-depth twin (Huang et al.'s
linear rule to p_L = 0.5, one gate per block per mini-batch), measured alike: Huang et al.
report about 25% less training time (the expected depth is (3L - 1) / 4 of L blocks).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ablate import data as data_mod
from ablate import models
from ablate._infra import distributed
from ablate.training import precision
from ablate.training.config import make_recipe
from ablate.training.loop import grad_probe, train_epoch, zero_grads


class InMemoryCifar(torch.utils.data.Dataset):
    """What torchvision.datasets.CIFAR10 does per item: HWC uint8 array -> PIL -> transforms."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ours(args, ds: data_mod.Dataset, device: torch.device, **model_kw) -> float:
    torch.manual_seed(0)
    chosen = precision.choose(device, args.amp, args.channels_last)
    amp, cl = chosen.amp, chosen.channels_last
    net = models.create(args.model, num_classes=len(ds.classes), **model_kw).to(device)
    if cl:
        net = net.to(memory_format=torch.channels_last)
    zero_grads(net)
    recipe = make_recipe(args.model, batch_size=args.batch_size)
    opt = torch.optim.SGD(net.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                          weight_decay=recipe.weight_decay)
    probe = grad_probe(net)
    fwd = torch.compile(net) if args.compile else net
    images, labels = ds.images.to(device), ds.labels.to(device)
    gen = torch.Generator(device=device).manual_seed(0)

    def run(steps: int) -> None:
        step = 0
        while step < steps:
            sums, g, new = train_epoch(fwd, opt, images, labels, recipe, gen, step, amp=amp,
                                       channels_last=cl, probe=probe, max_steps=steps - step)
            sums.tolist(), g.tolist()  # the per-epoch sync the trainer does
            step = new

    run(args.warmup_steps)
    _sync(device)
    t0 = time.perf_counter()
    run(args.steps)
    _sync(device)
    return args.steps * args.batch_size / (time.perf_counter() - t0)


def time_baseline(args, ds: data_mod.Dataset, device: torch.device) -> float:
    torch.manual_seed(0)
    net = models.create(args.model, num_classes=len(ds.classes)).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    tf = transforms.Compose([
        transforms.RandomCrop(32, padding=4),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(data_mod.CIFAR10_MEAN, data_mod.CIFAR10_STD),
    ])
    hwc = ds.images.permute(0, 2, 3, 1).contiguous().numpy()
    loader = DataLoader(
        InMemoryCifar(hwc, ds.labels.numpy(), tf), batch_size=args.batch_size, shuffle=True,
        num_workers=args.workers, pin_memory=device.type == "cuda", drop_last=True,
        persistent_workers=args.workers > 0,
    )

    def batches():
        while True:
            yield from loader

    it = batches()
    net.train()

    def run(steps: int) -> None:
        for _ in range(steps):
            x, y = next(it)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        loss.item()

    run(args.warmup_steps)
    _sync(device)
    t0 = time.perf_counter()
    run(args.steps)
    _sync(device)
    return args.steps * args.batch_size / (time.perf_counter() - t0)


def _compare_sd(args, ds, device, ours, base, name, chosen) -> dict:
    """The stochastic-depth twin's training steps, measured alike; the whole result record."""
    sd = None
    if not args.skip_sd:
        sd = time_ours(args, ds, device, stochastic_depth=0.5)
        print(f"stochastic depth (linear to 0.5): {sd:,.0f} images/s, "
              f"{1 - ours / sd:.1%} less time per step (Huang et al.: about 25%)")
    full = 164 * (len(ds) // args.batch_size) * args.batch_size / ours
    print(f"projected {args.model} 164 epochs of {len(ds)} images (training only): "
          f"{full / 60:.1f} min")
    result = {
        "model": args.model, "device": name or "cpu", "device_type": device.type,
        "torch": torch.__version__, "batch_size": args.batch_size, "steps": args.steps,
        "warmup_steps": args.warmup_steps, "data": args.data or "random",
        "ours_images_per_s": ours, "baseline_images_per_s": base,
        "ratio": None if base is None else ours / base, "baseline_workers": args.workers,
        "compile": args.compile, "amp": "bf16" if chosen.amp else "off",
        "channels_last": chosen.channels_last, "precision_choice": chosen.why,
        "sd_images_per_s": sd, "sd_time_saving": None if sd is None else 1 - ours / sd,
        "projected_164_epochs_minutes": full / 60,
    }
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet110")
    p.add_argument("--data", help="train split to read (default: 50,000 random images)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, help="timed steps per loop")
    p.add_argument("--epochs-fraction", type=float, default=0.25,
                   help="timed steps as a fraction of an epoch, when --steps is not given")
    p.add_argument("--warmup-steps", type=int, default=10)
    p.add_argument("--workers", type=int, default=4, help="baseline DataLoader workers")
    p.add_argument("--compile", action="store_true", help="torch.compile our model")
    p.add_argument("--amp", choices=("bf16", "off"), help="ours; default: as the trainer chooses")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--skip-baseline", action="store_true")
    p.add_argument("--skip-sd", action="store_true", help="skip the stochastic-depth comparison")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args()

    device = distributed.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if args.data:
        ds = data_mod.load(args.data, "train")
    else:
        g = torch.Generator().manual_seed(0)
        ds = data_mod.Dataset(torch.randint(0, 256, (50000, 3, 32, 32), dtype=torch.uint8,
                                            generator=g),
                              torch.randint(0, 10, (50000,), generator=g),
                              tuple(str(i) for i in range(10)), "random", "train", "random")
    if args.steps is None:
        args.steps = max(1, int(args.epochs_fraction * (len(ds) // args.batch_size)))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else precision.cpu_name()
    chosen = precision.choose(device, args.amp, args.channels_last)
    print(f"{args.model}, batch {args.batch_size}, {args.steps} timed steps after "
          f"{args.warmup_steps}, on {name} ({torch.get_num_threads()} threads); ours: "
          f"{chosen.why}")
    ours = time_ours(args, ds, device)
    print(f"ours:     {ours:,.0f} images/s")
    base = None
    if not args.skip_baseline:
        base = time_baseline(args, ds, device)
        print(f"baseline: {base:,.0f} images/s (DataLoader, {args.workers} workers, fp32)")
        print(f"ratio:    {ours / base:.2f}x")
    result = _compare_sd(args, ds, device, ours, base, name, chosen)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
