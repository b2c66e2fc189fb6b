"""scripts/wall_from_log.py: a step's untimed invocations, read from the progress bars."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_each_invocation_sums_the_last_elapsed_time_of_its_bars():
    spec = importlib.util.spec_from_file_location("w", ROOT / "scripts" / "wall_from_log.py")
    w = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(w)
    log = ("== degradation: python -m ablate.degradation\nx blocks 0-1:  50%| [10:00<1:00]\n"
           "== delete_block: python -m ablate.delete_block\n"
           "resnet56 blocks 0-15:   1%| [00:03<16:02, 166img/s]\r"
           "resnet56 blocks 0-15: 100%| [1:02:05<00:00, 200img/s]\n"
           "plain56 blocks 0-15:  40%| [05:00<07:30, 90img/s]\ninterrupted\n"
           "== delete_block: python -m ablate.delete_block\n"
           "plain56 blocks 0-15:  10%| [00:30<04:30, 90img/s]\n")
    assert w.invocation_seconds(log, "delete_block") == [3725.0 + 300.0, 30.0]
    assert w.invocation_seconds(log, "paths") == []
