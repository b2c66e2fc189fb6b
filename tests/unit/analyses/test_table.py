"""The resumable table: safe under two writers, validated on read, keyed by the data fingerprint."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

from ablate._infra.errors import UsageError
from ablate.data import Dataset
from ablate.models import checkpoint
from analyses import delete_block
from analyses.table import Table

ROOT = Path(__file__).resolve().parents[3]
KEY = ("model", "block")


def test_two_processes_writing_one_table_lose_no_rows(tmp_path):
    path = tmp_path / "results.csv"
    script = textwrap.dedent("""
        import sys, time
        from analyses.table import Table
        t = Table(sys.argv[1], ["model", "block"])  # both read the empty table first
        time.sleep(0.5)
        for b in range(int(sys.argv[2]), int(sys.argv[3])):
            t.add([{"model": "resnet20", "block": b, "error": b / 100}])
            time.sleep(0.01)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(path), a, b], cwd=ROOT)
             for a, b in (("0", "14"), ("14", "27"))]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    df = pd.read_csv(path)
    assert sorted(df.block) == list(range(27))


def test_interleaved_writers_in_one_process(tmp_path):
    path = tmp_path / "results.csv"
    a, b = Table(path, KEY), Table(path, KEY)
    a.add([{"model": "m", "block": 0, "error": 0.1}])
    b.add([{"model": "m", "block": 1, "error": 0.2}])
    a.add([{"model": "m", "block": 2, "error": 0.3}])
    assert sorted(pd.read_csv(path).block) == [0, 1, 2]


def test_a_row_cut_short_is_dropped_and_recomputed(tmp_path, capsys):
    path = tmp_path / "results.csv"
    t = Table(path, KEY)
    t.add([{"model": "m", "block": i, "error": 0.125} for i in range(3)])
    text = path.read_text()
    path.write_text(text[: text.rindex("0.125") + 3])  # cut mid-number, no newline
    again = Table(path, KEY)
    assert sorted(again.df.block) == [0, 1]
    assert "dropped 1 broken row" in capsys.readouterr().err
    assert again.missing([{"model": "m", "block": i} for i in range(3)]) == [
        {"model": "m", "block": 2}]
    path.write_text("model,block,error\nm,0,0.1\nm,1\n")  # a row with fields missing
    assert sorted(Table(path, KEY).df.block) == [0]


def test_empty_and_foreign_tables(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("")
    assert Table(path, KEY).df.empty
    path.write_text("epoch,metric,value\n1,lr,0.1\n")
    with pytest.raises(UsageError, match="not a results table of this command"):
        Table(path, KEY)
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(UsageError, match="not a readable results table"):
        Table(path, KEY)


def test_a_key_asked_twice_gives_one_row():
    t = Table(None, KEY)
    keys = [{"model": "m", "block": 1}, {"model": "m", "block": 1}]
    assert t.missing(keys) == keys[:1]


def _dataset(seed: int) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.arange(8) % 10
    return Dataset(images, labels, tuple(str(i) for i in range(10)), "cifar10", "test", "x")


def test_other_data_of_the_same_name_and_size_is_not_reused(tmp_path, capsys):
    loaded = checkpoint.load("resnet20", allow_init=True)
    path = tmp_path / "results.csv"
    kw = {"indices": [0, 1], "batch_size": 8, "progress": False}
    a = delete_block.run(loaded, _dataset(0), table=Table(path, delete_block.KEY), **kw)
    b = delete_block.run(loaded, _dataset(1), table=Table(path, delete_block.KEY), **kw)
    assert "reusing" not in capsys.readouterr().err
    assert a.data_sha256.iloc[0] != b.data_sha256.iloc[0]
    assert len(pd.read_csv(path)) == 4
    c = delete_block.run(loaded, _dataset(0), table=Table(path, delete_block.KEY), **kw)
    assert "reusing 2 of 2 rows" in capsys.readouterr().err
    pd.testing.assert_frame_equal(a[["block", "error"]], c[["block", "error"]])


def test_repeated_blocks_give_one_row_each(tmp_path):
    loaded = checkpoint.load("resnet20", allow_init=True)
    df = delete_block.run(loaded, _dataset(0), indices=[1, 1, 0], batch_size=8, progress=False)
    assert df.block.tolist() == [0, 1]


def test_an_old_table_without_the_fingerprint_is_recomputed(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("model,block,error\nm,0,0.5\n")
    t = Table(path, ("model", "data_sha256", "block"))
    assert t.missing([{"model": "m", "data_sha256": "abc", "block": 0}])


def test_an_old_deletion_table_is_read_as_whole_blocks(tmp_path):
    """Rows written before branches could be deleted were all whole blocks: they are reused as
    such, and a branch row with the same index is still missing."""
    path = tmp_path / "results.csv"
    path.write_text("model,block,error\nm,0,0.5\n")
    t = Table(path, ("model", "granularity", "block"))
    assert not t.missing([{"model": "m", "granularity": "block", "block": 0}])
    assert t.missing([{"model": "m", "granularity": "branch", "block": 0}])
    t.add([{"model": "m", "granularity": "branch", "block": 0, "error": 0.6}])
    assert Table(path, t.key).df.granularity.tolist() == ["block", "branch"]


@pytest.mark.parametrize("on_disk", [True, False])
def test_pop_removes_and_returns_the_chosen_rows_and_keeps_rows_added_meanwhile(tmp_path, on_disk):
    path = tmp_path / "results.csv" if on_disk else None
    t = Table(path, KEY)
    t.add([{"model": m, "block": b, "error": b / 10} for m in ("old", "new") for b in range(3)])
    if on_disk:  # another writer's row since t last read: kept, not overwritten
        Table(path, KEY).add([{"model": "new", "block": 3, "error": 0.3}])
    gone = t.pop(lambda df: df["model"] == "old")
    assert sorted(gone["block"]) == [0, 1, 2] and set(gone["model"]) == {"old"}
    left = pd.read_csv(path) if on_disk else t.df
    assert set(left["model"]) == {"new"} and len(left) == (4 if on_disk else 3)
    assert t.pop(lambda df: df["model"] == "old").empty
