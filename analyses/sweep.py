"""The loop every lesion sweep shares: evaluate the missing conditions in batched groups.

Each group of conditions becomes variants for the batched engine; the rows are added to the
resumable table after each group, so a killed sweep loses at most one group. Under torchrun the
groups are split across ranks and rank 0's table gathers every row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from ablate._infra import distributed
from ablate.data import Dataset
from ablate.interventions.variants import Variant, evaluate_variants
from ablate.measures import Outcome
from ablate.models.checkpoint import Loaded
from analyses.table import Table

__all__ = ["outcome_columns", "sweep"]

T = TypeVar("T")


def outcome_columns(out: Outcome) -> dict:
    """errors, error with its Wilson interval, mean loss with its t interval."""
    lo, hi = out.error_interval()
    loss, loss_lo, loss_hi = out.loss_interval()
    return {"errors": out.errors, "error": out.error, "error_low": lo, "error_high": hi,
            "loss": loss, "loss_low": loss_lo, "loss_high": loss_hi}


def sweep(
    loaded: Loaded,
    ds: Dataset,
    table: Table,
    items: Sequence[T],
    variant: Callable[[T], Variant],
    row: Callable[[T, Outcome], dict],
    label: Callable[[list[T]], str],
    *,
    group: int,
    batch_size: int,
    max_rows: int | None,
    progress: bool,
) -> None:
    """Evaluate ``variant(item)`` for every item, ``group`` at a time, adding ``row(item, out)``
    to ``table`` after each group. ``items`` must be the same list on every rank."""
    norm = {"mean": loaded.mean, "std": loaded.std}
    for part in distributed.parts(items, group):  # all of items unless run under torchrun
        outs = evaluate_variants(
            loaded.model, ds.images, ds.labels, [variant(i) for i in part],
            batch_size=batch_size, max_rows=max_rows, progress=progress,
            desc=f"{loaded.name} {label(part)}", **norm,
        ) if part else []
        table.add(distributed.gather([row(i, o) for i, o in zip(part, outs)]))
