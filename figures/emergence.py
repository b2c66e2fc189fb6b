"""When does the ensemble emerge: single-block deletion during training (ours).

(a) the median error change of deleting one shape-keeping block, per lesion epoch; (b) the share of
those blocks equivalent to the intact net within the margin; (c) the downsampling blocks' mean
change; (d, ...) one heat map per run, epochs x blocks, of the change. Learning-rate drops are
dotted lines: vertical in (a-c), between the rows of the heat maps.

    python -m figures.emergence results.csv --out DIR
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from os import PathLike

import numpy as np
import pandas as pd

from analyses.emergence import lr_drops, per_epoch
from figures import register, theme

__all__ = ["main", "plot"]


@register("emergence")
def plot(df: pd.DataFrame | str | PathLike, *, note: str | None = None):
    """Curves per run and a heat map (epochs x blocks) per run, from the emergence table."""
    df = pd.read_csv(df) if isinstance(df, (str, PathLike)) else df
    s = per_epoch(df)
    runs = list(dict.fromkeys(s["model"]))
    curves = 3
    fig, axes = theme.figure("two", 1, curves + len(runs),
                             figsize=(3.0 * (curves + len(runs)), 2.8))
    colors = theme.model_colors(runs, [s.loc[s.model == m, "family"].iloc[0] for m in runs])
    drops = lr_drops(s)
    for m in runs:
        d = s[s["model"] == m].sort_values("epoch")
        label = f"{m} ({theme.family_label(d['family'].iloc[0])})"
        axes[0].plot(d["epoch"], d["median_change"] * 100, marker=".", color=colors[m],
                     label=label, gid=f"median:{m}")
        axes[1].plot(d["epoch"], d["share_equivalent"] * 100, marker=".", color=colors[m],
                     label=label, gid=f"equivalent:{m}")
        axes[2].plot(d["epoch"], d["downsample_change"] * 100, marker=".", color=colors[m],
                     label=label, gid=f"downsample:{m}")
    axes[0].set_ylabel("median error change (points)")
    axes[1].set_ylabel("blocks equivalent to intact (%)")
    axes[1].set_ylim(-2, 102)
    axes[2].set_ylabel("downsampling: mean change (points)")
    for ax in axes[:curves]:
        ax.set_xlabel("epoch")
        for e in drops:
            ax.axvline(e - 0.5, color=theme.GUIDE_COLOR, linestyle=":", linewidth=0.9, zorder=0)
    axes[0].legend(fontsize="x-small")
    vmax = float(np.nanpercentile(np.abs(df["error_change"]) * 100, 98)) or 1.0
    for ax, m in zip(axes[curves:], runs):
        grid = (df[df["model"] == m].pivot_table(index="epoch", columns="block",
                                                 values="error_change") * 100)
        im = ax.imshow(grid.to_numpy(), aspect="auto", cmap="RdBu_r", vmin=-vmax, vmax=vmax,
                       interpolation="nearest", gid=f"heatmap:{m}")
        ax.set_yticks(range(len(grid.index)), [str(e) for e in grid.index], fontsize="xx-small")
        ax.set_xlabel("deleted block")
        ax.set_ylabel("epoch")
        for e in drops:  # a line above the first row at the lower rate
            i = int(np.searchsorted(grid.index, e))
            if 0 < i < len(grid.index):
                ax.axhline(i - 0.5, color="black", linestyle=":", linewidth=0.9,
                           gid=f"drop:{m}:{e}")
        fig.colorbar(im, ax=ax, label="error change (points)", shrink=0.8)
    for i, ax in enumerate(axes):
        ax.set_title(f"({'abcdefgh'[i]})" + (f" {runs[i - curves]}" if i >= curves else ""),
                     loc="left")
    if note:
        theme.note(axes[0], note)
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    p = theme.parser("emergence", __doc__)
    return theme.draw(plot, p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
