"""Veit et al. 2016, Fig. 5b: test error against Kendall's tau after reordering blocks.

Drawn from the tidy table of the reorder experiment, one row per (model, swaps, random order)::

    python -m figures.reorder_blocks results.csv [more.csv ...] --out DIR [--note TEXT] [--bins N]

Per model, in the family's colour: every order as a faint dot, and the mean error within bins of
tau with its 95% t interval as a line with error bars, starting at the original order (tau = 1).
The tau axis runs from 1 (original order) to the right, as in the paper.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from os import PathLike

import numpy as np
import pandas as pd

from ablate.measures import mean_interval
from figures import register, theme

__all__ = ["REQUIRED", "binned", "main", "plot", "read"]

REQUIRED = ("model", "k", "sample", "kendall_tau", "error")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def read(source: pd.DataFrame | str | PathLike | Sequence[str | PathLike]) -> pd.DataFrame:
    """The reorder table as a clean DataFrame (from a frame, a CSV, or several CSVs)."""
    return theme.table(source, REQUIRED, ("model", "k", "sample"), "reorder")


def binned(d: pd.DataFrame, bins: int = 8) -> pd.DataFrame:
    """Mean error with a 95% t interval: the original order (tau = 1), then ``bins`` equal-width
    bins of tau over the reordered rows (empty bins left out; intervals clipped to [0, 1])."""
    out = []
    groups = [d[d["kendall_tau"] >= 1.0]]
    moved = d[d["kendall_tau"] < 1.0]
    if not moved.empty:
        lo, hi = moved["kendall_tau"].min(), moved["kendall_tau"].max()
        edges = np.linspace(lo, hi, bins + 1) if hi > lo else np.array([lo, hi])
        which = np.clip(np.searchsorted(edges, moved["kendall_tau"], side="right") - 1, 0,
                        len(edges) - 2)
        groups += [moved[which == b] for b in range(len(edges) - 1)]
    for g in groups:
        if g.empty:
            continue
        m, low, high = mean_interval(g["error"].to_numpy(dtype=float))
        out.append({"tau": g["kendall_tau"].mean(), "n": len(g), "mean_error": m,
                    "mean_low": max(low, 0.0), "mean_high": min(high, 1.0)})
    return pd.DataFrame(out).sort_values("tau", ascending=False, ignore_index=True)


def _order(df: pd.DataFrame) -> list[str]:
    first = df.drop_duplicates("model")
    rank = {f: i for i, f in enumerate(theme.FAMILY_ORDER)}
    return [m for _, m in sorted((rank.get(f, 99), m) for m, f in zip(first.model, first.family))]


@register("reorder_blocks")
def plot(df: pd.DataFrame | str | PathLike, *, note: str | None = None, bins: int = 8):
    """Test error (%) against Kendall's tau to the original order; returns the Figure."""
    from matplotlib.ticker import MultipleLocator

    df = read(df)
    fig, ax = theme.figure("one")
    classes = df["num_classes"].dropna().unique() if "num_classes" in df.columns else [10]
    for c in sorted({int(c) for c in classes} or {10}):
        ax.axhline(100 * (1 - 1 / c), color=theme.GUIDE_COLOR, linestyle=":", linewidth=0.9,
                   zorder=0.5, gid=f"chance:{c}")
    order = _order(df)
    colors = theme.model_colors(order, [df.loc[df["model"] == m, "family"].iloc[0]
                                        for m in order])
    for i, model in enumerate(order):
        d = df[df["model"] == model]
        color = colors[model]
        ax.scatter(d["kendall_tau"], d["error"] * 100, s=4, color=color, alpha=0.3,
                   linewidths=0, zorder=1.5, rasterized=True)
        b = binned(d, bins)
        yerr = np.vstack([b["mean_error"] - b["mean_low"], b["mean_high"] - b["mean_error"]])
        ax.errorbar(b["tau"], b["mean_error"] * 100, yerr=np.nan_to_num(yerr) * 100, color=color,
                    linewidth=1.1, elinewidth=0.8, capsize=1.5, marker=_MARKERS[i % len(_MARKERS)],
                    markersize=2.5, markeredgewidth=0, label=model, zorder=2)
    handles, _ = ax.get_legend_handles_labels()
    handles += ax.plot([], [], color=theme.GUIDE_COLOR, linestyle=":", linewidth=0.9,
                       label="chance")
    lo = float(df["kendall_tau"].min())
    pad = max(0.01, (1 - lo) * 0.04)
    ax.set_xlim(1 + pad, lo - pad)  # inverted: the original order on the left
    ax.set_xlabel("Kendall's tau to the original order")
    theme.percent_axis(ax, "test error (%)")
    ax.yaxis.set_major_locator(MultipleLocator(20))
    ax.legend(handles=handles, loc="best", fontsize="x-small", handlelength=1.5)
    if note:
        theme.note(ax, note)
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    p = theme.parser("reorder_blocks", __doc__)
    p.add_argument("--bins", type=int, default=8, help="bins of Kendall's tau for the means")
    args = p.parse_args(argv)
    return theme.draw(plot, args, bins=args.bins)


if __name__ == "__main__":
    sys.exit(main())
