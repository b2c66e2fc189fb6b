"""The ``delete_block`` experiment: Veit et al. 2016, Figs. 3 and 8 (and Huang et al.'s Table 1
read from the same table): delete one unit at a time, measured by :mod:`analyses.deletion`.

    python -m ablate delete_block --model resnet110 plain110 --data cifar10-png.tar.gz
    python -m ablate delete_block --model vit_cifar --branches   # also each attention/MLP branch

Writes ``results.csv`` (one row per model and deleted unit), ``meta.json`` and
``delete_block.pdf/.png``; rerunning with the same arguments reuses the rows already written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ablate._infra import distributed
from ablate._infra.errors import UsageError
from ablate.measures.stats import holm, paired_bootstrap, tost_equivalent
from ablate.models.blocks import blocks
from ablate.models.transformers import is_transformer
from analyses import command
from analyses.deletion import KEY, check_deletable, deletable, row, run, whole_blocks
from analyses.options import Images, flag
from analyses.plan import Plan, Settings
from analyses.registry import Experiment, Result
from analyses.verdicts import (
    ALPHA,
    EQUIVALENCE_MARGIN,
    ONE_SEED,
    Finding,
    fig,
    pct,
    per_image_wrong,
    read,
    twins,
)

__all__ = ["EXPERIMENT", "KEY", "check_deletable", "deletable", "deletion_tests", "row", "run",
           "verdicts", "whole_blocks"]


# --- Verdicts (the report's findings, read from results/<name>/) ---


def _plain_deletion(model: str, d: pd.DataFrame, fig_: str | None) -> Finding:
    chance = 1 - 1 / d.num_classes.iloc[0]
    med = d.error.median()
    return Finding(
        "Veit Fig. 3 (plain)",
        "Deleting any single layer of a plain network raises error to chance.",
        f"{model}: intact {pct(d.intact_error.iloc[0])}; after deleting one of {len(d)} layers: "
        f"median {pct(med)}, lowest {pct(d.error.min())} (chance {pct(chance)})",
        "reproduces" if med >= 0.8 * chance else "does not reproduce",
        "median error after a deletion at least 80% of chance error", fig_)


def _residual_deletion(model: str, d: pd.DataFrame, fig_: str | None) -> Finding:
    fam = d.family.iloc[0]
    section = "Veit Fig. 3" + (" / Fig. 8" if fam == "stochastic_depth" else "")
    claim = ("Deleting a single block of a residual network barely changes its error; only the "
             "downsampling blocks matter noticeably.")
    crit = (f"at least half of the non-downsampling blocks equivalent to the intact net within "
            f"±{100 * EQUIVALENCE_MARGIN:g} point (TOST at {ALPHA:g}: 90% paired interval inside "
            "the margin), and the downsampling blocks' mean change above the others' median")
    if "n_broken" not in d:
        return Finding(section, claim, f"{model}: table predates the paired counts", "not run",
                       crit + "; rerun delete_block", fig_)
    d = deletion_tests(d)
    down, rest = d[d.downsample.astype(bool)], d[~d.downsample.astype(bool)]
    eq = rest.equivalent.tolist()
    hurt = d[d.hurts]
    med = rest.error_change.median()
    ok = bool(rest.size) and np.mean(eq) >= 0.5 and (
        down.empty or down.error_change.mean() > med)
    ours = (f"{model}: intact {pct(d.intact_error.iloc[0])}; non-downsampling blocks "
            f"({len(rest)}): median change {100 * med:+.2f} points, largest "
            f"{100 * rest.error_change.max():+.2f}; {sum(eq)} of {len(rest)} shown equivalent "
            f"within ±{100 * EQUIVALENCE_MARGIN:g} point; blocks that hurt (exact McNemar, Holm "
            f"over {len(d)} blocks, p < {ALPHA:g}): {_names(hurt)}; "
            + (f"downsampling blocks ({len(down)}): mean change "
               f"{100 * down.error_change.mean():+.2f} points" if len(down) else
               "no downsampling blocks"))
    return Finding(section, claim, ours, "reproduces" if ok else "does not reproduce", crit,
                   fig_)


def deletion_tests(d: pd.DataFrame) -> pd.DataFrame:
    """One network's single-block deletions with the per-block tests the verdicts use:
    ``p_holm`` (McNemar, Holm over its blocks), ``hurts`` (significant and harmful) and
    ``equivalent`` (TOST within ``EQUIVALENCE_MARGIN``)."""
    n = int(d.n_images.iloc[0])
    d = d.assign(p_holm=holm(d.p_value.tolist()))
    return d.assign(
        hurts=(d.p_holm < ALPHA) & (d.error_change > 0),
        equivalent=[tost_equivalent(int(r.n_broken), int(r.n_fixed), n, EQUIVALENCE_MARGIN,
                                    ALPHA) for r in d.itertuples()])


def _names(d: pd.DataFrame) -> str:
    if d.empty:
        return "none"
    tags = [f"{int(r.block)}{'*' if r.downsample else ''}" for r in d.itertuples()]
    key = "; * downsampling" if d.downsample.astype(bool).any() else ""
    return f"{len(d)} ({', '.join(tags)}{key})"


def _fig8(root: Path, df: pd.DataFrame, fig_: str | None) -> list[Finding]:
    pair = twins(root, df.model.unique().tolist())
    if pair is None or not set(pair) <= set(df.model):
        return []
    const, sd = pair
    claim = ("A network trained with stochastic depth is slightly more robust to deletion, "
             "mainly at the downsampling blocks.")
    crit = (f"{sd} minus {const}: mean error change per deleted block, 95% paired bootstrap "
            f"interval over the same test images entirely below 0; {ONE_SEED}")
    if "correct" not in df:
        return [Finding("Veit Fig. 8", claim, "table predates per-image outcomes", "not run",
                        crit, fig_)]
    a, b = (df[df.model == m].sort_values("block") for m in pair)
    common = sorted(set(a.block) & set(b.block))
    a, b = a[a.block.isin(common)], b[b.block.isin(common)]
    change = {m: per_image_wrong(d).mean(0) - per_image_wrong(d.iloc[:1], "intact_correct")[0]
              for m, d in ((const, a), (sd, b))}
    diff, lo, hi = paired_bootstrap(change[const], change[sd])
    down = a.downsample.astype(bool).to_numpy()
    dd = (b.error_change.to_numpy() - a.error_change.to_numpy())
    ours = (f"{len(common)} blocks deleted one at a time from each: mean error change "
            f"{const} {100 * a.error_change.mean():+.2f}, {sd} {100 * b.error_change.mean():+.2f} "
            f"points; difference {100 * diff:+.2f} (95% paired interval {100 * lo:+.2f} to "
            f"{100 * hi:+.2f})"
            + (f"; at the downsampling blocks {100 * dd[down].mean():+.2f}, elsewhere "
               f"{100 * dd[~down].mean():+.2f} points" if down.any() and (~down).any() else ""))
    return [Finding("Veit Fig. 8", claim, ours, "reproduces" if hi < 0 else "does not reproduce",
                    crit, fig_)]


def verdicts(root: Path) -> list[Finding]:
    df, _ = read(root, "delete_block")
    if df is None:
        return [Finding("Veit Fig. 3", "single-block deletion", "-", "not run", "-")]

    out, fig_ = [], fig(root, "delete_block")
    df = whole_blocks(df)  # Veit's findings are on whole blocks; a ViT's branches are extra
    for model, d in df.groupby("model", sort=False):
        if d.family.iloc[0] == "plain":
            out.append(_plain_deletion(model, d, fig_))
        else:
            out.append(_residual_deletion(model, d, fig_))
    return out + _fig8(root, df, fig_)



# --- The command -----------------------------------------------------------------------------


@dataclass
class Options(Images):
    blocks: str = flag("all", "units to delete: all, or e.g. 0,3,5-9")
    branches: bool = flag(False, "transformers: also delete each attention and MLP branch alone "
                          "(rows with granularity 'branch'); other networks have no branches")


def measure(o: Options) -> Result:
    loaded = command.load_models(o, EXPERIMENT.default_models)
    if o.branches and not any(is_transformer(m.model) for m in loaded):
        raise UsageError("--branches deletes a transformer's attention and MLP branches, and "
                         f"none of {', '.join(m.name for m in loaded)} is a transformer: drop "
                         "--branches, or add a ViT (e.g. --model vit_cifar)")
    chosen = []  # refuse a bad --blocks for any model before writing anything
    for m in loaded:
        chosen.append(command.parse_range(o.blocks, len(blocks(m.model)) - 1))
        if chosen[-1] is not None:
            check_deletable(m, chosen[-1])
    ds = command.load_data(o, loaded, EXPERIMENT.demo_limit)
    out, table = command.results_table(o, loaded, "delete_block", KEY)
    frames = [run(m, ds, indices=idx, branches=o.branches, table=table,
                  batch_size=command.batch_size(o, m), progress=distributed.is_main())
              for m, idx in zip(loaded, chosen)]
    df = pd.concat(frames, ignore_index=True)
    return Result(out, df, {}, loaded, ds, table, summary=lambda: _summary(df))


def _summary(df: pd.DataFrame) -> None:
    for model, d in whole_blocks(df).groupby("model", sort=False):
        worst = d.nlargest(5, "error_change")
        command.print_table(
            worst.assign(error_pct=worst.error * 100, change_pct=worst.error_change * 100),
            ["block", "block_name", "downsample", "error_pct", "change_pct", "p_value"],
            title=f"\n{model}: intact error {d.intact_error.iloc[0]:.2%}; "
                  f"median after deleting one unit {d.error.median():.2%}; most damaging:",
        )
    single = df.drop(whole_blocks(df).index)
    for model, d in single.groupby("model", sort=False):
        worst = d.nlargest(5, "error_change")
        command.print_table(
            worst.assign(error_pct=worst.error * 100, change_pct=worst.error_change * 100,
                         layer=worst.layer.astype(int)),
            ["layer", "branch", "block_name", "error_pct", "change_pct", "p_value"],
            title=f"\n{model}: median after deleting one branch {d.error.median():.2%}; "
                  "most damaging:",
        )


def reproduce(p: Plan, s: Settings) -> Options:
    """Fig. 3 (and Fig. 8, Huang's Table 1): the ResNets, the SD pair, the plain net, the ViTs
    with their branches, on ``s.limit`` images."""
    return Options(model=p.deletion, limit=s.limit, branches=bool(p.vits))


EXPERIMENT = Experiment(
    name="delete_block", paper="Veit et al. 2016, Figs. 3 and 8", run=run, key=KEY,
    options=Options, measure=measure, verdicts=verdicts, reproduce=reproduce, order=10,
    summary="delete one block at a time (Veit et al. 2016, Figs. 3 and 8)",
    default_models=("resnet56", "plain56"), demo_limit=2000,
)
