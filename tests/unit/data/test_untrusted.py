"""Data is untrusted input: the decoded-data cache (checksummed, rebuilt when altered) and the
restricted unpickler for CIFAR batches."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from ablate import data
from ablate._infra.errors import UsageError
from tests.unit.data.test_data import (  # noqa: F401  (the fixture is used by name)
    _cache_in_tmp,
    check_tensors,
    dump,
    make_tar,
    rand_images,
    write_cifar10_batches,
    write_tree,
)

# --- cache -----------------------------------------------------------------------------------


def test_cache_written_then_used_and_invalidated(tmp_path, monkeypatch):
    write_tree(tmp_path / "tree", ["a", "b"], {"test": 2})
    archive = make_tar(tmp_path / "tree", tmp_path / "t.tar.gz")
    first = data.load(archive, "test", cache_dir=tmp_path / "c")
    cached = list((tmp_path / "c").rglob("*.pt"))
    assert len(cached) == 1

    def boom(*args, **kwargs):
        raise AssertionError("decoded again instead of using the cache")

    real_decode = data.cache.decode
    monkeypatch.setattr(data.cache, "decode", boom)
    second = data.load(archive, "test", cache_dir=tmp_path / "c")
    assert torch.equal(first.images, second.images) and second.classes == first.classes
    assert second.name == first.name and second.source == first.source

    st = archive.stat()  # a changed archive (new mtime) is decoded again
    os.utime(archive, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="decoded again"):
        data.load(archive, "test", cache_dir=tmp_path / "c")
    monkeypatch.setattr(data.cache, "decode", real_decode)


def test_env_cache_dir_used(tmp_path):
    write_tree(tmp_path / "tree", ["a"], {"test": 1})
    data.load(tmp_path / "tree")
    assert len(list((tmp_path / "cache").rglob("*.pt"))) == 1


@pytest.mark.parametrize("garbage", [b"not a torch file", b""])
def test_corrupt_cache_is_rewritten(tmp_path, monkeypatch, garbage):
    write_cifar10_batches(tmp_path / "c10")
    want = data.load(tmp_path / "c10", "test")
    (cache_file,) = (tmp_path / "cache").rglob("*.pt")
    cache_file.write_bytes(garbage)
    calls = []
    real_decode = data.cache.decode
    monkeypatch.setattr(data.cache, "decode", lambda *a: calls.append(a) or real_decode(*a))
    got = data.load(tmp_path / "c10", "test")
    assert len(calls) == 1 and torch.equal(got.images, want.images)
    assert torch.load(cache_file, weights_only=True)["images"].shape == want.images.shape


# --- hardening: data is untrusted input ----------------------------------------------------------


class _Payload:
    """Unpickling this would create a file (any code could run there)."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.mark.parametrize("where", ["meta", "batch"])
@pytest.mark.parametrize("archive", [False, True])
def test_a_crafted_batch_file_runs_no_code(tmp_path, where, archive):
    root = tmp_path / "c10"
    write_cifar10_batches(root)
    marker = tmp_path / "pwned"
    name = "batches.meta" if where == "meta" else "test_batch"
    (root / name).write_bytes(pickle.dumps({"data": _Payload(str(marker)), "labels": [0],
                                            "label_names": _Payload(str(marker))}))
    source = make_tar(root, tmp_path / "c10.tar.gz") if archive else root
    with pytest.raises(UsageError, match=r"corrupt CIFAR batch file.*refused io\.open"):
        data.load(source, "test", cache_dir=tmp_path / "cache", quiet=True)
    assert not marker.exists()


def test_real_batches_pass_the_restricted_unpickler(tmp_path):
    write_cifar10_batches(tmp_path / "c10")
    blob = (tmp_path / "c10" / "test_batch").read_bytes()
    d = data.readers.unpickle(blob)
    assert d["data"].dtype == np.uint8 and len(d["labels"]) == len(d["data"])


@pytest.mark.parametrize("alter", ["bitflip", "labels"])
def test_an_altered_cache_is_rebuilt(tmp_path, monkeypatch, capsys, alter):
    write_cifar10_batches(tmp_path / "c10")
    want = data.load(tmp_path / "c10", "test")
    (cache_file,) = (tmp_path / "cache").rglob("*.pt")
    obj = torch.load(cache_file, weights_only=True)
    if alter == "bitflip":
        obj["images"].view(-1)[7] ^= 1
    else:
        obj["labels"][0] = (obj["labels"][0] + 1) % len(obj["classes"])
    torch.save(obj, cache_file)
    calls = []
    real_decode = data.cache.decode
    monkeypatch.setattr(data.cache, "decode", lambda *a: calls.append(a) or real_decode(*a))
    got = data.load(tmp_path / "c10", "test")
    assert len(calls) == 1 and torch.equal(got.images, want.images)
    assert torch.equal(got.labels, want.labels)
    assert "checksum" in capsys.readouterr().err


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_restricted_unpickler_reads_every_protocol(protocol):
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    blob = pickle.dumps({b"data": arr, b"labels": [1, 2, 3], b"batch_label": b"x"}, protocol)
    d = data.readers.unpickle(blob)
    assert np.array_equal(d["data"], arr) and d["labels"] == [1, 2, 3]

