"""Veit et al. 2016, section 4.2 (Fig. 5a): delete several random blocks at once.

For k = 0..K, S random sets of k units are deleted together (k = 0 and any k with a single
possible set: one sample). Each set is drawn from its own generator keyed by (seed, architecture,
k, sample), so adding a model, a k or a sample never changes the other draws, and two networks of
one architecture (resnet110 and resnet110-sd) get the same sets: their rows pair up (Fig. 8).
A unit is a residual block (two layers) or a plain net's layer (one): k deleted units of the two
families are not k deleted layers. Downsampling blocks
are left out by default (deleting one is a different experiment, see delete_block); plain nets
draw from their shape-preserving units.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ablate._infra.errors import UsageError
from ablate.data import Dataset
from ablate.interventions.variants import Variant
from ablate.measures import mean_interval
from ablate.models.blocks import blocks
from ablate.models.checkpoint import Loaded
from analyses.context import condition
from analyses.delete_block import deletable
from analyses.sweep import outcome_columns, sweep
from analyses.table import Table

__all__ = [
    "KEY", "candidates", "check", "default_max_k", "draw", "model_key", "run",
    "samples_for", "summary",
]

KEY = ("model", "checkpoint_sha256", "dataset", "split", "n_images", "data_sha256", "seed",
       "include_downsampling", "k", "sample")
MAX_K = 20


def model_key(name: str) -> int:
    """A stable 64-bit number for an architecture name (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")


def candidates(loaded: Loaded, include_downsampling: bool = False) -> list[int]:
    """Units a random set is drawn from: deletable ones, downsampling blocks only if asked."""
    units = blocks(loaded.model)
    return [i for i in deletable(loaded) if include_downsampling or not units[i].changes_shape]


def default_max_k(n: int) -> int:
    """All candidate units, at most 20."""
    return min(n, MAX_K)


def samples_for(n: int, k: int, samples: int) -> int:
    """One sample where only one set exists (k = 0 or k = n), else ``samples``."""
    return 1 if math.comb(n, k) == 1 else samples


def draw(seed: int, arch: str, cands: Sequence[int], k: int, sample: int) -> list[int]:
    """The ``sample``-th random set of ``k`` units of ``cands`` for architecture ``arch`` (sorted;
    keyed by the architecture, not the display name, so twins of one architecture pair up)."""
    rng = np.random.default_rng([seed, model_key(arch), k, sample])
    return sorted(int(i) for i in rng.choice(np.asarray(cands), size=k, replace=False))


def check(loaded: Loaded, max_k: int | None, samples: int, include_downsampling: bool) -> int:
    """The largest k to run (``max_k`` or the default); a UsageError when out of range."""
    n = len(candidates(loaded, include_downsampling))
    max_k = default_max_k(n) if max_k is None else max_k
    if not 0 <= max_k <= n:
        what = "units" if include_downsampling else "units besides the downsampling blocks"
        raise UsageError(f"--max-k {max_k} is out of range: {loaded.name} has {n} deletable "
                         f"{what}; use 0..{n}")
    if samples < 1:
        raise UsageError(f"--samples must be at least 1, not {samples}")
    return max_k


def _as_set_string(v: object) -> str:
    """A deleted set as written, whatever the CSV reader made of it (NaN, 3.0, "3 7")."""
    if isinstance(v, str):
        return v
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return str(int(v))


def _fix_sets(table: Table) -> None:
    """Keep the deleted sets strings (the CSV reader turns "3" into 3.0 and "" into NaN)."""
    for col in ("deleted", "deleted_names"):
        if col in table.df.columns:
            table.df[col] = table.df[col].map(_as_set_string).astype(object)


def run(
    loaded: Loaded,
    ds: Dataset,
    *,
    max_k: int | None = None,
    samples: int = 20,
    seed: int = 0,
    include_downsampling: bool = False,
    table: Table | None = None,
    batch_size: int = 256,
    max_rows: int | None = None,
    group: int = 32,
    progress: bool = True,
) -> pd.DataFrame:
    """Rows (one per k and sample) for ``loaded``; rows already in ``table`` are reused.

    Sets are evaluated ``group`` at a time by the batched engine, and added to the table after
    each group. Under torchrun the groups are split across ranks and rank 0 holds the rows.
    """
    table = Table(None, KEY) if table is None else table
    cands = candidates(loaded, include_downsampling)
    max_k = check(loaded, max_k, samples, include_downsampling)
    base = {**condition(loaded, ds), "seed": seed, "include_downsampling": include_downsampling}
    keys = [{**base, "k": k, "sample": s}
            for k in range(max_k + 1) for s in range(samples_for(len(cands), k, samples))]
    _fix_sets(table)
    units = blocks(loaded.model)

    def sets(k: dict) -> list[int]:
        return draw(seed, loaded.arch, cands, k["k"], k["sample"])

    return sweep(loaded, ds, table, keys, lambda k: Variant.deleting(sets(k)),
                 lambda k, o: {"n_candidates": len(cands),
                               "deleted": " ".join(map(str, sets(k))),
                               "deleted_names": " ".join(units[i].name for i in sets(k)),
                               **outcome_columns(o)},
                 lambda part: f"k={part[0]['k']}-{part[-1]['k']}",
                 group=group, batch_size=batch_size, max_rows=max_rows, progress=progress)


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per (model, k): mean error over the sets with a 95% t interval (clipped to [0, 1]; NaN
    for a single set), and the number of sets."""
    out = []
    for (model, k), d in df.groupby(["model", "k"], sort=False):
        m, lo, hi = mean_interval(d["error"].to_numpy(dtype=float))
        out.append({"model": model, "family": d["family"].iloc[0], "k": int(k), "sets": len(d),
                    "mean_error": m, "mean_low": max(lo, 0.0), "mean_high": min(hi, 1.0),
                    "num_classes": d["num_classes"].iloc[0] if "num_classes" in d else 10})
    return pd.DataFrame(out)
