"""Decoding a data set into uint8 tensors: CIFAR python batches (read by a restricted unpickler:
a data file is untrusted input and never runs code), ImageFolder trees and one-split folders,
from folders or .tar/.tar.gz archives, with the resize/crop done once per image."""

from __future__ import annotations

import io
import os
import pickle
import posixpath
import stat
import tarfile
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ablate._infra.errors import UsageError

__all__ = ["CIFAR10_CLASSES", "SPLITS", "FORMATS", "Transform", "decode", "torchvision_split",
           "walk", "wanted", "split_image", "unpickle"]

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
SPLITS = ("train", "test")
IMAGE_EXTS = (".jpg", ".jpeg", ".png")
JPEG_EXTS = (".jpg", ".jpeg")
PICKLE_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    LookupError,
    TypeError,
    ValueError,
    AttributeError,
    ImportError,
)  # what a malformed pickle raises
FORMATS = (
    "'bundled', 'cifar10'/'cifar100' (torchvision), a CIFAR python-batches folder, "
    "an ImageFolder tree (train|test/<class>/*.jpg|png) or a .tar.gz/.tgz/.tar of either, "
    "or a folder that is one split (<class>/*.jpg|png, e.g. imagenet/val)"
)
_SIZE_FIX = "--resize 256 --crop 224 (the ImageNet evaluation preprocessing)"

# Limits on what is read: a data file is untrusted, and a small archive or a link can stand for
# gigabytes (a gzip of zeros, /dev/zero). Each is stated in the message that refuses it.
MAX_IMAGE_BYTES = 64 << 20  # one image file (ImageNet's largest JPEG is ~15 MB)
MAX_IMAGE_PIXELS = 1 << 27  # one image's width x height, read from its header before decoding
MAX_BATCH_BYTES = 512 << 20  # one CIFAR python batch (CIFAR-100's train is 155 MB)
MAX_ARCHIVE_BYTES = 2 << 30  # an archive's whole decompressed content (unpack larger ones)


@dataclass(frozen=True)
class Transform:
    """Shorter side to ``resize`` (antialiased bilinear), then the centre ``crop`` x ``crop``."""

    resize: int | None = None
    crop: int | None = None

    def __bool__(self) -> bool:
        return self.resize is not None or self.crop is not None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [..., 3, H, W] -> uint8 [..., 3, H', W'] (unchanged when nothing was asked)."""
        if not self:
            return images
        from torchvision.transforms.v2 import functional as F

        if self.resize is not None:
            images = F.resize(images, [self.resize], antialias=True)
        if self.crop is not None:
            images = F.center_crop(images, [self.crop])
        return images

    def batched(self, images: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
        """The transform of a whole [N, 3, H, W] split, a chunk at a time into one tensor."""
        if not self or len(images) == 0:
            return images
        first = self(images[:chunk])
        out = torch.empty((len(images), *first.shape[1:]), dtype=torch.uint8)
        out[: len(first)] = first
        for i in range(chunk, len(images), chunk):
            out[i : i + chunk] = self(images[i : i + chunk])
        return out

    @property
    def tag(self) -> str:
        """``""``, or e.g. ``-r256-c224`` for cache file names."""
        r = f"-r{self.resize}" if self.resize is not None else ""
        return r + (f"-c{self.crop}" if self.crop is not None else "")



def walk(root: Path) -> tuple[set[str], set[str]]:
    """Relative POSIX paths of files and folders up to three levels below ``root`` (all layouts)."""
    files, dirs = set(), set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root).as_posix()
        rel = "" if rel == "." else rel + "/"
        dirnames[:] = [d for d in dirnames if not d.startswith(".")] if rel.count("/") < 3 else []
        dirs.update(rel + d for d in dirnames)
        files.update(rel + f for f in filenames if not f.startswith("."))
    return files, dirs


def _mib(n: int) -> str:
    return f"{n / (1 << 30):g} GiB" if n >= 1 << 30 else f"{n / (1 << 20):g} MiB"


def limit_for(name: str) -> int:
    """The most bytes read from the file ``name``: an image's or a CIFAR batch's limit."""
    return MAX_IMAGE_BYTES if name.lower().endswith(IMAGE_EXTS) else MAX_BATCH_BYTES


def read_file(path: Path, shown: str | None = None) -> bytes:
    """The bytes of a regular file of a data set, at most ``limit_for`` its name; a link to
    nothing, a link loop, a device (``/dev/zero``), a pipe or a larger file is one line."""
    shown = shown or str(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UsageError(f"{shown} is a link to nothing: remove it or point it at the file"
                         ) from None
    except OSError as e:
        raise UsageError(f"{shown} cannot be read ({e.strerror or type(e).__name__}, e.g. a "
                         "link loop): remove it or replace it with the file") from None
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{shown} is not a regular file (a device, pipe or socket): remove it "
                         "from the data set")
    limit = limit_for(path.name)
    if st.st_size > limit:
        raise UsageError(f"{shown} is {_mib(st.st_size)}, over the {_mib(limit)} limit for one "
                         "file of a data set: remove it or shrink it")
    try:
        with open(path, "rb") as f:
            blob = f.read(limit + 1)
    except OSError as e:
        raise UsageError(f"{shown} cannot be read ({e.strerror or type(e).__name__}): check "
                         "the file") from None
    if len(blob) > limit:  # grew while being read
        raise UsageError(f"{shown} is over the {_mib(limit)} limit for one file of a data set: "
                         "remove it or shrink it")
    return blob


def decode(path: Path, split: str, tf: Transform = Transform()) -> dict:
    """Decode ``split`` of a folder or archive into {"images", "labels", "classes", "name"}."""
    if path.is_dir():
        files, dirs = walk(path)
        return _from_listing(
            path, split, files, dirs,
            lambda n: read_file(path / n, f"{n} in {str(path)!r}"), tf, folder=True,
        )
    if not path.name.lower().endswith((".tar.gz", ".tgz", ".tar")):
        raise UsageError(
            f"{str(path)!r} is not a recognised data set; pass --data PATH to {FORMATS}"
        )
    try:
        st = os.stat(path)
    except OSError as e:
        raise UsageError(f"archive {str(path)!r} cannot be read ({e.strerror or type(e).__name__})"
                         ": pass --data PATH to a regular file") from None
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"archive {str(path)!r} is not a regular file (a device, pipe or "
                         "socket): pass --data PATH to an archive file")
    names, dirs, blobs = set(), set(), {}
    total = 0
    try:
        with tarfile.open(path, "r:*") as archive:
            for m in archive:  # one sequential pass, keeping only the bytes this split may need
                name = posixpath.normpath(m.name.lstrip("/"))
                total += max(m.size, 0)
                if total > MAX_ARCHIVE_BYTES:
                    raise UsageError(
                        f"archive {str(path)!r} expands to more than {_mib(MAX_ARCHIVE_BYTES)}, "
                        "the limit for an archive: unpack it and pass --data FOLDER"
                    )
                if m.isdir():
                    dirs.add(name)
                elif m.isfile() and not posixpath.basename(name).startswith("."):
                    names.add(name)
                    if wanted(name, split):
                        limit = limit_for(name)
                        if m.size > limit:
                            raise UsageError(
                                f"{name} in {str(path)!r} is {_mib(m.size)}, over the "
                                f"{_mib(limit)} limit for one file of a data set: remove it "
                                "or shrink it"
                            )
                        blobs[name] = archive.extractfile(m).read(limit + 1)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise UsageError(
            f"cannot read archive {str(path)!r} ({_oneline(e)}); re-download or re-create it"
        ) from None
    return _from_listing(path, split, names, dirs, blobs.__getitem__, tf)


def wanted(name: str, split: str) -> bool:
    """Whether an archive member may belong to ``split`` in either layout (read it then)."""
    parts = name.split("/")
    if len(parts) in (3, 4) and parts[-3] == split and name.lower().endswith(IMAGE_EXTS):
        return True
    return len(parts) <= 2 and _batch_file(parts[-1], split)


def split_image(name: str) -> bool:
    """Whether ``name`` is ``<class>/<image>``: an image of a folder that is one split."""
    return name.count("/") == 1 and name.lower().endswith(IMAGE_EXTS)


def _batch_file(base: str, split: str) -> bool:
    if base in ("batches.meta", "meta", split):
        return True
    return base == "test_batch" if split == "test" else base.startswith("data_batch_")


def _from_listing(
    root: Path,
    split: str,
    files: set[str],
    dirs: set[str],
    read,
    tf: Transform = Transform(),
    *,
    folder: bool = False,
) -> dict:
    """Find the layout among relative ``files``/``dirs`` (top level first) and decode ``split``.

    ``folder``: ``root`` is a folder, so it may also be one split (``<class>/*.jpg``).
    """
    dirs = set(dirs)
    for f in files | dirs:  # archives need not list every parent folder as a member
        while "/" in f:
            f = f.rsplit("/", 1)[0]
            dirs.add(f)
    prefixes = sorted({""} | {f.split("/")[0] + "/" for f in files | dirs if "/" in f})
    for prefix in prefixes:  # "" (top level) sorts first
        if f"{prefix}batches.meta" in files or f"{prefix}meta" in files:
            return _python_batches(root, prefix, split, files, read, tf)
        if any(f"{prefix}{s}" in dirs for s in SPLITS):
            return _image_folder(root, prefix, split, files, dirs, read, tf)
    if folder and any(split_image(f) for f in files):
        classes = sorted(d for d in dirs if "/" not in d)
        return _image_split(root, "", classes, files, read, tf)
    nested = sorted(
        {f.split("/")[0] for f in files if f.count("/") == 2 and f.lower().endswith(IMAGE_EXTS)}
    )
    if folder and nested:  # e.g. --data imagenet holding only val/<class>/*.JPEG
        raise UsageError(
            f"{str(root)!r} is not a recognised data set: pass --data "
            f"{str(root / nested[0])!r} (a folder of <class>/ image folders), or see --help"
        )
    raise UsageError(f"{str(root)!r} is not a recognised data set; pass --data PATH to {FORMATS}")


def _python_batches(
    root: Path, prefix: str, split: str, files: set[str], read, tf: Transform
) -> dict:
    """CIFAR-10 (data_batch_1..5, test_batch) or CIFAR-100 (train, test) pickled numpy batches."""
    c100 = f"{prefix}meta" in files and f"{prefix}batches.meta" not in files
    if c100:
        meta_name, label_key, names_key = "meta", "fine_labels", "fine_label_names"
        names = [split]
    elif split == "test":
        meta_name, label_key, names_key = "batches.meta", "labels", "label_names"
        names = ["test_batch"]
    else:
        meta_name, label_key, names_key = "batches.meta", "labels", "label_names"
        found = [f[len(prefix) :] for f in files if f.startswith(f"{prefix}data_batch_")]
        names = sorted(n for n in found if n[len("data_batch_") :].isdigit())
        names.sort(key=lambda n: int(n[len("data_batch_") :]))
    names = [n for n in names if f"{prefix}{n}" in files]
    if not names:
        raise UsageError(
            f"split {split!r} is missing from {str(root)!r}; pass --data PATH to a copy that has it"
        )
    try:
        meta = unpickle(read(f"{prefix}{meta_name}"))
        classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta[names_key]]
        images, labels = [], []
        for n in names:
            d = unpickle(read(f"{prefix}{n}"))
            data = np.asarray(d["data"], dtype=np.uint8)
            images.append(torch.from_numpy(data.reshape(len(data), 3, 32, 32).copy()))
            labels.append(torch.as_tensor(np.asarray(d[label_key], dtype=np.int64)))
    except PICKLE_ERRORS as e:  # any malformed pickle is one user-facing error
        raise UsageError(
            f"corrupt CIFAR batch file in {str(root)!r} ({_oneline(e)}); re-download the data set"
        ) from None
    images_t, labels_t = torch.cat(images).contiguous(), torch.cat(labels)
    bad = len(labels_t) == 0 or int(labels_t.min()) < 0 or int(labels_t.max()) >= len(classes)
    if len(images_t) != len(labels_t) or bad:
        raise UsageError(f"corrupt CIFAR batch file in {str(root)!r}; re-download the data set")
    name = "cifar100" if c100 else "cifar10"
    images_t = tf.batched(images_t)
    return {"images": images_t, "labels": labels_t, "classes": classes, "name": name}


class _BatchUnpickler(pickle.Unpickler):
    """Admits only what CIFAR python batches hold: dicts, lists, str, bytes, numbers and numpy
    arrays (their reconstruction and dtypes). Any other global (``os.system``, a class with a
    ``__reduce__`` payload) is refused before it is called."""

    ALLOWED = frozenset({
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"), ("builtins", "bytearray"),
    })

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused {module}.{name}: not part of a CIFAR batch")


def unpickle(blob: bytes) -> dict:
    """A CIFAR batch dict with str keys; the originals (Python 2) have bytes keys, re-dumps not.
    Read by a restricted unpickler: a data file never runs code."""
    d = _BatchUnpickler(io.BytesIO(blob), encoding="bytes").load()
    if not isinstance(d, dict):
        raise pickle.UnpicklingError(f"a {type(d).__name__}, not a dict")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}


def _image_folder(root: Path, prefix: str, split: str, files, dirs, read, tf: Transform) -> dict:
    """ImageFolder: classes are the sorted class folders of train/ and test/ together."""
    split_dirs = (f"{prefix}train", f"{prefix}test")
    classes = sorted({d.rsplit("/", 1)[-1] for d in dirs if posixpath.dirname(d) in split_dirs})
    classes = [c for c in classes if not c.startswith(".")]
    if f"{prefix}{split}" not in dirs:
        other = [d for d in ("val", "validation") if f"{prefix}{d}" in dirs]
        fix = (
            f"pass --data {str(root / prefix / other[0])!r} to use that one split folder"
            if other and root.is_dir()
            else "pass --data PATH to a copy that has it"
        )
        raise UsageError(f"split {split!r} is missing from {str(root)!r}; {fix}")
    if not classes:
        raise UsageError(
            f"{str(root)!r} has {prefix}{split}/ but no class folders in it; "
            f"lay it out as {split}/<class>/*.jpg|png"
        )
    return _image_split(root, f"{prefix}{split}/", classes, files, read, tf, shown=f"{split}/")


def _image_split(
    root: Path, head: str, classes: list[str], files, read, tf: Transform, shown: str = ""
) -> dict:
    """Decode the images ``head<class>/<image>`` of ``classes``; ``shown`` prefixes messages."""
    by_class: dict[str, list[str]] = {c: [] for c in classes}
    for f in files:
        parts = f[len(head) :].split("/")
        if f.startswith(head) and len(parts) == 2 and f.lower().endswith(IMAGE_EXTS):
            by_class.get(parts[0], []).append(f)
    for c, members in by_class.items():
        if not members:
            raise UsageError(
                f"class folder {shown}{c} in {str(root)!r} has no .jpg/.png images; "
                "add images or remove the folder"
            )
    per_class = [sorted(by_class[c]) for c in classes]
    order = [  # interleave: image i of every class, in class order, then image i + 1
        (members[i], label)
        for i in range(max(len(m) for m in per_class))
        for label, members in enumerate(per_class)
        if i < len(members)
    ]
    images, sizes = _decode_images([n for n, _ in order], read, root, tf)
    jpeg = any(n.lower().endswith(JPEG_EXTS) for n, _ in order)
    square = sizes == {(32, 32)}  # as stored, before any resize/crop
    if "cifar10-jpeg" in root.name.lower():
        name = "cifar10-jpeg"
    elif square and tuple(classes) == CIFAR10_CLASSES:
        name = "cifar10-jpeg" if jpeg else "cifar10"
    elif square and len(classes) == 100:
        name = "cifar100"
    elif len(classes) == 1000:
        name = "imagenet"
    else:
        name = "imagefolder"
    labels = torch.tensor([label for _, label in order], dtype=torch.int64)
    return {"images": images, "labels": labels, "classes": classes, "name": name}


def _decode_images(
    members: list[str], read, root: Path, tf: Transform = Transform()
) -> tuple[torch.Tensor, set[tuple[int, int]]]:
    """JPEG/PNG members -> uint8 [N, 3, H, W] RGB (grey, CMYK or RGBA become RGB), and the set of
    stored (H, W) sizes. Each image is read, decoded and resized/cropped before the next, into one
    preallocated tensor, so memory holds the result and one image (ImageNet val: 50000 JPEGs)."""
    out: torch.Tensor | None = None
    sizes: set[tuple[int, int]] = set()
    with warnings.catch_warnings():  # torchvision 0.29 warns on every call that io is deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        for i, member in enumerate(members):
            img = decode_rgb(read(member), f"{member} in {str(root)!r}")
            sizes.add((int(img.shape[-2]), int(img.shape[-1])))
            img = tf(img)
            if out is None:
                out = torch.empty((len(members), *img.shape), dtype=torch.uint8)
            elif img.shape != out.shape[1:]:
                after = " after resize/crop" if tf else ""
                fix = f"add --crop N (e.g. {_SIZE_FIX})" if tf else f"pass {_SIZE_FIX}"
                raise UsageError(
                    f"images of mixed sizes in {str(root)!r}{after}: {member} is "
                    f"{tuple(img.shape[1:])}, {members[0]} is {tuple(out.shape[2:])}; {fix}, "
                    "or resize them all to one size"
                )
            out[i] = img
    assert out is not None  # callers pass at least one member
    return out, sizes


def decode_rgb(blob: bytes, shown: str) -> torch.Tensor:
    """An image file's bytes -> uint8 [3, H, W] RGB, whatever its mode: grey, grey + alpha,
    palette, RGB, RGBA, CMYK (JPEG); 1, 2, 4, 8 or 16 bits per sample (16-bit samples are
    scaled to 8 bits by rounding v * 255 / 65535, not cut to their low byte); alpha is dropped.
    Anything else (an animation, another sample type, more pixels than ``MAX_IMAGE_PIXELS``)
    is one line."""
    from PIL import Image
    from torchvision.io import ImageReadMode, decode_image

    try:
        with Image.open(io.BytesIO(blob)) as header:  # reads the header only
            w, h = header.size
    except Image.DecompressionBombError:
        w = h = MAX_IMAGE_PIXELS
    except Exception as e:  # anything PIL cannot identify is not an image
        raise UsageError(f"cannot decode image {shown} ({_oneline(e)}); replace or remove it"
                         ) from None
    if w * h > MAX_IMAGE_PIXELS:
        raise UsageError(f"image {shown} has more than {MAX_IMAGE_PIXELS:,} pixels (the limit "
                         "for one image): replace or remove it")
    try:
        img = decode_image(torch.frombuffer(bytearray(blob), dtype=torch.uint8),
                           ImageReadMode.RGB)
    except (RuntimeError, ValueError) as e:  # an undecodable image is a user error
        raise UsageError(f"cannot decode image {shown} ({_oneline(e)}); replace or remove it"
                         ) from None
    if img.dtype == torch.uint16:  # 16 bits per sample: round to the nearest 8-bit value
        img = ((img.to(torch.int32) * 255 + 32767) // 65535).to(torch.uint8)
    if img.dtype != torch.uint8 or img.dim() != 3 or img.shape[0] != 3:
        raise UsageError(f"image {shown} decodes to {img.dtype} {tuple(img.shape)}, not one "
                         "8- or 16-bit RGB image: convert it to an 8-bit RGB PNG or JPEG")
    return img


def torchvision_split(
    name: str, split: str, cache: Path, download: bool, tf: Transform = Transform()
) -> dict:
    """torchvision's CIFAR10/100 under ``cache``, taking ``.data``/``.targets`` as whole arrays."""
    from torchvision import datasets

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    try:
        ds = cls(root=str(cache), train=split == "train", download=download)
    except (RuntimeError, OSError, ValueError) as e:  # not there, no internet, bad checksum
        how = "the download failed" if download else "it is not downloaded"
        raise UsageError(
            f"{name} is not available under {str(cache)!r} ({how}: {_oneline(e)[:120]}); "
            "pass --download with internet, or --data PATH to a local copy such as "
            "a cifar10-jpeg.tar.gz"
        ) from None
    images = tf.batched(torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2))))
    labels = torch.as_tensor(np.asarray(ds.targets, dtype=np.int64))
    classes = tuple(c.decode() if isinstance(c, bytes) else str(c) for c in ds.classes)
    return {"images": images, "labels": labels, "classes": classes, "name": name}


def _oneline(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__
