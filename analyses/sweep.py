"""The bookkeeping every analysis shares, so that an analysis ``run`` says only what it measures.

An analysis lists its conditions as key dicts (``condition(loaded, ds)`` plus its own columns)
and hands them here with what to measure. This module asks the resumable table which keys are
still missing (the same answer on every torchrun rank, and a message saying how many rows are
reused), measures them a group at a time, adds each group's rows to the table (rank 0 gathers
every rank's rows), and returns the rows of the keys asked for, in their order. A killed sweep
loses at most one group.

- :func:`sweep`: conditions that are ``Variant``s of one network, evaluated by the batched
  engine (delete, drop, reorder);
- :func:`resume`: conditions measured by any function of a group of keys (gradients, paths,
  attributions).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

import pandas as pd

from ablate._infra import distributed
from ablate.data import Dataset
from ablate.interventions.variants import Variant, evaluate_variants
from ablate.measures import Outcome
from ablate.models.checkpoint import Loaded
from analyses.table import Table

__all__ = ["outcome_columns", "pending", "resume", "sweep"]


def outcome_columns(out: Outcome) -> dict:
    """errors, error with its Wilson interval, mean loss with its t interval."""
    lo, hi = out.error_interval()
    loss, loss_lo, loss_hi = out.loss_interval()
    return {"errors": out.errors, "error": out.error, "error_low": lo, "error_high": hi,
            "loss": loss, "loss_low": loss_lo, "loss_high": loss_hi}


def pending(table: Table, keys: Sequence[dict], what: str, *, split: bool = True) -> list[dict]:
    """The keys that have no row in ``table`` yet (each once, in order), the same list on every
    rank when ``split``; says on stderr how many rows are reused, so a rerun never reuses old
    numbers unannounced."""
    todo = table.missing(keys)
    unique = len(Table(None, table.key).missing(keys))
    reused = unique - len(todo)
    if reused and distributed.is_main():
        where = f" from {table.path}" if table.path is not None else ""
        print(f"{what}: reusing {reused} of {unique} rows already measured{where} (same "
              "model, checkpoint and data fingerprint)", file=sys.stderr)
    return distributed.broadcast(todo) if split else todo


def sweep(
    loaded: Loaded,
    ds: Dataset,
    table: Table,
    keys: Sequence[dict],
    variant: Callable[[dict], Variant],
    row: Callable[[dict, Outcome], dict],
    label: Callable[[list[dict]], str],
    *,
    group: int,
    batch_size: int,
    max_rows: int | None,
    progress: bool,
) -> pd.DataFrame:
    """Evaluate ``variant(key)`` for every missing key, ``group`` at a time, adding
    ``{**key, **row(key, outcome)}`` to ``table`` after each group; the rows of ``keys``.
    Under torchrun the groups are split across ranks (rank 0's table holds the rows)."""
    norm = {"mean": loaded.mean, "std": loaded.std}
    todo = pending(table, keys, loaded.name)
    for part in distributed.parts(todo, group):  # all of todo unless run under torchrun
        outs = evaluate_variants(
            loaded.model, ds.images, ds.labels, [variant(k) for k in part],
            batch_size=batch_size, max_rows=max_rows, progress=progress,
            desc=f"{loaded.name} {label(part)}", **norm,
        ) if part else []
        table.add(distributed.gather([{**k, **row(k, o)} for k, o in zip(part, outs)]))
    return table.rows(keys)


def resume(
    table: Table,
    keys: Sequence[dict],
    measure: Callable[[list[dict]], list[dict]],
    *,
    what: str,
    group: int = 1,
) -> pd.DataFrame:
    """Call ``measure(part)`` (-> rows, each carrying its key's columns) on the missing keys,
    ``group`` at a time, adding its rows to ``table`` after each call; the rows of ``keys``.
    Every rank measures every key (not split under torchrun)."""
    todo = pending(table, keys, what, split=False)
    for i in range(0, len(todo), group):
        table.add(measure(todo[i:i + group]))
    return table.rows(keys)
