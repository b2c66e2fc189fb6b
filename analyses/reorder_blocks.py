"""Veit et al. 2016, section 4.3 (Fig. 5b): reorder residual blocks by random swaps.

For k = 0..K, S orders are made by k random swaps of shape-compatible blocks (same stage, neither
changes the shape; a pair is drawn uniformly among all such pairs each time, so a later swap may
undo an earlier one). How far an order is from the original is Kendall's tau over all unit
positions. Draws are keyed by (seed, architecture, k, sample) like the drop-blocks sets, so two
networks of one architecture (resnet110, resnet110-sd) are reordered alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from ablate._infra.errors import UsageError
from ablate.data import Dataset
from ablate.interventions.variants import Variant
from ablate.models.blocks import blocks
from ablate.models.checkpoint import Loaded
from analyses.context import condition
from analyses.drop_blocks import model_key
from analyses.sweep import outcome_columns, sweep
from analyses.table import Table

__all__ = ["KEY", "check", "draw", "kendall_tau", "pairs", "run"]

KEY = ("model", "checkpoint_sha256", "dataset", "split", "n_images", "data_sha256", "seed", "k",
       "sample")
MAX_SWAPS = 20


def pairs(loaded: Loaded) -> list[tuple[int, int]]:
    """Pairs (i < j) of residual blocks of one stage that both keep the feature shape."""
    ok = [b for b in blocks(loaded.model) if b.kind == "residual" and not b.changes_shape]
    return [(a.index, b.index) for a in ok for b in ok if a.index < b.index and a.stage == b.stage]


def check(loaded: Loaded, max_swaps: int | None, samples: int) -> int:
    """The largest number of swaps to run; a UsageError for plain nets or bad numbers."""
    if any(b.kind == "plain" for b in blocks(loaded.model)):
        raise UsageError(f"{loaded.name} is a plain net and cannot be reordered: only residual "
                         "blocks can be swapped; pass a ResNet")
    n = len(pairs(loaded))
    if n == 0:
        raise UsageError(f"{loaded.name} has no two shape-compatible blocks in one stage to swap")
    max_swaps = min(MAX_SWAPS, n) if max_swaps is None else max_swaps
    if max_swaps < 0:
        raise UsageError(f"--max-swaps must be at least 0, not {max_swaps}")
    if samples < 1:
        raise UsageError(f"--samples must be at least 1, not {samples}")
    return max_swaps


def draw(seed: int, arch: str, n_units: int, compatible: Sequence[tuple[int, int]], k: int,
         sample: int) -> list[int]:
    """The order after ``k`` random swaps (``order[i]`` is the unit run at position i), keyed by
    the architecture ``arch`` (not the display name)."""
    rng = np.random.default_rng([seed, model_key(arch), k, sample])
    order = list(range(n_units))
    for _ in range(k):
        i, j = compatible[int(rng.integers(len(compatible)))]
        order[i], order[j] = order[j], order[i]
    return order


def kendall_tau(order: Sequence[int]) -> float:
    """Kendall's tau between ``order`` and the original order 0..n-1 (1: unchanged)."""
    return float(stats.kendalltau(np.arange(len(order)), np.asarray(order)).statistic)


def run(
    loaded: Loaded,
    ds: Dataset,
    *,
    max_swaps: int | None = None,
    samples: int = 20,
    seed: int = 0,
    table: Table | None = None,
    batch_size: int = 256,
    max_rows: int | None = None,
    group: int = 32,
    progress: bool = True,
) -> pd.DataFrame:
    """Rows (one per k and sample) for ``loaded``; rows already in ``table`` are reused.

    Orders are evaluated ``group`` at a time by the batched engine and added to the table after
    each group; under torchrun the groups are split across ranks and rank 0 holds the rows.
    """
    table = Table(None, KEY) if table is None else table
    max_swaps = check(loaded, max_swaps, samples)
    compatible, n_units = pairs(loaded), len(blocks(loaded.model))
    base = {**condition(loaded, ds), "seed": seed}
    keys = [{**base, "k": k, "sample": s}
            for k in range(max_swaps + 1) for s in range(1 if k == 0 else samples)]

    def order(k: dict) -> list[int]:
        return draw(seed, loaded.arch, n_units, compatible, k["k"], k["sample"])

    return sweep(loaded, ds, table, keys, lambda k: Variant.reordered(order(k)),
                 lambda k, o: {"order": " ".join(map(str, order(k))),
                               "kendall_tau": kendall_tau(order(k)),
                               "moved": sum(i != s for i, s in enumerate(order(k))),
                               **outcome_columns(o)},
                 lambda part: f"swaps={part[0]['k']}-{part[-1]['k']}",
                 group=group, batch_size=batch_size, max_rows=max_rows, progress=progress)
