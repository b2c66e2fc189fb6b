"""The full single-block lesion sweep: the batched engine against one forward pass per deletion.

    python benchmarks/lesion_sweep.py --model resnet110 --device cpu --out sweep.json
    python benchmarks/lesion_sweep.py --model resnet56 --checkpoint \\
        ablate/checkpoints/resnet56.safetensors --amp bf16 --skip-naive --out bf16.json

Deletes every deletable unit of ``--model`` alone (54 blocks for ResNet-110) over the first
``--n-images`` images of the data (default: the bundled pristine CIFAR-10 test split, all 10,000),
once with ``ablate.interventions.evaluate_variants`` (the intact prefix computed once per batch,
many variants per pass) and once with ``evaluate_naive`` (the interventions, one full pass per
deletion), on the same device with the images already there, and reports both times, their ratio
and whether every error count agrees. Each is timed after an untimed warm-up on the first batch.
Weights are random unless ``--checkpoint`` is given: the time does not depend on the weights (the
error counts do, and they are compared either way). ``--amp bf16`` adds a run of the engine and
of the intact net under bf16 autocast (opt-in, never what reported numbers use) and reports which
error counts change against fp32; it says whether this CPU has native bf16 (on one without, bf16
is emulated: slow, and its counts still tell whether bf16 changes any).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ablate import data, models
from ablate._infra import distributed
from ablate._infra.provenance import device_name, versions
from ablate.interventions.variants import Variant, evaluate_naive, evaluate_variants
from ablate.models import checkpoint
from analyses.delete_block import deletable


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device) -> tuple[float, object]:
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t0, out


def _load(args: argparse.Namespace, device: torch.device) -> checkpoint.Loaded:
    if args.checkpoint:
        return checkpoint.load(args.model, args.checkpoint, device=device)
    torch.manual_seed(0)
    net = models.create(args.model).to(device).eval()
    mean, std = (data.CIFAR10_MEAN, data.CIFAR10_STD)
    return checkpoint.Loaded(net, args.model, args.model, None, None, "init", mean, std, None)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet110")
    p.add_argument("--checkpoint", default=None, help="trained weights (default: random)")
    p.add_argument("--data", default=None, help="default: the bundled pristine CIFAR-10 test split")
    p.add_argument("--n-images", type=int, default=10000)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=None, help="default: 1000 GPU, 100 CPU")
    p.add_argument("--max-rows", type=int, default=None, help="engine rows in flight")
    p.add_argument("--channels-last", action="store_true", help="both methods, CUDA mainly")
    p.add_argument("--amp", choices=("none", "bf16"), default="none",
                   help="also run the engine under bf16 autocast and compare its error counts "
                        "with fp32 (opt-in)")
    p.add_argument("--skip-naive", action="store_true", help="time the engine only")
    p.add_argument("--out", default=None, help="write the report as JSON here")
    return p


def _time_naive(naive, warm, variants, out_engine, t_engine, device, work) -> dict:
    """The module-swapping loop on the same work, and whether it agrees with the engine."""
    naive(*warm, vs=variants[:2])
    t_naive, out_naive = _timed(naive, device)
    return {
        "naive_s": round(t_naive, 3), "naive_images_per_s": round(work / t_naive, 1),
        "speedup": round(t_naive / t_engine, 2),
        "errors_agree": [o.errors for o in out_engine] == [o.errors for o in out_naive],
        "max_loss_diff": max(float((a.loss - b.loss).abs().max())
                             for a, b in zip(out_engine, out_naive)),
    }


def _time_bf16(engine, intact, warm, out_engine, device, work) -> dict:
    """The engine under bf16 autocast, and which error counts move from fp32 (the intact net's
    and each deletion's)."""
    from ablate.training.precision import cpu_has_native_bf16

    ctx = (torch.autocast(device.type, dtype=torch.bfloat16) if device.type in ("cuda", "cpu")
           else contextlib.nullcontext())
    base = intact()
    with ctx:
        engine(*warm)
        t_amp, out_amp = _timed(engine, device)
        amp = intact()
    moved = [abs(a.errors - b.errors) for a, b in zip(out_amp, out_engine)]
    return {
        "bf16_native": device.type == "cuda" or cpu_has_native_bf16(),
        "engine_bf16_s": round(t_amp, 3), "engine_bf16_images_per_s": round(work / t_amp, 1),
        "bf16_errors_agree_with_fp32": not any(moved) and amp.errors == base.errors,
        "bf16_deletions_with_changed_count": sum(m > 0 for m in moved),
        "bf16_error_count_max_diff": max(moved),
        "intact_errors_fp32": base.errors, "intact_errors_bf16": amp.errors,
    }


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    device = distributed.device(args.device)
    loaded = _load(args, device)
    model = loaded.model
    ds = data.load(args.data, "test", quiet=True).subset(args.n_images)
    images, labels = ds.images.to(device), ds.labels.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    bs = args.batch_size or (1000 if device.type == "cuda" else 100)
    variants = [Variant.deleting(i) for i in deletable(loaded)]
    norm = {"mean": loaded.mean, "std": loaded.std}

    def engine(imgs=images, lbls=labels):
        return evaluate_variants(model, imgs, lbls, variants, batch_size=bs,
                                 max_rows=args.max_rows, progress=False, **norm)

    def intact():
        return evaluate_naive(model, images, labels, [Variant()], batch_size=bs, **norm)[0]

    def naive(imgs=images, lbls=labels, vs=variants):
        return evaluate_naive(model, imgs, lbls, vs, batch_size=bs, **norm)

    warm = (images[:bs], labels[:bs])
    engine(*warm)
    n_var, n_img = len(variants), len(ds)
    report: dict = {
        "model": args.model, "weights": args.checkpoint or "random init (timing does not depend "
        "on the weights)", "deletions": n_var, "n_images": n_img, "data": ds.name,
        "batch_size": bs, "max_rows": args.max_rows, "channels_last": args.channels_last,
        "device": device_name(device), "torch": torch.__version__, "versions": versions(),
    }
    t_engine, out_engine = _timed(engine, device)
    report["engine_s"] = round(t_engine, 3)
    report["engine_images_per_s"] = round(n_var * n_img / t_engine, 1)
    if not args.skip_naive:
        report |= _time_naive(naive, warm, variants, out_engine, t_engine, device, n_var * n_img)
    if args.amp == "bf16":
        report |= _time_bf16(engine, intact, warm, out_engine, device, n_var * n_img)
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
