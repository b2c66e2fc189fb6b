"""What every experiment's command shares: loading its models and data (checked against each
other), the one range parser, batch sizes, the results folder and its resumable table.

The experiments' ``measure`` functions call these with their options (``analyses.options``); the
command layer (``ablate/_cli.py``) then writes meta.json and draws the figure.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from torch import nn

from ablate import data, models
from ablate._infra import distributed
from ablate._infra.errors import UsageError, check_out
from ablate.data import Dataset
from ablate.models import checkpoint
from ablate.models.checkpoint import Loaded
from analyses.options import Images
from analyses.table import Table

__all__ = ["Timer", "batch_size", "default_out", "load_data", "load_models", "parse_range",
           "print_table", "results_table"]


def load_models(args: Images, defaults: Sequence[str] = ("resnet20",),
                allow_init: bool = False) -> list[Loaded]:
    """``--model``/``--checkpoint`` (else ``defaults``) on ``--device``; names must not repeat."""
    device = distributed.device(args.device)
    ckpts = args.checkpoint or []
    defaulted = not args.model
    names = list(args.model or defaults)
    if ckpts and len(ckpts) != len(names):
        if defaulted:  # let checkpoints name themselves
            names = [None] * len(ckpts)
        else:
            msg = f"{len(ckpts)} checkpoints for {len(names)} models: give one per model"
            raise UsageError(msg)
    if args.weights is not None:
        _check_weights(args.weights, names, ckpts)
    out = []
    for i, name in enumerate(names):
        ck = ckpts[i] if ckpts else None
        out.append(checkpoint.load(name, ck, device=device, weights=args.weights,
                                   allow_init=allow_init))
    seen = [m.name for m in out]
    if len(set(seen)) != len(seen):
        raise UsageError(f"models repeat ({', '.join(seen)}): name each one once")
    return out


def _check_weights(weights: str, names: Sequence[str | None], ckpts: Sequence[str]) -> None:
    """--weights picks torchvision's ImageNet weights: not with --checkpoint, not for CIFAR nets."""
    if ckpts:
        raise UsageError(f"--weights {weights} and --checkpoint both give the weights: "
                         "pass one of them")
    for name in names:
        if name is not None and (checkpoint.bundled(name) or models.is_cifar(name)):
            raise UsageError(
                f"--weights {weights} selects torchvision ImageNet weights, but {name} is a CIFAR "
                "model: drop --weights (CIFAR models use a bundled or --checkpoint file), or pick "
                "a torchvision model (resnet18 ... resnet152, vgg11 ... vgg19_bn)"
            )


# Class counts of the named sources, known without decoding them.
_KNOWN_CLASSES = {None: ("cifar10", 10), "bundled": ("cifar10", 10),
                  "cifar10": ("cifar10", 10), "cifar100": ("cifar100", 100)}


def load_data(args: Images, loaded: Sequence[Loaded] | None = None,
              demo_limit: int | None = None) -> Dataset:
    """Load ``--data``/``--split`` with ``--resize``/``--crop``, checked against the models.

    ``loaded`` are the models from ``load_models(args)``. A torchvision model must have as
    many outputs as the data has classes (a fresh one: at least as many); ImageNet-trained ones
    (``--weights``, or 1000 outputs from a checkpoint) get the ImageNet evaluation preprocessing,
    ``--resize 256 --crop 224``, unless ``--resize`` or ``--crop`` is given.
    """
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be at least 1, not {args.limit}")
    loaded = loaded or []
    resize, crop = getattr(args, "resize", None), getattr(args, "crop", None)
    tv = [m for m in loaded if not models.is_cifar(m.arch)]
    key = None if args.data is None else str(args.data)
    if key in _KNOWN_CLASSES:  # fail before decoding (and resizing) data that cannot fit
        name, n = _KNOWN_CLASSES[key]
        for m in tv:
            _check_classes(m, name, n, "32x32 images")
    imagenet = any(m.format != "init" and _outputs(m.model) == 1000 for m in tv)
    if resize is None and crop is None and (imagenet or getattr(args, "weights", None)):
        resize, crop = 256, 224
        print("data: ImageNet evaluation preprocessing: shorter side resized to 256, centre "
              "crop 224 (set --resize/--crop to change it)", file=sys.stderr)
    ds = data.load(args.data, args.split, resize=resize, crop=crop)
    demo = demo_limit
    if demo and args.limit is None and not args.model and not args.checkpoint and len(ds) > demo:
        args.limit = demo
        print(f"data: the default demo uses the first {demo} images ({demo // len(ds.classes)} "
              f"per class); name --model or pass --limit {len(ds)} for all of them",
              file=sys.stderr)
    for m in loaded:  # every model, CIFAR ones too: a 9-class folder cannot test a 10-class net
        size = "x".join(str(s) for s in ds.images.shape[2:])
        _check_classes(m, ds.name, len(ds.classes), f"{size} images")
    return ds.subset(args.limit)


def _outputs(model: nn.Module) -> int | None:
    """The number of classes a classifier outputs: its last Linear layer's width."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else None


def _check_classes(m: Loaded, data_name: str, n_classes: int, size: str) -> None:
    out = _outputs(m.model)
    if out is None or out == n_classes or (m.format == "init" and n_classes <= out):
        return
    trained = "ImageNet" if out == 1000 else f"{out}-class"
    fix = ("pass --data PATH to an ImageNet-style folder with 1000 class folders (e.g. "
           "imagenet/val)" if out == 1000 else
           f"pass --data PATH to data with {out} classes")
    raise UsageError(
        f"{m.name} outputs {out} classes ({trained} head) but the data ({data_name}, {size}) has "
        f"{n_classes} classes: {fix}, or a --checkpoint trained on this data"
    )


def batch_size(args: Images, loaded: Loaded) -> int:
    if args.batch_size is not None:
        if args.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, not {args.batch_size}")
        return args.batch_size
    return 512 if next(loaded.model.parameters()).is_cuda else 128


def parse_range(spec: str | None, last: int, flag: str = "--blocks",
                what: str = "block") -> list[int] | None:
    """The one range parser: ``all`` or None -> None; ``0,3,5-9`` -> [0, 3, 5, 6, 7, 8, 9]; a
    stride ``0-54:3`` -> 0, 3, ..., 54. Each number must be in 0..last, else a UsageError."""
    if spec is None or spec == "all":
        return None
    out: list[int] = []
    try:
        for part in spec.split(","):
            rng, _, step = part.partition(":")
            a, sep, b = rng.partition("-")
            lo, hi, by = int(a), int(b) if sep else int(a), int(step) if step else 1
            if hi < lo or by < 1:
                raise UsageError(f"{flag} {spec!r}: {part} is an empty range; write the smaller "
                                 "number first (e.g. 1-3) and a step of at least 1")
            out += list(range(lo, hi + 1, by))
    except ValueError:
        raise UsageError(f"{flag} {spec!r} is not a list like 0,3,5-9 or 0-54:3 (or 'all')") \
            from None
    bad = [i for i in out if not 0 <= i <= last]
    if bad:
        raise UsageError(f"{what} {bad[0]} is out of range: this model has {what}s 0..{last}")
    return list(dict.fromkeys(out))  # 1,1 is one block


def default_out(command: str, loaded: Sequence[Loaded]) -> Path:
    return Path("runs") / command / "+".join(m.name for m in loaded)


class Timer:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return round(time.perf_counter() - self.start, 2)


def print_table(df: pd.DataFrame, columns: Sequence[str], title: str = "") -> None:
    if title:
        print(title, file=sys.stdout)
    with pd.option_context("display.width", 120, "display.max_columns", 20,
                           "display.float_format", "{:.4f}".format):
        print(df[list(columns)].to_string(index=False))


def results_table(
    args: Images, loaded: Sequence[Loaded], command: str, key: Sequence[str],
    name: str = "results.csv", text: Sequence[str] = (),
) -> tuple[Path, Table]:
    """The output folder and its resumable table ``name``. Under torchrun only rank 0 writes;
    the other ranks keep their rows in memory."""
    out = check_out(default_out(command, loaded) if args.out is None else args.out)
    main_rank = distributed.is_main()  # the folder is made by the first row or meta.json
    return out, Table(out / name if main_rank else None, key, text)


