"""Regenerate ablate/assets/cifar10-jpeg-test.tar.gz from the full cifar10-jpeg archive.

Copies exactly the ``test/<class>/NNNN.jpg`` members (bytes unchanged) in sorted order with fixed
metadata (mtime, uid/gid, mode) and a gzip header with mtime 0 and no file name, so the output's
sha256 is reproducible (given the same zlib). Usage:

    python scripts/make_bundled_testset.py [SRC.tar.gz] [OUT.tar.gz]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SRC = "/work/shared/data/cifar10-jpeg.tar.gz"
DEFAULT_OUT = ROOT / "ablate" / "assets" / "cifar10-jpeg-test.tar.gz"
MTIME = 1577836800  # 2020-01-01, the source archive's member time
EXPECTED = 10_000


def read_test_members(src: Path) -> dict[str, bytes]:
    """The bytes of every ``test/<class>/<file>.jpg`` member of ``src``, by member name."""
    out = {}
    with tarfile.open(src, "r:*") as tf:
        for m in tf:
            parts = m.name.removeprefix("./").split("/")
            if m.isfile() and len(parts) == 3 and parts[0] == "test" and m.name.endswith(".jpg"):
                out["/".join(parts)] = tf.extractfile(m).read()
    return out


def write_archive(members: dict[str, bytes], out: Path) -> None:
    """Write a deterministic .tar.gz of ``members`` to ``out`` atomically."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with (
            os.fdopen(fd, "wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz,
            tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tf,
        ):
            for name in sorted(members):
                info = tarfile.TarInfo(name)
                info.size = len(members[name])
                info.mtime, info.mode, info.uid, info.gid = MTIME, 0o644, 0, 0
                info.uname = info.gname = ""
                tf.addfile(info, io.BytesIO(members[name]))
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", nargs="?", default=DEFAULT_SRC, help="full cifar10-jpeg .tar.gz")
    ap.add_argument("out", nargs="?", default=str(DEFAULT_OUT), help="bundled asset to write")
    args = ap.parse_args()
    members = read_test_members(Path(args.src))
    if len(members) != EXPECTED:
        raise SystemExit(
            f"error: expected {EXPECTED} test images in {args.src}, found {len(members)}"
        )
    out = Path(args.out)
    write_archive(members, out)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    print(f"{out}: {len(members)} images, {out.stat().st_size} bytes, sha256 {digest}")


if __name__ == "__main__":
    main()
