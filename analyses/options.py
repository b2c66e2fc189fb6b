"""An experiment's settings as a dataclass: one field per command-line flag.

The same object comes from the command line (``parse``) and from Python (``reproduce`` builds one
with keyword arguments and ``dataclasses.replace``), so a flag and a field never drift apart and
a misspelt setting is a TypeError, not a silently ignored argument. Each field's help text lives
beside it (``flag``); ``add_flags`` turns the fields into argparse options.

``Base`` holds what every command means the same way (``--device``, ``--seed``, ``--out`` as a
folder, ``--no-figure``); ``Images`` adds the model and image-data flags of the image experiments.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from ablate._infra.errors import ArgumentParser, non_negative
from ablate.data import SPLITS

__all__ = ["Base", "Images", "add_flags", "flag", "parse"]

T = TypeVar("T", bound="Base")


def flag(default: Any, help: str, **argparse_kw: Any) -> Any:
    """A dataclass field that is also a command-line option (``--name-with-dashes``).

    ``argparse_kw`` goes to ``add_argument`` (``nargs``, ``choices``, ``metavar``, ``type``);
    ``positional=True`` makes it a positional argument. A list default is copied per instance.
    """
    meta = {"help": help, **argparse_kw}
    if isinstance(default, list):
        return field(default_factory=lambda d=default: list(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Base:
    """The flags every command shares, with one meaning each."""

    device: str = flag("auto", "auto | cpu | cuda | cuda:N")
    seed: int = flag(0, "seed of every random draw", type=non_negative)
    out: str | None = flag(None, "output folder (default: runs/EXPERIMENT/MODELS)")
    no_figure: bool = flag(False, "write the table and meta.json only")


@dataclass
class Images(Base):
    """Models and image data: the flags of every experiment on image classifiers."""

    model: list[str] | None = flag(
        None, "registry or bundled-checkpoint names; several share one table and figure",
        nargs="+", metavar="NAME")
    checkpoint: list[str] | None = flag(
        None, "checkpoint files, one per --model (ablate .safetensors or standard .th)",
        nargs="+", metavar="PATH")
    weights: str | None = flag(
        None, "torchvision pretrained weights for ImageNet models, e.g. IMAGENET1K_V1")
    data: str | None = flag(
        None, "data: a CIFAR directory or .tar.gz, an ImageFolder tree, one split folder of "
        "<class>/ images (e.g. imagenet/val), 'cifar10' (torchvision download); default: the "
        "bundled pristine CIFAR-10 test split")
    split: str = flag("test", "split of a tree or archive; a one-split folder is used whole",
                      choices=SPLITS)
    resize: int | None = flag(
        None, "resize each image's shorter side to N (antialiased) when decoding; default 256 "
        "for ImageNet-trained torchvision models", metavar="N")
    crop: int | None = flag(
        None, "then centre-crop N x N; default 224 for ImageNet-trained torchvision models",
        metavar="N")
    limit: int | None = flag(None, "use the first N images", metavar="N")
    batch_size: int | None = flag(
        None, "images per batch (default: 512 on a GPU, 128 on the CPU)")


def _kind(tp: Any) -> tuple[type, bool]:
    """(element type, is a list) of a field annotation such as ``list[str] | None``."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        tp = args[0] if len(args) == 1 else str
    if typing.get_origin(tp) is list:
        (inner,) = typing.get_args(tp) or (str,)
        return inner, True
    return tp, False


def add_flags(parser: argparse.ArgumentParser, cls: type[Base]) -> argparse.ArgumentParser:
    """One option per field of ``cls`` (in field order); returns ``parser``."""
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        kw = dict(f.metadata)
        if "help" not in kw:
            continue
        positional = kw.pop("positional", False)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        elem, is_list = _kind(hints[f.name])
        if elem is bool and not is_list:
            parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name,
                                action="store_true", help=kw["help"])
            continue
        if "type" not in kw and elem in (int, float):
            kw["type"] = elem
        if is_list:
            kw.setdefault("nargs", "+")
        if positional:
            parser.add_argument(f.name, default=default, **kw)
        else:
            parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=default,
                                **kw)
    return parser


def parse(cls: type[T], argv: Sequence[str] | None, *, prog: str, description: str,
          parser: argparse.ArgumentParser | None = None) -> T:
    """``cls`` from command-line arguments (errors: one line, exit 2)."""
    p = parser or add_flags(ArgumentParser(prog=prog, description=description), cls)
    ns = p.parse_args(argv)
    return cls(**{f.name: getattr(ns, f.name) for f in fields(cls) if hasattr(ns, f.name)})
