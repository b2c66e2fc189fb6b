"""A data split in memory as one uint8 tensor: decode once, cache, then move to the device once.

``load`` reads the bundled offline test split, torchvision's CIFAR, a python-batches folder, an
ImageFolder tree (a folder or a .tar/.tar.gz of one), or a folder that is one split
(``<class>/*.jpg``, e.g. ImageNet's ``val/``), and caches the decoded tensor, so a second run
loads in well under a second. Images of different sizes (ImageNet) need ``resize``/``crop``: the
standard evaluation preprocessing, done once at decode time. ``batches`` then yields normalized
float batches without any per-image Python work.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ablate._infra.errors import UsageError

from . import bundled
from .cache import load_path
from .readers import CIFAR10_CLASSES, FORMATS, SPLITS, Transform, torchvision_split

__all__ = [
    "BUNDLED",
    "CIFAR10_CLASSES",
    "SPLITS",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Dataset",
    "batches",
    "load",
    "normalize",
]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

BUNDLED = bundled.ASSETS / bundled.WEBP


@dataclass(frozen=True, eq=False)
class Dataset:
    """A whole split in memory: uint8 images [N, 3, H, W] (CPU, contiguous) and int64 labels."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    name: str  # "cifar10", "cifar100", "cifar10-jpeg", "imagenet" or "imagefolder"
    split: str  # "train" | "test" (what was asked for; a one-split folder is taken as it)
    source: str  # a path, "bundled" or "torchvision"

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __repr__(self) -> str:
        shape = "x".join(str(s) for s in self.images.shape)
        return (
            f"Dataset(name={self.name!r}, split={self.split!r}, images={shape}, "
            f"classes={len(self.classes)}, source={self.source!r})"
        )

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 of the images and labels as evaluated (after any resize/crop and --limit):
        results are keyed by it, so other data of the same name and size is never mistaken
        for these."""
        h = hashlib.sha256()
        h.update(repr((tuple(self.images.shape), tuple(self.classes))).encode())
        h.update(self.images.contiguous().cpu().numpy().tobytes())
        h.update(self.labels.contiguous().cpu().numpy().tobytes())
        return h.hexdigest()

    def subset(self, n: int | None) -> Dataset:
        """The first ``n`` images (``None`` or ``n >= len``: all of them); backs ``--limit``."""
        if n is None or n >= len(self):
            return self
        if n < 1:
            raise UsageError(f"--limit must be a positive number of images, got {n}")
        return dataclasses.replace(self, images=self.images[:n], labels=self.labels[:n])


def normalize(
    images: torch.Tensor,
    mean: Sequence[float] | torch.Tensor,
    std: Sequence[float] | torch.Tensor,
    *,
    dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """uint8 images [..., C, H, W] on any device -> float32 ``(x / 255 - mean) / std``.

    The one uint8 -> float conversion: evaluation, the batched variants, attribution, path
    gradients and the trainer all call it, so every path sees bitwise the same inputs. ``mean``
    and ``std`` may be [C] float32 tensors already on the images' device (no copy per call);
    ``dtype`` casts the result (e.g. to the model's), ``channels_last`` sets its memory format.
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"normalize expects uint8 images, got {images.dtype}")
    m = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(-1, 1, 1)
    x = images.float().div_(255.0).sub_(m).div_(s)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x if dtype is None else x.to(dtype)


def batches(
    ds: Dataset,
    batch_size: int,
    device: torch.device | str = "cpu",
    mean: Sequence[float] = CIFAR10_MEAN,
    std: Sequence[float] = CIFAR10_STD,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (normalized float images, labels) in order; the uint8 split moves to device once."""
    if batch_size < 1:
        raise UsageError(f"--batch-size must be a positive integer, got {batch_size}")
    images = ds.images.to(device)
    labels = ds.labels.to(device)
    for i in range(0, len(ds), batch_size):
        yield normalize(images[i : i + batch_size], mean, std), labels[i : i + batch_size]


def load(
    source: str | os.PathLike | None = None,
    split: str = "test",
    *,
    cache_dir: str | os.PathLike | None = None,
    download: bool = False,
    quiet: bool = False,
    resize: int | None = None,
    crop: int | None = None,
) -> Dataset:
    """Load one split of a data set as uint8 tensors, decoding once and caching the result.

    ``source``: None/"bundled" (the shipped pristine CIFAR-10 test split), "cifar10"/"cifar100"
    (torchvision, stored under ``cache_dir``), or a path to a python-batches folder, an ImageFolder
    tree, or a .tar/.tar.gz/.tgz of either (the tree may sit one folder down). The names
    "bundled", "cifar10" and "cifar100" win over same-named folders: write ./cifar10 for those.
    ImageFolder images are interleaved across classes (image 0 of every class, then image 1, ...),
    so the first n of a split are class-balanced for ``--limit``.

    A folder whose subfolders hold the images directly (``<dir>/<class>/*.jpg|jpeg|png``, such as
    ImageNet's ``val/`` sorted into its 1000 wnid folders) is one split: ``split`` is then not
    looked up (the folder is taken as that split), and ``name`` is "imagenet" for 1000 classes.
    This layout is read from folders only, not from archives.

    ``resize``: resize every image so its shorter side is this long (bilinear, antialiased);
    ``crop``: then take the centre ``crop`` x ``crop``. Both are done once per image at decode
    time on uint8 tensors and are part of the cache key; ``resize=256, crop=224`` is the standard
    ImageNet evaluation preprocessing. Images of mixed sizes need them (else a UsageError).
    """
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}; use one of: {', '.join(SPLITS)}")
    for flag, v in (("--resize", resize), ("--crop", crop)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise UsageError(f"{flag} must be a positive number of pixels, got {v!r}")
    tf = Transform(resize, crop)
    cache = Path(cache_dir or os.environ.get("ABLATE_CACHE") or Path.home() / ".cache" / "ablate")
    if source is None or str(source) == "bundled":
        if split != "test":
            raise UsageError(
                f"the bundled data holds only the CIFAR-10 test split, not {split!r}; "
                "pass --data PATH to the full data set (e.g. cifar10-png.tar.gz)"
            )
        if not quiet:
            print(bundled.NOTE, file=sys.stderr)
        images, labels, classes = bundled.load()
        return Dataset(tf.batched(images), labels, classes, "cifar10", "test", "bundled")
    if str(source) in ("cifar10", "cifar100"):
        obj, label = torchvision_split(str(source), split, cache, download, tf), "torchvision"
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise UsageError(f"data path {str(path)!r} does not exist; pass --data PATH to "
                             f"{FORMATS}")
        label = str(path.resolve())
        obj = load_path(path.resolve(), split, cache, quiet=quiet, tf=tf)
    return Dataset(images=obj["images"], labels=obj["labels"], classes=tuple(obj["classes"]),
                   name=obj["name"], split=split, source=label)
