"""Do the pruning papers' redundancy measures predict what deleting a block costs?

ShortGPT (Men et al. 2024) deletes the blocks of lowest Block Influence, Gromov et al. 2024 the
n-block window of smallest angular distance, both assuming the measure ranks blocks by deletion
damage. Here both sides are measured on the same images. Per block, from one activation pass
(:func:`ablate.measures.redundancy.redundancy`): Block Influence ``1 - cos(x, y)``, the
residual-contribution ratio ``||y - x|| / ||x||`` and, per n-block window, the angular distance
between the window's input and its output; per block (or window), the damage of deleting it (the
window: all its blocks at once), from the batched engine: the error change and the mean per-image
loss change against the intact net. Per measure: Spearman's rho between the block means of
measure and damage, with a percentile bootstrap interval over images (measure and damage
resampled together). Blocks and windows that change the feature shape have no cosine and are left
out of the correlation (``in_correlation``); their damage is still reported.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from ablate._infra.errors import UsageError
from ablate.data import Dataset, normalize
from ablate.interventions.variants import Variant, evaluate_variants
from ablate.measures.redundancy import rank_correlation, redundancy
from ablate.models.blocks import blocks, eval_mode
from ablate.models.checkpoint import Loaded
from analyses.context import condition
from analyses.sweep import resume
from analyses.table import Table

__all__ = ["KEY", "MEASURES", "run", "specs"]

KEY = ("model", "checkpoint_sha256", "dataset", "split", "n_images", "data_sha256", "seed",
       "n_boot", "measure", "n", "block")
MEASURES = ("block_influence", "contribution_ratio", "angular_distance")
DAMAGES = ("error", "loss")


def specs(n_blocks: int, windows: Sequence[int]) -> list[tuple[str, int]]:
    """(measure, window length) pairs: the two per-block measures, then angular distance over
    1-block and each longer window that fits."""
    ns = sorted({1, *(int(n) for n in windows if 1 <= int(n) <= n_blocks)})
    return [("block_influence", 1), ("contribution_ratio", 1),
            *(("angular_distance", n) for n in ns)]


def _batches(loaded: Loaded, ds: Dataset, batch_size: int):
    p = next(loaded.model.parameters())
    m = torch.tensor(list(loaded.mean), dtype=torch.float32, device=p.device)
    s = torch.tensor(list(loaded.std), dtype=torch.float32, device=p.device)
    for i in range(0, len(ds), batch_size):
        yield normalize(ds.images[i:i + batch_size].to(p.device), m, s, dtype=p.dtype)


def run(
    loaded: Loaded,
    ds: Dataset,
    *,
    windows: Sequence[int] = (2, 4),
    n_boot: int = 1000,
    seed: int = 0,
    table: Table | None = None,
    batch_size: int = 256,
    progress: bool = True,
) -> pd.DataFrame:
    """Every measure of every block (and window) of ``loaded`` beside its deletion damage, and
    each measure's rank correlation with the damage (the same on every row of that measure).

    All of a model's rows are measured together, so a rerun reuses them or measures them all.
    """
    units = blocks(loaded.model)
    plain = [u.name for u in units if u.kind != "residual"]
    if plain:
        raise UsageError(f"{loaded.name} has plain units ({plain[0]}, ...): the redundancy "
                         "measures compare a residual block's input and output; use a ResNet "
                         "or a transformer")
    table = Table(None, KEY) if table is None else table
    base = condition(loaded, ds)
    L = len(units)
    plan = specs(L, windows)
    keys = [{**base, "seed": seed, "n_boot": n_boot, "measure": m, "n": n, "block": b}
            for m, n in plan for b in range(L - n + 1)]

    def measure(todo: list[dict]) -> list[dict]:
        return _measure(loaded, ds, plan, keys, n_boot, seed, batch_size, progress)

    return resume(table, keys, measure, what=f"{loaded.name} redundancy", group=len(keys))


def _measure(loaded: Loaded, ds: Dataset, plan: list[tuple[str, int]], keys: list[dict],
             n_boot: int, seed: int, batch_size: int, progress: bool) -> list[dict]:
    model, units = loaded.model, blocks(loaded.model)
    ns = sorted({n for _, n in plan if n > 1})
    with eval_mode(model):
        red = redundancy(model, _batches(loaded, ds, batch_size), windows=(1, *ns))
    windows = sorted({n for _, n in plan})
    variants = [Variant()] + [Variant.deleting(range(lo, lo + n)) for n in windows
                              for lo in range(len(units) - n + 1)]
    outs = evaluate_variants(model, ds.images, ds.labels, variants, mean=loaded.mean,
                             std=loaded.std, batch_size=batch_size, progress=progress,
                             desc=f"{loaded.name} deletions for redundancy")
    intact, it = outs[0], iter(outs[1:])
    damage: dict[int, dict[str, np.ndarray]] = {}
    for n in windows:  # [images, windows] per damage, in the order of the variants
        o = [next(it) for _ in range(len(units) - n + 1)]
        damage[n] = {
            "error": np.stack([(~x.correct).double().numpy() - (~intact.correct).double().numpy()
                               for x in o], 1),
            "loss": np.stack([(x.loss.double() - intact.loss.double()).numpy() for x in o], 1),
        }
    arrays = {("block_influence", 1): red.influence, ("contribution_ratio", 1): red.ratio,
              **{("angular_distance", n): a for n, a in red.angular.items()}}
    rows: list[dict] = []
    by_key = {(k["measure"], k["n"], k["block"]): k for k in keys}
    for m, n in plan:
        values = arrays[(m, n)]
        finite = np.isfinite(values)
        count = finite.sum(0)
        means = np.where(count > 0, np.where(finite, values, 0.0).sum(0) / np.maximum(count, 1),
                         np.nan)
        ok = count == len(values)  # shape-changing blocks and windows have no cosine
        corr = {}
        for d in DAMAGES:
            rho, lo, hi = (rank_correlation(values[:, ok], damage[n][d][:, ok], n_boot=n_boot,
                                            seed=seed) if ok.sum() >= 3 else (np.nan,) * 3)
            corr |= {f"rho_{d}": rho, f"rho_{d}_low": lo, f"rho_{d}_high": hi}
        for b in range(values.shape[1]):
            last = units[b + n - 1]
            rows.append({
                **by_key[(m, n, b)], "name": units[b].name if n == 1 else
                f"{units[b].name} .. {last.name}", "downsample": any(
                    u.changes_shape for u in units[b:b + n]),
                "value": float(means[b]), "error_change": float(damage[n]["error"][:, b].mean()),
                "loss_change": float(damage[n]["loss"][:, b].mean()),
                "intact_error": intact.error, "in_correlation": bool(ok[b]),
                "n_correlated": int(ok.sum()), **corr,
            })
    return rows
