"""What every command shares: its common flags, loading models and data, block selections."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from . import checkpoint, data, models
from .checkpoint import Loaded
from .data import Dataset
from .errors import UsageError
from .measures import resolve_device

__all__ = ["parser", "load_models", "load_data", "parse_indices", "Timer", "print_table"]


class _ListModels(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        print("architectures:", " ".join(models.names()))
        print("bundled checkpoints:", " ".join(checkpoint.bundled_names()) or "none")
        parser.exit()


def parser(
    description: str, default_models: Sequence[str] = ("resnet20",)
) -> argparse.ArgumentParser:
    """An argument parser with the flags every analysis command takes."""
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", nargs="+", default=list(default_models), metavar="NAME",
                   help="registry or bundled-checkpoint names; several share one table and figure")
    p.add_argument("--checkpoint", nargs="+", default=None, metavar="PATH",
                   help="checkpoint files, one per --model (ablate .safetensors or standard .th)")
    p.add_argument("--weights", default=None,
                   help="torchvision pretrained weights for ImageNet models, e.g. IMAGENET1K_V1")
    p.add_argument("--data", default=None,
                   help="data: a CIFAR directory or .tar.gz, an ImageFolder tree, 'cifar10' "
                        "(torchvision download); default: the bundled cifar10-jpeg test split")
    p.add_argument("--split", default="test", choices=data.SPLITS)
    p.add_argument("--limit", type=int, default=None, metavar="N", help="use the first N images")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per batch (default: 512 on a GPU, 128 on the CPU)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--out", default=None, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-figure", action="store_true", help="write the table only")
    p.add_argument("--list-models", action=_ListModels, nargs=0, help="list models and exit")
    return p


def load_models(args: argparse.Namespace, allow_init: bool = False) -> list[Loaded]:
    device = resolve_device(args.device)
    ckpts = args.checkpoint or []
    names = list(args.model)
    if ckpts and len(ckpts) != len(names):
        if names == ["resnet20"] or not names:  # the default: let checkpoints name themselves
            names = [None] * len(ckpts)
        else:
            msg = f"{len(ckpts)} checkpoints for {len(names)} models: give one per model"
            raise UsageError(msg)
    out = []
    for i, name in enumerate(names):
        ck = ckpts[i] if ckpts else None
        out.append(checkpoint.load(name, ck, device=device, weights=args.weights,
                                   allow_init=allow_init))
    seen = [m.name for m in out]
    if len(set(seen)) != len(seen):
        raise UsageError(f"models repeat ({', '.join(seen)}): name each one once")
    return out


def load_data(args: argparse.Namespace) -> Dataset:
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be at least 1, not {args.limit}")
    ds = data.load(args.data, args.split)
    return ds.subset(args.limit)


def batch_size(args: argparse.Namespace, loaded: Loaded) -> int:
    if args.batch_size is not None:
        if args.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, not {args.batch_size}")
        return args.batch_size
    return 512 if next(loaded.model.parameters()).is_cuda else 128


def parse_indices(spec: str | None, n: int, what: str = "block") -> list[int] | None:
    """``all`` or None -> None; ``0,3,5-9`` -> [0, 3, 5, 6, 7, 8, 9], checked against n."""
    if spec is None or spec == "all":
        return None
    out: list[int] = []
    try:
        for part in spec.split(","):
            a, sep, b = part.partition("-")
            out += list(range(int(a), int(b) + 1)) if sep else [int(a)]
    except ValueError:
        raise UsageError(f"--blocks {spec!r} is not a list like 0,3,5-9 (or 'all')") from None
    bad = [i for i in out if not 0 <= i < n]
    if bad:
        raise UsageError(f"{what} {bad[0]} is out of range: this model has {what}s 0..{n - 1}")
    return out


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
