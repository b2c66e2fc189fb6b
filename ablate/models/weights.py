"""Published weights: where each trained network comes from, and how to fetch and convert it.

In the spirit of torchvision's ``Weights`` enums: every entry names its architecture, source
repository, commit and URL, the sha256 of the original file, licence, input normalisation,
training recipe, the error its authors published and the error we measure on pristine CIFAR-10
(the bundled test split). Bundled entries ship converted (safetensors + card + LICENSE) in
``ablate/checkpoints``; the others are downloaded on first use into the cache, verified by
sha256 before anything is kept, then converted.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .._infra.errors import UsageError
from .._infra.io import file_lock as locked  # first users of one cache entry wait in turn
from ..data import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["WEIGHTS", "Weights", "convert", "download", "get", "locked", "original_state",
           "verify"]

MAX_DOWNLOAD_BYTES = 1 << 30  # the largest published file (resnet1202) is 77 MB

IMAGENET_NORM = (IMAGENET_MEAN, IMAGENET_STD)
MARTYN_NORM = ((0.49187,) * 3, (0.24697,) * 3)  # one value for all channels, as trained

_AKAMASTER = {
    "source": "akamaster/pytorch_resnet_cifar10",
    "commit": "d5489e8",
    "license": "BSD-2-Clause",
    "license_file": "LICENSE-akamaster",
    "normalization": IMAGENET_NORM,
    "recipe": (
        "He et al. 2015 option-A ResNet; 200 epochs, SGD momentum 0.9, lr 0.1 /10 at epochs 100 "
        "and 150, batch 128, weight decay 1e-4, pad-4 crop + flip; best epoch chosen on the test "
        "set"
    ),
    "layout": "akamaster",
}
_MARTYN = {
    "source": "a-martyn/resnet",
    "commit": "a977915",
    "license": "BSD-3-Clause",
    "license_file": "LICENSE-a-martyn",
    "normalization": MARTYN_NORM,
    "recipe": (
        "He et al. 2015 plain net (no shortcuts); 64k iterations, SGD momentum 0.9, lr 0.1 /10 at "
        "32k and 48k, batch 128, weight decay 1e-4, pad-4 crop + flip"
    ),
    "layout": "a-martyn",
}
_AKA_URL = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/"
_MARTYN_URL = "https://github.com/a-martyn/resnet/raw/master/pretrained/"


@dataclass(frozen=True)
class Weights:
    """One published checkpoint. ``sha256`` may be a prefix where only that is published."""

    name: str  # what ``ablate.load(name)`` and ``--model name`` take
    arch: str  # registry architecture
    family: str  # "resnet" | "plain": what the weights were trained as
    file: str  # the original file name
    url: str
    sha256: str
    published_error: float  # %, as published by the authors
    measured_error: float | None  # %, measured by ablate on pristine CIFAR-10 (None: not yet)
    bundled: bool
    source: str
    commit: str
    license: str
    license_file: str
    normalization: tuple[tuple[float, ...], tuple[float, ...]]
    recipe: str
    layout: str  # "akamaster" | "a-martyn": how the original keys map onto ours
    # The git blob id (SHA-1 of b"blob <size>\0" + content) recorded by the source repository's
    # tree at ``commit``: checked too where ``sha256`` is only a prefix.
    git_blob: str | None = None

    def card(self) -> dict:
        """What a converted checkpoint's card records about its origin."""
        mean, std = self.normalization
        return {
            "arch": self.arch, "family": self.family, "dataset": "cifar10",
            "normalization": {"mean": list(mean), "std": list(std)},
            "weights": {k: v for k, v in asdict(self).items() if k not in ("normalization",)},
        }


def _aka(depth: int, digest: str, published: float, measured: float | None, bundled: bool,
         git_blob: str | None = None):
    # Entries fetched on demand carry the source in their name, so that an architecture name
    # alone (resnet110: our own bundled net) never starts a download.
    file = f"resnet{depth}-{digest[:8]}.th"
    name = f"resnet{depth}" if bundled else f"resnet{depth}-akamaster"
    return Weights(name, f"resnet{depth}", "resnet", file, _AKA_URL + file, digest,
                   published, measured, bundled, **_AKAMASTER, git_blob=git_blob)


def _martyn(depth: int, digest: str, published: float, measured: float):
    file = f"plainnet{depth}.pt"
    return Weights(f"plain{depth}", f"plain{depth}", "plain", file, _MARTYN_URL + file, digest,
                   published, measured, True, **_MARTYN)


WEIGHTS: dict[str, Weights] = {w.name: w for w in (
    _aka(20, "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8", 8.27, 8.27, True),
    _aka(32, "d509ac1820d7f25398913559d7e81a13229b1e7adc5648e3bfa5e22dc137f850", 7.37, 7.37, True),
    _aka(44, "014dd6541728a1c700b1642ab640e211dc6eb8ed507d70697458dc8f8a0ae2e4", 6.90, 6.90, True),
    _aka(56, "4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367", 6.61, 6.61, True),
    # Upstream, not obtainable here: the sha256 prefix in the file name and the git blob id of
    # the repository's tree at d5489e8 are known; both are checked.
    _aka(110, "1d1ed7c2", 6.32, None, False, "45daff3ec1b813c24feb5e17d2208a79066e42d2"),
    _aka(1202, "f3b1deed", 6.18, None, False, "bdb9ff6fbe6b0b4f63f0af9713589e89c453c1cf"),
    _martyn(20, "0f77669a030c3ed83c4cb51a14657ff5b9382a0204a1f2e74f817489b55322a2", 9.50, 9.69),
    _martyn(32, "66116e99103f8f23cb5a2abbe8ede59aadc8ee1035f92dc4bdb950bd8f129d4b", 9.92, 10.04),
    _martyn(44, "daa3c99abdf9db6863d49b4720cf913454d42600370b192a0ed983362e80945d", 11.35, 11.56),
    _martyn(56, "1d7483c8dc8f800679882758eaf1fb2d929d847597b058a44ede98904775b221", 12.76, 13.07),
)}


def get(name: str) -> Weights | None:
    return WEIGHTS.get(name)


def _martyn_key(key: str) -> str:
    """a-martyn's key layout -> ours (his ``convIn``/``stack2a`` names; see ``convert``)."""
    for theirs, ours in (("convIn.", "conv1."), ("bnIn.", "bn1."), ("fcOut.", "linear."),
                         ("stack2a.", "layer2.0."), ("stack3a.", "layer3.0.")):
        if key.startswith(theirs):
            return ours + key[len(theirs):]
    if m := re.match(r"stack1\.(\d+)\.(.*)", key):
        return f"layer1.{m[1]}.{m[2]}"
    if m := re.match(r"stack([23])b\.(\d+)\.(.*)", key):
        return f"layer{m[1]}.{int(m[2]) + 1}.{m[3]}"
    raise UsageError(f"unexpected key {key!r} in an a-martyn plain-net checkpoint: not that layout")


def convert(state: dict[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    """An original state dict in ``layout`` -> our key layout (tensors unchanged)."""
    if layout == "akamaster":
        return {re.sub(r"^module\.", "", k): v for k, v in state.items()}
    if layout == "a-martyn":
        return {_martyn_key(k): v for k, v in state.items()}
    raise ValueError(f"unknown layout {layout!r}")


def original_state(w: Weights, path: str | Path) -> dict[str, torch.Tensor]:
    """Read an original file (tensors only, never arbitrary pickles) and convert it."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UsageError(f"{path} is not a readable {w.source} checkpoint ({e}); delete it and "
                         "download again") from None
    state = obj["state_dict"] if isinstance(obj, dict) and "state_dict" in obj else obj
    return convert(dict(state), w.layout)


def digests(path: str | Path, chunk: int = 1 << 20) -> tuple[str, str]:
    """(sha256, git blob id) of a file, in one pass."""
    size = os.path.getsize(path)
    sha, blob = hashlib.sha256(), hashlib.sha1(f"blob {size}\0".encode())
    with open(path, "rb") as f:
        while block := f.read(chunk):
            sha.update(block)
            blob.update(block)
    return sha.hexdigest(), blob.hexdigest()


def verify(w: Weights, path: str | Path) -> str | None:
    """The full sha256 of ``path`` if it is ``w``'s published file (its sha256, or the prefix
    known, and its git blob id where known), else None."""
    sha, blob = digests(path)
    ok = sha.startswith(w.sha256) and (w.git_blob is None or blob == w.git_blob)
    return sha if ok else None



def download(w: Weights, cache: Path, opener: Callable | None = None) -> Path:
    """The original file of ``w`` in ``cache``, downloaded and checked if not there yet: its
    sha256 (or the prefix published) and, where known, the git blob id of the source tree.

    The download goes to a temporary file that is renamed into place only once it verifies, so
    nothing half-downloaded or wrong is ever kept; a download cut short, a network or HTTP error
    is one line.
    """
    dest = cache / "weights" / w.file
    if dest.is_file() and verify(w, dest):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{w.file}.", suffix=".part")
    fix = f"with no internet, pass --checkpoint PATH to a copy of {w.file}"
    try:
        with os.fdopen(fd, "wb") as out, (opener or urllib.request.urlopen)(w.url) as src:
            total = 0
            while chunk := src.read(1 << 20):
                total += len(chunk)
                if total > MAX_DOWNLOAD_BYTES:
                    raise UsageError(f"download of {w.name} from {w.url} is larger than "
                                     f"{MAX_DOWNLOAD_BYTES >> 20} MiB, the limit: not the "
                                     f"published file; {fix}")
                out.write(chunk)
        if verify(w, tmp) is None:
            got, blob = digests(tmp)
            raise UsageError(f"download of {w.name} from {w.url} has sha256 {got[:16]}... (git "
                             f"blob {blob[:12]}...), expected {w.sha256[:16]}..."
                             + (f" (git blob {w.git_blob[:12]}...)" if w.git_blob else "")
                             + ": not the published file; try again later")
        os.replace(tmp, dest)
    except (OSError, http.client.HTTPException, ValueError) as e:  # cut short: IncompleteRead
        why = " ".join(str(e).split())[:160] or type(e).__name__
        raise UsageError(f"cannot download {w.name} from {w.url} ({type(e).__name__}: {why}); "
                         f"{fix}") from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    return dest

