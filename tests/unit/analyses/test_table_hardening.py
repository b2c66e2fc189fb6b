"""Issue 26, the resumable results table: a full disk is one line naming the table and "free
space", the table on disk stays whole; a table knows which experiment wrote it and another
experiment's table (its key a subset or superset of ours) is refused in one line."""

from __future__ import annotations

import errno
import itertools
import os
import pathlib

import pandas as pd
import pytest

from ablate._infra.errors import UsageError
from analyses.table import Table, write_meta

BASE = ("model", "checkpoint_sha256", "dataset", "split", "n_images", "data_sha256")
# the experiments' keys (degradation's is a subset of delete_block's)
KEYS = {
    "degradation": BASE,
    "delete_block": (*BASE, "granularity", "block"),
    "drop_blocks": (*BASE, "seed", "include_downsampling", "k", "sample"),
    "reorder_blocks": (*BASE, "seed", "k", "sample"),
    "paths": (*BASE, "samples", "seed", "at", "k"),
    "training_curves": ("model", "epoch", "metric"),
}


def row(key, i: int = 0) -> dict:
    r = {c: f"{c}-{i}" for c in key}
    r["error"] = 0.1 * i
    return r


@pytest.mark.parametrize("writer, reader", list(itertools.permutations(KEYS, 2)))
def test_another_experiments_table_is_refused(tmp_path, writer, reader):
    path = tmp_path / "results.csv"
    Table(path, KEYS[writer]).add([row(KEYS[writer], i) for i in range(3)])
    before = path.read_text()
    with pytest.raises(UsageError) as e:
        Table(path, KEYS[reader])
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and "another experiment" in msg
    assert path.read_text() == before
    again = Table(path, KEYS[writer])  # its own experiment resumes from it
    assert len(again.df) == 3 and not again.missing([row(KEYS[writer], 1)])


def test_key_columns_added_later_do_not_make_a_table_foreign(tmp_path):
    path = tmp_path / "results.csv"
    old_key = [c for c in KEYS["delete_block"] if c not in ("data_sha256", "granularity")]
    Table(path, old_key).add([row(old_key)])
    assert len(Table(path, KEYS["delete_block"]).df) == 1


def test_a_table_from_before_key_files_is_taken_and_then_marked(tmp_path):
    path = tmp_path / "results.csv"
    pd.DataFrame([row(KEYS["delete_block"])]).to_csv(path, index=False)  # no .key beside it
    t = Table(path, KEYS["delete_block"])
    t.add([row(KEYS["delete_block"], 1)])
    assert (tmp_path / ".results.csv.key").is_file()
    with pytest.raises(UsageError, match="another experiment"):
        Table(path, KEYS["degradation"])


def _full_disk(monkeypatch, after: int = 0):
    """Path.write_text writes ``after`` characters, then the disk is full."""
    real = pathlib.Path.write_text

    def write_text(self, data, *a, **k):
        real(self, data[:after], *a, **k)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_text", write_text)


@pytest.mark.parametrize("how", ["add", "replace", "meta"])
def test_full_disk_is_one_line_and_the_table_stays_whole(tmp_path, monkeypatch, how):
    key = KEYS["delete_block"]
    path = tmp_path / "results.csv"
    t = Table(path, key)
    t.add([row(key, 0), row(key, 1)])
    before = sorted(p.name for p in tmp_path.iterdir())
    text = path.read_text()
    _full_disk(monkeypatch, after=10)
    with pytest.raises(UsageError) as e:
        if how == "add":
            t.add([row(key, 2)])
        elif how == "replace":
            t.replace(pd.DataFrame([row(key, 0)]))
        else:
            write_meta(tmp_path / "meta.json", {"a": 1})
    msg = str(e.value)
    target = tmp_path / "meta.json" if how == "meta" else path
    assert "\n" not in msg and str(target) in msg and "free space" in msg
    monkeypatch.undo()
    assert path.read_text() == text  # nothing half-written replaced it
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temporary file left
    t2 = Table(path, key)  # a rerun resumes
    assert len(t2.df) == 2


def test_a_lock_file_that_cannot_be_made_is_one_line(tmp_path, monkeypatch):
    key = KEYS["degradation"]
    t = Table(tmp_path / "results.csv", key)
    real_open = os.open

    def no_inodes(path, *a, **k):
        if str(path).endswith(".lock"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, *a, **k)

    monkeypatch.setattr(os, "open", no_inodes)
    with pytest.raises(UsageError) as e:
        t.add([row(key)])
    assert "free space" in str(e.value) and "\n" not in str(e.value)
