"""Veit et al. 2016, Fig. 6: (a) distribution of path lengths, (b) gradient magnitude of a single
path per length (log scale), (c) total gradient per length with its effective range shaded.

Drawn from the tidy table of ``python -m ablate.paths``::

    python -m figures.paths results.csv --out DIR [--note TEXT]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from os import PathLike

import numpy as np
import pandas as pd

from analyses.paths import REFERENCE
from figures import register, theme

__all__ = ["main", "plot"]

_STYLES = ("-", "--", "-.", ":")
_MARKERS = ("o", "s", "^", "D")
# Veit et al.'s effective range for ResNet-110 (54 blocks), quoted from the paper.
_PUBLISHED = {REFERENCE["n_blocks"]: tuple(REFERENCE["effective_range"])}
_PATHS_COLOR = "#444444"


def _models(df: pd.DataFrame) -> list[tuple[str, str, str, str]]:
    """(model, colour, line style, marker): family colours, styles varying within a family."""
    seen: dict[str, int] = {}
    out = []
    for model, fam in df.drop_duplicates("model")[["model", "family"]].itertuples(index=False):
        i = seen.get(fam, 0)
        seen[fam] = i + 1
        color = theme.family_color(fam if fam in theme.FAMILY_COLORS else model)
        out.append((model, color, _STYLES[i % 4], _MARKERS[i % 4]))
    return out


def _kind(df: pd.DataFrame, model: str, kind: str) -> pd.DataFrame:
    d = df[(df["model"] == model) & (df["kind"] == kind)]
    if "tap" in d.columns and kind == "gradient_magnitude":
        d = d[d["tap"] == "input"]
    return d.sort_values("k")


def _panel_a(ax, df, styles) -> None:
    """Binomial(n, 1/2) once per block count (dark), active depth of stochastic depth dotted."""
    done = set()
    for model, color, _, _ in styles:
        d = _kind(df, model, "path_fraction")
        n = int(d["k"].max())
        if n not in done:
            done.add(n)
            ax.plot(d["k"], d["value"] * 100, color=_PATHS_COLOR, linewidth=1.0,
                    gid=f"paths:{n}")
        sd = _kind(df, model, "active_depth")
        if not sd.empty:
            ax.plot(sd["k"], sd["value"] * 100, color=color, linestyle=":", linewidth=1.2,
                    gid=f"active:{model}")
    ax.set_ylabel("share of paths (%)")
    ax.set_ylim(bottom=0)
    ax.set_title("(a)", loc="left")


def _panel_b(ax, df, styles) -> None:
    for model, color, ls, marker in styles:
        d = _kind(df, model, "gradient_magnitude")
        if d.empty:
            continue
        k, v = d["k"].to_numpy(float), d["value"].to_numpy(float)
        lo, hi = d["low"].to_numpy(float), d["high"].to_numpy(float)
        ok = v > 0
        if np.isfinite(lo).any():
            ax.fill_between(k[ok], np.clip(lo, v * 1e-3, None)[ok], hi[ok], color=color,
                            alpha=0.18, linewidth=0)
        ax.plot(k[ok], v[ok], color=color, linestyle=ls, linewidth=1.0, marker=marker,
                markersize=2.2, markeredgewidth=0, gid=f"magnitude:{model}")
        if (~ok).any():  # read as zero (a float32 underflow, or every ReLU closed): on the axis
            ax.plot(k[~ok], np.full((~ok).sum(), 0.0), linestyle="none", marker="v",
                    markersize=4, markerfacecolor="white", markeredgecolor=color,
                    clip_on=False, transform=ax.get_xaxis_transform(), gid=f"zero:{model}")
        if ok.sum() >= 2:
            a, b = np.polyfit(k[ok], np.log10(v[ok]), 1)
            ax.plot(k, 10 ** (a * k + b), color=theme.GUIDE_COLOR, linestyle="--",
                    linewidth=0.8, zorder=0.5)
    ax.set_yscale("log", nonpositive="mask")
    ax.set_ylabel("gradient magnitude per path")
    ax.set_title("(b)", loc="left")


def _share(x: float) -> str:
    """Two significant digits however small (0.027%), as the report prints it."""
    v = 100 * x
    return f"{v:.1f}%" if v == 0 or v >= 1 else f"{v:.{1 - int(np.floor(np.log10(v)))}f}%"


def _panel_c(ax, df, styles) -> None:
    labels = []
    for model, color, ls, _ in styles:
        d = _kind(df, model, "total_gradient")
        if d.empty:
            continue
        k, v = d["k"].to_numpy(float), d["value"].to_numpy(float)
        ax.plot(k, v * 100, color=color, linestyle=ls, linewidth=1.0, gid=f"total:{model}")
        inr = theme.as_bool(d["in_range"]).to_numpy()
        if inr.any():
            lo, hi = k[inr].min(), k[inr].max()
            ax.axvspan(lo - 0.5, hi + 0.5, color=color, alpha=0.12, linewidth=0,
                       gid=f"range:{model}")
            paths = _kind(df, model, "path_fraction")
            share = paths[paths["k"].between(lo, hi)]["value"].sum()
            who = f"{model}: " if len(styles) > 1 else ""
            labels.append((f"{who}{lo:.0f}–{hi:.0f} blocks,\n{_share(share)} of paths", color))
        n = int(d["n_blocks"].iloc[0])
        if n in _PUBLISHED:  # a range of lengths, no height: drawn on the x axis, not at a y
            a, b = _PUBLISHED[n]
            on_axis = ax.get_xaxis_transform()  # x in data, y in axes fraction
            ax.plot([a - 0.5, b + 0.5], [0.03, 0.03], color=theme.FAMILY_COLORS["reference"],
                    linewidth=2.2, solid_capstyle="butt", transform=on_axis, gid="published")
            ax.annotate(f"Veit et al.: {a}–{b}", xy=(b + 0.5, 0.03), xycoords=on_axis,
                        xytext=(3, 0), textcoords="offset points", va="center",
                        fontsize="x-small", color=theme.FAMILY_COLORS["reference"])
    for i, (text, color) in enumerate(labels):
        ax.annotate(text, xy=(0.98, 0.97 - 0.16 * i), xycoords="axes fraction", ha="right",
                    va="top", fontsize="x-small", color=color)
    ax.set_ylim(0, ax.get_ylim()[1] * (1.1 + 0.2 * len(labels)))  # room for the labels
    ax.set_ylabel("total gradient (%)")
    ax.set_title("(c)", loc="left")


@register("paths")
def plot(df: pd.DataFrame | str | PathLike, *, note: str | None = None):
    """Three panels against path length; one colour per model family. Returns the Figure."""
    from matplotlib.lines import Line2D

    df = pd.read_csv(df) if isinstance(df, (str, PathLike)) else df.copy()
    if "family" not in df.columns:
        df["family"] = df["model"].map(theme.family_of)
    styles = _models(df)
    fig, axes = theme.figure("two", 1, 3)
    _panel_a(axes[0], df, styles)
    _panel_b(axes[1], df, styles)
    _panel_c(axes[2], df, styles)
    n_max = int(df["k"].max())
    for ax in axes:
        ax.set_xlabel("path length (blocks)")
        ax.set_xlim(-0.5, n_max + 0.5)
    handles = [Line2D([], [], color=c, linestyle=ls, marker=m, markersize=2.5, label=model)
               for model, c, ls, m in styles]
    handles.append(Line2D([], [], color=_PATHS_COLOR, linewidth=1.0, label="all paths"))
    if (df["kind"] == "active_depth").any():
        handles.append(Line2D([], [], color=theme.GUIDE_COLOR, linestyle=":", linewidth=1.2,
                              label="active blocks (stochastic depth)"))
    handles.append(Line2D([], [], color=theme.GUIDE_COLOR, linestyle="--", linewidth=0.8,
                          label="log-linear fit"))
    if ((df["kind"] == "gradient_magnitude") & (df["value"] == 0)).any():
        handles.append(Line2D([], [], linestyle="none", marker="v", markersize=4,
                              markerfacecolor="white", markeredgecolor=theme.GUIDE_COLOR,
                              label="read as 0 (underflow)"))
    fig.legend(handles=handles, loc="outside upper center", ncols=min(len(handles), 5),
               fontsize="small")
    if note:
        theme.note(axes[-1], note)
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    p = theme.parser("paths", __doc__)
    return theme.draw(plot, p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
