"""Veit et al. 2016, section 4.3 (Fig. 5b): reorder residual blocks by random swaps.

For k = 0..K, S orders are made by k random swaps of shape-compatible blocks (same stage, neither
changes the shape; a pair is drawn uniformly among all such pairs each time, so a later swap may
undo an earlier one). How far an order is from the original is Kendall's tau over all unit
positions. Draws are keyed by (seed, architecture, k, sample) like the drop-blocks sets, so two
networks of one architecture (resnet110, resnet110-sd) are reordered alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from ablate._infra import distributed
from ablate._infra.errors import UsageError
from ablate._infra.seeds import model_key
from ablate.data import Dataset
from ablate.interventions.variants import Variant
from ablate.measures import mean_interval
from ablate.models.blocks import blocks
from ablate.models.checkpoint import Loaded
from analyses import command
from analyses.context import condition
from analyses.options import Images, flag
from analyses.plan import Plan, Settings
from analyses.registry import Experiment, Result
from analyses.sweep import outcome_columns, sweep
from analyses.table import Table
from analyses.verdicts import (
    MAX_ONE_SWAP_DAMAGE,
    SMOOTH_RHO,
    Finding,
    fig,
    judged,
    pct,
    points,
    read,
    rho,
    scope,
)

__all__ = ["EXPERIMENT", "KEY", "by_swaps", "check", "draw", "kendall_tau", "pairs", "run"]

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


# --- Verdicts (the report's findings, read from results/<name>/) ---


CLAIM_5B = ("Reordering blocks by random swaps of compatible blocks: error increases smoothly as "
            "the order departs from the original (Kendall's tau falls), as it does when blocks "
            "are deleted (paraphrase of Sec. 4.3; the paper states no bound).")


def by_swaps(d: pd.DataFrame) -> pd.DataFrame:
    """Per number of swaps k (the unit the orders were drawn by; a tau bin mixes many k, and
    how far one swap moves tau depends on the number of blocks): orders, mean error with its
    95% t interval, and the range of tau."""
    out = []
    for k, g in d.groupby("k", sort=True):
        m, lo, hi = mean_interval(g.error.to_numpy(dtype=float))
        out.append({"k": int(k), "orders": len(g), "mean_error": m, "low": lo, "high": hi,
                    "tau_min": float(g.kendall_tau.min()), "tau_max": float(g.kendall_tau.max())})
    return pd.DataFrame(out)


def _reorder_verdict(d: pd.DataFrame) -> tuple[str, str]:
    """(outcome, text): "error rises with the number of swaps" and "no cliff at the first
    swap", the second judged by the 95% interval of the one-swap increase."""
    s = by_swaps(d)
    intact = float(s[s.k == 0].mean_error.iloc[0]) if (s.k == 0).any() else float(d.error.min())
    moved = s[s.k > 0]
    r = rho(moved.k, moved.mean_error)
    rises = bool(r >= SMOOTH_RHO)
    one = s[s.k == 1]
    if one.empty:
        return "does not hold", "no orders after exactly one swap"
    o = one.iloc[0]
    inc, lo, hi = o.mean_error - intact, o.low - intact, o.high - intact
    small = ("holds" if hi <= MAX_ONE_SWAP_DAMAGE else "does not hold"
             if lo > MAX_ONE_SWAP_DAMAGE else "inconclusive")
    if math.isnan(hi):  # a single one-swap order: no interval, the point decides
        small = "holds" if inc <= MAX_ONE_SWAP_DAMAGE else "does not hold"
    # A cliff at the first swap contradicts "smoothly" whatever follows; an undecided first
    # swap leaves the verdict undecided only where the error does rise.
    outcome = ("does not hold" if small == "does not hold" else
               ("holds" if small == "holds" else "inconclusive") if rises else
               "partly" if small == "holds" else "does not hold")
    marks = [k for k in (1, 2, 5, 10, 20) if k in set(moved.k)]
    at = {int(x.k): x for x in moved.itertuples()}
    text = (f"intact {pct(intact)}; after one swap ({int(o.orders)} orders, tau "
            f"{o.tau_min:.2f} to {o.tau_max:.2f}): mean increase {points(inc, 1)} points (95% "
            + (f"interval {points(lo, 1)} to {points(hi, 1)})" if not math.isnan(hi) else
               "interval n/a: one order)")
            + "; mean error by number of swaps: "
            + ", ".join(f"{k}: {pct(at[k].mean_error)}" for k in marks)
            + f"; Spearman rho(swaps, mean error) = {r:.2f}; rho(tau, error) over orders = "
            f"{rho(d.kendall_tau, d.error):.2f}")
    return outcome, text


def verdicts(root: Path) -> list[Finding]:
    df, _ = read(root, "reorder_blocks")
    if df is None:
        return [Finding("Veit Fig. 5b", "reordering", "-", "not run", "-")]
    out = []
    for model, d in df.groupby("model", sort=False):
        outcome, text = _reorder_verdict(d)
        fam = d.family.iloc[0] if "family" in d else None
        out.append(Finding(
            "Veit Fig. 5b", CLAIM_5B,
            f"{model}: {len(d)} orders, tau {d.kendall_tau.min():.2f} to "
            f"{d.kendall_tau.max():.2f}; {text}",
            judged(outcome, scope(model, "veit", fam)),
            f"by number of swaps, not tau bins: rises: rho(swaps, mean error) >= "
            f"{SMOOTH_RHO:g}; smooth: after one swap the 95% interval of the mean error "
            f"increase at most {100 * MAX_ONE_SWAP_DAMAGE:g} points; both: holds; the interval "
            "beyond it: does not hold; straddling it: inconclusive (with the rise; else does "
            "not hold); a small first swap without the rise: partly",
            fig(root, "reorder_blocks")))
    return out



# --- The command -----------------------------------------------------------------------------
#   python -m ablate reorder_blocks --model resnet110 resnet110-sd --max-swaps 20 --samples 20
# Writes results.csv (one row per model, number of swaps and random order, with Kendall's tau
# against the original order), meta.json and reorder_blocks.pdf/.png.


@dataclass
class Options(Images):
    max_swaps: int | None = flag(None, "largest number of swaps (default: 20, or the number of "
                                 "compatible pairs)")
    samples: int = flag(20, "random orders per number of swaps")


def measure(o: Options) -> Result:
    loaded = command.load_models(o, EXPERIMENT.default_models)
    for m in loaded:  # refuse plain nets and bad numbers before computing anything
        check(m, o.max_swaps, o.samples)
    ds = command.load_data(o, loaded, EXPERIMENT.demo_limit)
    out, table = command.results_table(o, loaded, "reorder_blocks", KEY)
    df = pd.concat([run(m, ds, max_swaps=o.max_swaps, samples=o.samples, seed=o.seed,
                        table=table, batch_size=command.batch_size(o, m),
                        progress=distributed.is_main()) for m in loaded], ignore_index=True)
    meta = {"samples": o.samples, "max_swaps": o.max_swaps}
    return Result(out, df, meta, loaded, ds, table, summary=lambda: _summary(df))


def _summary(df: pd.DataFrame) -> None:
    for model, d in df.groupby("model", sort=False):
        rows = []
        for k, g in d.groupby("k"):
            m, lo, hi = mean_interval(g["error"].to_numpy(dtype=float))
            rows.append({"swaps": k, "orders": len(g), "tau": g["kendall_tau"].mean(),
                         "error_pct": m * 100, "low_pct": max(lo, 0.0) * 100,
                         "high_pct": min(hi, 1.0) * 100})
        command.print_table(
            pd.DataFrame(rows), ["swaps", "orders", "tau", "error_pct", "low_pct", "high_pct"],
            title=f"\n{model}: mean test error (%) over random orders, 95% t interval")


def reproduce(p: Plan, s: Settings) -> Options:
    """Fig. 5b on the ResNets and the ViTs."""
    return Options(model=p.sweeps, samples=s.reorder_samples, max_swaps=s.max_swaps,
                   limit=s.sweep_limit)


EXPERIMENT = Experiment(
    name="reorder_blocks", paper="Veit et al. 2016, Fig. 5b", run=run, key=KEY,
    options=Options, measure=measure, verdicts=verdicts, reproduce=reproduce, order=30,
    summary="swap random pairs of blocks (Veit et al. 2016, Fig. 5b)",
)
