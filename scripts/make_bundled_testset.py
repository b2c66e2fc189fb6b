"""Regenerate the bundled pristine CIFAR-10 test split from ``cifar10-png.tar.gz``.

The 10,000 test images, in the order ``ablate.data.load`` gives them from the archive (classes
interleaved), are tiled row by row into one 3200 x 3200 lossless WebP (17.0 MB; the PNG tree
packs to 22.5 MB, one PNG grid to 21.5 MB) that decodes in a quarter of a second. The manifest
beside it holds the labels, the class names and the sha256 of the decoded image and label
tensors; the script checks that the WebP decodes bitwise to the tensor decoded from the archive.
It writes only where ``--out`` says; to replace the split the package ships, name its folder
(``ablate/assets`` of this checkout) and commit the result. Usage:

    python scripts/make_bundled_testset.py cifar10-png.tar.gz --out OUT_DIR
"""

from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from ablate._infra.io import atomic_write, sha256_file, write_json
from ablate.data import bundled
from ablate.data import load as load_data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", help="cifar10-png.tar.gz (the pristine PNG archive)")
    ap.add_argument("--out", required=True, type=Path,
                    help="folder to write the WebP and its manifest into (created if missing)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as cache:  # decode afresh, never from a cache
        ds = load_data(args.src, "test", cache_dir=cache, quiet=True)
    if ds.name != "cifar10" or len(ds) != bundled.N:
        raise SystemExit(f"error: {args.src} is not the pristine CIFAR-10 test split ({ds})")
    grid = bundled.to_grid(ds.images).permute(1, 2, 0).numpy()  # H, W, C for PIL
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(grid)).save(
        buf, "WEBP", lossless=True, quality=100, method=6, exact=True
    )
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    webp = out / bundled.WEBP
    atomic_write(webp, lambda p: p.write_bytes(buf.getvalue()))
    manifest = {
        "format": "ablate-bundled-split/1",
        "dataset": "cifar10",
        "split": "test",
        "source": Path(args.src).name,
        "source_sha256": sha256_file(args.src),
        "layout": f"{bundled.TILES} x {bundled.TILES} tiles of 32 x 32, row-major in load order",
        "classes": list(ds.classes),
        "labels": "".join(str(int(v)) for v in ds.labels),
        "webp_sha256": sha256_file(webp),
        "images_sha256": bundled.tensor_sha256(ds.images),
        "labels_sha256": bundled.tensor_sha256(ds.labels),
    }
    write_json(out / bundled.MANIFEST, manifest)
    images, labels, _ = bundled.load(out)  # decodes the file just written, checks both hashes
    assert images.equal(ds.images) and labels.equal(ds.labels)
    for f in (webp, out / bundled.MANIFEST):
        f.chmod(0o644)
    print(f"{webp}: {webp.stat().st_size} bytes, decodes bitwise to the archive's test split")


if __name__ == "__main__":
    main()
