"""The bundled offline data: the pristine CIFAR-10 test split as one lossless WebP.

10,000 images tiled 100 x 100 into a 3200 x 3200 WebP (lossless: every pixel is the original
CIFAR-10 byte) with a JSON manifest beside it (labels, classes, sha256 of the decoded tensors).
Decoding takes about 0.25 s; the hashes are checked on every load, so a damaged file is an error,
never silently different data. ``scripts/make_bundled_testset.py`` rebuilds both from
``cifar10-png.tar.gz`` and checks them bitwise against that archive's decode.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import torch

from ablate._infra.errors import UsageError

ASSETS = Path(__file__).resolve().parent.parent / "assets"
WEBP = "cifar10-test.webp"
MANIFEST = "cifar10-test.json"
N, TILES, SIZE = 10_000, 100, 32
NOTE = (
    "data: using the bundled pristine CIFAR-10 test split (10,000 images, lossless, named "
    "cifar10); pass --data PATH for other data"
)


def tensor_sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()


def to_grid(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 3, 32, 32] -> [3, 3200, 3200], image i at tile (i // 100, i % 100)."""
    t = images.reshape(TILES, TILES, 3, SIZE, SIZE).permute(2, 0, 3, 1, 4)
    return t.reshape(3, TILES * SIZE, TILES * SIZE).contiguous()


def from_grid(grid: torch.Tensor) -> torch.Tensor:
    """The inverse of ``to_grid``."""
    t = grid.reshape(3, TILES, SIZE, TILES, SIZE).permute(1, 3, 0, 2, 4)
    return t.reshape(N, 3, SIZE, SIZE).contiguous()


def load(folder: Path = ASSETS) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """Decode the bundled split: (uint8 images [N, 3, 32, 32], int64 labels, class names)."""
    from torchvision.io import ImageReadMode, decode_image

    fix = "reinstall ablate (pip install --force-reinstall ablate) or pass --data PATH"
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        raw = (folder / WEBP).read_bytes()
        with warnings.catch_warnings():  # torchvision 0.29 flags its image io as deprecated
            warnings.simplefilter("ignore", DeprecationWarning)
            grid = decode_image(torch.frombuffer(bytearray(raw), dtype=torch.uint8),
                                ImageReadMode.RGB)
        images = from_grid(grid)
        labels = torch.tensor([int(c) for c in manifest["labels"]], dtype=torch.int64)
        classes = tuple(manifest["classes"])
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as e:
        raise UsageError(f"the bundled CIFAR-10 test split is unreadable ({e}); {fix}") from None
    if (tensor_sha256(images), tensor_sha256(labels)) != (
        manifest["images_sha256"], manifest["labels_sha256"]
    ):
        raise UsageError(f"the bundled CIFAR-10 test split fails its checksum; {fix}")
    return images, labels, classes
