"""Issue 26, data files: every image mode decodes to the right 8-bit RGB (16-bit samples were cut to
their low byte) or is refused; what is read is limited (regular files only, a stated maximum per
image file, per image's pixels and per archive), and a link to nothing or a loop is one line."""

from __future__ import annotations

import io
import os
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ablate import data
from ablate._infra.errors import UsageError
from ablate.data import readers
from tests.unit.data.test_data import (  # noqa: F401  (the fixture is used by name)
    _cache_in_tmp,
    make_tar,
    write_cifar10_batches,
    write_tree,
)

# ---------------------------------------------------------------------------------------------
# 4. image modes: PNG colour types x bit depths written by hand, and every mode PIL writes


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(
        ">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # PNG colour type -> samples per pixel
DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
PNG_MODES = [(c, d) for c, ds in DEPTHS.items() for d in ds]  # every mode the PNG spec allows


def png(samples: np.ndarray, ctype: int, depth: int, palette: np.ndarray | None = None,
        size: tuple[int, int] | None = None, trns: bytes | None = None) -> bytes:
    """A PNG of ``samples`` [H, W, C] (no filtering), written from the specification."""
    h, w, _ = samples.shape
    rows = []
    for r in samples:
        flat = r.reshape(-1)
        if depth == 16:
            raw = flat.astype(">u2").tobytes()
        elif depth == 8:
            raw = flat.astype(np.uint8).tobytes()
        else:
            bits = np.unpackbits(flat.astype(np.uint8)[:, None], axis=1)[:, 8 - depth:]
            raw = np.packbits(bits.reshape(-1)).tobytes()
        rows.append(b"\0" + raw)
    w_, h_ = size or (w, h)
    out = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w_, h_, depth, ctype,
                                                              0, 0, 0))
    if palette is not None:
        out += _chunk(b"PLTE", palette.astype(np.uint8).tobytes())
    if trns is not None:
        out += _chunk(b"tRNS", trns)
    return out + _chunk(b"IDAT", zlib.compress(b"".join(rows))) + _chunk(b"IEND", b"")


def expected_rgb(samples: np.ndarray, ctype: int, depth: int, palette=None) -> np.ndarray:
    """[3, H, W] uint8: grey replicated, palette looked up, alpha dropped, samples scaled to
    8 bits by round(v * 255 / (2^depth - 1))."""
    if ctype == 3:
        rgb = palette[samples[..., 0]]
    else:
        v = samples[..., :3] if ctype in (2, 6) else np.repeat(samples[..., :1], 3, -1)
        rgb = np.floor(v * 255 / (2**depth - 1) + 0.5)
    return rgb.astype(np.uint8).transpose(2, 0, 1)


def one_split(tmp_path: Path, blobs: dict[str, bytes]) -> Path:
    """A folder that is one split: class ``a`` holding ``blobs``."""
    root = tmp_path / "split"
    (root / "a").mkdir(parents=True)
    for name, blob in blobs.items():
        (root / "a" / name).write_bytes(blob)
    return root


def decoded(tmp_path: Path, blob: bytes, ext: str = "png") -> np.ndarray:
    root = one_split(tmp_path, {f"x.{ext}": blob})
    return readers.decode(root, "test")["images"][0].numpy()


@pytest.mark.parametrize("ctype, depth", PNG_MODES, ids=[f"type{c}-{d}bit" for c, d in PNG_MODES])
@pytest.mark.parametrize("trns", [False, True])
def test_every_png_mode_decodes_to_its_rgb(tmp_path, ctype, depth, trns):
    rng = np.random.default_rng(ctype * 100 + depth)
    samples = rng.integers(0, 2**depth, (4, 6, CHANNELS[ctype]))
    samples[0, 0] = 2**depth - 1  # the extremes: full scale must stay 255, zero stay 0
    samples[0, 1] = 0
    palette = rng.integers(0, 256, (2**depth, 3)) if ctype == 3 else None
    t = None
    if trns and ctype in (0, 2, 3):  # the colour types that may carry a tRNS chunk
        t = bytes([7]) if ctype == 3 else struct.pack(">" + "H" * CHANNELS[ctype],
                                                     *([1] * CHANNELS[ctype]))
    blob = png(samples, ctype, depth, palette, trns=t)
    got = decoded(tmp_path, blob)
    assert got.dtype == np.uint8 and got.shape == (3, 4, 6)
    assert np.array_equal(got, expected_rgb(samples, ctype, depth, palette))


def _pil_modes() -> list[str]:
    """Every PIL mode that PIL can write as PNG (from a list wider than what it writes)."""
    out = []
    for mode in ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr",
                 "LAB", "HSV", "I", "I;16", "I;16B", "I;16L", "F"):
        try:
            Image.new(mode, (2, 2)).save(io.BytesIO(), "PNG")
        except (OSError, ValueError, KeyError):
            continue
        out.append(mode)
    return out


def _pil_image(mode: str) -> tuple[Image.Image, np.ndarray]:
    """An image in ``mode`` with varied pixels, and its RGB as it should decode."""
    rng = np.random.default_rng(len(mode))
    if mode.startswith("I;16"):
        arr = rng.integers(0, 65536, (5, 7)).astype(np.uint16)
        arr[0, :2] = (65535, 0)
        order = {"I;16": "<u2", "I;16L": "<u2", "I;16B": ">u2"}[mode]
        im = Image.frombytes(mode, (7, 5), arr.astype(order).tobytes())
        want = np.floor(arr.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)
        return im, np.repeat(want[None], 3, 0)
    base = Image.fromarray(rng.integers(0, 256, (5, 7, 4)).astype(np.uint8), "RGBA")
    im = base.convert(mode) if mode not in ("P", "PA") else base.convert("RGB").quantize(17)
    if mode == "PA":
        im = im.convert("PA")
    ref = im.convert("RGB") if mode != "PA" else im.convert("RGBA").convert("RGB")
    return im, np.asarray(ref).transpose(2, 0, 1)


@pytest.mark.parametrize("mode", _pil_modes())
def test_every_mode_pil_writes_as_png_decodes_to_its_rgb(tmp_path, mode):
    im, want = _pil_image(mode)
    buf = io.BytesIO()
    im.save(buf, "PNG")
    assert np.array_equal(decoded(tmp_path, buf.getvalue()), want), mode


@pytest.mark.parametrize("mode", ["L", "RGB", "CMYK"])  # the modes PIL writes as JPEG
def test_every_jpeg_mode_decodes_as_pil_does(tmp_path, mode):
    rng = np.random.default_rng(0)
    shape = (16, 16) if mode == "L" else (16, 16, len(mode))
    im = Image.fromarray(rng.integers(0, 256, shape).astype(np.uint8), mode)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=95)
    want = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")).transpose(2, 0, 1)
    got = decoded(tmp_path, buf.getvalue(), "jpg")
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 2


def test_sixteen_bit_images_keep_their_order_of_brightness(tmp_path):
    # the old reader kept the low byte: 256 (dark) became 0, 255 (darker) stayed 255
    arr = np.array([[0, 255, 256, 32768, 65280, 65535]], dtype=np.uint16)
    got = decoded(tmp_path, png(arr[..., None], 0, 16))[0, 0]
    assert got.tolist() == [0, 1, 1, 128, 254, 255]


@pytest.mark.parametrize("blob, what", [
    (b"GIF89a" + b"\0" * 20, "cannot decode"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 30, "cannot decode"),
    (b"not an image at all", "cannot decode"),
])
def test_what_is_not_an_image_is_one_line(tmp_path, blob, what):
    with pytest.raises(UsageError) as e:
        decoded(tmp_path, blob)
    assert what in str(e.value) and "\n" not in str(e.value) and "x.png" in str(e.value)


def test_an_animated_image_is_refused(tmp_path):
    frames = [Image.new("RGB", (4, 4), c) for c in ("red", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    with pytest.raises(UsageError) as e:
        decoded(tmp_path, buf.getvalue())
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------
# 12. limits: regular files only, bytes per image file, pixels per image, bytes per archive


def _small_png() -> bytes:
    return png(np.zeros((2, 2, 3), dtype=np.uint8), 2, 8)


def test_image_links_to_devices_nothing_or_themselves_are_one_line(tmp_path):
    cases = {"dangling": (tmp_path / "nowhere.png", "link to nothing")}
    if Path("/dev/zero").exists():
        cases["device"] = (Path("/dev/zero"), "not a regular file")
    for what, (target, msg) in cases.items():
        root = one_split(tmp_path / what, {"ok.png": _small_png()})
        (root / "a" / "z.png").symlink_to(target)
        with pytest.raises(UsageError) as e:
            data.load(root, "test")
        assert msg in str(e.value) and "\n" not in str(e.value), what
    root = one_split(tmp_path / "loop", {"ok.png": _small_png()})
    (root / "a" / "z.png").symlink_to(root / "a" / "z.png")
    with pytest.raises(UsageError) as e:
        data.load(root, "test")
    assert "cannot be read" in str(e.value) and "\n" not in str(e.value)
    root = one_split(tmp_path / "fifo", {"ok.png": _small_png()})
    os.mkfifo(root / "a" / "z.png")  # opening it would block forever
    with pytest.raises(UsageError) as e:
        data.load(root, "test")
    assert "not a regular file" in str(e.value)


def test_an_image_file_over_the_limit_is_refused_before_reading(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "MAX_IMAGE_BYTES", 1000)
    root = one_split(tmp_path, {"ok.png": _small_png(), "big.png": _small_png() + b"\0" * 2000})
    with pytest.raises(UsageError) as e:
        data.load(root, "test")
    assert "big.png" in str(e.value) and "limit" in str(e.value)


def test_an_image_with_too_many_pixels_is_refused_before_decoding(tmp_path):
    # a 60000 x 60000 PNG header over a tiny body: decoding would allocate 10 GB
    bomb = png(np.zeros((1, 1, 3), dtype=np.uint8), 2, 8, size=(60000, 60000))
    with pytest.raises(UsageError) as e:
        decoded(tmp_path, bomb)
    assert f"{readers.MAX_IMAGE_PIXELS:,} pixels" in str(e.value)


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, blob in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    return path


def test_a_compressed_member_over_the_limit_is_refused_before_reading(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "MAX_IMAGE_BYTES", 1 << 20)
    archive = _tar(tmp_path / "bomb.tar.gz", {"test/a/x.png": _small_png(),
                                              "test/a/y.png": b"\0" * (2 << 20)})
    assert archive.stat().st_size < 20_000  # a few kB standing for 2 MiB
    with pytest.raises(UsageError) as e:
        data.load(archive, "test")
    msg = str(e.value)
    assert "test/a/y.png" in msg and "1 MiB limit" in msg and "\n" not in msg


def test_an_archive_expanding_past_the_limit_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "MAX_ARCHIVE_BYTES", 1 << 20)
    members = {f"test/a/{i}.png": _small_png() + b"\0" * 100_000 for i in range(20)}
    archive = _tar(tmp_path / "many.tar.gz", members)
    with pytest.raises(UsageError) as e:
        data.load(archive, "test")
    assert "1 MiB, the limit for an archive" in str(e.value) and "--data FOLDER" in str(e.value)


def test_a_cifar_batch_over_the_limit_is_refused(tmp_path, monkeypatch):
    write_cifar10_batches(tmp_path / "c10")
    monkeypatch.setattr(readers, "MAX_BATCH_BYTES", 1000)
    with pytest.raises(UsageError) as e:
        data.load(tmp_path / "c10", "test")
    assert "limit" in str(e.value)
    archive = make_tar(tmp_path / "c10", tmp_path / "c10.tar.gz", "cifar-10-batches-py/")
    with pytest.raises(UsageError) as e:
        data.load(archive, "test")
    assert "limit" in str(e.value)


def test_an_archive_that_is_not_a_regular_file(tmp_path):
    fifo = tmp_path / "data.tar.gz"
    os.mkfifo(fifo)
    with pytest.raises(UsageError) as e:
        readers.decode(fifo, "test")
    assert "not a regular file" in str(e.value)


def test_ordinary_data_still_loads(tmp_path):
    write_tree(tmp_path / "tree", ["a", "b"], {"train": 1, "test": 2})
    assert len(data.load(tmp_path / "tree", "test")) == 4
    archive = make_tar(tmp_path / "tree", tmp_path / "t.tar.gz")
    assert torch.equal(data.load(archive, "test").images, data.load(tmp_path / "tree").images)
