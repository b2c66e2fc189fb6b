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
resampled together: how precisely the block means are known, not whether the ranking holds over
blocks). The verdicts test the claims over the units they are about: a permutation test of rho
over the blocks (or windows), refused below ``MIN_RANKED_UNITS`` of them, and the pruning rule
itself: the quarter of the blocks with the lowest BI deleted together, against as many random
blocks and the as many cheapest (the oracle). Blocks and windows that change the feature shape
have no cosine and are left out of the correlation (``in_correlation``); their damage is still
reported.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ablate._infra import distributed
from ablate._infra.errors import UsageError
from ablate.data import Dataset, normalize
from ablate.interventions.variants import Variant, evaluate_variants
from ablate.measures.redundancy import rank_correlation, redundancy
from ablate.measures.stats import spearman_permutation
from ablate.models.blocks import blocks, eval_mode
from ablate.models.checkpoint import Loaded
from analyses import command
from analyses.context import condition
from analyses.options import Images, flag
from analyses.plan import Plan, Settings
from analyses.registry import Experiment, Result
from analyses.sweep import resume
from analyses.table import Table
from analyses.verdicts import (
    ALPHA,
    MIN_RANKED_UNITS,
    Finding,
    fig,
    judged,
    points,
    read,
)

__all__ = ["EXPERIMENT", "KEY", "MEASURES", "run", "specs"]

KEY = ("model", "checkpoint_sha256", "dataset", "split", "n_images", "data_sha256", "seed",
       "n_boot", "measure", "n", "block")
MEASURES = ("block_influence", "contribution_ratio", "angular_distance")
DAMAGES = ("error", "loss")
PRUNE_MEASURE = "prune_block_influence"  # rows of ShortGPT's rule: n = blocks deleted together
PRUNE_SHARE = 0.25  # ShortGPT deletes about a quarter of the layers
PRUNE_DRAWS = 20  # random sets against the rule's pick: its p can reach 1/21 < 0.05


def prune_size(n_units: int) -> int:
    """Blocks deleted together by the pruning rule: a quarter of the shape-keeping ones, at
    least one."""
    return max(1, round(PRUNE_SHARE * n_units))


def prune_sets(values: pd.Series, damage: pd.Series, m: int, draws: int = PRUNE_DRAWS,
               seed: int = 0) -> list[tuple[str, list[int]]]:
    """(rule, blocks) to delete together: "lowest" (the m blocks of lowest BI, ``values``
    indexed by block), "oracle" (the m cheapest to delete one at a time, ``damage``), then
    every set of m blocks ("every") where there are at most ``draws``, else ``draws`` random
    ones ("random", drawn from a generator keyed by (seed, m, draw))."""
    cands = sorted(int(b) for b in values.index)
    lowest = sorted(int(b) for b in values.sort_values(kind="stable").index[:m])
    oracle = sorted(int(b) for b in damage.loc[cands].sort_values(kind="stable").index[:m])
    out = [("lowest", lowest), ("oracle", oracle)]
    if math.comb(len(cands), m) <= draws:
        return out + [("every", list(c)) for c in itertools.combinations(cands, m)]
    return out + [("random", sorted(int(b) for b in np.random.default_rng([seed, m, j]).choice(
        cands, size=m, replace=False))) for j in range(draws)]


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
    prune: bool = True,
) -> pd.DataFrame:
    """Every measure of every block (and window) of ``loaded`` beside its deletion damage, and
    each measure's rank correlation with the damage (the same on every row of that measure);
    with ``prune``, also ShortGPT's rule itself (rows of measure ``PRUNE_MEASURE``): the
    :func:`prune_size` blocks of lowest BI deleted together, beside as many random blocks and
    the as many cheapest ones (:func:`prune_sets`).

    All of a model's measure rows are measured together, so a rerun reuses them or measures them
    all; the pruning rows are measured after them, from their means, and resume alike.
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

    got = resume(table, keys, measure, what=f"{loaded.name} redundancy", group=len(keys))
    if not prune:
        return got
    bi = got[(got.measure == "block_influence") & got.in_correlation.astype(bool)]
    if bi.empty:
        return got
    size = prune_size(len(bi))
    sets = prune_sets(bi.set_index("block").value, bi.set_index("block").error_change, size,
                      seed=seed)
    pkeys = [{**base, "seed": seed, "n_boot": n_boot, "measure": PRUNE_MEASURE, "n": size,
              "block": j} for j in range(len(sets))]

    def measure_prune(todo: list[dict]) -> list[dict]:
        return _prune(loaded, ds, sets, pkeys, batch_size, progress)

    rules = resume(table, pkeys, measure_prune, what=f"{loaded.name} pruning rule",
                   group=len(pkeys))
    return pd.concat([got, rules], ignore_index=True)


def _prune(loaded: Loaded, ds: Dataset, sets: list[tuple[str, list[int]]], keys: list[dict],
           batch_size: int, progress: bool) -> list[dict]:
    """Delete each set together; its error and mean per-image loss change against the intact
    net, one row per set (``block`` is the set's index, ``rule`` what chose it)."""
    units = blocks(loaded.model)
    outs = evaluate_variants(loaded.model, ds.images, ds.labels,
                             [Variant()] + [Variant.deleting(b) for _, b in sets],
                             mean=loaded.mean, std=loaded.std, batch_size=batch_size,
                             progress=progress, desc=f"{loaded.name} pruning rule")
    intact = outs[0]
    return [{**k, "rule": rule, "deleted": " ".join(map(str, b)),
             "name": " ".join(units[i].name for i in b), "downsample": False,
             "value": float("nan"), "error_change": o.error - intact.error,
             "loss_change": float((o.loss.double() - intact.loss.double()).mean()),
             "intact_error": intact.error, "in_correlation": False}
            for k, (rule, b), o in zip(keys, sets, outs[1:])]


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


# --- Verdicts (the report's findings, read from results/<name>/) ---


_CLAIMS = {
    "block_influence": (
        "Men et al. 2024 (ShortGPT)",
        "A block whose output barely differs from its input (low Block Influence, 1 - cos(x, y)) "
        "can be deleted at little cost: BI ranks blocks by deletion damage, and deleting the "
        "blocks of lowest BI costs less than deleting as many others."),
    "angular_distance": (
        "Gromov et al. 2024",
        "The n-block window with the smallest angular distance between its input and output is "
        "the cheapest to delete: the distance ranks windows by deletion damage."),
}
MIN_RULE_SETS = round(1 / ALPHA)  # a rule's pick ranked among fewer sets cannot reach p < alpha


def rule_test(picked: float, others: np.ndarray, drawn: bool) -> tuple[float, int]:
    """(p, sets): how often a set deletes at most as much as the rule's pick; ``others`` are
    random draws (Monte Carlo p, the pick counted in) or every set (exact, the pick among
    them)."""
    hits = int((np.asarray(others) <= picked + 1e-12).sum())
    if drawn:
        return (1 + hits) / (1 + len(others)), len(others) + 1
    return hits / len(others), len(others)


def _rank_part(m: pd.DataFrame, what: str) -> tuple[bool | None, str]:
    ok = m[m.in_correlation.astype(bool)] if "in_correlation" in m else m
    r, p, exact = spearman_permutation(ok.value, ok.error_change)
    text = (f"rho = {r:.2f} over {len(ok)} {what}, {'exact' if exact else 'Monte Carlo'} "
            f"permutation p = {p:.2g}")
    if len(ok) < MIN_RANKED_UNITS or np.isnan(p):
        return None, (f"{len(ok)} shape-keeping {what}: fewer than {MIN_RANKED_UNITS}, too few "
                      "to rank")
    return bool(p < ALPHA and r > 0), text


def _prune_part(model: str, m: pd.DataFrame, prune: pd.DataFrame) -> tuple[bool | None, str]:
    """ShortGPT's rule: the m lowest-BI blocks against m random blocks and the m cheapest."""
    ok = m[m.in_correlation.astype(bool)]
    if not prune.empty:
        size = int(prune.n.iloc[0])
        pick = prune[prune.rule == "lowest"].error_change
        oracle = prune[prune.rule == "oracle"].error_change
        rand = prune[prune.rule.isin(("random", "every"))].error_change.to_numpy(dtype=float)
        drawn = bool((prune.rule == "random").any())
        if pick.empty or not rand.size:
            return None, "pruning rows incomplete"
        p, sets = rule_test(float(pick.iloc[0]), rand, drawn)
        oracle_text = f"{points(float(oracle.iloc[0]))}" if len(oracle) else "n/a"
    else:  # one block: every single deletion is in the table already (exact)
        if ok.empty:
            return None, "no blocks"
        size = 1
        low = ok.sort_values(["value", "block"]).iloc[0]
        rand = ok.error_change.to_numpy(dtype=float)
        p, sets = rule_test(float(low.error_change), rand, False)
        pick = pd.Series([low.error_change])
        oracle_text = points(float(ok.error_change.min()))
    text = (f"deleting the {size} lowest-BI block{'s' if size > 1 else ''}: "
            f"{points(float(pick.iloc[0]))} points; {size} random: mean {points(rand.mean())} "
            f"over {len(rand)} {'random' if not prune.empty and drawn else 'possible'} sets "
            f"(share doing at most as little: p = {p:.2g}); the {size} cheapest to delete alone "
            "(oracle): "
            f"{oracle_text}")
    if sets < MIN_RULE_SETS:
        return None, text + f": fewer than {MIN_RULE_SETS} sets, the rule cannot be tested"
    return bool(p < ALPHA), text


def _window_rule(m: pd.DataFrame, n: int) -> tuple[bool | None, str]:
    """Gromov et al.'s rule: the window of smallest distance against every window."""
    ok = m[m.in_correlation.astype(bool)]
    if ok.empty:
        return None, "no windows"
    pick = ok.sort_values(["value", "block"]).iloc[0]
    p, sets = rule_test(float(pick.error_change), ok.error_change.to_numpy(dtype=float), False)
    text = (f"deleting the closest window (blocks {int(pick.block)}-{int(pick.block) + n - 1}): "
            f"{points(float(pick.error_change))} points, the mean window "
            f"{points(ok.error_change.mean())}, the cheapest (oracle) "
            f"{points(ok.error_change.min())}; share of windows doing at most as little: p = "
            f"{p:.2g}")
    if sets < MIN_RULE_SETS:
        return None, text + f" (fewer than {MIN_RULE_SETS} windows: the rule cannot be tested)"
    return bool(p < ALPHA), text


def verdicts(root: Path) -> list[Finding]:
    df, _ = read(root, "redundancy")
    if df is None:
        return [Finding("Men et al. 2024 (ShortGPT)", "Block Influence against deletion damage",
                        "-", "not run", "-")]
    fig_, out = fig(root, "redundancy"), []
    for measure, (section, claim) in _CLAIMS.items():
        d = df[df.measure == measure]
        if d.empty:
            continue
        n = int(d.n.max())  # Block Influence: 1; angular distance: the longest window
        what = "blocks" if n == 1 else f"windows of {n} blocks"
        unit = "a block" if n == 1 else f"a {n}-block window"
        crit = (f"over the {what} (the units the claim ranks): (1) Spearman rho between "
                f"{unit}'s mean {measure.replace('_', ' ')} and the error change when it is "
                f"deleted, one-sided permutation test over them, p < {ALPHA:g} and rho > 0 (at "
                f"least {MIN_RANKED_UNITS} shape-keeping units); (2) the pruning rule: "
                + ("the lowest-BI blocks' deletion damage below that of as many random blocks "
                   f"(p < {ALPHA:g}; the cheapest blocks shown as the oracle)" if n == 1 else
                   f"the closest window's damage among the lowest of all windows (p < "
                   f"{ALPHA:g})")
                + f"; a part with fewer than {MIN_RULE_SETS} sets or {MIN_RANKED_UNITS} units "
                "is not judged; all judged parts: holds, some: partly")
        for model, m in d[d.n == n].groupby("model", sort=False):
            rank, rank_text = _rank_part(m, what)
            if n == 1:
                prune = df[(df.model == model) & (df.measure == PRUNE_MEASURE)]
                rule, rule_text = _prune_part(model, m, prune)
            else:
                rule, rule_text = _window_rule(m, n)
            parts = [x for x in (rank, rule) if x is not None]
            outcome = (None if not parts else "holds" if all(parts) else
                       "partly" if any(parts) else "does not hold")
            ours = (f"{model}: {rank_text}; {rule_text}; {int(m.n_images.iloc[0]):,} images"
                    if "n_images" in m else f"{model}: {rank_text}; {rule_text}")
            out.append(Finding(section, claim, ours,
                               "not run" if outcome is None else judged(outcome, "extension"),
                               crit, fig_))
    return out



# --- The command -----------------------------------------------------------------------------
#   python -m ablate redundancy --model resnet56 vit_cifar --limit 1000 --windows 2 4
# Writes results.csv (one row per model, measure and block or window), meta.json and
# redundancy.pdf/.png; --limit defaults to 1000 images.


@dataclass
class Options(Images):
    windows: list[int] = flag([2, 4], "window lengths of the angular distance beyond single "
                              "blocks", metavar="N")
    n_boot: int = flag(1000, "bootstrap resamples of the images for each rank correlation")


def measure(o: Options) -> Result:
    if o.n_boot < 1 or any(n < 1 for n in o.windows):
        raise UsageError("--n-boot and every --windows length must be at least 1")
    if o.limit is None:
        o.limit = 1000
    loaded = command.load_models(o, EXPERIMENT.default_models)
    ds = command.load_data(o, loaded, EXPERIMENT.demo_limit)
    out, table = command.results_table(o, loaded, "redundancy", KEY)
    df = pd.concat([run(m, ds, windows=o.windows, n_boot=o.n_boot, seed=o.seed, table=table,
                        batch_size=command.batch_size(o, m), progress=distributed.is_main())
                    for m in loaded], ignore_index=True)
    meta = {
        "windows": [1, *sorted(set(o.windows) - {1})], "n_boot": o.n_boot,
        "damage": {"error_change": "test error change when the block or window is deleted",
                   "loss_change": "mean per-image cross-entropy change, same deletion"},
    }
    return Result(out, df, meta, loaded, ds, table, summary=lambda: _summary(df))


def _summary(df: pd.DataFrame) -> None:
    first = df[df.measure != PRUNE_MEASURE].drop_duplicates(["model", "measure", "n"])
    command.print_table(
        first, ["model", "measure", "n", "n_correlated", "rho_error", "rho_error_low",
                "rho_error_high", "rho_loss", "rho_loss_low", "rho_loss_high"],
        title="\nSpearman rho between each measure and the damage of deleting the block (or "
              "window), 95% bootstrap interval over images:")


def reproduce(p: Plan, s: Settings) -> Options:
    """The first ResNet and the ViTs, 4-block windows, on the sweeps' images."""
    return Options(model=[*p.resnets[:1], *p.vits], windows=[4], limit=s.sweep_limit)


EXPERIMENT = Experiment(
    name="redundancy", paper="Men et al. 2024 (Block Influence) and Gromov et al. 2024 "
    "(angular distance) against measured deletion damage", run=run, key=KEY, options=Options,
    measure=measure, verdicts=verdicts, reproduce=reproduce, order=80,
    summary="do Block Influence and angular distance predict deletion damage? (ShortGPT, "
            "Gromov et al. 2024)",
    default_models=("resnet56",),
)
