"""The full single-block lesion sweep: the batched engine against one forward pass per deletion.

    OMP_NUM_THREADS=2 python benchmarks/lesion_sweep.py --model resnet110 \\
        --checkpoint ablate/checkpoints/resnet110.safetensors --n-images 1500 --channels-last \\
        --profile --out benchmarks/lesion_sweep_resnet110_cpu.json
    python benchmarks/lesion_sweep.py --model resnet56 --checkpoint \\
        ablate/checkpoints/resnet56.safetensors --amp bf16 --skip-naive --out bf16.json

Deletes every deletable unit of ``--model`` alone (54 blocks for ResNet-110; ``--granularity
branch``: every attention and MLP branch of a torchvision ViT) over the first
``--n-images`` images of the data (default: the bundled pristine CIFAR-10 test split), with
``ablate.interventions.evaluate_variants`` (the intact prefix computed once per batch, chunks of
variants side by side in worker threads) and with ``evaluate_naive`` (the interventions, one full
pass per deletion), on the same device, in the same process, **interleaved batch by batch** (the
order alternating), so that a host whose load changes (other jobs) weighs on both alike. It
reports both times, the ratio of the totals, the spread of the per-batch ratios (median, min,
max), the load average before and after, and whether every error count and loss agrees bitwise.

``--channels-last`` adds the engine on channels-last tensors (opt-in: not bitwise) and reports how
many deletions' error counts change against fp32 NCHW. ``--amp bf16`` adds the engine under bf16
autocast (opt-in) likewise. Work and speed: the multiply-adds each side executes (convolutions
and linear layers, counted by hooks) per second, against a compute-bound reference convolution
on this machine (``reference_gflops``: what the cores sustain on a large 3x3 convolution) and
against the nominal peak of their vector width and clock. ``--profile`` adds where one batch of
the engine spends its time (op kinds; oneDNN's convolution kernels against its reorders).
Weights are random unless ``--checkpoint`` is given: the time does not depend on the weights (the
error counts do, and they are compared either way).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ablate import data, models
from ablate._infra import distributed
from ablate._infra.io import write_json
from ablate._infra.provenance import device_name, versions
from ablate.interventions.variants import Variant, evaluate_naive, evaluate_variants, steps_of
from ablate.models import checkpoint
from ablate.models.blocks import Block, blocks
from ablate.models.transformers import is_transformer
from analyses.delete_block import deletable


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
    p.add_argument("--max-rows", type=int, default=None, help="engine rows per call")
    p.add_argument("--workers", type=int, default=None, help="engine worker threads")
    p.add_argument("--channels-last", action="store_true",
                   help="also the engine on channels-last tensors (opt-in, not bitwise)")
    p.add_argument("--amp", choices=("none", "bf16"), default="none",
                   help="also the engine under bf16 autocast (opt-in)")
    p.add_argument("--granularity", choices=("block", "branch"), default="block",
                   help="branch: every attention and MLP branch of a torchvision ViT alone")
    p.add_argument("--skip-naive", action="store_true", help="time the engine only")
    p.add_argument("--profile", action="store_true",
                   help="profile one batch of the engine (op kinds, oneDNN kernels and reorders)")
    p.add_argument("--out", default=None, help="write the report as JSON here")
    return p


def unit_macs(model: nn.Module, x: torch.Tensor, granularity: str = "block"
              ) -> tuple[list[int], int, int]:
    """Multiply-adds per image of each unit, of the stem and of the head (convolutions and
    linear modules called as modules: a CNN's all; a ViT's attention projections are missed)."""
    count = [0]

    def hook(m, inp, out):
        if isinstance(m, nn.Conv2d):
            k = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
            count[0] += out[0].numel() * k
        elif isinstance(m, nn.Linear):
            count[0] += out[0].numel() * m.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    per_unit, stem, head, h = [], 0, 0, x[:1]
    try:
        with torch.inference_mode():
            steps = steps_of(model, granularity)
            for i, step in enumerate(steps):
                count[0] = 0
                h = step.unit(h) if isinstance(step, Block) else step(h)
                if isinstance(step, Block):
                    per_unit.append(count[0])
                elif i == 0:
                    stem = count[0]
                else:
                    head += count[0]
    finally:
        for hd in handles:
            hd.remove()
    return per_unit, stem, head


def reference_gflops(device: torch.device, seconds: float = 3.0) -> float:
    """GFLOP/s of a compute-bound 3x3 convolution (256 channels, 16x16, batch 32) here."""
    conv = nn.Conv2d(256, 256, 3, padding=1, bias=False).to(device).eval()
    x = torch.randn(32, 256, 16, 16, device=device)
    flops = 2 * 32 * 256 * 16 * 16 * 256 * 9
    with torch.inference_mode():
        conv(x)
        best, t_end = float("inf"), time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            _sync(device)
            t0 = time.perf_counter()
            conv(x)
            _sync(device)
            best = min(best, time.perf_counter() - t0)
    return flops / best / 1e9


def nominal_peak_gflops(threads: int) -> dict:
    """fp32 peak from the cores' vector width and clock (Linux /proc/cpuinfo): threads x lanes x
    2 FMA pipes (assumed: Zen 4/5, Skylake-SP and later) x 2 FLOPs x the nominal clock. A core
    that boosts above its nominal clock runs faster than this."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = set(next((ln.split(":", 1)[1].split() for ln in info.splitlines()
                      if ln.startswith("flags")), []))
    mhz = next((float(ln.split(":", 1)[1]) for ln in info.splitlines()
                if ln.startswith("cpu MHz")), None)
    bits = 512 if "avx512f" in flags else 256 if "avx2" in flags else 128
    out = {"vector_bits": bits, "fma_pipes_assumed": 2, "nominal_mhz": mhz, "threads": threads}
    if mhz:
        out["gflops"] = round(threads * bits // 32 * 2 * 2 * mhz / 1e3, 1)
    return out


_OP_KINDS = (("convolution", ("convolution",)), ("batch norm", ("batch_norm",)),
             ("relu, add, mul", ("relu", "threshold", "add", "mul")),
             ("copy, cat, split", ("copy", "cat", "clone", "contiguous", "split", "narrow",
                                   "slice", "empty", "to_dense", "_to_copy")))


def _onednn_primitive_seconds(fn) -> dict[str, float]:
    """oneDNN's own timing of each primitive kind while ``fn`` runs (its verbose mode, read
    from file descriptor 1): how much of a convolution call is the kernel, how much reorders."""
    import tempfile

    sys.stdout.flush()
    saved, tmp = os.dup(1), tempfile.TemporaryFile()
    os.dup2(tmp.fileno(), 1)
    try:
        with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
            fn()
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
    tmp.seek(0)
    out: dict[str, float] = {}
    for line in tmp.read().decode(errors="replace").splitlines():
        f = line.split(",")
        if len(f) > 6 and f[2] == "primitive" and f[3] == "exec":
            out[f[5]] = out.get(f[5], 0.0) + float(f[-1]) / 1e3
    return out


def profile(fn, one_worker, x: torch.Tensor, y: torch.Tensor, conv_macs: int,
            reference: float, threads: int) -> dict:
    """Where one batch of the engine spends its time: torch.profiler's self CPU time by kind of
    op (``one_worker``: the engine on the caller's thread, the one the profiler sees), and
    oneDNN's timing of its convolution kernels against its layout reorders (NCHW to its blocked
    layout and back, and the weights each call) in ``fn``, on every thread; the kernels' rate
    per thread against the reference convolution's."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    one_worker(x, y)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        one_worker(x, y)
    by: dict[str, float] = {}
    for e in prof.key_averages():
        kind = next((k for k, keys in _OP_KINDS if any(n in e.key for n in keys)), "other")
        by[kind] = by.get(kind, 0.0) + e.self_cpu_time_total / 1e6
    total = sum(by.values())
    out: dict = {"op_share_of_cpu_time_one_worker": {
        k: round(v / total, 3) for k, v in sorted(by.items(), key=lambda kv: -kv[1])}}
    fn(x, y)
    t0 = time.perf_counter()
    prims = _onednn_primitive_seconds(lambda: fn(x, y))
    wall = time.perf_counter() - t0
    if prims.get("convolution"):
        conv, reorder = prims["convolution"], prims.get("reorder", 0.0)
        per_thread = 2 * conv_macs / conv / 1e9
        out |= {"wall_s": round(wall, 3), "thread_seconds": round(wall * threads, 3),
                "onednn_seconds": {k: round(v, 3) for k, v in prims.items()},
                "onednn_share_of_thread_seconds": round(sum(prims.values()) / wall / threads, 3),
                "reorder_share_of_convolution_calls": round(reorder / (conv + reorder), 3),
                "convolution_kernel_gflops_per_thread": round(per_thread, 1),
                "reference_gflops_per_thread": round(reference / threads, 1),
                "convolution_kernel_vs_reference": round(per_thread * threads / reference, 2)}
    return out


def _spread(base: list[float], other: list[float]) -> dict:
    r = [a / b for a, b in zip(base, other)]
    return {"median": round(statistics.median(r), 2), "min": round(min(r), 2),
            "max": round(max(r), 2)}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    device = distributed.device(args.device)
    loaded = _load(args, device)
    model = loaded.model
    ds = data.load(args.data, "test", quiet=True).subset(args.n_images)
    images, labels = ds.images.to(device), ds.labels.to(device)
    bs = args.batch_size or (1000 if device.type == "cuda" else 100)
    branch = args.granularity == "branch"
    idx = (list(range(len(blocks(model, "branch")))) if branch else deletable(loaded))
    variants = [Variant.deleting(i) for i in idx]
    norm = {"mean": loaded.mean, "std": loaded.std, "batch_size": bs,
            "granularity": args.granularity}
    ekw = {"max_rows": args.max_rows, "workers": args.workers, "progress": False, **norm}
    amp = (torch.autocast(device.type, dtype=torch.bfloat16) if args.amp == "bf16"
           else contextlib.nullcontext())

    methods = {"engine": lambda x, y: evaluate_variants(model, x, y, variants, **ekw)}
    if not args.skip_naive:
        methods["naive"] = lambda x, y: evaluate_naive(model, x, y, variants, **norm)
    if args.channels_last:
        methods["engine_channels_last"] = lambda x, y: evaluate_variants(
            model, x, y, variants, channels_last=True, **ekw)
    if args.amp == "bf16":
        def bf16(x, y):
            with amp:
                return evaluate_variants(model, x, y, variants, **ekw)
        methods["engine_bf16"] = bf16

    for f in methods.values():  # untimed warm-up on the first batch
        f(images[:bs], labels[:bs])
    load_before = os.getloadavg()
    times: dict[str, list[float]] = {k: [] for k in methods}
    outs: dict[str, list[list]] = {k: [] for k in methods}
    names = list(methods)
    for b, i in enumerate(range(0, len(images), bs)):
        x, y = images[i:i + bs], labels[i:i + bs]
        for name in (names if b % 2 == 0 else names[::-1]):
            _sync(device)
            t0 = time.perf_counter()
            outs[name].append(methods[name](x, y))
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    load_after = os.getloadavg()
    from ablate.measures import Outcome

    res = {k: [Outcome.cat([o[v] for o in outs[k]]) for v in range(len(variants))] for k in outs}
    intact = evaluate_naive(model, images, labels, [Variant()], **norm)[0]
    cnn = not is_transformer(model)

    per_unit, stem, head = unit_macs(model, images[:1].float(), args.granularity)
    full = stem + sum(per_unit) + head
    naive_macs = sum(full - per_unit[i] for i in idx) * len(ds)
    engine_macs = (full + sum(sum(per_unit[i + 1:]) + head for i in idx)) * len(ds)
    t_engine = sum(times["engine"])
    n_var, n_img = len(variants), len(ds)
    reference = round(reference_gflops(device), 1)
    report: dict = {
        "model": args.model, "weights": args.checkpoint or "random init (timing does not depend "
        "on the weights)", "granularity": args.granularity, "deletions": n_var,
        "n_images": n_img, "data": ds.name,
        "batch_size": bs, "max_rows": args.max_rows, "workers": args.workers or (
            torch.get_num_threads() if device.type == "cpu" else 1),
        "device": device_name(device), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "torch": torch.__version__, "versions": versions(),
        "timing": "interleaved per batch of images, order alternating; same process",
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in load_after],
        "macs_per_image_intact": full if cnn else None,
        "reference_gflops": reference,
        "nominal_peak": nominal_peak_gflops(torch.get_num_threads()) if device.type == "cpu"
        else None,
        "engine_s": round(t_engine, 3), "engine_images_per_s": round(n_var * n_img / t_engine, 1),
        "engine_gflops": round(2 * engine_macs / t_engine / 1e9, 1) if cnn else None,
        "intact_errors": intact.errors,
    }
    if "naive" in times:
        t_naive = sum(times["naive"])
        report |= {
            "naive_s": round(t_naive, 3), "naive_images_per_s": round(n_var * n_img / t_naive, 1),
            "naive_gflops": round(2 * naive_macs / t_naive / 1e9, 1) if cnn else None,
            "speedup": round(t_naive / t_engine, 2),
            "speedup_per_batch": _spread(times["naive"], times["engine"]),
            "prefix_bound": round(naive_macs / engine_macs, 2) if cnn else None,
            "errors_agree": [o.errors for o in res["engine"]] == [o.errors for o in res["naive"]],
            "bitwise": all(torch.equal(a.loss, b.loss) and torch.equal(a.correct, b.correct)
                           for a, b in zip(res["engine"], res["naive"])),
            "max_loss_diff": max(float((a.loss - b.loss).abs().max())
                                 for a, b in zip(res["engine"], res["naive"])),
        }
    for key, label in (("engine_channels_last", "channels_last"), ("engine_bf16", "bf16")):
        if key not in times:
            continue
        t = sum(times[key])
        moved = [abs(a.errors - b.errors) for a, b in zip(res[key], res["engine"])]
        report |= {
            f"{key}_s": round(t, 3), f"{key}_images_per_s": round(n_var * n_img / t, 1),
            f"{label}_vs_engine": _spread(times["engine"], times[key]),
            f"{label}_bitwise": all(torch.equal(a.loss, b.loss)
                                    for a, b in zip(res[key], res["engine"])),
            f"{label}_deletions_with_changed_count": sum(m > 0 for m in moved),
            f"{label}_error_count_max_diff": max(moved),
            f"{label}_max_loss_diff": max(float((a.loss - b.loss).abs().max())
                                          for a, b in zip(res[key], res["engine"])),
        }
        if "naive" in times:
            report[f"{label}_speedup"] = round(sum(times["naive"]) / t, 2)
            report[f"{label}_speedup_per_batch"] = _spread(times["naive"], times[key])
    if args.profile and cnn and device.type == "cpu":
        report["profile"] = profile(
            methods["engine"], lambda x, y: evaluate_variants(
                model, x, y, variants, **(ekw | {"workers": 1})), images[:bs], labels[:bs],
            engine_macs // len(ds) * bs, reference, torch.get_num_threads())
    if args.amp == "bf16":
        from ablate.training.precision import cpu_has_native_bf16

        report["bf16_native"] = device.type == "cuda" or cpu_has_native_bf16()
    print(json.dumps(report, indent=2))
    if args.out:
        write_json(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
