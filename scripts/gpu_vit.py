"""Train vit_cifar on a lent GPU from pristine CIFAR-10 carried in parts (the device tool).

The device machine receives at most 64 MiB per call, and the PNG archive is 135 MB. The train
split, tiled 100 x 100 per lossless WebP like the bundled test split (``ablate.data.bundled``),
is about 85 MB in five files; the test split travels in the package. Every WebP decodes bitwise
to the archive's decode: ``pack`` writes the sha256 of the decoded tensors into a manifest, and
``train`` refuses data whose hashes differ.

    python scripts/gpu_vit.py pack [SRC.tar.gz]    # here: .data/train-{0..4}.webp + train.json
    python3 scripts/gpu_vit.py receive             # there: keep the carried .data files in /tmp
    python3 scripts/gpu_vit.py train [--limit-train N] [--epochs N] [--compile] [--out DIR]
    python3 scripts/gpu_vit.py collect RUN_DIR     # there: the card, weights and log to $OUT

The recipe is the CPU run's (``scripts/train_vit_cpu.sh``: Lee et al. 2021, seed 0); on a GPU
the trainer picks bf16 autocast and the fused attention kernels, and the card says so.

How it went on an H200 (2026-11-27): every call also sends the tracked tree (52 MB then, most of
it ``ablate/checkpoints/*.safetensors`` and the bundled test WebP), so those were moved aside
during the calls: call 1 carried ``.data`` with train-0/1 (``receive``, then a speed probe:
eager 2,714 img/s, ``--compile`` 5,534 img/s after 36 s of compiling), call 2 train-2/3/4
(``receive``, then ``train --compile`` in the background under ``setsid``, collected when the
budget ran out: 53 epochs in 9 min, about 8.7 s each). ``collect`` brought ``last.pt`` back in
three parts; ``ablate.train --resume --change-device`` finishes the run on a CPU
(``OUT=~/ablate-runs/vit_cifar_gpu bash scripts/train_vit_cpu.sh --change-device``). Never
``pkill -f gpu_vit.py`` in the same command line: it matches the calling shell too.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ablate.data import Dataset, bundled  # noqa: E402

PARTS, PER = 5, bundled.N
LOCAL = ROOT / ".data"
KEEP = Path("/tmp/cifar10-train")


def pack(src: str) -> None:
    from PIL import Image

    from ablate._infra.io import atomic_write, write_json
    from ablate.data import load

    ds = load(src, "train", quiet=True)
    if ds.name != "cifar10" or len(ds) != PARTS * PER:
        raise SystemExit(f"error: {src} is not the pristine CIFAR-10 train split ({ds})")
    LOCAL.mkdir(exist_ok=True)
    for i in range(PARTS):
        grid = bundled.to_grid(ds.images[i * PER:(i + 1) * PER]).permute(1, 2, 0).numpy()
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(grid)).save(
            buf, "WEBP", lossless=True, quality=100, method=6, exact=True)
        atomic_write(LOCAL / f"train-{i}.webp", lambda p, b=buf: p.write_bytes(b.getvalue()))
        print(f"train-{i}.webp: {len(buf.getvalue())} bytes", flush=True)
    write_json(LOCAL / "train.json", {
        "source": Path(src).name, "classes": list(ds.classes),
        "labels": "".join(str(int(v)) for v in ds.labels),
        "images_sha256": bundled.tensor_sha256(ds.images),
        "labels_sha256": bundled.tensor_sha256(ds.labels),
    })
    images, labels = _decode(LOCAL)
    assert images.equal(ds.images) and labels.equal(ds.labels)
    print("decodes bitwise to the archive's train split")


def _decode(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The checked train split; before every part has arrived, the parts so far, unchecked
    (for a speed probe with --limit-train only)."""
    from PIL import Image

    manifest = json.loads((folder / "train.json").read_text())
    parts = []
    have = [i for i in range(PARTS) if (folder / f"train-{i}.webp").is_file()]
    if have != list(range(PARTS)):
        print(f"data: parts {have} only, unchecked: a speed probe, not a run", flush=True)
    for i in have:
        grid = np.asarray(Image.open(folder / f"train-{i}.webp").convert("RGB"))
        parts.append(bundled.from_grid(torch.from_numpy(grid.copy()).permute(2, 0, 1)))
    images = torch.cat(parts)
    labels = torch.tensor([int(c) for c in manifest["labels"]], dtype=torch.int64)
    if len(have) < PARTS:
        return images, labels[:len(images)]
    got = (bundled.tensor_sha256(images), bundled.tensor_sha256(labels))
    if got != (manifest["images_sha256"], manifest["labels_sha256"]):
        raise SystemExit("error: the carried train split does not decode to the pristine one")
    return images, labels


def receive() -> None:
    """Keep what this call carried (and the package's test split, which a later call, carrying
    more train data, may leave behind to stay under the limit)."""
    KEEP.mkdir(exist_ok=True)
    for f in [*LOCAL.glob("*"), *(bundled.ASSETS / n for n in (bundled.WEBP, bundled.MANIFEST))]:
        if f.is_file():
            shutil.copy(f, KEEP / f.name)
    print("kept:", sorted(p.name for p in KEEP.iterdir()))


def train(args: argparse.Namespace) -> None:
    from ablate.training import TrainConfig
    from ablate.training import train as run

    images, labels = _decode(KEEP)
    classes = tuple(json.loads((KEEP / "train.json").read_text())["classes"])
    source = "cifar10-png.tar.gz (train split carried as lossless WebP, hashes checked)"
    tr = Dataset(images, labels, classes, "cifar10", "train", source)
    ti, tl, tc = bundled.load(KEEP if (KEEP / bundled.WEBP).is_file() else bundled.ASSETS)
    te = Dataset(ti, tl, tc, "cifar10", "test", "bundled")
    print(f"data: {len(tr)} train, {len(te)} test images, decoded and checked", flush=True)
    config = TrainConfig(model="vit_cifar", device=args.device, amp="bf16", channels_last=False,
                         seed=0, out=args.out, epochs=args.epochs, compile=args.compile,
                         limit_train=args.limit_train, limit_test=args.limit_test, progress=False,
                         resume=(Path(args.out) / "last.pt").is_file())
    t = time.time()
    print("weights:", run(config, train_data=tr, test_data=te), f"{time.time() - t:.0f} s")


def collect(run_dir: str) -> None:
    out = Path(os.environ.get("OUT", "out"))
    out.mkdir(exist_ok=True)
    for f in Path(run_dir).glob("*"):
        if f.suffix in (".safetensors", ".json", ".csv", ".log") and f.stat().st_size < 16 << 20:
            shutil.copy(f, out / f.name)
    state = Path(run_dir) / "last.pt"
    if state.is_file() and not (Path(run_dir) / "vit_cifar.safetensors").is_file():
        blob = state.read_bytes()  # unfinished: bring the resumable state back in parts
        for i in range(0, len(blob), 15 << 20):
            (out / f"last.pt.{i // (15 << 20)}").write_bytes(blob[i:i + (15 << 20)])
    print("collected:", sorted(p.name for p in out.iterdir()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("src", nargs="?", default="/work/shared/data/cifar10-png.tar.gz")
    sub.add_parser("receive")
    p = sub.add_parser("train")
    p.add_argument("--out", default="runs/gpu/vit_cifar")
    p.add_argument("--epochs", type=int)
    p.add_argument("--limit-train", type=int)
    p.add_argument("--limit-test", type=int)
    p.add_argument("--device", default="cuda")
    p.add_argument("--compile", action="store_true")
    p = sub.add_parser("collect")
    p.add_argument("run_dir")
    a = ap.parse_args()
    {"pack": lambda: pack(a.src), "receive": receive, "train": lambda: train(a),
     "collect": lambda: collect(a.run_dir)}[a.cmd]()


if __name__ == "__main__":
    main()
