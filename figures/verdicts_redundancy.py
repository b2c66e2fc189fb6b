"""Verdicts on the redundancy measures: does a block's Block Influence (Men et al. 2024) or a
window's angular distance (Gromov et al. 2024) rank it by what deleting it costs?

Both papers prune language models by these measures, assuming the ranking; here it is tested on
each network of the table against the error change measured when the block (the window) is
deleted, on the same images. Criterion, stated before any table is read: the 95% bootstrap
interval (over images) of Spearman's rho lies entirely above 0.
"""

from __future__ import annotations

from pathlib import Path

from figures.verdicts import Finding, fig, read

__all__ = ["redundancy"]

_CLAIMS = {
    "block_influence": (
        "Men et al. 2024 (ShortGPT)",
        "A block whose output barely differs from its input (low Block Influence, 1 - cos(x, y)) "
        "can be deleted at little cost: BI ranks blocks by deletion damage."),
    "angular_distance": (
        "Gromov et al. 2024",
        "The n-block window with the smallest angular distance between its input and output is "
        "the cheapest to delete: the distance ranks windows by deletion damage."),
}


def redundancy(root: Path) -> list[Finding]:
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
        unit = "a block" if n == 1 else f"a {n}-block window"
        crit = (f"95% bootstrap interval (over images) of Spearman's rho between {unit}'s mean "
                f"{measure.replace('_', ' ')} and the error change when it is deleted entirely "
                "above 0 (shape-changing blocks left out)")
        for model, m in d[d.n == n].groupby("model", sort=False):
            r = m.iloc[0]
            ours = (f"{model}: rho = {r.rho_error:.2f} [{r.rho_error_low:.2f}, "
                    f"{r.rho_error_high:.2f}] over {int(r.n_correlated)} "
                    f"{'blocks' if n == 1 else f'windows of {n} blocks'} (loss change: rho = "
                    f"{r.rho_loss:.2f} [{r.rho_loss_low:.2f}, {r.rho_loss_high:.2f}]); "
                    f"{int(r.n_images):,} images, {int(r.n_boot):,} resamples")
            if int(r.n_correlated) < 3:  # e.g. every 4-block window of resnet20 downsamples
                ours = (f"{model}: {int(r.n_correlated)} {'blocks' if n == 1 else 'windows'} "
                        "keep the feature shape: too few to rank")
                out.append(Finding(section, claim, ours, "not run", crit, fig_))
                continue
            verdict = "reproduces" if r.rho_error_low > 0 else "does not reproduce"
            out.append(Finding(section, claim, ours, verdict, crit, fig_))
    return out
