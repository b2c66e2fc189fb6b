"""He et al. 2015, Fig. 6 (end points): test error against depth, plain nets and ResNets in
their family colours, each point with its 95% Wilson interval; the paper's ResNet numbers
(Table 6) as hollow markers where given.

    python -m figures.degradation results.csv --out DIR [--note TEXT]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from os import PathLike

import pandas as pd

from figures import register, theme

__all__ = ["HE_2015_RESNET", "main", "plot"]

# He et al. 2015, Table 6 (quoted, not measured): ResNet test error (%) by depth.
HE_2015_RESNET = {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.43}
_MARKERS = {"plain": "s", "resnet": "o"}


@register("degradation")
def plot(df: pd.DataFrame | str | PathLike, *, note: str | None = None):
    """One panel: test error (%) against depth (weight layers), one line per family."""
    from matplotlib.lines import Line2D

    df = pd.read_csv(df) if isinstance(df, (str, PathLike)) else df.copy()
    fig, ax = theme.figure("one")
    handles = []
    for fam, d in df.sort_values("depth").groupby("family", sort=False):
        color = theme.family_color(fam)
        x, y = d["depth"].to_numpy(float), 100 * d["error"].to_numpy(float)
        err = [y - 100 * d["error_low"].to_numpy(float), 100 * d["error_high"].to_numpy(float) - y]
        ax.errorbar(x, y, yerr=err, color=color, marker=_MARKERS.get(fam, "D"), markersize=3.5,
                    linewidth=1.0, capsize=2, gid=f"error:{fam}")
        handles.append(Line2D([], [], color=color, marker=_MARKERS.get(fam, "D"), markersize=3.5,
                              label=theme.family_label(fam)))
    ref = {d: e for d, e in HE_2015_RESNET.items() if d in set(df.loc[df.family == "resnet",
                                                                       "depth"])}
    if ref:
        ax.plot(list(ref), list(ref.values()), linestyle="none", marker="o", markersize=5,
                markerfacecolor="none", markeredgecolor=theme.GUIDE_COLOR, gid="he2015")
        handles.append(Line2D([], [], linestyle="none", marker="o", markerfacecolor="none",
                              markeredgecolor=theme.GUIDE_COLOR, label="He et al. 2015 (ResNet)"))
    ax.set_xticks(sorted(df["depth"].unique()))
    ax.set_xlabel("depth (weight layers)")
    ax.set_ylabel("test error (%)")
    fig.legend(handles=handles, loc="outside upper center", ncols=len(handles), fontsize="small")
    if note:
        theme.note(ax, note)
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    p = theme.parser("degradation", __doc__)
    return theme.draw(plot, p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
