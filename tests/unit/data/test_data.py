"""Tests for ablate.data on tiny data made in tmp_path (no network, no /work/shared)."""

from __future__ import annotations

import io
import json
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ablate import data
from ablate._infra.errors import UsageError
from ablate.data import bundled

C10 = list(data.CIFAR10_CLASSES)


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    """Every test caches under tmp_path, never ~/.cache."""
    monkeypatch.setenv("ABLATE_CACHE", str(tmp_path / "cache"))


def rand_images(n: int, seed: int, h: int = 32, w: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3, h, w), dtype=np.uint8)


def dump(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj))


def write_cifar10_batches(root: Path, n_per_batch: int = 4, str_keys: bool = False) -> dict:
    """CIFAR-10 python-batches layout; returns the expected train/test arrays.

    The official files (Python 2 pickles) load with bytes keys; re-dumped copies have str keys.
    """

    def dump(path: Path, obj: dict) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        obj = {k.decode() if str_keys else k: v for k, v in obj.items()}
        path.write_bytes(pickle.dumps(obj))

    rng = np.random.default_rng(0)
    train_x, train_y = [], []
    for b in range(1, 6):
        x = rand_images(n_per_batch, seed=b).reshape(n_per_batch, 3072)
        y = rng.integers(0, 10, n_per_batch).tolist()
        dump(root / f"data_batch_{b}", {b"data": x, b"labels": y, b"batch_label": b"x"})
        train_x.append(x)
        train_y += y
    test_x, test_y = rand_images(6, seed=9).reshape(6, 3072), rng.integers(0, 10, 6).tolist()
    dump(root / "test_batch", {b"data": test_x, b"labels": test_y})
    dump(root / "batches.meta", {b"label_names": [c if str_keys else c.encode() for c in C10]})
    return {
        "train": (np.concatenate(train_x).reshape(-1, 3, 32, 32), train_y),
        "test": (test_x.reshape(-1, 3, 32, 32), test_y),
    }


def write_tree(root: Path, classes: list[str], per_class: dict[str, int], ext: str = "png"):
    """ImageFolder tree of random images; returns {split: [(class, file index, CHW array)]}."""
    out = {}
    for s_i, (split, n) in enumerate(per_class.items()):
        out[split] = []
        for c_i, c in enumerate(classes):
            for i in range(n):
                img = rand_images(1, seed=1000 * s_i + 10 * c_i + i)[0]
                path = root / split / c / f"{i:04d}.{ext}"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(img.transpose(1, 2, 0)).save(path, quality=75)
                out[split].append((c, i, img))
    return out


def make_tar(src: Path, out: Path, arc_prefix: str = "") -> Path:
    """Archive the contents of ``src`` under ``arc_prefix`` (e.g. "./" or "folder/")."""
    with tarfile.open(out, "w:gz" if out.name.endswith("gz") else "w") as tf:
        for p in sorted(src.rglob("*")):
            tf.add(p, arcname=arc_prefix + p.relative_to(src).as_posix(), recursive=False)
    return out


def expected_interleaved(items: list, classes: list[str]):
    """The loader's order: image i of every class (sorted), then image i + 1."""
    order = sorted(items, key=lambda t: (t[1], classes.index(t[0])))
    images = torch.from_numpy(np.stack([t[2] for t in order]))
    labels = torch.tensor([classes.index(t[0]) for t in order])
    return images, labels


def check_tensors(ds: data.Dataset) -> None:
    assert ds.images.dtype == torch.uint8 and ds.images.is_contiguous()
    assert ds.images.dim() == 4 and ds.images.shape[1] == 3
    assert ds.labels.dtype == torch.int64 and ds.labels.shape == (len(ds),)


# --- formats ---------------------------------------------------------------------------------


def test_cifar10_python_batches_exact(tmp_path):
    want = write_cifar10_batches(tmp_path / "c10")
    for split in ("train", "test"):
        ds = data.load(tmp_path / "c10", split)
        check_tensors(ds)
        x, y = want[split]
        assert torch.equal(ds.images, torch.from_numpy(x))
        assert ds.labels.tolist() == y
        assert (ds.name, ds.split, ds.classes) == ("cifar10", split, tuple(C10))
        assert ds.source == str((tmp_path / "c10").resolve())
    assert len(data.load(tmp_path / "c10", "train")) == 20


def test_cifar100_python_batches_one_level_down(tmp_path):
    root = tmp_path / "dl" / "cifar-100-python"
    names = [f"class{i:03d}" for i in range(100)]
    x = rand_images(7, seed=3)
    dump(root / "train", {b"data": x.reshape(7, 3072), b"fine_labels": [99, 0, 5, 1, 2, 3, 4]})
    dump(root / "test", {b"data": x[:2].reshape(2, 3072), b"fine_labels": [7, 8]})
    dump(root / "meta", {b"fine_label_names": [n.encode() for n in names]})
    ds = data.load(tmp_path / "dl", "train")
    assert (ds.name, len(ds.classes), ds.labels.tolist()) == (
        "cifar100",
        100,
        [99, 0, 5, 1, 2, 3, 4],
    )
    assert torch.equal(ds.images, torch.from_numpy(x))
    assert data.load(tmp_path / "dl", "test").labels.tolist() == [7, 8]


def test_png_tree_exact_pixels_sorted_classes_interleaved(tmp_path):
    classes = ["zebra", "apple", "mango"]  # created out of order; loaded sorted
    items = write_tree(tmp_path / "tree", classes, {"train": 3, "test": 2})
    for split in ("train", "test"):
        ds = data.load(tmp_path / "tree", split)
        check_tensors(ds)
        assert ds.classes == ("apple", "mango", "zebra")
        assert ds.name == "imagefolder"
        images, labels = expected_interleaved(items[split], sorted(classes))
        assert torch.equal(ds.images, images)
        assert torch.equal(ds.labels, labels)
    assert data.load(tmp_path / "tree", "test").labels.tolist() == [0, 1, 2, 0, 1, 2]


def test_tree_names(tmp_path):
    write_tree(tmp_path / "png", C10, {"test": 1}, "png")
    write_tree(tmp_path / "jpg", C10, {"test": 1}, "jpg")
    write_tree(tmp_path / "my-cifar10-jpeg", ["a", "b"], {"test": 1}, "png")
    write_tree(tmp_path / "big", C10, {"test": 1}, "png")
    Image.new("RGB", (40, 40)).save(tmp_path / "big" / "test" / "cat" / "0000.png")
    assert data.load(tmp_path / "png").name == "cifar10"
    assert data.load(tmp_path / "jpg").name == "cifar10-jpeg"
    assert data.load(tmp_path / "my-cifar10-jpeg").name == "cifar10-jpeg"
    with pytest.raises(UsageError, match="mixed sizes"):
        data.load(tmp_path / "big")


def test_jpeg_tree_decodes_close_to_source(tmp_path):
    items = write_tree(tmp_path / "t", ["a", "b"], {"test": 2}, "jpg")
    ds = data.load(tmp_path / "t", "test", quiet=True)
    check_tensors(ds)
    images, labels = expected_interleaved(items["test"], ["a", "b"])
    assert ds.images.shape == (4, 3, 32, 32) and torch.equal(ds.labels, labels)
    # JPEG of random noise is lossy, but the decode is the same size and far from garbage
    err = (ds.images.float() - images.float()).abs().mean()
    assert 0 < err < 80


@pytest.mark.parametrize(("name", "prefix"), [("t.tar.gz", ""), ("t.tgz", "./"), ("t.tar", "d/")])
def test_tar_of_tree_matches_folder(tmp_path, name, prefix):
    write_tree(tmp_path / "tree", ["b", "a"], {"train": 2, "test": 3})
    archive = make_tar(tmp_path / "tree", tmp_path / name, prefix)
    for split in ("train", "test"):
        a, b = data.load(archive, split), data.load(tmp_path / "tree", split)
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
        assert a.classes == b.classes == ("a", "b")
        assert a.source == str(archive.resolve())


def test_tar_of_python_batches(tmp_path):
    want = write_cifar10_batches(tmp_path / "src" / "cifar-10-batches-py", str_keys=True)
    archive = make_tar(tmp_path / "src", tmp_path / "cifar-10-python.tar.gz")
    ds = data.load(archive, "test")
    assert ds.name == "cifar10" and torch.equal(ds.images, torch.from_numpy(want["test"][0]))
    assert ds.labels.tolist() == want["test"][1]
    assert len(data.load(archive, "train")) == 20


def test_torchvision_source_uses_data_and_targets(tmp_path, monkeypatch):
    from torchvision.datasets import cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda *a, **k: True)
    want = write_cifar10_batches(tmp_path / "root" / "cifar-10-batches-py", str_keys=True)
    ds = data.load("cifar10", "test", cache_dir=tmp_path / "root")
    check_tensors(ds)
    assert (ds.name, ds.source, ds.classes) == ("cifar10", "torchvision", tuple(C10))
    assert torch.equal(ds.images, torch.from_numpy(want["test"][0]))
    assert ds.labels.tolist() == want["test"][1]


def test_bundled_asset_is_the_pristine_test_split(capsys):
    ds = data.load(None)
    check_tensors(ds)
    assert ds.images.shape == (10_000, 3, 32, 32)
    assert ds.labels.bincount().tolist() == [1000] * 10
    assert ds.labels[:20].tolist() == list(range(10)) * 2  # interleaved: --limit is balanced
    assert (ds.name, ds.split, ds.source, ds.classes) == ("cifar10", "test", "bundled", tuple(C10))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pristine CIFAR-10" in err and "--data PATH" in err
    again = data.load("bundled", quiet=True)
    assert torch.equal(again.images, ds.images) and capsys.readouterr().err == ""
    assert data.BUNDLED.is_file()


def test_bundled_grid_round_trip():
    x = torch.randint(0, 256, (10_000, 3, 32, 32), dtype=torch.uint8)
    grid = bundled.to_grid(x)
    assert grid.shape == (3, 3200, 3200) and torch.equal(grid[:, 32:64, 64:96], x[102])
    assert torch.equal(bundled.from_grid(grid), x)


def test_bundled_asset_damage_is_one_line(tmp_path):
    for f in (bundled.WEBP, bundled.MANIFEST):
        (tmp_path / f).write_bytes((bundled.ASSETS / f).read_bytes())
    manifest = json.loads((tmp_path / bundled.MANIFEST).read_text())
    manifest["labels"] = "1" + manifest["labels"][1:]  # one label altered
    (tmp_path / bundled.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(UsageError, match="fails its checksum"):
        bundled.load(tmp_path)
    (tmp_path / bundled.WEBP).write_bytes(b"not a webp")
    with pytest.raises(UsageError, match="unreadable"):
        bundled.load(tmp_path)


# --- subset, normalize, batches ----------------------------------------------------------------


def small_dataset(n: int = 10) -> data.Dataset:
    images = torch.from_numpy(rand_images(n, seed=5))
    return data.Dataset(images, torch.arange(n) % 3, ("a", "b", "c"), "imagefolder", "test", "x")


def test_subset():
    ds = small_dataset()
    assert ds.subset(None) is ds and ds.subset(10) is ds and ds.subset(99) is ds
    sub = ds.subset(4)
    assert len(sub) == 4 and torch.equal(sub.images, ds.images[:4])
    assert sub.labels.tolist() == [0, 1, 2, 0] and sub.classes == ds.classes
    with pytest.raises(UsageError):
        ds.subset(0)
    assert "10x3x32x32" in repr(ds)


def test_normalize_matches_hand_computation():
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    mean, std = (0.5, 0.2, 0.0), (0.5, 0.1, 2.0)
    out = data.normalize(x, mean, std)
    want = torch.tensor([(0 - 0.5) / 0.5, (0.2 - 0.2) / 0.1, (1.0 - 0.0) / 2.0])
    assert out.dtype == torch.float32 and out.shape == (2, 3, 2, 2)
    assert torch.allclose(out, want.view(1, 3, 1, 1).expand(2, 3, 2, 2), atol=1e-6)
    with pytest.raises(TypeError):
        data.normalize(x.float(), mean, std)


def test_batches_cover_every_image_in_order():
    ds = small_dataset(10)
    got = list(data.batches(ds, 4, "cpu", data.IMAGENET_MEAN, data.IMAGENET_STD))
    assert [len(y) for _, y in got] == [4, 4, 2]
    assert torch.equal(torch.cat([y for _, y in got]), ds.labels)
    want = data.normalize(ds.images, data.IMAGENET_MEAN, data.IMAGENET_STD)
    assert torch.equal(torch.cat([x for x, _ in got]), want)
    assert all(x.dtype == torch.float32 for x, _ in got)
    with pytest.raises(UsageError):
        next(data.batches(ds, 0))


# --- errors ----------------------------------------------------------------------------------


def bad_inputs(tmp: Path) -> dict:
    """name -> (source, split, text the message must contain); each is a UsageError."""
    (tmp / "notes.txt").write_text("hello")
    (tmp / "empty").mkdir()
    (tmp / "junk.tar.gz").write_bytes(b"\x1f\x8b" + os.urandom(200))
    write_tree(tmp / "good", ["a", "b"], {"test": 1})
    full = make_tar(tmp / "good", tmp / "good.tar.gz").read_bytes()
    (tmp / "cut.tar.gz").write_bytes(full[: len(full) // 2])
    write_tree(tmp / "badimg", ["a"], {"test": 1})
    (tmp / "badimg" / "test" / "a" / "0001.png").write_bytes(b"\x89PNG not really")
    write_tree(tmp / "emptyclass", ["a"], {"test": 1, "train": 1})
    (tmp / "emptyclass" / "test" / "b").mkdir()
    (tmp / "noclass" / "test").mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(tmp / "noclass" / "test" / "stray.png")
    write_cifar10_batches(tmp / "notest")
    (tmp / "notest" / "test_batch").unlink()
    (tmp / "badpickle").mkdir()
    (tmp / "badpickle" / "batches.meta").write_bytes(b"garbage")
    (tmp / "badpickle" / "test_batch").write_bytes(b"garbage")
    return {
        "missing": (tmp / "nope", "test", "does not exist"),
        "txt": (tmp / "notes.txt", "test", "not a recognised data set"),
        "emptydir": (tmp / "empty", "test", "ImageFolder"),
        "junk archive": (tmp / "junk.tar.gz", "test", "cannot read archive"),
        "truncated archive": (tmp / "cut.tar.gz", "test", "cannot read archive"),
        "bad image": (tmp / "badimg", "test", "test/a/0001.png"),
        "split missing tree": (tmp / "good", "train", "split 'train' is missing"),
        "split missing batches": (tmp / "notest", "test", "split 'test' is missing"),
        "corrupt pickle": (tmp / "badpickle", "test", "corrupt CIFAR batch file"),
        "empty class": (tmp / "emptyclass", "test", "test/b"),
        "no class folders": (tmp / "noclass", "test", "no class folders"),
        "bundled train": (None, "train", "--data PATH"),
        "unknown split": (tmp / "good", "val", "unknown split"),
        "torchvision absent": ("cifar10", "test", "--download"),
    }


def test_bad_inputs_raise_one_line_usage_errors(tmp_path):
    for label, (source, split, text) in bad_inputs(tmp_path).items():
        with pytest.raises(UsageError) as info:
            data.load(source, split, cache_dir=tmp_path / "cache", quiet=True)
        msg = str(info.value)
        assert "\n" not in msg, label
        assert text in msg, (label, msg)


def test_tar_single_file_member_corrupt_names_member(tmp_path):
    tar_path = tmp_path / "x.tar"
    with tarfile.open(tar_path, "w") as tf:
        for name, payload in [("test/a/0.png", b"junk"), ("test/b/0.png", b"junk2")]:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
    with pytest.raises(UsageError, match=r"test/a/0\.png"):
        data.load(tar_path, "test")
