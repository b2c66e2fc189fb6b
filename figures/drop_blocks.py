"""Veit et al. 2016, Fig. 5a: test error against the number of blocks deleted at once.

Drawn from the tidy table of the drop-blocks experiment, one row per (model, k, random set)::

    python -m figures.drop_blocks results.csv [more.csv ...] --out DIR [--note TEXT]

Per model: the error of every random set as faint dots, the mean over the sets as a line, and
its 95% t interval as a band, in the model family's colour; chance error dotted grey.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from os import PathLike

import numpy as np
import pandas as pd

from analyses.drop_blocks import summary
from figures import register, theme

__all__ = ["REQUIRED", "main", "plot", "read"]

REQUIRED = ("model", "k", "sample", "error")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def read(source: pd.DataFrame | str | PathLike | Sequence[str | PathLike]) -> pd.DataFrame:
    """The drop-blocks table as a clean DataFrame (from a frame, a CSV, or several CSVs)."""
    return theme.table(source, REQUIRED, ("model", "k", "sample"), "drop-blocks")


def _order(df: pd.DataFrame) -> list[str]:
    """Models by family (theme order), then name."""
    first = df.drop_duplicates("model")
    rank = {f: i for i, f in enumerate(theme.FAMILY_ORDER)}
    return [m for _, m in sorted((rank.get(f, 99), m) for m, f in zip(first.model, first.family))]


@register("drop_blocks")
def plot(df: pd.DataFrame | str | PathLike, *, note: str | None = None):
    """Test error (%) against the number of deleted blocks; returns the Figure."""
    from matplotlib.ticker import MaxNLocator, MultipleLocator

    df = read(df)
    s = summary(df)
    fig, ax = theme.figure("one")
    classes = df["num_classes"].dropna().unique() if "num_classes" in df.columns else [10]
    for c in sorted({int(c) for c in classes} or {10}):
        ax.axhline(100 * (1 - 1 / c), color=theme.GUIDE_COLOR, linestyle=":", linewidth=0.9,
                   zorder=0.5, gid=f"chance:{c}")
    rng = np.random.default_rng(0)  # jitter of the dots only
    order = _order(df)
    colors = theme.model_colors(order, [df.loc[df["model"] == m, "family"].iloc[0]
                                        for m in order])
    for i, model in enumerate(order):
        d, m = df[df["model"] == model], s[s["model"] == model].sort_values("k")
        color = colors[model]
        jitter = rng.uniform(-0.15, 0.15, len(d))
        ax.scatter(d["k"] + jitter, d["error"] * 100, s=3, color=color, alpha=0.25,
                   linewidths=0, zorder=1.5, rasterized=True)
        band = m["mean_low"].notna()
        ax.fill_between(m["k"][band], m["mean_low"][band] * 100, m["mean_high"][band] * 100,
                        color=color, alpha=0.2, linewidth=0, zorder=1)
        ax.plot(m["k"], m["mean_error"] * 100, color=color, linewidth=1.1,
                marker=_MARKERS[i % len(_MARKERS)], markersize=2.5, markeredgewidth=0,
                label=model, zorder=2, gid=f"mean:{model}")
    ax.plot([], [], color=theme.GUIDE_COLOR, linestyle=":", linewidth=0.9, label="chance")
    ax.set_xlim(-0.5, df["k"].max() + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=8, integer=True))
    plain = bool((df["family"] == "plain").any())  # units differ only when plain nets are drawn
    ax.set_xlabel("deleted units k\n(residual block: 2 layers; plain unit: 1 layer)" if plain
                  else "deleted blocks k")
    theme.percent_axis(ax, "test error (%)")
    ax.yaxis.set_major_locator(MultipleLocator(20))
    ax.legend(loc="best", fontsize="x-small", handlelength=1.5)
    if note:
        theme.note(ax, note)
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    p = theme.parser("drop_blocks", __doc__)
    return theme.draw(plot, p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
