"""Verdicts on the lesion experiments of Veit et al. 2016: Figs. 3, 8, 5a and 5b."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ablate.measures.stats import holm, paired_bootstrap, tost_equivalent
from figures.verdicts import (
    ALPHA,
    EQUIVALENCE_MARGIN,
    HIGH_TAU,
    MAX_HIGH_TAU_DAMAGE,
    MONOTONE_TOLERANCE,
    ONE_SEED,
    UNITS,
    Finding,
    fig,
    pct,
    per_image_wrong,
    read,
    rho,
    twins,
    units,
)

__all__ = ["delete_block", "deletion_tests", "drop_blocks", "reorder_blocks"]


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


def delete_block(root: Path) -> list[Finding]:
    df, _ = read(root, "delete_block")
    if df is None:
        return [Finding("Veit Fig. 3", "single-block deletion", "-", "not run", "-")]
    from analyses.delete_block import whole_blocks

    out, fig_ = [], fig(root, "delete_block")
    df = whole_blocks(df)  # Veit's findings are on whole blocks; a ViT's branches are extra
    for model, d in df.groupby("model", sort=False):
        if d.family.iloc[0] == "plain":
            out.append(_plain_deletion(model, d, fig_))
        else:
            out.append(_residual_deletion(model, d, fig_))
    return out + _fig8(root, df, fig_)


def _drop_plain(model: str, d: pd.DataFrame, fig_: str | None) -> Finding:
    e1 = d[d.k == 1].mean_error
    chance = 1 - 1 / d.num_classes.iloc[0]
    ok = len(e1) and float(e1.iloc[0]) >= 0.8 * chance
    return Finding(
        "Veit Fig. 5a (plain)", "A plain network collapses after any deletion.",
        (f"{model}: mean error with one layer deleted {pct(float(e1.iloc[0]))}" if len(e1) else
         f"{model}: no k = 1 sets") + f" ({UNITS})",
        "reproduces" if ok else "does not reproduce", "mean error at k = 1 at least 80% of chance",
        fig_)


def drop_blocks(root: Path) -> list[Finding]:
    df, _ = read(root, "drop_blocks")
    if df is None:
        return [Finding("Veit Fig. 5a", "k-block deletion", "-", "not run", "-")]
    from analyses.drop_blocks import summary

    out, fig_ = [], fig(root, "drop_blocks")
    for model, d in summary(df).groupby("model", sort=False):
        d = d.sort_values("k")
        if d.family.iloc[0] == "plain":
            out.append(_drop_plain(model, d, fig_))
            continue
        r = rho(d.k, d.mean_error)
        jump = float(np.diff(d.mean_error.to_numpy()).max()) if len(d) > 1 else float("nan")
        n = int(df[df.model == model].n_candidates.iloc[0]) if "n_candidates" in df else int(
            d.k.max())
        k10 = round(10 / 54 * n)
        at = d[d.k == k10].mean_error
        out.append(Finding(
            "Veit Fig. 5a",
            "Error grows smoothly with the number of deleted blocks: about 20% with 10 of 54 "
            "blocks of ResNet-110 deleted.",
            f"{model}: mean error {pct(float(d.mean_error.iloc[0]))} at k = 0 to "
            f"{pct(float(d.mean_error.iloc[-1]))} at k = {int(d.k.iloc[-1])} "
            f"{units(d.family.iloc[0])}; Spearman rho(k, error) = {r:.2f}; largest step "
            f"{100 * jump:+.1f} points; at k = {k10} ({k10} of its {n} blocks, Veit's 10 of 54): "
            f"{pct(float(at.iloc[0])) if len(at) else 'n/a'} ({UNITS})",
            "reproduces" if r >= 0.9 and jump < 0.2 else "does not reproduce",
            "rho >= 0.9 (error rises with k) and no single step of 20 points or more", fig_))
    return out


def tau_bins(d: pd.DataFrame) -> pd.Series:
    """Mean error per Kendall's-tau bin of width 0.1, from the highest tau down (k > 0 only)."""
    moved = d[d.k > 0]
    edges = np.round(np.floor(moved.kendall_tau.to_numpy() * 10 - 1e-9) / 10, 1)
    return moved.error.groupby(edges).mean().sort_index(ascending=False)


def _reorder_verdict(d: pd.DataFrame) -> tuple[bool, str]:
    intact = float(d[d.k == 0].error.mean()) if (d.k == 0).any() else float(d.error.min())
    moved = d[d.k > 0]
    high = moved[moved.kendall_tau >= HIGH_TAU]
    which = f"tau >= {HIGH_TAU:g}"
    if high.empty:
        high, which = moved[moved.k == 1], "one swap (no order reaches tau 0.9)"
    damage = float(high.error.mean() - intact) if len(high) else float("nan")
    bins = tau_bins(d)
    steps = np.diff(bins.to_numpy())
    mono = bool(len(bins) >= 2 and (steps >= -MONOTONE_TOLERANCE).all())
    r = rho(d.kendall_tau, d.error)
    ok = damage <= MAX_HIGH_TAU_DAMAGE and mono and r <= -0.5
    text = (f"intact {pct(intact)}; orders at {which}: mean increase {100 * damage:+.1f} points "
            f"({len(high)} order{'' if len(high) == 1 else 's'}); mean error per tau bin, "
            "high to low: "
            + ", ".join(f"{b:.1f}+ {pct(v)}" for b, v in bins.items())
            + f"; Spearman rho(tau, error) = {r:.2f}")
    return ok, text


def reorder_blocks(root: Path) -> list[Finding]:
    df, _ = read(root, "reorder_blocks")
    if df is None:
        return [Finding("Veit Fig. 5b", "reordering", "-", "not run", "-")]
    out = []
    for model, d in df.groupby("model", sort=False):
        ok, text = _reorder_verdict(d)
        out.append(Finding(
            "Veit Fig. 5b",
            "Error rises smoothly and stays bounded as the block order departs from the original "
            "(Kendall's tau falls).",
            f"{model}: {len(d)} orders, tau {d.kendall_tau.min():.2f} to "
            f"{d.kendall_tau.max():.2f}; {text}",
            "reproduces" if ok else "does not reproduce",
            f"bounded: mean error increase at tau >= {HIGH_TAU:g} (else after one swap) at most "
            f"{100 * MAX_HIGH_TAU_DAMAGE:g} points; monotone: no 0.1-wide tau bin more than "
            f"{100 * MONOTONE_TOLERANCE:g} points below the higher-tau bin before it; and "
            "rho(tau, error) <= -0.5", fig(root, "reorder_blocks")))
    return out
