"""Redundancy measures against deletion damage: one panel per measure (Block Influence, the
residual-contribution ratio, the angular distance over the longest window), one point per block
or window; x the measure's mean over images, y the test error change when that block or window is
deleted; one colour per model, and each model's Spearman rho over the blocks (or windows) with
its one-sided permutation p-value over them (the units the claims rank; a bootstrap over images
would only say how precisely each block's mean is known).
Shape-changing blocks (and windows holding one) have no cosine: they have no point here and are
left out of the correlation.

    python -m figures.redundancy results.csv --out DIR [--note TEXT]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from os import PathLike

import pandas as pd

from ablate.measures.stats import spearman_permutation
from figures import register, theme

__all__ = ["main", "plot"]

_LABELS = {"block_influence": "Block Influence, 1 - cos(x, y)",
           "contribution_ratio": "contribution ratio, ||y - x|| / ||x||",
           "angular_distance": "angular distance, window of {n}"}
_MARKERS = ("o", "s", "^", "D", "v")


def panels(df: pd.DataFrame) -> list[tuple[str, int]]:
    """(measure, n) drawn: the two per-block measures and the longest angular window."""
    out = [(m, 1) for m in ("block_influence", "contribution_ratio") if (df.measure == m).any()]
    ang = df[df.measure == "angular_distance"]
    return out + ([("angular_distance", int(ang.n.max()))] if len(ang) else [])


@register("redundancy")
def plot(df: pd.DataFrame | str | PathLike | Sequence[str], *, note: str | None = None):
    """Scatter of each measure against deletion damage, labelled with Spearman's rho and its
    permutation p over the units."""
    from matplotlib.lines import Line2D

    if isinstance(df, (str, PathLike)):
        df = pd.read_csv(df)
    elif not isinstance(df, pd.DataFrame):
        df = pd.concat([pd.read_csv(f) for f in df], ignore_index=True)
    if df.empty:
        raise ValueError("the redundancy table is empty")
    shown = panels(df)
    models = list(dict.fromkeys(df["model"]))
    fams = [df.loc[df.model == m, "family"].iloc[0] if "family" in df else "resnet"
            for m in models]
    colors = theme.model_colors(models, fams)
    fig, axes = theme.figure("two", 1, len(shown), squeeze=False)
    axes = list(axes[0])
    for ax, (measure, n) in zip(axes, shown):
        lines = []
        for i, model in enumerate(models):
            d = df[(df.model == model) & (df.measure == measure) & (df.n == n)]
            d = d[theme.as_bool(d["in_correlation"])]
            if d.empty:
                continue
            x, y = d["value"].to_numpy(float), d["error_change"].to_numpy(float) * 100
            ax.plot(x, y, linestyle="none", marker=_MARKERS[i % len(_MARKERS)], markersize=3.5,
                    color=colors[model], markeredgewidth=0, gid=f"points:{model}:{measure}:{n}")
            rho, p, _ = spearman_permutation(d["value"], d["error_change"])
            lines.append(f"{model}: ρ = {rho:.2f} (p = {p:.2g}, {len(d)} units)")
        ax.annotate("\n".join(lines), xy=(0.03, 0.97), xycoords="axes fraction", ha="left",
                    va="top", fontsize="x-small", color=theme.NOTE_COLOR)
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo, hi + (hi - lo) * (0.1 * len(lines) + 0.05))
        ax.set_xlabel(_LABELS[measure].format(n=n), fontsize="small")
        ax.set_ylabel(f"error change, {'block' if n == 1 else f'{n} blocks'} deleted (points)",
                      fontsize="small")
    handles = [Line2D([], [], linestyle="none", marker=_MARKERS[i % len(_MARKERS)],
                      markersize=3.5, color=colors[m], label=m) for i, m in enumerate(models)]
    fig.legend(handles=handles, loc="outside upper center", ncols=len(handles),
               fontsize="small")
    if note:
        theme.note(axes[-1], note)
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    p = theme.parser("redundancy", __doc__)
    return theme.draw(plot, p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
