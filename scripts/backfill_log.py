"""Record what an older trainer did not log, in a run's ``last.pt`` and ``log.csv``.

Runs started before the log had its ``amp``, ``channels_last`` and ``device`` columns (the
precision record of ``ablate.training.precision``) or ``train_step_seconds`` can be completed from
the run's notes, so that the card written at the end records every epoch range:

    python scripts/backfill_log.py RUN --epochs 1-19 --set amp=bf16 channels_last=True \\
        device="AMD EPYC" --note "from ../shared/training/README.md"
    python scripts/backfill_log.py RUN --derive-step-seconds

Only cells that are missing are filled (nothing logged is overwritten), each filled row names its
source in a ``backfill`` column, and ``train_step_seconds`` is derived exactly from the logged
``images_per_s`` (the trainer computed that as steps x batch / training-step seconds).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ablate._infra.io import atomic_write
from ablate.training.state import write_log


def _value(text: str) -> object:
    return {"True": True, "False": False}.get(text, text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="run folder holding last.pt and log.csv")
    ap.add_argument("--epochs", help="first-last epoch to fill, e.g. 1-19")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE")
    ap.add_argument("--note", default="", help="where the values come from")
    ap.add_argument("--derive-step-seconds", action="store_true")
    args = ap.parse_args()
    path = args.run / "last.pt"
    state = torch.load(path, map_location="cpu", weights_only=True)
    first, last = (int(x) for x in args.epochs.split("-")) if args.epochs else (1, 10**9)
    values = dict(kv.split("=", 1) for kv in args.set)
    recipe = state["run"]["recipe"]
    images = state["run"]["n_train"] // recipe["batch_size"] * recipe["batch_size"]
    filled = 0
    for row in state["log"]:
        if not first <= int(row["epoch"]) <= last:
            continue
        new = {k: _value(v) for k, v in values.items() if row.get(k) in (None, "")}
        if args.derive_step_seconds and row.get("train_step_seconds") in (None, ""):
            new["train_step_seconds"] = images / float(row["images_per_s"])
        if new:
            row.update(new)
            row["backfill"] = "; ".join(filter(None, [row.get("backfill"), args.note or
                                                      "derived from images_per_s"]))
            filled += 1
    atomic_write(path, lambda p: torch.save(state, p))
    write_log(args.run / "log.csv", state["log"])
    print(f"{path}: filled {filled} rows")


if __name__ == "__main__":
    main()
