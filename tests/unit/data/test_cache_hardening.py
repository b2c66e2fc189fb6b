"""Issue 26, the decoded-data cache: a full disk (torch.save raises RuntimeError, not OSError) or
any other failure to write the cache continues without it, keeping nothing half-written."""

from __future__ import annotations

import errno

import pytest
import torch

from ablate import data
from ablate.data import cache
from tests.unit.data.test_data import _cache_in_tmp, write_tree  # noqa: F401


@pytest.mark.parametrize("error", [
    RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 4096 vs 0: "
                 "No space left on device"),
    OSError(errno.ENOSPC, "No space left on device"),
    PermissionError(errno.EACCES, "Permission denied"),
])
def test_cache_that_cannot_be_written_is_skipped(tmp_path, monkeypatch, capsys, error):
    write_tree(tmp_path / "tree", ["a", "b"], {"test": 2})
    want = data.load(tmp_path / "tree", "test", cache_dir=tmp_path / "fresh")

    def full_disk(obj, f, *a, **k):
        with open(f, "wb") as out:
            out.write(b"half")  # a partial file, as a full disk leaves it
        raise error

    monkeypatch.setattr(cache.torch, "save", full_disk)
    got = data.load(tmp_path / "tree", "test", cache_dir=tmp_path / "c")
    assert torch.equal(got.images, want.images) and torch.equal(got.labels, want.labels)
    err = capsys.readouterr().err
    assert "cannot write cache" in err and "continuing without it" in err
    assert [p for p in (tmp_path / "c").rglob("*") if p.is_file()] == []
    monkeypatch.undo()
    monkeypatch.setenv("ABLATE_CACHE", str(tmp_path / "cache"))
    again = data.load(tmp_path / "tree", "test", cache_dir=tmp_path / "c")
    assert torch.equal(again.images, want.images)
    assert len(list((tmp_path / "c").rglob("*.pt"))) == 1  # written once there is space
