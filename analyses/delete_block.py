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
from ablate.measures.stats import (
    exceeds_margin_p,
    holm,
    paired_bootstrap,
    tost_equivalent,
)
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
    budget,
    fig,
    judged,
    pct,
    per_image_wrong,
    points,
    read,
    scope,
    twins,
)

__all__ = ["EXPERIMENT", "KEY", "check_deletable", "deletable", "deletion_tests", "row", "run",
           "verdicts", "whole_blocks"]


# --- Verdicts (the report's findings, read from results/<name>/) ---


PLAIN_NEAR_CHANCE = 0.8  # a plain net's deletion counts as "at chance" at 80% of chance error


def _plain_deletion(model: str, d: pd.DataFrame, fig_: str | None) -> Finding:
    chance = 1 - 1 / d.num_classes.iloc[0]
    near = d.error >= PLAIN_NEAR_CHANCE * chance
    outcome = ("holds" if near.all() else "partly" if near.mean() >= 0.5 else "does not hold")
    return Finding(
        "Veit Fig. 3 (plain)",
        "Deleting any single layer of a plain network raises error to chance.",
        f"{model}: intact {pct(d.intact_error.iloc[0])}; {int(near.sum())} of {len(d)} "
        f"single-layer deletions reach {PLAIN_NEAR_CHANCE:.0%} of chance error "
        f"({pct(PLAIN_NEAR_CHANCE * chance)}; chance {pct(chance)}); median {pct(d.error.median())}"
        f", lowest {pct(d.error.min())}",
        judged(outcome, scope(model, "veit", "plain")),
        f"every deletion (the claim says any) at least {PLAIN_NEAR_CHANCE:.0%} of chance error; "
        "at least half of them: partly", fig_)


def _residual_deletion(model: str, d: pd.DataFrame, fig_: str | None) -> Finding:
    fam = d.family.iloc[0]
    section = "Veit Fig. 3" + (" / Fig. 8" if fam == "stochastic_depth" else "")
    claim = ("Deleting a single block of a residual network barely changes its error; only the "
             "downsampling blocks matter noticeably.")
    m, m1 = f"±{100 * EQUIVALENCE_MARGIN:g} point", f"{100 * EQUIVALENCE_MARGIN:g} point"
    crit = (f"(1) barely: at least half of the non-downsampling blocks equivalent to the intact "
            f"net within {m} (TOST at {ALPHA:g}); (2) only the downsampling blocks matter: every "
            f"downsampling block and no other raises error by more than {m1} (one-sided test "
            f"against the margin, Holm over the blocks, p < {ALPHA:g}); both: holds, one: partly")
    if "n_broken" not in d:
        return Finding(section, claim, f"{model}: table predates the paired counts", "not run",
                       crit + "; rerun delete_block", fig_)
    d = deletion_tests(d)
    is_down = d.downsample.astype(bool)
    down, rest = d[is_down], d[~is_down]
    eq = rest.equivalent.tolist()
    barely = bool(len(rest)) and np.mean(eq) >= 0.5
    only_down = bool(down.beyond.all()) and not rest.beyond.any()
    outcome = ("holds" if barely and only_down else "partly" if barely or only_down
               else "does not hold")
    med = rest.error_change.median()
    ours = (f"{model}: intact {pct(d.intact_error.iloc[0])}; non-downsampling blocks "
            f"({len(rest)}): median change {points(med)} points, largest "
            f"{points(rest.error_change.max())}; {sum(eq)} of {len(rest)} shown equivalent "
            f"within {m}; raise error by more than {m1}: {_names(d[d.beyond])}; blocks that "
            f"hurt at all (exact McNemar, Holm over {len(d)} blocks, p < {ALPHA:g}): "
            f"{_names(d[d.hurts])}; "
            + (f"downsampling blocks ({len(down)}): changes "
               + ", ".join(f"{points(c)}" for c in down.error_change) + " points"
               if len(down) else "no downsampling blocks"))
    return Finding(section, claim, ours, judged(outcome, scope(model, "veit", fam)), crit, fig_)


def deletion_tests(d: pd.DataFrame) -> pd.DataFrame:
    """One network's single-block deletions with the per-block tests the verdicts use:
    ``p_holm`` (McNemar, Holm over its blocks), ``hurts`` (significant and harmful),
    ``equivalent`` (TOST within ``EQUIVALENCE_MARGIN``) and ``beyond`` (error raised by more than
    the margin: one-sided test against it, Holm over its blocks)."""
    n = int(d.n_images.iloc[0])
    d = d.assign(p_holm=holm(d.p_value.tolist()))
    p_beyond = [exceeds_margin_p(int(r.n_broken), int(r.n_fixed), n, EQUIVALENCE_MARGIN)
                for r in d.itertuples()]
    return d.assign(
        hurts=(d.p_holm < ALPHA) & (d.error_change > 0),
        beyond=np.asarray(holm(p_beyond)) < ALPHA,
        equivalent=[tost_equivalent(int(r.n_broken), int(r.n_fixed), n, EQUIVALENCE_MARGIN,
                                    ALPHA) for r in d.itertuples()])


def _names(d: pd.DataFrame) -> str:
    if d.empty:
        return "none"
    tags = [f"{int(r.block)}{'*' if r.downsample else ''}" for r in d.itertuples()]
    key = "; * downsampling" if d.downsample.astype(bool).any() else ""
    return f"{len(d)} ({', '.join(tags)}{key})"


PAPER_EPOCHS = (164, 500)  # Veit's nets: He et al.'s recipe; Huang et al.'s for stochastic depth


def _fig8(root: Path, df: pd.DataFrame, fig_: str | None) -> list[Finding]:
    pair = twins(root, df.model.unique().tolist())
    if pair is None or not set(pair) <= set(df.model):
        return []
    const, sd = pair
    claim = ("A network trained with stochastic depth is slightly more robust to deletion, "
             "mainly at the downsampling blocks.")
    crit = (f"(1) more robust: {sd} minus {const}, mean error change per deleted block, 95% "
            "paired bootstrap interval over the same test images entirely below 0; (2) mainly "
            "at the downsampling blocks: that difference at the downsampling blocks minus the "
            "one elsewhere, 95% paired interval entirely below 0; both: holds, one: partly; "
            + ONE_SEED)
    if "correct" not in df:
        return [Finding("Veit Fig. 8", claim, "table predates per-image outcomes", "not run",
                        crit, fig_)]
    a, b = (df[df.model == m].sort_values("block") for m in pair)
    common = sorted(set(a.block) & set(b.block))
    a, b = a[a.block.isin(common)], b[b.block.isin(common)]
    down = a.downsample.astype(bool).to_numpy()

    def change(d: pd.DataFrame, rows: np.ndarray) -> np.ndarray:  # per image, mean over blocks
        return (per_image_wrong(d[rows]).mean(0)
                - per_image_wrong(d.iloc[:1], "intact_correct")[0])

    every = np.ones(len(a), bool)
    diff, lo, hi = paired_bootstrap(change(a, every), change(b, every))
    robust, mainly = hi < 0, None
    ours = (f"{len(common)} blocks deleted one at a time from each: mean error change "
            f"{const} {points(a.error_change.mean())}, {sd} {points(b.error_change.mean())} "
            f"points; difference {points(diff)} (95% paired interval {points(lo)} to "
            f"{points(hi)})")
    if down.any() and (~down).any():
        at_down = change(b, down) - change(a, down)
        elsewhere = change(b, ~down) - change(a, ~down)
        c, clo, chi = paired_bootstrap(elsewhere, at_down)
        mainly = chi < 0
        ours += (f"; at the downsampling blocks {points(at_down.mean())}, elsewhere "
                 f"{points(elsewhere.mean())} points (downsampling minus elsewhere "
                 f"{points(c)}, 95% paired interval {points(clo)} to {points(chi)})")
    spent = budget(dict(zip((const, sd), PAPER_EPOCHS)))
    if spent:
        ours += (f". Confound: {spent}; a net that fits its training data less may lose less "
                 "when a block is deleted")
    parts = [robust] if mainly is None else [robust, mainly]
    outcome = "holds" if all(parts) else "partly" if any(parts) else "does not hold"
    return [Finding("Veit Fig. 8", claim, ours, judged(outcome, scope(sd, "veit")), crit, fig_)]


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
