"""The decoded-data cache: one ``.pt`` file per source, split and resize/crop, keyed by the
source's file stats, with a checksum of its contents: a cache file that was altered (a flipped
bit, edited labels) or cut short is rebuilt from the source, never loaded."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path

import torch

from ablate._infra.errors import UsageError
from ablate._infra.io import atomic_write

from .readers import PICKLE_ERRORS, Transform, decode, split_image, walk, wanted

__all__ = ["load_path", "checksum"]

_AS_IS = Transform()
_CACHE_VERSION = 1  # bump when the decoded layout or ordering changes


def load_path(path: Path, split: str, cache: Path, *, quiet: bool,
              tf: Transform = _AS_IS) -> dict:
    """The cached decode of ``path``/``split`` if valid, else decode it and cache it:
    {"images", "labels", "classes", "name"}."""
    key = _cache_key(path, split, tf)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", path.name)[:60]
    cache_file = cache / "data" / f"{stem}-{split}{tf.tag}-{key[:24]}.pt"
    obj = _read_cache(cache_file, quiet)
    if obj is None:
        obj = decode(path, split, tf)
        stored = {**obj, "checksum": checksum(obj)}
        try:
            atomic_write(cache_file, lambda p: torch.save(stored, p))
        except (OSError, RuntimeError) as e:  # a full disk: torch.save raises RuntimeError
            if not quiet:
                why = " ".join(str(e).split())[:160] or type(e).__name__
                print(f"data: cannot write cache {cache_file} ({why}); continuing without it",
                      file=sys.stderr)
    return obj


def checksum(obj: dict) -> str:
    """sha256 of a decoded split: images, labels, class names and data set name."""
    h = hashlib.sha256(json.dumps([list(obj["classes"]), obj["name"],
                                   list(obj["images"].shape)]).encode())
    h.update(obj["images"].contiguous().numpy().tobytes())
    h.update(obj["labels"].contiguous().numpy().tobytes())
    return h.hexdigest()


def _cache_key(path: Path, split: str, tf: Transform = _AS_IS) -> str:
    """Hash of (path, size, mtime_ns, split[, resize, crop]); a folder hashes its files' stats."""
    if path.is_dir():
        files, dirs = walk(path)
        used = [f for f in sorted(files) if wanted(f, split) or split_image(f)]
        stats = [(f, *_stat(os.path.join(path, f))) for f in used]
        stats += sorted(dirs)
    else:
        stats = [("", *_stat(path))]
    parts = [_CACHE_VERSION, str(path), split, stats]
    if tf:  # without resize/crop the key is what it always was: existing caches stay valid
        parts.append([tf.resize, tf.crop])
    blob = json.dumps(parts)
    return hashlib.sha256(blob.encode()).hexdigest()


def _stat(p: str | Path) -> tuple[int, int]:
    """(size, mtime) of a data file; a link to nothing or a link loop is one line (what is
    not a regular file is refused when read)."""
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise UsageError(f"{p} is a link to nothing: remove it or point it at the file") from None
    except OSError as e:
        raise UsageError(f"{p} cannot be read ({e.strerror or type(e).__name__}, e.g. a link "
                         "loop): remove it or replace it with the file") from None
    return st.st_size, st.st_mtime_ns


def _read_cache(cache_file: Path, quiet: bool = True) -> dict | None:
    """The cached dict, or None when absent, unreadable, malformed or altered (it is then
    rebuilt)."""
    if not cache_file.is_file():
        return None
    try:
        obj = torch.load(cache_file, weights_only=True)
        images, labels = obj["images"], obj["labels"]
        ok = (
            images.dtype == torch.uint8
            and images.dim() == 4
            and labels.dtype == torch.int64
            and labels.shape == images.shape[:1]
            and isinstance(obj["name"], str)
            and all(isinstance(c, str) for c in obj["classes"])
        )
        if ok and obj.get("checksum") != checksum(obj):
            if not quiet:
                why = ("has no checksum (written by an older ablate)" if "checksum" not in obj
                       else "does not match its checksum")
                print(f"data: cache {cache_file.name} {why}; rebuilding it from the source",
                      file=sys.stderr)
            return None
        if ok:
            obj.pop("checksum")
        return obj if ok else None
    except (OSError, RuntimeError, *PICKLE_ERRORS):  # an unreadable cache is rebuilt
        return None
