"""Huang et al. 2016, Fig. 7 analogue: (a) mean absolute gradient of the first convolution of the
first block per epoch (log scale), constant depth vs stochastic depth; (b) test error per epoch.
Learning-rate drops are dotted vertical lines.

    python -m figures.training_curves results.csv --out DIR [--note TEXT]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from os import PathLike

import pandas as pd

from analyses.training_curves import FIRST_CONV, lr_drops
from figures import register, theme

__all__ = ["main", "plot"]

_STYLES = ("-", "--", "-.", ":")


@register("training_curves")
def plot(df: pd.DataFrame | str | PathLike, *, note: str | None = None):
    """Two panels against epoch from the tidy log table (model, family, epoch, metric, value)."""
    from matplotlib.lines import Line2D

    df = pd.read_csv(df) if isinstance(df, (str, PathLike)) else df
    fig, axes = theme.figure("two", 1, 2)
    panels = ((FIRST_CONV, "mean |gradient|, first block's conv1", True),
              ("test_error", "test error (%)", False))
    handles, seen = [], {}
    for model, fam in df.drop_duplicates("model")[["model", "family"]].itertuples(index=False):
        i = seen[fam] = seen.get(fam, -1) + 1
        color = theme.family_color(fam if fam in theme.FAMILY_COLORS else "resnet")
        ls = _STYLES[i % len(_STYLES)]
        for ax, (metric, _, _) in zip(axes, panels):
            d = df[(df["model"] == model) & (df["metric"] == metric)].sort_values("epoch")
            scale = 100 if metric.endswith("error") else 1
            ax.plot(d["epoch"], d["value"] * scale, color=color, linestyle=ls, linewidth=1.0,
                    gid=f"{metric}:{model}")
        handles.append(Line2D([], [], color=color, linestyle=ls,
                              label=f"{model} ({theme.family_label(fam)})"))
    drops = lr_drops(df)
    for ax, (metric, label, log) in zip(axes, panels):
        for e in drops:  # between the last epoch at the old rate and the first at the new
            ax.axvline(e - 0.5, color=theme.GUIDE_COLOR, linestyle=":", linewidth=0.9, zorder=0)
        if log and (df.loc[df["metric"] == metric, "value"] > 0).any():
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
    axes[0].set_title("(a)", loc="left")
    axes[1].set_title("(b)", loc="left")
    if drops:
        handles.append(Line2D([], [], color=theme.GUIDE_COLOR, linestyle=":", linewidth=0.9,
                              label="learning-rate drop"))
    fig.legend(handles=handles, loc="outside upper center", ncols=min(len(handles), 4),
               fontsize="small")
    if note:
        theme.note(axes[-1], note)
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    p = theme.parser("training_curves", __doc__)
    return theme.draw(plot, p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
