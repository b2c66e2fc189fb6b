"""Attribution vs lesion damage: one panel per model, one point per deletable block; x the test
error change when the block is deleted, y the block's attribution (mean over images of sum |A|,
log scale), one marker per captum method, downsampling blocks hollow; Spearman's rho per method
with its one-sided permutation p over the blocks.

    python -m figures.attribution results.csv --out DIR [--note TEXT]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from os import PathLike

import numpy as np
import pandas as pd

from ablate.measures.stats import spearman_permutation
from figures import register, theme

__all__ = ["main", "plot"]

_MARKERS = {"conductance": "o", "gradient_x_activation": "s", "integrated_gradients": "^"}
_LABELS = {"conductance": "conductance", "gradient_x_activation": "gradient x activation",
           "integrated_gradients": "integrated gradients"}


def _headroom(ax, n_lines: int, log: bool) -> None:
    """Raise the top of the y axis so that ``n_lines`` of text fit above the points."""
    lo, hi = ax.get_ylim()
    frac = 0.13 * n_lines + 0.04
    ax.set_ylim(lo, hi * (hi / lo) ** frac if log else hi + (hi - lo) * frac)


@register("attribution")
def plot(df: pd.DataFrame | str | PathLike, *, note: str | None = None):
    """Scatter of attribution against lesion damage, labelled with Spearman's rho."""
    from matplotlib.lines import Line2D

    df = pd.read_csv(df) if isinstance(df, (str, PathLike)) else df.copy()
    df = df[df["error_change"].notna()]
    if df.empty:
        raise ValueError("no deletable blocks with both an attribution and a lesion damage")
    models = list(dict.fromkeys(df["model"]))
    fig, axes = theme.figure("one" if len(models) == 1 else "two", 1, len(models),
                             squeeze=False)
    axes = list(axes[0])
    methods = list(dict.fromkeys(df["method"]))
    for ax, model in zip(axes, models):
        d_model = df[df["model"] == model]
        fam = d_model["family"].iloc[0] if "family" in d_model.columns else "resnet"
        color = theme.family_color(fam if fam in theme.FAMILY_COLORS else "resnet")
        lines = []
        for method in methods:
            d = d_model[d_model["method"] == method]
            if d.empty:
                continue
            x, y = d["error_change"].to_numpy(float) * 100, d["attr_abs"].to_numpy(float)
            err = np.abs(np.stack([y - d["attr_abs_low"], d["attr_abs_high"] - y]))
            ds = theme.as_bool(d["downsample"]).to_numpy()
            mk = _MARKERS.get(method, "D")
            ax.errorbar(x, y, yerr=np.nan_to_num(err), fmt="none", ecolor=color, alpha=0.35,
                        elinewidth=0.6)
            ax.plot(x[~ds], y[~ds], linestyle="none", marker=mk, markersize=3.2, color=color,
                    markeredgewidth=0, gid=f"points:{model}:{method}")
            ax.plot(x[ds], y[ds], linestyle="none", marker=mk, markersize=5.5,
                    markerfacecolor="white", markeredgecolor=color, markeredgewidth=1.0,
                    gid=f"downsample:{model}:{method}")
            rho, p, _ = spearman_permutation(d["attr_abs"], d["error_change"])
            lines.append(f"{_LABELS.get(method, method)}: ρ = {rho:.2f} (permutation p = "
                         f"{p:.2g})")
        log = bool((d_model["attr_abs"] > 0).all())
        if log:
            ax.set_yscale("log")
        _headroom(ax, len(lines), log)
        ax.annotate("\n".join(lines), xy=(0.02, 0.98), xycoords="axes fraction", ha="left",
                    va="top", fontsize="x-small", color=theme.NOTE_COLOR)
        layer = d_model["layer"].iloc[0] if "layer" in d_model.columns else "block"
        ax.set_title(f"{model}, at the {'residual branch' if layer == 'branch' else layer}",
                     loc="left")
        ax.set_xlabel("error change when deleted (points)")
    axes[0].set_ylabel("attribution, mean sum |A|")
    handles = [Line2D([], [], linestyle="none", marker=_MARKERS.get(m, "D"), markersize=3.5,
                      color=theme.GUIDE_COLOR, label=_LABELS.get(m, m)) for m in methods]
    if theme.as_bool(df["downsample"]).any():
        handles.append(Line2D([], [], linestyle="none", marker="o", markersize=5.5,
                              markerfacecolor="white", markeredgecolor=theme.GUIDE_COLOR,
                              label="downsampling block"))
    ncols = len(handles) if len(models) > 1 else min(len(handles), 2)
    fig.legend(handles=handles, loc="outside upper center", ncols=ncols, fontsize="small")
    if note:
        theme.note(axes[-1], note)
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    p = theme.parser("attribution", __doc__)
    return theme.draw(plot, p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
