"""Gradient norm against depth: ResNets and plain nets in their family colours, at
initialisation (dashed) and trained (solid); (a) at each unit's input, (b) of each unit's
parameters. Log scale: the vanishing gradient of deep plain nets is a falling line.

    python -m figures.gradnorm results.csv --out DIR [--note TEXT]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from os import PathLike

import numpy as np
import pandas as pd

from figures import register, theme

__all__ = ["main", "plot"]

_STATE_STYLE = {"trained": "-", "init": "--"}
_MARKERS = ("o", "s", "^", "D")


def _color(model: str, family: str) -> str:
    return theme.family_color(family if family in theme.FAMILY_COLORS else model)


@register("gradnorm")
def plot(df: pd.DataFrame | str | PathLike, *, note: str | None = None):
    """Two panels (activation, parameters) of gradient norm (log) against depth in layers."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    df = pd.read_csv(df) if isinstance(df, (str, PathLike)) else df.copy()
    if "family" not in df.columns:
        df["family"] = df["model"].map(theme.family_of)
    fig, axes = theme.figure("two", 1, 2)
    models = df.drop_duplicates("model")[["model", "family"]].itertuples(index=False)
    models = list(models)
    marker = {m: _MARKERS[i % len(_MARKERS)] for i, (m, _) in enumerate(models)}
    labels = ("gradient norm at the unit's input", "gradient norm of the unit's parameters")
    for ax, kind, label, title in zip(axes, ("activation", "parameters"), labels, ("(a)", "(b)")):
        for model, fam in models:
            for state, d in df[(df["model"] == model) & (df["kind"] == kind)].groupby("state"):
                d = d.sort_values("depth")
                x, y = d["depth"].to_numpy(float), d["grad_norm"].to_numpy(float)
                color = _color(model, fam)
                lo, hi = d["low"].to_numpy(float), d["high"].to_numpy(float)
                few = "n_values" in d.columns and (d["n_values"] < 3).any()
                if np.isfinite(lo).any() and not few:  # a t interval of 2 values is just noise
                    ax.fill_between(x, np.clip(lo, y * 1e-2, None), hi, color=color, alpha=0.15,
                                    linewidth=0)
                ax.plot(x, y, color=color, linestyle=_STATE_STYLE.get(state, ":"),
                        linewidth=1.0, marker=marker[model], markersize=2.0, markeredgewidth=0,
                        gid=f"{kind}:{model}:{state}")
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("depth of the unit's input (weight layers)")
        ax.set_ylabel(label)
        ax.set_title(title, loc="left")
    handles = [Line2D([], [], color=_color(m, f), marker=marker[m], markersize=2.5, label=m)
               for m, f in models]
    for state in [s for s in _STATE_STYLE if s in set(df["state"])]:
        handles.append(Line2D([], [], color=theme.GUIDE_COLOR, linestyle=_STATE_STYLE[state],
                              label=state))
    fig.legend(handles=handles, loc="outside upper center", ncols=len(handles),
               fontsize="small")
    if note:
        theme.note(axes[-1], note)
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    p = theme.parser("gradnorm", __doc__)
    return theme.draw(plot, p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
