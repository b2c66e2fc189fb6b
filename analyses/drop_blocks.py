"""Veit et al. 2016, section 4.2 (Fig. 5a): delete several random blocks at once.

For k = 0..K, S random sets of k units are deleted together; where there are at most S sets of
k units (k = 0, k = n, and k = 1 of a 7-block ViT), every set is deleted once instead (sample i is
the i-th set in lexicographic order), so the mean over sets is exact rather than drawn. Each
random set is drawn from its own generator keyed by (seed, architecture, k, sample), so adding a
model, a k or a sample never changes the other draws, and two networks of one architecture
(resnet110 and resnet110-sd) get the same sets: their rows pair up (Fig. 8).
A unit is a residual block (two layers) or a plain net's layer (one): k deleted units of the two
families are not k deleted layers. Downsampling blocks
are left out by default (deleting one is a different experiment, see delete_block); plain nets
draw from their shape-preserving units.
"""

from __future__ import annotations

import io
import itertools
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from ablate._infra import distributed
from ablate._infra.errors import UsageError
from ablate._infra.io import write_text
from ablate._infra.seeds import model_key
from ablate.data import Dataset
from ablate.interventions.variants import Variant
from ablate.measures import mean_interval
from ablate.models.blocks import blocks, deletable_units
from ablate.models.checkpoint import Loaded
from analyses import command
from analyses.context import condition
from analyses.options import Images, flag
from analyses.plan import Plan, Settings
from analyses.registry import Experiment, Result
from analyses.sweep import outcome_columns, sweep
from analyses.table import Table, _norm, locked, read_rows
from analyses.verdicts import (
    MAX_STEP,
    SMOOTH_RHO,
    UNITS,
    VEIT_K10_ERROR,
    VEIT_K10_TOLERANCE,
    Finding,
    fig,
    judged,
    pct,
    points,
    read,
    rho,
    scope,
    units,
)

__all__ = ["EXPERIMENT",
    "KEY", "candidates", "check", "default_max_k", "draw", "enumerated", "run",
    "samples_for", "set_for", "steps", "summary",
]

KEY = ("model", "checkpoint_sha256", "dataset", "split", "n_images", "data_sha256", "seed",
       "include_downsampling", "k", "sample")
MAX_K = 20


def candidates(loaded: Loaded, include_downsampling: bool = False) -> list[int]:
    """Units a random set is drawn from: deletable ones, downsampling blocks only if asked."""
    return [u.index for u in deletable_units(loaded.model)
            if include_downsampling or not u.changes_shape]


def default_max_k(n: int) -> int:
    """All candidate units, at most 20."""
    return min(n, MAX_K)


def samples_for(n: int, k: int, samples: int) -> int:
    """Every set where there are at most ``samples`` of them (one for k = 0 or k = n), else
    ``samples`` random ones."""
    return min(math.comb(n, k), samples)


def enumerated(n: int, k: int, samples: int) -> bool:
    """Whether the sets of k of n units are all enumerated rather than drawn."""
    return math.comb(n, k) <= samples


def set_for(seed: int, arch: str, cands: Sequence[int], k: int, sample: int,
            samples: int) -> list[int]:
    """The set of the key (k, sample): the ``sample``-th of all sets of k units in
    lexicographic order where they are enumerated, else the random draw :func:`draw`."""
    if enumerated(len(cands), k, samples):
        return list(next(itertools.islice(itertools.combinations(sorted(cands), k), sample,
                                          None)))
    return draw(seed, arch, cands, k, sample)


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


def _drop_stale(table: Table, keys: list[dict], sets, n: int, samples: int) -> None:
    """Remove rows measured before the sets of their k were enumerated: a row whose deleted set
    is not the one its key names now, or a sample beyond the number of sets of an enumerated k;
    the keys' rows are then measured anew."""
    if table.df.empty or "deleted" not in table.df:
        return
    want = {tuple(_norm(k[c]) for c in KEY): " ".join(map(str, sets(k))) for k in keys}
    cond = [c for c in KEY if c != "sample"]
    count = {tuple(_norm(k[c]) for c in cond): math.comb(n, k["k"]) for k in keys
             if enumerated(n, k["k"], samples)}

    def stale(df: pd.DataFrame) -> np.ndarray:
        out = []
        for r, d in zip(df[list(KEY)].itertuples(index=False), df["deleted"]):
            key = tuple(_norm(v) for v in r)
            c = count.get(tuple(v for c_, v in zip(KEY, key) if c_ != "sample"))
            beyond = c is not None and int(r.sample) >= c
            out.append(beyond or (key in want and _as_set_string(d) != want[key]))
        return np.array(out, dtype=bool)

    gone = stale(table.df)
    if not gone.any():
        return
    print(f"drop_blocks: {int(gone.sum())} row(s) were drawn at random before the sets of their "
          "k were enumerated: removed, and their keys measured anew", file=sys.stderr)
    if table.path is not None:
        with locked(table.path):
            disk, _ = read_rows(table.path, table.text)
            disk = disk[~stale(disk)] if "deleted" in disk else disk
            buf = io.StringIO()
            disk.to_csv(buf, index=False)
            write_text(table.path, buf.getvalue())
    table.df = table.df[~gone].reset_index(drop=True)


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
        return set_for(seed, loaded.arch, cands, k["k"], k["sample"], samples)

    _drop_stale(table, keys, sets, len(cands), samples)

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


# --- Verdicts (the report's findings, read from results/<name>/) ---


def _drop_plain(model: str, d: pd.DataFrame, fig_: str | None) -> Finding:
    e1 = d[d.k == 1].mean_error
    chance = 1 - 1 / d.num_classes.iloc[0]
    ok = len(e1) and float(e1.iloc[0]) >= 0.8 * chance
    return Finding(
        "Veit Fig. 5a (plain)", "A plain network collapses after any deletion.",
        (f"{model}: mean error with one layer deleted {pct(float(e1.iloc[0]))}" if len(e1) else
         f"{model}: no k = 1 sets") + f" ({UNITS})",
        judged("holds" if ok else "does not hold", scope(model, "veit", "plain")),
        "mean error at k = 1 at least 80% of chance", fig_)


def _exact(d: pd.DataFrame, n: int) -> bool:
    """Whether the rows of one k hold every possible set (the mean is then exact, not drawn)."""
    k = int(d.k.iloc[0])
    sets = d.deleted.map(_as_set_string).nunique() if "deleted" in d else len(d)
    return sets >= math.comb(n, k)


def steps(d: pd.DataFrame, n: int) -> pd.DataFrame:
    """Per k > 0 of one model: the rise of the mean error from k - 1 and the lower bound of its
    95% Welch interval (a k whose sets are all enumerated adds no sampling error)."""
    out, prev = [], None
    for k, g in d.groupby("k", sort=True):
        e = g.error.to_numpy(dtype=float)
        var = 0.0 if _exact(g, n) or e.size < 2 else float(e.var(ddof=1)) / e.size
        cur = (float(e.mean()), var, e.size)
        if prev is not None:
            rise, v = cur[0] - prev[0], cur[1] + prev[1]
            dof = (v * v / sum(x[1] ** 2 / (x[2] - 1) for x in (prev, cur) if x[1] > 0)
                   if v > 0 else math.inf)
            half = float(stats.t.ppf(0.975, dof)) * math.sqrt(v) if v > 0 else 0.0
            out.append({"k": int(k), "rise": rise, "rise_low": rise - half})
        prev = cur
    return pd.DataFrame(out, columns=["k", "rise", "rise_low"])


def _fig5a(model: str, rows: pd.DataFrame, d: pd.DataFrame, fig_: str | None) -> Finding:
    n = int(rows.n_candidates.iloc[0]) if "n_candidates" in rows else int(d.k.max())
    r = rho(d.k, d.mean_error)
    st = steps(rows, n)
    cliff = st[st.rise_low >= MAX_STEP]
    big = st.loc[st.rise.idxmax()] if len(st) else None
    k10 = round(10 / 54 * n)
    at = d[d.k == k10]
    size = bool(len(at)) and abs(float(at.mean_error.iloc[0]) - VEIT_K10_ERROR) <= \
        VEIT_K10_TOLERANCE
    shape = r >= SMOOTH_RHO and cliff.empty
    outcome = "holds" if shape and size else "partly" if shape or size else "does not hold"
    enumerated = [int(k) for k, g in rows.groupby("k") if 0 < k < n and _exact(g, n)]
    at_text = "n/a"
    if len(at):
        a = at.iloc[0]
        at_text = pct(float(a.mean_error)) + (
            " (every set: exact)" if k10 in enumerated else
            f" [{pct(float(a.mean_low))}, {pct(float(a.mean_high))}]"
            if not math.isnan(a.mean_low) else "")
    return Finding(
        "Veit Fig. 5a",
        "Error grows smoothly with the number of deleted blocks: about 20% with 10 of 54 "
        "blocks of ResNet-110 deleted.",
        f"{model}: mean error {pct(float(d.mean_error.iloc[0]))} at k = 0 to "
        f"{pct(float(d.mean_error.iloc[-1]))} at k = {int(d.k.iloc[-1])} "
        f"{units(d.family.iloc[0])}; Spearman rho(k, mean error) = {r:.2f}; largest rise "
        + (f"{points(float(big.rise), 1)} points (k = {int(big.k) - 1} to {int(big.k)}, 95% "
           f"lower bound {points(float(big.rise_low), 1)})" if big is not None else "n/a")
        + f"; at k = {k10} ({k10} of its {n} blocks, Veit's 10 of 54): {at_text} against "
        f"Veit's about {pct(VEIT_K10_ERROR)}"
        + (f"; every set enumerated at k = {', '.join(map(str, enumerated))}"
           if enumerated else "") + f" ({UNITS})",
        judged(outcome, scope(model, "veit", d.family.iloc[0])),
        f"shape: rho(k, mean error) >= {SMOOTH_RHO:g} and no step from k - 1 to k whose 95% "
        f"lower bound reaches {100 * MAX_STEP:g} points; size: mean error at 10 of 54 blocks "
        f"(scaled to the net's n) within {100 * VEIT_K10_TOLERANCE:g} points of Veit's "
        f"{pct(VEIT_K10_ERROR)}; both: holds, shape or size only: partly", fig_)


def verdicts(root: Path) -> list[Finding]:
    df, _ = read(root, "drop_blocks")
    if df is None:
        return [Finding("Veit Fig. 5a", "k-block deletion", "-", "not run", "-")]

    out, fig_ = [], fig(root, "drop_blocks")
    for model, d in summary(df).groupby("model", sort=False):
        d = d.sort_values("k")
        if d.family.iloc[0] == "plain":
            out.append(_drop_plain(model, d, fig_))
        else:
            out.append(_fig5a(model, df[df.model == model], d, fig_))
    return out



# --- The command -----------------------------------------------------------------------------
#   python -m ablate drop_blocks --model resnet110 plain110 resnet110-sd --samples 20
#   torchrun --standalone --nproc_per_node 4 -m ablate.drop_blocks --model resnet110 ...
# Writes results.csv (one row per model, k and random set), meta.json and drop_blocks.pdf/.png;
# a larger --max-k or --samples computes only the new sets.


@dataclass
class Options(Images):
    max_k: int | None = flag(None, "largest number of deleted blocks (default: all candidates, "
                             "at most 20)")
    samples: int = flag(20, "random sets per k")
    include_downsampling: bool = flag(False, "let the random sets include downsampling blocks")


def measure(o: Options) -> Result:
    loaded = command.load_models(o, EXPERIMENT.default_models)
    for m in loaded:  # refuse a bad --max-k for any model before computing anything
        check(m, o.max_k, o.samples, o.include_downsampling)
    ds = command.load_data(o, loaded, EXPERIMENT.demo_limit)
    out, table = command.results_table(o, loaded, "drop_blocks", KEY,
                                       text=("deleted", "deleted_names"))
    df = pd.concat([run(m, ds, max_k=o.max_k, samples=o.samples, seed=o.seed,
                        include_downsampling=o.include_downsampling, table=table,
                        batch_size=command.batch_size(o, m), progress=distributed.is_main())
                    for m in loaded], ignore_index=True)
    meta = {"samples": o.samples, "max_k": o.max_k,
            "include_downsampling": o.include_downsampling}
    return Result(out, df, meta, loaded, ds, table, summary=lambda: _summary(df))


def _summary(df: pd.DataFrame) -> None:
    for model, d in summary(df).groupby("model", sort=False):
        command.print_table(
            d.assign(error_pct=d.mean_error * 100, low_pct=d.mean_low * 100,
                     high_pct=d.mean_high * 100),
            ["k", "sets", "error_pct", "low_pct", "high_pct"],
            title=f"\n{model}: mean test error (%) over random sets of k deleted blocks, 95% t "
                  "interval",
        )


def reproduce(p: Plan, s: Settings) -> Options:
    """Fig. 5a on the ResNets and the ViTs."""
    return Options(model=p.sweeps, samples=s.drop_samples, limit=s.sweep_limit)


EXPERIMENT = Experiment(
    name="drop_blocks", paper="Veit et al. 2016, Fig. 5a", run=run, key=KEY, options=Options,
    measure=measure, verdicts=verdicts, reproduce=reproduce, order=20,
    summary="delete k random blocks at once (Veit et al. 2016, Fig. 5a)",
    default_models=("resnet20", "plain20"),
)
